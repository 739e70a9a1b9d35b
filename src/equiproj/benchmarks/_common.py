"""Timing and memory helpers for the benchmarks (private)."""

from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, Optional

import torch

from .._io import atomic_write_json, atomic_write_text
from ..train import device_description

__all__ = ["device_description", "measure", "write_json_atomic", "write_text_atomic", "saved_tensor_bytes",
           "save_benchmark", "format_bytes"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], object], device: torch.device, repeats: int = 5, warmup: int = 2,
            min_time: float = 0.05) -> float:
    """Median wall time of ``fn()`` in seconds (each sample runs ``fn`` enough times to last
    ``min_time``)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    once = max(time.perf_counter() - t0, 1e-7)
    inner = max(1, int(min_time / once))
    samples = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        _sync(device)
        samples.append((time.perf_counter() - t0) / inner)
    return statistics.median(samples)


def saved_tensor_bytes(fn: Callable[[], torch.Tensor]) -> int:
    """Bytes of the tensors autograd saves for the backward pass of ``fn()``."""
    total = 0
    seen = set()

    def pack(t):
        nonlocal total
        key = (t.data_ptr(), t.numel(), t.dtype)
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def write_json_atomic(path: str, data: Dict) -> None:
    """Write JSON through a temporary file and an atomic rename (see :func:`equiproj._io.atomic_write_json`)."""
    atomic_write_json(path, data, indent=2)


def write_text_atomic(path: str, text: str) -> None:
    """Write text through a temporary file and an atomic rename (see :func:`equiproj._io.atomic_write_text`)."""
    atomic_write_text(path, text)


def save_benchmark(result: Dict, json_path: str, markdown_path: str, to_markdown: Callable[[Dict, str], str],
                   script: str, argv) -> Dict:
    """Write a benchmark's JSON and Markdown table (with the command that made them)."""
    import sys

    args = argv if argv is not None else sys.argv[1:]
    write_json_atomic(json_path, result)
    write_text_atomic(markdown_path, to_markdown(result, f"python {script} {' '.join(args)}".strip()))
    print(f"wrote {json_path} and {markdown_path}")
    return result


def format_bytes(x: Optional[float]) -> str:
    """``1234567 -> '1.23 MB'`` (decimal units); ``None`` -> ``'–'``."""
    if x is None:
        return "–"
    x = float(x)
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(x) < 1000:
            return f"{x:.3g} {unit}"
        x /= 1000
    return f"{x:.3g} EB"
