"""How a group acts on the weights of a layer, and on feature maps.

* :class:`HomAction`: ``g . W = rho_out(g) W rho_in(g)^T`` on linear maps.
* :class:`KernelAction`: ``(g . K)(x) = rho_out(g) K(g^{-1} x) rho_in(g)^T`` on convolution
  kernels, by exact grid permutations for groups that map the grid onto itself, and through a
  band-limited steerable basis (:class:`SteerableConfig`) otherwise.
* :func:`transform_feature_map`: ``g . x`` for feature maps (channels and positions).

Every weight action presents its weights as a matrix whose rows and columns are grouped into
fields (:class:`FieldLayout`), which is all the projectors need.
"""

from ._grid import (feature_map_action, grid_coordinates, grid_permutation, grid_permutations, grid_representation,
                    transform_feature_map)
from ._adapters import ADAPTERS, LayerAdapter, adapter_for, register_adapter, supported_types
from ._kernel import KernelAction, kernel_action_for
from ._layout import FieldLayout
from ._linear import HomAction, WeightAction
from ._steerable import SteerableConfig, SteerableField, harmonic_representation, harmonics, steerable_basis

__all__ = [
    "WeightAction", "HomAction", "KernelAction", "FieldLayout", "kernel_action_for",
    "LayerAdapter", "ADAPTERS", "adapter_for", "register_adapter", "supported_types",
    "SteerableConfig", "SteerableField", "steerable_basis", "harmonic_representation", "harmonics",
    "transform_feature_map", "feature_map_action", "grid_coordinates", "grid_permutation", "grid_permutations",
    "grid_representation",
]
