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


class _PenaltyFn(torch.autograd.Function):
    """:meth:`BatchedFrobenius.penalty`: the scalar penalty of the stacked inputs, with the
    gradient ``c_l (X - P X) + e_l P X`` per layer (coefficients from the forward pass).

    Slot ``n_layers`` of the per-layer sums collects what no layer counts (the ``A`` of a split
    weight has no non-equivariant part, its ``B`` no equivariant part); it exists only when some
    entry needs it, and its coefficient is 0."""

    @staticmethod
    def forward(ctx, B, T, lam_perp, lam_G, squared, need_eq, n_orbit, *tensors):
        L = B.n_layers
        slots = L + 1 if B._spare_slot else L
        saved = []
        Xs = tensors[n_orbit:]
        if n_orbit:
            o = T["orbit"]
            flat = torch.cat([t.reshape(-1) for t in tensors[:n_orbit]])
            sums = flat.new_zeros(o["inv"].shape[0]).scatter_add_(0, o["ids"], flat)
            mean = sums * o["inv"]
            proj = mean.index_select(0, o["ids"])
            r = flat - proj
            perp2 = _slot_sums(r * r, o, "perp", slots)
            eq2 = _slot_sums(sums * mean, o, "eq", slots) if need_eq else None
            saved += [r, proj] if need_eq else [r]
        else:
            perp2 = tensors[0].new_zeros(slots)
            eq2 = tensors[0].new_zeros(slots) if need_eq else None
        for (pair, _, _, _), (lp, le), X in zip(B._pairs, T["pairs"], Xs):
            if pair.dim == 0:
                PX = torch.zeros_like(X)
                R = X
            else:
                copies = getattr(pair, "project_copies", None)
                PX = copies(X) if copies is not None else pair.project(X[:, :, None, :])[:, :, 0, :]
                R = X - PX
            perp2.index_add_(0, lp, (R * R).sum((1, 2)))
            if need_eq:
                eq2.index_add_(0, le, (PX * PX).sum((1, 2)))
            saved += [R, PX] if need_eq else [R]
        c_perp, value = _coefficients(perp2, lam_perp, squared, L)
        c_eq = None
        if need_eq:
            c_eq, v_eq = _coefficients(eq2, lam_G, squared, L)
            value = value + v_eq
        ctx.save_for_backward(c_perp, c_eq, *saved)
        # the inputs are kept only for a second derivative; they are held by the caller anyway
        # (weights), so they are referenced here rather than saved, which would count and check them
        ctx.inputs = tensors
        ctx.args = (B, T, lam_perp, lam_G, squared, need_eq, n_orbit)
        ctx.T, ctx.need_eq, ctx.seg_len = T, need_eq, B._seg_len
        ctx.shapes = [t.shape for t in tensors[:n_orbit]]
        return value

    @staticmethod
    def backward(ctx, g):
        c_perp, c_eq, *saved = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: differentiate the unfused expression instead
            inputs = ctx.inputs
            with torch.enable_grad():
                v = _penalty_graph(*ctx.args, inputs)
            grads = torch.autograd.grad(v, inputs, g, create_graph=True, allow_unused=True)
            return (None,) * 7 + tuple(grads)
        c_perp = c_perp * g
        if ctx.need_eq:
            c_eq = c_eq * g
        grads = []
        k = 0
        step = 2 if ctx.need_eq else 1  # saved per group: the residual (and the projection)
        if ctx.shapes:  # one product for all orbit-plan tensors, returned as views of it
            o = ctx.T["orbit"]
            r = saved[0]
            k = step
            gf = r * c_perp.index_select(0, o["elem_perp"])
            if ctx.need_eq:
                gf = gf + saved[1] * c_eq.index_select(0, o["elem_eq"])
            grads += [v.view(shape) for v, shape in zip(gf.split(ctx.seg_len), ctx.shapes)]
        for lp, le in ctx.T["pairs"]:
            R = saved[k]
            gX = R * c_perp.index_select(0, lp)[:, None, None]
            if ctx.need_eq:
                gX = gX + saved[k + 1] * c_eq.index_select(0, le)[:, None, None]
            k += step
            grads.append(gX)
        return (None, None, None, None, None, None, None, *grads)


