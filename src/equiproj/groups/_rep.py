"""Real orthogonal representations of compact groups (private module).

A :class:`Representation` ``rho`` of a group ``G`` on ``R^d`` evaluates a batch of group
elements to orthogonal matrices ``rho(g)`` of shape ``(n, d, d)``. Every representation knows

* its *fields*: the summands it was built from (``3 * rho`` has three fields ``rho``), which the
  projectors use to work on small blocks instead of dense layer-sized matrices;
* its decomposition into irreducible representations: a list of irreps ``psi_i`` and an
  orthogonal ``Q`` with ``rho(g) Q = Q (psi_1(g) + ... + psi_r(g))`` (block diagonal);
* for continuous groups, its Lie-algebra generators ``d rho(X_i)`` and its band limit;
* for permutation representations, the index table of the permutation, so that the action
  is a gather rather than a dense product.

All internal matrices are float64; ``rho(g, dtype=...)`` casts at the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple

import torch

from .._utils import check_orthogonal, digest, resolve_dtype, null_space_psd

if TYPE_CHECKING:  # pragma: no cover
    from ._group import Group

__all__ = [
    "Representation",
    "Irrep",
    "DirectSum",
    "TensorProduct",
    "ChangeOfBasis",
    "TableRep",
    "PermutationRep",
    "Decomposition",
    "Isotypic",
    "direct_sum",
    "tensor",
    "invariant_basis",
]

_F64 = torch.float64


@dataclass(frozen=True)
class Decomposition:
    """``rho(g) Q = Q blockdiag(psi(g) for psi in irreps)`` with ``Q`` orthogonal (float64)."""

    irreps: Tuple["Irrep", ...]
    Q: torch.Tensor


@dataclass(frozen=True)
class Isotypic:
    """Isotypic decomposition: distinct irreps (canonical order), multiplicities and a basis.

    The columns of ``Q`` are grouped by irrep: for ``irreps[i]`` of dimension ``k`` and
    multiplicity ``m``, columns ``offsets[i] : offsets[i] + m * k`` hold its ``m`` copies, each
    ``k`` consecutive columns, and ``rho(g) Q = Q blockdiag(I_m (x) psi_i(g))``.
    """

    irreps: Tuple["Irrep", ...]
    multiplicities: Tuple[int, ...]
    Q: torch.Tensor
    offsets: Tuple[int, ...]

    def multiplicity(self, irrep: "Irrep") -> int:
        """Multiplicity of ``irrep`` (0 if it does not occur)."""
        for psi, m in zip(self.irreps, self.multiplicities):
            if psi == irrep:
                return m
        return 0


class Representation:
    """A real orthogonal representation ``rho: G -> O(d)``.

    Build representations from a group (``G.trivial()``, ``G.irrep(...)``, ``G.regular()``,
    ``G.standard()``) and combine them with ``+`` (direct sum), ``n * rho`` (n copies),
    ``rho1 * rho2`` (tensor product) and :meth:`change_basis`.

    Examples
    --------
    >>> import torch
    >>> from equiproj.groups import cyclic
    >>> G = cyclic(4)
    >>> rho = G.trivial() + 2 * G.regular()
    >>> rho.dim
    9
    >>> M = rho(G.elements(), dtype=torch.float64)
    >>> M.shape
    torch.Size([4, 9, 9])
    >>> bool(torch.allclose(M[1] @ M[1].T, torch.eye(9, dtype=torch.float64)))
    True
    >>> [(psi.label, m) for psi, m in zip(rho.isotypic().irreps, rho.isotypic().multiplicities)]
    [(0, 3), (1, 2), (2, 2)]
    """

    def __init__(self, group: "Group", dim: int, name: str):
        if dim < 1:
            raise ValueError(f"a representation needs dimension >= 1, got {dim}")
        self.group = group
        self.dim = int(dim)
        self.name = name
        self._decomposition: Optional[Decomposition] = None
        self._isotypic: Optional[Isotypic] = None

    # ------------------------------------------------------------------ evaluation
    def __call__(self, g, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Matrices ``rho(g)`` of shape ``(n, d, d)`` for a batch ``g`` of group elements."""
        g = self.group.as_elements(g)
        out_dtype = self.group._element_dtype(g) if dtype is None else resolve_dtype(dtype)
        return self._matrices(g).to(out_dtype)

    def _matrices(self, g: torch.Tensor) -> torch.Tensor:  # float64 (n, d, d)
        raise NotImplementedError

    def act(self, g, X: torch.Tensor) -> torch.Tensor:
        """``rho(g) @ X`` for a batch ``g`` (n elements) and ``X`` of shape ``(d, m)`` or
        ``(n, d, m)``; returns ``(n, d, m)`` in float64."""
        g = self.group.as_elements(g)
        return self._matrices(g) @ X.to(_F64)

    def lie_algebra(self) -> torch.Tensor:
        """Generators ``d rho(X_i)`` of the Lie-algebra action, shape ``(L, d, d)`` (float64).

        ``L`` is 0 for finite groups, 1 for SO(2) and O(2), 3 for SO(3) and O(3).
        """
        raise NotImplementedError

    def character(self, g) -> torch.Tensor:
        """``trace rho(g)`` for a batch of elements (float64)."""
        return torch.diagonal(self(g, dtype=_F64), dim1=-2, dim2=-1).sum(-1)

    # ------------------------------------------------------------------ structure
    @property
    def band_limit(self) -> int:
        """Largest frequency / degree of an irrep that can occur (0 for finite groups)."""
        return 0

    @property
    def fields(self) -> Tuple["Representation", ...]:
        """The summands this representation was built from, in order."""
        return (self,)

    @property
    def factors(self) -> Tuple["Representation", ...]:
        """The tensor factors of this representation (itself unless a tensor product)."""
        return (self,)

    def field_blocks(self) -> List[Tuple["Representation", torch.Tensor]]:
        """The representation as a direct sum of field types, with the coordinates of each:
        ``[(tau, index), ...]`` with ``rho(g)[index][:, index] = tau(g)``. Direct sums give their
        summands; a tensor product of sums gives the products of their summands (distributivity),
        which keeps the projectors' pairs of field types small."""
        out, o = [], 0
        for f in self.fields:
            out.append((f, torch.arange(o, o + f.dim)))
            o += f.dim
        return out

    @property
    def permutation(self) -> Optional[torch.Tensor]:
        """For a permutation representation of a finite group: the long tensor ``src`` of
        shape ``(|G|, d)`` with ``(rho(g) x)[a] = x[src[g, a]]``; otherwise ``None``."""
        return None

    @property
    def key(self):
        """A hashable identity used for equality and caching."""
        raise NotImplementedError

    def __eq__(self, other) -> bool:
        return isinstance(other, Representation) and self.group == other.group and self.key == other.key

    def __hash__(self) -> int:
        return hash((self.group.key, self.key))

    def __repr__(self) -> str:
        return f"{self.name} of {self.group.name} (dim {self.dim})"

    # ------------------------------------------------------------------ decomposition
    def decompose(self) -> Decomposition:
        """Irreps and orthogonal ``Q`` with ``rho(g) Q = Q blockdiag(psi_i(g))`` (cached)."""
        if self._decomposition is None:
            cache = self.group._decomposition_cache
            dec = cache.get(self.key)
            if dec is None:
                dec = self._decompose()
                cache[self.key] = dec
            self._decomposition = dec
        return self._decomposition

    def _decompose(self) -> Decomposition:
        # the group owns the numerical algorithms (equiproj.groups._decompose), so that this module
        # imports nothing from the rest of equiproj.groups (one direction: _rep -> _decompose -> _group)
        return self.group._decompose_numerically(self)

    def isotypic(self) -> Isotypic:
        """Isotypic decomposition (irreps in canonical order, multiplicities, basis)."""
        if self._isotypic is None:
            dec = self.decompose()
            order = sorted(range(len(dec.irreps)), key=lambda i: (dec.irreps[i].sort_key, i))
            starts, o = [], 0
            for psi in dec.irreps:
                starts.append(o)
                o += psi.dim
            cols, irreps, mults, offsets = [], [], [], []
            for i in order:
                psi = dec.irreps[i]
                if irreps and irreps[-1] == psi:
                    mults[-1] += 1
                else:
                    irreps.append(psi)
                    mults.append(1)
                    offsets.append(len(cols))
                cols.extend(range(starts[i], starts[i] + psi.dim))
            Q = dec.Q[:, torch.tensor(cols, dtype=torch.long)]
            self._isotypic = Isotypic(tuple(irreps), tuple(mults), Q.contiguous(), tuple(offsets))
        return self._isotypic

    # ------------------------------------------------------------------ algebra
    def _check_same_group(self, other: "Representation", op: str) -> None:
        if not isinstance(other, Representation):
            raise TypeError(f"cannot {op} a representation and {type(other).__name__}")
        if other.group != self.group:
            raise ValueError(
                f"cannot {op} representations of different groups: {self.group.name} and {other.group.name}"
            )

    def __add__(self, other: "Representation") -> "Representation":
        if isinstance(other, int) and other == 0:  # support sum([...])
            return self
        self._check_same_group(other, "add")
        return direct_sum(self, other)

    def __radd__(self, other):
        if isinstance(other, int) and other == 0:
            return self
        return NotImplemented

    def __mul__(self, other):
        if isinstance(other, Representation):
            self._check_same_group(other, "multiply")
            return tensor(self, other)
        if isinstance(other, int):
            return self.__rmul__(other)
        return NotImplemented

    def __rmul__(self, n):
        if isinstance(n, bool) or not isinstance(n, int):
            return NotImplemented
        if n < 1:
            raise ValueError(f"multiplicity must be a positive integer, got {n}")
        return self if n == 1 else DirectSum([self] * n)

    def change_basis(self, B: torch.Tensor, name: Optional[str] = None) -> "Representation":
        """The representation ``g -> B rho(g) B^T`` for an orthogonal ``B`` of shape (d, d)."""
        return ChangeOfBasis(self, B, name=name)

    def is_trivial(self) -> bool:
        """True if every element acts as the identity."""
        if len(self.fields) > 1:
            return all(f.is_trivial() for f in self.fields)
        iso = self.isotypic()
        return len(iso.irreps) == 1 and iso.irreps[0].is_trivial()


