"""Experiment registry, single runs, resumable sweeps and reports (private module).

An experiment describes its presets, how to build data, model, loss and metrics for one
:class:`RunConfig`, and how to turn the collected rows into Markdown tables and figures. A run
trains with :func:`equiproj.train.fit` in ``<out>/runs/<run id>``, writes its final metrics
atomically to ``metrics.json`` there, and ``<out>/results.csv`` is rebuilt from all run
folders (so it is never duplicated and survives interruptions). Running the same command again
skips finished runs and resumes interrupted ones from their checkpoints.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import torch
from torch import nn

from .._io import atomic_write_json, atomic_write_text
from ..baselines import METHODS, make_method
from ..regularise import DEFAULT_PERP_LR, DEFAULT_SCHEME, SCHEMES
from ..train import TrainConfig, fit, load_best_model, seed_everything, select_device

__all__ = ["RunConfig", "takes_scheme", "Setup", "Experiment", "register_experiment", "get_experiment", "available_experiments",
           "run", "sweep", "collect", "report", "method_options", "EXPERIMENTS"]

EXPERIMENTS: Dict[str, "Experiment"] = {}


def takes_scheme(method: str) -> bool:
    """Whether ``method`` has a training scheme (its class lists a ``scheme`` option)."""
    return "scheme" in getattr(METHODS.get(method), "_options", ())


@dataclass
class RunConfig:
    """Everything that identifies one run of an experiment.

    ``level`` is the experiment's symmetry-breaking knob (its meaning is given by
    ``Experiment.level_name``); ``options`` holds experiment-specific extras (strings, numbers).
    ``scheme`` is the training scheme of methods that have one (``projection``; see
    :class:`equiproj.ProjectionRegulariser`): ``None`` means the method's default, which is
    written into the configuration so that a later change of default never reuses a run.
    """

    experiment: str
    method: str = "projection"
    lambda_perp: float = 1e-2
    lambda_G: float = 0.0
    norm: str = "fro"
    route: str = "auto"
    k: int = 1
    seed: int = 0
    preset: str = "ci"
    level: Optional[float] = None
    steps: Optional[int] = None
    device: str = "auto"
    options: Dict[str, Any] = field(default_factory=dict)
    scheme: Optional[str] = None
    perp_lr: Optional[float] = None

    def __post_init__(self):
        if self.scheme is None and takes_scheme(self.method):
            self.scheme = DEFAULT_SCHEME
        if self.perp_lr is None and self.scheme in ("split", "split-proximal"):
            self.perp_lr = DEFAULT_PERP_LR

    def key(self) -> Dict[str, Any]:
        """The fields that determine the result (not the device)."""
        d = asdict(self)
        d.pop("device")
        return d

    def run_id(self) -> str:
        def f(x):
            return "none" if x is None else (f"{x:g}" if isinstance(x, float) else str(x))

        h = hashlib.sha1(json.dumps(self.key(), sort_keys=True, default=str).encode()).hexdigest()[:8]
        parts = [self.method] + ([self.scheme] if self.scheme else []) + (
            [f"plr{f(self.perp_lr)}"] if self.perp_lr is not None else []) + [
            f"lp{f(self.lambda_perp)}", f"lg{f(self.lambda_G)}", self.norm, self.route, f"k{self.k}",
            f"lvl{f(self.level)}", f"s{self.seed}", h]
        return "_".join(p.replace("/", "-").replace(" ", "") for p in parts)


@dataclass
class Setup:
    """What an experiment builds for one run."""

    model: nn.Module
    train_data: Any
    loss_fn: Callable
    train_config: TrainConfig
    final_metrics: Callable[[nn.Module], Dict[str, float]]
    eval_fn: Optional[Callable[[nn.Module], Dict[str, float]]] = None
    method_options: Dict[str, Any] = field(default_factory=dict)


class Experiment:
    """Base class: subclasses set ``name``, ``presets``, ``methods``, ``level_name`` and
    implement :meth:`setup` and :meth:`report`."""

    name = "experiment"
    description = ""
    presets: Dict[str, Dict[str, Any]] = {}
    methods: Sequence[str] = ()
    level_name = "level"
    default_level: Optional[float] = None
    default_sweep: Dict[str, List[Any]] = {}
    #: Which model the experiment's tables report when its runs select one on validation
    #: (``TrainConfig.select``): ``"final"`` or ``"selected"`` (the ``sel_`` columns).
    reports = "final"

    def setup(self, cfg: RunConfig, preset: Dict[str, Any], device: torch.device) -> Setup:
        raise NotImplementedError

    def report(self, rows: List[Dict[str, Any]], out: Path) -> str:
        """Markdown for the collected rows; figures go to ``out / 'figures'``."""
        return ""

    def check(self, cfg: RunConfig) -> None:
        if cfg.preset not in self.presets:
            raise ValueError(f"unknown preset {cfg.preset!r} for experiment '{self.name}': "
                             f"choose one of {', '.join(sorted(self.presets))}")
        if cfg.method not in self.methods:
            raise ValueError(f"method {cfg.method!r} is not available for experiment '{self.name}': "
                             f"choose one of {', '.join(self.methods)}")
        for nm in ("lambda_perp", "lambda_G"):
            v = getattr(cfg, nm)
            if not (v >= 0):
                raise ValueError(f"{nm} must be >= 0, got {v}")
        if cfg.k < 1:
            raise ValueError(f"k (sampled group elements) must be >= 1, got {cfg.k}")
        if cfg.scheme is not None:
            if not takes_scheme(cfg.method):
                raise ValueError(f"method {cfg.method!r} has no training scheme (got scheme={cfg.scheme!r}); "
                                 f"--scheme applies to: {', '.join(m for m in sorted(METHODS) if takes_scheme(m))}")
            if cfg.scheme not in SCHEMES:
                raise ValueError(f"unknown scheme {cfg.scheme!r}: choose one of {', '.join(SCHEMES)}")
        if cfg.perp_lr is not None and cfg.scheme not in ("split", "split-proximal"):
            raise ValueError(f"perp_lr applies to the split schemes only, not to scheme {cfg.scheme!r}")
        if cfg.steps is not None and cfg.steps < 1:
            raise ValueError(f"steps must be >= 1, got {cfg.steps}")


def register_experiment(exp_cls):
    """Class decorator adding an experiment to the registry."""
    EXPERIMENTS[exp_cls.name] = exp_cls()
    return exp_cls


def available_experiments() -> List[str]:
    _load_builtin()
    return sorted(EXPERIMENTS)


def get_experiment(name: str) -> Experiment:
    _load_builtin()
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}: choose one of {', '.join(sorted(EXPERIMENTS))}")
    return EXPERIMENTS[name]


_BUILTIN = ("so2_toy", "vectors", "ct", "smoke", "volumes")


def _load_builtin() -> None:
    import importlib

    for mod in _BUILTIN:  # registration side effects
        try:
            importlib.import_module(f"{__package__}.{mod}")
        except ModuleNotFoundError as err:  # pragma: no cover - a module not written yet
            if err.name != f"{__package__}.{mod}":
                raise


# ---------------------------------------------------------------------------------- running


def method_options(cfg: RunConfig) -> Dict[str, Any]:
    """The options a run passes to :func:`equiproj.baselines.make_method`.

    ``lambda_perp`` is every method's main weight: the projection penalty's ``lambda_perp``
    (with ``lambda_G`` and ``norm``), ``lambda_`` of the sample-based methods, PER and the
    relaxed convolutions (with ``k`` sampled elements where it applies), and ``lambda_free`` of
    RPP (``lambda_G``, when positive, is RPP's ``lambda_eq``). ``plain`` and ``strict`` take none.
    """
    m = cfg.method
    if m == "projection":
        opts = dict(lambda_perp=cfg.lambda_perp, lambda_G=cfg.lambda_G, norm=cfg.norm)
        if cfg.scheme is not None:
            opts["scheme"] = cfg.scheme
        if cfg.perp_lr is not None:
            opts["perp_lr"] = cfg.perp_lr
    elif m in ("sample-output", "eqreg", "weight-sample"):
        opts = dict(lambda_=cfg.lambda_perp, k=cfg.k)
    elif m in ("per", "relaxed"):
        opts = dict(lambda_=cfg.lambda_perp)
    elif m == "rpp":
        opts = dict(lambda_free=cfg.lambda_perp, **({"lambda_eq": cfg.lambda_G} if cfg.lambda_G > 0 else {}))
    else:
        opts = {}
    opts["seed"] = cfg.seed
    return opts


def _method_options(cfg: RunConfig, setup: Setup) -> Dict[str, Any]:
    opts = method_options(cfg)
    opts.update(setup.method_options)
    return opts


def run(cfg: RunConfig, out: str, progress: bool = True, collect_after: bool = True) -> Dict[str, Any]:
    """Train and evaluate one configuration; resumable; returns the metrics row."""
    exp = get_experiment(cfg.experiment)
    exp.check(cfg)
    out_p = Path(out)
    run_dir = out_p / "runs" / cfg.run_id()
    metrics_path = run_dir / "metrics.json"
    preset = dict(exp.presets[cfg.preset])
    preset_values = json.loads(json.dumps(preset, default=str))  # as stored in metrics.json
    if metrics_path.exists():
        row = json.loads(metrics_path.read_text())
        if row.get("config") == cfg.key():
            old = row.get("preset_values")
            if old is None or old == preset_values:  # None: written before presets were recorded
                return row
            changed = ", ".join(f"{k}: {old.get(k)!r} -> {preset_values.get(k)!r}"
                                for k in sorted(set(old) | set(preset_values)) if old.get(k) != preset_values.get(k))
            raise ValueError(f"run {run_dir} was made with other values of preset {cfg.preset!r} ({changed}); "
                             f"move or delete that folder, or give another --out")
    device = select_device(cfg.device)
    seed_everything(cfg.seed)
    setup = exp.setup(cfg, preset, device)
    if cfg.steps is not None:
        setup.train_config = dataclasses.replace(setup.train_config, steps=cfg.steps)
    setup.train_config = dataclasses.replace(setup.train_config, seed=cfg.seed, device=str(device),
                                             meta={"run": cfg.key(), "preset": preset_values})
    method = make_method(cfg.method, setup.model.to(device), **_method_options(cfg, setup))
    t0 = time.perf_counter()
    result = fit(method.model, setup.train_data, setup.train_config, setup.loss_fn, str(run_dir),
                 regulariser=method, eval_fn=setup.eval_fn, progress=progress)
    if result.get("status") != "finished":
        return {"status": result.get("status", "unknown"), "run_id": cfg.run_id()}
    method.model.eval()
    metrics = setup.final_metrics(method.model)
    artifacts = metrics.pop("_artifacts", None)
    layers = method.report()
    if artifacts:
        import io

        import numpy as np

        from .._io import atomic_write_bytes

        buf = io.BytesIO()
        np.savez(buf, **artifacts)
        atomic_write_bytes(run_dir / "artifacts.npz", buf.getvalue())
    defect = sum(r.defect_norm for r in layers) if layers else float("nan")
    if layers and hasattr(layers[0], "as_dict"):
        atomic_write_json(run_dir / "layers.json", [r.as_dict() for r in layers])
    selection: Dict[str, Any] = {}
    if result.get("selected"):
        # the weights of the best validation evaluation: their metrics with the prefix sel_
        sel = load_best_model(method.model, run_dir)
        method.model.eval()
        sel_metrics = setup.final_metrics(method.model)
        sel_metrics.pop("_artifacts", None)
        sel_layers = method.report()
        selection = {f"sel_{k}": v for k, v in sel_metrics.items() if isinstance(v, (int, float))}
        selection.update(sel_step=sel["step"], sel_metric=sel["metric"],
                         sel_defect_sum=sum(r.defect_norm for r in sel_layers) if sel_layers else float("nan"))
    selection.update(stopped_early=bool(result.get("stopped_early", False)), steps_trained=result.get("steps"),
                     reported=exp.reports if result.get("selected") else "final")
    row = {
        "config": cfg.key(), "run_id": cfg.run_id(), **{k: v for k, v in cfg.key().items() if k != "options"},
        **{f"opt_{k}": v for k, v in cfg.options.items()},
        **metrics, "defect_sum": defect, **selection, "preset_values": preset_values,
        "time_per_step_s": result.get("time_per_step_s", float("nan")),
        "throughput": result.get("samples_per_s", float("nan")),
        "train_wall_s": time.perf_counter() - t0, "device": result.get("device", str(device)),
    }
    atomic_write_json(metrics_path, row)
    if collect_after:
        collect(out)
    return row


def _grid(values: Dict[str, Sequence[Any]]) -> Iterable[Dict[str, Any]]:
    keys = list(values)
    for combo in itertools.product(*(values[k] for k in keys)):
        yield dict(zip(keys, combo))


def sweep(experiment: str, out: str, grid: Dict[str, Sequence[Any]], base: Optional[Dict[str, Any]] = None,
          progress: bool = True) -> List[Dict[str, Any]]:
    """Run every combination of ``grid`` (field name -> values) on top of ``base``; resumable.

    Methods without a penalty weight (``plain``, ``strict``) run once per other setting rather
    than once per ``lambda_perp``, and methods without a training scheme once per ``scheme``.
    """
    base = dict(base or {})
    configs, seen = [], set()
    for combo in _grid(grid):
        fields_ = {**base, **combo}
        if fields_.get("method") in ("plain", "strict"):
            fields_["lambda_perp"] = 0.0
            fields_["lambda_G"] = 0.0
        if not takes_scheme(fields_.get("method", "projection")):
            fields_["scheme"] = None
        if fields_.get("scheme") not in (None, "split", "split-proximal"):
            fields_["perp_lr"] = None
        cfg = RunConfig(experiment=experiment, **fields_)
        if cfg.run_id() not in seen:
            seen.add(cfg.run_id())
            configs.append(cfg)
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(configs), desc=f"sweep {experiment}", unit="run")
        except ImportError:  # pragma: no cover
            bar = None
    rows = []
    for cfg in configs:
        rows.append(run(cfg, out, progress=False, collect_after=False))
        if bar:
            bar.update(1)
            bar.set_postfix_str(cfg.run_id()[:40])
    if bar:
        bar.close()
    collect(out)
    return rows


def collect(out: str) -> List[Dict[str, Any]]:
    """Rebuild ``<out>/results.csv`` from the runs' ``metrics.json``; returns the rows."""
    out_p = Path(out)
    rows = []
    for p in sorted((out_p / "runs").glob("*/metrics.json")):
        try:
            rows.append(json.loads(p.read_text()))
        except json.JSONDecodeError:  # pragma: no cover - atomic writes make this unlikely
            continue
    if rows:
        keys: List[str] = []
        for r in rows:
            for k in r:
                if k not in ("config", "preset_values") and k not in keys:
                    keys.append(k)
        lines = [",".join(keys)]
        for r in rows:
            lines.append(",".join(_csv_cell(r.get(k, "")) for k in keys))
        atomic_write_text(out_p / "results.csv", "\n".join(lines) + "\n")
    return rows


def _csv_cell(v) -> str:
    s = "" if v is None else (repr(v) if isinstance(v, float) else str(v))
    return f'"{s}"' if ("," in s or '"' in s) else s


def report(out: str) -> str:
    """Write ``<out>/report.md`` (tables and figures of every experiment found) and return it."""
    out_p = Path(out)
    rows = collect(out)
    if not rows:
        raise ValueError(f"no finished runs under {out_p / 'runs'}: run `equiproj run` or `equiproj sweep` first")
    parts = [f"# equiproj report\n\nResults from `{out_p}` ({len(rows)} runs).\n"]
    for name in sorted({r["experiment"] for r in rows}):
        exp = get_experiment(name)
        parts.append(exp.report([r for r in rows if r["experiment"] == name], out_p))
    text = "\n".join(parts)
    atomic_write_text(out_p / "report.md", text)
    return text


# ---------------------------------------------------------------------------------- helpers for reports


def mean_std(values: Sequence[float]) -> str:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return "–"
    m = sum(vals) / len(vals)
    if len(vals) == 1:
        return f"{m:.4g}"
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))
    return f"{m:.4g} ± {sd:.2g}"


