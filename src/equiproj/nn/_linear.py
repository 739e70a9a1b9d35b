"""Linear layers that carry representations (private module)."""

from __future__ import annotations

from torch import nn

from ..groups import Representation
from ..regularise import SPEC_ATTR, constrain_, declare

__all__ = ["RepLinear"]


class RepLinear(nn.Linear):
    r"""An ordinary ``nn.Linear`` from ``in_rep`` to ``out_rep``, declared for regularisation.

    The weight is unconstrained (shape ``(out_rep.dim, in_rep.dim)``); a
    :class:`equiproj.ProjectionRegulariser` pulls it towards ``Hom_G(V_in, V_out)``. With
    ``equivariant=True`` the weight is parametrised as ``P(W)`` (strictly equivariant).

    Parameters
    ----------
    in_rep, out_rep : Representation
    bias : bool
    route : str
        Projection route (see :class:`equiproj.Projector`).
    equivariant : bool
        Hard constraint ``W = P(W)`` through ``torch.nn.utils.parametrize``.
    include_bias : bool
        Penalise the non-invariant part of the bias.

    Examples
    --------
    >>> import torch
    >>> from equiproj.nn import RepLinear
    >>> from equiproj.groups import so3
    >>> G = so3()
    >>> layer = RepLinear(2 * G.standard(), G.trivial() + G.standard(), equivariant=True)
    >>> x = torch.randn(5, 6, dtype=torch.float32)
    >>> R = G.sample(1, generator=torch.Generator().manual_seed(0), dtype=torch.float32)[0]
    >>> rot_in = torch.block_diag(R, R)
    >>> rot_out = torch.block_diag(torch.eye(1), R)
    >>> bool(torch.allclose(layer(x @ rot_in.T), layer(x) @ rot_out.T, atol=1e-5))
    True
    """

    def __init__(self, in_rep: Representation, out_rep: Representation, bias: bool = True, route: str = "auto",
                 equivariant: bool = False, include_bias: bool = True, device=None, dtype=None):
        super().__init__(in_rep.dim, out_rep.dim, bias=bias, device=device, dtype=dtype)
        self.in_rep, self.out_rep = in_rep, out_rep
        declare(self, in_rep, out_rep, route=route, include_bias=include_bias, name="RepLinear")
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
        return (f"{self.in_rep.name} -> {self.out_rep.name} of {self.in_rep.group.name}, "
                f"bias={self.bias is not None}, equivariant={self.equivariant}")