class Irrep(Representation):
    """An irreducible representation, labelled as its group documents (frequency, degree...).

    ``type`` is ``'real'``, ``'complex'`` or ``'quaternionic'``: the commutant
    ``End_G(psi)`` (matrices commuting with every ``psi(g)``) has dimension 1, 2 or 4.
    """

    def __init__(self, group: "Group", label, dim: int, name: Optional[str] = None):
        super().__init__(group, dim, name or f"irrep{label}")
        self.label = label
        self._endo: Optional[torch.Tensor] = None

    @property
    def key(self):
        return ("irrep", self.label)

    @property
    def sort_key(self):
        return self.group._irrep_sort_key(self.label)

    def _matrices(self, g):
        return self.group._irrep_matrices(self.label, g)

    def lie_algebra(self):
        return self.group._irrep_lie(self.label)

    @property
    def band_limit(self) -> int:
        return self.group._irrep_band_limit(self.label)

    def _decompose(self):
        return Decomposition((self,), torch.eye(self.dim, dtype=_F64))

    def is_trivial(self) -> bool:
        return self.label == self.group.trivial().label

    def endomorphisms(self) -> torch.Tensor:
        """Orthonormal basis ``E`` of ``End_G(psi)``, shape ``(e, k, k)`` with ``E[0] = I`` and
        ``E[j]^T E[j] = I`` (so ``<E_i, E_j>_F = k delta_ij``); ``e`` is 1, 2 or 4."""
        if self._endo is None:
            cache = self.group._decomposition_cache
            ck = ("endo", self.label)
            E = cache.get(ck)
            if E is None:
                k = self.dim
                basis = invariant_basis([self, self])  # (k*k, e) orthonormal
                eye = torch.eye(k, dtype=_F64).reshape(-1) / math.sqrt(k)
                e = basis.shape[1]
                rest = basis - eye[:, None] * (eye @ basis)[None, :]  # rank e - 1
                U, _, _ = torch.linalg.svd(rest, full_matrices=False)
                E = torch.cat([eye[None], U[:, : e - 1].T]).reshape(e, k, k) * math.sqrt(k)
                cache[ck] = E
            self._endo = E
        return self._endo

    @property
    def type(self) -> str:
        return {1: "real", 2: "complex", 4: "quaternionic"}[self.endomorphisms().shape[0]]


