r"""Residual Pathway Priors: ``W = P(A) + B`` with separate priors on both paths (private module)."""

from __future__ import annotations

from typing import Dict, List, Tuple

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..projection import Projector
from ..regularise import declared_layers, initialise_
from ._base import Method, register_method
from ._util import check_options, layer_weight, nonneg_float

__all__ = ["ResidualPathway", "rpp_", "rpp_paths", "RPPMethod"]


class ResidualPathway(nn.Module):
    r"""Parametrisation ``A -> P(A) + B``: an equivariant path and a free path.

    ``A`` is the layer's original weight (``module.parametrizations.weight.original``), ``P``
    the layer's projector (``project_bias`` for a bias) and ``B = self.free`` a free parameter
    of the same shape. Registering it (or assigning ``layer.weight = W``) sets ``A = W`` and
    ``B = W - P(W)``, so the layer keeps its weight; :func:`rpp_` registers it on projected
    weights, where ``B = 0``.

    Examples
    --------
    >>> import torch
    >>> from torch.nn.utils import parametrize
    >>> from equiproj import LinearProjector
    >>> from equiproj.groups import cyclic
    >>> G = cyclic(4)
    >>> layer = torch.nn.Linear(4, 4, bias=False)
    >>> P = LinearProjector(G.regular(), G.regular())
    >>> W = layer.weight.detach().clone()
    >>> _ = parametrize.register_parametrization(layer, "weight", ResidualPathway(P, (4, 4)))
    >>> bool(torch.allclose(layer.weight, W))
    True
    >>> layer.weight = P.project(W)          # an equivariant weight: the free path is zero
    >>> float(layer.parametrizations.weight[0].free.detach().abs().max()) < 1e-6
    True
    """

    def __init__(self, projector: Projector, shape, bias: bool = False, dtype=None, device=None):
        super().__init__()
        self.projector = projector
        self.bias = bool(bias)
        self.free = nn.Parameter(torch.zeros(tuple(shape), dtype=dtype, device=device))

    def equivariant(self, A: torch.Tensor) -> torch.Tensor:
        """The equivariant path ``P(A)``."""
        return self.projector.project_bias(A) if self.bias else self.projector.project(A)

    def forward(self, A):
        return self.equivariant(A) + self.free

    def right_inverse(self, W):
        """``A = W`` and ``B = W - P(W)``, so that assigning ``layer.weight = W`` makes ``W`` the weight
        (and registering on a projected weight starts with ``B = 0``)."""
        with torch.no_grad():
            W = W.detach()
            self.free.copy_(W - self.equivariant(W))
        return W


def rpp_(model: nn.Module, init: str = "projected") -> nn.Module:
    """Give every declared layer of ``model`` a residual pathway (in place): its weight and
    bias become ``P(A) + B`` with ``B = 0``, so the model first computes the function of its
    equivariant part: with ``init="projected"`` that of :func:`equiproj.project_`, with
    ``"equivariant"`` that of :func:`equiproj.equivariant_init_` (the projection rescaled to the
    former norms). Returns the model. Build the optimiser afterwards: ``B`` are new parameters.
    """
    layers = declared_layers(model)
    if not layers:
        raise ValueError("method 'rpp': the model has no declared layers: build it from equiproj.nn layers or call "
                         "equiproj.declare_model(model, group) first")
    for name, m, spec in layers:
        for pname in (spec.weight_name, spec.bias_name):
            if parametrize.is_parametrized(m, pname):
                raise ValueError(f"method 'rpp': the {pname} of layer '{name or '<model>'}' is already parametrised "
                                 "(e.g. equivariant=True or constrain_); RPP needs an unconstrained layer")
    if init not in ("equivariant", "projected"):
        raise ValueError(f"method 'rpp': init must be 'equivariant' or 'projected' (RPP starts from the equivariant "
                         f"part of the weights), got {init!r}")
    initialise_(model, init)
    for _, m, spec in layers:
        P = spec.projector
        w = layer_weight(m, spec)
        parametrize.register_parametrization(m, spec.weight_name, ResidualPathway(P, w.shape, dtype=w.dtype,
                                                                                  device=w.device))
        b = getattr(m, spec.bias_name, None)
        if isinstance(b, torch.Tensor):
            parametrize.register_parametrization(m, spec.bias_name, ResidualPathway(P, b.shape, bias=True, dtype=b.dtype,
                                                                                    device=b.device))
    with torch.no_grad():  # the weights are projected: the free paths start at exactly zero
        for p in _free_params(layers):
            p.zero_()
    return model


def _pathway_names(module: nn.Module) -> List[str]:
    """The parametrised tensors of ``module`` that carry a residual pathway (weight first)."""
    plists = getattr(module, "parametrizations", None)
    if plists is None:
        return []
    names = [n for n, plist in plists.items() if any(isinstance(p, ResidualPathway) for p in plist)]
    return sorted(names, key=lambda n: getattr(next(p for p in plists[n] if isinstance(p, ResidualPathway)), "bias"))


