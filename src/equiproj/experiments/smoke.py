r"""Experiment 'smoke': smoke-plume forecasting with approximate C4 symmetry (paper section 4.2).

The benchmark of Wang, Walters and Yu (ICML 2022), used by Berndt and Stühmer (2026, section
4.2) for the projection penalty on relaxed group and relaxed steerable convolutions. Data:
:mod:`equiproj.data.smoke` (PhiFlow smoke plumes, ``docs/data/smoke.md``); ``level`` is the
symmetry-breaking knob of the data (rotation: the buoyancy magnitudes differ between the four
inflow directions, ``level = 1`` as in Wang et al.; ``0`` is exactly C4-symmetric; scale: the
resolution of the enlarged simulations, ``1`` as in Wang et al., ``0`` exactly scale-symmetric).

Task. The velocity fields of ``in_frames`` (10) consecutive steps, stacked as channels
(``10 x standard`` of ``cyclic(4)``), predict the next field; training rolls the model out
``train_rollout`` steps (6, Wang et al.) and averages the squared error over them, tests roll
out ``test_rollout`` steps (20). Windows start in time ranges ``[0, a)`` (training), ``[a, b)``
(validation, model selection) and ``[b, c)`` (test-future, the training simulations later in
time); test-domain uses held-out simulations (rotation: magnitude group ``groups // 2``;
translation and scale: every fourth simulation) with windows starting in ``[0, a)``. Wang et al.:
``a, b, c = 160, 200, 250`` of 310 steps. Velocities are divided by one scalar (their RMS over
the training windows), which keeps the task equivariant; RMSE is reported in the data's own
units. Every network predicts the change of the last frame (``v_{t+1} = v_t + net(window)``,
ours).

Models (``--option arch=...``), all fully convolutional with ``kernel`` x ``kernel`` kernels,
``depth`` layers and ReLU, hidden ``width`` channels (``width / 4`` regular fields for the
group-convolution models):

* ``convnet``: plain ``nn.Conv2d`` layers, declared with :func:`equiproj.declare_model` for
  ``cyclic(4)`` (input ``10 x standard``, hidden regular fields, output ``standard``): method
  ``projection`` penalises ``||W - P(W)||``, ``strict`` constrains it (a C4-equivariant CNN with
  regular hidden fields, the E(2)-CNN baseline), ``rpp`` adds free residual paths,
  ``sample-output`` penalises sampled output errors, ``plain`` is the unconstrained ConvNet.
* ``gconv``: relaxed group convolutions (:class:`equiproj.baselines.RelaxedLiftingConv2d` with
  a vector-field input, ``in_rep = 10 x standard``, then :class:`RelaxedGroupConv2d`), ``banks``
  filter banks, and a strictly equivariant steerable read-out to the velocity.
* ``steer``: relaxed steerable convolutions (:class:`equiproj.baselines.RelaxedSteerableConv2d`:
  an equivariant kernel basis with coefficients that depend on the kernel position).

The ``scale`` case has no finite group: ``convnet`` is the plain ConvNet (method ``plain`` only,
not declared), and ``gconv`` is the relaxed scale-space network
(:class:`equiproj.baselines.RelaxedScaleConv2d`: ``banks`` filter banks combined with weights per
scale, the preset's ``scales``; a lifting layer, scale-by-scale hidden layers, a weight-tied
last layer and the mean over the scales), with ``P`` the orthogonal projection onto the
weight-tied kernels (:class:`equiproj.baselines.ScaleKernelProjector`); ``steer`` is the same
network of relaxed scale-steerable convolutions
(:class:`equiproj.baselines.RelaxedScaleSteerableConv2d`: dilated basis filters with
coefficients that depend on the kernel position). The C4 equivariance errors are ``nan`` for
this case.

For ``gconv`` and ``steer``, method ``relaxed`` adds Wang et al.'s relaxation penalty
(``--option penalty=relaxation``, default) or the projection penalty of every relaxed layer's
materialised kernel (``--option penalty=projection``); ``plain`` trains the relaxed network
without a penalty, and ``plain`` with ``--option equal_weights=true`` is its strictly
equivariant version (shared relaxed weights; method ``strict`` is the constrained ConvNet). ``lambda_perp``
is the weight of every penalty.

Metrics: ``rmse_future`` and ``rmse_domain`` (square root of the mean squared error over all
rolled-out frames, components and pixels), ``equiv_error``: the relative end-to-end C4
equivariance error ``||f(g x) - g f(x)|| / ||f(x)||`` of the one-step map over the three
non-trivial rotations on test-future inputs (``equiv_error_res``: relative to the predicted
change ``f(x) - v_t`` instead), ``defect_fro`` (``sum_l ||W_l - P(W_l)||_F`` over declared and
relaxed layers) and ``rel_defect``, ``n_params``, and the training loop's step time and
throughput; for reference ``rmse_future_persistence`` / ``rmse_domain_persistence``, the RMSE of
repeating the last input frame. Every run keeps the weights of its best validation RMSE (``TrainConfig.select``,
with early stopping at the ``paper`` preset); the ``sel_`` columns evaluate those.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..actions import feature_map_action
from ..baselines import (GroupPool2d, RelaxedGroupConv2d, RelaxedLiftingConv2d, RelaxedScaleConv2d,
                         RelaxedScaleSteerableConv2d, RelaxedSteerableConv2d)
from ..baselines._relaxed import _RELAXED_TYPES
from ..data.smoke import SMOKE_CASES, SMOKE_PRESETS, SmokeConfig, make_smoke_data
from ..groups import cyclic
from ..metrics import equivariance_error
from ..regularise import declare_model, declared_layers, report as layer_report
from ..train import TrainConfig
from ._core import (Experiment, RunConfig, Setup, figures_dir, group_rows, markdown_table, register_experiment,
                    sample_std, save_figure, takes_weight)

__all__ = ["SmokeExperiment", "SmokeForecaster", "build_net", "ARCHES", "rollout", "smoke_windows"]

ARCHES = ("convnet", "gconv", "steer")
_OPTIONS = {"case", "arch", "penalty", "init", "equal_weights", "schedule", "width"}
_CONVNET_ONLY = ("projection", "sample-output", "rpp", "strict")


class SmokeForecaster(nn.Module):
    """One step ``v_{t+1} = v_t + net(v_{t-F+1}, ..., v_t)`` on stacked windows ``(B, 2F, n, n)``."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return x[:, -2:] + self.net(x)


