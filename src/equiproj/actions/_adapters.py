"""Layer adapters: what the regulariser needs to know about a torch layer type (private module).

An adapter says, for one family of ``nn.Module`` types, which tensors hold the weight and the
bias, the layer's input and output channel counts, and the weight action for given channel
representations (which also fixes the side of the bias, see :attr:`WeightAction.bias_on_rows`).
:func:`adapter_for` finds the adapter of a module; :func:`register_adapter` adds one, so that a
new layer type is one class::

    class MyAdapter(LayerAdapter):
        types = (MyLayer,)
        def channels(self, m): return m.n_in, m.n_out
        def action(self, m, in_rep, out_rep, name, **kw): return HomAction(in_rep, out_rep)

    register_adapter(MyAdapter())
"""

from __future__ import annotations

from typing import List, Optional, Tuple

from torch import nn

from ..groups import Representation
from ._kernel import KernelAction
from ._linear import HomAction, WeightAction
from ._steerable import SteerableConfig

__all__ = ["LayerAdapter", "register_adapter", "adapter_for", "supported_types", "ADAPTERS"]


class LayerAdapter:
    """How to read and declare one family of layer types (see the module docstring)."""

    #: The module types this adapter handles (``isinstance``; the first matching adapter wins).
    types: Tuple[type, ...] = ()
    #: The attribute holding the weight, and the bias (``None`` if the layer has none).
    weight_name: str = "weight"
    bias_name: str = "bias"
    #: Options accepted by :meth:`action` (passed through ``declare(..., **options)``).
    options: Tuple[str, ...] = ()

    def channels(self, m: nn.Module) -> Tuple[int, int]:
        """``(c_in, c_out)``: the dimensions ``in_rep`` and ``out_rep`` must have."""
        raise NotImplementedError

    def check(self, m: nn.Module, in_rep: Representation, out_rep: Representation, name: str) -> None:
        c_in, c_out = self.channels(m)
        kind = self.channel_words
        if in_rep.dim != c_in:
            raise ValueError(f"in_rep dimension {in_rep.dim} does not match {kind[0]} {c_in} of layer '{name}'")
        if out_rep.dim != c_out:
            raise ValueError(f"out_rep dimension {out_rep.dim} does not match {kind[1]} {c_out} of layer '{name}'")

    channel_words = ("in_channels", "out_channels")

    def action(self, m: nn.Module, in_rep: Representation, out_rep: Representation, name: str,
               **options) -> WeightAction:
        raise NotImplementedError

    def _no_options(self, m, name, options):
        if options:
            raise TypeError(f"unexpected options for {type(m).__name__} layer '{name}': {sorted(options)}; "
                            f"it accepts {', '.join(self.options) or 'none'}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(t.__name__ for t in self.types)})"


class LinearAdapter(LayerAdapter):
    """``nn.Linear``: ``g . W = rho_out(g) W rho_in(g)^T``."""

    types = (nn.Linear,)
    channel_words = ("in_features", "out_features")

    def channels(self, m):
        return m.in_features, m.out_features

    def action(self, m, in_rep, out_rep, name, **options):
        self._no_options(m, name, options)
        self.check(m, in_rep, out_rep, name)
        return HomAction(in_rep, out_rep)


class ConvAdapter(LayerAdapter):
    """``nn.Conv1d``, ``Conv2d``, ``Conv3d``: the kernel action on ``(c_out, c_in, *k)``; the group's
    defining representation must act on a space of the kernel's dimension (for ``Conv1d`` a group
    of 1 x 1 matrices, e.g. ``finite_group([[[-1.0]]])``, the reflection of the line)."""

    types = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    options = ("steerable", "band_limit")

    def channels(self, m):
        return m.in_channels, m.out_channels

    def _common(self, m, in_rep, out_rep, name):
        if m.groups != 1:
            raise ValueError(f"layer '{name}' is a grouped convolution (groups={m.groups}), which is not supported")
        self.check(m, in_rep, out_rep, name)

    def action(self, m, in_rep, out_rep, name, steerable: Optional[SteerableConfig] = None,
               band_limit: Optional[int] = None, **options):
        self._no_options(m, name, options)
        self._common(m, in_rep, out_rep, name)
        return KernelAction(in_rep, out_rep, m.kernel_size, steerable=steerable, band_limit=band_limit)


class ConvTransposeAdapter(ConvAdapter):
    """``nn.ConvTranspose1d``, ``2d``, ``3d``: the weight ``(c_in, c_out, *k)`` is that of the adjoint
    convolution from ``out_rep`` to ``in_rep`` and is projected as such; the bias lives on the
    module's output channels, the columns' side of that matrix."""

    types = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)

    def action(self, m, in_rep, out_rep, name, steerable: Optional[SteerableConfig] = None,
               band_limit: Optional[int] = None, **options):
        self._no_options(m, name, options)
        self._common(m, in_rep, out_rep, name)
        action = KernelAction(out_rep, in_rep, m.kernel_size, steerable=steerable, band_limit=band_limit)
        action._bias_rep = out_rep
        action._bias_on_rows = False
        return action


