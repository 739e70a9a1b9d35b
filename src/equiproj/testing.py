r"""Testing tools for equivariant models and projectors, shipped for users.

* :func:`assert_equivariant`: ``f(g . x) = g . f(x)`` for every element of a finite group (or
  sampled elements of a continuous one), within a tolerance that depends on the dtype; returns an
  :class:`EquivarianceReport` (``raise_error=False`` only reports).
* :func:`assert_projector`: a projector is idempotent, self-adjoint, its image is equivariant and
  its dimension equals the character inner product
  ``dim Hom_G(V_in, V_out) = \int_G \chi_{out}(g) \chi_{in}(g) dg``.
* :func:`dtype`: a pytest fixture running a test in float64 and float32 (import it into a
  ``conftest.py``: ``from equiproj.testing import dtype``); :data:`TOLERANCES` gives the relative
  tolerances that go with each.
* ``layer.check_equivariance()`` on :class:`equiproj.nn.RepLinear`, ``RepConv2d`` and ``RepConv3d``
  calls :func:`check_layer` (random inputs, the layer's own representations).

Examples
--------
>>> import torch
>>> from equiproj.groups import cyclic
>>> from equiproj.testing import assert_equivariant
>>> G = cyclic(4)
>>> rep = assert_equivariant(lambda x: x.sum(-1, keepdim=True), torch.randn(5, 4), G.regular(), G.trivial())
>>> rep.passed, rep.n_elements
(True, 4)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch

from .groups import Group, Representation
from .metrics import equivariance_error

__all__ = ["TOLERANCES", "tolerance", "EquivarianceReport", "ProjectorReport", "assert_equivariant",
           "assert_projector", "check_layer", "dtype"]

#: Relative tolerance of the checks per dtype (float32 keeps about 7 digits; products of a few
#: dozen terms lose one or two).
TOLERANCES: Dict[torch.dtype, float] = {torch.float64: 1e-9, torch.float32: 2e-5, torch.float16: 5e-3,
                                        torch.bfloat16: 3e-2}


def tolerance(dtype: torch.dtype) -> float:
    """The relative tolerance of :data:`TOLERANCES` for ``dtype`` (``ValueError`` for others)."""
    if dtype not in TOLERANCES:
        raise ValueError(f"no tolerance known for dtype {dtype}; pass rtol= explicitly (known: "
                         f"{', '.join(map(str, TOLERANCES))})")
    return TOLERANCES[dtype]


@dataclass
class EquivarianceReport:
    """Result of :func:`assert_equivariant`: relative errors ``||f(g x) - g f(x)|| / ||f(x)||``."""

    passed: bool
    max_error: float
    mean_error: float
    rtol: float
    dtype: str
    n_elements: int
    worst_element: Optional[list]
    per_element: torch.Tensor = field(repr=False)

    def as_dict(self) -> dict:
        return {k: v for k, v in vars(self).items() if k != "per_element"}


def _dtype_of(x) -> torch.dtype:
    return x.dtype if isinstance(x, torch.Tensor) and x.is_floating_point() else torch.get_default_dtype()


def assert_equivariant(f: Callable, x: torch.Tensor, in_action, out_action, group: Optional[Group] = None,
                       elements: Optional[torch.Tensor] = None, n_samples: int = 8,
                       generator: Optional[torch.Generator] = None, rtol: Optional[float] = None,
                       raise_error: bool = True) -> EquivarianceReport:
    r"""Check ``f(g . x) = g . f(x)`` and return the :class:`EquivarianceReport`.

    Parameters
    ----------
    f : callable
        The model or layer.
    x : Tensor
        A batch of inputs; its dtype chooses the tolerance (:data:`TOLERANCES`).
    in_action, out_action : Representation or callable
        How an element acts on inputs and outputs: a representation acting on the last dimension
        or a function ``(g, x) -> g . x`` (for feature maps
        :class:`equiproj.actions.feature_map_action`).
    group : Group, optional
        Needed when neither action carries one.
    elements : Tensor, optional
        Default: every element of a finite group, else ``n_samples`` Haar samples (``generator``).
    rtol : float, optional
        Largest accepted relative error; default :func:`tolerance` of ``x.dtype``.
    raise_error : bool
        Raise an ``AssertionError`` naming the worst element when the check fails.

    Examples
    --------
    >>> import torch
    >>> from equiproj.groups import cyclic
    >>> G = cyclic(4)
    >>> r = assert_equivariant(lambda x: x.flip(-1), torch.randn(3, 4), G.regular(), G.regular(),
    ...                        raise_error=False)
    >>> r.passed
    False
    """
    dt = _dtype_of(x)
    tol = tolerance(dt) if rtol is None else float(rtol)
    err = equivariance_error(f, x, in_action, out_action, group=group, elements=elements, n_samples=n_samples,
                             generator=generator)
    per = err.per_element
    finite = bool(torch.isfinite(per).all())
    worst = int(torch.nan_to_num(per, nan=math.inf).argmax()) if per.numel() else None
    g = None if worst is None else err.elements[worst].reshape(-1).tolist()
    passed = finite and err.max <= tol
    rep = EquivarianceReport(passed=passed, max_error=err.max, mean_error=err.mean, rtol=tol, dtype=str(dt),
                             n_elements=int(per.numel()), worst_element=g, per_element=per)
    if raise_error and not passed:
        why = "non-finite outputs" if not finite else f"relative error {err.max:.3e} > rtol {tol:.1e}"
        raise AssertionError(
            f"not equivariant in {dt}: {why} at element {g} (mean over {rep.n_elements} elements "
            f"{err.mean:.3e}). Check the declared representations and that every module between the "
            "layers commutes with the action (equiproj.check_model), or project the weights (equiproj.project_)."
        )
    return rep


@dataclass
class ProjectorReport:
    """Result of :func:`assert_projector` (errors relative to ``||P(W)||``)."""

    passed: bool
    idempotence_error: float
    adjointness_error: float
    equivariance_error: Optional[float]
    dim: int
    character_dim: Optional[int]
    rtol: float
    dtype: str
    notes: List[str]

    def as_dict(self) -> dict:
        return dict(vars(self))


def _character_dim(P) -> Optional[int]:
    """``\\int_G chi_out chi_in' dg`` for the weight space of ``P`` (``None`` where unknown)."""
    from .actions import HomAction, KernelAction, grid_permutations

    A = P.action
    G = P.group
    if isinstance(A, KernelAction) and not A.exact:
        return None  # the steerable subspace is band-limited: no character formula on the grid
    if not isinstance(A, (HomAction, KernelAction)):
        return None
    if G.is_finite:
        g, w = G.elements(), torch.full((G.order,), 1.0 / G.order, dtype=torch.float64)
    else:
        try:
            g, w = G.quadrature(A.out_rep.band_limit + A.in_rep.band_limit)
        except (ValueError, NotImplementedError, AttributeError):
            return None
        w = torch.as_tensor(w, dtype=torch.float64)
    chi = A.out_rep.character(g).to(torch.float64) * A.in_rep.character(g).to(torch.float64)
    if isinstance(A, KernelAction):
        src = grid_permutations(G, A.kernel_size)
        if src is None:
            return None
        chi = chi * (src == torch.arange(src.shape[1])).sum(-1).to(torch.float64)
    return int(round(float((w * chi).sum())))