class DirectSum(Representation):
    """``rho_1 + ... + rho_r`` acting block-diagonally; nested sums are flattened."""

    def __init__(self, parts: Sequence[Representation], name: Optional[str] = None):
        flat: List[Representation] = []
        for p in parts:
            flat.extend(p.fields if isinstance(p, DirectSum) else (p,))
        group = flat[0].group
        for p in flat[1:]:
            if p.group != group:
                raise ValueError(f"cannot add representations of {group.name} and {p.group.name}")
        super().__init__(group, sum(p.dim for p in flat), name or _sum_name(flat))
        self.parts = tuple(flat)

    @property
    def key(self):
        return ("sum", tuple(p.key for p in self.parts))

    @property
    def fields(self):
        return self.parts

    @property
    def band_limit(self):
        return max(p.band_limit for p in self.parts)

    def _matrices(self, g):
        from .._utils import block_diag_batch

        cache = {}
        blocks = []
        for p in self.parts:
            if p.key not in cache:
                cache[p.key] = p._matrices(g)
            blocks.append(cache[p.key])
        return block_diag_batch(blocks)

    def act(self, g, X):
        outs, o = [], 0
        for p in self.parts:
            outs.append(p.act(g, X[..., o:o + p.dim, :]))
            o += p.dim
        return torch.cat(outs, dim=-2)

    def lie_algebra(self):
        gens = [p.lie_algebra() for p in self.parts]
        L = gens[0].shape[0]
        out = torch.zeros(L, self.dim, self.dim, dtype=_F64)
        o = 0
        for p, X in zip(self.parts, gens):
            out[:, o:o + p.dim, o:o + p.dim] = X
            o += p.dim
        return out

    @property
    def permutation(self):
        srcs = [p.permutation for p in self.parts]
        if any(s is None for s in srcs):
            return None
        out, o = [], 0
        for p, s in zip(self.parts, srcs):
            out.append(s + o)
            o += p.dim
        return torch.cat(out, dim=1)

    def field_blocks(self):
        out, o = [], 0
        for p in self.parts:
            out.extend((f, idx + o) for f, idx in p.field_blocks())
            o += p.dim
        return out

    def _decompose(self):
        irreps, Qs = [], []
        for p in self.parts:
            d = p.decompose()
            irreps.extend(d.irreps)
            Qs.append(d.Q)
        return Decomposition(tuple(irreps), torch.block_diag(*Qs))


