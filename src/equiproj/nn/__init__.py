"""Layers that carry representations, and nonlinearities that commute with the group.

:class:`RepLinear`, :class:`RepConv2d` and :class:`RepConv3d` are ``nn.Linear`` / ``nn.Conv2d`` /
``nn.Conv3d`` layers declared for the regulariser (``equivariant=True`` for the strictly
equivariant baseline). :class:`PointwiseNonlinearity`,
:class:`NormNonlinearity` and :class:`GatedNonlinearity` commute with the action, and so do the
normalisation layers :class:`FieldBatchNorm` and :class:`FieldLayerNorm` (statistics shared within
each field, norm-based on irreducible fields).
"""

from ._conv import RepConv2d, RepConv3d
from ._linear import RepLinear
from ._norm import FieldBatchNorm, FieldLayerNorm, field_statistics
from ._nonlinear import GatedNonlinearity, NormNonlinearity, PointwiseNonlinearity, TensorSquare

__all__ = ["RepLinear", "RepConv2d", "RepConv3d", "PointwiseNonlinearity", "NormNonlinearity", "GatedNonlinearity",
           "TensorSquare", "FieldBatchNorm", "FieldLayerNorm", "field_statistics"]