def build_net(arch: str, in_frames: int = 10, width: int = 16, depth: int = 3, kernel: int = 3, banks: int = 2,
              equal_weights: bool = False, scales: Optional[Sequence[float]] = None) -> SmokeForecaster:
    r"""The forecaster of one architecture (see the module docstring), with a zero last layer
    (every model starts by predicting no change).

    ``convnet`` is declared for ``cyclic(4)`` (input ``in_frames x standard``, hidden regular,
    output ``standard``); ``gconv`` and ``steer`` are built from relaxed layers, strictly
    equivariant when ``equal_weights``. With ``scales`` (the scale case) ``gconv`` is the relaxed
    scale-space network of :class:`equiproj.baselines.RelaxedScaleConv2d` (``width / 4`` scale
    fields), ``steer`` the same with :class:`equiproj.baselines.RelaxedScaleSteerableConv2d`, and
    ``convnet`` is not declared.

    Examples
    --------
    >>> import torch
    >>> m = build_net("gconv", in_frames=2, width=8, depth=3)
    >>> x = torch.randn(1, 4, 8, 8)
    >>> bool(torch.equal(m(x), x[:, -2:]))
    True
    >>> build_net("gconv", in_frames=2, width=8, depth=3, scales=(1.0, 2.0))(x).shape
    torch.Size([1, 2, 8, 8])
    """
    if arch not in ARCHES:
        raise ValueError(f"arch must be one of {', '.join(map(repr, ARCHES))}, got {arch!r}")
    if width % 4:
        raise ValueError(f"width must be a multiple of 4 (C4 regular fields), got {width}")
    if depth < 2:
        raise ValueError(f"depth must be >= 2, got {depth}")
    G = cyclic(4)
    V = G.standard()
    pad = kernel // 2
    c_in = 2 * in_frames
    layers: List[nn.Module] = []
    if arch == "convnet":
        chans = [c_in] + [width] * (depth - 1) + [2]
        for i in range(depth):
            layers.append(nn.Conv2d(chans[i], chans[i + 1], kernel, padding=pad))
            if i < depth - 1:
                layers.append(nn.ReLU())
        with torch.no_grad():
            for m in layers:
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                    m.bias.zero_()
            layers[-1].weight.zero_()
        net = SmokeForecaster(nn.Sequential(*layers))
        if scales is None:
            declare_model(net, G, in_rep=in_frames * V, out_rep=V)
        return net
    f = width // 4
    if scales is not None:
        if arch == "gconv":
            def scale_layer(i, o, lifting):
                return RelaxedScaleConv2d(i, o, kernel, scales=scales, num_banks=banks, lifting=lifting,
                                          equal_weights=equal_weights)
        else:
            def scale_layer(i, o, lifting):
                return RelaxedScaleSteerableConv2d(i, o, kernel, scales=scales, lifting=lifting,
                                                   equal_weights=equal_weights)
        layers += [scale_layer(c_in, f, True), nn.ReLU()]
        for _ in range(depth - 2):
            layers += [scale_layer(f, f, False), nn.ReLU()]
        last = RelaxedScaleConv2d(f, 2, kernel, scales=scales, num_banks=1, equal_weights=True)
        with torch.no_grad():
            last.relaxed_weights.zero_()
        return SmokeForecaster(nn.Sequential(*layers, last, GroupPool2d(len(last.scales))))
    R = f * G.regular()
    if arch == "gconv":
        layers += [RelaxedLiftingConv2d(c_in, f, kernel, N=4, num_banks=banks, padding=pad, in_rep=in_frames * V,
                                        equal_weights=equal_weights), nn.ReLU()]
        for _ in range(depth - 2):
            layers += [RelaxedGroupConv2d(f, f, kernel, N=4, num_banks=banks, padding=pad,
                                          equal_weights=equal_weights), nn.ReLU()]
        layers.append(RelaxedSteerableConv2d(R, V, kernel, padding=pad, equal_weights=True))
    else:
        reps = [in_frames * V] + [R] * (depth - 1) + [V]
        for i in range(depth):
            layers.append(RelaxedSteerableConv2d(reps[i], reps[i + 1], kernel, padding=pad,
                                                 equal_weights=equal_weights))
            if i < depth - 1:
                layers.append(nn.ReLU())
    with torch.no_grad():
        layers[-1].relaxed_weights.zero_()
    return SmokeForecaster(nn.Sequential(*layers))


