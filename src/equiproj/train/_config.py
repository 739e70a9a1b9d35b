"""The training configuration: :class:`TrainConfig`, its validation and its hash."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence, Union

import numpy as np

from ._distributed import _parse_device

__all__ = ["TrainConfig"]

_OPTIMIZERS = ("adam", "adamw", "sgd")
_SCHEDULES = ("constant", "cosine", "step")
#: Fields that matter only for one schedule: hashed only under it, so that adding them left the
#: hashes of every other configuration (and so their finished and resumable runs) unchanged.
_SCHEDULE_FIELDS = {"step": ("lr_step_size", "lr_gamma")}
_AMP_DTYPES = ("bf16", "fp16")
#: Fields that do not change the trained weights nor the history, left out of the config hash so
#: that they may differ between an interrupted run and its continuation.
_UNHASHED_FIELDS = ("checkpoint_every", "num_workers")


def _bad(name: str, expected: str, value: Any) -> ValueError:
    return ValueError(f"TrainConfig.{name}: expected {expected}, got {value!r}")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise _bad(name, f"an integer >= {minimum}", value)


def _check_float(name: str, value: Any, positive: bool) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating)) \
        and math.isfinite(float(value)) and (float(value) > 0 if positive else float(value) >= 0)
    if not ok:
        raise _bad(name, "a finite number > 0" if positive else "a finite number >= 0", value)


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise _bad(name, "one of " + ", ".join(repr(c) for c in choices), value)


@dataclass
class TrainConfig:
    """Everything that determines a training run, apart from the model, the data and the loss.

    Parameters
    ----------
    steps : int
        Total number of optimisation steps (epochs follow from the data size).
    batch_size : int
        Samples per step *per process* (the global batch is ``batch_size * world_size``).
    lr : float
        Peak learning rate.
    optimizer : {"adam", "adamw", "sgd"}
    weight_decay : float
        Passed to the optimiser (decoupled for ``"adamw"``).
    momentum : float
        Momentum of ``"sgd"`` (ignored otherwise).
    schedule : {"constant", "cosine", "step"}
        Learning rate after warm-up: constant, cosine decay to zero at ``steps``, or ``"step"``:
        multiplied by ``lr_gamma`` every ``lr_step_size`` steps (``torch.optim.lr_scheduler.StepLR``
        counted in steps; one epoch's steps reproduce a per-epoch StepLR).
    lr_step_size : int
        Steps between two decays of the ``"step"`` schedule (required, >= 1, with it).
    lr_gamma : float
        Factor of each decay of the ``"step"`` schedule, in (0, 1].
    warmup_steps : int
        Linear warm-up from ``lr / warmup_steps`` to ``lr`` over the first steps.
    eval_every : int
        Call ``eval_fn`` every so many steps (``0``: only at the end; it always runs at the end).
    checkpoint_every : int
        Write ``checkpoint.pt`` every so many steps (``0``: never).
    log_every : int
        Record the mean task loss, penalty and total over the last steps every so many steps
        (and at the last step).
    seed : int
        Seeds the data order and the random generators during training (rank ``r`` uses
        ``seed + r`` for the global generators, the data order is shared).
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:<index>"`` (see :func:`select_device`).
    amp : bool
        Mixed precision (autocast) for the task loss; only active on CUDA.
    amp_dtype : {"bf16", "fp16"}
        Autocast dtype; ``"fp16"`` adds a gradient scaler.
    grad_clip : float, optional
        Clip the global gradient norm to this value. Whatever the setting, :func:`fit` stops with
        a ``FloatingPointError`` at the first logged loss that is not finite.
    num_workers : int
        ``DataLoader`` worker processes.
    shuffle : bool
        Reshuffle the data every epoch (deterministically from ``seed`` and the epoch).
    drop_last : bool
        Drop the last incomplete batch of every epoch.
    select : str, optional
        Model selection: the name of a metric returned by ``eval_fn``; the weights of the
        evaluation where it was lowest are kept (``"-name"``: highest, e.g. ``"-val_accuracy"``),
        written to ``best_model.pt`` and described by ``result["selected"]``. Needs ``eval_fn``;
        ``eval_every`` sets how often it is looked at.
    patience : int, optional
        Early stopping: stop when ``select`` has not improved for this many evaluations in a row
        (``result["stopped_early"]``). Needs ``select``.
    meta : dict
        Free JSON-serialisable description of everything else that determines the run (model,
        regulariser weights, data set). It is part of the configuration hash, so a change of
        ``lambda_perp`` written here is never mistaken for a finished or resumable run.

    All fields except ``checkpoint_every`` and ``num_workers`` enter :attr:`hash`; ``lr_step_size``
    and ``lr_gamma`` only with ``schedule="step"``.

    Examples
    --------
    >>> from equiproj.train import TrainConfig
    >>> TrainConfig(steps=100, optimizer="adamw", meta={"lambda_perp": 0.1}).hash == \\
    ...     TrainConfig(steps=100, optimizer="adamw", meta={"lambda_perp": 0.1}, checkpoint_every=7).hash
    True
    >>> TrainConfig(optimizer="lbfgs")
    Traceback (most recent call last):
    ...
    ValueError: TrainConfig.optimizer: expected one of 'adam', 'adamw', 'sgd', got 'lbfgs'
    """

    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: str = "constant"
    warmup_steps: int = 0
    lr_step_size: int = 0
    lr_gamma: float = 0.95
    eval_every: int = 0
    checkpoint_every: int = 100
    log_every: int = 10
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    amp_dtype: str = "bf16"
    grad_clip: Optional[float] = None
    num_workers: int = 0
    shuffle: bool = True
    drop_last: bool = False
    select: Optional[str] = None
    patience: Optional[int] = None
    meta: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        _check_int("steps", self.steps, 1)
        _check_int("batch_size", self.batch_size, 1)
        _check_float("lr", self.lr, positive=True)
        _check_choice("optimizer", self.optimizer, _OPTIMIZERS)
        _check_float("weight_decay", self.weight_decay, positive=False)
        _check_float("momentum", self.momentum, positive=False)
        _check_choice("schedule", self.schedule, _SCHEDULES)
        _check_int("warmup_steps", self.warmup_steps, 0)
        if self.warmup_steps >= self.steps and self.warmup_steps > 0:
            raise _bad("warmup_steps", f"fewer than steps={self.steps}", self.warmup_steps)
        _check_int("lr_step_size", self.lr_step_size, 0)
        _check_float("lr_gamma", self.lr_gamma, positive=True)
        if self.lr_gamma > 1:
            raise _bad("lr_gamma", "a factor in (0, 1]", self.lr_gamma)
        if self.schedule == "step" and self.lr_step_size < 1:
            raise _bad("lr_step_size", "the steps between two decays (>= 1) with schedule='step'", self.lr_step_size)
        for name in ("eval_every", "checkpoint_every", "num_workers"):
            _check_int(name, getattr(self, name), 0)
        _check_int("log_every", self.log_every, 1)
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise _bad("seed", "a non-negative integer", self.seed)
        if not isinstance(self.device, str):
            raise _bad("device", "'auto', 'cpu', 'cuda' or 'cuda:<index>'", self.device)
        try:
            _parse_device(self.device)
        except ValueError:
            raise _bad("device", "'auto', 'cpu', 'cuda' or 'cuda:<index>'", self.device) from None
        for name in ("amp", "shuffle", "drop_last"):
            if not isinstance(getattr(self, name), bool):
                raise _bad(name, "True or False", getattr(self, name))
        _check_choice("amp_dtype", self.amp_dtype, _AMP_DTYPES)
        if self.grad_clip is not None:
            _check_float("grad_clip", self.grad_clip, positive=True)
        if self.select is not None:
            if not isinstance(self.select, str) or not self.select.lstrip("-").strip():
                raise _bad("select", "the name of an eval_fn metric, optionally with a leading '-' (maximise)",
                           self.select)
        if self.patience is not None:
            _check_int("patience", self.patience, 1)
            if self.select is None:
                raise _bad("patience", "None unless select names the metric to watch", self.patience)
        if not isinstance(self.meta, dict):
            raise _bad("meta", "a dict", self.meta)
        try:
            json.dumps(self.meta, allow_nan=True)
        except (TypeError, ValueError) as exc:
            raise _bad("meta", f"a JSON-serialisable dict ({exc})", self.meta) from None
        # normalise numpy scalars to Python numbers (JSON, hashing)
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, np.integer):
                setattr(self, f.name, int(v))
            elif isinstance(v, np.floating):
                setattr(self, f.name, float(v))

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-serialisable copy."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "TrainConfig":
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"TrainConfig: unknown field(s) {unknown}; known fields are {sorted(names)}")
        return cls(**data)

    def hashed_dict(self) -> Dict[str, Any]:
        """The fields that enter :attr:`hash`."""
        d = self.to_dict()
        for k in _UNHASHED_FIELDS:
            d.pop(k, None)
        for schedule, names in _SCHEDULE_FIELDS.items():
            if self.schedule != schedule:
                for k in names:
                    d.pop(k, None)
        return d

    @property
    def hash(self) -> str:
        """A stable short hash of the configuration (see :meth:`hashed_dict`)."""
        text = json.dumps(self.hashed_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _as_config(config: Union[TrainConfig, Dict[str, Any]]) -> TrainConfig:
    if isinstance(config, TrainConfig):
        return config
    if isinstance(config, dict):
        return TrainConfig.from_dict(config)
    raise TypeError(f"config must be a TrainConfig or a dict, got {type(config).__name__}")


def _config_diff(old: Dict[str, Any], new: Dict[str, Any]) -> str:
    keys = sorted(set(old) | set(new))
    parts = [f"{k}: {old.get(k, '<missing>')!r} -> {new.get(k, '<missing>')!r}"
             for k in keys if old.get(k, "<missing>") != new.get(k, "<missing>")]
    return "; ".join(parts) if parts else "no field differs (another version of the format)"
