"""Cyclic, dihedral, symmetric and matrix-generated finite groups (private module)."""

from __future__ import annotations

import functools
import itertools
import math
from typing import Dict, Optional, Sequence

import torch

from .._utils import check_orthogonal, digest
from ._continuous import o2, o3
from ._group import FiniteGroup
from ._rep import PermutationRep, Representation, TableRep

__all__ = ["CyclicGroup", "DihedralGroup", "SymmetricGroup", "MatrixGroup",
           "cyclic", "dihedral", "symmetric", "finite_group", "octahedral", "full_octahedral"]

_F64 = torch.float64


class _OnSpace:
    """Knowledge of a finite group of matrices acting on the plane or space: the harmonics it moves
    (restricted from O(2) or O(3)) and which matrices belong to it."""

    def harmonic_representation(self, l: int) -> Representation:
        key = ("harmonic", l)
        cache = self._decomposition_cache
        if key not in cache:
            d = self.standard().dim
            if d not in (2, 3):
                raise ValueError(f"steerable harmonics need a group acting on the plane or space, {self.name} "
                                 f"acts on R^{d}")
            parent = o2() if d == 2 else o3()
            H = parent.harmonic_representation(l)
            M = self.standard()(self.elements(), dtype=_F64)
            table = H(parent.elements_from_matrices(M), dtype=_F64)
            cache[key] = TableRep(self, table, name=f"H{H.label}", check=False)
        return cache[key]

    def contains_matrices(self, R) -> torch.Tensor:
        R = torch.as_tensor(R, dtype=_F64)
        E = self.standard()(self.elements(), dtype=_F64)
        return ((R[:, None] - E[None]).abs().amax((-2, -1)) < 1e-6).any(1)

    def _escnn_rotation_steps(self, g):
        M = self.standard()(self.as_elements(g), dtype=_F64)
        theta = torch.atan2(M[:, 1, 0], M[:, 0, 0])
        k = torch.remainder(torch.round(theta * self.N / (2 * math.pi)).to(torch.long), self.N)
        return M, k


