"""How a group acts on the weights of a layer.

:class:`HomAction` is the action ``g . W = rho_out(g) W rho_in(g)^T`` on linear maps. Every
action presents its weights as a matrix whose rows and columns are grouped into fields
(:class:`FieldLayout`), which is all the projectors need.
"""

from ._layout import FieldLayout
from ._linear import HomAction, WeightAction

__all__ = ["WeightAction", "HomAction", "FieldLayout", "kernel_action_for"]


def kernel_action_for(module, in_rep, out_rep, name, **kw):
    """The weight action of a layer type other than ``nn.Linear`` (error if unsupported)."""
    raise TypeError(f"layer '{name}' of type {type(module).__name__} is not supported: declare() accepts nn.Linear")