def _free_params(layers) -> List[nn.Parameter]:
    return [p.free for _, m, _ in layers for pname in _pathway_names(m)
            for p in getattr(m.parametrizations, pname) if isinstance(p, ResidualPathway)]


def rpp_paths(module: nn.Module) -> List[Tuple[str, torch.Tensor, torch.Tensor]]:
    """``[(param name, P(A), B)]`` of a layer with residual pathways (differentiable); the names
    are the adapter's (``weight`` / ``bias``, ``in_proj_weight`` / ``in_proj_bias`` of
    ``nn.MultiheadAttention``)."""
    out = []
    for pname in _pathway_names(module):
        plist = getattr(module.parametrizations, pname)
        for p in plist:
            if isinstance(p, ResidualPathway):
                out.append((pname, p.equivariant(plist.original), p.free))
    return out


@register_method("rpp")
class RPPMethod(Method):
    r"""Residual Pathway Priors (Finzi, Benton, Wilson 2021) for linear and convolution layers.

    Every declared layer's weight becomes ``W = P(A) + B`` (and its bias ``b = P_b(a) + c``):
    an equivariant path (the projection of a free tensor ``A``) plus a free path ``B``
    initialised to zero (:func:`rpp_`, with ``torch.nn.utils.parametrize``). ``method.model``
    is the transformed model (changed in place). The penalty is the negative log of Gaussian
    priors, a broad one on the equivariant path and a tight one on the free path:

    .. math::

        R = \lambda_{eq} \sum_l \big(\|P(A_l)\|_F^2 + \|P_b(a_l)\|^2\big)
          + \lambda_{free} \sum_l \big(\|B_l\|_F^2 + \|c_l\|^2\big)

    Defaults ``lambda_eq = 1e-6``, ``lambda_free = 1e-2`` (a ratio of 10^4 between the prior
    variances). The paper expresses the same priors as weight decays on the two paths and
    tunes them per task; these defaults are ours. With ``B = 0`` the model is exactly the
    projected (strictly equivariant) model; the free path lets the data buy non-equivariance
    at the price ``lambda_free ||B||^2``.

    Cost: one projection per layer per forward (as the strict baseline) plus a second copy
    of every declared weight (``B``); the penalty is a few sums of squares.

    Parameters
    ----------
    model : nn.Module
        With declared layers, not already parametrised.
    lambda_eq, lambda_free : float

    Examples
    --------
    >>> import torch
    >>> from equiproj.baselines import make_method
    >>> from equiproj.nn import RepLinear
    >>> from equiproj.groups import cyclic
    >>> G = cyclic(4)
    >>> m = make_method("rpp", torch.nn.Sequential(RepLinear(G.regular(), G.regular())), lambda_free=1.0)
    >>> [tuple(p.shape) for p in m.free_parameters()]
    [(4, 4), (4,)]
    >>> with torch.no_grad():
    ...     _ = m.free_parameters()[0].fill_(0.5)
    >>> round(float((m.penalty() - 1e-6 * m.equivariant_sq()).detach()), 6)   # 16 entries * 0.25
    4.0
    """

    name = "rpp"
    needs_batch = False
    weight_option = "lambda_free"
    second_weight_option = "lambda_eq"
    _options = ("lambda_eq", "lambda_free")

    def __init__(self, model: nn.Module, lambda_eq: float = 1e-6, lambda_free: float = 1e-2, **unknown):
        check_options(self.name, unknown, self._options)
        self.lambda_eq = nonneg_float(self.name, "lambda_eq", lambda_eq)
        self.lambda_free = nonneg_float(self.name, "lambda_free", lambda_free)
        super().__init__(rpp_(model))
        self.layers = declared_layers(self.model)

    def free_parameters(self) -> List[nn.Parameter]:
        """The free-path parameters ``B`` (weights, then biases, layer by layer)."""
        return _free_params(self.layers)

    def terms(self) -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
        """Per layer ``(sum ||P(A)||^2, sum ||B||^2)`` over weight and bias (differentiable)."""
        res = {}
        for name, m, _ in self.layers:
            eq = fr = None
            for _, PA, B in rpp_paths(m):
                e, f = PA.pow(2).sum(), B.pow(2).sum()
                eq = e if eq is None else eq + e
                fr = f if fr is None else fr + f
            res[name or "<model>"] = (eq, fr)
        return res

    def equivariant_sq(self) -> torch.Tensor:
        """``sum_l ||P(A_l)||^2`` (with biases)."""
        return torch.stack([e for e, _ in self.terms().values()]).sum()

    def free_sq(self) -> torch.Tensor:
        """``sum_l ||B_l||^2`` (with biases)."""
        return torch.stack([f for _, f in self.terms().values()]).sum()

    def penalty(self, batch=None) -> torch.Tensor:
        t = self.terms().values()
        eq = torch.stack([e for e, _ in t]).sum()
        fr = torch.stack([f for _, f in t]).sum()
        return self.lambda_eq * eq + self.lambda_free * fr

    __call__ = penalty

    def __repr__(self):
        return f"RPPMethod(lambda_eq={self.lambda_eq}, lambda_free={self.lambda_free}, {len(self.layers)} layers)"
