"""Compact groups: the common interface and finite groups given by a Cayley table (private)."""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .._utils import check_orthogonal
from ._decompose import decompose_numerically, irreducible_subspaces
from ._rep import Irrep, PermutationRep, Representation, TableRep

__all__ = ["Group", "FiniteGroup"]

_F64 = torch.float64


class Group:
    """A compact group with its Haar measure, elements, irreps and representations.

    Group elements are tensors with a leading batch dimension; their encoding depends on the
    group (indices for finite groups, angles for SO(2), matrices for SO(3) and O(3)) and is
    documented on each group. Representations evaluate such batches: ``rho(g)`` has shape
    ``(n, d, d)``.
    """

    name: str = "G"
    is_finite: bool = False
    #: False for groups whose irreps equiproj does not know (only the basis route applies).
    has_irreps: bool = True

    def __init__(self) -> None:
        self._decomposition_cache: Dict = {}
        self._irrep_objects: Dict = {}

    # -------------------------------------------------------------- identity & equality
    @property
    def key(self):
        raise NotImplementedError

    def __eq__(self, other) -> bool:
        return isinstance(other, Group) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return self.name

    @property
    def order(self) -> Optional[int]:
        """Number of elements (``None`` for a continuous group)."""
        return None

    # -------------------------------------------------------------- elements
    def as_elements(self, g) -> torch.Tensor:
        """Validate and convert a batch of elements to this group's tensor encoding."""
        raise NotImplementedError

    def _element_dtype(self, g: torch.Tensor) -> torch.dtype:
        return g.dtype if g.is_floating_point() else torch.get_default_dtype()

    def sample(self, n: int, generator: Optional[torch.Generator] = None, **kw) -> torch.Tensor:
        """``n`` independent elements from the normalised Haar measure."""
        raise NotImplementedError

    def identity(self, n: int = 1) -> torch.Tensor:
        raise NotImplementedError

    def compose(self, a, b) -> torch.Tensor:
        """Elementwise product ``a b`` of two batches."""
        raise NotImplementedError

    def inverse(self, a) -> torch.Tensor:
        raise NotImplementedError

    def elements(self) -> torch.Tensor:
        raise ValueError(
            f"{self.name} is a continuous group and has no finite list of elements; "
            f"use {self.name}.sample(n, generator=...) or {self.name}.quadrature(band_limit)"
        )

    def generators(self) -> torch.Tensor:
        """Discrete generators: all generators of a finite group; for O(2) and O(3) the
        reflection or inversion that, with the Lie algebra, generates the group."""
        raise NotImplementedError

    def elements_from_matrices(self, R) -> torch.Tensor:
        """The elements whose defining matrices (``G.standard()``) are ``R``, shape ``(n, d, d)``.

        Then ``rho(G.elements_from_matrices(R))`` evaluates any representation ``rho`` at the
        group elements given as matrices (rotation matrices from e3nn, for instance). Matrices
        that are not orthogonal, or not in the group, raise a ``ValueError``.
        """
        raise NotImplementedError(f"{self.name} has no elements_from_matrices")

    def _matrices_arg(self, R, d: int) -> torch.Tensor:
        R = torch.as_tensor(R)
        if not R.is_floating_point():
            R = R.to(torch.get_default_dtype())
        if R.shape[-2:] != (d, d):
            raise ValueError(f"{self.name}: expected matrices of shape (n, {d}, {d}), got {tuple(R.shape)}")
        R = R.reshape(-1, d, d)
        tol = 1e-4 if R.dtype in (torch.float32, torch.float16, torch.bfloat16) else 1e-8
        R64 = R.to(_F64)
        err = float((R64 @ R64.transpose(-1, -2) - torch.eye(d, dtype=_F64, device=R.device)).abs().amax()) \
            if R.shape[0] else 0.0
        if err > tol:
            raise ValueError(f"{self.name}: the matrices must be orthogonal, but max |R R^T - I| = "
                             f"{err:.3g} > {tol:g}; "
                             "orthogonalise them first (equiproj.groups.orthogonalize)")
        return R

    @property
    def lie_algebra_dim(self) -> int:
        return 0

    def quadrature(self, band_limit: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
        """Elements and weights (float64, summing to 1) that integrate exactly every matrix
        coefficient of every irrep up to ``band_limit`` against the Haar measure. For a finite
        group: all elements with weight ``1/|G|``."""
        raise NotImplementedError

    # -------------------------------------------------------------- representations
    def irrep(self, *label) -> Irrep:
        """The irreducible representation with the given label (see the group's docs)."""
        label = self._normalize_label(label)
        if label not in self._irrep_objects:
            dim = self._irrep_dim(label)
            self._irrep_objects[label] = Irrep(self, label, dim, name=self._irrep_name(label))
        return self._irrep_objects[label]

    def irreps(self, band_limit: Optional[int] = None) -> List[Irrep]:
        """All irreps of a finite group; the irreps up to ``band_limit`` of a continuous one."""
        if isinstance(band_limit, str):
            raise TypeError(
                f"{self.name}.irreps(band_limit) takes an integer band limit, got the string {band_limit!r}; for an "
                f"e3nn irreps string use equiproj.interop.e3nn.from_e3nn({band_limit!r}, {self.name.lower()}())"
            )
        if band_limit is None:
            if not self.is_finite:
                raise ValueError(f"{self.name} has infinitely many irreps: pass band_limit=L")
            band_limit = 0
        return self.irreps_up_to(band_limit)

    def irreps_up_to(self, band_limit: int) -> List[Irrep]:
        raise NotImplementedError

    def trivial(self) -> Irrep:
        raise NotImplementedError

    def standard(self) -> Representation:
        """The defining representation."""
        raise NotImplementedError

    # ---------------------------------------------------------------- group knowledge used elsewhere
    def _decompose_numerically(self, rep: Representation):
        """The decomposition of ``rep`` into irreps, computed numerically (representations without
        a closed form call this)."""
        return decompose_numerically(rep)

    def contains_matrices(self, R) -> torch.Tensor:
        """Which of the orthogonal matrices ``R`` (``(n, d, d)``) are defining matrices of elements
        of this group (a boolean mask); e.g. the rotations among signed permutation matrices."""
        raise NotImplementedError(f"{self.name} cannot tell which matrices it contains")

    def harmonic_representation(self, l: int) -> Representation:
        """``H^l``: how the group acts on the degree-``l`` harmonics of the plane or space it acts on,
        ``Y^l(g x) = H^l(g) Y^l(x)`` (used by steerable kernels). Groups on the plane restrict the
        ``O(2)`` representation on the harmonics, groups in space the ``O(3)`` one; SO(2), O(2),
        SO(3) and O(3) give their own irreps."""
        raise ValueError(f"no steerable harmonics for {self.name}")

    def escnn_element_args(self, g) -> List[tuple]:
        """For each element of the batch ``g``: ``(args, kwargs)`` of escnn's ``G.element(*args, **kwargs)``
        for the corresponding escnn group (see :mod:`equiproj.interop.escnn`)."""
        raise NotImplementedError(f"{self.name} has no escnn counterpart")

    def regular(self) -> Representation:
        raise ValueError(
            f"{self.name} is continuous and has no finite-dimensional regular representation; "
            f"build a band-limited one from irreps, e.g. sum({self.name.lower()}().irrep(...) ...)"
        )

    # -------------------------------------------------------------- irreps, implemented per group
    def _normalize_label(self, label: tuple):
        return label[0] if len(label) == 1 else tuple(label)

    def _irrep_dim(self, label) -> int:
        raise NotImplementedError

    def _irrep_name(self, label) -> str:
        return f"irrep{label}"

    def _irrep_matrices(self, label, g: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _irrep_lie(self, label) -> torch.Tensor:
        k = self._irrep_dim(label)
        return torch.zeros(0, k, k, dtype=_F64)

    def _irrep_band_limit(self, label) -> int:
        return 0

    def _irrep_sort_key(self, label):
        return label


class FiniteGroup(Group):
    """A finite group given by its Cayley table.

    Elements are indices ``0 .. |G|-1`` (a long tensor), index 0 is the identity and
    ``table[a, b]`` is the index of the product ``a b``. Irreps are computed numerically from
    the regular representation unless a subclass gives them in closed form; they are then
    labelled ``0, 1, ...`` with the trivial irrep first.
    """

    is_finite = True

    def __init__(self, name: str, key, table: torch.Tensor, generators: Sequence[int],
                 defining: Optional[torch.Tensor] = None):
        super().__init__()
        table = torch.as_tensor(table, dtype=torch.long)
        n = table.shape[0]
        if table.shape != (n, n):
            raise ValueError(f"Cayley table must be square, got {tuple(table.shape)}")
        ar = torch.arange(n)
        if not (bool((table[0] == ar).all()) and bool((table[:, 0] == ar).all())):
            raise ValueError("element 0 must be the identity of the Cayley table")
        self.name = name
        self._key = key
        self.table = table
        self._order = n
        inv = (table == 0).float().argmax(dim=1)
        if not bool((table[ar, inv] == 0).all()):
            raise ValueError(f"{name}: the Cayley table is not a group table (missing inverses)")
        self._inverse = inv
        self._generators = torch.as_tensor(list(generators), dtype=torch.long)
        self._defining = None if defining is None else torch.as_tensor(defining, dtype=_F64)
        self._irrep_tables: Optional[Dict] = None

    @property
    def key(self):
        return self._key

    @property
    def order(self) -> int:
        return self._order

    # -------------------------------------------------------------- elements
    def as_elements(self, g) -> torch.Tensor:
        if isinstance(g, int):
            g = [g]
        g = torch.as_tensor(g)
        if g.is_floating_point() or g.is_complex():
            raise TypeError(f"elements of {self.name} are integer indices, got dtype {g.dtype}")
        g = g.to(torch.long).reshape(-1)
        if g.numel() and (int(g.min()) < 0 or int(g.max()) >= self._order):
            raise ValueError(
                f"element index out of range for {self.name} (order {self._order}): "
                f"got values in [{int(g.min())}, {int(g.max())}]"
            )
        return g

    def elements(self) -> torch.Tensor:
        """All elements, ``arange(|G|)`` (identity first)."""
        return torch.arange(self._order)

    def sample(self, n: int, generator: Optional[torch.Generator] = None, **kw) -> torch.Tensor:
        return torch.randint(self._order, (n,), generator=generator)

    def identity(self, n: int = 1) -> torch.Tensor:
        return torch.zeros(n, dtype=torch.long)

    def compose(self, a, b) -> torch.Tensor:
        a, b = self.as_elements(a), self.as_elements(b)
        return self.table[a, b]

    def inverse(self, a) -> torch.Tensor:
        return self._inverse[self.as_elements(a)]

    def generators(self) -> torch.Tensor:
        return self._generators

    def elements_from_matrices(self, R) -> torch.Tensor:
        """Indices of the elements whose defining matrices are ``R`` (matched to 1e-6).

        Examples
        --------
        >>> from equiproj.groups import dihedral
        >>> G = dihedral(4)
        >>> G.elements_from_matrices(G.standard()(G.elements())).tolist()
        [0, 1, 2, 3, 4, 5, 6, 7]
        """
        M = self.standard()(self.elements(), dtype=_F64)
        R = self._matrices_arg(R, M.shape[-1]).to(_F64)
        dist = (R[:, None] - M[None].to(R.device)).abs().flatten(2).amax(-1)  # (n, |G|)
        best, idx = dist.min(dim=1)
        if R.shape[0] and float(best.max()) > 1e-6:
            i = int(best.argmax())
            raise ValueError(f"matrix {i} is not the defining matrix of an element of {self.name} "
                             f"(nearest differs by {float(best[i]):.3g})")
        return idx.cpu()

    def quadrature(self, band_limit: int = 0):
        return self.elements(), torch.full((self._order,), 1.0 / self._order, dtype=_F64)

    # -------------------------------------------------------------- representations
    def regular(self) -> PermutationRep:
        """The regular representation: ``(rho(g) x)[h] = x[g^{-1} h]`` (acts by indexing)."""
        if "regular" not in self._irrep_objects:
            src = self.table[self._inverse]  # src[g, a] = g^{-1} a
            self._irrep_objects["regular"] = PermutationRep(self, src, name="regular", check=False)
        return self._irrep_objects["regular"]

    def standard(self) -> Representation:
        if self._defining is None:
            raise ValueError(f"{self.name} has no defining matrix representation")
        if "standard" not in self._irrep_objects:
            self._irrep_objects["standard"] = TableRep(self, self._defining, name="standard", check=False)
        return self._irrep_objects["standard"]

    def representation(self, matrices: Sequence, name: str = "rep") -> TableRep:
        """A representation from the images of the generators (``generators()`` order).

        The images are checked to be orthogonal, and the resulting map to be a homomorphism.
        """
        mats = torch.as_tensor(torch.stack([torch.as_tensor(m, dtype=_F64) for m in matrices]))
        if mats.shape[0] != len(self._generators):
            raise ValueError(
                f"{self.name} has {len(self._generators)} generators, got {mats.shape[0]} matrices"
            )
        check_orthogonal(mats, f"generator images of '{name}'")
        d = mats.shape[-1]
        table = torch.full((self._order, d, d), float("nan"), dtype=_F64)
        table[0] = torch.eye(d, dtype=_F64)
        frontier = [0]
        seen = {0}
        while frontier:
            nxt = []
            for a in frontier:
                for s_i, s in enumerate(self._generators.tolist()):
                    b = int(self.table[a, s])
                    if b not in seen:
                        table[b] = table[a] @ mats[s_i]
                        seen.add(b)
                        nxt.append(b)
            frontier = nxt
        if len(seen) != self._order:
            raise ValueError(f"the generators of {self.name} do not generate the whole group")
        return TableRep(self, table, name=name, check=True)

    # -------------------------------------------------------------- irreps
    def irreps_up_to(self, band_limit: int = 0) -> List[Irrep]:
        return [self.irrep(lab) for lab in self._irrep_labels()]

    def _irrep_labels(self) -> list:
        return list(self._numeric_irreps().keys())

    def trivial(self) -> Irrep:
        return self.irrep(self._irrep_labels()[0])

    def _normalize_label(self, label):
        lab = super()._normalize_label(label)
        labels = self._irrep_labels()
        if lab not in labels:
            raise ValueError(f"{self.name} has no irrep labelled {lab!r}; its irreps are {labels}")
        return lab

    def _irrep_dim(self, label) -> int:
        return self._irrep_table(label).shape[-1]

    def _irrep_table(self, label) -> torch.Tensor:
        return self._numeric_irreps()[label]

    def _irrep_matrices(self, label, g):
        return self._irrep_table(label).to(g.device)[g]

    def _irrep_sort_key(self, label):
        return self._irrep_labels().index(label)

    def _numeric_irreps(self) -> Dict[int, torch.Tensor]:
        """Irreps from the eigenspaces of a random element of the regular commutant."""
        if self._irrep_tables is not None:
            return self._irrep_tables
        if self._order > 2000:
            raise ValueError(f"{self.name} has order {self._order}: numerical irreps are limited to order 2000")
        reg = self.regular()
        elems, w = self.quadrature()
        for attempt in range(5):
            gen = torch.Generator().manual_seed(31337 + attempt)
            classes: List[Tuple[torch.Tensor, torch.Tensor]] = []
            for B in irreducible_subspaces(reg, elems, w, gen):
                T = B.T @ reg.act(elems, B)
                chi = torch.diagonal(T, dim1=-2, dim2=-1).sum(-1)
                if not any(c.shape == chi.shape and torch.allclose(c, chi, atol=1e-6) for c, _ in classes):
                    classes.append((chi, T))
            total = 0.0
            for chi, T in classes:
                e = float((chi * chi).mean())
                total += T.shape[-1] ** 2 / e
            if abs(total - self._order) < 1e-6 and all(abs(float(c[0]) - T.shape[-1]) < 1e-8 for c, T in classes):
                break
        else:  # pragma: no cover - random failure five times in a row
            raise RuntimeError(f"could not compute the irreps of {self.name}")

        def sort_key(item):
            chi, T = item
            trivial = T.shape[-1] == 1 and bool(torch.allclose(chi, torch.ones_like(chi)))
            return (not trivial, T.shape[-1], tuple(torch.round(-chi * 1e6).tolist()))

        classes.sort(key=sort_key)
        self._irrep_tables = {i: T for i, (_, T) in enumerate(classes)}
        return self._irrep_tables