class MultiheadAttentionAdapter(LayerAdapter):
    r"""The input projection of ``nn.MultiheadAttention`` (``in_proj_weight``, ``(3E, E)``, and
    ``in_proj_bias``): one linear map from the embedding to queries, keys and values.

    ``out_rep`` is the representation of the queries (and of the keys and values), either as a
    whole (dimension ``E``) or per head (dimension ``E / num_heads``, repeated for every head):
    the map is declared from ``in_rep`` to ``3 * out_rep``. Attention is equivariant when, in
    every head, queries and keys carry the same orthogonal representation (their dot products
    are then invariant), values are equivariant and ``out_proj`` (an ``nn.Linear``, declared on
    its own) maps the heads back to the embedding's representation. Only the packed projection
    (``kdim == vdim == embed_dim``) is supported.
    """

    types = (nn.MultiheadAttention,)
    weight_name = "in_proj_weight"
    bias_name = "in_proj_bias"
    channel_words = ("embed_dim", "3 * embed_dim")

    def channels(self, m):
        return m.embed_dim, 3 * m.embed_dim

    def action(self, m, in_rep, out_rep, name, **options):
        self._no_options(m, name, options)
        if not m._qkv_same_embed_dim:
            raise ValueError(f"layer '{name}': nn.MultiheadAttention with kdim/vdim other than embed_dim keeps "
                             "separate q/k/v weights, which are not supported; use kdim = vdim = embed_dim")
        E, h = m.embed_dim, m.num_heads
        if in_rep.dim != E:
            raise ValueError(f"in_rep dimension {in_rep.dim} does not match embed_dim {E} of layer '{name}'")
        if out_rep.dim == E // h and h > 1:
            qkv = h * out_rep  # declared per head
        elif out_rep.dim == E:
            qkv = out_rep
        elif out_rep.dim == 3 * E:
            return HomAction(in_rep, out_rep)
        else:
            raise ValueError(f"out_rep dimension {out_rep.dim} of layer '{name}' is neither embed_dim {E} (the "
                             f"queries as a whole) nor embed_dim / num_heads = {E // h} (one head) nor 3 * embed_dim")
        return HomAction(in_rep, 3 * qkv)


#: The registered adapters, searched in order.
ADAPTERS: List[LayerAdapter] = [LinearAdapter(), ConvTransposeAdapter(), ConvAdapter(), MultiheadAttentionAdapter()]


def register_adapter(adapter: LayerAdapter, first: bool = True) -> LayerAdapter:
    """Add an adapter (searched before the built-in ones unless ``first=False``)."""
    if not isinstance(adapter, LayerAdapter):
        raise TypeError(f"expected a LayerAdapter instance, got {type(adapter).__name__}")
    if first:
        ADAPTERS.insert(0, adapter)
    else:
        ADAPTERS.append(adapter)
    return adapter


def adapter_for(module: nn.Module, name: Optional[str] = None) -> LayerAdapter:
    """The adapter of ``module``'s type, or a ``TypeError`` that lists the supported types."""
    for a in ADAPTERS:
        if isinstance(module, a.types):
            return a
    raise TypeError(f"layer '{name or type(module).__name__}' of type {type(module).__name__} is not supported: "
                    f"declare() accepts {', '.join(t.__name__ for t in supported_types())} "
                    "(register another type with equiproj.actions.register_adapter)")


def supported_types() -> Tuple[type, ...]:
    """Every module type some adapter handles."""
    out: List[type] = []
    for a in ADAPTERS:
        out += [t for t in a.types if t not in out]
    return tuple(out)
