"""Devices and processes: device selection, the torchrun process group, collectives."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple, Union

import torch

__all__ = ["select_device", "is_main_process", "device_description", "DeviceUnavailableError"]

def _parse_device(spec: str) -> Tuple[str, Optional[int]]:
    """``(kind, index)`` of a device string, or ``ValueError``."""
    s = str(spec).strip().lower()
    if s in ("auto", "cpu", "cuda"):
        return s, None
    if s.startswith("cuda:"):
        idx = s[5:]
        if idx.isdigit():
            return "cuda", int(idx)
    raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:<index>', got {spec!r}")


def select_device(spec: Union[str, torch.device] = "auto", local_rank: Optional[int] = None) -> torch.device:
    """The ``torch.device`` for a device string.

    Parameters
    ----------
    spec : str or torch.device
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:<index>"``.
    local_rank : int, optional
        Under data-parallel training, ``"auto"`` and ``"cuda"`` pick ``cuda:<local_rank>``.

    Raises
    ------
    RuntimeError
        CUDA was asked for and is not available (or the index does not exist).

    Examples
    --------
    >>> from equiproj.train import select_device
    >>> select_device("cpu")
    device(type='cpu')
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    kind, index = _parse_device(spec)
    if kind == "cpu":
        return torch.device("cpu")
    available = torch.cuda.is_available()
    if kind == "auto":
        if not available:
            return torch.device("cpu")
        kind = "cuda"
    if not available:
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA support (CPU build)"
        raise DeviceUnavailableError(
            f"device {spec!r} was requested but CUDA is not available on this machine "
            f"(torch {torch.__version__} with {build}); use device='cpu' or device='auto'"
        )
    if index is None:
        index = local_rank if local_rank is not None else torch.cuda.current_device()
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceUnavailableError(f"device {spec!r}: CUDA device index {index} does not exist "
                           f"(this machine has {count} CUDA device(s))")
    return torch.device("cuda", index)


class DeviceUnavailableError(RuntimeError):
    """The requested device does not exist on this machine (CUDA absent, or no such index)."""


def device_description(device: torch.device) -> str:
    """Human-readable description of a device, recorded with every result and benchmark.

    >>> device_description(torch.device("cpu")).startswith("CPU")
    True
    """
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}, torch {torch.__version__})"
    proc = platform.processor() or platform.machine()
    return f"CPU {proc}, {torch.get_num_threads()} threads (torch {torch.__version__})"


def _dist_ready() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def is_main_process() -> bool:
    """``True`` on rank 0 of a distributed run (and in a plain single process).

    Uses the initialised process group, else the ``RANK`` variable that ``torchrun`` sets.
    """
    if _dist_ready():
        return torch.distributed.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def _launched_by_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


@dataclass
class _Dist:
    enabled: bool = False
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False


def _dist_setup(device_spec: str) -> Tuple[_Dist, torch.device]:
    """Join (or start, under torchrun) the process group and choose this process's device."""
    if _dist_ready():
        dist = torch.distributed
        local = int(os.environ.get("LOCAL_RANK", dist.get_rank() % max(torch.cuda.device_count(), 1)))
        info = _Dist(True, dist.get_rank(), dist.get_world_size(), local, owns_group=False)
        return info, select_device(device_spec, local_rank=local)
    if not _launched_by_torchrun():
        return _Dist(), select_device(device_spec)
    if not torch.distributed.is_available():
        raise RuntimeError("the process was launched for distributed training (RANK/WORLD_SIZE/LOCAL_RANK "
                           "are set) but this torch build has no torch.distributed")
    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    device = select_device(device_spec, local_rank=local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    torch.distributed.init_process_group(backend=backend, rank=rank, world_size=world)
    return _Dist(True, rank, world, local, owns_group=True), device


def _broadcast_object(obj: Any, info: _Dist, device: torch.device) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj if info.rank == 0 else None]
    torch.distributed.broadcast_object_list(box, src=0, device=device if device.type == "cuda" else None)
    return box[0]


def _all_gather_object(obj: Any, info: _Dist) -> List[Any]:
    if not info.enabled:
        return [obj]
    out: List[Any] = [None] * info.world_size
    torch.distributed.all_gather_object(out, obj)
    return out


def _mean_across_ranks(values: torch.Tensor, info: _Dist) -> torch.Tensor:
    if info.enabled:
        values = values.clone()
        torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.SUM)
        values /= info.world_size
    return values
