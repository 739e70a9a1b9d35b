"""The continuous groups SO(2), O(2), SO(3) and O(3) (private module).

SO(3) irreps are the real Wigner matrices of e3nn, in e3nn's basis. They are evaluated from the
rotation matrix by the exact Clebsch-Gordan recursion
``D^l = (2l+1) C_l^T (D^{l-1} (x) D^1) C_l`` with e3nn's ``wigner_3j(l-1, 1, l)``; unlike
conversions through Euler angles this keeps machine precision near the poles.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from ._group import Group

__all__ = ["SO2", "O2", "SO3", "O3", "so2", "o2", "so3", "o3"]

_F64 = torch.float64
_J = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=_F64)
_F = torch.diag(torch.tensor([1.0, -1.0], dtype=_F64))


def _rot2(theta: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(theta), torch.sin(theta)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def _check_int(label, what: str, low: int = 0) -> int:
    if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or label < low:
        raise ValueError(f"{what} must be an integer >= {low}, got {label!r}")
    return int(label)


# ====================================================================== SO(2), O(2)


class SO2(Group):
    """The rotation group SO(2). Elements: angles in radians, a float tensor of shape ``(n,)``.

    Irreps are labelled by frequency ``k >= 0``: ``k = 0`` trivial, ``k >= 1`` the 2D rotation
    by ``k theta`` (complex type). ``standard()`` is ``irrep(1)``.

    Examples
    --------
    >>> import torch
    >>> from equiproj.groups import so2
    >>> G = so2()
    >>> rho = G.irrep(2)
    >>> g = torch.tensor([0.25], dtype=torch.float64)
    >>> bool(torch.allclose(rho(g)[0], G.irrep(1)(2 * g)[0]))
    True
    """

    name = "SO(2)"

    @property
    def key(self):
        return ("SO2",)

    @property
    def lie_algebra_dim(self):
        return 1

    def as_elements(self, g):
        g = torch.as_tensor(g)
        if not g.is_floating_point():
            g = g.to(torch.get_default_dtype())
        return g.reshape(-1)

    def sample(self, n, generator=None, dtype=_F64, device=None):
        return 2 * math.pi * torch.rand(n, generator=generator, dtype=dtype, device=device)

    def identity(self, n=1):
        return torch.zeros(n, dtype=_F64)

    def compose(self, a, b):
        return torch.remainder(self.as_elements(a) + self.as_elements(b), 2 * math.pi)

    def inverse(self, a):
        return torch.remainder(-self.as_elements(a), 2 * math.pi)

    def generators(self):
        return torch.zeros(0, dtype=_F64)

    def elements_from_matrices(self, R):
        """Angles ``theta`` in ``[0, 2 pi)`` of rotation matrices ``R`` of shape ``(n, 2, 2)``."""
        R = self._matrices_arg(R, 2)
        if R.shape[0] and bool((torch.linalg.det(R.to(_F64)) < 0).any()):
            raise ValueError("SO(2) elements must have determinant +1; use o2() for reflections")
        return torch.remainder(torch.atan2(R[:, 1, 0], R[:, 0, 0]), 2 * math.pi)

    def quadrature(self, band_limit=0):
        N = 2 * band_limit + 1
        return 2 * math.pi * torch.arange(N, dtype=_F64) / N, torch.full((N,), 1.0 / N, dtype=_F64)

    def _normalize_label(self, label):
        if len(label) != 1:
            raise ValueError(f"SO(2) irreps take one label (the frequency k), got {label}")
        return _check_int(label[0], "the SO(2) frequency k")

    def _irrep_dim(self, k):
        return 1 if k == 0 else 2

    def _irrep_name(self, k):
        return f"irrep({k})"

    def _irrep_matrices(self, k, g):
        g = g.to(_F64)
        if k == 0:
            return torch.ones(g.shape[0], 1, 1, dtype=_F64, device=g.device)
        return _rot2(k * g)

    def _irrep_lie(self, k):
        return (k * _J)[None] if k else torch.zeros(1, 1, 1, dtype=_F64)

    def _irrep_band_limit(self, k):
        return k

    def irreps_up_to(self, band_limit):
        return [self.irrep(k) for k in range(band_limit + 1)]

    def trivial(self):
        return self.irrep(0)

    def standard(self):
        return self.irrep(1)

    def contains_matrices(self, R):
        R = torch.as_tensor(R, dtype=_F64)
        return torch.linalg.det(R) > 0

    def harmonic_representation(self, l):
        return self.irrep(l)

    def escnn_element_args(self, g):
        return [((float(t),), {}) for t in self.as_elements(g).to(_F64)]


class O2(Group):
    """The orthogonal group O(2) = rotations ``r_theta`` and reflections ``r_theta f``.

    Elements: float tensor of shape ``(n, 2)``: ``[theta, s]`` with ``s`` in ``{0, 1}`` for
    ``r_theta f^s``, ``f = diag(1, -1)`` (reflection across the x axis). Irreps ``(j, k)``:
    ``(0, 0)`` trivial, ``(1, 0)`` the determinant, ``(1, k)`` for ``k >= 1`` the 2D
    representation ``r_theta -> rot(k theta)``, ``f -> diag(1, -1)`` (real type).
    ``standard()`` is ``irrep(1, 1)``.
    """

    name = "O(2)"

    @property
    def key(self):
        return ("O2",)

    @property
    def lie_algebra_dim(self):
        return 1

    def as_elements(self, g):
        g = torch.as_tensor(g)
        if not g.is_floating_point():
            g = g.to(torch.get_default_dtype())
        if g.shape[-1:] != (2,):
            raise ValueError(f"O(2) elements are [theta, s] pairs of shape (n, 2), got {tuple(g.shape)}")
        return g.reshape(-1, 2)

    def sample(self, n, generator=None, dtype=_F64, device=None):
        theta = 2 * math.pi * torch.rand(n, generator=generator, dtype=dtype, device=device)
        s = torch.randint(2, (n,), generator=generator, device=device).to(dtype)
        return torch.stack([theta, s], -1)

    def identity(self, n=1):
        return torch.zeros(n, 2, dtype=_F64)

    def compose(self, a, b):
        a, b = self.as_elements(a), self.as_elements(b)
        sign = 1 - 2 * a[:, 1]
        theta = torch.remainder(a[:, 0] + sign * b[:, 0], 2 * math.pi)
        return torch.stack([theta, torch.remainder(a[:, 1] + b[:, 1], 2)], -1)

    def inverse(self, a):
        a = self.as_elements(a)
        theta = torch.where(a[:, 1] > 0.5, a[:, 0], torch.remainder(-a[:, 0], 2 * math.pi))
        return torch.stack([theta, a[:, 1]], -1)

    def generators(self):
        return torch.tensor([[0.0, 1.0]], dtype=_F64)

    def elements_from_matrices(self, R):
        """``[theta, s]`` with ``R = rot(theta) f^s`` for orthogonal ``R`` of shape ``(n, 2, 2)``."""
        R = self._matrices_arg(R, 2)
        s = (torch.linalg.det(R.to(_F64)) < 0).to(R.dtype)
        Rr = torch.where(s[:, None, None] > 0.5, R @ _F.to(R), R)  # rot(theta) = R f^s
        theta = torch.remainder(torch.atan2(Rr[:, 1, 0], Rr[:, 0, 0]), 2 * math.pi)
        return torch.stack([theta, s], -1)

    def quadrature(self, band_limit=0):
        N = 2 * band_limit + 1
        theta = 2 * math.pi * torch.arange(N, dtype=_F64) / N
        g = torch.cat([torch.stack([theta, torch.zeros(N, dtype=_F64)], -1),
                       torch.stack([theta, torch.ones(N, dtype=_F64)], -1)])
        return g, torch.full((2 * N,), 0.5 / N, dtype=_F64)

    def _normalize_label(self, label):
        if len(label) != 2:
            raise ValueError(f"O(2) irreps take two labels (j, k), got {label}")
        j, k = _check_int(label[0], "j"), _check_int(label[1], "the O(2) frequency k")
        if j > 1 or (k > 0 and j != 1):
            raise ValueError(f"O(2) irreps are (0, 0), (1, 0) and (1, k) for k >= 1, got {label}")
        return (j, k)

    def _irrep_dim(self, label):
        return 1 if label[1] == 0 else 2

    def _irrep_matrices(self, label, g):
        j, k = label
        g = g.to(_F64)
        theta, s = g[:, 0], g[:, 1]
        if k == 0:
            val = (1 - 2 * s) if j == 1 else torch.ones_like(s)
            return val[:, None, None]
        R = _rot2(k * theta)
        return torch.where((s > 0.5)[:, None, None], R @ _F.to(g.device), R)

    def _irrep_lie(self, label):
        j, k = label
        return (k * _J)[None] if k else torch.zeros(1, 1, 1, dtype=_F64)

    def _irrep_band_limit(self, label):
        return label[1]

    def _irrep_sort_key(self, label):
        return (label[1], label[0])

    def irreps_up_to(self, band_limit):
        return [self.irrep(0, 0), self.irrep(1, 0)] + [self.irrep(1, k) for k in range(1, band_limit + 1)]

    def trivial(self):
        return self.irrep(0, 0)

    def standard(self):
        return self.irrep(1, 1)

    def contains_matrices(self, R):
        R = torch.as_tensor(R, dtype=_F64)
        return torch.ones(R.shape[0], dtype=torch.bool)

    def harmonic_representation(self, l):
        return self.irrep(1, l) if l else self.trivial()

    def escnn_element_args(self, g):
        return [(((int(round(float(s))), float(t)),), {}) for t, s in self.as_elements(g).to(_F64)]


# ====================================================================== SO(3), O(3)


@functools.lru_cache(maxsize=None)
def _cg_recursion(l: int) -> torch.Tensor:
    """``sqrt(2l+1) C`` with ``C = wigner_3j(l-1, 1, l)`` as a ((2l-1)*3, 2l+1) isometry."""
    from e3nn.o3 import wigner_3j

    C = wigner_3j(l - 1, 1, l, dtype=_F64, device="cpu").reshape((2 * l - 1) * 3, 2 * l + 1)
    return C * math.sqrt(2 * l + 1)


@functools.lru_cache(maxsize=None)
def _e3nn_l1_basis() -> torch.Tensor:
    """Orthogonal ``B`` with e3nn's ``D^1(R) = B R B^T`` (identity for e3nn >= 0.5)."""
    from e3nn.o3 import Irrep as E3Irrep

    Rs = torch.tensor([[[0.36, 0.48, -0.8], [-0.8, 0.6, 0.0], [0.48, 0.64, 0.6]],
                       [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]], dtype=_F64)
    D = E3Irrep(1, 1).D_from_matrix(Rs)
    import itertools

    for perm in itertools.permutations(range(3)):
        for signs in itertools.product([1.0, -1.0], repeat=3):
            B = torch.zeros(3, 3, dtype=_F64)
            B[torch.arange(3), torch.tensor(perm)] = torch.tensor(signs, dtype=_F64)
            if torch.allclose(B @ Rs @ B.T, D, atol=1e-4):  # e3nn loses ~1e-7 near poles
                return B
    raise RuntimeError("could not relate e3nn's l=1 basis to xyz coordinates")  # pragma: no cover


