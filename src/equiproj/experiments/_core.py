"""Experiment registry, single runs, resumable sweeps and reports (private module).

An experiment describes its presets, how to build data, model, loss and metrics for one
:class:`RunConfig`, and how to turn the collected rows into Markdown tables and figures. A run
trains with :func:`equiproj.train.fit` in ``<out>/runs/<run id>``, writes its final metrics
atomically to ``metrics.json`` there, and ``<out>/results.csv`` is rebuilt from all run
folders (so it is never duplicated and survives interruptions). Running the same command again
skips finished runs and resumes interrupted ones from their checkpoints.

Reliability (see ``docs/reliability.md``): a finished run is trusted only when its
``metrics.json`` is readable and every file it lists is present with the recorded size; a run
folder is trained by one process at a time (an advisory lock, ``<run>/.lock``); only rank 0 of
a distributed run writes or prints; stale temporary files of killed writes are removed when a
run or sweep starts; the output folder and the whole grid of a sweep are checked before any
training.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .._io import (atomic_write_json, atomic_write_text, check_writable_folder, folder_lock,
                   remove_stale_temp_files)
from ..baselines import METHODS, make_method, method_info
from ..regularise import DEFAULT_PERP_LR, DEFAULT_SCHEME, SCHEMES
from ..train import (CHECKPOINT_NAME, MODEL_NAME, RESULT_NAME, RunFolderError, TrainConfig, fit, is_main_process,
                     load_best_model, seed_everything, select_device)

__all__ = ["RunConfig", "takes_scheme", "takes_weight",
           "Setup", "Experiment", "register_experiment", "get_experiment", "available_experiments",
           "run", "sweep", "collect", "scan", "report", "method_options", "parse_shard", "BadRunFolders",
           "run_folder", "sweep_configs", "read_results_csv", "ExperimentError", "EXPERIMENTS"]



def _methods_where(key: str) -> Tuple[str, ...]:
    """The registered methods whose :func:`equiproj.baselines.method_info` has ``key`` set."""
    return tuple(m for m in sorted(METHODS) if method_info(m)[key])


def takes_weight(method: str) -> bool:
    """Whether ``method`` has a penalty weight (``--lambda-perp``); ``plain`` and ``strict`` have none.

    >>> takes_weight("rpp"), takes_weight("strict")
    (True, False)
    """
    return method in METHODS and method_info(method)["weight_option"] is not None


class ExperimentError(RuntimeError):
    """A run that cannot be recorded (e.g. the ranks of a distributed run disagree)."""


class BadRunFolders(ValueError):
    """Run folders that could not be read or trusted; ``problems`` lists ``(folder, reason)``."""

    def __init__(self, problems: Sequence[tuple], fix: str):
        self.problems = list(problems)
        lines = "\n".join(f"  {p}: {why}" for p, why in self.problems)
        super().__init__(f"{len(self.problems)} run folder(s) could not be used:\n{lines}\n{fix}")


def _say(msg: str, enabled: bool = True) -> None:
    """A status line on rank 0 (stderr, through tqdm when it is there so that bars stay intact)."""
    if not enabled or not is_main_process():
        return
    import sys

    try:
        from tqdm.auto import tqdm

        tqdm.write(msg, file=sys.stderr)
    except ImportError:  # pragma: no cover
        print(msg, file=sys.stderr, flush=True)


def _world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))

EXPERIMENTS: Dict[str, "Experiment"] = {}


def takes_scheme(method: str) -> bool:
    """Whether ``method`` has a training scheme (its class lists a ``scheme`` option)."""
    return method in METHODS and method_info(method)["has_scheme"]


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
    threads: Optional[int] = None
    world_size: Optional[int] = None

    def __post_init__(self):
        if self.world_size is None:
            self.world_size = _world_size()
        if self.scheme is None and takes_scheme(self.method):
            self.scheme = DEFAULT_SCHEME
        if self.perp_lr is None and self.scheme in ("split", "split-proximal"):
            self.perp_lr = DEFAULT_PERP_LR

    def key(self) -> Dict[str, Any]:
        """The fields that determine the result (not the device).

        The CPU thread count and the number of processes change the numbers (the order of
        floating-point reductions, the data shards), so they belong to a run's identity:
        ``threads`` enters the key when it is not ``None`` or 1 (``None`` runs with one thread on a
        CPU, the normalisation that keeps the identities of single-threaded runs unchanged), and
        ``world_size`` when it is not 1.
        """
        d = asdict(self)
        d.pop("device")
        if d.get("threads") in (None, 1):
            d.pop("threads")
        if d.get("world_size") in (None, 1):
            d.pop("world_size")
        return d

    def run_id(self) -> str:
        def f(x):
            return "none" if x is None else (f"{x:g}" if isinstance(x, float) else str(x))

        h = hashlib.sha1(json.dumps(self.key(), sort_keys=True, default=str).encode()).hexdigest()[:8]
        parts = [self.method] + ([self.scheme] if self.scheme else []) + (
            [f"plr{f(self.perp_lr)}"] if self.perp_lr is not None else []) + [
            f"lp{f(self.lambda_perp)}", f"lg{f(self.lambda_G)}", self.norm, self.route, f"k{self.k}",
            f"lvl{f(self.level)}", f"s{self.seed}"] + (
            [f"t{self.threads}"] if self.threads not in (None, 1) else []) + (
            [f"ws{self.world_size}"] if self.world_size not in (None, 1) else []) + [h]
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
    #: RunConfig fields this experiment ignores: giving them a non-default value is an error.
    unused: Sequence[str] = ()
    #: ``--option`` keys with their defaults and a short description (shown by ``equiproj list``).
    option_defaults: Dict[str, tuple] = {}

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
        for nm, flag in (("lambda_perp", "--lambda-perp"), ("lambda_G", "--lambda-G")):
            v = getattr(cfg, nm)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{nm} ({flag}) must be a finite number >= 0, got {v!r}")
        if isinstance(cfg.k, bool) or not isinstance(cfg.k, int) or cfg.k < 1:
            raise ValueError(f"k (--k, sampled group elements) must be an integer >= 1, got {cfg.k!r}")
        if cfg.k != 1 and not method_info(cfg.method)["samples"]:
            raise ValueError(f"k (--k) applies to the sampling methods {', '.join(_methods_where('samples'))} only, "
                             f"not to method {cfg.method!r}: leave --k out")
        if cfg.norm != "fro" and not method_info(cfg.method)["norm_option"]:
            raise ValueError(f"norm (--norm) applies to the method(s) {', '.join(_methods_where('norm_option'))} only, "
                             f"not to method {cfg.method!r}: leave --norm out")
        if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) or cfg.seed < 0:
            raise ValueError(f"seed (--seed) must be an integer >= 0, got {cfg.seed!r}")
        if cfg.level is not None and (isinstance(cfg.level, bool) or not isinstance(cfg.level, (int, float))
                                      or not math.isfinite(cfg.level)):
            raise ValueError(f"level (--level, {self.level_name}) must be a finite number, got {cfg.level!r}")
        if cfg.threads is not None and (isinstance(cfg.threads, bool) or not isinstance(cfg.threads, int)
                                        or cfg.threads < 1):
            raise ValueError(f"threads (--threads) must be an integer >= 1, got {cfg.threads!r}")
        defaults = {f.name: f.default for f in dataclasses.fields(RunConfig)}
        for nm in self.unused:
            if getattr(cfg, nm) != defaults[nm]:
                raise ValueError(f"experiment '{self.name}' does not use --{nm.replace('_', '-')} (got "
                                 f"{getattr(cfg, nm)!r}); leave it out")
        if cfg.scheme is not None:
            if not takes_scheme(cfg.method):
                raise ValueError(f"method {cfg.method!r} has no training scheme (got scheme={cfg.scheme!r}); "
                                 f"--scheme applies to: {', '.join(m for m in sorted(METHODS) if takes_scheme(m))}")
            if cfg.scheme not in SCHEMES:
                raise ValueError(f"unknown scheme {cfg.scheme!r} (--scheme): choose one of {', '.join(SCHEMES)}")
        if cfg.perp_lr is not None:
            if cfg.scheme not in ("split", "split-proximal"):
                raise ValueError(f"perp_lr (--perp-lr) applies to the split schemes only, not to scheme {cfg.scheme!r}")
            if isinstance(cfg.perp_lr, bool) or not isinstance(cfg.perp_lr, (int, float)) or \
                    not math.isfinite(cfg.perp_lr) or cfg.perp_lr <= 0:
                raise ValueError(f"perp_lr (--perp-lr) must be a finite number > 0, got {cfg.perp_lr!r}")
        if cfg.steps is not None and (isinstance(cfg.steps, bool) or not isinstance(cfg.steps, int) or cfg.steps < 1):
            raise ValueError(f"steps (--steps) must be an integer >= 1, got {cfg.steps!r}")


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
    """The options a run passes to :func:`equiproj.baselines.make_method`, read from the
    method's :func:`~equiproj.baselines.method_info` rather than its name.

    ``lambda_perp`` (``--lambda-perp``) is every method's main weight (``weight_option``: the
    projection penalty's ``lambda_perp``, ``lambda_`` of the sample-based methods, PER and the
    relaxed convolutions, ``lambda_free`` of RPP); ``lambda_G`` (``--lambda-G``), when positive,
    is the second weight (``second_weight_option``: the projection penalty's ``lambda_G``, RPP's
    ``lambda_eq``). ``norm`` goes to methods with a ``norm_option``, ``k`` to the sampling
    methods, ``scheme`` and ``perp_lr`` to methods with a training scheme. ``plain`` and
    ``strict`` take only the seed.
    """
    info = method_info(cfg.method)
    opts: Dict[str, Any] = {}
    if info["weight_option"]:
        opts[info["weight_option"]] = cfg.lambda_perp
    if info["second_weight_option"] and cfg.lambda_G > 0:
        opts[info["second_weight_option"]] = cfg.lambda_G
    if info["norm_option"]:
        opts[info["norm_option"]] = cfg.norm
    if info["samples"]:
        opts["k"] = cfg.k
    if info["has_scheme"]:
        if cfg.scheme is not None:
            opts["scheme"] = cfg.scheme
        if cfg.perp_lr is not None:
            opts["perp_lr"] = cfg.perp_lr
    opts["seed"] = cfg.seed
    return opts


def _method_options(cfg: RunConfig, setup: Setup) -> Dict[str, Any]:
    opts = method_options(cfg)
    opts.update(setup.method_options)
    return opts


#: Files of a finished run whose sizes ``metrics.json`` records (those that exist).
_RUN_FILES = (RESULT_NAME, MODEL_NAME, "best_model.pt", "layers.json", "artifacts.npz")
METRICS_NAME = "metrics.json"


def run_folder(row: Dict[str, Any], out: Any) -> Path:
    """The folder of a collected run (``row["_dir"]`` when rows were merged from several output
    folders, else ``<out>/runs/<run id>``)."""
    return Path(row["_dir"]) if row.get("_dir") else Path(out) / "runs" / row["run_id"]


def _read_metrics(path: Path) -> "tuple[Optional[Dict[str, Any]], Optional[str]]":
    """``(row, None)`` for a trusted ``metrics.json``, else ``(None, why not)``."""
    try:
        row = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, "has no metrics.json"
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return None, f"{path.name} cannot be read ({type(exc).__name__}: {exc})"
    if not isinstance(row, dict):
        return None, f"{path.name} holds a JSON {type(row).__name__}, not an object"
    missing = [k for k in ("experiment", "run_id", "config") if k not in row]
    if missing:
        return None, f"{path.name} lacks the field(s) {', '.join(missing)}"
    files = row.get("files")
    run_dir = path.parent
    if isinstance(files, dict):
        for name, size in files.items():
            f = run_dir / name
            if not f.is_file():
                return None, f"{name} is missing (listed in {path.name})"
            if f.stat().st_size != size:
                return None, f"{name} has {f.stat().st_size} bytes, {path.name} recorded {size}"
    else:  # written before the files were recorded
        for name in (RESULT_NAME, MODEL_NAME):
            if not (run_dir / name).is_file():
                return None, f"{name} is missing"
    return row, None


def _finished_row(run_dir: Path, cfg: RunConfig, preset_values: Dict[str, Any]):
    """``(row, problem)``: the trusted row of a finished run, or the reason a present
    ``metrics.json`` is not trusted (``(None, None)`` when there is none). A run made with other
    preset values is an error."""
    path = run_dir / METRICS_NAME
    if not path.exists():
        return None, None
    row, problem = _read_metrics(path)
    if row is None:
        return None, problem
    if row.get("config") != cfg.key():
        return None, f"{METRICS_NAME} describes another configuration"
    old = row.get("preset_values")
    if old is not None and old != preset_values:  # None: written before presets were recorded
        changed = ", ".join(f"{k}: {old.get(k)!r} -> {preset_values.get(k)!r}"
                            for k in sorted(set(old) | set(preset_values)) if old.get(k) != preset_values.get(k))
        raise ValueError(f"run {run_dir} was made with other values of preset {cfg.preset!r} ({changed}); "
                         f"move or delete that folder, or give another --out")
    return row, None


@contextlib.contextmanager
def _process_group():
    """Under ``torchrun``, one process group for the whole run (training and the comparison of the
    final metrics across ranks); nothing otherwise."""
    dist = torch.distributed
    own = (dist.is_available() and not dist.is_initialized()
           and all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")) and int(os.environ["WORLD_SIZE"]) > 1)
    if own:
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    try:
        yield dist.is_available() and dist.is_initialized()
    finally:
        if own and dist.is_initialized():
            dist.destroy_process_group()


@contextlib.contextmanager
def _threads(n: Optional[int]):
    old = torch.get_num_threads()
    if n is not None and n != old:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n is not None and torch.get_num_threads() != old:
            torch.set_num_threads(old)


def run(cfg: RunConfig, out: str, progress: bool = True, collect_after: bool = True, blocking: bool = True,
        verbose: Optional[bool] = None) -> Dict[str, Any]:
    """Train and evaluate one configuration; resumable; returns the metrics row.

    A finished run (a trusted ``metrics.json``) is returned without training. A folder whose
    ``metrics.json`` cannot be trusted is recomputed from the run's own files (its final weights,
    or its last checkpoint), and refused with :class:`equiproj.train.RunFolderError`, naming the
    file, when neither is usable. The run folder is locked while it is trained: another process
    waits (``blocking=True``) or gets ``{"status": "busy"}``. Under ``torchrun`` every rank
    trains and computes the metrics, which must agree; only rank 0 writes. ``verbose`` (default:
    ``progress``) prints what is skipped, resumed or recomputed.
    """
    exp = get_experiment(cfg.experiment)
    exp.check(cfg)
    verbose = progress if verbose is None else verbose
    check_writable_folder(out)
    out_p = Path(out)
    run_dir = out_p / "runs" / cfg.run_id()
    preset = dict(exp.presets[cfg.preset])
    preset_values = json.loads(json.dumps(preset, default=str))  # as stored in metrics.json
    main = is_main_process()
    device = select_device(cfg.device)  # a missing device fails before anything is written
    # under torchrun every rank must take the same path: rank 0 waits for the lock, never skips
    blocking = blocking or _world_size() > 1
    lock = folder_lock(run_dir, blocking=blocking) if main else contextlib.nullcontext(True)
    with lock as held:
        if not held:
            return {"status": "busy", "run_id": cfg.run_id()}
        if main:
            remove_stale_temp_files(run_dir)  # we hold the lock: no other writer in this folder
        row, problem = _finished_row(run_dir, cfg, preset_values)
        if row is not None:
            _say(f"skip {cfg.run_id()}: finished ({run_dir / METRICS_NAME})", verbose)
            return row
        if problem is not None:
            _say(f"note: {run_dir}: {problem}; recomputing its metrics from the run's files", True)
        elif (run_dir / CHECKPOINT_NAME).exists():
            _say(f"resume {cfg.run_id()} from its checkpoint ({run_dir / CHECKPOINT_NAME})", verbose)
        threads = cfg.threads if cfg.threads is not None else (1 if device.type == "cpu" else None)
        with _threads(threads), _process_group() as distributed:
            row = _train_and_measure(exp, cfg, preset, preset_values, device, run_dir, progress, distributed)
    if row.get("status") in (None, "finished") and collect_after and main:
        collect(out)
    return row


def _train_and_measure(exp: Experiment, cfg: RunConfig, preset, preset_values, device, run_dir: Path, progress: bool,
                       distributed: bool) -> Dict[str, Any]:
    main = is_main_process()
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
    defect = sum(r.defect_norm for r in layers) if layers and hasattr(layers[0], "defect_norm") else float("nan")
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
                         sel_defect_sum=sum(r.defect_norm for r in sel_layers) if sel_layers and hasattr(
                             sel_layers[0], "defect_norm") else float("nan"))
    selection.update(stopped_early=bool(result.get("stopped_early", False)), steps_trained=result.get("steps"),
                     reported=exp.reports if result.get("selected") else "final")
    row = {
        "config": cfg.key(), "run_id": cfg.run_id(), **{k: v for k, v in cfg.key().items() if k != "options"},
        **{f"opt_{k}": v for k, v in cfg.options.items()},
        **metrics, "defect_sum": defect, **selection, "preset_values": preset_values,
        "time_per_step_s": result.get("time_per_step_s", float("nan")),
        "throughput": result.get("samples_per_s", float("nan")),
        "train_wall_s": time.perf_counter() - t0, "device": result.get("device", str(device)),
        "torch_threads": torch.get_num_threads(), "world_size": result.get("world_size", 1),
    }
    if distributed:
        # every rank holds the same weights: the metrics must agree, or the run is not trusted
        from ..train._distributed import _all_gather_object, _Dist

        info = _Dist(True, torch.distributed.get_rank(), torch.distributed.get_world_size())
        mine = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        gathered = _all_gather_object(mine, info)
        differ = sorted(k for k in mine if any(not _same(g.get(k), mine[k]) for g in gathered))
        if differ:
            raise ExperimentError(f"run {run_dir}: the ranks computed different final metrics ({', '.join(differ)}); "
                               f"the run is not recorded")
        row["ranks_agree"] = True
    if not main:
        return row
    if artifacts:
        import io

        import numpy as np

        from .._io import atomic_write_bytes

        buf = io.BytesIO()
        np.savez(buf, **artifacts)
        atomic_write_bytes(run_dir / "artifacts.npz", buf.getvalue())
    if layers and hasattr(layers[0], "as_dict"):
        atomic_write_json(run_dir / "layers.json", [r.as_dict() for r in layers])
    row["files"] = {n: (run_dir / n).stat().st_size for n in _RUN_FILES if (run_dir / n).is_file()}
    atomic_write_json(run_dir / METRICS_NAME, row)  # last: its presence marks the run finished
    return row


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _grid(values: Dict[str, Sequence[Any]]) -> Iterable[Dict[str, Any]]:
    keys = list(values)
    for combo in itertools.product(*(values[k] for k in keys)):
        yield dict(zip(keys, combo))


def parse_shard(text: Optional[str]) -> Optional["tuple[int, int]"]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n`` (``None`` stays ``None``)."""
    if text is None:
        return None
    try:
        i, n = (int(t) for t in str(text).split("/"))
    except ValueError:
        raise ValueError(f"--shard expects i/n with integers 0 <= i < n (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard expects i/n with 0 <= i < n (e.g. 0/4 ... 3/4), got {text!r}")
    return i, n