def _penalty_graph(B, T, lam_perp, lam_G, squared, need_eq, n_orbit, tensors) -> torch.Tensor:
    """:class:`_PenaltyFn`'s value through differentiable operations only (slow; used for second
    derivatives)."""
    L = B.n_layers
    slots = L + 1 if B._spare_slot else L
    perp2 = tensors[0].new_zeros(slots)
    eq2 = tensors[0].new_zeros(slots)
    if n_orbit:
        o = T["orbit"]
        flat = torch.cat([t.reshape(-1) for t in tensors[:n_orbit]])
        proj = (flat.new_zeros(o["inv"].shape[0]).index_add(0, o["ids"], flat) * o["inv"]).index_select(0, o["ids"])
        r = flat - proj
        perp2 = perp2.index_add(0, o["elem_perp"], r * r)
        eq2 = eq2.index_add(0, o["elem_eq"], proj * proj)
    for (pair, _, _, _), (lp, le), X in zip(B._pairs, T["pairs"], tensors[n_orbit:]):
        copies = getattr(pair, "project_copies", None)
        if pair.dim == 0:
            PX = torch.zeros_like(X)
        else:
            PX = copies(X) if copies is not None else pair.project(X[:, :, None, :])[:, :, 0, :]
        R = X - PX
        perp2 = perp2.index_add(0, lp, (R * R).sum((1, 2)))
        eq2 = eq2.index_add(0, le, (PX * PX).sum((1, 2)))
    f = (lambda t: t) if squared else safe_sqrt
    value = lam_perp * f(perp2[:L]).sum()
    return value + lam_G * f(eq2[:L]).sum() if need_eq else value


def _slot_sums(v: torch.Tensor, o: dict, side: str, slots: int) -> torch.Tensor:
    """Per-slot sums of the per-element (``perp``) or per-orbit (``eq``) values ``v`` of the
    orbit-plan entries: one segmented sum when the entries come in slot order, else one per entry
    and an ``index_add`` into the slots."""
    lengths = o.get(f"slot_{side}")
    if lengths is not None:
        return torch.segment_reduce(v, "sum", lengths=lengths, unsafe=True)
    per_entry = torch.segment_reduce(v, "sum", lengths=o["seg_len" if side == "perp" else "orb_len"], unsafe=True)
    return v.new_zeros(slots).index_add_(0, o[f"e_{side}"], per_entry)


