"""Group actions on pixel and voxel grids (private module).

Coordinates are in *array-axis order*: a point of a 2D grid is ``(p0, p1)`` along the axes
``(-2, -1)`` of a tensor (rows, columns), measured from the grid's centre; 3D grids use
``(p0, p1, p2)`` along ``(-3, -2, -1)``. A group acts on the plane or space through its
defining representation ``G.standard()`` applied to these coordinates, and on a function on
the grid by ``(g . f)(p) = f(g^{-1} p)``. With this convention the quarter turn of ``C4``
(element 1, ``[[0, -1], [1, 0]]``) acts like ``torch.rot90(x, 1, dims=(-2, -1))`` and the
reflection of ``D_N`` (``diag(1, -1)``) like ``torch.flip(x, dims=(-1,))``.

A group whose every element maps the grid onto itself (C2, C4, the flips and D4 on square
grids; the 24 or 48 symmetries of the cube on cubic grids) acts by an exact permutation of the
grid points; other elements (SO(2) angles, C_N for N other than 1, 2, 4) are applied by
interpolation.
"""

from __future__ import annotations

import functools
import math
from typing import Optional, Sequence, Tuple

import torch

from ..groups import Group, PermutationRep, Representation

__all__ = ["grid_coordinates", "grid_permutation", "grid_permutations", "grid_representation", "geometric_dim",
           "transform_feature_map", "feature_map_action"]

_F64 = torch.float64


def geometric_dim(group: Group) -> int:
    """Dimension of the space the group acts on (that of its defining representation)."""
    try:
        return group.standard().dim
    except ValueError:
        raise ValueError(f"{group.name} has no defining representation, so it cannot act on a grid") from None


def grid_coordinates(size: Sequence[int]) -> torch.Tensor:
    """Centred coordinates of all points of a grid, row-major, shape ``(prod(size), len(size))``."""
    axes = [torch.arange(s, dtype=_F64) - (s - 1) / 2 for s in size]
    mesh = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([m.reshape(-1) for m in mesh], dim=-1)


def grid_permutation(matrices: torch.Tensor, size: Sequence[int], tol: float = 1e-6) -> Optional[torch.Tensor]:
    """Index tables ``src[n, x]`` = index of ``M_n^{-1} x`` for orthogonal matrices ``M_n``.

    Returns ``None`` when some matrix does not map the grid onto itself. Then
    ``f(M^{-1} x) = f.flatten()[src[x]]`` for a function ``f`` on the grid.
    """
    size = tuple(int(s) for s in size)
    M = torch.as_tensor(matrices, dtype=_F64).reshape(-1, len(size), len(size))
    P = grid_coordinates(size)  # (K, d)
    Q = P @ M  # rows: (M^T p)^T = p^T M, i.e. M^{-1} p for orthogonal M
    centre = torch.tensor([(s - 1) / 2 for s in size], dtype=_F64)
    idx = Q + centre
    rounded = torch.round(idx)
    if (idx - rounded).abs().max() > tol:
        return None
    rounded = rounded.to(torch.long)
    hi = torch.tensor(size, dtype=torch.long)
    if bool((rounded < 0).any()) or bool((rounded >= hi).any()):
        return None
    strides = [math.prod(size[i + 1:]) for i in range(len(size))]
    return (rounded * torch.tensor(strides, dtype=torch.long)).sum(-1)


@functools.lru_cache(maxsize=256)
def _grid_permutations_cpu(group: Group, size: Tuple[int, ...]) -> Optional[torch.Tensor]:
    if not group.is_finite:
        return None
    return grid_permutation(group.standard()(group.elements(), dtype=_F64), size)


_PERM_DEVICE_CACHE: dict = {}


def grid_permutations(group: Group, size: Sequence[int], device=None) -> Optional[torch.Tensor]:
    """The index tables ``src[g, x]`` of :func:`grid_permutation` for *all* elements of a finite
    group, cached per ``(group, size, device)``; ``None`` when some element does not map the
    grid onto itself (or the group is continuous).

    A function ``f`` on the grid moves by one gather, ``(g . f).flatten() = f.flatten()[src[g]]``,
    for one element or (``src[g_batch]``) for a batch of them.

    Examples
    --------
    >>> import torch
    >>> from equiproj.groups import cyclic
    >>> src = grid_permutations(cyclic(4), (3, 3))
    >>> x = torch.arange(9.0).reshape(3, 3)
    >>> bool(torch.equal(x.flatten()[src[1]].reshape(3, 3), torch.rot90(x, 1)))
    True
    """
    size = tuple(int(s) for s in size)
    dev = torch.device("cpu") if device is None else torch.device(device)
    key = (group, size, str(dev))
    if key not in _PERM_DEVICE_CACHE:
        t = _grid_permutations_cpu(group, size)
        _PERM_DEVICE_CACHE[key] = None if t is None else t.to(dev)
    return _PERM_DEVICE_CACHE[key]


