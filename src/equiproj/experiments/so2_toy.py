r"""Experiment 'so2-toy': the SO(2) toy classification of Berndt and Stühmer (2026), section 4.1.

Points in the plane are embedded as circular harmonics times radial functions,
``z_{m,j} = e^{i m theta} phi_j(r)`` with ``m = -M..M`` (:func:`equiproj.data.circular_harmonic_features`).
Two complex linear layers mix all frequencies; the equivariant part of a complex map keeps only
the entries with ``m_out = m_in``, because a rotation by ``phi`` multiplies channel ``m`` by
``e^{i m phi}`` and

    P(W)_ab = (1 / 2 pi) int e^{i m_a phi} W_ab e^{-i m_b phi} d phi = [m_a = m_b] W_ab.

An exactly invariant contraction ``|z|^2`` (frequency 0) and a real linear head follow, so the
network is rotation-invariant exactly when both complex layers are equivariant. Datasets: the
deliberately non-invariant "wedge" and the "wavey rings" whose amplitude ``a`` (the ``level``)
controls the symmetry breaking. Metric: the largest change of the predicted probability over 40
random rotations and all points. A plain MLP on the raw coordinates (``--option arch=mlp``) is
the non-equivariant reference.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch
from torch import nn

from ..data.toy import circular_harmonic_features, make_rings, make_wedge, rotate_points
from ..groups import so2
from ..regularise import SPEC_ATTR, LayerSpec
from ..train import TrainConfig
from ._core import (Experiment, RunConfig, Setup, figures_dir, markdown_table, register_experiment, run_folder,
                    save_figure)

__all__ = ["FrequencyMaskProjector", "ComplexHarmonicLinear", "CircularHarmonicNet", "PointMLP", "SO2Toy"]


class FrequencyMaskProjector:
    """Projector onto complex maps that preserve the frequency, ``P(W) = [m_out = m_in] W``.

    It offers the projector interface the regulariser uses (``project``, ``as_matrix``,
    ``project_bias``, ``dim``, ``total_dim``, ``group``); dimensions count real parameters.
    """

    route = "mask"

    def __init__(self, freq_in: torch.Tensor, freq_out: torch.Tensor):
        self.freq_in, self.freq_out = freq_in.clone(), freq_out.clone()
        self.mask = (freq_out[:, None] == freq_in[None, :])
        self.group = so2()
        self.dim = 2 * int(self.mask.sum())
        self.total_dim = 2 * self.mask.numel()

    def _m(self, W):
        return self.mask.to(W.device)

    def project(self, W):
        if W.shape[-2:] != self.mask.shape:
            raise ValueError(f"weight of shape {tuple(W.shape)} does not match the frequencies: expected "
                             f"(..., {self.mask.shape[0]}, {self.mask.shape[1]})")
        return W * self._m(W)

    def _project_matrix(self, M):
        return M * self._m(M)

    def as_matrix(self, W):
        return W

    def project_bias(self, b):
        return b * (self.freq_out.to(b.device) == 0)

    def defect(self, W, norm="fro"):
        from ..norms import get_norm

        return get_norm(norm)(W - self.project(W))


class ComplexHarmonicLinear(nn.Module):
    """Complex linear map between channels with frequency labels (no bias), declared so that the
    projection regulariser sees it (:class:`FrequencyMaskProjector`)."""

    def __init__(self, freq_in: torch.Tensor, freq_out: torch.Tensor):
        super().__init__()
        n_in, n_out = len(freq_in), len(freq_out)
        w = torch.complex(torch.randn(n_out, n_in), torch.randn(n_out, n_in)) / math.sqrt(2 * n_in)
        self.weight = nn.Parameter(w)
        setattr(self, SPEC_ATTR, LayerSpec(FrequencyMaskProjector(freq_in, freq_out), include_bias=False))

    def forward(self, z):
        return z @ self.weight.transpose(0, 1)


class CircularHarmonicNet(nn.Module):
    """Circular harmonics -> two complex linear layers -> ``|z|^2`` -> real linear head (a logit)."""

    def __init__(self, M: int = 4, n_radial: int = 4, hidden_per_frequency: int = 4):
        super().__init__()
        self.M, self.n_radial = M, n_radial
        freqs = torch.arange(-M, M + 1)
        f_in = freqs.repeat_interleave(n_radial)
        f_h = freqs.repeat_interleave(hidden_per_frequency)
        self.l1 = ComplexHarmonicLinear(f_in, f_h)
        self.l2 = ComplexHarmonicLinear(f_h, f_h)
        self.head = nn.Linear(len(f_h), 1)

    def forward(self, x):
        z = circular_harmonic_features(x, M=self.M, n_radial=self.n_radial).flatten(1)
        z = z.to(self.l1.weight.dtype)
        s = self.l2(self.l1(z)).abs() ** 2
        return self.head(s.to(self.head.weight.dtype)).squeeze(-1)


class PointMLP(nn.Module):
    """A plain MLP on the raw coordinates (the non-equivariant reference)."""

    def __init__(self, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 1))

    def forward(self, x):
        return self.net(x).squeeze(-1)


def invariance_error(model: nn.Module, x: torch.Tensor, n_rotations: int = 40, seed: int = 123) -> float:
    """max over ``n_rotations`` random rotations and all points of ``|p(R x) - p(x)|``."""
    g = torch.Generator().manual_seed(seed)
    angles = 2 * math.pi * torch.rand(n_rotations, generator=g, dtype=torch.float64)
    with torch.no_grad():
        p0 = torch.sigmoid(model(x))
        worst = 0.0
        for a in angles:
            p = torch.sigmoid(model(rotate_points(x, float(a))))
            worst = max(worst, float((p - p0).abs().max()))
    return worst


@register_experiment
class SO2Toy(Experiment):
    name = "so2-toy"
    description = "SO(2) toy classification: circular-harmonic network with complex layers (paper section 4.1)"
    presets = {
        "ci": dict(steps=150, lr=2e-2, hidden_per_frequency=3, mlp_hidden=32, grid=61),
        "paper": dict(steps=2000, lr=1e-2, hidden_per_frequency=8, mlp_hidden=128, grid=201),
    }
    methods = ("projection", "plain", "strict", "sample-output")
    level_name = "amplitude a (rings)"
    default_sweep = {
        "method": ["projection"], "lambda_perp": [0.0, 1e-3, 1e-2, 1e-1, 1.0], "lambda_G": [0.0, 1e-3, 1e-2, 1e-1],
    }
    unused = ("route",)  # the frequency mask is the only projection of these layers
    option_defaults = {"dataset": ("wedge", "wedge (non-invariant fitting task) or rings (level = amplitude a)"),
                       "arch": ("harmonic", "harmonic (circular-harmonic net) or mlp (plain MLP reference)")}

    def check(self, cfg: RunConfig) -> None:
        super().check(cfg)
        opts = dict(cfg.options)
        unknown = set(opts) - {"dataset", "arch"}
        if unknown:
            raise ValueError(f"unknown options for so2-toy: {sorted(unknown)} (known: dataset, arch)")
        if opts.get("dataset", "wedge") not in ("wedge", "rings"):
            raise ValueError(f"option dataset must be 'wedge' or 'rings', got {opts['dataset']!r}")
        if opts.get("arch", "harmonic") not in ("harmonic", "mlp"):
            raise ValueError(f"option arch must be 'harmonic' or 'mlp', got {opts['arch']!r}")
        if opts.get("arch") == "mlp" and cfg.method not in ("plain", "sample-output"):
            raise ValueError("the MLP reference has no declared layers: use method 'plain' or 'sample-output'")

    def setup(self, cfg: RunConfig, preset: Dict[str, Any], device: torch.device) -> Setup:
        dataset = cfg.options.get("dataset", "wedge")
        arch = cfg.options.get("arch", "harmonic")
        if dataset == "wedge":
            d = make_wedge(seed=cfg.seed)
            x_tr, y_tr = d["x"], d["y"]
            x_te, y_te = x_tr, y_tr  # the wedge is a fitting task: all points are evaluated
        else:
            d = make_rings(cfg.level if cfg.level is not None else 0.0, seed=cfg.seed)
            x_tr, y_tr, x_te, y_te = d["x_train"], d["y_train"], d["x_test"], d["y_test"]
        x_tr, y_tr, x_te, y_te = (t.to(device) for t in (x_tr, y_tr, x_te, y_te))
        torch.manual_seed(cfg.seed)
        model = (CircularHarmonicNet(hidden_per_frequency=preset["hidden_per_frequency"]) if arch == "harmonic"
                 else PointMLP(preset["mlp_hidden"])).to(device)
        bce = nn.functional.binary_cross_entropy_with_logits

        def loss_fn(m, batch):
            return bce(m(batch[0]), batch[1])

        def accuracy(m, x, y):
            with torch.no_grad():
                return float(((m(x) > 0).float() == y).float().mean())

        G = so2()
        grid_n = preset["grid"]

        def final_metrics(m):
            lin = torch.linspace(-3.5, 3.5, grid_n, device=device)
            gy, gx = torch.meshgrid(lin, lin, indexing="ij")
            pts = torch.stack([gx.reshape(-1), gy.reshape(-1)], -1)
            with torch.no_grad():
                prob = torch.sigmoid(m(pts)).reshape(grid_n, grid_n).cpu().numpy()
            return {"train_accuracy": accuracy(m, x_tr, y_tr), "test_accuracy": accuracy(m, x_te, y_te),
                    "invariance_error": invariance_error(m, x_te),
                    "_artifacts": {"grid_prob": prob.astype(np.float32),
                                   "x": x_tr.cpu().numpy(), "y": y_tr.cpu().numpy()}}

        tc = TrainConfig(steps=preset["steps"], batch_size=len(x_tr), lr=preset["lr"], optimizer="adam",
                         log_every=max(1, preset["steps"] // 10), eval_every=0,
                         checkpoint_every=max(1, preset["steps"] // 4))
        # the paper's toy trains from the random initialisation: the penalty has to remove its defect
        opts = dict(act_in=G.standard(), act_out=(lambda g, y: y), group=G)
        return Setup(model=model, train_data=(x_tr, y_tr), loss_fn=loss_fn, train_config=tc,
                     final_metrics=final_metrics, method_options=opts)

    # ------------------------------------------------------------------ report
    def report(self, rows: List[Dict[str, Any]], out: Path) -> str:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        parts = [f"## so2-toy\n\n{self.description}. Invariance error: the largest change of the predicted "
                 "probability over 40 random rotations and all evaluated points.\n"]
        for r in rows:
            r.setdefault("opt_dataset", "wedge")
            r.setdefault("opt_arch", "harmonic")
        wedge = [r for r in rows if r["opt_dataset"] == "wedge"]
        rings = [r for r in rows if r["opt_dataset"] == "rings"]
        if wedge:
            parts.append("### Wedge (deliberately non-invariant)\n")
            parts.append(markdown_table(wedge, ["opt_arch", "method", "lambda_G", "lambda_perp"],
                                        ["train_accuracy", "invariance_error"],
                                        {"opt_arch": "model", "train_accuracy": "accuracy",
                                         "invariance_error": "invariance error"}))
            fig_path = self._boundaries(wedge, out, plt)
            if fig_path:
                parts.append(f"\n![decision boundaries on the wedge]({fig_path})\n")
        if rings:
            parts.append("\n### Wavey rings against the symmetry-breaking amplitude\n")
            parts.append(markdown_table(rings, ["opt_arch", "method", "lambda_perp", "level"],
                                        ["test_accuracy", "invariance_error"],
                                        {"opt_arch": "model", "level": "a", "test_accuracy": "test accuracy",
                                         "invariance_error": "invariance error"}))
            fig = self._amplitude_plot(rings, out, plt)
            if fig:
                parts.append(f"\n![accuracy and invariance error against the amplitude]({fig})\n")
        return "\n".join(parts)

    def _boundaries(self, rows, out: Path, plt):
        panels = [r for r in rows if (run_folder(r, out) / "artifacts.npz").exists()]
        if not panels:
            return None
        harm = sorted([r for r in panels if r["opt_arch"] == "harmonic" and r["method"] == "projection"],
                      key=lambda r: (r["lambda_G"], r["lambda_perp"], r["seed"]))
        lgs = sorted({r["lambda_G"] for r in harm})
        lps = sorted({r["lambda_perp"] for r in harm})
        mlp = [r for r in panels if r["opt_arch"] == "mlp"]
        n_rows, n_cols = max(1, len(lgs)), len(lps) + (1 if mlp else 0)
        if n_cols == 0:
            return None
        from matplotlib.lines import Line2D

        # one colour map for the regions and the points: the predicted probability of class 1
        # underneath, the true class of every point on top (same colours, so a correct
        # classifier shows points on the region of their own colour)
        cmap, ext = plt.get_cmap("coolwarm"), (-3.5, 3.5, -3.5, 3.5)
        markers = {0: "o", 1: "^"}
        fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.0 * n_cols + 1.2, 2.0 * n_rows + 0.9), squeeze=False,
                                 layout="constrained")
        for ax in axes.flat:
            ax.set_axis_off()
        image = None

        def draw(ax, r, title):
            nonlocal image
            a = np.load(run_folder(r, out) / "artifacts.npz")
            prob, x, y = a["grid_prob"], a["x"], a["y"]
            image = ax.imshow(prob, origin="lower", extent=ext, cmap=cmap, vmin=0, vmax=1, alpha=0.8)
            lin = np.linspace(-3.5, 3.5, prob.shape[0])
            ax.contour(lin, lin, prob, levels=[0.5], colors="k", linewidths=1)
            for c, mk in markers.items():
                sel = y == c
                ax.scatter(x[sel, 0], x[sel, 1], color=cmap(float(c)), marker=mk, s=9, edgecolors="k",
                           linewidths=0.4)
            ax.set_title(f"{title}\ninv. err {r['invariance_error']:.2g}", fontsize=7)
            ax.set_axis_on()
            ax.set_xticks([])
            ax.set_yticks([])

        for r in harm:
            if r["seed"] != harm[0]["seed"]:
                continue
            i, j = lgs.index(r["lambda_G"]), lps.index(r["lambda_perp"])
            draw(axes[i, j], r, f"λG={r['lambda_G']:g}, λ⊥={r['lambda_perp']:g}")
        if mlp:
            draw(axes[0, -1], mlp[0], "plain MLP")
        fig.colorbar(image, ax=axes, shrink=0.6, label="predicted probability of class 1")
        handles = [Line2D([], [], linestyle="none", marker=markers[c], markerfacecolor=cmap(float(c)),
                          markeredgecolor="k", markeredgewidth=0.5, markersize=6, label=f"class {c}")
                   for c in markers] + [Line2D([], [], color="k", linewidth=1, label="decision boundary (p = 0.5)")]
        fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=8, frameon=False)
        fig.suptitle("so2-toy wedge: decision boundaries (rows λG, columns λ⊥)", fontsize=10)
        return save_figure(fig, figures_dir(out) / "so2_toy_wedge_boundaries.png")

    def _amplitude_plot(self, rows, out: Path, plt):
        curves: Dict[str, Dict[float, List[Dict[str, Any]]]] = {}
        for r in rows:
            if r.get("level") is None:
                continue
            if r["opt_arch"] == "mlp":
                label = "plain MLP" if r["method"] == "plain" else f"MLP, {r['method']}"
            elif r["method"] == "plain":
                label = "harmonic, no penalty"
            else:
                lam = f" λ⊥={r['lambda_perp']:g}" if r["method"] == "projection" else ""
                label = f"harmonic, {r['method']}{lam}"
            curves.setdefault(label, {}).setdefault(float(r["level"]), []).append(r)
        if not curves:
            return None
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10.5, 3.6), layout="constrained")
        n_seeds = set()
        for label, pts in sorted(curves.items()):
            lv = sorted(pts)
            for ax, key in ((a1, "test_accuracy"), (a2, "invariance_error")):
                vals = [np.array([r[key] for r in pts[v]], dtype=float) for v in lv]
                mean = np.array([v.mean() for v in vals])
                lo = mean - np.array([v.min() for v in vals])
                hi = np.array([v.max() for v in vals]) - mean
                ax.errorbar(lv, mean, yerr=[lo, hi], marker="o", markersize=4, capsize=3, label=label)
            n_seeds.update(len(pts[v]) for v in lv)
        a1.set_xlabel("amplitude a")
        a1.set_ylabel("test accuracy")
        a2.set_xlabel("amplitude a")
        a2.set_ylabel("invariance error")
        a2.set_yscale("log")
        seeds = "/".join(str(n) for n in sorted(n_seeds))
        handles, labels = a2.get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside right center", fontsize=8,
                   title=f"mean over {seeds} seed(s)\nbars: min to max", title_fontsize=8)
        fig.suptitle("so2-toy wavey rings: test accuracy and invariance error against the amplitude", fontsize=10)
        return save_figure(fig, figures_dir(out) / "so2_toy_rings_amplitude.png")
