"""Field layouts: where the copies of each field type sit in a representation (private)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import torch

from ..groups import Representation

__all__ = ["FieldLayout"]


@dataclass
class FieldLayout:
    """The fields of a representation grouped by type.

    ``types[t]`` is a field type (a representation of dimension ``dims[t]``) that occurs
    ``counts[t]`` times. ``perm`` reorders coordinates so that the copies of each type are
    contiguous, types in order (``None`` if they already are); after it, type ``t`` occupies
    ``slices[t]`` and its block reshapes to ``(counts[t], dims[t])``.
    """

    types: Tuple[Representation, ...]
    counts: Tuple[int, ...]
    dims: Tuple[int, ...]
    perm: Optional[torch.Tensor]
    inverse: Optional[torch.Tensor]
    slices: Tuple[slice, ...]
    dim: int

    @classmethod
    def of(cls, rep: Representation, transform: Optional[Callable[[Representation], Representation]] = None,
           scale: int = 1) -> "FieldLayout":
        """Layout of ``rep``; ``transform`` maps each field type to the type actually used
        (e.g. ``tau -> tau (x) grid`` for kernels), whose coordinates are ``scale`` times as many."""
        order: List[Representation] = []
        positions: dict = {}
        for f, index in rep.field_blocks():
            if f.key not in positions:
                positions[f.key] = []
                order.append(f)
            positions[f.key].append(index)
        idx: List[torch.Tensor] = []
        ar = torch.arange(scale)
        for f in order:
            for index in positions[f.key]:
                idx.append((index[:, None] * scale + ar[None, :]).reshape(-1))
        perm = torch.cat(idx).to(torch.long)
        identity = bool((perm == torch.arange(len(perm))).all())
        types = tuple(transform(f) if transform else f for f in order)
        counts = tuple(len(positions[f.key]) for f in order)
        dims = tuple(t.dim for t in types)
        slices, s = [], 0
        for n, d in zip(counts, dims):
            slices.append(slice(s, s + n * d))
            s += n * d
        return cls(types, counts, dims, None if identity else perm,
                   None if identity else torch.argsort(perm), tuple(slices), s)
