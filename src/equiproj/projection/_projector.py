"""Projectors onto the equivariant weights of a layer (private module)."""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch

from ..actions import HomAction, WeightAction
from ..groups import Representation
from ..norms import get_norm
from ._base import ROUTES, PairProjector, RouteNotApplicable
from ._basis import BasisPair
from ._spatial import SpatialPair, permutation_table
from ._spectral import SpectralPair

__all__ = ["Projector", "LinearProjector", "make_pair", "clear_pair_cache"]

_PAIR_CLASSES = {"spatial": SpatialPair, "spectral": SpectralPair, "basis": BasisPair}


#: Pair projectors are shared by every layer with the same pair of field types.
_PAIR_CACHE: Dict[tuple, PairProjector] = {}


def clear_pair_cache() -> None:
    """Forget all shared pair projectors (they are rebuilt on next use)."""
    _PAIR_CACHE.clear()


def make_pair(t_out: Representation, t_in: Representation, route: str) -> PairProjector:
    """The (cached) pair projector of ``route``; ``'auto'`` takes the cheapest that applies.

    Costs per weight entry: spatial 40 for permutation pairs (orbit means), else
    ``|G| (d_out + d_in)``; spectral ``2 (d_out + d_in) + 40``; basis ``2 dim + 8`` where it
    applies (``d_out d_in <= 1024`` for ``'auto'``). The constants were calibrated with
    ``benchmarks/bench_projection.py`` on a CPU.
    """
    key = (route, t_out.group.key, t_out.key, t_in.key)
    pair = _PAIR_CACHE.get(key)
    if pair is not None:
        return pair
    if getattr(t_in, "steerable", False):
        pair = _steerable_pair(t_out, t_in, route)
    elif route != "auto":
        pair = _PAIR_CLASSES[route](t_out, t_in)
    else:
        options = []
        for name in ("spatial", "spectral"):
            c = _PAIR_CLASSES[name].cost(t_out, t_in)
            if c is not None:
                options.append((c, name, None))
        if BasisPair.cost(t_out, t_in) is not None or not options:
            try:
                b = make_pair(t_out, t_in, "basis")
                options.append((b.entry_cost(), "basis", b))
            except RouteNotApplicable:
                pass
        options.sort(key=lambda o: o[0])
        for _, name, built in options:
            try:
                pair = built if built is not None else make_pair(t_out, t_in, name)
                break
            except RouteNotApplicable:
                continue
        else:  # pragma: no cover
            raise RouteNotApplicable(f"no route applies to {t_out.name} <- {t_in.name}")
    _PAIR_CACHE[key] = pair
    return pair


def _steerable_pair(t_out: Representation, t_in, route: str) -> PairProjector:
    """The basis route on the steerable subspace (the only route for such kernels)."""
    if route in ("spatial", "spectral"):
        raise RouteNotApplicable(
            f"{t_out.group.name} does not act exactly on a {'x'.join(map(str, t_in.size))} grid, so route "
            f"'{route}' does not apply: use route='basis' (the steerable subspace) or 'auto'"
        )
    from ..actions import steerable_basis

    return BasisPair(t_out, t_in, Q=steerable_basis(t_out, t_in.tau, t_in.size, t_in.config))


class _SelfAdjoint(torch.autograd.Function):
    """``M -> P(M)`` with the backward ``g -> P(g)`` (``P`` is an orthogonal projection)."""

    @staticmethod
    def forward(ctx, M, projector):
        ctx.projector = projector
        return projector._project_matrix(M)

    @staticmethod
    def backward(ctx, g):
        return ctx.projector._project_matrix(g.contiguous()), None


