r"""Experiment 'volumes': SO(3) / O(3) classification of 3D shape volumes (the paper's section 4.4).

Data: :mod:`equiproj.data.volumes` (rendered shapes with a canonical pose or uniform rotations,
a rod pair separable only by orientation, a mirror-helix pair; ``docs/data/volumes.md``).

Model: :class:`ResNet3d`, the 3D ResNet of Berndt and Stühmer (2026, section 4.4; their
``network_new.py``), scaled by a width ``c`` (fields per layer) and a band limit ``L``:

* block 1: conv k7 (``c`` fields) -> conv k5 (``2c``), skip conv k7; anti-aliased average
  pooling with stride 2;
* block 2: conv k3 stride 2 (``4c``) -> average pooling k5 stride 2 -> conv k3 stride 2
  (``6c``), skip: average pooling twice and conv k3 stride 2;
* block 3: conv k3 (``6c``) -> average pooling k3 -> 1x1 conv to ``8c`` trivial channels, skip
  conv k3;
* global average pooling, BatchNorm1d -> ELU -> Linear.

Every convolution is a :class:`equiproj.nn.RepConv3d` declared for SO(3) or O(3) (9 penalised
layers, as in the paper). A field is gated: irreps of degree ``0..L`` (for O(3) with the
natural parity ``(-1)^l``) plus one gate scalar per non-trivial irrep. Two variants
(``norm=...``):

* ``"field"`` (default, the strict model needs it): :class:`equiproj.nn.FieldBatchNorm`
  (per-channel on scalars and gates, norm-based on the irreps), ELU on the scalars, sigmoid
  gates on the irreps (:class:`equiproj.nn.GatedNonlinearity`). With ``P(W) = W`` in every layer
  the network is exactly invariant under the 24 rotations of the cube (and, for O(3), the 48
  of the full octahedral group), which map the grid onto itself, and approximately under all of
  SO(3) / O(3) (the steerable kernels are sampled on the grid).
* ``"channel"`` (the paper's code): ``nn.BatchNorm3d`` and ELU on every channel, gates used as
  ordinary channels. Per-channel normalisation and pointwise ELU on non-trivial fields are not
  equivariant, so this network is not invariant even when ``P(W) = W``.

Deviation from the paper: the input is resized to ``2^m + 1`` voxels per side (17 for 16^3, 33 for
28^3 and 32^3, or ``resize=...``) rather than 29, so that every stride-2 step sees an odd size and
samples a grid that is symmetric about the centre; with 29 the third stride-2 step (on 8 voxels)
breaks the cube symmetry.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from ..actions import feature_map_action
from ..data.volumes import make_volume_dataset
from ..groups import full_octahedral, o3, octahedral, so3
from ..metrics import equivariance_error
from ..nn import FieldBatchNorm, GatedNonlinearity, RepConv3d
from ..regularise import report as layer_report
from ..train import TrainConfig
from ._core import (Experiment, RunConfig, Setup, figures_dir, markdown_table, register_experiment, sample_std,
                    save_figure, takes_weight)

__all__ = ["ResNet3d", "gated_field", "odd_size", "VolumesExperiment", "multiclass_auc", "cube_elements"]


def gated_field(group, L: int):
    """The gated field type of ``group`` (SO(3) or O(3)) up to degree ``L``: ``(scalars, gated)``,
    one trivial scalar and the irreps of degree ``1..L`` (for O(3) of parity ``(-1)^l``).

    >>> s, g = gated_field(so3(), 3)
    >>> s.dim, g.dim, len(g.fields)
    (1, 15, 3)
    """
    if L < 1:
        raise ValueError(f"the band limit L of the gated fields must be >= 1, got {L}")
    if group.name == "SO(3)":
        irr = [group.irrep(l) for l in range(1, L + 1)]
    elif group.name == "O(3)":
        irr = [group.irrep(l, (-1) ** l) for l in range(1, L + 1)]
    else:
        raise ValueError(f"ResNet3d is declared for SO(3) or O(3), got {group.name}")
    gated = irr[0] if len(irr) == 1 else sum(irr[1:], irr[0])
    return group.trivial(), gated


def odd_size(n: int) -> int:
    """The smallest ``2^m + 1 >= max(n, 17)``: each of the network's four stride-2 steps then
    halves an odd size (17 -> 9 -> 5 -> 3 -> 2)."""
    m = max(4, math.ceil(math.log2(max(n - 1, 1))))
    return 2 ** m + 1


def _check_resize(n: int) -> None:
    sizes = [n]
    for _ in range(3):
        sizes.append((sizes[-1] + 1) // 2)
    if any(s % 2 == 0 for s in sizes):
        raise ValueError(f"ResNet3d: resize={n} gives the sizes {sizes} before its four stride-2 steps; they must "
                         f"all be odd for the cube rotations to act on every grid (use 2^m + 1 >= 17, e.g. "
                         f"{odd_size(n)})")


def _avg_pool(x: torch.Tensor, k: int, stride: int = 1) -> torch.Tensor:
    """``k^3`` average pooling with padding ``k // 2`` that averages over the voxels inside the
    grid only (symmetric about the centre, and defined on grids smaller than the kernel)."""
    pad = (k // 2,) * 6
    ones = x.new_ones((1, 1) + tuple(x.shape[2:]))
    num = nn.functional.avg_pool3d(nn.functional.pad(x, pad), k, stride=stride)
    den = nn.functional.avg_pool3d(nn.functional.pad(ones, pad), k, stride=stride)
    return num / den


class _Unit(nn.Module):
    """conv -> norm -> nonlinearity -> dropout, on representations (the output carries ``out_rep``)."""

    def __init__(self, conv: RepConv3d, gate: Optional[GatedNonlinearity], norm: str, dropout: float):
        super().__init__()
        self.conv, self.gate, self.kind = conv, gate, norm
        rep = conv.out_rep
        self.norm = FieldBatchNorm(rep) if norm == "field" else nn.BatchNorm3d(rep.dim)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.out_rep = gate.out_rep if (gate is not None and norm == "field") else rep

    def forward(self, x):
        h = self.norm(self.conv(x))
        if self.kind == "field":
            if self.gate is not None:
                h = self.gate(h.movedim(1, -1)).movedim(-1, 1)
            else:
                h = nn.functional.elu(h)
        else:
            h = nn.functional.elu(h)
        return self.drop(h)


class ResNet3d(nn.Module):
    r"""The paper's 3D ResNet on SO(3) / O(3) gated fields (see the module docstring).

    Parameters
    ----------
    n_classes : int
    group : SO3 or O3
    width : int
        ``c``: fields of the first convolution (then ``2c, 4c, 6c, 6c`` and ``8c`` trivial channels).
    L : int
        Band limit of the gated fields (the paper: 3 for SO(3), 2 for O(3)).
    norm : {"field", "channel"}
        Equivariant normalisation and gates, or per-channel BatchNorm3d and ELU (the paper's code).
    kernels : sequence of 3 ints
        Kernel sizes of block 1 (main, second, skip); the paper's ``(7, 5, 7)``.
    input_size : int
        Side of the input volumes; resized (trilinear, corners aligned) to ``resize``.
    resize : int, optional
        Default :func:`odd_size` of ``input_size``.
    dropout : float
        After every unit (training mode only; elementwise, so not equivariant while training).
    equivariant : bool
        Constrain every convolution to its equivariant subspace (the strict model).

    Examples
    --------
    >>> net = ResNet3d(3, so3(), width=1, L=1, kernels=(3, 3, 3), input_size=8)
    >>> net.eval()(torch.randn(2, 1, 8, 8, 8)).shape
    torch.Size([2, 3])
    """

    def __init__(self, n_classes: int, group=None, width: int = 2, L: int = 3, norm: str = "field",
                 kernels=(7, 5, 7), input_size: int = 28, resize: Optional[int] = None, dropout: float = 0.0,
                 equivariant: bool = False):
        super().__init__()
        group = so3() if group is None else group
        if norm not in ("field", "channel"):
            raise ValueError(f"ResNet3d: norm must be 'field' or 'channel', got {norm!r}")
        if width < 1:
            raise ValueError(f"ResNet3d: width must be >= 1, got {width}")
        k1, k2, k3 = (int(k) for k in kernels)
        if any(k % 2 == 0 for k in (k1, k2, k3)):
            raise ValueError(f"ResNet3d: kernel sizes must be odd (centred kernels), got {tuple(kernels)}")
        self.group, self.width, self.L, self.norm_kind = group, int(width), int(L), norm
        self.input_size = int(input_size)
        self.resize = odd_size(self.input_size) if resize is None else int(resize)
        _check_resize(self.resize)
        scal, gated = gated_field(group, L)
        triv = group.trivial()
        kw = dict(equivariant=equivariant)

        def gate_for(c: int) -> GatedNonlinearity:
            return GatedNonlinearity(c * gated, n_scalars=c, scalar_fn=nn.functional.elu)

        def unit(rep_in, c: int, k: int, stride: int = 1, trivial_out: bool = False) -> _Unit:
            if trivial_out:
                conv = RepConv3d(rep_in, c * triv, k, stride=stride, padding=k // 2, **kw)
                return _Unit(conv, None, norm, dropout)
            gate = gate_for(c)
            conv = RepConv3d(rep_in, gate.in_rep, k, stride=stride, padding=k // 2, **kw)
            return _Unit(conv, gate, norm, dropout)

        def out_rep_of(c: int):
            """What a unit with ``c`` gated fields outputs (the skip convolutions' output)."""
            g = gate_for(c)
            return g.out_rep if norm == "field" else g.in_rep

        c = self.width
        r0 = triv
        self.b1_main = nn.ModuleList([unit(r0, c, k1)])
        self.b1_main.append(unit(self.b1_main[0].out_rep, 2 * c, k2))
        self.b1_skip = RepConv3d(r0, out_rep_of(2 * c), k3, padding=k3 // 2, **kw)
        r1 = out_rep_of(2 * c)
        self.b2_a = unit(r1, 4 * c, 3, stride=2)
        self.b2_b = unit(self.b2_a.out_rep, 6 * c, 3, stride=2)
        self.b2_skip = RepConv3d(r1, out_rep_of(6 * c), 3, stride=2, padding=1, **kw)
        r2 = out_rep_of(6 * c)
        self.b3_a = unit(r2, 6 * c, 3)
        self.b3_b = unit(self.b3_a.out_rep, 8 * c, 1, trivial_out=True)
        self.b3_skip = RepConv3d(r2, 8 * c * triv, 3, padding=1, **kw)
        self.head_norm = nn.BatchNorm1d(8 * c)
        self.head = nn.Linear(8 * c, n_classes)

    def convolutions(self) -> List[RepConv3d]:
        return [m for m in self.modules() if isinstance(m, RepConv3d)]

    def forward(self, x):
        if x.ndim != 5 or x.shape[1] != 1:
            raise ValueError(f"ResNet3d expects volumes of shape (B, 1, D, H, W), got {tuple(x.shape)}")
        if tuple(x.shape[2:]) != (self.resize,) * 3:
            x = nn.functional.interpolate(x, size=(self.resize,) * 3, mode="trilinear", align_corners=True)
        h = x
        for u in self.b1_main:
            h = u(h)
        h = _avg_pool(h + self.b1_skip(x), 3, 2)
        s = self.b2_skip(_avg_pool(_avg_pool(h, 3, 2), 3, 2))
        h = self.b2_b(_avg_pool(self.b2_a(h), 5, 2))
        h = h + s
        s = self.b3_skip(h)
        h = self.b3_b(_avg_pool(self.b3_a(h), 3)) + s
        z = h.mean(dim=(-3, -2, -1))
        return self.head(nn.functional.elu(self.head_norm(z)))


# ---------------------------------------------------------------------------------- metrics


def multiclass_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Macro one-vs-rest ROC AUC (ties count one half), as MedMNIST reports it.

    For class ``c``: the probability that a random sample of class ``c`` scores higher in
    column ``c`` than a random sample of another class; averaged over the classes present.

    >>> s = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    >>> multiclass_auc(s, torch.tensor([0, 1, 0]))
    1.0
    """
    aucs = []
    for c in range(scores.shape[1]):
        pos, neg = scores[labels == c, c], scores[labels != c, c]
        if len(pos) == 0 or len(neg) == 0:
            continue
        diff = pos[:, None] - neg[None, :]
        aucs.append(float((diff > 0).double().mean() + 0.5 * (diff == 0).double().mean()))
    return sum(aucs) / len(aucs) if aucs else float("nan")


def cube_elements(group) -> torch.Tensor:
    """The symmetries of the cube as elements of ``group``: the 24 rotations for SO(3), the 48
    rotations and reflections for O(3) (float32 ``(n, 3, 3)``); they map the grid onto itself."""
    F = octahedral() if group.name == "SO(3)" else full_octahedral()
    return F.standard()(F.elements(), dtype=torch.float32)


def _pair_accuracy(logits: torch.Tensor, labels: torch.Tensor, classes, a: str, b: str) -> float:
    """Among test volumes of classes ``a`` and ``b``: how often the larger of their two logits is right."""
    if a not in classes or b not in classes:
        return float("nan")
    ia, ib = classes.index(a), classes.index(b)
    keep = (labels == ia) | (labels == ib)
    if not bool(keep.any()):
        return float("nan")
    pred_a = logits[keep, ia] > logits[keep, ib]
    return float((pred_a == (labels[keep] == ia)).double().mean())


# ---------------------------------------------------------------------------------- experiment

_OPTIONS = {"group": "so3", "norm": "field", "L": None, "rotation": None, "anisotropy": None, "init": "equivariant"}
_METHOD_LABEL = {"plain": "plain", "strict": "strict", "projection": "projection", "rpp": "RPP",
                 "sample-output": "sample-output"}


def _options(cfg: RunConfig) -> Dict[str, Any]:
    return {**_OPTIONS, **cfg.options}


@register_experiment
class VolumesExperiment(Experiment):
    """SO(3) / O(3) classification of shape volumes with the paper's 3D ResNet (section 4.4).

    Options (``--option key=value``): ``group`` (``so3`` or ``o3``), ``norm`` (``field``: equivariant
    norms and gates, default; ``channel``: per-channel BatchNorm3d and ELU as in the paper's code),
    ``L`` (band limit of the fields; default the preset's), ``rotation`` (the data's
    ``rotation_std_deg``: degrees or ``uniform``), ``anisotropy`` (z blur in voxels), ``init``
    (``equivariant`` or ``random``).
    """

    name = "volumes"
    description = ("SO(3) / O(3) classification of 3D shape volumes (rods, disks, helices of both "
                   "handedness, shells, tori...) with the paper's 3D ResNet")
    presets = {
        # 16^3, 54 / 18 / 36 volumes, a one-field network: seconds per run (the tests)
        "ci": dict(data="ci", width=1, L=1, L_o3=1, kernels=(3, 3, 3), resize=17, dropout=0.0, steps=12,
                   batch_size=9, lr=3e-3, warmup=0, eval_every=6, equiv_volumes=6, haar_samples=2),
        # 28^3, 1000 / 200 / 400 volumes, MedMNIST-sized data, resized to 17^3 and a narrow network
        # (L = 1, width 2, kernels 5-3-5) so that one run takes minutes on one CPU thread
        "cpu": dict(data="cpu", width=2, L=1, L_o3=1, kernels=(5, 3, 5), resize=17, dropout=0.0, steps=500,
                    batch_size=16, lr=3e-3, warmup=25, eval_every=50, equiv_volumes=24, haar_samples=4),
        # the paper's sizes: 28^3 resized to 33^3, kernels 7-5-7, L = 3 (SO(3)) / 2 (O(3)), width 2,
        # batch 32, 100 epochs of 1000 volumes, Adam, mixed precision on a GPU
        "paper": dict(data="paper", width=2, L=3, L_o3=2, kernels=(7, 5, 7), resize=33, dropout=0.1, steps=3200,
                      batch_size=32, lr=1e-3, warmup=100, eval_every=100, equiv_volumes=64, haar_samples=8,
                      amp=True),
    }
    methods = ("plain", "strict", "projection", "rpp", "sample-output")
    level_name = "none (use --option rotation=... / anisotropy=...)"
    default_level = None
    default_sweep = {"method": ["plain", "strict", "projection"], "lambda_perp": [1e-3, 1e-1]}
    reports = "selected"

    def check(self, cfg: RunConfig) -> None:
        super().check(cfg)
        unknown = set(cfg.options) - set(_OPTIONS)
        if unknown:
            raise ValueError(f"unknown options for volumes: {sorted(unknown)} (known: {', '.join(sorted(_OPTIONS))})")
        o = _options(cfg)
        if o["group"] not in ("so3", "o3"):
            raise ValueError(f"option group must be 'so3' or 'o3', got {o['group']!r}")
        if o["norm"] not in ("field", "channel"):
            raise ValueError(f"option norm must be 'field' or 'channel', got {o['norm']!r}")
        if o["L"] is not None and (isinstance(o["L"], bool) or not isinstance(o["L"], int) or o["L"] < 1):
            raise ValueError(f"option L must be an integer >= 1, got {o['L']!r}")
        r = o["rotation"]
        if r is not None and r != "uniform" and (isinstance(r, bool) or not isinstance(r, (int, float)) or r < 0):
            raise ValueError(f"option rotation must be a number of degrees >= 0 or 'uniform', got {r!r}")
        a = o["anisotropy"]
        if a is not None and (isinstance(a, bool) or not isinstance(a, (int, float)) or a < 0):
            raise ValueError(f"option anisotropy must be a number >= 0 (voxels), got {a!r}")
        if o["init"] not in ("equivariant", "random"):
            raise ValueError(f"option init must be 'equivariant' or 'random', got {o['init']!r}")
        if cfg.level is not None:
            raise ValueError(f"experiment 'volumes' has no numeric level (got {cfg.level!r}): use --option "
                             "rotation=... or --option anisotropy=...")

    def setup(self, cfg: RunConfig, preset: Dict[str, Any], device: torch.device) -> Setup:
        o = _options(cfg)
        G = so3() if o["group"] == "so3" else o3()
        overrides = {}
        if o["rotation"] is not None:
            overrides["rotation_std_deg"] = o["rotation"] if o["rotation"] == "uniform" else float(o["rotation"])
        if o["anisotropy"] is not None:
            overrides["anisotropy"] = float(o["anisotropy"])
        data = make_volume_dataset(preset["data"], **overrides)
        classes = data["classes"]
        x_tr, y_tr = data["x_train"].to(device), data["y_train"].to(device)
        x_val, y_val = data["x_val"].to(device), data["y_val"].to(device)
        x_te, y_te = data["x_test"].to(device), data["y_test"].to(device)
        L = o["L"] if o["L"] is not None else (preset["L"] if G.name == "SO(3)" else preset["L_o3"])
        torch.manual_seed(cfg.seed)
        model = ResNet3d(len(classes), G, width=preset["width"], L=L, norm=o["norm"], kernels=preset["kernels"],
                         input_size=x_tr.shape[-1], resize=preset["resize"], dropout=preset["dropout"]).to(device)
        chunk = 50

        def logits(m, x):
            with torch.no_grad():
                return torch.cat([m(c) for c in x.split(chunk)])

        def loss_fn(m, batch):
            return nn.functional.cross_entropy(m(batch[0]), batch[1])

        def eval_fn(m):
            z = logits(m, x_val)
            return {"val_accuracy": float((z.argmax(1) == y_val).double().mean()),
                    "val_loss": float(nn.functional.cross_entropy(z, y_val))}

        act_in, act_out = feature_map_action(G.trivial()), len(classes) * G.trivial()
        n_eq = min(preset["equiv_volumes"], len(x_te))

        def final_metrics(m):
            z = logits(m, x_te)
            prob = z.softmax(1).cpu()
            res = {"accuracy": float((z.argmax(1) == y_te).double().mean()),
                   "auc": multiclass_auc(prob, y_te.cpu()),
                   "val_accuracy": eval_fn(m)["val_accuracy"],
                   "train_accuracy": float((logits(m, x_tr[:400]).argmax(1) == y_tr[:400]).double().mean()),
                   "rod_pair_accuracy": _pair_accuracy(z.cpu(), y_te.cpu(), classes, "rod_z", "rod_x"),
                   "helix_pair_accuracy": _pair_accuracy(z.cpu(), y_te.cpu(), classes, "helix_right", "helix_left")}
            xe = x_te[:n_eq]
            z_e = logits(m, xe)
            denom = float(torch.linalg.vector_norm(z_e).clamp_min(1e-12))
            cube, changes = [], []
            for g in cube_elements(G).to(device):  # one forward per element: the error and the changed predictions
                z_g = logits(m, act_in(g[None], xe))
                cube.append(float(torch.linalg.vector_norm(z_g - z_e)) / denom)
                changes.append(float((z_g.argmax(1) != z_e.argmax(1)).double().mean()))
            gen = torch.Generator().manual_seed(1000 + cfg.seed)
            haar = equivariance_error(lambda x: logits(m, x), xe, act_in, act_out, group=G,
                                      elements=G.sample(preset["haar_samples"], generator=gen, dtype=torch.float32).to(device))
            res.update(equiv_cube=sum(cube) / len(cube), equiv_cube_max=max(cube), equiv_haar=haar.mean,
                       equiv_haar_max=haar.max, cube_prediction_changes=sum(changes) / len(changes))
            rows = layer_report(m, "fro")
            w2 = sum(r.weight_norm ** 2 for r in rows)
            res["defect_fro"] = sum(r.defect_norm for r in rows)
            res["rel_defect"] = math.sqrt(sum(r.defect_norm ** 2 for r in rows) / w2) if w2 > 0 else 0.0
            res.update(group=G.name, norm_layers=o["norm"], L=int(L), width=int(preset["width"]),
                       parameters=int(sum(p.numel() for p in m.parameters())), size=int(x_te.shape[-1]),
                       n_train=int(len(x_tr)), n_classes=len(classes),
                       rotation=str(data["config"].rotation_std_deg), anisotropy=float(data["config"].anisotropy))
            return res

        steps = preset["steps"]
        tc = TrainConfig(steps=steps, batch_size=preset["batch_size"], lr=preset["lr"], optimizer="adam",
                         schedule="cosine", warmup_steps=preset["warmup"] if preset["warmup"] < steps else 0,
                         grad_clip=1.0, log_every=max(1, steps // 20), eval_every=preset["eval_every"],
                         checkpoint_every=max(1, steps // 4), select="-val_accuracy", amp=bool(preset.get("amp")))
        return Setup(model=model, train_data=(x_tr, y_tr), loss_fn=loss_fn, train_config=tc,
                     final_metrics=final_metrics, eval_fn=eval_fn,
                     method_options=dict(group=G, act_in=act_in, act_out=act_out,
                                         init="keep" if o["init"] == "random" else "equivariant"))

    # ------------------------------------------------------------------ report
    def report(self, rows: List[Dict[str, Any]], out: Path) -> str:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = [dict(r) for r in rows]
        for r in rows:
            r["variant"] = f"{r.get('group', '?')}, {r.get('opt_norm', 'field')} norms"
            if not takes_weight(r.get("method")):  # no penalty weight nor norm
                r["lambda_perp"], r["norm"] = None, None
        labels = {"rotation": "data rotation", "lambda_perp": "λ⊥",
                  "sel_accuracy": "sel. acc.", "sel_auc": "sel. AUC", "accuracy": "last acc.",
                  "auc": "last AUC", "equiv_cube": "equiv. cube", "equiv_haar": "equiv. Haar",
                  "sel_rod_pair_accuracy": "rod pair", "sel_helix_pair_accuracy": "helix pair",
                  "rel_defect": "rel. defect", "time_per_step_s": "s / step", "sel_step": "sel. step"}
        parts = [f"## volumes\n\n{self.description}. *sel.* columns: the weights of the best validation "
                 "accuracy; *last*: the final weights. *equiv.*: relative change of the logits under the cube's "
                 "symmetries (24 rotations for SO(3), 48 for O(3); exact on the grid) and under Haar-random "
                 "elements (trilinear interpolation), final weights. *rod / helix pair*: accuracy between the two "
                 "classes of the pair (selected weights). Devices: "
                 f"{', '.join(sorted({str(r.get('device')) for r in rows}))}.\n"]
        for preset in sorted({r.get("preset") for r in rows}):
            ps = [r for r in rows if r.get("preset") == preset]
            parts.append(f"### preset `{preset}`\n")
            parts.append(markdown_table(ps, ["rotation", "variant", "method", "scheme", "norm", "lambda_perp"],
                                        ["sel_accuracy", "sel_auc", "accuracy", "auc", "sel_rod_pair_accuracy",
                                         "sel_helix_pair_accuracy", "equiv_cube", "equiv_haar", "rel_defect",
                                         "time_per_step_s"], labels))
            fig = self._lambda_plot(ps, preset, out, plt)
            if fig:
                parts.append(f"\n![{preset}: accuracy and equivariance error against lambda_perp]({fig})\n")
        return "\n".join(parts)

    def _lambda_plot(self, rows, preset, out, plt) -> Optional[str]:
        import numpy as np

        proj = [r for r in rows if r["method"] == "projection" and (r["lambda_perp"] or 0) > 0]
        if len({r["lambda_perp"] for r in proj}) < 2:
            return None
        fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(14, 3.8), constrained_layout=True)
        def var(r):
            return f"{r['variant']}, rotation {r.get('rotation')}"

        variants = sorted({var(r) for r in rows})
        for i, v in enumerate(variants):
            colour = f"C{i}"
            vs = [r for r in proj if var(r) == v and r.get("norm") == "fro"]
            lams = sorted({r["lambda_perp"] for r in vs})
            for ax, key in ((a1, "sel_accuracy"), (a2, "equiv_cube"), (a3, "rel_defect")):
                m = [np.mean([r[key] for r in vs if r["lambda_perp"] == p]) for p in lams]
                sd = [sample_std([r[key] for r in vs if r["lambda_perp"] == p]) for p in lams]
                if lams:
                    ax.errorbar(lams, m, yerr=sd, marker="o", capsize=3, color=colour, label=f"projection ({v})")
                for name, style in (("strict", "--"), ("plain", ":")):
                    ref = [r[key] for r in rows if r["method"] == name and var(r) == v]
                    if ref and not (ax is a3 and name == "strict"):  # the strict defect is 0
                        ax.axhline(float(np.mean(ref)), ls=style, color=colour, lw=1.2,
                                   label=f"{name} ({v}, {len(ref)} seeds)")
        for ax in (a1, a2, a3):
            ax.set_xscale("log")
            ax.set_xlabel("lambda_perp")
        a2.set_yscale("log")
        a3.set_yscale("log")
        a3.set_ylabel("relative defect ||W - P(W)|| / ||W||")
        a1.set_ylabel("test accuracy (selected weights)")
        a2.set_ylabel("logit change, cube symmetries")
        a1.legend(fontsize=7, loc="best")
        dev = ", ".join(sorted({str(r.get("device")) for r in rows}))
        seeds = len({r["seed"] for r in rows})
        fig.suptitle(f"volumes, preset {preset}: mean ± std over {seeds} seed(s); {dev}", fontsize=9)
        return save_figure(fig, figures_dir(out) / f"volumes_{preset}_lambda.png")