def assert_projector(P, dtype: torch.dtype = torch.float64, n: int = 3, elements: Optional[torch.Tensor] = None,
                     generator: Optional[torch.Generator] = None, rtol: Optional[float] = None,
                     raise_error: bool = True) -> ProjectorReport:
    r"""Check that ``P`` (a :class:`equiproj.Projector`) is the orthogonal projection onto the
    equivariant weights, on ``n`` random weights of ``dtype``:

    * idempotent: ``P(P(W)) = P(W)``;
    * self-adjoint: ``<P(A), B> = <A, P(B)>`` (so, with idempotence, orthogonal);
    * equivariant image: ``g . P(W) = P(W)`` for every element (finite groups and exact grid
      actions) or sampled elements (continuous groups on linear maps);
    * ``P.dim`` equals the character inner product ``\int_G chi_out(g) chi_in(g) dg`` (times the
      grid's character for kernels; exact quadrature for continuous groups).

    Examples
    --------
    >>> from equiproj import LinearProjector
    >>> from equiproj.groups import dihedral
    >>> G = dihedral(3)
    >>> r = assert_projector(LinearProjector(2 * G.regular(), G.standard() + G.trivial()))
    >>> r.passed, r.dim == r.character_dim
    (True, True)
    """
    tol = tolerance(dtype) if rtol is None else float(rtol)
    gen = generator or torch.Generator().manual_seed(0)
    shape = tuple(P.action.weight_shape)
    W = torch.randn(n, *shape, generator=gen, dtype=torch.float64).to(dtype)
    V = torch.randn(n, *shape, generator=gen, dtype=torch.float64).to(dtype)
    PW = P.project(W)
    scale = float(torch.linalg.vector_norm(PW)) or 1.0
    idem = float(torch.linalg.vector_norm(P.project(PW) - PW)) / scale
    a = (P.project(W) * V).sum(dtype=torch.float64)
    b = (W * P.project(V)).sum(dtype=torch.float64)
    adj = float((a - b).abs()) / (float(torch.linalg.vector_norm(W)) * float(torch.linalg.vector_norm(V)) or 1.0)
    notes = []
    eq_err = None
    G = P.group
    if elements is None:
        elements = G.elements() if G.is_finite else G.sample(4, generator=gen)
    try:
        moved = P.action.act(elements, PW)  # (n_g, n, *shape)
        eq_err = float(torch.linalg.vector_norm(moved - PW.unsqueeze(0)) / (scale * math.sqrt(moved.shape[0])))
    except (ValueError, NotImplementedError) as e:
        notes.append(f"equivariance of the image not checked: {e}")
    cdim = _character_dim(P)
    if cdim is None:
        notes.append("no character formula for this weight space: dimension not checked")
    ok = idem <= tol and adj <= tol and (eq_err is None or eq_err <= 10 * tol) and (cdim is None or cdim == P.dim)
    rep = ProjectorReport(passed=ok, idempotence_error=idem, adjointness_error=adj, equivariance_error=eq_err,
                          dim=P.dim, character_dim=cdim, rtol=tol, dtype=str(dtype), notes=notes)
    if raise_error and not ok:
        raise AssertionError(f"{P!r} is not the orthogonal projection onto the equivariant weights in {dtype}: {rep}")
    return rep


