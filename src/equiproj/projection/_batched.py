r"""The Frobenius penalty of many layers in a few stacked calls (private module).

For a list of *entries* (a tensor of a layer with its projector, e.g. a weight, a split
parametrisation's ``B``, a bias) :class:`BatchedFrobenius` returns per layer the squared
Frobenius norms of the non-equivariant parts ``sum ||X - P(X)||^2`` and of the equivariant parts
``sum ||P(X)||^2``. The work is grouped by *projector plan*:

* entries whose projector is an orbit mean (permutation fields, route ``'spatial'``, see
  :meth:`Projector.orbit_plan`) are concatenated into one vector and projected with one
  ``index_add`` and one gather, whatever their shapes;
* every other entry is cut into copies of its pairs of field types; the copies of each pair
  projector, over all layers, are projected in one call.

Nothing is reassembled into matrices: the penalty only needs the per-layer sums, which one
``index_add`` per group collects. The index tables are built once and kept per device.

The Frobenius identity ``||X - P(X)||^2 = ||X||^2 - ||P(X)||^2`` (``P`` is an orthogonal
projection) is used when ``identity=True``: it spares the back-projection of the basis route
(``||P(x)|| = ||Q^T x||``) and the gather of the orbit route. Its rounding error is absolute,
``eps ||X||^2``, so it is safe for the squared norm (``'fro2'``), but not under a square root
near a zero defect (where every regularised model starts): the regulariser uses it for
``'fro2'`` only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ._basis import BasisPair

__all__ = ["BatchEntry", "BatchedFrobenius", "BatchedSplit"]


class _OrbitSquares(torch.autograd.Function):
    """Per-layer ``sum ||x - P x||^2`` and ``sum ||P x||^2`` of a flat vector of orbit-plan entries.

    ``P`` is an orthogonal projection, so the gradients are ``2 (x - P x)`` and ``2 P x``: the
    backward pass is one gather of the per-layer output gradients and two products, instead of
    differentiating through the scatter and the gather."""

    @staticmethod
    def forward(ctx, flat, ids, inv, seg_len, orb_len, e_perp, e_eq, size, need_eq):
        sums = flat.new_zeros(inv.shape[0]).index_add_(0, ids, flat)
        mean = sums * inv
        proj = mean.index_select(0, ids)
        r = flat - proj
        perp2 = flat.new_zeros(size).index_add_(0, e_perp, torch.stack([v.dot(v) for v in r.split(seg_len)]))
        eq2 = flat.new_zeros(size)
        if need_eq:
            eq2.index_add_(0, e_eq, _segment_sums(sums * mean, orb_len))
        ctx.save_for_backward(r, proj if need_eq else None, e_perp, e_eq)
        ctx.need_eq, ctx.seg_len = need_eq, seg_len
        return perp2, eq2

    @staticmethod
    def backward(ctx, g_perp, g_eq):
        r, proj, e_perp, e_eq = ctx.saved_tensors
        grad = r * _expand((2 * g_perp).index_select(0, e_perp), ctx.seg_len)
        if ctx.need_eq and g_eq is not None:
            grad = grad + proj * _expand((2 * g_eq).index_select(0, e_eq), ctx.seg_len)
        return grad, None, None, None, None, None, None, None, None


def _segment_sums(v: torch.Tensor, lengths: List[int]) -> torch.Tensor:
    """Sums of consecutive segments of ``v`` (far cheaper than an ``index_add`` into a few slots)."""
    return torch.stack([s.sum() for s in v.split(lengths)])


def _expand(values: torch.Tensor, lengths: List[int]) -> torch.Tensor:
    """``values[i]`` repeated ``lengths[i]`` times, concatenated."""
    return torch.cat([v.expand(n) for v, n in zip(values.unbind(0), lengths)])


class _PairSquares(torch.autograd.Function):
    """Per copy ``||X - P X||^2`` and ``||P X||^2`` for copies ``X`` (``(N, d_o, d_i)``) of one
    pair of field types; gradients ``2 (X - P X)`` and ``2 P X`` (``P`` is orthogonal)."""

    @staticmethod
    def forward(ctx, X, pair, need_eq):
        copies = getattr(pair, "project_copies", None)
        PX = copies(X) if copies is not None else pair.project(X[:, :, None, :])[:, :, 0, :]
        R = X - PX
        ctx.save_for_backward(R, PX if need_eq else None)
        ctx.need_eq = need_eq
        return (R * R).sum((1, 2)), (PX * PX).sum((1, 2))

    @staticmethod
    def backward(ctx, g_r, g_q):
        R, PX = ctx.saved_tensors
        grad = (2 * g_r)[:, None, None] * R
        if ctx.need_eq and g_q is not None:
            grad = grad + (2 * g_q)[:, None, None] * PX
        return grad, None, None


@dataclass(frozen=True)
class BatchEntry:
    """One tensor of one layer: ``projector`` acts on it (``bias``: through its bias projector),
    its squared residual counts towards layer ``layer``'s non-equivariant part when ``perp`` and
    its squared projection towards the equivariant part when ``eq``."""

    projector: object
    layer: int
    bias: bool = False
    perp: bool = True
    eq: bool = True

    @property
    def matrix_projector(self):
        return self.projector.bias_projector() if self.bias else self.projector


class BatchedFrobenius:
    """Squared Frobenius norms of the parts of many tensors, grouped by projector plan.

    ``batched(tensors)`` takes the tensors in the order of ``entries`` and returns
    ``(perp2, eq2)``, two tensors of shape ``(n_layers,)``.

    Examples
    --------
    >>> import torch
    >>> from equiproj import LinearProjector
    >>> from equiproj.groups import cyclic
    >>> P = LinearProjector(cyclic(4).regular(), 2 * cyclic(4).regular())
    >>> W1, W2 = torch.randn(8, 4, dtype=torch.float64), torch.randn(8, 4, dtype=torch.float64)
    >>> B = BatchedFrobenius([BatchEntry(P, 0), BatchEntry(P, 1)], n_layers=2)
    >>> perp2, eq2 = B([W1, W2])
    >>> bool(torch.allclose(perp2[1], (W2 - P.project(W2)).pow(2).sum()))
    True
    """

    def __init__(self, entries: Sequence[BatchEntry], n_layers: int, identity: bool = False):
        self.entries = list(entries)
        self.n_layers = int(n_layers)
        self.identity = bool(identity)
        L = self.n_layers
        self._orbit_entries: List[int] = []
        self._pair_entries: List[int] = []
        ids, counts, e_perp, e_eq = [], [], [], []
        self._seg_len: List[int] = []
        self._orb_len: List[int] = []
        offset = 0
        for i, e in enumerate(self.entries):
            P = e.matrix_projector
            plan = P.orbit_plan(any_route=True)
            if plan is None:
                self._pair_entries.append(i)
                continue
            self._orbit_entries.append(i)
            oid, c = plan
            ids.append(oid + offset)
            counts.append(c)
            n = oid.numel()
            self._seg_len.append(n)
            self._orb_len.append(c.numel())
            e_perp.append(e.layer if e.perp else L)
            e_eq.append(e.layer if e.eq else L)
            offset += c.numel()
        self._orbit = None
        if ids:
            c = torch.cat(counts)
            inv = torch.where(c > 0, 1.0 / c.clamp_min(1), torch.zeros_like(c))
            self._orbit = dict(ids=torch.cat(ids), inv=inv, e_perp=torch.tensor(e_perp, dtype=torch.long),
                               e_eq=torch.tensor(e_eq, dtype=torch.long))
        # pair groups: pair id -> (pair, [(entry, rows, cols, n_o, d_o, n_i, d_i)], copy layer tables)
        groups: Dict[int, list] = {}
        for i in self._pair_entries:
            e = self.entries[i]
            P = e.matrix_projector
            lo, li = P.action.out_layout, P.action.in_layout
            for a, (so, no, do) in enumerate(zip(lo.slices, lo.counts, lo.dims)):
                for b, (si, ni, di) in enumerate(zip(li.slices, li.counts, li.dims)):
                    pair = P._pairs[(a, b)]
                    g = groups.setdefault(id(pair), [pair, [], [], []])
                    g[1].append((i, so, si, no, do, ni, di))
                    g[2].append(torch.full((no * ni,), e.layer if e.perp else L, dtype=torch.long))
                    g[3].append(torch.full((no * ni,), e.layer if e.eq else L, dtype=torch.long))
        self._pairs = [(pair, blocks, torch.cat(lp), torch.cat(le)) for pair, blocks, lp, le in groups.values()]
        self._dev: Dict[Tuple[str, torch.dtype], dict] = {}

    @property
    def calls(self) -> int:
        """Number of stacked projection calls per evaluation."""
        return (self._orbit is not None) + len(self._pairs)

    def _tables(self, device, dtype) -> dict:
        key = (str(device), dtype)
        t = self._dev.get(key)
        if t is None:
            t = {}
            if self._orbit is not None:
                t["orbit"] = {k: (v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device))
                              for k, v in self._orbit.items()}
            t["pairs"] = [(lp.to(device), le.to(device)) for _, _, lp, le in self._pairs]
            t["perm"] = {}
            for i in self._pair_entries:
                P = self.entries[i].matrix_projector
                lo, li = P.action.out_layout, P.action.in_layout
                t["perm"][i] = (None if lo.perm is None else lo.perm.to(device),
                                None if li.perm is None else li.perm.to(device))
            self._dev[key] = t
        return t

    def __call__(self, tensors: Sequence[torch.Tensor], need_eq: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
        if len(tensors) != len(self.entries):
            raise ValueError(f"expected {len(self.entries)} tensors, got {len(tensors)}")
        ref = tensors[0]
        T = self._tables(ref.device, ref.dtype)
        L = self.n_layers
        perp2 = ref.new_zeros(L + 1)
        eq2 = ref.new_zeros(L + 1)
        if self._orbit is not None:
            o = T["orbit"]
            flat = torch.cat([tensors[i].reshape(-1) for i in self._orbit_entries])
            if self.identity:
                sums = flat.new_zeros(o["inv"].shape[0]).index_add(0, o["ids"], flat)
                sq = sums * (sums * o["inv"])  # ||P(x)||^2 per orbit: n_o * mean_o^2
                q2 = _segment_sums(sq, self._orb_len)
                x2 = torch.stack([v.dot(v) for v in flat.split(self._seg_len)])
                perp2 = perp2.index_add(0, o["e_perp"], x2 - q2)
                if need_eq:
                    eq2 = eq2.index_add(0, o["e_eq"], q2)
            else:
                p2, e2 = _OrbitSquares.apply(flat, o["ids"], o["inv"], self._seg_len, self._orb_len, o["e_perp"],
                                             o["e_eq"], L + 1, need_eq)
                perp2, eq2 = perp2 + p2, eq2 + e2
        if self._pairs:
            mats: Dict[int, torch.Tensor] = {}
            for i in self._pair_entries:
                e = self.entries[i]
                X = tensors[i]
                M = X[..., None] if e.bias else e.projector.action.to_matrix(X)
                po, pi = T["perm"][i]
                if po is not None:
                    M = M.index_select(-2, po)
                if pi is not None:
                    M = M.index_select(-1, pi)
                mats[i] = M
            for (pair, blocks, _, _), (lp, le) in zip(self._pairs, T["pairs"]):
                parts = [mats[i][so, si].reshape(no, do, ni, di).transpose(1, 2).reshape(no * ni, do, di)
                         for i, so, si, no, do, ni, di in blocks]
                X = parts[0] if len(parts) == 1 else torch.cat(parts)
                x2 = (X * X).sum((1, 2))
                if pair.dim == 0:
                    perp2 = perp2.index_add(0, lp, x2)
                    continue
                if isinstance(pair, BasisPair) and self.identity:
                    Q = pair._t("Q", pair._Q, X)
                    c = X.reshape(X.shape[0], -1) @ Q
                    q2 = (c * c).sum(1)
                    r2 = x2 - q2
                else:
                    r2, q2 = _PairSquares.apply(X, pair, need_eq)
                perp2 = perp2.index_add(0, lp, r2)
                if need_eq:
                    eq2 = eq2.index_add(0, le, q2)
        return perp2[:L], eq2[:L]

    @torch.no_grad()
    def proximal_(self, tensors: Sequence[torch.Tensor], factors, need_eq: bool = True):
        """The proximal map of a Frobenius penalty, in place, with one projection per tensor:
        ``perp2, eq2`` (as :meth:`__call__`) go to ``factors(perp2, eq2) -> (f_perp, f_eq)`` (per-layer
        shrink factors; ``f_eq`` may be ``None``), then ``x <- x - (1 - f_perp[l]) (x - P x)`` for the
        entries with ``perp`` and ``x <- x - (1 - f_eq[l]) P x`` for those with ``eq``. Returns
        ``(perp2, eq2, f_perp, f_eq)``."""
        ref = tensors[0]
        L = self.n_layers
        T = self._tables(ref.device, ref.dtype)
        perp2 = ref.new_zeros(L + 1)
        eq2 = ref.new_zeros(L + 1)
        flat = proj = None
        if self._orbit is not None:
            o = T["orbit"]
            flat = torch.cat([tensors[i].reshape(-1) for i in self._orbit_entries])
            sums = flat.new_zeros(o["inv"].shape[0]).index_add_(0, o["ids"], flat)
            mean = sums * o["inv"]
            proj = mean.index_select(0, o["ids"])
            r = flat - proj
            perp2.index_add_(0, o["e_perp"], torch.stack([v.dot(v) for v in r.split(self._seg_len)]))
            if need_eq:
                eq2.index_add_(0, o["e_eq"], _segment_sums(sums * mean, self._orb_len))
        projs = {}
        for i in self._pair_entries:
            e = self.entries[i]
            t = tensors[i]
            Px = e.projector.project_bias(t) if e.bias else e.projector.project(t)
            projs[i] = Px
            r = t - Px
            perp2[e.layer if e.perp else L] += (r * r).sum()
            if need_eq and e.eq:
                eq2[e.layer] += (Px * Px).sum()
        perp2, eq2 = perp2[:L], eq2[:L]
        f_perp, f_eq = factors(perp2, eq2)
        one = ref.new_ones(1)
        fp = torch.cat([f_perp.to(ref.dtype), one])
        fe = None if f_eq is None else torch.cat([f_eq.to(ref.dtype), one])
        if flat is not None:
            o = T["orbit"]
            new = flat - _expand(1 - fp.index_select(0, o["e_perp"]), self._seg_len) * (flat - proj)
            if fe is not None:
                new -= _expand(1 - fe.index_select(0, o["e_eq"]), self._seg_len) * proj
            off = 0
            for i in self._orbit_entries:
                t = tensors[i]
                t.copy_(new[off:off + t.numel()].reshape(t.shape))
                off += t.numel()
        for i, Px in projs.items():
            e = self.entries[i]
            t = tensors[i]
            upd = (1 - fp[e.layer if e.perp else L]) * (t - Px)
            if fe is not None and e.eq:
                upd = upd + (1 - fe[e.layer]) * Px
            t.sub_(upd)
        return perp2, eq2, f_perp, f_eq


class _SplitFn(torch.autograd.Function):
    """``W_j = P_j(A_j - B_j) + B_j`` for every entry ``j`` in one autograd node; the gradients are
    ``P_j g_j`` for ``A_j`` and ``g_j - P_j g_j`` for ``B_j`` (``P_j`` is self-adjoint)."""

    @staticmethod
    def forward(ctx, plan, *tensors):
        n = len(tensors) // 2
        As, Bs = tensors[:n], tensors[n:]
        D = [a - b for a, b in zip(As, Bs)]
        PD = plan._project(D)
        ctx.plan = plan
        ctx.meta = [(a.shape, a.dtype, a.device) for a in As]
        return tuple(pd + b for pd, b in zip(PD, Bs))

    @staticmethod
    def backward(ctx, *grads):
        plan = ctx.plan
        g = [torch.zeros(shape, dtype=dt, device=dev) if gr is None else gr
             for gr, (shape, dt, dev) in zip(grads, ctx.meta)]
        Pg = plan._project(g)
        return (None, *Pg, *[gi - pgi for gi, pgi in zip(g, Pg)])


class BatchedSplit:
    """The split parametrisation ``W = P(A - B) + B`` of many tensors at once (see
    :class:`equiproj.SplitParametrization`).

    Entries whose projector is an orbit mean (:meth:`Projector.orbit_plan`) are projected
    together, with one ``index_add`` and one gather for all of them; the others one by one.
    Forward and backward are one autograd node for all tensors, instead of one per tensor:
    the per-call overhead that dominates small layers is paid once.

    Examples
    --------
    >>> import torch
    >>> from equiproj import LinearProjector
    >>> from equiproj.groups import cyclic
    >>> P = LinearProjector(cyclic(4).regular(), 2 * cyclic(4).regular())
    >>> A = [torch.randn(8, 4, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    >>> B = [torch.randn(8, 4, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    >>> W = BatchedSplit([BatchEntry(P, 0), BatchEntry(P, 1)])(A, B)
    >>> bool(torch.allclose(W[1], P.project(A[1] - B[1]) + B[1]))
    True
    """

    def __init__(self, entries: Sequence[BatchEntry]):
        self.entries = list(entries)
        self._orbit_entries: List[int] = []
        self._other: List[int] = []
        ids, counts, self._sizes = [], [], []
        offset = 0
        for i, e in enumerate(self.entries):
            P = e.projector  # a duck-typed projector (project / project_bias only) is projected alone
            known = hasattr(P, "orbit_plan") and (not e.bias or hasattr(P, "bias_projector"))
            plan = e.matrix_projector.orbit_plan(any_route=True) if known else None
            if plan is None:
                self._other.append(i)
                continue
            oid, c = plan
            self._orbit_entries.append(i)
            ids.append(oid + offset)
            counts.append(c)
            self._sizes.append(oid.numel())
            offset += c.numel()
        self._orbit = None
        if ids:
            c = torch.cat(counts)
            self._orbit = (torch.cat(ids), torch.where(c > 0, 1.0 / c.clamp_min(1), torch.zeros_like(c)))
        self._dev: Dict[Tuple[str, torch.dtype], tuple] = {}

    def _tables(self, device, dtype):
        key = (str(device), dtype)
        if key not in self._dev:
            ids, inv = self._orbit
            self._dev[key] = (ids.to(device), inv.to(device=device, dtype=dtype))
        return self._dev[key]

    def _project(self, X: List[torch.Tensor]) -> List[torch.Tensor]:
        out: List[Optional[torch.Tensor]] = [None] * len(X)
        if self._orbit is not None:
            ids, inv = self._tables(X[0].device, X[0].dtype)
            flat = torch.cat([X[i].reshape(-1) for i in self._orbit_entries])
            sums = flat.new_zeros(inv.shape[0]).index_add_(0, ids, flat)
            proj = (sums * inv).index_select(0, ids)
            for i, part in zip(self._orbit_entries, proj.split(self._sizes)):
                out[i] = part.view(X[i].shape)
        for i in self._other:
            e = self.entries[i]
            out[i] = e.projector.project_bias(X[i]) if e.bias else e.projector.project(X[i])
        return out

    def __call__(self, As: Sequence[torch.Tensor], Bs: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, ...]:
        if len(As) != len(self.entries) or len(Bs) != len(self.entries):
            raise ValueError(f"expected {len(self.entries)} tensors A and B, got {len(As)} and {len(Bs)}")
        return _SplitFn.apply(self, *As, *Bs)


def safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """``sqrt(x)`` with the gradient 0 at ``x = 0`` (as ``torch.linalg.vector_norm`` has)."""
    pos = x > 0
    return torch.where(pos, torch.where(pos, x, torch.ones_like(x)).sqrt(), torch.zeros_like(x))


def stacked_frobenius(batched: Optional[BatchedFrobenius], tensors, squared: bool, need_eq: bool):
    """``(perp, eq)`` per layer in the Frobenius norm (``squared``: its square)."""
    perp2, eq2 = batched(tensors, need_eq=need_eq)
    if squared:
        return perp2, eq2
    return safe_sqrt(perp2), safe_sqrt(eq2)