def sweep_configs(experiment: str, grid: Dict[str, Sequence[Any]], base: Optional[Dict[str, Any]] = None
                  ) -> List[RunConfig]:
    """The distinct configurations of a sweep, in order, every one checked (all problems are
    reported together, before anything is trained).

    Methods without a penalty weight (``plain``, ``strict``) run once per other setting rather
    than once per ``lambda_perp``, methods without a training scheme once per ``scheme``, and
    methods without ``k`` or ``norm`` once per ``k`` or ``norm``.
    """
    exp = get_experiment(experiment)
    base = dict(base or {})
    for name, values in grid.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)) or not values:
            raise ValueError(f"sweep: the values of {name!r} must be a non-empty list, got {values!r}")
    configs, seen, errors = [], set(), []
    for combo in _grid(grid):
        fields_ = {**base, **combo}
        method = fields_.get("method", "projection")
        if not takes_weight(method):
            fields_["lambda_perp"] = 0.0
            fields_["lambda_G"] = 0.0
        if not takes_scheme(method):
            fields_["scheme"] = None
        if fields_.get("scheme") not in (None, "split", "split-proximal"):
            fields_["perp_lr"] = None
        if method not in METHODS or not method_info(method)["samples"]:
            fields_["k"] = 1
        if method not in METHODS or not method_info(method)["norm_option"]:
            fields_["norm"] = "fro"
        try:
            cfg = RunConfig(experiment=experiment, **fields_)
            exp.check(cfg)
        except (ValueError, TypeError) as err:
            msg = str(err)
            if msg not in errors:
                errors.append(msg)
            continue
        if cfg.run_id() not in seen:
            seen.add(cfg.run_id())
            configs.append(cfg)
    if errors:
        raise ValueError("the sweep grid has invalid configurations (nothing was trained):\n  " + "\n  ".join(errors))
    return configs