class TensorProduct(Representation):
    """``rho_a (x) rho_b`` acting on ``R^{d_a} (x) R^{d_b}`` (index ``i * d_b + j``)."""

    def __init__(self, a: Representation, b: Representation, name: Optional[str] = None):
        if a.group != b.group:
            raise ValueError(f"cannot multiply representations of {a.group.name} and {b.group.name}")
        super().__init__(a.group, a.dim * b.dim, name or f"({a.name} x {b.name})")
        self.a, self.b = a, b

    @property
    def key(self):
        return ("tensor", self.a.key, self.b.key)

    @property
    def factors(self):
        return self.a.factors + self.b.factors

    def field_blocks(self):
        ba, bb = self.a.field_blocks(), self.b.field_blocks()
        if len(ba) == 1 and len(bb) == 1:
            return [(self, torch.arange(self.dim))]
        out = []
        for fa, ia in ba:
            for fb, ib in bb:
                idx = (ia[:, None] * self.b.dim + ib[None, :]).reshape(-1)
                if fa.dim == 1 and fa.is_trivial():
                    field = fb
                elif fb.dim == 1 and fb.is_trivial():
                    field = fa
                else:
                    field = _tensor_field(fa, fb)
                out.append((field, idx))
        return out

    @property
    def band_limit(self):
        return self.a.band_limit + self.b.band_limit

    def _matrices(self, g):
        A, B = self.a._matrices(g), self.b._matrices(g)
        n = A.shape[0]
        return torch.einsum("nij,nkl->nikjl", A, B).reshape(n, self.dim, self.dim)

    def lie_algebra(self):
        Xa, Xb = self.a.lie_algebra(), self.b.lie_algebra()
        Ia, Ib = torch.eye(self.a.dim, dtype=_F64), torch.eye(self.b.dim, dtype=_F64)
        return torch.stack([torch.kron(x, Ib) + torch.kron(Ia, y) for x, y in zip(Xa, Xb)]) if len(Xa) else \
            torch.zeros(0, self.dim, self.dim, dtype=_F64)

    @property
    def permutation(self):
        sa, sb = self.a.permutation, self.b.permutation
        if sa is None or sb is None:
            return None
        return (sa[:, :, None] * self.b.dim + sb[:, None, :]).reshape(sa.shape[0], -1)

    def _decompose(self):
        da, db = self.a.decompose(), self.b.decompose()
        D = self.dim
        # coordinates after Q_a (x) Q_b: index (alpha, beta); gather the psi_i (x) psi_j blocks
        offs_a = _offsets(da.irreps)
        offs_b = _offsets(db.irreps)
        irreps = []
        Q = torch.zeros(D, D, dtype=_F64)
        col = 0
        QaQb = torch.kron(da.Q, db.Q)
        for i, pa in enumerate(da.irreps):
            for j, pb in enumerate(db.irreps):
                idx = ((offs_a[i] + torch.arange(pa.dim))[:, None] * self.b.dim
                       + (offs_b[j] + torch.arange(pb.dim))[None, :]).reshape(-1)
                sub = _irrep_pair_decomposition(pa, pb)
                k = pa.dim * pb.dim
                Q[:, col:col + k] = QaQb[:, idx] @ sub.Q
                irreps.extend(sub.irreps)
                col += k
        return Decomposition(tuple(irreps), Q)


