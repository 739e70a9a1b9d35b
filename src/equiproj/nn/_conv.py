"""Convolutions that carry representations (private module)."""

from __future__ import annotations

from typing import Optional

from torch import nn

from ..actions import SteerableConfig
from ..groups import Representation
from ..regularise import SPEC_ATTR, constrain_, declare

__all__ = ["RepConv2d", "RepConv3d"]


class _RepConvMixin:
    """Shared constructor and helpers of :class:`RepConv2d` and :class:`RepConv3d` (the torch
    convolution class follows in the MRO)."""

    def __init__(self, in_rep: Representation, out_rep: Representation, kernel_size, stride=1, padding=0,
                 dilation=1, bias: bool = True, padding_mode: str = "zeros", route: str = "auto",
                 equivariant: bool = False, include_bias: bool = True, steerable: Optional[SteerableConfig] = None,
                 band_limit: Optional[int] = None, device=None, dtype=None):
        super().__init__(in_rep.dim, out_rep.dim, kernel_size, stride=stride, padding=padding, dilation=dilation,
                         groups=1, bias=bias, padding_mode=padding_mode, device=device, dtype=dtype)
        self.in_rep, self.out_rep = in_rep, out_rep
        declare(self, in_rep, out_rep, route=route, include_bias=include_bias, name=type(self).__name__,
                steerable=steerable, band_limit=band_limit)
        self.equivariant = bool(equivariant)
        if equivariant:
            constrain_(self)

    @property
    def projector(self):
        return getattr(self, SPEC_ATTR).projector

    def check_equivariance(self, x=None, elements=None, rtol=None, raise_error: bool = False):
        """Check ``layer(g . x) = g . layer(x)`` on ``x`` (default: random inputs of the layer's
        dtype) with the layer's representations; returns an
        :class:`equiproj.testing.EquivarianceReport` (see :func:`equiproj.testing.check_layer`)."""
        from ..testing import check_layer

        return check_layer(self, x=x, elements=elements, rtol=rtol, raise_error=raise_error)

    def extra_repr(self) -> str:
        base = super().extra_repr()
        action = self.projector.action
        mode = "grid" if action.exact else f"steerable(L={action.config.band_limit})"
        return (f"{self.in_rep.name} -> {self.out_rep.name} of {self.in_rep.group.name}, {mode}, "
                f"equivariant={self.equivariant}, {base}")


class RepConv2d(_RepConvMixin, nn.Conv2d):
    r"""``nn.Conv2d`` from ``in_rep`` to ``out_rep`` fields, declared for regularisation.

    The kernel is unconstrained; its equivariant part satisfies
    ``K(g x) = rho_out(g) K(x) rho_in(g)^T`` for the group of the representations acting on
    the kernel grid through its defining representation: exactly by permuting the grid for C2,
    C4, the flips and D4 (and D1, D2), and through the band-limited steerable subspace for
    SO(2), O(2) and other C_N, D_N. Stride, padding, dilation, bias and ``padding_mode`` are
    those of ``nn.Conv2d``.

    Parameters
    ----------
    in_rep, out_rep : Representation
    kernel_size, stride, padding, dilation, bias, padding_mode :
        As in ``nn.Conv2d``.
    route : str
        Projection route (steerable kernels only have ``'basis'``).
    equivariant : bool
        Hard constraint ``K = P(K)`` (the strictly equivariant baseline).
    include_bias : bool
        Penalise the non-invariant part of the bias.
    steerable : SteerableConfig, optional
        Rings, widths and band limits of the steerable subspace; ``band_limit`` caps the default.

    Examples
    --------
    >>> import torch
    >>> from equiproj.groups import cyclic
    >>> from equiproj.nn import RepConv2d
    >>> from equiproj.actions import transform_feature_map
    >>> G = cyclic(4)
    >>> conv = RepConv2d(G.trivial(), 2 * G.regular(), 3, padding=1, equivariant=True)
    >>> x = torch.randn(1, 1, 8, 8)
    >>> y1 = conv(transform_feature_map(x, 1, G.trivial()))
    >>> y2 = transform_feature_map(conv(x), 1, 2 * G.regular())
    >>> bool(torch.allclose(y1, y2, atol=1e-5))
    True
    """


class RepConv3d(_RepConvMixin, nn.Conv3d):
    r"""``nn.Conv3d`` from ``in_rep`` to ``out_rep`` fields, declared for regularisation.

    Exact grid action for the 24 rotations of the cube (:func:`equiproj.groups.octahedral`) and
    the 48 rotations and reflections (:func:`equiproj.groups.full_octahedral`); the steerable
    subspace (spherical harmonics times Gaussian rings, combined by invariant tensors) for SO(3)
    and O(3). Otherwise as :class:`RepConv2d`.

    Examples
    --------
    >>> from equiproj.groups import so3
    >>> from equiproj.nn import RepConv3d
    >>> G = so3()
    >>> conv = RepConv3d(G.irrep(0), G.irrep(0) + G.irrep(1), 3, padding=1)
    >>> conv.projector.dim < conv.projector.total_dim
    True
    """