def rollout(model: nn.Module, x: torch.Tensor, steps: int) -> torch.Tensor:
    """Roll the one-step model out: ``(B, 2F, n, n) -> (B, steps, 2, n, n)``."""
    preds = []
    for _ in range(steps):
        p = model(x)
        preds.append(p)
        x = torch.cat([x[:, 2:], p], dim=1)
    return torch.stack(preds, dim=1)


class _Windows(torch.utils.data.Dataset):
    """Windows ``(s, t0)`` of a velocity tensor ``(S, T, 2, n, n)``: input frames ``t0 .. t0+F-1``
    stacked to ``(2F, n, n)``, targets ``t0+F .. t0+F+R-1`` as ``(R, 2, n, n)``."""

    def __init__(self, v: torch.Tensor, index: Sequence[Tuple[int, int]], F: int, R: int):
        self.v, self.index, self.F, self.R = v, list(index), F, R

    def __len__(self):
        return len(self.index)

    def __getitem__(self, i):
        s, t = self.index[i]
        x = self.v[s, t:t + self.F].reshape(-1, *self.v.shape[-2:])
        return x, self.v[s, t + self.F:t + self.F + self.R]

    def stacked(self):
        xs, ys = zip(*(self[i] for i in range(len(self))))
        return torch.stack(xs), torch.stack(ys)


def smoke_windows(n_sims: int, held_out: Sequence[int], T: int, splits: Tuple[int, int, int], F: int,
                  R_train: int, R_test: int, stride: int = 1) -> Dict[str, List[Tuple[int, int]]]:
    """The ``(simulation, start)`` pairs of the splits (training windows every step, evaluation
    windows every ``stride`` steps).

    >>> w = smoke_windows(4, [3], T=40, splits=(12, 16, 18), F=10, R_train=2, R_test=4)
    >>> len(w["train"]), len(w["val"]), len(w["future"]), len(w["domain"])
    (36, 12, 6, 12)
    """
    a, b, c = splits
    if not 0 < a < b < c:
        raise ValueError(f"splits must satisfy 0 < a < b < c, got {splits}")
    if c - 1 + F + R_test > T:
        raise ValueError(f"splits {splits}: a test window starting at {c - 1} needs {F + R_test} frames, but the "
                         f"simulations have {T} steps; lower c to {T - F - R_test + 1} or simulate longer")
    keep = [s for s in range(n_sims) if s not in set(held_out)]
    return {"train": [(s, t) for s in keep for t in range(a)],
            "val": [(s, t) for s in keep for t in range(a, b, stride)],
            "future": [(s, t) for s in keep for t in range(b, c, stride)],
            "domain": [(s, t) for s in held_out for t in range(0, a, stride)]}


def _options(cfg: RunConfig) -> Dict[str, Any]:
    o = dict(cfg.options)
    arch = o.get("arch", "gconv" if cfg.method == "relaxed" else "convnet")
    return dict(case=o.get("case", "rotation"), arch=arch, penalty=o.get("penalty", "relaxation"),
                init=o.get("init", "equivariant"), equal_weights=o.get("equal_weights", False))