def sweep(experiment: str, out: str, grid: Dict[str, Sequence[Any]], base: Optional[Dict[str, Any]] = None,
          progress: bool = True, shard: Optional["tuple[int, int]"] = None, skip_bad: bool = False,
          verbose: Optional[bool] = None) -> List[Dict[str, Any]]:
    """Run every combination of ``grid`` (field name -> values) on top of ``base``; resumable.

    The whole grid is checked (:func:`sweep_configs`) and ``out`` tested for writability before
    anything is trained. ``shard=(i, n)`` runs the configurations ``i, i + n, i + 2n, ...``
    only, so that ``n`` independent jobs split a sweep without coordination. Runs that another
    process is training (their folder is locked) are left for last and then waited for.
    ``results.csv`` is rebuilt after every finished run. A run folder that cannot be used
    (:class:`equiproj.train.RunFolderError`) and unreadable run folders found when collecting
    raise :class:`BadRunFolders` at the end, listing them all, unless ``skip_bad``.
    """
    verbose = progress if verbose is None else verbose
    configs = sweep_configs(experiment, grid, base)
    check_writable_folder(out)
    out_p = Path(out)
    if is_main_process():
        for d in (out_p, out_p / "figures"):
            remove_stale_temp_files(d, older_than_s=60.0)  # other processes may be writing here right now
    if shard is not None:
        i, n = shard
        configs = configs[i::n]
    if verbose and is_main_process():
        done = sum(1 for c in configs if (out_p / "runs" / c.run_id() / METRICS_NAME).exists())
        part = f" (shard {shard[0]}/{shard[1]})" if shard else ""
        _say(f"sweep {experiment}{part}: {len(configs)} configuration(s), {done} finished (skipped), "
             f"{len(configs) - done} to train or resume", True)
    bar = None
    if progress and is_main_process():
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(configs), desc=f"sweep {experiment}", unit="run")
        except ImportError:  # pragma: no cover
            bar = None
    rows: Dict[str, Dict[str, Any]] = {}
    bad: List[tuple] = []
    pending = list(configs)
    for attempt in (0, 1):  # first pass: skip locked runs; second: wait for them
        busy = []
        for cfg in pending:
            try:
                row = run(cfg, out, progress=False, collect_after=True, blocking=attempt == 1, verbose=False)
            except RunFolderError as err:
                bad.append((out_p / "runs" / cfg.run_id(), str(err)))
                row = {"status": "bad", "run_id": cfg.run_id()}
            if row.get("status") == "busy":
                busy.append(cfg)
                _say(f"wait: {cfg.run_id()} is being trained by another process", verbose)
                continue
            rows[cfg.run_id()] = row
            if bar:
                bar.update(1)
                bar.set_postfix_str(cfg.run_id()[:40])
        pending = busy
        if not pending:
            break
    if bar:
        bar.close()
    if is_main_process():
        _, unreadable, _ = scan(out)
        known = {str(p) for p, _ in bad}
        bad += [(p, why) for p, why in unreadable if str(p) not in known]
        collect(out)
    if bad and not skip_bad:
        raise BadRunFolders(bad, "Fix: run the same command again once the cause is removed, delete those folders "
                                 "to train them again, or pass --skip-bad to go on without them.")
    for p, why in bad:
        _say(f"skipped bad run folder {p}: {why}", True)
    return [rows[c.run_id()] for c in configs if c.run_id() in rows and rows[c.run_id()].get("status") != "bad"]