@functools.lru_cache(maxsize=None)
def _so3_lie(l: int) -> torch.Tensor:
    from e3nn.o3 import so3_generators

    old = torch.get_default_dtype()
    torch.set_default_dtype(_F64)  # e3nn builds the generators in the default dtype
    try:
        X = so3_generators(l).to(_F64)
    finally:
        torch.set_default_dtype(old)
    return X


def wigner_D(l: int, R: torch.Tensor) -> torch.Tensor:
    """Real Wigner matrices ``D^l(R)`` of shape ``(n, 2l+1, 2l+1)`` for rotations ``R`` (n, 3, 3).

    Same basis as ``e3nn.o3.Irrep(l, 1).D_from_matrix``; computed by the exact Clebsch-Gordan
    recursion, so it keeps float64 precision for every rotation.
    """
    R = R.to(_F64)
    n = R.shape[0]
    if l == 0:
        return torch.ones(n, 1, 1, dtype=_F64, device=R.device)
    B = _e3nn_l1_basis().to(R.device)
    D1 = B @ R @ B.T
    D = D1
    for m in range(2, l + 1):
        C = _cg_recursion(m).to(R.device)
        K = torch.einsum("nij,nkl->nikjl", D, D1).reshape(n, (2 * m - 1) * 3, (2 * m - 1) * 3)
        D = C.T @ K @ C
    return D


