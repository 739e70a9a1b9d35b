r"""Experiment 'vectors': O(5) invariant regression, O(3) inertia and modified inertia.

Tasks (:func:`equiproj.data.make_vector_task`): ``o5`` (input two O(5) vectors, output an
invariant scalar), ``inertia`` (5 masses and 5 positions, output the inertia tensor in
``V (x) V``) and ``modified_inertia``, whose target ``I + c (I e_z) e_z^T`` keeps only the
symmetries fixing the z axis; ``c`` is the experiment's ``level`` (default 0.3).

Models. ``arch=emlp`` (default): an equivariant MLP in the spirit of EMLP (Finzi, Welling and
Wilson 2021) built from :class:`equiproj.nn.RepLinear` layers: every block maps its input ``h``
to a few vectors ``b`` (a linear layer), forms the bilinear features ``b (x) b``
(:class:`equiproj.nn.TensorSquare`), and applies a linear layer and a gated nonlinearity to
``[h, b (x) b]``. ``arch=emlp384``: sized like emlp's ``EMLP`` (3 layers of 384 channels spread
over tensor orders by emlp's uniform allocation, :func:`uniform_representation`; gated
nonlinearities; a bilinear term in every layer, :class:`EMLP`), the strong strict baseline of
the literature. The weights of both are free; the methods pull them towards equivariance
(projection penalty, RPP, PER, sampled penalties) or constrain them (strict). ``arch=mlp``: a
plain MLP on the raw coordinates (method ``plain``), the non-equivariant reference.
``model=small`` shrinks the default equivariant MLP so that PER's dense per-layer projectors fit
in memory (with the default model PER's memory guard refuses: one layer would need a 39.7 GB
matrix).

Initialisation (``--option init=...``, passed to :func:`equiproj.baselines.make_method`): every
method but ``plain`` starts from the equivariant part of the random initialisation, rescaled
to the former norms (``equivariant``, the library's default), or not rescaled
(``projected``); ``random`` keeps the raw initialisation.

Targets: presets ``ci`` and ``paper`` divide them by their root mean square on the training
split (one scalar, which keeps every task equivariant); preset ``rpp`` (the protocol of Finzi,
Benton and Wilson 2021 for modified inertia: 1000 training samples, Adam at a constant 3e-3,
batch 500, 1000 steps, no clipping) trains on the raw targets. Metrics: ``test_mse``, relative
to the mean squared training target, and ``test_mse_abs`` in the raw units; the sampled
relative equivariance error of the model under the task's full group (O(5) or O(3)). Every
run keeps the weights of its best validation MSE (``TrainConfig.select``): the tables report
the final weights, the ``sel_`` columns the selected ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import torch
from torch import nn

from ..data.vectors import make_vector_task
from ..groups import o3, orthogonal
from ..metrics import equivariance_error
from ..nn import GatedNonlinearity, RepLinear, TensorSquare
from ..train import TrainConfig
from ._core import (Experiment, RunConfig, Setup, figures_dir, markdown_table, register_experiment, sample_std,
                    save_figure, zero_tick)

__all__ = ["task_representations", "EquivariantMLP", "EMLP", "uniform_representation", "VectorsExperiment"]


def task_representations(task: str):
    """``(group, in_rep, out_rep)`` of a vector task."""
    if task == "o5":
        G = orthogonal(5)
        return G, 2 * G.standard(), G.trivial()
    G = o3()
    V = G.standard()
    return G, 5 * G.trivial() + 5 * V, V * V


class EquivariantMLP(nn.Module):
    """Blocks ``h -> gate(W [h, (B h) (x) (B h)])`` and a linear read-out of ``[h, (B h) (x) (B h)]``.

    Parameters
    ----------
    in_rep, out_rep : Representation
    n_scalars, n_vectors : int
        Hidden width: scalars (through ReLU) and gated vector fields per block.
    n_bilinear : int
        Vectors fed to the tensor square in every block.
    n_bilinear_scalars : int
        Scalars fed to the tensor square (their products with vectors give mass-weighted
        positions and the like).
    depth : int
        Number of gated blocks.
    """

    def __init__(self, in_rep, out_rep, n_scalars: int = 16, n_vectors: int = 8, n_bilinear: int = 3,
                 depth: int = 2, n_bilinear_scalars: int = 0):
        super().__init__()
        G = in_rep.group
        V, triv = G.standard(), G.trivial()
        self.blocks = nn.ModuleList()
        rho = in_rep
        B = n_bilinear * V if not n_bilinear_scalars else n_bilinear_scalars * triv + n_bilinear * V
        for _ in range(depth):
            gate = GatedNonlinearity(n_vectors * V, n_scalars=n_scalars)
            square = TensorSquare(B)
            self.blocks.append(nn.ModuleDict(dict(
                to_bilinear=RepLinear(rho, B, bias=False), square=square,
                mix=RepLinear(rho + square.out_rep, gate.in_rep), gate=gate)))
            rho = gate.out_rep
        square = TensorSquare(B)
        self.to_bilinear = RepLinear(rho, B, bias=False)
        self.square = square
        self.readout = RepLinear(rho + square.out_rep, out_rep)
        self.in_rep, self.out_rep = in_rep, out_rep

    def forward(self, x):
        h = x
        for blk in self.blocks:
            q = blk["square"](blk["to_bilinear"](h))
            h = blk["gate"](blk["mix"](torch.cat([h, q], dim=-1)))
        q = self.square(self.to_bilinear(h))
        return self.readout(torch.cat([h, q], dim=-1))


def uniform_representation(channels: int, group):
    r"""``channels`` dimensions spread over tensor orders ``V^{(x) r}`` as emlp's ``uniform_rep`` does.

    Repeatedly take the largest order ``r`` with ``(r + 1) d^r <= c`` (``d`` the dimension of the
    defining representation ``V``) and add ``d^{r - k}`` copies of ``V^{(x) k}`` for ``k = 0..r``
    (``d^r`` dimensions per order), until the ``c`` remaining dimensions are used up. For O(3)
    and 384 channels: 102 scalars, 34 vectors, 11 order-2 and 3 order-3 tensors.

    Examples
    --------
    >>> from equiproj.groups import o3
    >>> rho = uniform_representation(384, o3())
    >>> rho.dim, [f.dim for f in rho.fields].count(27)
    (384, 3)
    """
    V = group.standard()
    d = V.dim
    counts: List[int] = []
    c = int(channels)
    if c < 1:
        raise ValueError(f"uniform_representation: channels must be >= 1, got {channels!r}")
    while c > 0:
        r = 0
        while (r + 2) * d ** (r + 1) <= c:
            r += 1
        counts += [0] * (r + 1 - len(counts))
        for k in range(r + 1):
            counts[k] += d ** (r - k)
        c -= (r + 1) * d ** r
    rep, T = None, group.trivial()
    for k, n in enumerate(counts):
        if k > 0:
            T = V if k == 1 else T * V
        if n:
            rep = n * T if rep is None else rep + n * T
    return rep


class EMLP(nn.Module):
    r"""An equivariant MLP sized like emlp's ``EMLP`` (Finzi, Welling and Wilson 2021).

    ``depth`` blocks on the hidden representation ``hidden`` (e.g. :func:`uniform_representation`);
    block ``h -> gate(z + M (b (x) b))`` with ``z = L h`` (linear onto the gated representation:
    ``hidden`` plus one gate scalar per non-scalar field) and a bilinear term: ``b = B z``
    (``n_bilinear_scalars`` scalars and ``n_bilinear_vectors`` vectors), its tensor square, and a
    linear map ``M`` back (a low-rank version of emlp's bilinear layer). Scalars go through
    SiLU, every other field is multiplied by the sigmoid of its gate (emlp's gated
    nonlinearity). A linear read-out maps ``hidden`` to ``out_rep``. All linear maps are
    :class:`equiproj.nn.RepLinear` layers with free weights.
    """

    def __init__(self, in_rep, out_rep, hidden, depth: int = 3, n_bilinear_scalars: int = 4,
                 n_bilinear_vectors: int = 4):
        super().__init__()
        G = in_rep.group
        fields = hidden.fields
        n_s = sum(1 for f in fields if f.is_trivial())
        gated = [f for f in fields if not f.is_trivial()]
        if any(not f.is_trivial() for f in fields[:n_s]) or not gated:
            raise ValueError("EMLP: the hidden representation must list its scalars first and have non-scalar fields")
        gated_rep = gated[0] if len(gated) == 1 else sum(gated[1:], gated[0])
        B = n_bilinear_scalars * G.trivial() + n_bilinear_vectors * G.standard()
        self.blocks = nn.ModuleList()
        rho = in_rep
        for _ in range(depth):
            gate = GatedNonlinearity(gated_rep, n_scalars=n_s, scalar_fn=nn.functional.silu)
            square = TensorSquare(B)
            self.blocks.append(nn.ModuleDict(dict(
                linear=RepLinear(rho, gate.in_rep), to_bilinear=RepLinear(gate.in_rep, B, bias=False),
                square=square, mix=RepLinear(square.out_rep, gate.in_rep, bias=False), gate=gate)))
            rho = gate.out_rep
        self.readout = RepLinear(rho, out_rep)
        self.in_rep, self.out_rep, self.hidden = in_rep, out_rep, hidden

    def forward(self, x):
        h = x
        for blk in self.blocks:
            z = blk["linear"](h)
            z = z + blk["mix"](blk["square"](blk["to_bilinear"](z)))
            h = blk["gate"](z)
        return self.readout(h)


def plain_mlp(d_in: int, d_out: int, hidden: int, depth: int = 2) -> nn.Module:
    """``depth`` hidden layers of width ``hidden`` with SiLU."""
    layers: List[nn.Module] = []
    d = d_in
    for _ in range(depth):
        layers += [nn.Linear(d, hidden), nn.SiLU()]
        d = hidden
    return nn.Sequential(*layers, nn.Linear(d, d_out))


_SCHEME_ORDER = {"split": 0, "split-proximal": 1, "penalty": 2, "proximal": 3}
_INIT_MARKERS = {"equivariant": "o", "projected": "D", "random": "v"}


def _default_variant_key(v) -> bool:
    """``(scheme, perp_lr, init)`` at the defaults (perp_lr 0.1 for the split schemes)."""
    scheme, perp_lr, init = v
    return init == "equivariant" and (perp_lr is None or perp_lr == 0.1 or not str(scheme).startswith("split"))


def _default_variant(r) -> bool:
    return _default_variant_key((r["scheme"], r.get("perp_lr"), r.get("init", "equivariant")))


@register_experiment
class VectorsExperiment(Experiment):
    name = "vectors"
    description = "O(5) regression, O(3) inertia and modified inertia (EMLP family) with equivariant MLPs"
    presets = {
        "ci": dict(data="ci", steps=1500, batch_size=64, lr=1e-2, n_scalars=16, n_vectors=16, n_bilinear=10,
                   n_bilinear_scalars=5, depth=1, mlp_hidden=128, eval_samples=16, grad_clip=1.0),
        "paper": dict(data="paper", steps=20000, batch_size=128, lr=3e-3, n_scalars=32, n_vectors=24,
                      n_bilinear=12, n_bilinear_scalars=8, depth=2, mlp_hidden=384, eval_samples=64,
                      grad_clip=1.0),
        # the protocol of Finzi, Benton and Wilson (2021) for modified inertia: raw targets, 1000
        # training samples, Adam at a constant 3e-3, batch 500, 1000 steps, no clipping
        "rpp": dict(data="paper", steps=1000, batch_size=500, lr=3e-3, schedule="constant", raw_targets=True,
                    n_scalars=32, n_vectors=24, n_bilinear=12, n_bilinear_scalars=8, depth=2, mlp_hidden=384,
                    mlp_depth=3, eval_samples=64, grad_clip=None, emlp_channels=384, emlp_depth=3,
                    emlp_bilinear=4),
    }
    methods = ("projection", "plain", "strict", "sample-output", "rpp", "per")
    _arches = ("emlp", "emlp384", "mlp")
    level_name = "c (modified inertia)"
    default_level = None
    default_sweep = {"method": ["plain", "strict", "projection"], "lambda_perp": [1e-2, 3e-2, 1e-1, 3e-1, 1.0]}
    unused = ("route",)  # the layers' projectors are chosen by equiproj.nn
    option_defaults = {"task": ("modified_inertia", "o5, inertia or modified_inertia"),
                       "arch": ("emlp", "emlp, emlp384 or mlp (plain reference)"),
                       "init": ("equivariant", "equivariant, projected or random"),
                       "model": ("default", "default or small (for PER)")}

    def check(self, cfg: RunConfig) -> None:
        super().check(cfg)
        unknown = set(cfg.options) - {"task", "arch", "init", "model"}
        if unknown:
            raise ValueError(f"unknown options for vectors: {sorted(unknown)} (known: task, arch, init, model)")
        if cfg.options.get("model", "default") not in ("default", "small"):
            raise ValueError(f"option model must be 'default' or 'small', got {cfg.options['model']!r}")
        if cfg.options.get("init", "equivariant") not in ("equivariant", "projected", "random"):
            raise ValueError(f"option init must be 'equivariant', 'projected' or 'random', got "
                             f"{cfg.options['init']!r}")
        task = cfg.options.get("task", "modified_inertia")
        if task not in ("o5", "inertia", "modified_inertia"):
            raise ValueError(f"option task must be 'o5', 'inertia' or 'modified_inertia', got {task!r}")
        arch = cfg.options.get("arch", "emlp")
        if arch not in self._arches:
            raise ValueError(f"option arch must be one of {', '.join(map(repr, self._arches))}, got {arch!r}")
        if arch == "mlp" and cfg.method not in ("plain", "sample-output"):
            raise ValueError("the plain MLP has no declared layers: use method 'plain' or 'sample-output'")
        if task == "o5" and cfg.method == "per":
            raise ValueError("PER needs an exact dense projector, which equiproj cannot integrate for O(5)")

    def setup(self, cfg: RunConfig, preset: Dict[str, Any], device: torch.device) -> Setup:
        task = cfg.options.get("task", "modified_inertia")
        arch = cfg.options.get("arch", "emlp")
        c = 0.3 if cfg.level is None else float(cfg.level)
        data = make_vector_task(task, preset["data"], seed=cfg.seed, c=c)
        # one scalar: the training RMS target (keeps every task equivariant); raw targets keep 1
        ms_train = float(data["y_train"].pow(2).mean())
        scale = 1.0 if preset.get("raw_targets") else ms_train ** 0.5
        for k in ("y_train", "y_val", "y_test"):
            data[k] = data[k] / scale
        G, rin, rout = task_representations(task)
        torch.manual_seed(cfg.seed)
        if arch == "emlp":
            if cfg.options.get("model", "default") == "small":  # small enough for PER's dense matrices
                preset = dict(preset, n_scalars=8, n_vectors=6, n_bilinear=5, n_bilinear_scalars=2)
            model = EquivariantMLP(rin, rout, preset["n_scalars"], preset["n_vectors"], preset["n_bilinear"],
                                   preset["depth"], preset["n_bilinear_scalars"])
        elif arch == "emlp384":
            nb = preset.get("emlp_bilinear", 4)
            model = EMLP(rin, rout, uniform_representation(preset.get("emlp_channels", 384), G),
                         depth=preset.get("emlp_depth", 3), n_bilinear_scalars=nb, n_bilinear_vectors=nb)
        else:
            model = plain_mlp(rin.dim, rout.dim, preset["mlp_hidden"], preset.get("mlp_depth", 2))
        init = {"random": "keep"}.get(cfg.options.get("init", "equivariant"), cfg.options.get("init", "equivariant"))
        model = model.to(device)
        tr = (data["x_train"].to(device), data["y_train"].to(device))
        val = (data["x_val"].to(device), data["y_val"].to(device))
        te = (data["x_test"].to(device), data["y_test"].to(device))

        def loss_fn(m, batch):
            return nn.functional.mse_loss(m(batch[0]), batch[1])

        def mse(m, split):
            with torch.no_grad():
                return float(nn.functional.mse_loss(m(split[0]), split[1]))

        def eval_fn(m):
            return {"val_mse": mse(m, val)}

        n = preset["eval_samples"]

        # relative MSE: divided by the mean squared training target (in the training units)
        rel = scale ** 2 / ms_train

        def final_metrics(m):
            gen = torch.Generator().manual_seed(1000 + cfg.seed)
            elements = G.sample(n, generator=gen, dtype=torch.float32)
            err = equivariance_error(m, te[0], rin, rout, elements=elements.to(device) if G.is_finite else elements)
            test, valm = mse(m, te), mse(m, val)
            return {"test_mse": test * rel, "test_mse_abs": test * scale ** 2, "val_mse": valm * rel,
                    "train_mse": mse(m, tr) * rel, "equivariance_error": err.mean, "equivariance_error_max": err.max,
                    "task": task, "arch": arch}

        steps = preset["steps"]
        tc = TrainConfig(steps=steps, batch_size=preset["batch_size"], lr=preset["lr"], optimizer="adam",
                         schedule=preset.get("schedule", "cosine"), grad_clip=preset.get("grad_clip"),
                         log_every=max(1, steps // 20), eval_every=max(1, steps // 20),
                         checkpoint_every=max(1, steps // 4), select="val_mse")
        return Setup(model=model, train_data=tr, loss_fn=loss_fn, train_config=tc, final_metrics=final_metrics,
                     eval_fn=eval_fn, method_options=dict(act_in=rin, act_out=rout, group=G, init=init))

    def report(self, rows: List[Dict[str, Any]], out: Path) -> str:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = [dict(r) for r in rows]
        for r in rows:  # rows written before the training schemes existed used the penalty scheme
            if r.get("method") == "projection" and not r.get("scheme"):
                r["scheme"] = "penalty"
            if r.get("level") is None and r.get("task") == "modified_inertia":
                r["level"] = 0.3  # the default c
            if r.get("method") != "plain":  # plain keeps its own initialisation
                r["init"] = r.get("opt_init", "equivariant")
        parts = [f"## vectors\n\n{self.description}. `test MSE` is relative to the mean squared training "
                 "target, `abs. MSE` in the targets' own units (presets with raw targets); `sel.` columns are the "
                 "weights of the best validation MSE (the tables report the final weights); equivariance error: mean "
                 "relative error under sampled elements of O(5) / O(3).\n"]
        labels = {"level": "c", "test_mse": "test MSE", "test_mse_abs": "abs. MSE", "sel_test_mse": "sel. test MSE",
                  "sel_test_mse_abs": "sel. abs. MSE", "equivariance_error": "equiv. error",
                  "time_per_step_s": "s / step", "lambda_perp": "λ⊥", "perp_lr": "perp_lr"}
        for task in sorted({r.get("task") for r in rows if r.get("task")}):
            rs = [r for r in rows if r.get("task") == task]
            parts.append(f"### {task}\n")
            for preset in sorted({r.get("preset") for r in rs}):
                ps = [r for r in rs if r.get("preset") == preset]
                raw = bool(self.presets.get(preset, {}).get("raw_targets"))
                mse = ["test_mse_abs", "sel_test_mse_abs"] if raw else ["test_mse", "sel_test_mse"]
                parts.append(f"#### preset `{preset}`\n")
                keys = ["arch", "method", "scheme", "perp_lr", "norm", "lambda_perp", "level"]
                if len({r.get("init") for r in ps if r.get("init")}) > 1:
                    keys.insert(4, "init")
                parts.append(markdown_table(ps, keys, mse + ["equivariance_error", "time_per_step_s"], labels))
                for fig, caption in self._scheme_plots(ps, task, preset, mse[0], out, plt):
                    parts.append(f"\n![{caption}]({fig})\n")
            fig = self._lambda_plot(rs, task, out, plt)
            if fig:
                parts.append(f"\n![{task}: test MSE and equivariance error against lambda_perp]({fig})\n")
        return "\n".join(parts)

    def _scheme_plots(self, rows, task, preset, key, out, plt):
        """Test MSE against lambda_perp, one line per training scheme (mean and standard deviation over
        seeds as error bars, lambda_perp = 0 as a marker at the left edge), the strict model, the plain
        MLP and the same architecture with free weights as horizontal lines with bands; one figure per
        architecture and c."""
        import numpy as np

        figs = []
        proj = [r for r in rows if r["method"] == "projection" and r.get("norm") == "fro"]
        for arch in sorted({r.get("arch") for r in proj}):
            for lvl in sorted({r.get("level") for r in proj}, key=lambda v: -1 if v is None else v):
                every = [r for r in proj if r.get("arch") == arch and r.get("level") == lvl]
                main = [r for r in every if _default_variant(r)]
                extra = [r for r in every if not _default_variant(r)]
                # the schemes at their defaults in one figure; other perp_lr and initialisations in a
                # second, beside the default scheme
                parts = [("", main)] + ([("_variants", extra + [r for r in main if r["scheme"] == "split"])]
                                        if extra else [])
                for suffix, sel in parts:
                    def variant(r):
                        return r["scheme"], r.get("perp_lr"), r.get("init", "equivariant")

                    variants = sorted({variant(r) for r in sel}, key=lambda v: (
                        v[2] != "equivariant", v[2], _SCHEME_ORDER.get(v[0], 9), v[1] or 0))
                    if not any(len({r["lambda_perp"] for r in sel if variant(r) == v and r["lambda_perp"] > 0}) > 1
                               for v in variants):
                        continue
                    lams = sorted({r["lambda_perp"] for r in sel if r["lambda_perp"] > 0})
                    x0 = lams[0] / 10  # where lambda_perp = 0 is drawn
                    fig, ax = plt.subplots(figsize=(6.4, 4.6), layout="constrained")
                    refs = (("strict", "--", "k", lambda r: r["method"] == "strict" and r.get("arch") == arch),
                            ("plain MLP", ":", "0.45", lambda r: r["method"] == "plain" and r.get("arch") == "mlp"),
                            (f"free {arch} (plain)", "-.", "0.6",
                             lambda r: r["method"] == "plain" and r.get("arch") == arch))
                    ref_vals = {name: [r[key] for r in rows if pick(r) and r.get("level") == lvl]
                                for name, _, _, pick in refs}
                    # diverged runs (orders of magnitude above every reference) are drawn as triangles at the top
                    finite_refs = [float(np.mean(v)) for v in ref_vals.values() if v]
                    cap = 30 * max(finite_refs) if finite_refs else float("inf")
                    clipped = False
                    colour_of: Dict[tuple, int] = {}
                    for v in variants:
                        vs = [r for r in sel if variant(r) == v]
                        pts = sorted({r["lambda_perp"] for r in vs})
                        m = [np.mean([r[key] for r in vs if r["lambda_perp"] == p]) for p in pts]
                        sd = [sample_std([r[key] for r in vs if r["lambda_perp"] == p]) for p in pts]
                        xs = [p if p > 0 else x0 for p in pts]
                        counts = sorted({sum(r["lambda_perp"] == p for r in vs) for p in pts})
                        n_seeds = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
                        label = (v[0] + ("" if v[1] is None else f" (perp_lr {v[1]:g})")
                                 + ("" if v[2] == "equivariant" else f", init {v[2]}")
                                 + f", {n_seeds} seed{'' if n_seeds == '1' else 's'}")
                        # the schemes keep their colours in every figure; variants take the next ones
                        colour = (f"C{_SCHEME_ORDER.get(v[0], 4)}" if _default_variant_key(v)
                                  else f"C{4 + colour_of.setdefault(v, len(colour_of)) % 6}")
                        style = "-" if v[2] == "equivariant" else ":"  # other initialisations dotted, own marker
                        mark = _INIT_MARKERS.get(v[2], "P")
                        over = [j for j, p in enumerate(pts) if not m[j] <= cap]
                        if over:
                            clipped = True
                            ax.plot([xs[j] for j in over], [cap] * len(over), marker="^", ls="none", ms=9, color=colour,
                                    clip_on=False)
                        pos = [j for j, p in enumerate(pts) if p > 0 and j not in over]
                        ax.errorbar([xs[j] for j in pos], [m[j] for j in pos], yerr=[sd[j] for j in pos], marker=mark,
                                    capsize=3, color=colour, ls=style, label=label + (" (triangles: diverged, off the scale)"
                                                                             if over else ""))
                        if 0 in pts:
                            j = pts.index(0)
                            ax.errorbar([x0], [m[j]], yerr=[sd[j]], marker="s", mfc="white", capsize=3, color=colour)
                    for name, style, colour, _ in refs:
                        ref = ref_vals[name]
                        if ref:
                            mu, sd = float(np.mean(ref)), sample_std(ref)
                            ax.axhline(mu, ls=style, color=colour, lw=1.2, label=f"{name} ({len(ref)} seeds)")
                            ax.axhspan(mu - sd, mu + sd, color=colour, alpha=0.08, lw=0)
                    ax.set_xscale("log")
                    ax.set_yscale("log")
                    if clipped:
                        ax.set_ylim(top=cap)
                    ax.set_xlabel("lambda_perp (open squares: lambda_perp = 0)")
                    zero_tick(ax, x0, any(r["lambda_perp"] == 0 for r in sel))
                    ax.set_ylabel(("absolute" if key.endswith("_abs") else "relative") + " test MSE")
                    c = "" if lvl is None else f", c = {lvl:g}"
                    dev = ", ".join(sorted({str(r.get("device")) for r in sel}))
                    ax.set_title(f"{task}, arch {arch}, preset {preset}{c}\nmean ± sample std over seeds (counts in the "
                                 f"legend); {dev}", fontsize=8)
                    fig.legend(fontsize=7, loc="outside lower center", ncol=3)
                    name = f"vectors_{task}_{preset}_{arch}_c{'none' if lvl is None else f'{lvl:g}'}_schemes{suffix}.png"
                    figs.append((save_figure(fig, figures_dir(out) / name),
                                 f"{task}, {arch}{c}: test MSE against lambda_perp per training scheme"
                                  + (" (other perp_lr and initialisations)" if suffix else "")))
        return figs

    def _lambda_plot(self, rows, task, out, plt):
        """Test MSE and equivariance error against lambda_perp (Frobenius runs), one colour per c;
        the strict model dashed and the plain MLP dotted in the same colour."""
        proj = [r for r in rows if r["method"] == "projection" and r["lambda_perp"] > 0 and r.get("norm") == "fro"
                and r.get("preset") != "rpp" and r.get("scheme") in (None, "penalty")]
        if len({r["lambda_perp"] for r in proj}) < 2:
            return None

        def mean(rs, key):
            return sum(r[key] for r in rs) / len(rs)

        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.4))
        levels = sorted({r.get("level") for r in proj}, key=lambda v: -1 if v is None else v)
        colours = plt.cm.viridis([i / max(1, len(levels) - 1) * 0.85 for i in range(len(levels))])
        for colour, lvl in zip(colours, levels):
            lab = "" if lvl is None else f"c={lvl:g}"
            pts = sorted({r["lambda_perp"] for r in proj if r.get("level") == lvl})
            groups = [[r for r in proj if r["lambda_perp"] == p and r.get("level") == lvl] for p in pts]
            a1.plot(pts, [mean(g, "test_mse") for g in groups], marker="o", color=colour, label=f"projection {lab}")
            a2.plot(pts, [mean(g, "equivariance_error") for g in groups], marker="o", color=colour)
            for name, style in (("strict", "--"), ("plain", ":")):
                rs = [r for r in rows if r["method"] == name and r.get("level") == lvl]
                if rs:
                    a1.axhline(mean(rs, "test_mse"), ls=style, color=colour, lw=1,
                               label=f"{name} {lab}" if name == "strict" else None)
        a1.plot([], [], ls=":", color="gray", label="plain MLP (dotted)")
        for a in (a1, a2):
            a.set_xscale("log")
            a.set_yscale("log")
            a.set_xlabel("lambda_perp")
        a1.set_ylabel("test MSE (relative)")
        a2.set_ylabel("equivariance error")
        a1.legend(fontsize=6, ncol=2)
        fig.suptitle(f"{task}: projection penalty (Frobenius) against strict (dashed) and plain MLP (dotted)",
                     fontsize=9)
        return save_figure(fig, figures_dir(out) / f"vectors_{task}_lambda.png")