def scan(outs: Any) -> "tuple[List[Dict[str, Any]], List[tuple], List[Path]]":
    """``(rows, bad, unfinished)`` of one output folder or several: the trusted rows (a run that
    appears in several folders once, each row with ``_dir``, its folder), the run folders whose
    ``metrics.json`` cannot be trusted (``(folder, reason)``) and the folders of runs not finished
    yet (no ``metrics.json``)."""
    outs = [outs] if isinstance(outs, (str, os.PathLike)) else list(outs)
    rows, bad, unfinished, seen = [], [], [], set()
    for out in outs:
        if _is_table(out):
            continue
        runs = Path(out) / "runs"
        if not runs.is_dir():
            continue
        for d in sorted(p for p in runs.iterdir() if p.is_dir()):
            if not (d / METRICS_NAME).exists():
                if any((d / n).exists() for n in (CHECKPOINT_NAME, RESULT_NAME)):
                    unfinished.append(d)
                continue
            row, problem = _read_metrics(d / METRICS_NAME)
            if row is None:
                bad.append((d, problem))
                continue
            if row["run_id"] in seen:
                continue
            seen.add(row["run_id"])
            rows.append({**row, "_dir": str(d)})
    # then the results tables: a run found both in a folder and in a table is read from its folder
    for table in (o for o in outs if _is_table(o)):
        for row in read_results_csv(table):
            if row["run_id"] not in seen:
                seen.add(row["run_id"])
                rows.append(row)
    return rows, bad, unfinished


