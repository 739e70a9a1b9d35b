"""Matrix Lie groups O(n) and SO(n) given by their Lie algebra (private module).

For ``n`` other than 2 and 3 equiproj does not know the irreducible representations, but the
basis route needs only generators: the Lie algebra ``so(n)`` (``E_ij - E_ji``) and, for O(n), one
reflection. Representations are built from :meth:`trivial`, :meth:`standard` and
:meth:`determinant` with ``+``, ``n *`` and tensor products; the spectral and spatial routes do
not apply.
"""

from __future__ import annotations

import functools

import torch

from ._group import Group
from ._rep import Representation

__all__ = ["MatrixLieGroup", "orthogonal", "special_orthogonal"]

_F64 = torch.float64


class _DefiningRep(Representation):
    """Trivial, determinant or defining representation of a matrix Lie group."""

    def __init__(self, group: "MatrixLieGroup", kind: str):
        dim = group.n if kind == "standard" else 1
        super().__init__(group, dim, kind)
        self.kind = kind

    @property
    def key(self):
        return ("lie-rep", self.kind)

    def _matrices(self, g):
        g = g.to(_F64)
        if self.kind == "standard":
            return g
        if self.kind == "trivial":
            return torch.ones(g.shape[0], 1, 1, dtype=_F64, device=g.device)
        return torch.linalg.det(g).sign()[:, None, None]

    def lie_algebra(self):
        n = self.group.n
        L = n * (n - 1) // 2
        if self.kind != "standard":
            return torch.zeros(L, 1, 1, dtype=_F64)
        return self.group._lie_basis()

    def _decompose(self):
        raise ValueError(
            f"equiproj has no irreducible representations of {self.group.name}: use route='basis' "
            "(the spectral and spatial routes do not apply)"
        )

    def is_trivial(self) -> bool:
        return self.kind == "trivial"


class MatrixLieGroup(Group):
    """O(n) or SO(n) for any ``n``; elements are ``(batch, n, n)`` orthogonal matrices.

    Examples
    --------
    >>> import torch
    >>> from equiproj import LinearProjector
    >>> from equiproj.groups import orthogonal
    >>> G = orthogonal(5)
    >>> V = G.standard()
    >>> P = LinearProjector(2 * V, G.trivial() + V, route="basis")
    >>> P.dim            # no invariant linear map from vectors to scalars; a I per vector
    2
    """

    has_irreps = False

    def __init__(self, n: int, special: bool):
        if not isinstance(n, int) or n < 2:
            raise ValueError(f"the dimension n must be an integer >= 2, got {n!r}")
        super().__init__()
        self.n, self.special = n, special
        self.name = f"{'SO' if special else 'O'}({n})"
        self._reps = {}

    @property
    def key(self):
        return ("SOn" if self.special else "On", self.n)

    @property
    def lie_algebra_dim(self):
        return self.n * (self.n - 1) // 2

    @functools.lru_cache(maxsize=None)
    def _lie_basis(self) -> torch.Tensor:
        n = self.n
        out = []
        for i in range(n):
            for j in range(i + 1, n):
                E = torch.zeros(n, n, dtype=_F64)
                E[i, j], E[j, i] = -1.0, 1.0
                out.append(E)
        return torch.stack(out)

    def as_elements(self, g):
        g = torch.as_tensor(g)
        if not g.is_floating_point():
            g = g.to(torch.get_default_dtype())
        if g.shape[-2:] != (self.n, self.n):
            raise ValueError(f"{self.name} elements are {self.n}x{self.n} matrices, got shape {tuple(g.shape)}")
        g = g.reshape(-1, self.n, self.n)
        G64 = g.to(_F64)
        err = (G64 @ G64.transpose(-1, -2) - torch.eye(self.n, dtype=_F64, device=g.device)).abs().amax()
        tol = 1e-4 if g.dtype == torch.float32 else 1e-8
        if g.shape[0] and float(err) > tol:
            raise ValueError(f"{self.name} elements must be orthogonal matrices (max |g g^T - I| = {float(err):.2g})")
        if self.special and g.shape[0] and bool((torch.linalg.det(G64) < 0).any()):
            raise ValueError(f"{self.name} elements must have determinant +1")
        return g

    def sample(self, n, generator=None, dtype=_F64, device=None):
        A = torch.randn(n, self.n, self.n, generator=generator, dtype=_F64)
        Q, R = torch.linalg.qr(A)
        Q = Q * torch.sign(torch.diagonal(R, dim1=-2, dim2=-1))[:, None, :]  # Haar measure
        if self.special:
            neg = torch.linalg.det(Q) < 0
            Q[neg, :, 0] = -Q[neg, :, 0]
        return Q.to(dtype=dtype, device=device)

    def identity(self, n=1):
        return torch.eye(self.n, dtype=_F64).expand(n, self.n, self.n).clone()

    def compose(self, a, b):
        return self.as_elements(a) @ self.as_elements(b)

    def inverse(self, a):
        return self.as_elements(a).transpose(-1, -2)

    def generators(self):
        if self.special:
            return torch.zeros(0, self.n, self.n, dtype=_F64)
        R = torch.eye(self.n, dtype=_F64)
        R[0, 0] = -1.0
        return R[None]

    def quadrature(self, band_limit=0):
        raise ValueError(f"equiproj has no exact quadrature for {self.name}: sample with {self.name}.sample(...)")

    def _rep(self, kind: str) -> Representation:
        if kind not in self._reps:
            self._reps[kind] = _DefiningRep(self, kind)
        return self._reps[kind]

    def trivial(self):
        return self._rep("trivial")

    def standard(self):
        return self._rep("standard")

    def determinant(self):
        """The sign representation ``g -> det(g)`` (trivial on SO(n))."""
        return self._rep("trivial" if self.special else "determinant")

    def irrep(self, *label):
        raise ValueError(f"equiproj has no irreps of {self.name}; use trivial(), standard() and determinant()")

    def irreps_up_to(self, band_limit):
        raise ValueError(f"equiproj has no irreps of {self.name}")


@functools.lru_cache(maxsize=None)
def orthogonal(n: int) -> MatrixLieGroup:
    """The orthogonal group O(n) (basis route only for n >= 4; use :func:`o2`, :func:`o3` for n = 2, 3)."""
    return MatrixLieGroup(n, special=False)


@functools.lru_cache(maxsize=None)
def special_orthogonal(n: int) -> MatrixLieGroup:
    """The rotation group SO(n) (basis route only for n >= 4)."""
    return MatrixLieGroup(n, special=True)
