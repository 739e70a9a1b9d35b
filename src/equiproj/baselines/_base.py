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

from ..regularise import (DEFAULT_SCHEME, ProjectionRegulariser, constrain_, declared_layers, initialise_, report)
from ._util import check_options

__all__ = ["Method", "register_method", "make_method", "available_methods", "method_info", "METHODS",
           "PlainMethod", "StrictMethod", "ProjectionMethod", "DEFAULT_INIT"]

#: Where :func:`make_method` starts the declared weights of every method but ``plain``.
DEFAULT_INIT = "equivariant"


class Method:
    """Base class of the methods (see the module docstring).

    ``starts_equivariant``: whether :func:`make_method` starts the model from the equivariant
    part of its weights (option ``init``); ``plain`` does not.
    """

    name = "method"
    #: Whether :meth:`penalty` needs the batch (sample-based regularisers).
    needs_batch = False
    starts_equivariant = True
    #: The option that weighs the method's penalty (``None`` when it has none), e.g. ``"lambda_perp"``;
    #: experiments sweep this option without knowing the method's name.
    weight_option: Optional[str] = None
    #: A second weight an experiment may set (``--lambda-G``) when it is positive, e.g. ``"lambda_G"``
    #: of the projection penalty or ``"lambda_eq"`` of RPP; ``None`` when there is none.
    second_weight_option: Optional[str] = None
    #: The option that takes a penalty norm of :mod:`equiproj.norms` (``--norm``), or ``None``.
    norm_option: Optional[str] = None
    #: The options the method accepts (besides :data:`equiproj.baselines.SHARED_OPTIONS`).
    _options: tuple = ()

    @classmethod
    def known_options(cls) -> tuple:
        """The options :func:`make_method` accepts for this method (besides the shared ones)."""
        return tuple(cls._options)

    @property
    def needs_data(self) -> bool:
        """Alias of :attr:`needs_batch`."""
        return self.needs_batch

    def __init__(self, model: nn.Module):
        self.model = model

    def penalty(self, batch=None) -> torch.Tensor:
        raise NotImplementedError

    __call__ = penalty

    def report(self) -> List:
        return report(self.model) if declared_layers(self.model) else []

    def param_groups(self, params, lr: float):
        """Optimiser parameter groups (``None``: one group; the split scheme gives ``B`` its own
        learning rate), used by :func:`equiproj.train.fit`."""
        return None

    def attach(self, optimizer: torch.optim.Optimizer):
        """Hook into the optimiser (called by :func:`equiproj.train.fit` once it is built); a no-op
        except for methods that act after the optimiser's steps (the proximal schemes)."""
        return None

    def state_dict(self) -> dict:
        """State besides the model's that a resumed run needs (checkpointed by ``fit``): the
        generator of a method's element sampler (attribute ``sampler``), if it has one."""
        sampler = getattr(self, "sampler", None)
        return {"sampler": sampler.state_dict()} if sampler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        """Inverse of :meth:`state_dict`."""
        sampler = getattr(self, "sampler", None)
        if sampler is not None and state and "sampler" in state:
            sampler.load_state_dict(state["sampler"])

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


def method_info(name: str) -> dict:
    """What an experiment needs to know about a method without naming it:
    ``{"weight_option", "second_weight_option", "norm_option", "needs_data", "samples",
    "has_scheme", "options", "starts_equivariant"}``: ``samples`` when it draws ``k`` group
    elements (option ``k``), ``has_scheme`` when it has a training scheme (option ``scheme``).

    Examples
    --------
    >>> method_info("projection")["weight_option"], method_info("sample-output")["needs_data"]
    ('lambda_perp', True)
    """
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}: choose one of {', '.join(available_methods())}")
    cls = METHODS[name]
    options = tuple(getattr(cls, "_options", ()))
    return {"weight_option": getattr(cls, "weight_option", None),
            "second_weight_option": getattr(cls, "second_weight_option", None),
            "norm_option": getattr(cls, "norm_option", None),
            "needs_data": bool(getattr(cls, "needs_batch", False)), "samples": "k" in options,
            "has_scheme": "scheme" in options, "options": options,
            "starts_equivariant": getattr(cls, "starts_equivariant", True)}