def _tensor_field(a: Representation, b: Representation) -> "TensorProduct":
    """``a (x) b``, one object per pair of keys (so field types compare equal and share caches)."""
    cache = a.group._decomposition_cache
    key = ("tensor-field", a.key, b.key)
    if key not in cache:
        cache[key] = TensorProduct(a, b)
    return cache[key]


def _irrep_pair_decomposition(pa: Irrep, pb: Irrep) -> Decomposition:
    """Decomposition of ``psi_a (x) psi_b`` (cached on the group)."""
    cache = pa.group._decomposition_cache
    ck = ("pair", pa.label, pb.label)
    dec = cache.get(ck)
    if dec is None:
        if pa.is_trivial() or pb.is_trivial():
            other = pb if pa.is_trivial() else pa
            dec = Decomposition((other,), torch.eye(other.dim, dtype=_F64))
        else:
            dec = pa.group._decompose_numerically(TensorProduct(pa, pb))
        cache[ck] = dec
    return dec


class ChangeOfBasis(Representation):
    """``g -> B rho(g) B^T`` for an orthogonal ``B``."""

    def __init__(self, rep: Representation, B: torch.Tensor, name: Optional[str] = None):
        B = torch.as_tensor(B, dtype=_F64)
        if B.shape != (rep.dim, rep.dim):
            raise ValueError(
                f"change of basis for {rep.name} must have shape ({rep.dim}, {rep.dim}), got {tuple(B.shape)}"
            )
        check_orthogonal(B, f"change of basis for {rep.name}")
        super().__init__(rep.group, rep.dim, name or f"B({rep.name})")
        self.rep, self.B = rep, B
        self._digest = digest(B)

    @property
    def key(self):
        return ("cob", self.rep.key, self._digest)

    @property
    def band_limit(self):
        return self.rep.band_limit

    def _matrices(self, g):
        B = self.B.to(g.device) if g.is_floating_point() else self.B
        return B @ self.rep._matrices(g) @ B.T

    def lie_algebra(self):
        return self.B @ self.rep.lie_algebra() @ self.B.T

    def _decompose(self):
        d = self.rep.decompose()
        return Decomposition(d.irreps, self.B @ d.Q)