def _is_table(source: Any) -> bool:
    return str(source).endswith(".csv")


def _csv_value(s: str) -> Any:
    """A ``results.csv`` cell back as the value ``collect`` wrote (``repr`` of a float, ``str`` of
    the rest): bool, int, float or str."""
    if s in ("True", "False"):
        return s == "True"
    for conv in (int, float):
        try:
            return conv(s)
        except ValueError:
            pass
    return s


def read_results_csv(path: Any) -> List[Dict[str, Any]]:
    """The rows of a ``results.csv`` written by :func:`collect` (one per finished run), typed back:
    an empty cell is a missing field. This lets :func:`report` merge the table of a sweep whose run
    folders are gone (or on another machine) with folders of new runs; sections that need a run's
    files (the defect histories) leave such rows out.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "results.csv"
    >>> _ = p.write_text("run_id,experiment,method,lambda_perp,seed,level\\na,so2-toy,plain,0.1,0,\\n")
    >>> read_results_csv(p)
    [{'run_id': 'a', 'experiment': 'so2-toy', 'method': 'plain', 'lambda_perp': 0.1, 'seed': 0}]
    """
    import csv

    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            fields = reader.fieldnames or []
            missing = [k for k in ("experiment", "run_id", "method") if k not in fields]
            if missing:
                raise ValueError(f"report: {path} is not a results table written by `equiproj sweep` (it has no "
                                 f"column {', '.join(missing)})")
            rows = []
            for line, rec in enumerate(reader, start=2):
                if None in rec or any(v is None for v in rec.values()):
                    raise ValueError(f"report: {path}, line {line}: expected {len(fields)} cells as in the header, "
                                     f"got a different number")
                rows.append({k: _csv_value(v) for k, v in rec.items() if v != ""})
    except FileNotFoundError:
        raise ValueError(f"report: {path} does not exist") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"report: {path} cannot be read ({type(exc).__name__}: {exc})") from None
    for r in rows:
        if not r.get("run_id") or not r.get("experiment"):
            raise ValueError(f"report: {path}: a row without run_id or experiment")
    return rows