def check_layer(layer, x: Optional[torch.Tensor] = None, batch: int = 4, size: int = 9,
                elements: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None,
                rtol: Optional[float] = None, raise_error: bool = False) -> EquivarianceReport:
    """:func:`assert_equivariant` for a declared ``Linear`` / ``ConvNd`` layer with its own
    representations (``layer.in_rep``, ``layer.out_rep`` or its declaration), on ``x`` or on
    random inputs (``batch`` of them; feature maps of side ``size``) of the layer's dtype.

    A layer with exact grid actions is checked on every element of a finite group; a steerable
    one only approximates equivariance on the grid, so expect an error above the tolerance.
    """
    from .actions import feature_map_action
    from .regularise import SPEC_ATTR

    spec = getattr(layer, SPEC_ATTR, None)
    if spec is None:
        raise ValueError(f"{type(layer).__name__} is not declared: call equiproj.declare(layer, in_rep, out_rep) first")
    A = spec.projector.action
    in_rep: Representation = getattr(layer, "in_rep", None) or A.in_rep
    out_rep: Representation = getattr(layer, "out_rep", None) or A.out_rep
    p = next(layer.parameters())
    gen = generator or torch.Generator().manual_seed(0)
    kernel = getattr(A, "kernel_size", None)
    if x is None:
        spatial = () if kernel is None else (size,) * len(kernel)
        x = torch.randn(batch, in_rep.dim, *spatial, generator=gen, dtype=torch.float64).to(p.dtype)
        if kernel is None:
            x = x.reshape(batch, in_rep.dim)
    x = x.to(p.device)
    if kernel is None:
        ai, ao = in_rep, out_rep
    else:
        ai, ao = feature_map_action(in_rep), feature_map_action(out_rep)
    return assert_equivariant(layer, x, ai, ao, group=in_rep.group, elements=elements, generator=gen, rtol=rtol,
                              raise_error=raise_error)


try:  # the fixture, where pytest is installed
    import pytest as _pytest

    @_pytest.fixture(params=[torch.float64, torch.float32], ids=["float64", "float32"])
    def dtype(request):
        """Run a numerical test in float64 and in float32 (with :func:`tolerance` for each)."""
        return request.param
except ImportError:  # pragma: no cover
    dtype = None
