r"""Experiment 'ct': CT metal-artefact reduction with bilateral implants, approximately C4-equivariant.

The medical-imaging experiment of Berndt and Stühmer (2026): a U-Net post-processes the
filtered back-projection (FBP) of a CT scan with metal implants and predicts the metal-free
image. Rotations by 90 degrees (the cyclic group ``C4``) are a good but imperfect prior for
this task: streaks and anatomy have no preferred orientation, but the dark band between two
hip implants is always horizontal, and the table never rotates
(:mod:`equiproj.data.ct`, ``docs/data/ct.md``).

Model. :class:`equiproj.models.UNet2d` (plain ``nn.Conv2d`` / ``nn.ConvTranspose2d``, ReLU,
2x2 max pooling) as a residual post-processor, ``output = input[:, :1] + net(input)``. Every
convolution is declared with :func:`equiproj.declare_model` for ``cyclic(4)``: the image
channels are trivial fields, every hidden channel block a regular field (widths are multiples
of 4). After :func:`equiproj.project_` the network is exactly C4-equivariant (3x3 kernels with
padding 1, 2x2 pooling and 2x2 transposed convolutions all commute with ``rot90`` on even
sizes); method ``strict`` keeps it there, ``projection`` penalises ``||W - P(W)||``.

Intensities. Images are in water units (water = 1, targets in ``[0, 1.8]``). The network sees
``(clip(x, -1, 3) - 0.5) / 0.5``: the clip removes the metal values (up to about 25 x water),
which are excluded from loss and metrics anyway, and the affine map makes the targets roughly
zero-mean with unit spread. Outputs are mapped back before the metrics. The loss is the mean
squared error over the pixels outside the metal. With ``li_input=true`` the linear-interpolation
(LI) image is the first channel (the residual is added to it) and the FBP the second.

Symmetry settings (``--option symmetry=...``): ``control`` (uniform patient rotation, no
table, full views: symmetric up to the half-pixel rotation centre of scikit-image, about 2 %),
``default`` (5 degree jitter, table, bilateral implants) and ``strong`` (the default plus a
60 degree missing wedge of views, which breaks the symmetry of the measurement itself).

Initialisation: He-normal convolutions with zero biases, and a zero final 1x1 convolution, so
that every network starts as the identity (output = input). Every method but ``plain`` starts
from the equivariant projection of that initialisation, each weight rescaled back to its
former norm (what :func:`equiproj.baselines.make_method` does by default, ``init="equivariant"``;
``--option init=random`` keeps the raw one).

Metrics: PSNR and SSIM outside the metal (:func:`equiproj.data.ct.psnr_outside_metal`, data
range 2), of the output and of the FBP input; the relative equivariance error under the three
non-trivial rotations on the test images; the Frobenius defect ``sum_l ||W_l - P(W_l)||``;
time per step and throughput (from :func:`equiproj.train.fit`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torch import nn

from ..actions import feature_map_action
from ..data.ct import CTConfig, make_ct_dataset, psnr_outside_metal, ssim_outside_metal
from ..groups import cyclic
from ..metrics import equivariance_error
from ..models import UNet2d
from ..regularise import declare_model, report as layer_report
from ..train import TrainConfig
from ._core import (Experiment, RunConfig, Setup, figures_dir, group_rows, markdown_table, register_experiment,
                    run_folder, sample_std, save_figure, takes_weight, zero_tick)

__all__ = ["CTExperiment", "SYMMETRY_SETTINGS", "normalise", "denormalise", "build_model",
           "ct_data_config"]

#: Input window (water units) and the affine map to the network's units.
CLIP = (-1.0, 3.0)
SHIFT, SCALE = 0.5, 0.5

#: The symmetry settings: overrides of the data configuration.
SYMMETRY_SETTINGS: Dict[str, Dict[str, Any]] = {
    "control": dict(rotation_std_deg="uniform", table=False, limited_angle_deg=0.0),
    "default": dict(),
    "strong": dict(limited_angle_deg=60.0),
}
_SYMMETRY_TEXT = {
    "control": "uniform rotation, no table, full views (C4-symmetric up to ~2 % interpolation)",
    "default": "5° jitter, table, bilateral implants (mildly broken)",
    "strong": "default + 60° missing wedge of views (strongly broken)",
}

_OPTIONS = {"symmetry", "metal", "li_input", "init", "data_seed"}
_SAMPLE_METHODS = ("sample-output", "eqreg")


def normalise(x):
    """Water units -> network units: ``(clip(x, -1, 3) - 0.5) / 0.5`` (numpy or torch)."""
    if isinstance(x, torch.Tensor):
        return (x.clamp(*CLIP) - SHIFT) / SCALE
    return (np.clip(x, *CLIP) - SHIFT) / SCALE


def denormalise(y):
    """Network units -> water units (no clipping)."""
    return y * SCALE + SHIFT


def build_model(in_channels: int, width: int, depth: int, route: str = "auto", zero_head: bool = True,
                example_input: Optional[torch.Tensor] = None) -> nn.Module:
    """The residual U-Net with every convolution declared for C4 (regular hidden fields).

    Initialisation: He-normal 3x3 convolutions (they feed ReLUs), transposed convolutions with
    standard deviation ``1 / sqrt(c_in)``, zero biases, and (``zero_head``) a zero final 1x1
    convolution, so that the network starts as the identity. ``example_input`` (one batch of the
    images the network will see) lets :func:`equiproj.declare_model` check that the strides and
    poolings are exact on that size instead of warning that it was not checked.

    >>> net = build_model(1, width=4, depth=1, example_input=torch.zeros(1, 1, 8, 8))  # checks the pooling sizes
    >>> x = torch.randn(2, 1, 8, 8)
    >>> bool(torch.equal(net(x), x))
    True
    """
    if width % 4:
        raise ValueError(f"the U-Net width must be a multiple of 4 (C4 regular fields), got {width}")
    model = UNet2d(in_channels, 1, width=width, depth=depth, residual=True)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.ConvTranspose2d):
                nn.init.normal_(m.weight, std=1.0 / math.sqrt(m.in_channels))
            elif isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and m.bias is not None:
                m.bias.zero_()
        if zero_head:
            model.head.weight.zero_()
    declare_model(model, cyclic(4), route=route, example_input=example_input)
    return model


def ct_data_config(preset: Dict[str, Any], symmetry: str, metal: str, li_input: bool, seed: int) -> CTConfig:
    """The :class:`equiproj.data.ct.CTConfig` of one run."""
    over = dict(SYMMETRY_SETTINGS[symmetry])
    for k in ("n_train", "n_test"):
        if preset.get(k) is not None:
            over[k] = preset[k]
    return CTConfig.preset(preset["data"], metal=metal, li_input=bool(li_input), seed=seed, **over)


def _options(cfg: RunConfig) -> Dict[str, Any]:
    o = dict(cfg.options)
    return dict(symmetry=o.get("symmetry", "default"), metal=o.get("metal", "strong"),
                li_input=o.get("li_input", False), init=o.get("init", "equivariant"),
                data_seed=o.get("data_seed", 0))


@register_experiment
class CTExperiment(Experiment):
    name = "ct"
    description = ("CT metal-artefact reduction with bilateral implants: residual U-Net, C4 = rotations by "
                   "90 degrees (paper's medical-imaging experiment)")
    presets = {
        # the data's ci preset: 64 x 64, 90 views, 64 train / 16 test images; seconds on a CPU
        "ci": dict(data="ci", n_train=None, n_test=None, steps=60, batch_size=16, lr=3e-3, warmup=0, width=8,
                   depth=2, eval_chunk=16, equiv_images=16, panels=3),
        # the largest size that runs a full sweep on a 2-core CPU in well under an hour
        "cpu": dict(data="ci", n_train=512, n_test=64, steps=300, batch_size=16, lr=3e-3, warmup=20, width=16,
                    depth=2, eval_chunk=32, equiv_images=32, panels=3),
        # the cpu preset trained ten times longer, with model selection: the last n_val training images are
        # a validation split, and the weights of the best validation PSNR are evaluated beside the final ones
        "cpu-long": dict(data="ci", n_train=512, n_test=64, n_val=64, steps=3000, batch_size=16, lr=3e-3, warmup=100,
                         width=16, depth=2, eval_chunk=32, equiv_images=32, panels=3, eval_every=150),
        # the real size (GPU): 128 x 128, 180 views, 2000 train / 200 test images
        "paper": dict(data="paper", n_train=None, n_test=None, steps=10000, batch_size=32, lr=1e-3, warmup=200,
                      width=32, depth=3, eval_chunk=50, equiv_images=50, panels=3),
    }
    methods = ("plain", "strict", "projection", "sample-output", "eqreg", "rpp")
    level_name = "none (use --option symmetry=control|default|strong)"
    default_level = None
    default_sweep = {"method": ["plain", "strict", "projection"], "lambda_perp": [0.0, 1e-4, 1e-3, 1e-2]}
    option_defaults = {"symmetry": ("default", "control, default or strong"), "metal": ("strong", "strong or mild"),
                       "li_input": (False, "feed the linear-interpolation image as a second channel"),
                       "init": ("equivariant", "equivariant or random"), "data_seed": (0, "seed of the data set")}

    # ------------------------------------------------------------------ configuration
    def check(self, cfg: RunConfig) -> None:
        super().check(cfg)
        unknown = set(cfg.options) - _OPTIONS
        if unknown:
            raise ValueError(f"unknown options for ct: {sorted(unknown)} (known: {', '.join(sorted(_OPTIONS))})")
        o = _options(cfg)
        if o["symmetry"] not in SYMMETRY_SETTINGS:
            raise ValueError(f"option symmetry must be 'control', 'default' or 'strong', got {o['symmetry']!r}")
        if o["metal"] not in ("strong", "mild"):
            raise ValueError(f"option metal must be 'strong' or 'mild', got {o['metal']!r}")
        if not isinstance(o["li_input"], (bool, np.bool_)):
            raise ValueError(f"option li_input must be true or false, got {o['li_input']!r}")
        if o["init"] not in ("equivariant", "random"):
            raise ValueError(f"option init must be 'equivariant' or 'random', got {o['init']!r}")
        ds = o["data_seed"]
        if isinstance(ds, bool) or not isinstance(ds, (int, np.integer)) or ds < 0:
            raise ValueError(f"option data_seed must be an integer >= 0, got {ds!r}")
        if cfg.level is not None:
            raise ValueError(f"experiment 'ct' has no numeric level (got {cfg.level!r}): choose the symmetry "
                             "setting with --option symmetry=control|default|strong")

    def method_options(self, cfg: RunConfig, in_channels: int) -> Dict[str, Any]:
        """The experiment's part of the options of :func:`equiproj.baselines.make_method`: the group
        and how it acts on the input and output images (the framework adds each method's weight:
        ``lambda_perp`` is projection's ``lambda_perp``, the ``lambda_`` of sample-output / eqreg
        and the ``lambda_free`` of rpp)."""
        G = cyclic(4)
        return dict(group=G, act_in=feature_map_action(in_channels * G.trivial()),
                    act_out=feature_map_action(G.trivial()))

    # ------------------------------------------------------------------ one run
    def setup(self, cfg: RunConfig, preset: Dict[str, Any], device: torch.device) -> Setup:
        o = _options(cfg)
        dcfg = ct_data_config(preset, o["symmetry"], o["metal"], o["li_input"], o["data_seed"])
        train = make_ct_dataset(dcfg, "train", progress=False)
        test = make_ct_dataset(dcfg, "test", progress=False)
        li = bool(o["li_input"])

        def net_input(d):
            chans = [d["input_li"], d["input"]] if li else [d["input"]]
            return torch.from_numpy(normalise(np.concatenate(chans, axis=1)).astype(np.float32))

        x_tr, x_te = net_input(train).to(device), net_input(test).to(device)
        y_tr = torch.from_numpy(normalise(train["target"])).to(device)
        keep_tr = torch.from_numpy(~train["metal_mask"]).to(device=device, dtype=torch.float32)
        n_val = int(preset.get("n_val") or 0)
        if n_val:  # a validation split: the last n_val training images
            if n_val >= len(x_tr):
                raise ValueError(f"preset {cfg.preset!r}: n_val={n_val} leaves no training images of {len(x_tr)}")
            val_target, val_mask = train["target"][-n_val:], train["metal_mask"][-n_val:]
            x_val = x_tr[-n_val:]
            x_tr, y_tr, keep_tr = x_tr[:-n_val], y_tr[:-n_val], keep_tr[:-n_val]
        in_ch = x_tr.shape[1]

        torch.manual_seed(cfg.seed)
        model = build_model(in_ch, preset["width"], preset["depth"], route=cfg.route,
                            example_input=x_tr[:1].cpu()).to(device)  # the image size is checked, not assumed

        def loss_fn(m, batch):
            x, y, keep = batch
            err = (m(x) - y).pow(2) * keep
            return err.sum() / keep.sum().clamp_min(1.0)

        chunk = preset["eval_chunk"]

        def predict(m, x):
            with torch.no_grad():
                return torch.cat([m(c) for c in x.split(chunk)])

        target, mask = test["target"], test["metal_mask"]
        n_eq = min(preset["equiv_images"], len(x_te))
        G = cyclic(4)
        act_in, act_out = feature_map_action(in_ch * G.trivial()), feature_map_action(G.trivial())

        def eval_fn(m):
            if n_val:
                pred = denormalise(predict(m, x_val)).cpu().numpy()
                return {"val_psnr": psnr_outside_metal(pred, val_target, val_mask, reduction="mean")}
            n = min(16, len(x_te))  # no validation split: a monitor only, never used for selection
            pred = denormalise(predict(m, x_te[:n])).cpu().numpy()
            return {"monitor_psnr": psnr_outside_metal(pred, target[:n], mask[:n], reduction="mean")}

        def final_metrics(m):
            pred = denormalise(predict(m, x_te)).cpu().numpy()
            res = {
                "psnr": psnr_outside_metal(pred, target, mask, reduction="mean"),
                "ssim": ssim_outside_metal(pred, target, mask, reduction="mean"),
                "psnr_input": psnr_outside_metal(test["input"], target, mask, reduction="mean"),
                "ssim_input": ssim_outside_metal(test["input"], target, mask, reduction="mean"),
            }
            if li:
                res["psnr_li"] = psnr_outside_metal(test["input_li"], target, mask, reduction="mean")
                res["ssim_li"] = ssim_outside_metal(test["input_li"], target, mask, reduction="mean")
            res["psnr_gain"] = res["psnr"] - res["psnr_input"]
            # equivariance under the three non-trivial quarter turns, on the test images
            xe = x_te[:n_eq]
            err = equivariance_error(lambda x: predict(m, x), xe, act_in, act_out, group=G,
                                     elements=G.elements()[1:])
            with torch.no_grad():
                resid = torch.linalg.vector_norm(predict(m, xe) - xe[:, :1]).clamp_min(1e-12)
                full = torch.linalg.vector_norm(predict(m, xe)).clamp_min(1e-12)
            res["equiv_error"] = err.mean
            res["equiv_error_max"] = err.max
            # the same mismatch relative to the learnt correction f(x) - x instead of f(x)
            res["equiv_error_res"] = err.mean * float(full / resid)
            rows = layer_report(m, "fro")
            res["defect_fro"] = sum(r.defect_norm for r in rows)
            w2 = sum(r.weight_norm ** 2 for r in rows)
            res["rel_defect"] = math.sqrt(sum(r.defect_norm ** 2 for r in rows) / w2) if w2 > 0 else 0.0
            res.update(symmetry=o["symmetry"], metal=o["metal"], li_input=li, init=o["init"],
                       n_train=int(len(x_tr)), n_test=int(len(x_te)), size=int(x_te.shape[-1]),
                       train_steps=int(cfg.steps or preset["steps"]), batch_size=int(preset["batch_size"]))
            k = min(preset["panels"], len(x_te))
            res["_artifacts"] = {
                "input": test["input"][:k, 0].astype(np.float32), "output": pred[:k, 0].astype(np.float32),
                "target": target[:k, 0].astype(np.float32), "metal_mask": mask[:k, 0],
            }
            return res

        steps = preset["steps"]
        tc = TrainConfig(steps=steps, batch_size=preset["batch_size"], lr=preset["lr"], optimizer="adam",
                         schedule="cosine", warmup_steps=preset["warmup"] if preset["warmup"] < steps else 0,
                         grad_clip=1.0, log_every=max(1, steps // 20),
                         eval_every=preset.get("eval_every") or max(1, steps // 5),
                         checkpoint_every=max(1, steps // 4), select="-val_psnr" if n_val else None)
        return Setup(model=model, train_data=(x_tr, y_tr, keep_tr), loss_fn=loss_fn, train_config=tc,
                     final_metrics=final_metrics, eval_fn=eval_fn,
                     method_options=dict(self.method_options(cfg, in_ch),
                                         init="keep" if o["init"] == "random" else "equivariant"))

    # ------------------------------------------------------------------ report
    def report(self, rows: List[Dict[str, Any]], out: Path) -> str:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = [dict(r) for r in rows]
        for r in rows:
            _annotate(r)
        parts = [f"## ct\n\n{self.description}. PSNR (dB) and SSIM outside the metal on the test images "
                 "(data range 2); equivariance error: mean relative error `||f(gx) - g f(x)|| / ||f(x)||` over "
                 "the three non-trivial rotations by 90° on the test images; defect: `sum_l ||W_l - P(W_l)||` "
                 "in the penalty's norm (`defect_sum`) and in the Frobenius norm (`defect_fro`); step time and "
                 "throughput (training samples per second) from the training loop.\n"]
        sections = group_rows(rows, ["preset", "metal", "li_input", "init"])
        for key, rs in sorted(sections.items(), key=lambda kv: tuple(str(v) for v in kv[0])):
            preset, metal, li, init = key
            tag = f"{preset}_{metal}metal{'_li' if li else ''}{'_randinit' if init == 'random' else ''}"
            sizes = sorted({(r.get("size"), r.get("n_train"), r.get("n_test")) for r in rs})
            size_txt = ", ".join(f"{s}x{s}, {a} train / {b} test images" for s, a, b in sizes)
            steps = sorted({r.get("train_steps") for r in rs}, key=lambda v: (v is None, v))
            parts.append(f"### preset `{preset}` ({size_txt}; {'/'.join(map(str, steps))} steps), metal {metal}"
                         f"{', LI input' if li else ''}{', random init' if init == 'random' else ''}\n")
            parts.append(self._section(rs, out, tag, plt))
        return "\n".join(parts)

    def _section(self, rows, out, tag, plt) -> str:
        parts = []
        default = [r for r in rows if r["symmetry"] == "default"]
        ref = default or rows
        inp = [r["psnr_input"] for r in ref]
        ssim_in = [r["ssim_input"] for r in ref]
        parts.append(f"FBP input: PSNR {np.mean(inp):.2f} dB, SSIM {np.mean(ssim_in):.3f}" + (
            f"; LI input: PSNR {np.mean([r['psnr_li'] for r in ref]):.2f} dB" if ref[0].get("psnr_li") else "")
            + ".\n")
        quality = ["psnr", "ssim", "equiv_error", "equiv_error_res", "defect_sum", "defect_fro", "time_ms",
                   "throughput"]
        if any(r.get("sel_psnr") is not None for r in rows):  # model selection on the validation split
            quality = ["sel_psnr", "sel_ssim", "psnr", "ssim", "sel_equiv_error", "sel_defect_fro", "time_ms"]
        labels = {"variant": "method", "psnr": "PSNR", "ssim": "SSIM", "equiv_error": "equiv. error",
                  "equiv_error_res": "equiv. error / correction", "defect_sum": "defect (penalty norm)",
                  "defect_fro": "defect (Frobenius)", "time_ms": "ms / step", "throughput": "samples / s",
                  "lam": "λ", "norm": "norm", "symmetry": "symmetry", "sel_psnr": "PSNR (selected)",
                  "sel_ssim": "SSIM (selected)", "sel_equiv_error": "equiv. error (selected)",
                  "sel_defect_fro": "defect (Frobenius, selected)"}
        comp = [r for r in default if r["norm"] == "fro"]
        if comp:
            parts.append("#### Method comparison (symmetry `default`, norm `fro`)\n")
            parts.append("λ is `lambda_perp` for projection, the weight `lambda_` of sample-output / eqreg and "
                         "`lambda_free` of rpp.\n")
            parts.append(markdown_table(comp, ["variant", "lam"], quality, labels))
        proj_norms = [r for r in default if r["method"] == "projection"]
        if len({r["norm"] for r in proj_norms}) > 1:
            # the weights at which some other norm ran (the whole fro sweep is in the table above)
            shared = {r["lambda_perp"] for r in proj_norms if r["norm"] != "fro"}
            proj_norms = [r for r in proj_norms if r["lambda_perp"] in shared]
            parts.append("\n#### Norm ablation (projection, symmetry `default`)\n")
            parts.append("`defect (penalty norm)` is measured in each run's own norm and is not comparable "
                         "across norms; `defect (Frobenius)` is.\n")
            parts.append(markdown_table(proj_norms, ["norm", "route", "lam"],
                                        ["psnr", "ssim", "equiv_error", "defect_sum", "defect_fro", "time_ms",
                                         "throughput"], labels))
        if len({r["symmetry"] for r in rows}) > 1:
            sym = [r for r in rows if r["norm"] == "fro"]
            # the variants that ran in every symmetry setting present
            settings = {r["symmetry"] for r in sym}
            where: Dict[tuple, set] = {}
            for r in sym:
                where.setdefault((r["variant"], r["lam"]), set()).add(r["symmetry"])
            sym = [r for r in sym if where[(r["variant"], r["lam"])] == settings] or sym
            parts.append("\n#### Symmetry sweep (control / default / strong)\n")
            parts.append("; ".join(f"`{s}`: {t}" for s, t in _SYMMETRY_TEXT.items()) + ".\n")
            selected = any(r.get("sel_psnr") is not None for r in sym)
            cols = (["psnr_input", "sel_psnr", "sel_psnr_gain", "psnr", "sel_ssim", "sel_equiv_error", "sel_defect_fro"]
                    if selected else ["psnr_input", "psnr", "psnr_gain", "ssim", "equiv_error", "defect_fro"])
            if selected:
                parts.append("With model selection: the weights of the best validation PSNR (`selected`) beside the "
                             "last weights (`PSNR`).\n")
            parts.append(markdown_table(sym, ["symmetry", "variant", "lam"], cols,
                                        {**labels, "psnr_input": "input PSNR", "psnr_gain": "PSNR gain",
                                         "sel_psnr_gain": "PSNR gain (selected)"}))
            fig = self._symmetry_plot(sym, out, tag, plt, key="sel_psnr_gain" if selected else "psnr_gain")
            if fig:
                parts.append(f"\n![PSNR gain over the FBP input per symmetry setting]({fig})\n")
        figs = [("test images: input, outputs of the methods, target", self._panels(default or rows, out, tag, plt)),
                ("non-equivariance (defect) and PSNR against lambda_perp", self._lambda_plot(default, out, tag, plt)),
                ("time per step and throughput: projection against the sample-based regularisers",
                 self._throughput_plot(default, out, tag, plt))]
        for caption, fig in figs:
            if fig:
                parts.append(f"\n![{caption}]({fig})\n")
        return "\n".join(parts)

    # figures -----------------------------------------------------------
    def _panels(self, rows, out: Path, tag: str, plt) -> Optional[str]:
        have = [r for r in rows if (run_folder(r, out) / "artifacts.npz").exists()
                and r["norm"] == "fro"]
        if not have:
            return None
        seed0 = min(r["seed"] for r in have)
        best: Dict[str, Dict[str, Any]] = {}
        best_w: Dict[str, bool] = {}
        for r in have:
            if r["seed"] != seed0:
                continue
            name = r["variant"]
            if r["method"] in _SAMPLE_METHODS:
                name = f"{r['method']} k={r['k']}"
            weighted = not takes_weight(r["method"]) or r["lambda_perp"] > 0
            if name not in best or (weighted, r["psnr"]) > (best_w[name], best[name]["psnr"]):
                best[name], best_w[name] = r, weighted
        order = sorted(best, key=lambda n: (_METHOD_ORDER.get(n.split()[0], 9), n))
        arts = {n: np.load(run_folder(best[n], out) / "artifacts.npz") for n in order}
        first = arts[order[0]]
        n_img = first["target"].shape[0]
        cols = ["FBP input"] + order + ["target"]
        fig, axes = plt.subplots(n_img, len(cols), figsize=(1.9 * len(cols), 1.95 * n_img + 0.3), squeeze=False)
        for i in range(n_img):
            tgt, m = first["target"][i], first["metal_mask"][i]
            images = [first["input"][i]] + [arts[n]["output"][i] for n in order] + [tgt]
            for j, (img, title) in enumerate(zip(images, cols)):
                ax = axes[i, j]
                ax.imshow(img, cmap="gray", vmin=0.0, vmax=2.0)
                ax.set_xticks([])
                ax.set_yticks([])
                if j < len(cols) - 1:
                    p = float(psnr_outside_metal(img, tgt, m))
                    label = title if title == "FBP input" else _short(title, best[title])
                    ax.set_title(f"{label}\n{p:.1f} dB" if i == 0 else f"{p:.1f} dB", fontsize=7)
                elif i == 0:
                    ax.set_title("target", fontsize=7)
        fig.suptitle("ct: test images (window [0, 2] water units; PSNR outside the metal)", fontsize=8)
        return save_figure(fig, figures_dir(out) / f"ct_{tag}_panels.png")

    def _lambda_plot(self, rows, out: Path, tag: str, plt) -> Optional[str]:
        """Defect and PSNR against lambda_perp, one line per training scheme (defect: mean with the
        seed range, on a log axis; PSNR: mean ± sample std; lambda_perp = 0 as an open square at the
        left), plain and strict as horizontal lines with bands."""
        proj = [r for r in rows if r["method"] == "projection" and r["norm"] == "fro"
                and r.get("route") in (None, "auto")]
        schemes = sorted({r["scheme"] for r in proj}, key=lambda v: _SCHEME_ORDER.get(v, 9))
        if not any(len({r["lambda_perp"] for r in proj if r["scheme"] == sc and r["lambda_perp"] > 0}) > 1
                   for sc in schemes):
            return None
        psnr_key = "sel_psnr" if all(r.get("sel_psnr") is not None for r in rows) else "psnr"
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
        for ax, key, lab in ((a1, "defect_fro", "defect  Σ‖W − P(W)‖_F"),
                             (a2, psnr_key, "PSNR (dB)" + (" of the selected model" if psnr_key != "psnr" else ""))):
            x0 = min(r["lambda_perp"] for r in proj if r["lambda_perp"] > 0) / 10  # where lambda_perp = 0 goes
            for i, sc in enumerate(schemes):
                rs = [r for r in proj if r["scheme"] == sc]
                pts = sorted({r["lambda_perp"] for r in rs})
                vals = [[r[key] for r in rs if r["lambda_perp"] == p] for p in pts]
                mean = [float(np.mean(v)) for v in vals]
                if key == "defect_fro":  # a log axis: bars from the smallest to the largest seed
                    err = [[m - min(v) for m, v in zip(mean, vals)], [max(v) - m for m, v in zip(mean, vals)]]
                else:
                    err = [[sample_std(v) for v in vals]] * 2
                xs = [p if p > 0 else x0 for p in pts]
                pos = [j for j, p in enumerate(pts) if p > 0]
                ax.errorbar([xs[j] for j in pos], [mean[j] for j in pos],
                            yerr=[[e[j] for j in pos] for e in err], marker="o", capsize=3, color=f"C{i}",
                            label=f"projection {sc}")
                for j in (j for j, p in enumerate(pts) if p == 0):
                    ax.errorbar([x0], [mean[j]], yerr=[[err[0][j]], [err[1][j]]], marker="s", mfc="white", capsize=3,
                                color=f"C{i}")
            for name, style, color, sel in (("plain", ":", "0.45", lambda r: r["method"] == "plain"),
                                            ("strict", "--", "k", lambda r: r["method"] == "strict")):
                vals = [r[key] for r in rows if sel(r)]
                if vals and not (key == "defect_fro" and name == "strict"):
                    mu, sd = float(np.mean(vals)), sample_std(vals)
                    ax.axhline(mu, ls=style, color=color, lw=1.2, label=f"{name} ({len(vals)} seeds)")
                    ax.axhspan(mu - sd, mu + sd, color=color, alpha=0.08, lw=0)
            ax.set_xscale("log")
            ax.set_xlabel("lambda_perp" + (" (open squares: lambda_perp = 0)"
                                           if any(r["lambda_perp"] == 0 for r in proj) else ""))
            zero_tick(ax, x0, any(r["lambda_perp"] == 0 for r in proj))
            ax.set_ylabel(lab)
        a1.set_yscale("log")
        a2.legend(fontsize=7)
        seeds = len({r["seed"] for r in proj})
        dev = ", ".join(sorted({str(r.get("device")) for r in rows}))
        fig.suptitle(f"ct (symmetry default): non-equivariance and image quality against lambda_perp over {seeds} seeds "
                     f"(defect: mean, bars from the smallest to the largest seed; PSNR: mean ± sample std); {dev}",
                     fontsize=8)
        return save_figure(fig, figures_dir(out) / f"ct_{tag}_lambda.png")

    def _throughput_plot(self, rows, out: Path, tag: str, plt) -> Optional[str]:
        groups: Dict[str, List[Dict[str, Any]]] = {}
        for r in rows:
            if r["method"] == "projection" and r["norm"] != "fro":
                continue
            name = f"{r['method']} k={r['k']}" if r["method"] in _SAMPLE_METHODS else r["variant"]
            groups.setdefault(name, []).append(r)
        if not any(n.split()[0] in _SAMPLE_METHODS for n in groups) or not any(n.startswith("projection") for n in groups):
            return None
        names = sorted(groups, key=lambda n: (_METHOD_ORDER.get(n.split()[0], 9), n))
        ms = [np.median([r["time_ms"] for r in groups[n]]) for n in names]
        sps = [np.median([r["throughput"] for r in groups[n]]) for n in names]
        colors = ["C0" if n.startswith("projection") else ("C3" if n.split()[0] in _SAMPLE_METHODS else "C7") for n in names]
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.4))
        for ax, vals, lab in ((a1, ms, "ms per training step"), (a2, sps, "training samples per second")):
            ax.bar(range(len(names)), vals, color=colors)
            ax.set_xticks(range(len(names)))
            ax.set_xticklabels(names, rotation=35, ha="right", fontsize=7)
            ax.set_ylabel(lab)
            for i, v in enumerate(vals):
                ax.text(i, v, f"{v:.3g}", ha="center", va="bottom", fontsize=6)
        dev = sorted({str(r.get("device")) for r in rows})
        fig.suptitle(f"ct: cost per step (median over runs; {', '.join(dev)})", fontsize=8)
        return save_figure(fig, figures_dir(out) / f"ct_{tag}_throughput.png")

    def _symmetry_plot(self, rows, out: Path, tag: str, plt, key: str = "psnr_gain") -> Optional[str]:
        settings = [s for s in SYMMETRY_SETTINGS if any(r["symmetry"] == s for r in rows)]
        groups: Dict[str, Dict[str, List[float]]] = {}
        for r in rows:
            if r.get(key) is None:
                continue
            name = r["variant"] + ("" if r["lam"] is None else f" λ={r['lam']:g}")
            groups.setdefault(name, {}).setdefault(r["symmetry"], []).append(r[key])
        names = [n for n in sorted(groups, key=lambda n: (_METHOD_ORDER.get(n.split()[0], 9), n))
                 if len(groups[n]) == len(settings)]
        if not names:
            return None
        fig, ax = plt.subplots(figsize=(2.2 + 1.6 * len(settings) * max(1, len(names)) / 3, 3.4))
        step = 0.8 / len(names)
        for i, n in enumerate(names):
            vals = [np.mean(groups[n][s]) for s in settings]
            err = [sample_std(groups[n][s]) for s in settings]
            pos = np.arange(len(settings)) + (i - (len(names) - 1) / 2) * step
            seeds = sorted({len(groups[n][s]) for s in settings})
            ax.errorbar(pos, vals, yerr=err, fmt="s", ms=5, capsize=3, color=f"C{i}",
                        label=f"{n} ({'/'.join(map(str, seeds))} seed{'s' if seeds != [1] else ''})")
            for x, s in zip(pos, settings):  # every seed beside its mean
                ax.plot([x + 0.25 * step] * len(groups[n][s]), groups[n][s], ".", ms=4, color=f"C{i}", alpha=0.6)
        ax.set_xticks(range(len(settings)))
        ax.set_xticklabels([f"symmetry {s}" for s in settings])
        ax.set_xlim(-0.6, len(settings) - 0.4)
        ax.set_ylabel("PSNR gain over FBP input (dB)" + ("\nselected weights" if key.startswith("sel_") else ""))
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=6, loc="best")
        return save_figure(fig, figures_dir(out) / f"ct_{tag}_symmetry.png")


_METHOD_ORDER = {"plain": 0, "strict": 1, "projection": 2, "rpp": 3, "sample-output": 4, "eqreg": 5}
_SCHEME_ORDER = {"split": 0, "split-proximal": 1, "penalty": 2, "proximal": 3}


def _annotate(r: Dict[str, Any]) -> None:
    """Derived columns for the report (in place): method variant, its weight, step time in ms."""
    m = r["method"]
    r.setdefault("symmetry", r.get("opt_symmetry", "default"))
    r.setdefault("metal", r.get("opt_metal", "strong"))
    r.setdefault("li_input", r.get("opt_li_input", False))
    r.setdefault("init", r.get("opt_init", "equivariant"))
    if m == "projection":
        r.setdefault("scheme", None)
        r["scheme"] = r["scheme"] or "penalty"  # rows from before the training schemes
        r["variant"] = f"projection {r['scheme']}" + ("" if r.get("route") in (None, "auto") else f" ({r['route']})")
    elif m in _SAMPLE_METHODS:
        r["variant"] = f"{m} k={r['k']}"
    else:
        r["variant"] = m
    r["lam"] = None if not takes_weight(m) else r["lambda_perp"]
    t = r.get("time_per_step_s")
    r["time_ms"] = None if t is None else 1000.0 * t


def _short(name: str, r: Dict[str, Any]) -> str:
    return name if not takes_weight(r["method"]) else f"{name} λ={r['lambda_perp']:g}"