def collect(out: str, sources: Optional[Sequence[Any]] = None) -> List[Dict[str, Any]]:
    """Rebuild ``<out>/results.csv`` (atomically) from the trusted runs of ``sources`` (default:
    ``out`` itself); returns the rows. Without rows, a stale ``results.csv`` is removed."""
    out_p = Path(out)
    rows, _, _ = scan(sources if sources is not None else out)
    path = out_p / "results.csv"
    if rows:
        keys: List[str] = []
        for r in rows:
            for k in r:
                if k not in ("config", "preset_values", "files") and not k.startswith("_") and k not in keys:
                    keys.append(k)
        lines = [",".join(_csv_cell(k) for k in keys)]
        for r in rows:
            lines.append(",".join(_csv_cell(r.get(k, "")) for k in keys))
        atomic_write_text(path, "\n".join(lines) + "\n")
    elif path.exists():
        path.unlink()
    return rows


def _csv_cell(v) -> str:
    s = "" if v is None else (repr(v) if isinstance(v, float) else str(v))
    if any(c in s for c in ',"\n\r'):
        return '"' + s.replace('"', '""') + '"'
    return s


def report(out: Any, into: Optional[str] = None, skip_bad: bool = False) -> str:
    """Write ``report.md`` (tables and figures of every experiment found) and return it.

    ``out`` is an output folder or a list of them (the shards of a sweep run on several
    machines), and may include ``results.csv`` tables of earlier sweeps (read with
    :func:`read_results_csv`; their run folders are not needed): their runs are merged (a run
    found in several sources once, from its folder where it has one) and the report,
    ``results.csv`` and figures go to ``into`` (default: the first folder; required when every
    source is a table). Run folders whose
    ``metrics.json`` cannot be trusted raise :class:`BadRunFolders` listing them all, unless
    ``skip_bad`` (then the report names them).
    """
    outs = [out] if isinstance(out, (str, os.PathLike)) else list(out)
    if not outs:
        raise ValueError("report: give at least one output folder")
    for o in outs:
        if _is_table(o):
            if not Path(o).is_file():
                raise ValueError(f"report: the results table {str(o)!r} does not exist")
        elif str(o).strip() == "" or not Path(o).is_dir():
            raise ValueError(f"report: {str(o)!r} is not a folder written by `equiproj run` or `equiproj sweep`, "
                             f"nor a results.csv")
    folders = [o for o in outs if not _is_table(o)]
    if into is None and not folders:
        raise ValueError("report: from results tables alone, say where the report goes: --into FOLDER")
    dest = Path(into) if into is not None else Path(folders[0])
    rows, bad, unfinished = scan(outs)
    if bad and not skip_bad:
        raise BadRunFolders(bad, "Fix: run the sweep again to recompute them, delete those folders, or pass "
                                 "--skip-bad to report without them.")
    if not rows:
        raise ValueError(f"no finished runs under {', '.join(str(Path(o) / 'runs') for o in outs)}: run "
                         f"`equiproj run` or `equiproj sweep` first")
    check_writable_folder(dest, "report destination")
    collect(str(dest), sources=outs)
    src = ", ".join(f"`{o}`" for o in outs)
    parts = [f"# equiproj report\n\nResults from {src} ({len(rows)} runs).\n"]
    if unfinished:
        parts.append(f"{len(unfinished)} run(s) not finished yet (not in the tables).\n")
    if bad:
        parts.append("Left out (unreadable): " + "; ".join(f"`{p}` ({why})" for p, why in bad) + ".\n")
    for name in sorted({r["experiment"] for r in rows}):
        exp = get_experiment(name)
        mine = [r for r in rows if r["experiment"] == name]
        parts.append(exp.report(mine, dest))
        hist = defect_history_section(mine, dest, name)
        if hist:
            parts.append(hist)
    text = "\n".join(parts)
    atomic_write_text(dest / "report.md", text)
    return text


