"""A seeded, hashed on-disk cache for generated datasets (private module).

Every generator describes its output completely by a JSON-serialisable configuration (the seed
included). The arrays are stored as ``<cache>/<kind>/<hash>.npz`` next to ``<hash>.json`` (the
configuration), written through a temporary file and an atomic rename, so an interrupted
generation never leaves a corrupt file behind. The cache directory is ``$EQUIPROJ_CACHE`` or
``~/.cache/equiproj``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np

from .._io import atomic_write_bytes, atomic_write_json

__all__ = ["cache_dir", "config_hash", "cached_arrays"]


def cache_dir(override: Optional[str] = None) -> Path:
    """The cache root: ``override``, else ``$EQUIPROJ_CACHE``, else ``~/.cache/equiproj``."""
    root = override or os.environ.get("EQUIPROJ_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "equiproj")
    return Path(root)


def config_hash(config: Dict) -> str:
    """Stable short hash of a JSON-serialisable configuration."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def cached_arrays(kind: str, config: Dict, build: Callable[[], Dict[str, np.ndarray]],
                  cache: Optional[str] = None, use_cache: bool = True) -> Dict[str, np.ndarray]:
    """Return ``build()``'s arrays, from the cache when the same ``config`` was built before.

    Parameters
    ----------
    kind : str
        Sub-folder (dataset family), e.g. ``"ct"``.
    config : dict
        Everything that determines the data, the seed included.
    build : callable
        Generates the arrays (a dict of numpy arrays) on a cache miss.
    cache : str, optional
        Cache root (see :func:`cache_dir`).
    use_cache : bool
        ``False`` always rebuilds and writes nothing.
    """
    if not use_cache:
        return build()
    key = config_hash({"kind": kind, **config})
    folder = cache_dir(cache) / kind
    path = folder / f"{key}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    arrays = build()
    atomic_write_bytes(path, lambda f: np.savez(f, **arrays))
    atomic_write_json(folder / f"{key}.json", {"kind": kind, **config}, indent=2, sort_keys=True, default=str)
    return arrays
