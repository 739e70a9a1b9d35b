"""The action of a group on convolution kernels (private module).

A kernel ``K`` of shape ``(c_out, c_in, *k)`` moves on its grid and on its channels:

    (g . K)(x) = rho_out(g) K(g^{-1} x) rho_in(g)^T.

Seen as the matrix ``(c_out, c_in * prod(k))`` (column ``c * prod(k) + x``), this is the action on
``Hom(V_in (x) R^grid, V_out)``: every input field type ``tau`` becomes ``tau (x) grid``. For
groups that map the grid onto itself the grid factor is an exact permutation representation
and the three routes apply unchanged. For other groups (SO(2), O(2), C_N and D_N with N not in
{1, 2, 4}, SO(3), O(3)) the input field type is a :class:`SteerableField` and the equivariant
subspace is the steerable basis (route ``'basis'``).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

from ..groups import Representation, TensorProduct
from ._grid import geometric_dim, grid_permutation, grid_permutations, grid_representation
from ._layout import FieldLayout
from ._linear import WeightAction
from ._steerable import SteerableConfig, SteerableField

__all__ = ["KernelAction", "kernel_action_for"]

_F64 = torch.float64


class KernelAction(WeightAction):
    """``g . K = rho_out(g) K(g^{-1} .) rho_in(g)^T`` on kernels ``(c_out, c_in, *kernel_size)``.

    Parameters
    ----------
    in_rep, out_rep : Representation
        Channel representations (``in_rep.dim`` input and ``out_rep.dim`` output channels).
    kernel_size : sequence of int
        Spatial size; its length (2 or 3) must equal the dimension of the group's defining
        representation.
    steerable : SteerableConfig, optional
        Rings, widths and band limits of the steerable basis (only used when the group does not
        act exactly on the grid); default :meth:`SteerableConfig.default`.
    band_limit : int, optional
        Shortcut: cap the harmonic degree of the default configuration.

    Examples
    --------
    >>> import torch
    >>> from equiproj.groups import cyclic
    >>> from equiproj.actions import KernelAction
    >>> from equiproj import Projector
    >>> G = cyclic(4)
    >>> A = KernelAction(G.regular(), G.regular(), (3, 3))
    >>> A.exact, A.weight_shape
    (True, (4, 4, 3, 3))
    >>> P = Projector(A)
    >>> K = P.project(torch.randn(4, 4, 3, 3, dtype=torch.float64))
    >>> bool(torch.allclose(A.act(G.elements(), K), K.expand(4, 4, 4, 3, 3)))
    True
    """

    def __init__(self, in_rep: Representation, out_rep: Representation, kernel_size: Sequence[int],
                 steerable: Optional[SteerableConfig] = None, band_limit: Optional[int] = None):
        if in_rep.group != out_rep.group:
            raise ValueError(f"in_rep is a representation of {in_rep.group.name} but out_rep of {out_rep.group.name}")
        self.group = G = in_rep.group
        self.in_rep, self.out_rep = in_rep, out_rep
        self.kernel_size = tuple(int(k) for k in kernel_size)
        d = geometric_dim(G)
        if d != len(self.kernel_size):
            raise ValueError(
                f"{G.name} acts on {d}-dimensional space, but the kernel {self.kernel_size} is "
                f"{len(self.kernel_size)}-dimensional"
            )
        self.K = math.prod(self.kernel_size)
        self.grid = grid_representation(G, self.kernel_size)
        self.exact = self.grid is not None
        if self.exact:
            self.config = None
            cache = {}

            def transform(tau):
                if tau.key not in cache:
                    cache[tau.key] = TensorProduct(tau, self.grid)
                return cache[tau.key]
        else:
            if len(set(self.kernel_size)) != 1:
                raise ValueError(
                    f"{G.name} does not act exactly on a {self.kernel_size} grid and steerable kernels need a "
                    "square or cubic kernel"
                )
            self.config = steerable or SteerableConfig.default(self.kernel_size[0], band_limit=band_limit)

            def transform(tau):
                return SteerableField(tau, self.kernel_size, self.config)
        self.out_layout = FieldLayout.of(out_rep)
        self.in_layout = FieldLayout.of(in_rep, transform, scale=self.K)

    @property
    def weight_shape(self):
        return (self.out_rep.dim, self.in_rep.dim) + self.kernel_size

    def to_matrix(self, W):
        return W.reshape(*W.shape[: W.ndim - 2 - len(self.kernel_size)], self.out_rep.dim, self.in_rep.dim * self.K)

    def from_matrix(self, M):
        return M.reshape(*M.shape[:-2], self.out_rep.dim, self.in_rep.dim, *self.kernel_size)

    def describe(self) -> str:
        mode = "exact grid action" if self.exact else f"steerable basis, band limit {self.config.band_limit}"
        return super().describe() + f", kernel {'x'.join(map(str, self.kernel_size))} ({mode})"

    def act(self, g, W):
        """``g . W`` for a batch of elements that map the grid onto itself."""
        G = self.group
        g = G.as_elements(g)
        table = grid_permutations(G, self.kernel_size, W.device) if G.is_finite else None
        if table is not None:  # cached per (group, size, device)
            src = table[g.to(W.device)]
        else:
            src = grid_permutation(G.standard()(g, dtype=_F64), self.kernel_size)
            if src is None:
                raise ValueError(
                    f"an element of {G.name} that does not map the {self.kernel_size} grid onto itself cannot move a "
                    "kernel exactly; use grid symmetries (e.g. quarter turns) or transform feature maps instead"
                )
            src = src.to(W.device)
        Ro = self.out_rep(g, dtype=W.dtype).to(W.device)
        Ri = self.in_rep(g, dtype=W.dtype).to(W.device)
        lead = W.shape[: W.ndim - 2 - len(self.kernel_size)]
        flat = W.reshape(*lead, self.out_rep.dim, self.in_rep.dim, self.K)
        moved = flat[..., src].movedim(-2, 0)  # one gather for all elements: (n, ..., c_out, c_in, K)
        moved = torch.einsum("nab,n...bcx,ndc->n...adx", Ro, moved, Ri)
        return moved.reshape(src.shape[0], *W.shape)


def kernel_action_for(module: nn.Module, in_rep: Representation, out_rep: Representation, name: str,
                      steerable: Optional[SteerableConfig] = None, band_limit: Optional[int] = None) -> KernelAction:
    """The kernel action of a ``Conv{1,2,3}d`` or ``ConvTranspose{1,2,3}d`` layer, dimensions checked
    (through the layer adapters, :func:`equiproj.actions.adapter_for`).

    A transposed convolution with weight ``(c_in, c_out, *k)`` is the adjoint of the
    convolution with the same weight from ``out_rep`` to ``in_rep``; it is equivariant exactly
    when that convolution is, so its weight is projected as a kernel from ``out_rep`` to
    ``in_rep``.
    """
    from ._adapters import ConvAdapter, adapter_for

    adapter = adapter_for(module, name)
    if not isinstance(adapter, ConvAdapter):
        raise TypeError(f"layer '{name}' of type {type(module).__name__} is not a convolution")
    return adapter.action(module, in_rep, out_rep, name, steerable=steerable, band_limit=band_limit)
