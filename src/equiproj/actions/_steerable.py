r"""Band-limited steerable kernel bases for groups that do not act exactly on a grid (private).

An equivariant kernel satisfies ``K(g x) = rho_out(g) K(x) rho_in(g)^T``. Writing ``x`` in polar
(2D) or spherical (3D) coordinates, every such kernel is a sum of

    K(x)_ab = phi_j(|x|) sum_m T_abm Y^l_m(x / |x|),

where ``phi_j`` is a radial profile (a Gaussian ring of radius ``r_j`` and width ``sigma_j``),
``Y^l`` are the circular harmonics ``(cos l theta, sin l theta)`` in 2D or the real spherical
harmonics of degree ``l`` in 3D (e3nn's), which transform as ``Y^l(g x) = H^l(g) Y^l(x)``, and
``T`` is an invariant tensor of ``rho_out (x) rho_in (x) H^l`` (this is where Clebsch-Gordan
coefficients enter; ``equiproj`` obtains ``T`` as a null space, see
:func:`equiproj.groups.invariant_basis`). Only degrees ``l <= L(r_j)`` are kept on ring ``j``
(the band limit), and ``l = 0`` only at the origin. The functions are sampled on the grid and
orthonormalised; the span is the "steerable subspace" onto which the projector projects.

Defaults follow the choices of escnn's ``R2Conv`` / ``R3Conv`` (Weiler and Cesa 2019; Cesa,
Lang and Weiler 2022): rings at ``0, 1, ..., (k-1)//2``, widths 0.6 (0.4 for the outermost,
0.005 at the origin) and the maximum degree ``0`` at ``r = 0``,
``min(2r, 2 if r = k//2 else 2r - (r+1) mod 2)`` elsewhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

import torch

from ..groups import Group, Representation, invariant_basis
from ._grid import geometric_dim, grid_coordinates

__all__ = ["SteerableConfig", "SteerableField", "harmonic_representation", "harmonics", "steerable_basis"]

_F64 = torch.float64


def _default_cutoff(r: float, max_radius: float) -> int:
    if r == 0:
        return 0
    return int(min(2 * r, 2 if r == max_radius else 2 * r - (r + 1) % 2))


@dataclass(frozen=True)
class SteerableConfig:
    """Radial rings, their widths and the maximum harmonic degree on each ring.

    Use :meth:`default` for a kernel size; ``band_limit`` caps every ring's degree.
    """

    rings: Tuple[float, ...]
    sigma: Tuple[float, ...]
    max_degree: Tuple[int, ...]

    def __post_init__(self):
        if not (len(self.rings) == len(self.sigma) == len(self.max_degree)) or not self.rings:
            raise ValueError("rings, sigma and max_degree must be non-empty and of equal length")
        if any(s <= 0 for s in self.sigma):
            raise ValueError(f"ring widths sigma must be positive, got {self.sigma}")
        if any(r < 0 for r in self.rings):
            raise ValueError(f"ring radii must be non-negative, got {self.rings}")

    @classmethod
    def default(cls, kernel_size: int, band_limit: Optional[int] = None, rings: Optional[Sequence[float]] = None,
                sigma=None, cutoff: Optional[Callable[[float], int]] = None) -> "SteerableConfig":
        k = int(kernel_size)
        if rings is None:
            n = math.ceil(k / 2)
            top = (k - 1) // 2
            rings = [top * i / (n - 1) for i in range(n)] if n > 1 else [0.0]
        rings = tuple(float(r) for r in rings)
        if sigma is None:
            sig = [0.6] * (len(rings) - 1) + [0.4]
            sig = [0.005 if r == 0 else s for r, s in zip(rings, sig)]
        elif isinstance(sigma, (int, float)):
            sig = [float(sigma)] * len(rings)
        else:
            sig = [float(s) for s in sigma]
        cut = cutoff or (lambda r: _default_cutoff(r, k // 2))
        deg = [int(cut(r)) for r in rings]
        if band_limit is not None:
            if band_limit < 0:
                raise ValueError(f"band_limit must be >= 0, got {band_limit}")
            deg = [min(d, int(band_limit)) for d in deg]
        return cls(rings, tuple(sig), tuple(deg))

    @property
    def band_limit(self) -> int:
        return max(self.max_degree)


def harmonic_representation(group: Group, l: int) -> Representation:
    """``H^l``: how ``group`` acts on the degree-``l`` harmonics of its plane or space,
    ``Y^l(g x) = H^l(g) Y^l(x)`` (the group's own :meth:`Group.harmonic_representation`)."""
    d = geometric_dim(group)
    if d not in (2, 3):
        raise ValueError(f"steerable kernels need a group acting on the plane or space, {group.name} acts on R^{d}")
    return group.harmonic_representation(l)


def harmonics(l: int, coords: torch.Tensor) -> torch.Tensor:
    """Degree-``l`` harmonics at ``coords`` (K, d), shape ``(K, 2)`` (2D, ``l >= 1``),
    ``(K, 2l+1)`` (3D) or ``(K, 1)`` (``l = 0``); zero at the origin for ``l > 0``."""
    coords = coords.to(_F64)
    d = coords.shape[-1]
    r = coords.norm(dim=-1)
    at_origin = r < 1e-12
    if l == 0:
        return torch.ones(coords.shape[0], 1, dtype=_F64)
    if d == 2:
        theta = torch.atan2(coords[:, 1], coords[:, 0])
        Y = torch.stack([torch.cos(l * theta), torch.sin(l * theta)], -1)
    else:
        from e3nn.o3 import spherical_harmonics

        old = torch.get_default_dtype()
        torch.set_default_dtype(_F64)
        try:
            safe = torch.where(at_origin[:, None], torch.ones_like(coords), coords)
            Y = spherical_harmonics(l, safe, normalize=True, normalization="component").to(_F64)
        finally:
            torch.set_default_dtype(old)
    return torch.where(at_origin[:, None], torch.zeros_like(Y), Y)


def steerable_basis(t_out: Representation, t_in: Representation, size: Sequence[int],
                    config: SteerableConfig, rtol: float = 1e-9) -> torch.Tensor:
    """Orthonormal basis (float64, shape ``(d_out * d_in * K, n)``) of the sampled steerable
    kernels from ``t_in`` to ``t_out`` on a grid of ``size``; row index ``(a * d_in + b) * K + x``.
    """
    G = t_out.group
    size = tuple(int(s) for s in size)
    if len(set(size)) != 1:
        raise ValueError(f"steerable kernels need a square or cubic grid, got kernel size {size}")
    P = grid_coordinates(size)
    radius = P.norm(dim=-1)
    d_o, d_i, K = t_out.dim, t_in.dim, P.shape[0]
    elements = []
    for rj, sj, L in zip(config.rings, config.sigma, config.max_degree):
        phi = torch.exp(-0.5 * (radius - rj) ** 2 / sj ** 2)  # (K,)
        for l in range(0, L + 1):
            H = harmonic_representation(G, l)
            T = invariant_basis([t_out, t_in, H])  # (d_o * d_i * h, n_T)
            if T.shape[1] == 0:
                continue
            T = T.reshape(d_o, d_i, H.dim, -1)
            Y = harmonics(l, P)  # (K, h)
            B = torch.einsum("abmt,xm,x->tabx", T, Y, phi)
            elements.append(B.reshape(B.shape[0], -1))
    if not elements:
        return torch.zeros(d_o * d_i * K, 0, dtype=_F64)
    A = torch.cat(elements)
    norms = A.norm(dim=1, keepdim=True)
    A = A[norms[:, 0] > 1e-12] / norms[norms[:, 0] > 1e-12]
    if A.shape[0] == 0:
        return torch.zeros(d_o * d_i * K, 0, dtype=_F64)
    _, S, Vh = torch.linalg.svd(A, full_matrices=False)
    rank = int((S > rtol * S[0]).sum())
    return Vh[:rank].T.contiguous()


class SteerableField:
    """Stand-in for the input field type ``tau (x) grid`` of a kernel when the group does not act
    exactly on the grid: it carries the size of the kernel and the steerable configuration, and
    its pair projectors use the steerable basis (route ``'basis'``)."""

    steerable = True
    permutation = None

    def __init__(self, tau: Representation, size: Tuple[int, ...], config: SteerableConfig):
        self.tau, self.size, self.config = tau, tuple(size), config
        self.group = tau.group
        self.dim = tau.dim * math.prod(self.size)
        self.name = f"({tau.name} x steerable{'x'.join(map(str, self.size))})"

    @property
    def key(self):
        return ("steerable", self.tau.key, self.size, self.config)

    def __repr__(self):
        return self.name