class Projector:
    r"""Exact orthogonal projection of layer weights onto the equivariant subspace.

    For the action ``g . W`` of a compact group on the weights, the Reynolds operator

    .. math:: P(W) = \int_G g . W \, dg

    is linear, idempotent and self-adjoint for the Frobenius inner product, and its image is
    the space of equivariant weights. The weight matrix is cut into blocks by pairs of field
    types and each block is projected by a small per-pair projector (route ``'spatial'``,
    ``'spectral'`` or ``'basis'``; ``'auto'`` takes the cheapest that applies, per pair).

    Parameters
    ----------
    action : WeightAction
        How the group acts on the weights (e.g. :class:`equiproj.actions.HomAction`).
    route : {'auto', 'spatial', 'spectral', 'basis'}
        The algorithm. ``'spatial'`` needs a finite group; ``'basis'`` needs small field pairs
        (``d_out * d_in <= 4096``); ``'spectral'`` applies to every representation built from
        irreps.
    pair_factory : callable, optional
        ``(t_out, t_in, route) -> PairProjector``, for actions with their own subspaces.
    """

    def __init__(self, action: WeightAction, route: str = "auto", pair_factory=None):
        if route not in ROUTES:
            raise ValueError(f"unknown route {route!r}: choose one of {', '.join(ROUTES)}")
        self.action = action
        self.route = route
        self.group = action.group
        factory = pair_factory or make_pair
        lo, li = action.out_layout, action.in_layout
        self._pairs: Dict[Tuple[int, int], PairProjector] = {}
        for a, to in enumerate(lo.types):
            for b, ti in enumerate(li.types):
                self._pairs[(a, b)] = factory(to, ti, route)
        self._bias: Optional["Projector"] = None
        self._cache: Dict = {}
        self._orbit = self._build_orbit_plan(self._pairs)
        self._orbit_any = None

    def _build_orbit_plan(self, pairs):
        """``(ids, counts)`` when every pair is an orbit mean (permutation fields, route
        ``'spatial'``) or zero: entry ``k`` of the flattened matrix belongs to orbit ``ids[k]``,
        and ``P(W)`` is the mean of ``W`` over each orbit (entries of zero pairs form one orbit
        whose mean is taken as zero: ``counts`` is 0 there). ``None`` otherwise."""
        lo, li = self.action.out_layout, self.action.in_layout
        for p in pairs.values():
            if p.dim != 0 and getattr(p, "mode", None) != "orbit":
                return None
        R, C = self.action.matrix_shape
        ids = torch.empty(R, C, dtype=torch.long)
        counts: List[torch.Tensor] = []
        offset = 0
        for a, (so, no, do) in enumerate(zip(lo.slices, lo.counts, lo.dims)):
            for b, (si, ni, di) in enumerate(zip(li.slices, li.counts, li.dims)):
                p = pairs[(a, b)]
                if p.dim == 0:
                    ids[so, si] = offset
                    counts.append(torch.zeros(1, dtype=torch.float64))
                    offset += 1
                    continue
                copy = torch.arange(no * ni).reshape(no, 1, ni, 1) * p.dim
                orbit = p._orbit.reshape(1, do, 1, di)
                ids[so, si] = (offset + copy + orbit).reshape(no * do, ni * di)
                c = torch.bincount(p._orbit, minlength=p.dim).to(torch.float64)
                counts.append(c.repeat(no * ni))
                offset += no * ni * p.dim
        if lo.inverse is not None:
            ids = ids.index_select(0, lo.inverse)
        if li.inverse is not None:
            ids = ids.index_select(1, li.inverse)
        return ids.reshape(-1), torch.cat(counts)

    def orbit_plan(self, any_route: bool = False):
        """The orbit plan ``(ids, counts)`` of the flattened weight matrix, or ``None`` (see
        :meth:`_build_orbit_plan`); used by the batched penalty and the fast path of :meth:`project`.

        With ``any_route`` the plan is also given when the projector chose its routes itself
        (``route='auto'``) and every pair of field types is one of permutation fields of a finite
        group (the same projection, computed as orbit means); an explicit route is kept."""
        if self._orbit is not None or not any_route or self.route != "auto":
            return self._orbit
        if self._orbit_any is None:
            lo, li = self.action.out_layout, self.action.in_layout
            plan = False
            if self.group.is_finite and all(permutation_table(t) is not None for t in lo.types + li.types):
                try:
                    pairs = {(a, b): make_pair(to, ti, "spatial") for a, to in enumerate(lo.types)
                             for b, ti in enumerate(li.types)}
                    plan = self._build_orbit_plan(pairs) or False
                except RouteNotApplicable:  # pragma: no cover
                    plan = False
            self._orbit_any = plan
        return self._orbit_any or None

    @property
    def plan_key(self) -> tuple:
        """Equal for projectors that compute the same map on weights of the same shape."""
        lo, li = self.action.out_layout, self.action.in_layout
        return (type(self.action).__name__, tuple(self.action.weight_shape), self.action.matrix_shape,
                tuple(sorted((k, id(p)) for k, p in self._pairs.items())), lo.counts, li.counts,
                None if lo.perm is None else tuple(lo.perm.tolist()), None if li.perm is None else tuple(li.perm.tolist()))

    # ------------------------------------------------------------------ info
    @property
    def dim(self) -> int:
        """Dimension of the space of equivariant weights."""
        lo, li = self.action.out_layout, self.action.in_layout
        return sum(lo.counts[a] * li.counts[b] * p.dim for (a, b), p in self._pairs.items())

    @property
    def total_dim(self) -> int:
        """Dimension of the whole weight space."""
        return self.action.matrix_shape[0] * self.action.matrix_shape[1]

    @property
    def routes(self) -> Dict[Tuple[str, str], str]:
        """The route used for every pair of field types, ``{(out type, in type): route}``."""
        lo, li = self.action.out_layout, self.action.in_layout
        return {(lo.types[a].name, li.types[b].name): p.route for (a, b), p in self._pairs.items()}

    def state_bytes(self) -> int:
        """Bytes of the cached matrices of all pair projectors (float64 masters)."""
        return sum(p.state_bytes() for p in self._pairs.values())

    def __repr__(self) -> str:
        routes = sorted(set(self.routes.values()))
        return (f"{type(self).__name__}({self.action.describe()}, route={self.route!r} -> {'/'.join(routes)}, "
                f"dim={self.dim}/{self.total_dim})")

    # ------------------------------------------------------------------ projection
    def project(self, W: torch.Tensor) -> torch.Tensor:
        """The equivariant part ``P(W)`` (same shape as ``W``; leading batch dims allowed).

        Differentiable; since ``P`` is self-adjoint, the gradient of ``P(W)`` is ``P`` applied to
        the incoming gradient, which the backward pass computes directly (one projection)."""
        self.action.check_shape(W)
        M = self.action.to_matrix(W)
        if torch.is_grad_enabled() and M.requires_grad:
            return self.action.from_matrix(_SelfAdjoint.apply(M, self))
        return self.action.from_matrix(self._project_matrix(M))

    __call__ = project

    def split(self, W: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(P(W), W - P(W))``: equivariant and non-equivariant parts."""
        P = self.project(W)
        return P, W - P

    def defect(self, W: torch.Tensor, norm="fro") -> torch.Tensor:
        """``||W - P(W)||`` in the given norm, of the matrix view of the weights.

        ``norm`` is a name understood by :func:`equiproj.norms.get_norm` or a norm object.
        """
        self.action.check_shape(W)
        n = get_norm(norm)
        if n.kernel_norm:
            return n(W - self.project(W))
        M = self.action.to_matrix(W)
        return n(M - self._project_matrix(M))

    def as_matrix(self, W: torch.Tensor) -> torch.Tensor:
        """The matrix view ``(..., dim_out, dim_in')`` of the weights that norms are applied to."""
        self.action.check_shape(W)
        return self.action.to_matrix(W)

    def bias_projector(self) -> "Projector":
        """Projector for biases: onto the invariant vectors of the layer's output representation
        (``action.bias_rep``), as ``d x 1`` maps."""
        if self._bias is None:
            rep = self.action.bias_rep
            # permutation fields: the orbit route, so that biases join the one-gather plan of the penalty
            route = "spatial" if (self.group.is_finite and all(permutation_table(f) is not None for f, _ in
                                                                rep.field_blocks())) else "auto"
            self._bias = LinearProjector(self.group.trivial(), rep, route=route)
        return self._bias

    def project_bias(self, b: torch.Tensor) -> torch.Tensor:
        """Equivariant part of a bias ``b`` of shape ``(..., dim_out)``."""
        rep = self.action.bias_rep
        if b.shape[-1:] != (rep.dim,):
            raise ValueError(f"bias of shape {tuple(b.shape)} does not match the output representation "
                             f"{rep.name} of dimension {rep.dim}")
        return self.bias_projector().project(b[..., None])[..., 0]

    def _index(self, name: str, t: Optional[torch.Tensor], device) -> Optional[torch.Tensor]:
        if t is None:
            return None
        key = (name, str(device))
        if key not in self._cache:
            self._cache[key] = t.to(device)
        return self._cache[key]

    def _project_matrix(self, M: torch.Tensor) -> torch.Tensor:
        if self._orbit is not None:  # one index_add and one gather for the whole matrix
            ids = self._index("orbit_ids", self._orbit[0], M.device)
            inv = self._cache.get(("orbit_inv", str(M.device), M.dtype))
            if inv is None:
                c = self._orbit[1]
                inv = torch.where(c > 0, 1.0 / c.clamp_min(1), torch.zeros_like(c)).to(device=M.device, dtype=M.dtype)
                self._cache[("orbit_inv", str(M.device), M.dtype)] = inv
            flat = M.reshape(*M.shape[:-2], -1)
            sums = flat.new_zeros(*flat.shape[:-1], inv.shape[0]).index_add(-1, ids, flat)
            return (sums * inv).index_select(-1, ids).reshape(M.shape)
        lo, li = self.action.out_layout, self.action.in_layout
        if len(self._pairs) == 1 and lo.perm is None and li.perm is None:  # one pair of field types
            pair = self._pairs[(0, 0)]
            if pair.dim == 0:
                return torch.zeros_like(M)
            lead = M.shape[:-2]
            X = M.reshape(*lead, lo.counts[0], lo.dims[0], li.counts[0], li.dims[0])
            return pair.project(X).reshape(M.shape)
        po = self._index("po", lo.perm, M.device)
        pi = self._index("pi", li.perm, M.device)
        if po is not None:
            M = M.index_select(-2, po)
        if pi is not None:
            M = M.index_select(-1, pi)
        lead = M.shape[:-2]
        rows: List[torch.Tensor] = []
        for a, (so, no, do) in enumerate(zip(lo.slices, lo.counts, lo.dims)):
            cols = []
            for b, (si, ni, di) in enumerate(zip(li.slices, li.counts, li.dims)):
                pair = self._pairs[(a, b)]
                block = M[..., so, si]
                if pair.dim == 0:
                    cols.append(torch.zeros_like(block))
                    continue
                X = block.reshape(*lead, no, do, ni, di)
                cols.append(pair.project(X).reshape(*lead, no * do, ni * di))
            rows.append(cols[0] if len(cols) == 1 else torch.cat(cols, dim=-1))
        P = rows[0] if len(rows) == 1 else torch.cat(rows, dim=-2)
        if po is not None:
            P = P.index_select(-2, self._index("po_inv", lo.inverse, M.device))
        if pi is not None:
            P = P.index_select(-1, self._index("pi_inv", li.inverse, M.device))
        return P


class LinearProjector(Projector):
    r"""Projector onto ``Hom_G(V_in, V_out)`` for weights ``W`` of shape ``(..., dim_out, dim_in)``.

    ``P(W) = \int_G rho_out(g) W rho_in(g)^T dg``, computed exactly by the chosen route.

    Parameters
    ----------
    in_rep, out_rep : Representation
        Representations on the input and output features (same group).
    route : {'auto', 'spatial', 'spectral', 'basis'}

    Examples
    --------
    >>> import torch
    >>> from equiproj import LinearProjector
    >>> from equiproj.groups import cyclic
    >>> G = cyclic(8)
    >>> P = LinearProjector(4 * G.regular(), 2 * G.regular())
    >>> W = torch.randn(16, 32, dtype=torch.float64)
    >>> PW = P.project(W)
    >>> bool(torch.allclose(P.project(PW), PW))          # idempotent
    True
    >>> g = G.elements()
    >>> gPW = P.action.act(g, PW)                        # rho_out(g) P(W) rho_in(g)^T
    >>> bool(torch.allclose(gPW, PW.expand_as(gPW)))     # equivariant
    True
    >>> P.dim, P.total_dim                               # 8 circulant 8 x 8 blocks
    (64, 512)
    """

    def __init__(self, in_rep: Representation, out_rep: Representation, route: str = "auto"):
        super().__init__(HomAction(in_rep, out_rep), route=route)
        self.in_rep, self.out_rep = in_rep, out_rep