def _random_rotations(n, generator, dtype, device):
    q = torch.randn(n, 4, generator=generator, dtype=_F64, device=device)
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    R = torch.stack([
        torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        torch.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        torch.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], -2)
    return R.to(dtype)


def _rz(t):
    c, s, o, z = torch.cos(t), torch.sin(t), torch.ones_like(t), torch.zeros_like(t)
    return torch.stack([torch.stack([c, -s, z], -1), torch.stack([s, c, z], -1), torch.stack([z, z, o], -1)], -2)


def _ry(t):
    c, s, o, z = torch.cos(t), torch.sin(t), torch.ones_like(t), torch.zeros_like(t)
    return torch.stack([torch.stack([c, z, s], -1), torch.stack([z, o, z], -1), torch.stack([-s, z, c], -1)], -2)


def _so3_quadrature(L: int):
    """ZYZ product rule: uniform alpha, gamma (2L+1 each), Gauss-Legendre in cos(beta)."""
    N = 2 * L + 1
    nb = L // 2 + 1
    x, w = np.polynomial.legendre.leggauss(nb)
    beta = torch.tensor(np.arccos(x), dtype=_F64)
    wb = torch.tensor(w / 2.0, dtype=_F64)
    ang = 2 * math.pi * torch.arange(N, dtype=_F64) / N
    A, Bt, Cg = torch.meshgrid(ang, beta, ang, indexing="ij")
    W = (torch.ones(N, dtype=_F64)[:, None, None] * wb[None, :, None] * torch.ones(N, dtype=_F64)[None, None, :])
    R = _rz(A.reshape(-1)) @ _ry(Bt.reshape(-1)) @ _rz(Cg.reshape(-1))
    W = (W / (N * N)).reshape(-1)
    return R, W