class TableRep(Representation):
    """A representation of a finite group given by its matrix for every element."""

    def __init__(self, group: "Group", table: torch.Tensor, name: str = "rep", check: bool = True):
        table = torch.as_tensor(table, dtype=_F64)
        if table.ndim != 3 or table.shape[0] != group.order or table.shape[1] != table.shape[2]:
            raise ValueError(
                f"a representation table of {group.name} must have shape ({group.order}, d, d), "
                f"got {tuple(table.shape)}"
            )
        if check:
            check_orthogonal(table, f"representation '{name}' of {group.name}")
            _check_homomorphism(group, table, name)
        super().__init__(group, table.shape[1], name)
        self.table = table
        self._digest = digest(table)

    @property
    def key(self):
        return ("table", self._digest)

    def _matrices(self, g):
        return self.table.to(g.device)[g]

    def lie_algebra(self):
        return torch.zeros(0, self.dim, self.dim, dtype=_F64)


class PermutationRep(Representation):
    """A permutation representation of a finite group, acting by indexing.

    ``src`` has shape ``(|G|, d)``: ``(rho(g) x)[a] = x[src[g, a]]``.
    """

    def __init__(self, group: "Group", src: torch.Tensor, name: str = "perm", check: bool = True):
        src = torch.as_tensor(src, dtype=torch.long)
        if src.ndim != 2 or src.shape[0] != group.order:
            raise ValueError(f"a permutation table of {group.name} must have shape ({group.order}, d)")
        if check:
            d = src.shape[1]
            if not bool((torch.sort(src, dim=1).values == torch.arange(d)).all()):
                raise ValueError(f"permutation table '{name}' has rows that are not permutations of 0..{d - 1}")
        super().__init__(group, src.shape[1], name)
        self.src = src
        self._digest = digest(src)
        if check:
            table = self._matrices(group.elements())
            _check_homomorphism(group, table, name)

    @property
    def key(self):
        return ("perm", self._digest)

    @property
    def permutation(self):
        return self.src

    def _matrices(self, g):
        src = self.src.to(g.device)[g]  # (n, d)
        n, d = src.shape
        M = torch.zeros(n, d, d, dtype=_F64, device=g.device)
        M.scatter_(2, src[:, :, None], 1.0)
        return M

    def act(self, g, X):
        g = self.group.as_elements(g)
        X = X.to(_F64)
        src = self.src.to(X.device)[g]  # (n, d)
        if X.ndim == 2:
            return X[src]
        return torch.gather(X, 1, src[:, :, None].expand(-1, -1, X.shape[-1]))

    def lie_algebra(self):
        return torch.zeros(0, self.dim, self.dim, dtype=_F64)


# ---------------------------------------------------------------------- helpers