def group_rows(rows: List[Dict[str, Any]], keys: Sequence[str]) -> Dict[tuple, List[Dict[str, Any]]]:
    groups: Dict[tuple, List[Dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in keys), []).append(r)
    return groups


def markdown_table(rows: List[Dict[str, Any]], keys: Sequence[str], metrics: Sequence[str],
                   labels: Optional[Dict[str, str]] = None) -> str:
    """Mean ± std over seeds of ``metrics`` for every combination of ``keys``."""
    labels = labels or {}
    head = [labels.get(k, k) for k in keys] + [labels.get(m, m) for m in metrics] + ["seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(keys) + "---:|" * (len(metrics) + 1)]

    def sort_key(item):
        return tuple((0, v) if isinstance(v, (int, float)) and v is not None else (1, str(v)) for v in item[0])

    for key, rs in sorted(group_rows(rows, keys).items(), key=sort_key):
        cells = [("–" if v is None else (f"{v:g}" if isinstance(v, float) else str(v))) for v in key]
        cells += [mean_std([r.get(m) for r in rs]) for m in metrics]
        cells.append(str(len({r.get("seed") for r in rs})))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figures_dir(out: Path) -> Path:
    d = Path(out) / "figures"
    d.mkdir(parents=True, exist_ok=True)
    return d


def save_figure(fig, path: Path) -> str:
    """Save a matplotlib figure atomically; returns the path relative to its report folder."""
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".png")
    os.close(fd)
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return f"figures/{path.name}"