class SO3(Group):
    """The rotation group SO(3). Elements: rotation matrices, a float tensor ``(n, 3, 3)``.

    Irreps are labelled by their degree ``l >= 0`` (dimension ``2l + 1``, real type): the real
    Wigner matrices of e3nn. ``standard()`` is the defining representation ``R -> R`` (equal to
    ``irrep(1)`` in e3nn's basis).

    Examples
    --------
    >>> import torch
    >>> from equiproj.groups import so3
    >>> G = so3()
    >>> R = G.sample(4, generator=torch.Generator().manual_seed(0))
    >>> D = G.irrep(2)(R)
    >>> D.shape, bool(torch.allclose(D @ D.transpose(1, 2), torch.eye(5, dtype=D.dtype).expand(4, 5, 5)))
    (torch.Size([4, 5, 5]), True)
    """

    name = "SO(3)"
    _det_allowed = (1.0,)

    @property
    def key(self):
        return ("SO3",)

    @property
    def lie_algebra_dim(self):
        return 3

    def as_elements(self, g):
        g = torch.as_tensor(g)
        if not g.is_floating_point():
            g = g.to(torch.get_default_dtype())
        if g.shape[-2:] != (3, 3):
            raise ValueError(f"{self.name} elements are 3x3 matrices of shape (n, 3, 3), got {tuple(g.shape)}")
        g = g.reshape(-1, 3, 3)
        if g.shape[0]:
            tol = 1e-4 if g.dtype == torch.float32 else 1e-8
            G64 = g.to(_F64)
            err = (G64 @ G64.transpose(-1, -2) - torch.eye(3, dtype=_F64, device=g.device)).abs().amax()
            det = torch.linalg.det(G64)
            if float(err) > tol:
                raise ValueError(f"{self.name} elements must be orthogonal matrices (max |R R^T - I| = {float(err):.2g})")
            if 1.0 not in self._det_allowed or -1.0 not in self._det_allowed:
                if bool(((det - self._det_allowed[0]).abs() > 1e-3).any()):
                    raise ValueError(f"{self.name} elements must have determinant {self._det_allowed[0]:+g}")
        return g

    def sample(self, n, generator=None, dtype=_F64, device=None):
        return _random_rotations(n, generator, dtype, device)

    def identity(self, n=1):
        return torch.eye(3, dtype=_F64).expand(n, 3, 3).clone()

    def compose(self, a, b):
        return self.as_elements(a) @ self.as_elements(b)

    def inverse(self, a):
        return self.as_elements(a).transpose(-1, -2)

    def generators(self):
        return torch.zeros(0, 3, 3, dtype=_F64)

    def elements_from_matrices(self, R):
        """The elements given by rotation (for O(3): orthogonal) matrices ``R`` of shape ``(n, 3, 3)``.

        Elements of SO(3) and O(3) *are* their matrices, so this checks them (orthogonality to 1e-4
        in float32 and 1e-8 in float64, the determinant) and returns them as a batch, in their dtype.

        Examples
        --------
        >>> import torch
        >>> from equiproj.groups import o3
        >>> G = o3()
        >>> R = -torch.eye(3)[None]                      # the inversion
        >>> G.irrep(1, -1)(G.elements_from_matrices(R))[0].diagonal().tolist()
        [-1.0, -1.0, -1.0]
        """
        return self.as_elements(self._matrices_arg(R, 3))

    def quadrature(self, band_limit=0):
        return _so3_quadrature(band_limit)

    def _normalize_label(self, label):
        if len(label) != 1:
            raise ValueError(f"SO(3) irreps take one label (the degree l), got {label}")
        return _check_int(label[0], "the SO(3) degree l")

    def _irrep_dim(self, l):
        return 2 * l + 1

    def _irrep_name(self, l):
        return f"irrep({l})"

    def _irrep_matrices(self, l, g):
        return wigner_D(l, g)

    def _irrep_lie(self, l):
        return _so3_lie(l)

    def _irrep_band_limit(self, l):
        return l

    def irreps_up_to(self, band_limit):
        return [self.irrep(l) for l in range(band_limit + 1)]

    def trivial(self):
        return self.irrep(0)

    def standard(self):
        B = _e3nn_l1_basis()
        if torch.equal(B, torch.eye(3, dtype=_F64)):
            return self.irrep(1)
        return self.irrep(1).change_basis(B.T, name="standard")

    def contains_matrices(self, R):
        R = torch.as_tensor(R, dtype=_F64)
        return torch.linalg.det(R) > 0

    def harmonic_representation(self, l):
        return self.irrep(l)

    def escnn_element_args(self, g):
        return [((r,), {"param": "MAT"}) for r in self.as_elements(g).to(_F64).numpy()]


