"""Run state: seeds and random states, the state callbacks see, and which checkpoint a run may
trust."""

from __future__ import annotations

import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ._config import _UNHASHED_FIELDS, TrainConfig, _config_diff
from ._results import _CHECKPOINT_FORMAT, BEST_MODEL_NAME, CHECKPOINT_NAME, MODEL_NAME, RESULT_NAME, load_result

__all__ = ["seed_everything", "StopTraining", "TrainState", "RunFolderError"]

def seed_everything(seed: int) -> int:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and every CUDA device).

    Returns the seed.

    Examples
    --------
    >>> from equiproj.train import seed_everything
    >>> _ = seed_everything(3); a = torch.rand(2)
    >>> _ = seed_everything(3); bool(torch.equal(a, torch.rand(2)))
    True
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed_everything: seed must be an int, got {seed!r}")
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds every CUDA device as well
    return seed


class RunFolderError(ValueError):
    """A run folder cannot be used: it holds another configuration's run, or a file that cannot be
    trusted (unreadable, missing, non-finite weights) with no checkpoint to continue from. The
    message names the file and the fix."""


def _rng_state() -> Dict[str, Any]:
    """The states of every global generator, as plain lists and tensors (``weights_only`` loadable)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            warnings.warn(f"the checkpoint holds CUDA random states of {len(cuda)} device(s), this machine has "
                          f"{torch.cuda.device_count()}: CUDA random numbers will differ from an uninterrupted run")


class StopTraining(Exception):
    """Raise from a callback to stop :func:`fit` as if the process had been interrupted.

    :func:`fit` returns ``{"status": "interrupted", ...}`` without writing ``result.json``; the
    last checkpoint stays valid and a later call with the same folder resumes from it.
    """


@dataclass
class TrainState:
    """What callbacks see after every step (``callback(step, state)``).

    ``model`` is the un-wrapped model (not the DDP wrapper); ``last_log`` the latest logged
    training metrics, ``last_eval`` the latest evaluation; ``checkpoint_step`` the step of the last
    checkpoint written (or resumed from), ``None`` if there is none.
    """

    step: int
    epoch: int
    batch_in_epoch: int
    config: TrainConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    history: Dict[str, List[Dict[str, Any]]]
    last_log: Dict[str, Any] = field(default_factory=dict)
    last_eval: Dict[str, Any] = field(default_factory=dict)
    checkpoint_step: Optional[int] = None
    out_dir: Optional[Path] = None
    rank: int = 0
    world_size: int = 1


def _load_weights(path: Path) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
    """``(state_dict, None)`` of a weights file, or ``(None, why it cannot be used)``."""
    if not path.exists():
        return None, "is missing"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, garbage, another format
        return None, f"cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        return None, f"is not a state_dict (found {type(state).__name__})"
    bad = [k for k, v in state.items() if v.is_floating_point() or v.is_complex()
           if not bool(torch.isfinite(v).all())]
    if bad:
        return None, f"holds non-finite weights ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})"
    return state, None


def _read_checkpoint(ckpt_path: Path, config: TrainConfig, out: Path, advice: str) -> Dict[str, Any]:
    h = config.hash
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as exc:
        return {"kind": "error", "message": f"cannot read the checkpoint {str(ckpt_path)!r} ({type(exc).__name__}: "
                                            f"{exc}). {advice}"}
    if not isinstance(ckpt, dict) or ckpt.get("format") != _CHECKPOINT_FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        return {"kind": "error", "message": f"{str(ckpt_path)!r} is not a checkpoint of this version of "
                                            f"equiproj.train (format {found!r}, expected "
                                            f"{_CHECKPOINT_FORMAT}). {advice}"}
    if ckpt.get("config_hash") != h:
        diff = _config_diff(ckpt.get("hashed_config", {}), config.hashed_dict())
        return {"kind": "error", "message": f"out_dir {str(out)!r} holds a checkpoint of a different "
                                            f"configuration (hash {ckpt.get('config_hash')} != {h}; {diff}). "
                                            f"{advice}"}
    model_state = ckpt.get("model")
    if isinstance(model_state, dict):
        bad = [k for k, v in model_state.items() if isinstance(v, torch.Tensor) and v.is_floating_point()
               and not bool(torch.isfinite(v).all())]
        if bad:
            return {"kind": "error", "message": f"the checkpoint {str(ckpt_path)!r} holds non-finite weights "
                                                f"({', '.join(bad[:3])}). {advice}"}
    return {"kind": "resume", "checkpoint": ckpt}


def _check_start(out: Optional[Path], config: TrainConfig) -> Dict[str, Any]:
    """What to do with ``out_dir``: ``fresh``, ``resume`` (with the checkpoint), ``finished`` (with
    the result and final weights) or ``error`` (with a message). Runs on rank 0.

    A finished run is trusted only when ``result.json`` is a readable result of this configuration
    and its weights (``model.pt``, and ``best_model.pt`` with model selection) load and are
    finite; otherwise the run continues from its checkpoint when there is a good one, and is
    refused with a message naming the file when there is none. The final metrics are therefore
    never computed from an untrained or partially loaded model.
    """
    if out is None:
        return {"kind": "fresh"}
    h = config.hash
    advice = (f"Use another out_dir for this configuration, or delete the folder {str(out)!r} to start "
              f"again from scratch.")
    result_path, ckpt_path, model_path = out / RESULT_NAME, out / CHECKPOINT_NAME, out / MODEL_NAME
    problem = None
    if result_path.exists():
        try:
            result = load_result(out)
            if not isinstance(result, dict):
                raise ValueError(f"expected a JSON object, found {type(result).__name__}")
        except (OSError, ValueError) as exc:
            result, problem = None, f"{str(result_path)!r} cannot be read ({exc})"
        if result is not None:
            if result.get("config_hash") != h:
                cfg_old = result.get("config", {})
                old = {k: v for k, v in (cfg_old if isinstance(cfg_old, dict) else {}).items()
                       if k not in _UNHASHED_FIELDS}
                diff = _config_diff(old, config.hashed_dict())
                return {"kind": "error", "message": f"out_dir {str(out)!r} holds the finished result of a different "
                                                    f"configuration (hash {result.get('config_hash')} != {h}; "
                                                    f"{diff}). {advice}"}
            state, why = _load_weights(model_path)
            if why is not None:
                problem = f"the final weights {str(model_path)!r} {why}"
            elif result.get("selected") and result["selected"].get("step") is not None:
                _, why = _load_weights(out / BEST_MODEL_NAME)
                if why is not None:
                    problem = f"the selected weights {str(out / BEST_MODEL_NAME)!r} {why}"
            if problem is None:
                return {"kind": "finished", "result": result, "model": state}
    if ckpt_path.exists():
        start = _read_checkpoint(ckpt_path, config, out, advice)
        if start["kind"] == "error" and problem is not None:
            start["message"] = f"{problem}, and {start['message'][0].lower()}{start['message'][1:]}"
        if start["kind"] == "resume" and problem is not None:
            start["repair"] = f"{problem}: continuing from the checkpoint at step {start['checkpoint'].get('step')}"
        return start
    if problem is not None:
        return {"kind": "error", "message": f"{problem} and there is no checkpoint to continue from: the run "
                                            f"cannot be trusted. Delete the folder {str(out)!r} to train it again."}
    return {"kind": "fresh"}