@functools.lru_cache(maxsize=256)
def _grid_rep_cached(group: Group, size: Tuple[int, ...]) -> Optional[PermutationRep]:
    if not group.is_finite:
        return None
    mats = group.standard()(group.elements(), dtype=_F64)
    src = grid_permutation(mats, size)
    if src is None:
        return None
    name = "grid" + "x".join(map(str, size))
    return PermutationRep(group, src, name=name, check=False)


def grid_representation(group: Group, size: Sequence[int]) -> Optional[PermutationRep]:
    """The permutation representation of ``group`` on a grid, or ``None`` if the group does not
    map the grid onto itself (continuous groups, C_N with N not in {1, 2, 4}, non-square grids
    under rotations, ...)."""
    size = tuple(int(s) for s in size)
    d = geometric_dim(group)
    if d != len(size):
        raise ValueError(
            f"{group.name} acts on {d}-dimensional space but the grid {size} is {len(size)}-dimensional"
        )
    return _grid_rep_cached(group, size)


def _one_element(group: Group, g) -> torch.Tensor:
    g = group.as_elements(g)
    if g.shape[0] != 1:
        raise ValueError(f"expected one group element, got a batch of {g.shape[0]}")
    return g


def transform_feature_map(x: torch.Tensor, g, rep: Representation, mode: str = "bilinear") -> torch.Tensor:
    """``g . x``: channels by ``rep(g)``, positions by the grid action of ``g``.

    Parameters
    ----------
    x : Tensor
        Feature maps of shape ``(B, C, H, W)`` or ``(B, C, D, H, W)`` with ``C = rep.dim``.
    g : group element
        One element (a batch of one, or an int for a finite group).
    rep : Representation
        The representation of the channels; its group acts on the positions through
        ``rep.group.standard()``.
    mode : str
        Interpolation for elements that do not map the grid onto itself (``'bilinear'`` or
        ``'nearest'``; rotation about the centre, zeros outside).

    Examples
    --------
    >>> import torch
    >>> from equiproj.groups import cyclic
    >>> from equiproj.actions import transform_feature_map
    >>> G = cyclic(4)
    >>> x = torch.arange(16.0).reshape(1, 1, 4, 4)
    >>> y = transform_feature_map(x, 1, G.trivial())
    >>> bool(torch.equal(y, torch.rot90(x, 1, dims=(-2, -1))))
    True
    """
    G = rep.group
    d = geometric_dim(G)
    if x.ndim != d + 2 or x.shape[1] != rep.dim:
        raise ValueError(
            f"expected a feature map of shape (B, {rep.dim}, {', '.join(['*'] * d)}) for {rep.name} of {G.name}, "
            f"got {tuple(x.shape)}"
        )
    g = _one_element(G, g)
    R = rep(g, dtype=x.dtype).to(x.device)[0]
    y = torch.einsum("ij,bj...->bi...", R, x)
    size = tuple(x.shape[2:])
    table = grid_permutations(G, size, x.device) if G.is_finite else None
    if table is not None:  # cached tables, one gather
        return y.reshape(*y.shape[:2], -1)[..., table[int(g[0])]].reshape(y.shape)
    M = G.standard()(g, dtype=_F64)
    src = grid_permutation(M, size)
    if src is not None:
        flat = y.reshape(*y.shape[:2], -1)
        return flat[..., src[0].to(x.device)].reshape(y.shape)
    return _interpolate(y, M[0], mode)


def _interpolate(y: torch.Tensor, M: torch.Tensor, mode: str) -> torch.Tensor:
    size = y.shape[2:]
    d = len(size)
    P = grid_coordinates(size)  # output points p
    Q = P @ M  # M^{-1} p
    half = torch.tensor([max((s - 1) / 2, 1e-12) for s in size], dtype=_F64)
    norm = (Q / half).flip(-1)  # grid_sample wants (x=last axis, y, z)
    grid = norm.reshape(1, *size, d).to(dtype=y.dtype, device=y.device).expand(y.shape[0], *size, d)
    return torch.nn.functional.grid_sample(y, grid, mode=mode, padding_mode="zeros", align_corners=True)


class feature_map_action:
    """The callable ``(g, x) -> transform_feature_map(x, g, rep)``, carrying ``rep.group``; pass it
    to :func:`equiproj.metrics.equivariance_error` for models on images or volumes."""

    def __init__(self, rep: Representation, mode: str = "bilinear"):
        self.rep, self.group, self.mode = rep, rep.group, mode

    def __call__(self, g, x):
        return transform_feature_map(x, g, self.rep, mode=self.mode)

    def __repr__(self):
        return f"feature_map_action({self.rep.name} of {self.group.name})"