def _coefficients(sq: torch.Tensor, lam: float, squared: bool, L: int):
    """``(c, value)`` for per-layer squared norms ``sq``: the value ``lam sum_l f(sq_l)`` over the
    first ``L`` slots and the gradient coefficients ``c_l = 2 lam f'(sq_l)`` (0 beyond ``L``, and at
    a zero norm under the square root, as :func:`safe_sqrt`)."""
    if squared:
        value = sq[:L].sum() * lam
        c = sq.new_full(sq.shape, 2 * lam)
    else:
        value = sq[:L].sqrt().sum() * lam
        c = torch.nan_to_num(sq.rsqrt(), posinf=0.0) * lam  # rsqrt(0) = inf: a zero norm has gradient 0
    if sq.shape[0] > L:
        c[L:] = 0
    return c, value


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
        self._spare_slot = any(not (e.perp and e.eq) for e in self.entries)
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
                seg = torch.tensor(self._seg_len, dtype=torch.long)
                t["orbit"]["seg_len"] = seg.to(device)
                t["orbit"]["orb_len"] = torch.tensor(self._orb_len, dtype=torch.long, device=device)
                slots = self.n_layers + 1 if self._spare_slot else self.n_layers
                for side, lens in (("perp", seg), ("eq", torch.tensor(self._orb_len, dtype=torch.long))):
                    e = self._orbit[f"e_{side}"]
                    # the layer slot of every element of the flat vector
                    t["orbit"][f"elem_{side}"] = torch.repeat_interleave(e, seg).to(device)
                    if bool((e[1:] >= e[:-1]).all()):  # entries in slot order: lengths per slot
                        t["orbit"][f"slot_{side}"] = torch.zeros(slots, dtype=torch.long).index_add_(
                            0, e, lens).to(device)
            t["pairs"] = [(lp.to(device), le.to(device)) for _, _, lp, le in self._pairs]
            t["perm"] = {}
            for i in self._pair_entries:
                P = self.entries[i].matrix_projector
                lo, li = P.action.out_layout, P.action.in_layout
                t["perm"][i] = (None if lo.perm is None else lo.perm.to(device),
                                None if li.perm is None else li.perm.to(device))
            self._dev[key] = t
        return t

    def _inputs(self, tensors: Sequence[torch.Tensor], T: dict, flat: bool = True):
        """The differentiable inputs of the stacked calls: the flat vector of the orbit-plan
        entries (``None`` if there are none or not ``flat``) and, per pair group, the copies
        ``(N, d_o, d_i)`` of its pair."""
        if flat and self._orbit is not None:
            flat = torch.cat([tensors[i].reshape(-1) for i in self._orbit_entries])
        else:
            flat = None
        Xs: List[torch.Tensor] = []
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
            for pair, blocks, _, _ in self._pairs:
                parts = [mats[i][so, si].reshape(no, do, ni, di).transpose(1, 2).reshape(no * ni, do, di)
                         for i, so, si, no, do, ni, di in blocks]
                Xs.append(parts[0] if len(parts) == 1 else torch.cat(parts))
        return flat, Xs

    def _check(self, tensors):
        if len(tensors) != len(self.entries):
            raise ValueError(f"expected {len(self.entries)} tensors, got {len(tensors)}")
        ref = tensors[0]
        return self._tables(ref.device, ref.dtype)

    def __call__(self, tensors: Sequence[torch.Tensor], need_eq: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
        T = self._check(tensors)
        ref = tensors[0]
        L = self.n_layers
        perp2 = ref.new_zeros(L + 1)
        eq2 = ref.new_zeros(L + 1)
        flat, Xs = self._inputs(tensors, T)
        if flat is not None:
            o = T["orbit"]
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
        for (pair, _, _, _), (lp, le), X in zip(self._pairs, T["pairs"], Xs):
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

    def penalty(self, tensors: Sequence[torch.Tensor], lambda_perp: float, lambda_G: float = 0.0,
                squared: bool = False) -> torch.Tensor:
        r"""The whole penalty ``sum_l lambda_perp f(||X_l - P X_l||^2) + lambda_G f(||P X_l||^2)`` as
        one scalar (``f`` the square root, or the identity when ``squared``), in one autograd node.

        The gradient is known in closed form, because ``P`` is an orthogonal projection:
        ``d ||X - P X|| / dX = (X - P X) / ||X - P X||`` and ``d ||P X|| / dX = P X / ||P X||``
        (0 at a zero norm, as :func:`safe_sqrt`), so the backward pass multiplies the residuals
        and projections saved by the forward pass with one coefficient per layer: no projection,
        no graph through the norms and the sums. A second derivative (``create_graph=True``) is
        taken through the same expression in differentiable operations.

        Examples
        --------
        >>> import torch
        >>> from equiproj import LinearProjector
        >>> from equiproj.groups import cyclic
        >>> P = LinearProjector(cyclic(4).regular(), 2 * cyclic(4).regular())
        >>> W = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
        >>> B = BatchedFrobenius([BatchEntry(P, 0)], n_layers=1)
        >>> v = B.penalty([W], lambda_perp=0.5)
        >>> bool(torch.allclose(v, 0.5 * (W - P.project(W)).norm()))
        True
        """
        T = self._check(tensors)
        _, Xs = self._inputs(tensors, T, flat=False)
        orbit = [tensors[i] for i in self._orbit_entries]
        return _PenaltyFn.apply(self, T, float(lambda_perp), float(lambda_G), bool(squared), lambda_G > 0,
                                len(orbit), *orbit, *Xs)

    @torch.no_grad()
    def proximal_(self, tensors: Sequence[torch.Tensor], factors, need_eq: bool = True):
        """The proximal map of a Frobenius penalty, in place, with one projection per tensor:
        ``perp2, eq2`` (as :meth:`__call__`) go to ``factors(perp2, eq2) -> (f_perp, f_eq)`` (per-layer
        shrink factors; ``f_eq`` may be ``None``), then ``x <- x - (1 - f_perp[l]) (x - P x)`` for the
        entries with ``perp`` and ``x <- x - (1 - f_eq[l]) P x`` for those with ``eq``. Returns
        ``(perp2, eq2, f_perp, f_eq)``."""
        ref = tensors[0]
        L = self.n_layers
        slots = L + 1 if self._spare_slot else L
        T = self._tables(ref.device, ref.dtype)
        flat = proj = r = None
        if self._orbit is not None:
            o = T["orbit"]
            flat = torch.cat([tensors[i].reshape(-1) for i in self._orbit_entries])
            sums = flat.new_zeros(o["inv"].shape[0]).scatter_add_(0, o["ids"], flat)
            mean = sums * o["inv"]
            proj = mean.index_select(0, o["ids"])
            r = flat - proj
            perp2 = _slot_sums(r * r, o, "perp", slots)
            eq2 = _slot_sums(sums * mean, o, "eq", slots) if need_eq else ref.new_zeros(slots)
        else:
            perp2, eq2 = ref.new_zeros(slots), ref.new_zeros(slots)
        projs = {}
        for i in self._pair_entries:
            e = self.entries[i]
            t = tensors[i]
            Px = e.projector.project_bias(t) if e.bias else e.projector.project(t)
            projs[i] = Px
            res = t - Px
            perp2[e.layer if e.perp else L] += (res * res).sum()
            if need_eq and e.eq:
                eq2[e.layer] += (Px * Px).sum()
        perp2, eq2 = perp2[:L], eq2[:L]
        f_perp, f_eq = factors(perp2, eq2)
        fp, fe = f_perp.to(ref.dtype), None if f_eq is None else f_eq.to(ref.dtype)
        if self._spare_slot:  # what no layer counts is left alone
            one = ref.new_ones(1)
            fp = torch.cat([fp, one])
            fe = None if fe is None else torch.cat([fe, one])
        if flat is not None:
            o = T["orbit"]
            new = flat - r * (1 - fp).index_select(0, o["elem_perp"])
            if fe is not None:
                new -= proj * (1 - fe).index_select(0, o["elem_eq"])
            dst = [tensors[i] for i in self._orbit_entries]
            _copy_all(dst, [v.view(t.shape) for v, t in zip(new.split(self._seg_len), dst)])
        for i, Px in projs.items():
            e = self.entries[i]
            t = tensors[i]
            upd = (1 - fp[e.layer if e.perp else L]) * (t - Px)
            if fe is not None and e.eq:
                upd = upd + (1 - fe[e.layer]) * Px
            t.sub_(upd)
        return perp2, eq2, f_perp, f_eq


def _copy_all(dst: List[torch.Tensor], src: List[torch.Tensor]) -> None:
    """``d.copy_(s)`` for every pair, in one call where torch has ``_foreach_copy_``."""
    fn = getattr(torch, "_foreach_copy_", None)
    if fn is not None:
        fn(dst, src)
    else:  # pragma: no cover - older torch
        for d, s_ in zip(dst, src):
            d.copy_(s_)


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


class _ProjectFn(torch.autograd.Function):
    """``W_j = P_j V_j`` for every entry ``j`` in one autograd node; the gradients are ``P_j g_j``
    (``P_j`` is self-adjoint)."""

    @staticmethod
    def forward(ctx, plan, *tensors):
        ctx.plan = plan
        ctx.meta = [(t.shape, t.dtype, t.device) for t in tensors]
        return tuple(plan._project(list(tensors)))

    @staticmethod
    def backward(ctx, *grads):
        g = [torch.zeros(shape, dtype=dt, device=dev) if gr is None else gr
             for gr, (shape, dt, dev) in zip(grads, ctx.meta)]
        return (None, *ctx.plan._project(g))


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

    def project(self, Vs: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, ...]:
        """``P_j V_j`` for every entry (the hard constraint), in one autograd node."""
        if len(Vs) != len(self.entries):
            raise ValueError(f"expected {len(self.entries)} tensors, got {len(Vs)}")
        return _ProjectFn.apply(self, *Vs)


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