def defect_history_section(rows: List[Dict[str, Any]], out: Path, experiment: str, max_lines: int = 8) -> str:
    """A figure of every layer's relative defect ``||W - P(W)|| / ||W||`` during training (the
    history ``fit`` records at every evaluation), one panel per layer, one line per configuration
    (mean over seeds, band from min to max); an empty string when no run has a history."""
    hists = []
    for r in rows:
        try:
            res = json.loads((run_folder(r, out) / RESULT_NAME).read_text(encoding="utf-8"))
            hist = res["history"].get("defects") or []
        except (OSError, ValueError, KeyError, AttributeError, TypeError):
            continue
        if hist:
            hists.append((r, hist))
    # a line per configuration but the seed; its label names what varies between the lines
    varying = [k for k in ("method", "scheme", "lambda_perp", "lambda_G", "norm", "route", "k", "level", "steps",
                           "perp_lr") if len({json.dumps(r.get(k)) for r, _ in hists if r.get(k) is not None}) > 1
               or (k == "method" and len({r.get(k) for r, _ in hists}) > 1)]
    opt_keys = sorted({k for r, _ in hists for k in r.get("config", {}).get("options", {})})
    varying += [f"opt:{k}" for k in opt_keys if len({json.dumps(r["config"]["options"].get(k)) for r, _ in hists}) > 1]
    series: Dict[str, Dict[str, List[tuple]]] = {}
    for r, hist in hists:
        parts = []
        for k in varying:
            v = r["config"]["options"].get(k[4:]) if k.startswith("opt:") else r.get(k)
            name = {"lambda_perp": "λ⊥", "lambda_G": "λG"}.get(k, k[4:] if k.startswith("opt:") else k)
            if v is None or (k in ("lambda_perp", "lambda_G") and not takes_weight(r.get("method"))):
                continue
            parts.append(str(v) if k in ("method", "scheme") else f"{name}={v:g}" if isinstance(v, float)
                         else f"{name}={v}")
        label = " ".join(parts) or r["method"]
        series.setdefault(label, {}).setdefault(str(r.get("seed")), []).extend(
            (h["step"], {k: v for k, v in h.items() if k != "step"}) for h in hist)
    if not series:
        return ""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels = sorted(series)[:max_lines]
    layer_names: List[str] = []
    for lb in labels:
        for pts in series[lb].values():
            for _, d in pts:
                for n in d:
                    if n not in layer_names:
                        layer_names.append(n)
    n_layers = len(layer_names)
    layer_names = layer_names[:6]
    ncol = min(3, len(layer_names))
    nrow = math.ceil(len(layer_names) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol + 2.6, 2.8 * nrow + 0.6), squeeze=False,
                             layout="constrained")
    colours = plt.get_cmap("tab10")
    n_seeds = set()
    for li, name in enumerate(layer_names):
        ax = axes.flat[li]
        for ci, lb in enumerate(labels):
            per_seed = [{st: d.get(name) for st, d in pts} for pts in series[lb].values()]
            steps = sorted({st for ps in per_seed for st in ps})
            vals = np.array([[ps.get(st, np.nan) if ps.get(st) is not None else np.nan for st in steps]
                             for ps in per_seed], dtype=float)
            if vals.size == 0 or np.all(np.isnan(vals)):
                continue
            n_seeds.add(len(per_seed))
            vals = np.where(vals > 0, vals, np.nan)  # log axis: exact zeros (strict) are not drawn
            with np.errstate(all="ignore"), __import__("warnings").catch_warnings():
                __import__("warnings").simplefilter("ignore", RuntimeWarning)
                mean, lo, hi = np.nanmean(vals, 0), np.nanmin(vals, 0), np.nanmax(vals, 0)
            ax.plot(steps, mean, color=colours(ci % 10), label=lb, linewidth=1.2, marker="o", markersize=2.5)
            if len(per_seed) > 1:
                ax.fill_between(steps, lo, hi, color=colours(ci % 10), alpha=0.2, linewidth=0)
        ax.set_yscale("log")
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        if li % ncol == 0:
            ax.set_ylabel("relative defect", fontsize=8)
    for ax in axes.flat[len(layer_names):]:
        ax.set_axis_off()
    handles, lbls = [], []
    for ax in axes.flat:
        h, lb_ = ax.get_legend_handles_labels()
        for hh, ll in zip(h, lb_):
            if ll not in lbls:
                handles.append(hh)
                lbls.append(ll)
    seeds = "/".join(str(n) for n in sorted(n_seeds))
    fig.legend(handles, lbls, loc="outside right center", fontsize=7,
               title=f"mean over {seeds} seed(s)\nband: min to max", title_fontsize=7)
    fig.suptitle(f"{experiment}: relative defect ‖W − P(W)‖ / ‖W‖ of every layer during training", fontsize=9)
    slug = experiment.replace("-", "_")
    path = save_figure(fig, figures_dir(out) / f"{slug}_defect_history.png")
    more = f" (the first {max_lines} of {len(series)} configurations)" if len(series) > max_lines else ""
    if n_layers > len(layer_names):
        more += f" (the first {len(layer_names)} of {n_layers} layers)"
    return (f"\n### Per-layer defect during training\n\nThe relative defect of every declared layer at every "
            f"evaluation{more}; exact zeros (strict models) are not drawn on the log axis.\n\n"
            f"![per-layer defect history]({path})\n")


