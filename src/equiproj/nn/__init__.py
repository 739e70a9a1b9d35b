"""Layers that carry representations, and nonlinearities that commute with the group.

:class:`RepLinear` is an ``nn.Linear`` declared for the regulariser (``equivariant=True`` for
the strictly equivariant baseline). :class:`PointwiseNonlinearity`,
:class:`NormNonlinearity` and :class:`GatedNonlinearity` commute with the action.
"""

from ._linear import RepLinear
from ._nonlinear import GatedNonlinearity, NormNonlinearity, PointwiseNonlinearity

__all__ = ["RepLinear", "PointwiseNonlinearity", "NormNonlinearity", "GatedNonlinearity"]