def _offsets(irreps) -> List[int]:
    out, o = [], 0
    for p in irreps:
        out.append(o)
        o += p.dim
    return out


def _sum_name(parts) -> str:
    names, counts = [], []
    for p in parts:
        if names and names[-1] == p.name:
            counts[-1] += 1
        else:
            names.append(p.name)
            counts.append(1)
    return " + ".join(n if c == 1 else f"{c}*{n}" for n, c in zip(names, counts))


def _check_homomorphism(group, table: torch.Tensor, name: str, tol: float = 1e-8) -> None:
    """Check ``rho(g) rho(s) = rho(g s)`` for every element ``g`` and generator ``s``."""
    for s in group.generators():
        s = int(s)
        lhs = table @ table[s]
        rhs = table[group.table[:, s]]
        err = (lhs - rhs).abs().amax().item()
        if err > tol:
            raise ValueError(
                f"'{name}' is not a representation of {group.name}: rho(g) rho(s) differs from rho(g s) "
                f"by {err:.3g} for generator index {s}"
            )


def direct_sum(*reps: Representation) -> Representation:
    """Direct sum ``rho_1 + ... + rho_r`` (block-diagonal action)."""
    if len(reps) == 1 and isinstance(reps[0], (list, tuple)):
        reps = tuple(reps[0])
    if not reps:
        raise ValueError("direct_sum needs at least one representation")
    return reps[0] if len(reps) == 1 else DirectSum(reps)


def tensor(*reps: Representation) -> Representation:
    """Tensor product ``rho_1 (x) ... (x) rho_r``."""
    if not reps:
        raise ValueError("tensor needs at least one representation")
    out = reps[0]
    for r in reps[1:]:
        out = TensorProduct(out, r)
    return out


def invariant_basis(reps: Sequence[Representation], max_dim: int = 4096) -> torch.Tensor:
    """Orthonormal basis of the invariant vectors of ``rho_1 (x) ... (x) rho_r``.

    Computed as the null space of the stacked generator constraints: ``(S - I) x = 0`` for the
    group's discrete generators ``S = (x)_f rho_f(s)``, and ``(sum_f I (x) d rho_f(X) (x) I) x = 0``
    for every Lie-algebra generator ``X`` of a continuous group. Returns a float64 tensor of
    shape ``(prod d_f, n_invariant)``; index order is row-major over the factors.

    For two factors ``(rho_out, rho_in)`` this is a basis of ``Hom_G(V_in, V_out)`` (as
    flattened ``d_out x d_in`` matrices), because the representations are orthogonal.
    """
    reps = list(reps)
    G = reps[0].group
    dims = [r.dim for r in reps]
    D = math.prod(dims)
    if D > max_dim:
        raise ValueError(
            f"the basis route would solve a dense {D} x {D} constraint system for "
            f"{' (x) '.join(r.name for r in reps)} of {G.name} (limit {max_dim}); "
            "use route='spatial' or route='spectral'"
        )
    M = torch.zeros(D, D, dtype=_F64)
    eye = torch.eye(D, dtype=_F64)
    gens = G.generators()
    if len(gens):
        mats = [r(gens, dtype=_F64) for r in reps]  # each (n_gen, d, d)
        for s in range(len(gens)):
            S = mats[0][s]
            for m in mats[1:]:
                S = torch.kron(S, m[s])
            M += 2 * eye - S - S.T
    lie = [r.lie_algebra() for r in reps]
    for i in range(lie[0].shape[0]):
        A = torch.zeros(D, D, dtype=_F64)
        for f, X in enumerate(lie):
            left = math.prod(dims[:f])
            right = math.prod(dims[f + 1:])
            A += torch.kron(torch.kron(torch.eye(left, dtype=_F64), X[i]), torch.eye(right, dtype=_F64))
        M += A.T @ A
    if not len(gens) and not lie[0].shape[0]:
        return eye  # trivial group: everything is invariant
    return null_space_psd(M)