# ---------------------------------------------------------------------------------- helpers for reports


def zero_tick(ax, x0: float, used: bool = True) -> None:
    """On a log x axis where ``lambda_perp = 0`` is drawn at ``x0`` (left of the smallest positive
    weight), label that position ``0`` instead of the power of ten it falls on."""
    if not used:
        return
    import matplotlib.ticker as mticker

    lo, hi = ax.get_xlim()
    decades = [10.0 ** k for k in range(math.ceil(math.log10(x0 * 1.0001)), math.floor(math.log10(hi)) + 1)]
    ticks = [x0] + [d for d in decades if d > x0 * 1.5]
    ax.set_xticks(ticks)
    ax.xaxis.set_major_formatter(mticker.FixedFormatter(["0"] + [f"$10^{{{round(math.log10(d))}}}$" for d in ticks[1:]]))
    ax.xaxis.set_minor_locator(mticker.NullLocator())
    ax.set_xlim(lo, hi)


def sample_std(values: Sequence[float]) -> float:
    """The sample standard deviation (``n - 1`` in the denominator; 0 for a single value): the
    spread over seeds that every table (:func:`mean_std`) and figure of the reports shows."""
    vals = [float(v) for v in values]
    if len(vals) < 2:
        return 0.0
    m = sum(vals) / len(vals)
    return math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


def mean_std(values: Sequence[float]) -> str:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return "–"
    m = sum(vals) / len(vals)
    if len(vals) == 1:
        return f"{m:.4g}"
    return f"{m:.4g} ± {sample_std(vals):.2g}"


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
    """Save a matplotlib figure atomically (no temporary file is left behind, even on failure);
    returns the path relative to its report folder."""
    import io

    import matplotlib.pyplot as plt

    from .._io import atomic_write_bytes

    path = Path(path)
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return f"figures/{path.name}"