def _defects(model: nn.Module) -> Tuple[float, float]:
    """``(sum_l ||W_l - P(W_l)||_F, sqrt(sum_l ||W_l - P W_l||^2 / sum_l ||W_l||^2))`` over the
    declared and the relaxed layers."""
    d2, w2, d1 = 0.0, 0.0, 0.0
    if declared_layers(model):
        for r in layer_report(model, "fro"):
            d1 += r.defect_norm
            d2 += r.defect_norm ** 2
            w2 += r.weight_norm ** 2
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _RELAXED_TYPES):
                K = m.kernel()
                d = float(torch.linalg.vector_norm(K - m.projector().project(K)))
                d1 += d
                d2 += d ** 2
                w2 += float(K.pow(2).sum())
    return d1, (math.sqrt(d2 / w2) if w2 > 0 else 0.0)


@register_experiment
class SmokeExperiment(Experiment):
    name = "smoke"
    description = ("Smoke-plume forecasting (PhiFlow, Wang et al. 2022): 10 velocity frames -> the next, "
                   "approximately C4-symmetric; ConvNet with the projection penalty, relaxed group and steerable "
                   "convolutions (paper section 4.2)")
    presets = {
        # seconds per run on one CPU thread, for the tests: 3 input frames and 2-step rollouts on 14 steps
        "ci": dict(data="ci", in_frames=3, splits=(6, 8, 10), train_rollout=2, test_rollout=2, eval_stride=2,
                   width=8, depth=3, kernel=3, banks=2, steps=30, batch_size=8, lr=2e-3, weight_decay=4e-4,
                   warmup=0, eval_every=10, patience=None, equiv_windows=4, example_frames=(1, 2),
                   schedule="cosine", scales=(1.0, 2.0)),
        # 32^2, 16 simulations of 150 steps (scale: 8 factors); a few minutes per run on one shared CPU thread
        "cpu": dict(data="cpu", in_frames=10, splits=(80, 100, 120), train_rollout=6, test_rollout=20,
                    eval_stride=5, width=16, depth=4, kernel=3, banks=2, steps=400, batch_size=8, lr=1e-3,
                    weight_decay=4e-4, warmup=20, eval_every=50, patience=None, equiv_windows=16,
                    example_frames=(1, 5, 10, 20), schedule="cosine", scales=(1.0, 2 ** 0.5, 2.0)),
        # Wang et al.'s sizes (64^2, 36 simulations of 310 steps; their rotation models have hidden
        # 128 channels, 3-5 layers, kernel 5 in places; their scale models the scales 1 to 2.5) and protocol (Adam, weight decay 4e-4, the
        # learning rate times 0.95 after every epoch, early stopping); for a GPU
        "paper": dict(data="paper", in_frames=10, splits=(160, 200, 250), train_rollout=6, test_rollout=20,
                      eval_stride=2, width=128, depth=5, kernel=5, banks=4, steps=20000, batch_size=16, lr=1e-3,
                      weight_decay=4e-4, warmup=0, eval_every=500, patience=10, equiv_windows=64,
                      example_frames=(1, 5, 10, 20), schedule="step", scales=(1.0, 1.5, 2.0, 2.5)),
    }
    methods = ("plain", "strict", "projection", "relaxed", "sample-output", "rpp")
    level_name = ("symmetry breaking of the data (rotation: buoyancy asymmetry between the four directions, 1 = "
                  "Wang et al., 0 = exactly C4-symmetric; translation: extra buoyancy right of x = 32; scale: the "
                  "resolution of the enlarged simulations, 1 = Wang et al., 0 = exactly scale-symmetric)")
    default_level = 1.0
    default_sweep = {"method": ["plain", "strict", "projection"], "lambda_perp": [1e-3, 1e-2, 1e-1]}
    reports = "selected"

    # ------------------------------------------------------------------ configuration
    def check(self, cfg: RunConfig) -> None:
        super().check(cfg)
        unknown = set(cfg.options) - _OPTIONS
        if unknown:
            raise ValueError(f"unknown options for smoke: {sorted(unknown)} (known: {', '.join(sorted(_OPTIONS))})")
        o = _options(cfg)
        if o["case"] not in SMOKE_CASES:
            raise ValueError(f"option case must be one of {', '.join(map(repr, SMOKE_CASES))}, got {o['case']!r}")
        if o["case"] == "scale":
            if cfg.method in _CONVNET_ONLY:
                raise ValueError(f"method {cfg.method!r} needs a finite group to declare the ConvNet for, and the scale "
                                 "case has none: use method 'plain' (arch=convnet or gconv) or 'relaxed' (arch=gconv)")
        if o["arch"] not in ARCHES:
            raise ValueError(f"option arch must be one of {', '.join(map(repr, ARCHES))}, got {o['arch']!r}")
        if cfg.method in _CONVNET_ONLY and o["arch"] != "convnet":
            raise ValueError(f"method {cfg.method!r} regularises the declared ConvNet: use arch=convnet, not "
                             f"{o['arch']!r}")
        if cfg.method == "relaxed" and o["arch"] == "convnet":
            raise ValueError("method 'relaxed' needs relaxed layers: use arch=gconv or arch=steer")
        if o["penalty"] not in ("relaxation", "projection"):
            raise ValueError(f"option penalty must be 'relaxation' or 'projection', got {o['penalty']!r}")
        if "penalty" in cfg.options and cfg.method != "relaxed":
            raise ValueError(f"option penalty applies to method 'relaxed' only, not {cfg.method!r}")
        if o["equal_weights"] not in (True, False):
            raise ValueError(f"option equal_weights must be true or false, got {o['equal_weights']!r}")
        if o["equal_weights"] and (o["arch"] == "convnet" or cfg.method != "plain"):
            raise ValueError("option equal_weights=true builds the strict relaxed network: use it with method "
                             "'plain' and arch=gconv or arch=steer")
        if o["init"] not in ("equivariant", "random"):
            raise ValueError(f"option init must be 'equivariant' or 'random', got {o['init']!r}")
        if cfg.options.get("schedule", "cosine") not in ("cosine", "step"):
            raise ValueError(f"option schedule must be 'cosine' (warm-up and cosine decay) or 'step' (Wang et al.'s: "
                             f"the learning rate times 0.95 after every epoch), got {cfg.options['schedule']!r}")
        if cfg.level is not None and not cfg.level >= 0:
            raise ValueError(f"level must be >= 0, got {cfg.level}")
        if "width" in cfg.options:
            w = cfg.options["width"]
            if isinstance(w, bool) or not isinstance(w, int) or w < 4 or w % 4:
                raise ValueError(f"option width must be a positive multiple of 4 (hidden channels; width / 4 fields for "
                                 f"gconv and steer), got {w!r}")

    # ------------------------------------------------------------------ one run
    def setup(self, cfg: RunConfig, preset: Dict[str, Any], device: torch.device) -> Setup:
        o = _options(cfg)
        case, arch = o["case"], o["arch"]
        level = self.default_level if cfg.level is None else float(cfg.level)
        dcfg = SmokeConfig(case, level=level, **SMOKE_PRESETS[preset["data"]][case])
        data = make_smoke_data(dcfg, progress=False)
        v_raw = torch.from_numpy(data["velocity"])
        S, T = v_raw.shape[:2]
        held = ([s for s in range(S) if data["group"][s] == dcfg.groups // 2] if case == "rotation"
                else [s for s in range(S) if s % 4 == 3])
        scales = tuple(preset["scales"]) if case == "scale" else None
        F, Rtr, Rte = preset["in_frames"], preset["train_rollout"], preset["test_rollout"]
        win = smoke_windows(S, held, T, tuple(preset["splits"]), F, Rtr, Rte, stride=preset["eval_stride"])
        a = preset["splits"][0]
        train_sims = sorted({s for s, _ in win["train"]})
        scale = float(v_raw[train_sims, :a + F + Rtr - 1].pow(2).mean().sqrt())
        v = (v_raw / scale).contiguous()
        train = _Windows(v, win["train"], F, Rtr)
        evals = {k: _Windows(v, win[k], F, Rte) for k in ("val", "future", "domain")}
        stacked = {k: tuple(t.to(device) for t in w.stacked()) for k, w in evals.items()}

        torch.manual_seed(cfg.seed)
        width = int(cfg.options.get("width", preset["width"]))
        model = build_net(arch, F, width, preset["depth"], preset["kernel"], preset["banks"],
                          equal_weights=bool(o["equal_weights"]), scales=scales).to(device)
        G = cyclic(4)
        act_in, act_out = feature_map_action(F * G.standard()), feature_map_action(G.standard())

        def loss_fn(m, batch):
            x, y = batch
            return nn.functional.mse_loss(rollout(m, x, y.shape[1]), y)

        chunk = 32

        def predict(m, x, R):
            with torch.no_grad():
                return torch.cat([rollout(m, c, R) for c in x.split(chunk)])

        def rmse(m, split):
            x, y = stacked[split]
            return float((predict(m, x, y.shape[1]) - y).pow(2).mean().sqrt()) * scale

        def eval_fn(m):
            return {"val_rmse": rmse(m, "val")}

        n_eq = min(preset["equiv_windows"], len(evals["future"]))

        persistence = {k: float((stacked[k][1] - stacked[k][0][:, None, -2:]).pow(2).mean().sqrt()) * scale
                       for k in ("future", "domain")}

        def final_metrics(m):
            res = {"rmse_future": rmse(m, "future"), "rmse_domain": rmse(m, "domain"), "val_rmse": rmse(m, "val"),
                   "rmse_future_persistence": persistence["future"], "rmse_domain_persistence": persistence["domain"]}
            xe = stacked["future"][0][:n_eq]

            def one_step(x):
                with torch.no_grad():
                    return m(x)

            if case == "scale":  # no C4 symmetry to measure
                res["equiv_error"] = res["equiv_error_max"] = res["equiv_error_res"] = float("nan")
            else:
                err = equivariance_error(one_step, xe, act_in, act_out, group=G, elements=G.elements()[1:])
                with torch.no_grad():
                    full = torch.linalg.vector_norm(m(xe)).clamp_min(1e-12)
                    incr = torch.linalg.vector_norm(m(xe) - xe[:, -2:]).clamp_min(1e-12)
                res["equiv_error"] = err.mean
                res["equiv_error_max"] = err.max
                res["equiv_error_res"] = err.mean * float(full / incr)
            res["defect_fro"], res["rel_defect"] = _defects(m)
            res["n_params"] = int(sum(p.numel() for p in m.parameters() if p.requires_grad))
            # per-step RMSE along the test-future rollout
            x, y = stacked["future"]
            pred = predict(m, x, y.shape[1])
            per_step = (pred - y).pow(2).mean(dim=(0, 2, 3, 4)).sqrt() * scale
            res.update(case=case, arch=arch, penalty=o["penalty"] if cfg.method == "relaxed" else "",
                       equal_weights=bool(o["equal_weights"]),
                       size=int(v.shape[-1]), n_sims=int(S), n_train_windows=len(train), velocity_scale=scale)
            res["_artifacts"] = {"truth": (y[0] * scale).cpu().numpy().astype(np.float32),
                                 "pred": (pred[0] * scale).cpu().numpy().astype(np.float32),
                                 "rmse_per_step": per_step.cpu().numpy().astype(np.float64)}
            return res

        steps = preset["steps"]
        schedule = cfg.options.get("schedule", preset["schedule"])
        # "step": Wang et al.'s StepLR(gamma=0.95) once per epoch of training windows, no warm-up
        sched = (dict(schedule="step", lr_step_size=max(1, math.ceil(len(train) / preset["batch_size"])), lr_gamma=0.95,
                      warmup_steps=0) if schedule == "step" else
                 dict(schedule="cosine", warmup_steps=preset["warmup"] if preset["warmup"] < steps else 0))
        tc = TrainConfig(steps=steps, batch_size=preset["batch_size"], lr=preset["lr"], optimizer="adam",
                         weight_decay=preset["weight_decay"], **sched, grad_clip=1.0,
                         log_every=max(1, steps // 20), eval_every=preset["eval_every"],
                         checkpoint_every=max(1, steps // 4), select="val_rmse", patience=preset.get("patience"))
        extra: Dict[str, Any] = dict(group=G, act_in=act_in, act_out=act_out,
                                     init="keep" if o["init"] == "random" else "equivariant")
        if cfg.method == "relaxed":
            extra["penalty"] = o["penalty"]
        return Setup(model=model, train_data=train, loss_fn=loss_fn, train_config=tc, final_metrics=final_metrics,
                     eval_fn=eval_fn, method_options=extra)

    # ------------------------------------------------------------------ report
    def report(self, rows: List[Dict[str, Any]], out: Path) -> str:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = [dict(r) for r in rows]
        for r in rows:
            r["model"] = _label(r)
            if r.get("level") is None:  # the data's default
                r["level"] = self.default_level
        parts = [f"## smoke\n\n{self.description}. RMSE over all rolled-out frames (data units); `sel.` columns: "
                 "the weights of the best validation RMSE; equivariance error: relative one-step error over the "
                 "three non-trivial rotations (`res.`: relative to the predicted change); defect: "
                 "`sum_l ||W_l - P(W_l)||_F` over declared and relaxed layers.\n"]
        labels = {"lambda_perp": "λ", "rmse_future": "RMSE future", "rmse_domain": "RMSE domain",
                  "sel_rmse_future": "sel. RMSE future", "sel_rmse_domain": "sel. RMSE domain",
                  "equiv_error": "equiv. error", "equiv_error_res": "equiv. error (res.)", "defect_fro": "defect",
                  "time_per_step_s": "s / step", "n_params": "params"}
        for key, rs in sorted(group_rows(rows, ["case", "preset", "level"]).items(), key=lambda kv: str(kv[0])):
            case, preset, level = key
            sizes = sorted({(r.get("size"), r.get("n_sims"), r.get("steps_trained")) for r in rs}, key=str)
            dev = ", ".join(sorted({str(r.get("device")) for r in rs}))
            parts.append(f"### case `{case}`, preset `{preset}`, level {level:g}\n\n"
                         + "; ".join(f"{s}^2, {n} simulations" for s, n, _ in sizes[:1]) + f"; device {dev}.\n")
            pf = [r["rmse_future_persistence"] for r in rs if "rmse_future_persistence" in r]
            pd = [r["rmse_domain_persistence"] for r in rs if "rmse_domain_persistence" in r]
            if pf:
                parts.append(f"Persistence (repeat the last input frame): RMSE future {np.mean(pf):.4g}, domain "
                             f"{np.mean(pd):.4g}.\n")
            cols = ["sel_rmse_future", "sel_rmse_domain", "rmse_future", "rmse_domain", "equiv_error", "equiv_error_res",
                    "defect_fro", "time_per_step_s", "n_params"]
            if case == "scale":  # no C4 error to show
                cols = [c for c in cols if not c.startswith("equiv_error")]
            parts.append(markdown_table(rs, ["model", "lambda_perp"], cols, labels))
            tag = f"{case}_{preset}_lvl{level:g}"
            # one colour per model in every figure of this case
            names = sorted({r["model"] for r in rs})
            if len(names) <= 10:
                colours = {m: f"C{i}" for i, m in enumerate(names)}
            else:  # more models than the default cycle has colours
                cmap = plt.get_cmap("tab20")
                colours = {m: matplotlib.colors.to_hex(cmap(i % 20)) for i, m in enumerate(names)}
            fig = self._lambda_plot(rs, tag, out, plt, colours)
            if fig:
                parts.append(f"\n![{case}: RMSE against lambda]({fig})\n")
            fig = self._horizon_plot(rs, tag, out, plt, colours)
            if fig:
                parts.append(f"\n![{case}: RMSE along the test-future rollout]({fig})\n")
            fig = self._rollout_plot(rs, tag, out, plt)
            if fig:
                parts.append(f"\n![{case}: example rollouts]({fig})\n")
        return "\n".join(parts)

    def _lambda_plot(self, rows, tag, out, plt, colours):
        """RMSE (test-future, test-domain; selected and final weights) against lambda: one line per
        penalised model (mean and standard deviation over seeds), unpenalised models as horizontal
        lines with bands."""
        pen = [r for r in rows if r["method"] in ("projection", "relaxed", "rpp", "sample-output")
               and r["lambda_perp"] > 0]
        if len({r["lambda_perp"] for r in pen}) < 2:
            return None
        fig, axes = plt.subplots(2, 2, figsize=(10.5, 6.6), constrained_layout=True, sharex=True)
        models = sorted({r["model"] for r in pen})
        refs = sorted({r["model"] for r in rows if not takes_weight(r["method"])})
        panels = [(axes[0, 0], "sel_rmse_future", "test-future, selected weights"),
                  (axes[0, 1], "sel_rmse_domain", "test-domain, selected weights"),
                  (axes[1, 0], "rmse_future", "test-future, final weights"),
                  (axes[1, 1], "rmse_domain", "test-domain, final weights")]
        for ax, key, title in panels:
            for i, mdl in enumerate(models):
                rs = [r for r in pen if r["model"] == mdl and key in r]
                lams = sorted({r["lambda_perp"] for r in rs})
                m = [np.mean([r[key] for r in rs if r["lambda_perp"] == lam]) for lam in lams]
                sd = [sample_std([r[key] for r in rs if r["lambda_perp"] == lam]) for lam in lams]
                ax.errorbar(lams, m, yerr=sd, marker="o", capsize=3, color=colours[mdl], label=mdl)
            for j, mdl in enumerate(refs):
                vals = [r[key] for r in rows if r["model"] == mdl and key in r]
                if not vals:
                    continue
                mu, sd = float(np.mean(vals)), sample_std(vals)
                colour = colours[mdl]
                ax.axhline(mu, ls="--" if len(models) + j < 10 else ":", color=colour, lw=1.2,
                           label=f"{mdl} ({len(vals)} seeds)")
                ax.axhspan(mu - sd, mu + sd, color=colour, alpha=0.1, lw=0)
            ax.set_xscale("log")
            ax.set_ylabel("RMSE")
            ax.set_title(title, fontsize=9)
        for ax in axes[1]:
            ax.set_xlabel("penalty weight λ")
        handles, labels = axes[0, 0].get_legend_handles_labels()
        fig.legend(handles, labels, fontsize=7, loc="outside right center")
        seeds = len({r["seed"] for r in rows})
        fig.suptitle(f"smoke {tag}: mean ± std over up to {seeds} seeds (lines: penalised; dashed: unpenalised)",
                     fontsize=9)
        return save_figure(fig, figures_dir(out) / f"smoke_{tag}_lambda.png")

    def _horizon_plot(self, rows, tag, out, plt, colours):
        """Test-future RMSE against the rollout step (final weights; mean over seeds, shaded std),
        one line per model at its best lambda, and persistence."""
        have = [r for r in rows if (Path(out) / "runs" / r["run_id"] / "artifacts.npz").exists()]
        if not have:
            return None
        by_model: Dict[str, Dict[float, List[np.ndarray]]] = {}
        for r in have:
            with np.load(Path(out) / "runs" / r["run_id"] / "artifacts.npz") as a:
                if "rmse_per_step" not in a.files:
                    continue
                curve = a["rmse_per_step"]
            by_model.setdefault(r["model"], {}).setdefault(r["lambda_perp"], []).append((r["rmse_future"], curve))
        if not by_model:
            return None
        fig, ax = plt.subplots(figsize=(6.8, 4.0), constrained_layout=True)
        for i, (mdl, per_lam) in enumerate(sorted(by_model.items())):
            lam = min(per_lam, key=lambda k: np.mean([e for e, _ in per_lam[k]]))
            curves = np.stack([c for _, c in per_lam[lam]])
            steps = np.arange(1, curves.shape[1] + 1)
            mu, sd = curves.mean(0), (curves.std(0, ddof=1) if len(curves) > 1 else np.zeros_like(curves[0]))
            ax.plot(steps, mu, color=colours.get(mdl, f"C{i % 10}"), ls="-" if i < 10 else "--",
                    label=mdl + (f" (λ={lam:g})" if lam else "") + f", {len(curves)} seeds")
            ax.fill_between(steps, mu - sd, mu + sd, color=colours.get(mdl, f"C{i % 10}"), alpha=0.12, lw=0)
        ax.set_xlabel("rollout step")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel("test-future RMSE (final weights)")
        ax.legend(fontsize=7)
        ax.set_title(f"smoke {tag}: error growth along the rollout", fontsize=9)
        return save_figure(fig, figures_dir(out) / f"smoke_{tag}_horizon.png")

    def _rollout_plot(self, rows, tag, out, plt):
        """Speed |v| of one test-future window: truth and the seed-0 rollout of every unpenalised model
        and the best penalised one of each kind, at a few rollout steps."""
        have = [r for r in rows if (Path(out) / "runs" / r["run_id"] / "artifacts.npz").exists()]
        if not have:
            return None
        best: Dict[str, Dict] = {}
        for r in sorted(have, key=lambda r: (r.get("seed", 0), r.get("sel_rmse_future", np.inf))):
            if r["model"] not in best:
                best[r["model"]] = r
        def priority(name):  # unpenalised references first, then the projection penalty, then Wang's
            return (0 if ("plain" in name or "strict" in name) and "equal" not in name else
                    1 if "projection" in name else 2, name)

        names = sorted(best, key=priority)[:6]
        arts = {n: np.load(Path(out) / "runs" / best[n]["run_id"] / "artifacts.npz") for n in names}
        truth = arts[names[0]]["truth"]
        R = truth.shape[0]
        frames = [f for f in self.presets.get(best[names[0]]["preset"], {}).get("example_frames", (1, R)) if f <= R]
        speed = lambda a: np.sqrt((a ** 2).sum(axis=-3))  # noqa: E731
        vmax = float(speed(truth).max())
        rows_ = [("truth", truth)] + [(n + (f" λ={best[n]['lambda_perp']:g}" if best[n]["lambda_perp"] else ""),
                                       arts[n]["pred"]) for n in names]
        fig, axes = plt.subplots(len(rows_), len(frames), figsize=(1.9 * len(frames) + 1.2, 1.9 * len(rows_)),
                                 squeeze=False, constrained_layout=True)
        im = None
        for i, (name, a) in enumerate(rows_):
            for j, f in enumerate(frames):
                ax = axes[i, j]
                im = ax.imshow(speed(a[f - 1]).T, origin="lower", cmap="viridis", vmin=0, vmax=vmax)
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0:
                    ax.set_title(f"step {f}", fontsize=8)
                if j == 0:
                    ax.set_ylabel(textwrap.fill(name, 22), fontsize=7)
        fig.colorbar(im, ax=axes, shrink=0.6, label="|v|")
        fig.suptitle(f"smoke {tag}: speed along one test-future rollout (seed 0)", fontsize=9)
        return save_figure(fig, figures_dir(out) / f"smoke_{tag}_rollouts.png")


def _label(r: Dict[str, Any]) -> str:
    w = r.get("opt_width")
    if w not in (None, "") and not (isinstance(w, float) and math.isnan(w)):
        return f"{_base_label(r)}, width {int(w)}"
    return _base_label(r)


def _base_label(r: Dict[str, Any]) -> str:
    arch, m = r.get("arch", "convnet"), r["method"]
    if m == "relaxed":
        return f"{arch} relaxed ({'projection' if r.get('penalty') == 'projection' else 'Wang'} penalty)"
    if m == "strict":
        return "C4-CNN (strict)"
    if m == "plain" and r.get("equal_weights"):
        return f"{arch} strict (equal weights)"
    if m == "projection":
        return f"convnet projection ({r.get('scheme')})"
    return f"{arch} {m}"
