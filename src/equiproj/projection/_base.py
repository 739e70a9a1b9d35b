"""The per-field-pair projector protocol shared by the three routes (private module)."""

from __future__ import annotations

from typing import Optional

import torch

from .._utils import TensorCache
from ..groups import Representation

__all__ = ["PairProjector", "RouteNotApplicable", "ROUTES"]

#: The routes a projector can take; ``"auto"`` picks the cheapest that applies.
ROUTES = ("auto", "spatial", "spectral", "basis")


class RouteNotApplicable(ValueError):
    """Raised when a route cannot compute the projection for a group or representation."""


class PairProjector:
    """Projection onto ``Hom_G(tau_in, tau_out)`` for one pair of field types.

    ``project`` takes blocks of shape ``(..., n_out, d_out, n_in, d_in)``, i.e. ``n_out x n_in``
    copies of a ``d_out x d_in`` matrix, and projects every copy. ``dim`` is the dimension of
    ``Hom_G(tau_in, tau_out)``. Matrices are kept once in float64 and converted per device and
    dtype on first use.
    """

    route = "?"

    def __init__(self, t_out: Representation, t_in: Representation):
        self.t_out, self.t_in = t_out, t_in
        self.d_out, self.d_in = t_out.dim, t_in.dim
        self._cache = TensorCache()

    dim: int = 0

    def project(self, X: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @classmethod
    def cost(cls, t_out: Representation, t_in: Representation) -> Optional[float]:
        """Rough cost per weight entry (calibrated on CPU, see ``docs/benchmarks.md``), or
        ``None`` if the route does not apply."""
        raise NotImplementedError

    def state_bytes(self) -> int:
        """Bytes of the float64 master tensors this pair keeps (its cached state)."""
        total = 0
        for v in vars(self).values():
            if isinstance(v, torch.Tensor):
                total += v.numel() * v.element_size()
            elif isinstance(v, (list, tuple)):
                for item in v:
                    for t in (item if isinstance(item, tuple) else (item,)):
                        if isinstance(t, torch.Tensor):
                            total += t.numel() * t.element_size()
        return total

    def _t(self, name: str, master, X: torch.Tensor) -> torch.Tensor:
        return self._cache.get(name, master, X.device, X.dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.t_out.name} <- {self.t_in.name}, dim={self.dim})"


def to_pairs_last(X: torch.Tensor) -> torch.Tensor:
    """``(..., n_o, d_o, n_i, d_i)`` -> ``(..., n_o, n_i, d_o * d_i)``."""
    Y = X.movedim(-3, -2)
    return Y.reshape(*Y.shape[:-2], Y.shape[-2] * Y.shape[-1])


def from_pairs_last(Y: torch.Tensor, d_o: int, d_i: int) -> torch.Tensor:
    """Inverse of :func:`to_pairs_last`."""
    Y = Y.reshape(*Y.shape[:-1], d_o, d_i)
    return Y.movedim(-2, -3)