def _rot(theta: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(theta), torch.sin(theta)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


class CyclicGroup(_OnSpace, FiniteGroup):
    """The cyclic group ``C_N`` of rotations of the plane by multiples of ``2 pi / N``.

    Element ``a`` is the rotation by ``2 pi a / N``. Irreps are labelled by their frequency
    ``k = 0 .. N // 2``: ``k = 0`` is trivial, ``k = N/2`` (``N`` even) is the sign ``(-1)^a``,
    and the others are the 2D rotations by ``2 pi k a / N`` (complex type).

    Examples
    --------
    >>> from equiproj.groups import cyclic
    >>> G = cyclic(8)
    >>> G.order, [psi.dim for psi in G.irreps()]
    (8, [1, 2, 2, 2, 1])
    >>> G.irrep(1).type
    'complex'
    """

    def __init__(self, N: int):
        if not isinstance(N, int) or N < 1:
            raise ValueError(f"cyclic(N) needs a positive integer N, got {N!r}")
        a = torch.arange(N)
        table = (a[:, None] + a[None, :]) % N
        defining = _rot(2 * math.pi * a.to(_F64) / N)
        super().__init__(f"C{N}", ("C", N), table, [1 % N] if N > 1 else [0], defining)
        self.N = N

    def _irrep_labels(self):
        return list(range(self.N // 2 + 1))

    def _irrep_name(self, k):
        return f"irrep({k})"

    def _irrep_dim(self, k):
        return 1 if (k == 0 or 2 * k == self.N) else 2

    @functools.lru_cache(maxsize=None)
    def _irrep_table(self, k):
        theta = 2 * math.pi * k * torch.arange(self.N, dtype=_F64) / self.N
        if self._irrep_dim(k) == 1:
            return torch.cos(theta)[:, None, None].round()
        return _rot(theta)

    def escnn_element_args(self, g):
        _, k = self._escnn_rotation_steps(g)
        return [((int(ki),), {}) for ki in k]


class DihedralGroup(_OnSpace, FiniteGroup):
    """The dihedral group ``D_N`` of order ``2N``: rotations ``r^a`` and reflections ``r^a f``.

    Element ``a + N b`` is ``r^a f^b`` where ``r`` rotates by ``2 pi / N`` and ``f`` reflects
    across the x axis (``diag(1, -1)``). Irreps are labelled ``(j, k)``: ``(0, 0)`` trivial,
    ``(1, 0)`` the sign of the reflection; for even ``N`` also ``(0, N/2)`` and ``(1, N/2)``
    (``r -> -1``, ``f -> 1`` resp. ``-1``); and the 2D irreps ``(1, k)``, ``0 < k < N/2``,
    ``r -> rot(2 pi k / N)``, ``f -> diag(1, -1)`` (real type).

    Examples
    --------
    >>> from equiproj.groups import dihedral
    >>> [psi.label for psi in dihedral(4).irreps()]
    [(0, 0), (1, 0), (0, 2), (1, 2), (1, 1)]
    """

    def __init__(self, N: int):
        if not isinstance(N, int) or N < 1:
            raise ValueError(f"dihedral(N) needs a positive integer N, got {N!r}")
        idx = torch.arange(2 * N)
        a, b = idx % N, idx // N
        # r^a1 f^b1 r^a2 f^b2 = r^(a1 + (-1)^b1 a2) f^(b1 + b2)
        sign = 1 - 2 * b[:, None]
        A = (a[:, None] + sign * a[None, :]) % N
        Bf = (b[:, None] + b[None, :]) % 2
        table = A + N * Bf
        F = torch.diag(torch.tensor([1.0, -1.0], dtype=_F64))
        R = _rot(2 * math.pi * a.to(_F64) / N)
        defining = torch.where((b == 1)[:, None, None], R @ F, R)
        gens = ([1] if N > 1 else []) + [N]
        super().__init__(f"D{N}", ("D", N), table, gens, defining)
        self.N = N

    def _irrep_labels(self):
        labels = [(0, 0), (1, 0)]
        if self.N % 2 == 0:
            labels += [(0, self.N // 2), (1, self.N // 2)]
        labels += [(1, k) for k in range(1, (self.N + 1) // 2)]
        return labels

    def _irrep_name(self, label):
        return f"irrep{label}"

    def _irrep_dim(self, label):
        j, k = label
        return 1 if (k == 0 or 2 * k == self.N) else 2

    @functools.lru_cache(maxsize=None)
    def _irrep_table(self, label):
        j, k = label
        idx = torch.arange(2 * self.N)
        a, b = idx % self.N, idx // self.N
        theta = 2 * math.pi * k * a.to(_F64) / self.N
        if self._irrep_dim(label) == 1:
            r = torch.cos(theta).round()
            f = torch.where(b == 1, -1.0 if j == 1 else 1.0, 1.0).to(_F64)
            return (r * f)[:, None, None]
        F = torch.diag(torch.tensor([1.0, -1.0], dtype=_F64))
        R = _rot(theta)
        return torch.where((b == 1)[:, None, None], R @ F, R)

    def escnn_element_args(self, g):
        M, k = self._escnn_rotation_steps(g)
        flip = (torch.linalg.det(M) < 0).to(torch.long)
        return [(((int(f), int(ki)),), {}) for f, ki in zip(flip, k)]


class SymmetricGroup(FiniteGroup):
    """The symmetric group ``S_n`` of permutations of ``n`` points (order ``n!``).

    Elements are indexed in lexicographic order of the permutation tuples (identity first);
    ``G.permutations[i]`` is the tuple ``sigma`` of element ``i`` and products compose maps,
    ``(sigma tau)(i) = sigma(tau(i))``. ``standard()`` is the natural permutation
    representation on ``R^n`` (``e_i -> e_sigma(i)``, trivial plus the (n-1)-dim irrep), which
    acts by indexing. Irreps are computed numerically and labelled ``0, 1, ...``.
    """

    def __init__(self, n: int):
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"symmetric(n) needs a positive integer n, got {n!r}")
        if math.factorial(n) > 2000:
            raise ValueError(f"symmetric({n}) has order {math.factorial(n)} > 2000, which is not supported")
        perms = list(itertools.permutations(range(n)))
        index = {p: i for i, p in enumerate(perms)}
        P = torch.tensor(perms, dtype=torch.long).reshape(len(perms), n)  # (m, n)
        m = len(perms)
        # (sigma tau)(i) = sigma[tau[i]]; lexicographic order = increasing base-n code
        comp = torch.gather(P[:, None, :].expand(m, m, n), 2, P[None, :, :].expand(m, m, n))
        radix = n ** torch.arange(n - 1, -1, -1)
        codes = (P * radix).sum(-1)
        table = torch.searchsorted(codes, (comp * radix).sum(-1))
        gens = []
        if n > 1:
            gens.append(index[tuple([1, 0] + list(range(2, n)))])
        if n > 2:
            gens.append(index[tuple(list(range(1, n)) + [0])])
        super().__init__(f"S{n}", ("S", n), table, gens)
        self.n = n
        self.permutations = perms
        self._perm_tensor = P

    def standard(self) -> Representation:
        if "standard" not in self._irrep_objects:
            inv = torch.argsort(self._perm_tensor, dim=1)  # sigma^{-1}
            # (P_sigma x)[a] = x[sigma^{-1}(a)]
            self._irrep_objects["standard"] = PermutationRep(self, inv, name="standard", check=False)
        return self._irrep_objects["standard"]


class MatrixGroup(_OnSpace, FiniteGroup):
    """The finite group generated by a list of orthogonal matrices.

    Elements are indexed in breadth-first order from the identity; ``standard()`` is the
    representation by the matrices themselves. Irreps are computed numerically.
    """

    def __init__(self, generators: Sequence, name: Optional[str] = None, max_order: int = 2000):
        gens = torch.stack([torch.as_tensor(g, dtype=_F64) for g in generators])
        check_orthogonal(gens, "group generator")
        d = gens.shape[-1]

        def key_of(M):
            return tuple(torch.round(M * 1e6).to(torch.long).reshape(-1).tolist())

        mats = [torch.eye(d, dtype=_F64)]
        index: Dict = {key_of(mats[0]): 0}
        frontier = [0]
        while frontier:
            nxt = []
            for a in frontier:
                for s in gens:
                    M = mats[a] @ s
                    k = key_of(M)
                    if k not in index:
                        if len(mats) >= max_order:
                            raise ValueError(
                                f"the generated group has more than {max_order} elements; is it finite?"
                            )
                        index[k] = len(mats)
                        mats.append(M)
                        nxt.append(index[k])
            frontier = nxt
        M = torch.stack(mats)
        n = len(mats)
        table = torch.empty(n, n, dtype=torch.long)
        for a in range(n):
            prods = M[a] @ M
            for b in range(n):
                table[a, b] = index[key_of(prods[b])]
        gen_idx = [index[key_of(s)] for s in gens]
        super().__init__(name or f"G{n}", ("matrix", digest(gens)), table, gen_idx, M)


# ------------------------------------------------------------------ factories (cached)


@functools.lru_cache(maxsize=None)
def cyclic(N: int) -> CyclicGroup:
    """The cyclic group ``C_N`` (see :class:`CyclicGroup`)."""
    return CyclicGroup(N)


@functools.lru_cache(maxsize=None)
def dihedral(N: int) -> DihedralGroup:
    """The dihedral group ``D_N`` of order ``2N`` (see :class:`DihedralGroup`)."""
    return DihedralGroup(N)


@functools.lru_cache(maxsize=None)
def symmetric(n: int) -> SymmetricGroup:
    """The symmetric group ``S_n`` (see :class:`SymmetricGroup`)."""
    return SymmetricGroup(n)


def finite_group(generators: Sequence, name: Optional[str] = None) -> MatrixGroup:
    """The finite group generated by orthogonal matrices (see :class:`MatrixGroup`).

    Examples
    --------
    The quaternion group ``Q8`` from left multiplication by ``i`` and ``j`` on ``R^4``; its
    defining representation is irreducible of quaternionic type:

    >>> import torch
    >>> i = torch.tensor([[0., -1, 0, 0], [1, 0, 0, 0], [0, 0, 0, -1], [0, 0, 1, 0]])
    >>> j = torch.tensor([[0., 0, -1, 0], [0, 0, 0, 1], [1, 0, 0, 0], [0, -1, 0, 0]])
    >>> Q8 = finite_group([i, j], name="Q8")
    >>> Q8.order, [psi.type for psi in Q8.irreps()][-1]
    (8, 'quaternionic')
    """
    return MatrixGroup(generators, name=name)


_RZ90 = [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
_RX90 = [[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]


@functools.lru_cache(maxsize=None)
def octahedral() -> MatrixGroup:
    """The 24 rotations of the cube (chiral octahedral group ``O``), as 3x3 signed permutation
    matrices acting on voxel coordinates; generated by quarter turns about two axes.

    Examples
    --------
    >>> from equiproj.groups import octahedral
    >>> G = octahedral()
    >>> G.order, [psi.dim for psi in G.irreps()]
    (24, [1, 1, 2, 3, 3])
    """
    return MatrixGroup([_RZ90, _RX90], name="O")


@functools.lru_cache(maxsize=None)
def full_octahedral() -> MatrixGroup:
    """The 48 rotations and reflections of the cube (``O_h``): :func:`octahedral` and ``-I``."""
    return MatrixGroup([_RZ90, _RX90, [[-1.0, 0, 0], [0, -1.0, 0], [0, 0, -1.0]]], name="Oh")
