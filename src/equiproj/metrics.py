r"""Equivariance metrics, returned as data (never printed).

* :func:`equivariance_error`: end-to-end relative error ``||f(g x) - g f(x)|| / ||f(x)||`` of a
  model over all elements of a finite group or sampled elements of a continuous one.
* :func:`layer_defects`: per-layer operator defect ``||W - P(W)||`` (see
  :func:`equiproj.regularise.report`).
* :func:`orbit_defect`: ``sup_g ||g . W - W||`` over a set of elements, to check the bound
  ``||W - P(W)|| <= sup_g ||g . W - W|| <= 2 ||W - P(W)||`` (unitarily invariant norms).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Union

import torch

from .groups import Group, Representation
from .norms import get_norm
from .projection import Projector
from .regularise import LayerReport, report

__all__ = ["EquivarianceError", "equivariance_error", "rep_action", "layer_defects", "orbit_defect"]

Action = Union[Representation, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]


@dataclass
class EquivarianceError:
    """Relative equivariance error per group element and its max and mean."""

    max: float
    mean: float
    per_element: torch.Tensor
    elements: torch.Tensor

    def as_dict(self) -> dict:
        return {"max": self.max, "mean": self.mean, "n_elements": int(self.per_element.numel())}


def rep_action(rep: Representation) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``(g, x) -> x rho(g)^T``: the action of one element on the last dimension of ``x``."""

    def act(g, x):
        R = rep(g, dtype=x.dtype).to(x.device)[0]
        return x @ R.T

    return act


def _as_action(a: Action) -> Callable:
    return rep_action(a) if isinstance(a, Representation) else a


def equivariance_error(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, act_in: Action,
                       act_out: Action, group: Optional[Group] = None, elements: Optional[torch.Tensor] = None,
                       n_samples: int = 16, generator: Optional[torch.Generator] = None,
                       eps: float = 1e-12) -> EquivarianceError:
    r"""Relative end-to-end equivariance error of ``f`` on the batch ``x``.

    For every element ``g``: ``||f(g . x) - g . f(x)||_F / ||f(x)||_F`` over the whole batch.

    Parameters
    ----------
    f : callable
        The model.
    x : Tensor
        Inputs.
    act_in, act_out : Representation or callable
        How an element acts on inputs and outputs: a representation acting on the last
        dimension, or a function ``(g, x) -> g . x`` of a one-element batch ``g`` (for feature
        maps: :class:`equiproj.actions.feature_map_action`).
    group : Group, optional
        Needed when neither action is a representation or carries a ``group`` attribute.
    elements : Tensor, optional
        The elements to test. Default: all elements of a finite group, else ``n_samples``
        Haar samples drawn with ``generator``.

    Examples
    --------
    >>> import torch
    >>> from equiproj.groups import cyclic
    >>> from equiproj.metrics import equivariance_error
    >>> G = cyclic(4)
    >>> f = lambda x: x.sum(-1, keepdim=True)                  # invariant
    >>> err = equivariance_error(f, torch.randn(8, 4), G.regular(), G.trivial())
    >>> err.max < 1e-6
    True
    """
    if group is None:
        for a in (act_in, act_out):
            if isinstance(a, Representation) or isinstance(getattr(a, "group", None), Group):
                group = a.group
                break
    if group is None:
        raise ValueError("equivariance_error: pass group=... when neither action is a Representation")
    if elements is None:
        elements = group.elements() if group.is_finite else group.sample(n_samples, generator=generator)
    ai, ao = _as_action(act_in), _as_action(act_out)
    errs = []
    with torch.no_grad():
        fx = f(x)
        denom = torch.linalg.vector_norm(fx).clamp_min(eps)
        for i in range(len(elements)):
            g = elements[i:i + 1]
            diff = f(ai(g, x)) - ao(g, fx)
            errs.append(float(torch.linalg.vector_norm(diff) / denom))
    per = torch.tensor(errs, dtype=torch.float64)
    return EquivarianceError(max=float(per.max()), mean=float(per.mean()), per_element=per, elements=elements)


def layer_defects(model: torch.nn.Module, norm="fro") -> List[LayerReport]:
    """Per-layer ``||W||``, ``||P(W)||``, ``||W - P(W)||`` and relative defect of declared layers."""
    return report(model, norm)


def orbit_defect(W: torch.Tensor, projector: Projector, elements: torch.Tensor, norm="fro") -> torch.Tensor:
    r"""``max_g ||g . W - W||`` over ``elements`` (all elements of a finite group for the sup).

    Examples
    --------
    >>> import torch
    >>> from equiproj import LinearProjector
    >>> from equiproj.groups import dihedral
    >>> from equiproj.metrics import orbit_defect
    >>> G = dihedral(3)
    >>> P = LinearProjector(G.regular(), G.standard())
    >>> W = torch.randn(2, 6, dtype=torch.float64)
    >>> d = P.defect(W)
    >>> s = orbit_defect(W, P, G.elements())
    >>> bool(d <= s + 1e-12 and s <= 2 * d + 1e-12)
    True
    """
    n = get_norm(norm)
    gW = projector.action.act(elements, W)
    diffs = projector.action.to_matrix(gW - W.unsqueeze(0))
    return n(diffs).amax(dim=0)
