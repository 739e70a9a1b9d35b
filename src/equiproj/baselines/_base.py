"""One interface for every method, and a registry by name (private module).

A *method* is what an experiment switches with one option. It is built from a model and options
by :func:`make_method`, may transform the model (the strict baseline constrains it, RPP adds free
paths), and exposes

* ``method.model``: the model to train (possibly transformed);
* ``method.penalty(batch=None)``: a differentiable scalar added to the task loss; methods that
  need data (sample-based regularisers) set ``needs_batch = True`` and receive the batch;
* ``method.report()``: per-layer figures where they make sense (a list, possibly empty).

:class:`equiproj.ProjectionRegulariser` already has this interface.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional

import torch
from torch import nn

from ..regularise import ProjectionRegulariser, constrain_, declared_layers, report

__all__ = ["Method", "register_method", "make_method", "available_methods", "METHODS",
           "PlainMethod", "StrictMethod", "ProjectionMethod"]


class Method:
    """Base class of the methods (see the module docstring)."""

    name = "method"
    needs_batch = False

    def __init__(self, model: nn.Module):
        self.model = model

    def penalty(self, batch=None) -> torch.Tensor:
        raise NotImplementedError

    __call__ = penalty

    def report(self) -> List:
        return report(self.model) if declared_layers(self.model) else []

    def _zero(self) -> torch.Tensor:
        p = next(self.model.parameters(), None)
        dtype = torch.get_default_dtype() if p is None else (p.real.dtype if p.is_complex() else p.dtype)
        return torch.zeros((), dtype=dtype, device=p.device if p is not None else "cpu")

    def __repr__(self):
        return f"{type(self).__name__}()"


#: Registry: name -> factory ``(model, **options) -> Method``.
METHODS: Dict[str, Callable[..., Method]] = {}


def register_method(name: str):
    """Decorator adding a method factory to the registry under ``name``."""

    def deco(factory):
        METHODS[name] = factory
        return factory

    return deco


def available_methods() -> List[str]:
    return sorted(METHODS)


def make_method(name: str, model: nn.Module, **options) -> Method:
    """Build the method ``name`` around ``model`` (see :func:`available_methods`).

    Examples
    --------
    >>> import torch
    >>> from equiproj.baselines import make_method
    >>> from equiproj.nn import RepLinear
    >>> from equiproj.groups import cyclic
    >>> G = cyclic(4)
    >>> model = torch.nn.Sequential(RepLinear(G.regular(), G.regular()))
    >>> m = make_method("projection", model, lambda_perp=0.1)
    >>> m.penalty().shape
    torch.Size([])
    >>> make_method("strict", model).penalty().item()
    0.0
    """
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}: choose one of {', '.join(available_methods())}")
    return METHODS[name](model, **options)


@register_method("plain")
class PlainMethod(Method):
    """No penalty: the unregularised model."""

    name = "plain"

    def __init__(self, model, **ignored):
        super().__init__(model)

    def penalty(self, batch=None):
        return self._zero()


@register_method("strict")
class StrictMethod(Method):
    """Strict equivariance: every declared layer parametrised as ``P(W)`` (hard constraint)."""

    name = "strict"

    def __init__(self, model, **ignored):
        super().__init__(constrain_(model))

    def penalty(self, batch=None):
        return self._zero()


@register_method("projection")
class ProjectionMethod(Method):
    """The projection penalty ``lambda_perp ||W - P(W)|| + lambda_G ||P(W)||``
    (:class:`equiproj.ProjectionRegulariser`)."""

    name = "projection"

    def __init__(self, model, lambda_perp: float = 1e-2, lambda_G: float = 0.0, norm="fro",
                 include_bias: Optional[bool] = None, **ignored):
        super().__init__(model)
        self.regulariser = ProjectionRegulariser(model, lambda_perp, lambda_G=lambda_G, norm=norm,
                                                 include_bias=include_bias)

    def penalty(self, batch=None):
        return self.regulariser.penalty()

    def report(self):
        return self.regulariser.report()
