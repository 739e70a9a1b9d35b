r"""PER: a projection penalty with dense per-layer projection matrices (private module)."""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from ..actions import HomAction, KernelAction, WeightAction
from ..groups import Group
from ..regularise import declared_layers
from ._base import Method, register_method
from ._util import check_options, layer_bias, layer_weight, nonneg_float

__all__ = ["PERMethod", "dense_projector", "dense_bias_projector", "DenseMatrixTooLarge", "check_subgroup"]

_F64 = torch.float64


def _fmt_bytes(x: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if x < 1000:
            return f"{x:.3g} {unit}"
        x /= 1000
    return f"{x:.3g} TB"


class DenseMatrixTooLarge(ValueError):
    """A dense projection matrix would exceed the memory limit (``max_bytes``)."""


def _column_matrices(action: WeightAction, g: torch.Tensor, dtype, device) -> torch.Tensor:
    """``rho_in'(g)``: the representation on the columns of the weight matrix, ``(n, d, d)``."""
    if isinstance(action, HomAction):
        return action.in_rep(g, dtype=dtype).to(device)
    if isinstance(action, KernelAction) and action.exact:
        Ri = action.in_rep(g, dtype=_F64)
        Rg = action.grid(g, dtype=_F64)
        K = torch.einsum("nab,ncd->nacbd", Ri, Rg).reshape(g.shape[0], Ri.shape[-1] * Rg.shape[-1], -1)
        return K.to(dtype=dtype, device=device)
    raise ValueError(
        f"{action.describe()}: the group does not act on the kernel grid by permutations, so there is no dense "
        "average of Kronecker products; PER supports linear layers and kernels of grid groups (C2, C4, D4, ...)"
    )


def _band_limit(action: WeightAction) -> int:
    return action.out_rep.band_limit + action.in_rep.band_limit


def _elements(group: Group, band_limit: int, subgroup: Optional[torch.Tensor]):
    if subgroup is None:
        return group.quadrature(band_limit)
    n = subgroup.shape[0]
    return subgroup, torch.full((n,), 1.0 / n, dtype=_F64)


def dense_projector(action: WeightAction, subgroup: Optional[torch.Tensor] = None, dtype=_F64,
                    device=None) -> torch.Tensor:
    r"""The dense ``D x D`` matrix of ``vec(W) -> vec(P(W))``, ``D`` the number of weight entries.

    ``P = sum_i w_i rho_out(g_i) (x) rho_in'(g_i)`` over the elements of a finite group or
    subgroup (weights ``1/|H|``), or the quadrature ``G.quadrature(L)`` of a continuous group
    with ``L = band_limit(rho_out) + band_limit(rho_in)`` (exact for these band-limited
    representations). ``vec`` is the row-major flattening of the weight matrix
    ``action.to_matrix(W)``; ``rho_in'`` is ``rho_in (x) grid`` for kernels.

    Examples
    --------
    >>> import torch
    >>> from equiproj import LinearProjector
    >>> from equiproj.groups import cyclic
    >>> G = cyclic(4)
    >>> P = LinearProjector(G.regular(), G.regular())
    >>> M = dense_projector(P.action)
    >>> W = torch.randn(4, 4, dtype=torch.float64)
    >>> bool(torch.allclose((M @ W.reshape(-1)).reshape(4, 4), P.project(W)))
    True
    """
    G = action.group
    g, w = _elements(G, _band_limit(action), subgroup)
    w = w.to(dtype=dtype, device=device)
    Ro = action.out_rep(g, dtype=dtype).to(device)
    Ri = _column_matrices(action, g, dtype, device)
    do, di = Ro.shape[-1], Ri.shape[-1]
    P = torch.empty(do, di, do, di, dtype=dtype, device=device)
    for a in range(do):  # row block a: P[a, b, c, d] = sum_i w_i Ro_i[a, c] Ri_i[b, d]
        P[a] = torch.einsum("n,nc,nbd->bcd", w, Ro[:, a, :], Ri)
    return P.reshape(do * di, do * di)


def dense_bias_projector(action: WeightAction, subgroup: Optional[torch.Tensor] = None, dtype=_F64,
                         device=None) -> torch.Tensor:
    """The dense ``d x d`` projection onto the invariant vectors of ``action.bias_rep``."""
    rep = action.bias_rep
    g, w = _elements(action.group, rep.band_limit, subgroup)
    return torch.einsum("n,nij->ij", w.to(dtype=dtype, device=device), rep(g, dtype=dtype).to(device))


def check_subgroup(group: Group, elements, label: str = "subgroup") -> torch.Tensor:
    """Validate a list of elements of ``group`` as a finite subgroup (identity, closure, no
    repetition); returns them as a batch of elements."""
    g = group.as_elements(elements if isinstance(elements, torch.Tensor) or group.is_finite
                         else torch.as_tensor(elements, dtype=_F64))
    n = g.shape[0]
    if n == 0:
        raise ValueError(f"{label}: no elements given")
    if group.is_finite:
        vals = g.tolist()
        if len(set(vals)) != n:
            raise ValueError(f"{label}: repeated elements {vals}")
        if 0 not in vals:
            raise ValueError(f"{label}: {vals} does not contain the identity (element 0) of {group.name}")
        prod = set(group.table[g][:, g].reshape(-1).tolist())
        if not prod <= set(vals):
            raise ValueError(f"{label}: {vals} is not closed under the product of {group.name} "
                             f"(e.g. it misses {sorted(prod - set(vals))[:4]})")
        return g
    M = group.standard()(g, dtype=_F64)
    d = M.shape[-1]
    eye = torch.eye(d, dtype=_F64)
    if float((M - eye).abs().amax(dim=(-1, -2)).min()) > 1e-8:
        raise ValueError(f"{label}: the elements do not contain the identity of {group.name}")
    diff = (M[:, None] - M[None]).abs().amax(dim=(-1, -2))
    if bool((diff + 2 * torch.eye(n, dtype=_F64) < 1e-8).any()):
        raise ValueError(f"{label}: repeated elements")
    prods = (M[:, None] @ M[None]).reshape(-1, 1, d, d)
    miss = (prods - M[None]).abs().amax(dim=(-1, -2)).min(dim=1).values
    if float(miss.max()) > 1e-8:
        raise ValueError(f"{label}: the elements are not closed under the product of {group.name}")
    return g


@register_method("per")
class PERMethod(Method):
    r"""PER (Kim et al. 2023): projection penalties with dense per-layer projection matrices.

    For every declared layer ``l`` (weight matrix ``W_l = action.to_matrix(weight)`` with
    ``D_l`` entries, bias ``b_l``) and every candidate symmetry ``s`` (a subgroup ``H_s`` of the
    declared group, with weight ``alpha_s``):

    .. math::

        R = \lambda \sum_l \sum_s \alpha_s \Big( \|\mathrm{vec}(W_l) - P_{s,l}\,\mathrm{vec}(W_l)\|_2^2
            + \|b_l - Q_{s,l} b_l\|_2^2 \Big)

    where ``P_{s,l}`` is the **dense** ``D_l x D_l`` matrix
    ``mean_{h in H_s} rho_out(h) (x) rho_in'(h)`` (:func:`dense_projector`; the quadrature of
    the group for the whole of a continuous group) and ``Q_{s,l}`` the dense ``d_out x d_out``
    projection of the bias onto the ``H_s``-invariant vectors (only with ``include_bias``,
    default each layer's ``spec.include_bias``). So ``D_l`` counts the weight entries only;
    the bias has its own small matrix. The result equals the projection penalty
    ``||W - P(W)||_F^2`` of :class:`equiproj.ProjectionRegulariser` (squared) for the whole
    group, but the matrices are built and stored explicitly, per layer and per candidate, as a
    dense implementation would: ``4 D_l^2`` bytes in float32 (memory ``O(D^2)``, time
    ``O(D^2)`` per step against ``O(D)`` for the projectors of :mod:`equiproj.projection`).
    It exists to compare memory and time.

    Parameters
    ----------
    model : nn.Module
        With declared layers (linear layers, or kernels of groups that map the grid onto itself).
    lambda_ : float
        Overall weight (default ``1e-2``).
    subgroups : list, optional
        Candidate symmetries: each ``None`` (the whole declared group) or the elements of a
        subgroup of the declared group (e.g. ``[0, 2, 4, 6]``, C4 inside C8); checked for the
        identity and closure. Default ``[None]``.
    alphas : list of float, optional
        One weight per candidate (default all 1).
    include_bias : bool, optional
        Override every layer's ``spec.include_bias``.
    max_bytes : float
        Refuse (:class:`DenseMatrixTooLarge`, naming the layer and the size) when one dense
        matrix, or all of them together, would need more (default 2e9 bytes).

    Examples
    --------
    >>> import torch
    >>> from equiproj.baselines import make_method
    >>> from equiproj.nn import RepLinear
    >>> from equiproj.groups import cyclic
    >>> G = cyclic(8)
    >>> model = torch.nn.Sequential(RepLinear(G.regular(), G.regular()))
    >>> m = make_method("per", model, subgroups=[None, [0, 2, 4, 6]], alphas=[1.0, 0.5])
    >>> [tuple(M.shape) for M in m.matrices["0"]]
    [(64, 64), (64, 64)]
    >>> m.state_bytes()                      # 2 dense 64 x 64 float32 matrices + 2 bias ones
    33280
    """

    name = "per"
    needs_batch = False
    weight_option = "lambda_"
    _options = ("lambda_", "subgroups", "alphas", "include_bias", "max_bytes")

    def __init__(self, model: nn.Module, lambda_: float = 1e-2, subgroups: Optional[Sequence] = None,
                 alphas: Optional[Sequence[float]] = None, include_bias: Optional[bool] = None,
                 max_bytes: float = 2e9, **unknown):
        super().__init__(model)
        check_options(self.name, unknown, self._options)
        self.lambda_ = nonneg_float(self.name, "lambda_", lambda_)
        self.max_bytes = nonneg_float(self.name, "max_bytes", max_bytes)
        self.layers = declared_layers(model)
        if not self.layers:
            raise ValueError(f"method {self.name!r}: the model has no declared layers: build it from equiproj.nn "
                             "layers or call equiproj.declare_model(model, group) first")
        groups = {spec.group for _, _, spec in self.layers}
        subgroups = [None] if subgroups is None else list(subgroups)
        if not subgroups:
            raise ValueError(f"method {self.name!r}: option subgroups must list at least one candidate, got []")
        if alphas is None:
            alphas = [1.0] * len(subgroups)
        alphas = list(alphas)
        if len(alphas) != len(subgroups):
            raise ValueError(f"method {self.name!r}: option alphas must have one weight per candidate subgroup "
                             f"({len(subgroups)}), got {len(alphas)}")
        self.alphas = [nonneg_float(self.name, f"alphas[{i}]", a) for i, a in enumerate(alphas)]
        if any(s is not None for s in subgroups) and len(groups) != 1:
            raise ValueError(f"method {self.name!r}: subgroups need all declared layers to share one group, got "
                             f"{sorted(g.name for g in groups)}")
        G = next(iter(groups))
        self.subgroups = [None if s is None else check_subgroup(G, s, f"method 'per': subgroups[{i}]")
                          for i, s in enumerate(subgroups)]
        self.include_bias = include_bias
        self._check_memory()
        self.matrices: Dict[str, List[torch.Tensor]] = {}
        self.bias_matrices: Dict[str, Optional[List[torch.Tensor]]] = {}
        for name, m, spec in self.layers:
            w = layer_weight(m, spec)
            key = name or "<model>"
            self.matrices[key] = [dense_projector(spec.projector.action, s, dtype=w.dtype, device=w.device)
                                  for s in self.subgroups]
            b = layer_bias(m, spec, self.include_bias)
            self.bias_matrices[key] = None if b is None else [
                dense_bias_projector(spec.projector.action, s, dtype=b.dtype, device=b.device) for s in self.subgroups]

    def _check_memory(self) -> None:
        total, biggest = 0, None
        n = len(self.subgroups)
        for name, m, spec in self.layers:
            action = spec.projector.action
            if isinstance(action, KernelAction) and not action.exact:
                raise ValueError(f"method {self.name!r}: layer '{name}' is a steerable kernel of {action.group.name}: "
                                 "the group does not act on the kernel grid by permutations, so PER has no dense "
                                 "projection matrix for it; use method 'projection'")
            D = action.matrix_shape[0] * action.matrix_shape[1]
            w = layer_weight(m, spec)
            one = D * D * w.element_size()
            if one > self.max_bytes:
                raise DenseMatrixTooLarge(
                    f"method {self.name!r}: the dense projection matrix of layer '{name}' is {D} x {D} "
                    f"({_fmt_bytes(one)} in {w.dtype}), above max_bytes = {_fmt_bytes(self.max_bytes)}; "
                    "use method 'projection' (the same penalty without dense matrices) or raise max_bytes"
                )
            total += n * one
            if biggest is None or one > biggest[1]:
                biggest = (name, one, D)
        if total > self.max_bytes:
            raise DenseMatrixTooLarge(
                f"method {self.name!r}: the dense projection matrices of all {len(self.layers)} layers "
                f"({n} candidate(s) each) need {_fmt_bytes(total)}, above max_bytes = {_fmt_bytes(self.max_bytes)} "
                f"(the largest, of layer '{biggest[0]}', is {biggest[2]} x {biggest[2]}, {_fmt_bytes(biggest[1])}); "
                "use method 'projection' or raise max_bytes"
            )

    def state_bytes(self) -> int:
        """Bytes of all stored dense matrices."""
        mats = [M for Ms in self.matrices.values() for M in Ms]
        mats += [M for Ms in self.bias_matrices.values() if Ms for M in Ms]
        return sum(M.numel() * M.element_size() for M in mats)

    @staticmethod
    def _like(Ms: List[torch.Tensor], x: torch.Tensor) -> List[torch.Tensor]:
        if Ms[0].dtype != x.dtype or Ms[0].device != x.device:
            Ms[:] = [M.to(dtype=x.dtype, device=x.device) for M in Ms]
        return Ms

    def project(self, name: str, W: torch.Tensor, candidate: int = 0) -> torch.Tensor:
        """The dense projection of a weight ``W`` of layer ``name`` (same shape as ``W``)."""
        action = dict((n or "<model>", s) for n, _, s in self.layers)[name].projector.action
        M = action.to_matrix(W)
        P = self._like(self.matrices[name], W)[candidate]
        return action.from_matrix((P @ M.reshape(-1)).reshape(M.shape))

    def project_bias(self, name: str, b: torch.Tensor, candidate: int = 0) -> torch.Tensor:
        """The dense projection of a bias of layer ``name`` onto the candidate's invariant vectors."""
        Ms = self.bias_matrices[name]
        if Ms is None:
            raise ValueError(f"layer '{name}' has no bias matrices (no bias, or include_bias=False)")
        return self._like(Ms, b)[candidate] @ b

    def terms(self) -> Dict[str, torch.Tensor]:
        """Per layer ``sum_s alpha_s ||vec W - P_s vec W||^2 (+ bias)`` (differentiable, before ``lambda_``)."""
        res = {}
        for name, m, spec in self.layers:
            key = name or "<model>"
            v = spec.projector.action.to_matrix(layer_weight(m, spec)).reshape(-1)
            t = None
            for a, P in zip(self.alphas, self._like(self.matrices[key], v)):
                r = a * (v - P @ v).pow(2).sum()
                t = r if t is None else t + r
            b = layer_bias(m, spec, self.include_bias)
            if b is not None and self.bias_matrices[key] is not None:
                for a, Q in zip(self.alphas, self._like(self.bias_matrices[key], b)):
                    t = t + a * (b - Q @ b).pow(2).sum()
            res[key] = t
        return res

    def penalty(self, batch=None) -> torch.Tensor:
        return self.lambda_ * torch.stack(list(self.terms().values())).sum()

    __call__ = penalty

    def __repr__(self):
        return (f"PERMethod(lambda_={self.lambda_}, {len(self.layers)} layers, {len(self.subgroups)} candidate(s), "
                f"{self.state_bytes() / 1e6:.3g} MB dense)")
