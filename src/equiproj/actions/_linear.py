"""The action of a group on the weights of a linear layer (private module)."""

from __future__ import annotations

from typing import Tuple

import torch

from ..groups import Representation
from ._layout import FieldLayout

__all__ = ["WeightAction", "HomAction"]


class WeightAction:
    """How a group acts on a weight tensor, seen as a matrix ``Hom(V_in', V_out)``.

    Subclasses say how a weight of shape ``(..., *weight_shape)`` becomes a matrix
    ``(..., dim_out, dim_in')`` whose rows carry ``out_rep`` and whose columns carry the field
    types of ``in_layout``. The projectors only see that matrix and the two layouts.
    """

    group = None
    out_rep: Representation
    in_rep: Representation
    out_layout: FieldLayout
    in_layout: FieldLayout

    @property
    def weight_shape(self) -> Tuple[int, ...]:
        raise NotImplementedError

    @property
    def bias_rep(self) -> Representation:
        """The representation a bias of this layer carries (the layer's output channels)."""
        return getattr(self, "_bias_rep", None) or self.out_rep

    @property
    def bias_on_rows(self) -> bool:
        """Whether the bias lives on the rows of the weight matrix (``True`` for linear layers and
        convolutions; ``False`` for transposed convolutions, whose matrix is that of the adjoint
        convolution, so that the bias lives on the side of its columns)."""
        return getattr(self, "_bias_on_rows", True)

    @property
    def matrix_shape(self) -> Tuple[int, int]:
        return (self.out_layout.dim, self.in_layout.dim)

    def to_matrix(self, W: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def from_matrix(self, M: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def act(self, g, W: torch.Tensor) -> torch.Tensor:
        """``g . W`` for a batch of elements: shape ``(n, ..., *weight_shape)``."""
        raise NotImplementedError

    def check_shape(self, W: torch.Tensor, what: str = "weight") -> None:
        ws = tuple(self.weight_shape)
        if tuple(W.shape[W.ndim - len(ws):]) != ws or W.ndim < len(ws):
            raise ValueError(
                f"{what} of shape {tuple(W.shape)} does not match the declared representations: "
                f"expected (..., {', '.join(map(str, ws))}) for {self.describe()}"
            )

    def describe(self) -> str:
        return (f"out_rep {self.out_rep.name} (dim {self.out_rep.dim}) and in_rep {self.in_rep.name} "
                f"(dim {self.in_rep.dim}) of {self.out_rep.group.name}")


class HomAction(WeightAction):
    """``g . W = rho_out(g) W rho_in(g)^T`` on matrices ``W`` of shape ``(dim_out, dim_in)``.

    Examples
    --------
    >>> import torch
    >>> from equiproj.groups import cyclic
    >>> from equiproj.actions import HomAction
    >>> G = cyclic(4)
    >>> A = HomAction(G.regular(), G.regular())
    >>> W = torch.randn(4, 4, dtype=torch.float64)
    >>> gW = A.act(G.elements(), W)
    >>> gW.shape
    torch.Size([4, 4, 4])
    >>> bool(torch.allclose(gW[0], W))
    True
    """

    def __init__(self, in_rep: Representation, out_rep: Representation):
        if not isinstance(in_rep, Representation) or not isinstance(out_rep, Representation):
            raise TypeError("in_rep and out_rep must be equiproj.groups.Representation objects")
        if in_rep.group != out_rep.group:
            raise ValueError(
                f"in_rep is a representation of {in_rep.group.name} but out_rep of {out_rep.group.name}"
            )
        self.group = in_rep.group
        self.in_rep, self.out_rep = in_rep, out_rep
        self.out_layout = FieldLayout.of(out_rep)
        self.in_layout = FieldLayout.of(in_rep)

    @property
    def weight_shape(self):
        return (self.out_rep.dim, self.in_rep.dim)

    def to_matrix(self, W):
        return W

    def from_matrix(self, M):
        return M

    def act(self, g, W):
        Ro = self.out_rep(g, dtype=W.dtype).to(W.device)
        Ri = self.in_rep(g, dtype=W.dtype).to(W.device)
        n = Ro.shape[0]
        Wb = W.reshape((1,) * 1 + W.shape)
        extra = W.ndim - 2
        Ro = Ro.reshape((n,) + (1,) * extra + Ro.shape[1:])
        Ri = Ri.reshape((n,) + (1,) * extra + Ri.shape[1:])
        return Ro @ Wb @ Ri.transpose(-1, -2)