def make_method(name: str, model: nn.Module, **options) -> Method:
    """Build the method ``name`` around ``model`` (see :func:`available_methods`).

    Every method except ``plain`` first moves the declared layers of ``model`` to the
    equivariant part of their weights: option ``init`` (default ``"equivariant"``, see
    :func:`equiproj.initialise_`) is ``"equivariant"`` (projected, each weight rescaled to its
    former Frobenius norm, so that the signal does not shrink through the depth),
    ``"projected"`` (projected only) or ``"keep"`` (the weights as they are; the strict model and
    RPP project anyway). The regularised models then start where the strict model starts.
    ``plain`` ignores ``init``: it is the unregularised model from its own initialisation.
    Unknown options raise a ``TypeError`` that lists the known ones.

    Examples
    --------
    >>> import torch
    >>> from equiproj.baselines import make_method
    >>> from equiproj.nn import RepLinear
    >>> from equiproj.groups import cyclic
    >>> G = cyclic(4)
    >>> model = torch.nn.Sequential(RepLinear(G.regular(), G.regular()))
    >>> m = make_method("projection", model, lambda_perp=0.1)
    >>> m.penalty().shape, m.regulariser.scheme
    (torch.Size([]), 'split')
    >>> make_method("strict", torch.nn.Sequential(RepLinear(G.regular(), G.regular()))).penalty().item()
    0.0
    >>> make_method("projection", model, lambda_prep=5.0)
    Traceback (most recent call last):
    ...
    TypeError: method 'projection': unknown option(s) 'lambda_prep'; it accepts ...
    """
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}: choose one of {', '.join(available_methods())}")
    factory = METHODS[name]
    init = options.pop("init", None)
    if getattr(factory, "starts_equivariant", True) and declared_layers(model):
        initialise_(model, DEFAULT_INIT if init is None else init)
    return factory(model, **options)


@register_method("plain")
class PlainMethod(Method):
    """No penalty: the unregularised model (from its own initialisation)."""

    name = "plain"
    starts_equivariant = False
    _options = ()

    def __init__(self, model, **unknown):
        check_options(self.name, unknown, self._options)
        super().__init__(model)

    def penalty(self, batch=None):
        return self._zero()


@register_method("strict")
class StrictMethod(Method):
    """Strict equivariance: every declared layer parametrised as ``P(W)`` (hard constraint)."""

    name = "strict"
    _options = ()

    def __init__(self, model, **unknown):
        check_options(self.name, unknown, self._options)
        super().__init__(constrain_(model))

    def penalty(self, batch=None):
        return self._zero()


@register_method("projection")
class ProjectionMethod(Method):
    """The projection penalty ``lambda_perp ||W - P(W)|| + lambda_G ||P(W)||``
    (:class:`equiproj.ProjectionRegulariser`), trained with ``scheme`` (default ``'split'``:
    ``W = P(A) + (I - P) B`` with the penalty in the loss; ``'penalty'`` is the paper's scheme,
    ``'proximal'`` and ``'split-proximal'`` apply its proximal map after every optimiser step,
    see ``docs/training.md``)."""

    name = "projection"
    weight_option = "lambda_perp"
    second_weight_option = "lambda_G"
    norm_option = "norm"
    _options = ("lambda_perp", "lambda_G", "norm", "include_bias", "scheme", "perp_lr")

    def __init__(self, model, lambda_perp: float = 1e-2, lambda_G: float = 0.0, norm="fro",
                 include_bias: Optional[bool] = None, scheme: str = DEFAULT_SCHEME, perp_lr: Optional[float] = None,
                 **unknown):
        check_options(self.name, unknown, self._options)
        super().__init__(model)
        self.regulariser = ProjectionRegulariser(model, lambda_perp, lambda_G=lambda_G, norm=norm,
                                                 include_bias=include_bias, scheme=scheme, perp_lr=perp_lr)

    def penalty(self, batch=None):
        return self.regulariser.penalty()

    def report(self):
        return self.regulariser.report()

    def attach(self, optimizer):
        return self.regulariser.attach(optimizer)

    def param_groups(self, params, lr):
        return self.regulariser.param_groups(params, lr)

    def state_dict(self):
        return self.regulariser.state_dict()

    def load_state_dict(self, state):
        self.regulariser.load_state_dict(state)

    def __repr__(self):
        return f"ProjectionMethod({self.regulariser!r})"
