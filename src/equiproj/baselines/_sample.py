r"""Sample-based output regulariser: ``||f(g x) - g f(x)||^2`` at sampled elements (private module)."""

from __future__ import annotations

from typing import Callable, List, Optional

import torch
from torch import nn

from ._base import Method, register_method
from ._util import (ElementSampler, as_action, check_options, default_input_fn, infer_group, nonneg_float,
                    pos_int)

__all__ = ["SampleOutputMethod", "transformed_inputs"]


def transformed_inputs(act_in: Callable, elements: torch.Tensor, x: torch.Tensor) -> List[torch.Tensor]:
    """``[g_1 . x, ..., g_n . x]`` for a batch of elements."""
    return [act_in(elements[i:i + 1], x) for i in range(elements.shape[0])]


def run_copies(model: nn.Module, x: torch.Tensor, copies: List[torch.Tensor], batched: bool,
               method: str) -> List[torch.Tensor]:
    """``[f(x), f(x_1), ..., f(x_n)]``, in one forward of the concatenation when ``batched``."""
    if not batched:
        return [model(x)] + [model(c) for c in copies]
    B = x.shape[0]
    out = model(torch.cat([x] + copies, dim=0))
    if not isinstance(out, torch.Tensor) or out.ndim == 0 or out.shape[0] != B * (len(copies) + 1):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"method {method!r}: the model's output {got} does not keep the batch dimension first "
            f"(expected {B * (len(copies) + 1)} rows for {len(copies) + 1} stacked copies of a batch of {B}); "
            "pass batched=False"
        )
    return list(out.split(B, dim=0))


class SampledMethod(Method):
    """Shared part of the methods that sample group elements and run transformed copies of the
    batch (:class:`SampleOutputMethod`, :class:`~equiproj.baselines.EqRegMethod`)."""

    needs_batch = True

    def _init_sampling(self, input_fn, seed: int, include_identity: bool, batched: bool) -> None:
        if input_fn is not None and not callable(input_fn):
            raise TypeError(f"method {self.name!r}: option input_fn must be callable, got {type(input_fn).__name__}")
        self.input_fn = input_fn or default_input_fn
        self.sampler = ElementSampler(seed)
        self.include_identity = bool(include_identity)
        self.batched = bool(batched)

    def sample(self) -> torch.Tensor:
        """The elements of one step (advances the method's generator)."""
        return self.sampler.sample(self.group, self.k, self.include_identity)


@register_method("sample-output")
class SampleOutputMethod(SampledMethod):
    r"""Sample-based output regulariser: the model's equivariance error at sampled elements.

    .. math::

        R(x) = \lambda \, \frac{1}{n} \sum_{i=1}^{n} \frac{1}{B} \sum_{b=1}^{B}
               \| f(g_i x_b) - g_i f(x_b) \|_2^2

    where ``x`` is the batch (``B`` samples, the norm over all other entries of one sample's
    output) and ``g_1 .. g_n`` are drawn afresh at every call: for a finite group ``n = k``
    distinct elements uniformly among the non-identity ones (all ``|G| - 1`` of them when
    ``k >= |G| - 1``, so then ``n = |G| - 1``); for a continuous group ``k`` Haar samples.
    Gradients flow through both ``f(g x)`` and ``f(x)``.

    Cost: the ``n`` transformed copies and ``x`` go through the model in one forward of a
    batch of ``(n + 1) B`` (``batched=True``; models must treat samples independently, so
    batch normalisation in training mode sees the stacked batch) or in ``n + 1`` forwards.
    That is ``n + 1`` extra forwards and backwards per step on top of the task loss.

    Parameters
    ----------
    model : nn.Module
    lambda_ : float
        Weight of the penalty (default ``1e-2``).
    k : int
        Number of sampled elements per step (default 1).
    act_in, act_out : Representation or callable
        How an element acts on inputs and outputs: a representation acting on the last
        dimension, or a callable ``(g, x) -> g . x`` of a one-element batch ``g`` such as
        :class:`equiproj.actions.feature_map_action` for images (exact index maps for grid
        symmetries, interpolated rotations otherwise).
    group : Group, optional
        Inferred from the actions when one is a representation or carries ``.group``.
    input_fn : callable, optional
        ``batch -> model input``; default ``batch[0]`` (the batch itself for a tensor).
    seed : int
        Seed of the method's own ``torch.Generator`` (default 0).
    include_identity : bool
        Sample finite groups among all elements (the identity contributes zero).
    batched : bool
        One forward of the stacked copies (default) or one forward per copy.

    Examples
    --------
    >>> import torch
    >>> from equiproj.baselines import make_method
    >>> from equiproj.nn import RepLinear
    >>> from equiproj.groups import cyclic
    >>> G = cyclic(4)
    >>> model = torch.nn.Sequential(RepLinear(G.regular(), G.regular(), equivariant=True))
    >>> m = make_method("sample-output", model, k=2, act_in=G.regular(), act_out=G.regular())
    >>> float(m.penalty([torch.randn(8, 4)]).detach()) < 1e-10
    True
    """

    name = "sample-output"
    needs_batch = True
    weight_option = "lambda_"
    _options = ("lambda_", "k", "act_in", "act_out", "group", "input_fn", "seed", "include_identity", "batched")

    def __init__(self, model: nn.Module, lambda_: float = 1e-2, k: int = 1, act_in=None, act_out=None,
                 group=None, input_fn: Optional[Callable] = None, seed: int = 0, include_identity: bool = False,
                 batched: bool = True, **unknown):
        super().__init__(model)
        check_options(self.name, unknown, self._options)
        self.lambda_ = nonneg_float(self.name, "lambda_", lambda_)
        self.k = pos_int(self.name, "k", k)
        for nm, a in (("act_in", act_in), ("act_out", act_out)):
            if a is None:
                raise ValueError(f"method {self.name!r}: option {nm} is required (a Representation or a callable "
                                 f"(g, x) -> g.x), got None")
        self.act_in = as_action(self.name, "act_in", act_in)
        self.act_out = as_action(self.name, "act_out", act_out)
        self.group = infer_group(self.name, group, act_in, act_out)
        self._init_sampling(input_fn, seed, include_identity, batched)

    def penalty(self, batch=None) -> torch.Tensor:
        if batch is None:
            raise ValueError(f"method {self.name!r} needs the batch: call penalty(batch)")
        x = self.input_fn(batch)
        g = self.sample()
        outs = run_copies(self.model, x, transformed_inputs(self.act_in, g, x), self.batched, self.name)
        fx = outs[0]
        total = None
        for i in range(g.shape[0]):
            d = outs[i + 1] - self.act_out(g[i:i + 1], fx)
            t = d.pow(2).reshape(d.shape[0], -1).sum(1).mean()
            total = t if total is None else total + t
        return self.lambda_ * total / g.shape[0]

    __call__ = penalty

    def __repr__(self):
        return f"SampleOutputMethod(lambda_={self.lambda_}, k={self.k}, group={self.group.name})"