class O3(SO3):
    """The orthogonal group O(3) = SO(3) x {I, -I}. Elements: orthogonal matrices ``(n, 3, 3)``.

    Irreps ``(l, p)``: degree ``l`` and parity ``p = +1`` (even) or ``-1`` (odd), with
    ``D(R) = D^l(det(R) R) * p^((1 - det R) / 2)``. ``standard()`` is ``irrep(1, -1)`` (vectors
    are odd).
    """

    name = "O(3)"
    _det_allowed = (1.0, -1.0)

    @property
    def key(self):
        return ("O3",)

    def sample(self, n, generator=None, dtype=_F64, device=None):
        R = _random_rotations(n, generator, dtype, device)
        s = 1 - 2 * torch.randint(2, (n,), generator=generator, device=device)
        return R * s.to(R.dtype)[:, None, None]

    def generators(self):
        return -torch.eye(3, dtype=_F64)[None]

    def quadrature(self, band_limit=0):
        R, W = _so3_quadrature(band_limit)
        return torch.cat([R, -R]), torch.cat([W, W]) / 2

    def _normalize_label(self, label):
        if len(label) != 2:
            raise ValueError(f"O(3) irreps take two labels (l, p) with p = +1 or -1, got {label}")
        l = _check_int(label[0], "the O(3) degree l")
        if label[1] not in (1, -1):
            raise ValueError(f"the O(3) parity p must be +1 or -1, got {label[1]!r}")
        return (l, int(label[1]))

    def _irrep_dim(self, label):
        return 2 * label[0] + 1

    def _irrep_name(self, label):
        return f"irrep({label[0]},{'+' if label[1] > 0 else '-'})"

    def _irrep_matrices(self, label, g):
        l, p = label
        g = g.to(_F64)
        det = torch.linalg.det(g).sign()
        D = wigner_D(l, g * det[:, None, None])
        if p == -1:
            D = D * det[:, None, None]
        return D

    def _irrep_lie(self, label):
        return _so3_lie(label[0])

    def _irrep_band_limit(self, label):
        return label[0]

    def _irrep_sort_key(self, label):
        return (label[0], label[1] < 0)

    def irreps_up_to(self, band_limit):
        return [self.irrep(l, p) for l in range(band_limit + 1) for p in (1, -1)]

    def trivial(self):
        return self.irrep(0, 1)

    def standard(self):
        B = _e3nn_l1_basis()
        if torch.equal(B, torch.eye(3, dtype=_F64)):
            return self.irrep(1, -1)
        return self.irrep(1, -1).change_basis(B.T, name="standard")

    def contains_matrices(self, R):
        R = torch.as_tensor(R, dtype=_F64)
        return torch.ones(R.shape[0], dtype=torch.bool)

    def harmonic_representation(self, l):
        return self.irrep(l, (-1) ** l)

    def escnn_element_args(self, g):
        out = []
        for r in self.as_elements(g).to(_F64).numpy():  # escnn: (inversion flag, rotation)
            d = np.linalg.det(r)
            out.append((((int(d < 0), r * np.sign(d)),), {"param": "MAT"}))
        return out


@functools.lru_cache(maxsize=None)
def so2() -> SO2:
    """The rotation group SO(2)."""
    return SO2()


@functools.lru_cache(maxsize=None)
def o2() -> O2:
    """The orthogonal group O(2)."""
    return O2()


@functools.lru_cache(maxsize=None)
def so3() -> SO3:
    """The rotation group SO(3)."""
    return SO3()


@functools.lru_cache(maxsize=None)
def o3() -> O3:
    """The orthogonal group O(3)."""
    return O3()
