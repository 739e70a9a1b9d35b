"""Two-dimensional SO(2) toy problems: circular-harmonic features, the wedge and the wavy rings.

These reproduce the first experiment of Berndt & Stuehmer (arXiv 2601.05028, section 4.1): points
in the plane are embedded as circular harmonics ``exp(i m theta)``, ``m = -M..M``, times Gaussian
radial functions, so that a rotation of the plane by ``phi`` acts on the embedding as the
multiplication of the order-``m`` row by ``exp(i m phi)``. Two binary classification datasets are
provided: the *wedge* (deliberately not rotation invariant) and the *wavy rings* (rotation
invariant for amplitude ``a = 0``, with a five-fold angular modulation for ``a > 0``).

Label convention
----------------
The paper labels the classes ``+1`` and ``-1``. Here the targets ``y`` are ``float32`` in
``{0, 1}`` (ready for binary cross-entropy) with ``y = (y_pm + 1) / 2``: the paper's ``+1``
(the disc of the wedge dataset, the inner ring) is ``1``, its ``-1`` (the wedge, the outer ring)
is ``0``. The signed labels are returned as well under ``y_pm`` (``int64``).

All generators are deterministic functions of an explicit ``seed`` (a
:class:`numpy.random.Generator`); everything is drawn in float64 and returned as ``float32``
torch tensors.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Union

import numpy as np
import torch

__all__ = [
    "rotate_points",
    "gaussian_radial_basis",
    "radial_centres",
    "circular_harmonic_features",
    "make_wedge",
    "make_rings",
]

ArrayLike = Union[torch.Tensor, np.ndarray, list, tuple]


def _as_points(points: ArrayLike) -> torch.Tensor:
    x = torch.as_tensor(points)
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    if x.ndim < 1 or x.shape[-1] != 2:
        raise ValueError(f"expected points of shape (..., 2), got shape {tuple(x.shape)}")
    return x


def rotate_points(x: ArrayLike, angle: Union[float, ArrayLike]) -> torch.Tensor:
    """Rotate points of the plane counter-clockwise by ``angle`` (radians).

    ``(x, y) -> (x cos(angle) - y sin(angle), x sin(angle) + y cos(angle))``.

    Parameters
    ----------
    x : tensor of shape (..., 2)
        Points (a numpy array or list is converted; integers become the default float dtype).
    angle : float or tensor
        A single angle, or one angle per point (shape broadcastable to ``x.shape[:-1]``).
        The cosine and sine are evaluated in float64 and rounded to the dtype of ``x``.

    Returns
    -------
    tensor of shape (..., 2), same dtype as ``x``.

    Examples
    --------
    >>> import math, torch
    >>> rotate_points(torch.tensor([[1.0, 0.0]], dtype=torch.float64), math.pi / 2).round(decimals=12)
    tensor([[0., 1.]], dtype=torch.float64)
    """
    x = _as_points(x)
    a = torch.as_tensor(angle, dtype=torch.float64, device=x.device)
    c, s = torch.cos(a).to(x.dtype), torch.sin(a).to(x.dtype)
    x0, x1 = x[..., 0], x[..., 1]
    return torch.stack((c * x0 - s * x1, s * x0 + c * x1), dim=-1)


def radial_centres(n_radial: int = 4, r_max: float = 4.0) -> torch.Tensor:
    """Centres of the Gaussian radial functions: ``n_radial`` equally spaced values on ``[0, r_max]``.

    Examples
    --------
    >>> radial_centres(4, 4.0)
    tensor([0.0000, 1.3333, 2.6667, 4.0000], dtype=torch.float64)
    """
    if n_radial < 1:
        raise ValueError(f"n_radial must be >= 1, got {n_radial}")
    if not r_max > 0:
        raise ValueError(f"r_max must be positive, got {r_max}")
    return torch.linspace(0.0, float(r_max), int(n_radial), dtype=torch.float64)


def _default_width(n_radial: int, r_max: float) -> float:
    return float(r_max) / (n_radial - 1) if n_radial > 1 else float(r_max)


def gaussian_radial_basis(r: ArrayLike, n_radial: int = 4, r_max: float = 4.0,
                          width: Optional[float] = None) -> torch.Tensor:
    """Gaussian radial functions ``radial_j(r) = exp(-(r - c_j)^2 / (2 width^2))``.

    The centres ``c_j`` are :func:`radial_centres` (equally spaced on ``[0, r_max]``: ``0, 4/3,
    8/3, 4`` by default). The default ``width`` is the spacing of the centres,
    ``r_max / (n_radial - 1)`` (``4/3`` by default), so that neighbouring bumps overlap at
    ``exp(-1/2)`` of their peak and the union covers ``[0, r_max]`` without gaps.

    Parameters
    ----------
    r : tensor of shape (n,)
        Radii (computed in float64; the result has the dtype of ``r`` if it is floating).
    n_radial, r_max, width
        Number of functions, the last centre, the standard deviation of each Gaussian.

    Returns
    -------
    tensor of shape (n, n_radial), strictly positive.

    Examples
    --------
    >>> import torch
    >>> gaussian_radial_basis(torch.tensor([0.0, 4.0])).argmax(dim=1)
    tensor([0, 3])
    """
    r = torch.as_tensor(r)
    out_dtype = r.dtype if r.is_floating_point() else torch.get_default_dtype()
    width = _default_width(n_radial, r_max) if width is None else float(width)
    if not width > 0:
        raise ValueError(f"width must be positive, got {width}")
    c = radial_centres(n_radial, r_max).to(r.device)
    d = r.to(torch.float64)[..., None] - c
    return torch.exp(-0.5 * (d / width) ** 2).to(out_dtype)


def circular_harmonic_features(points: ArrayLike, M: int = 4, n_radial: int = 4, r_max: float = 4.0,
                               width: Optional[float] = None) -> torch.Tensor:
    """Embed planar points as circular harmonics times Gaussian radial functions.

    For a point ``(r cos(theta), r sin(theta))`` the feature ``[m + M, j]`` is
    ``exp(i m theta) * radial_j(r)`` for ``m = -M..M`` and ``j = 0..n_radial-1``, with the radial
    functions of :func:`gaussian_radial_basis` (centres equally spaced on ``[0, r_max]``, default
    width the spacing of the centres). Rotating the points by ``phi`` multiplies row ``m + M`` by
    ``exp(i m phi)``: the rows carry the irreducible (complex) representations of SO(2).

    ``exp(i m theta)`` is computed as the ``m``-th power of ``(x + i y) / r`` (its conjugate for
    ``m < 0``), in float64, and rounded at the end; at the origin ``theta = 0`` is used.

    Parameters
    ----------
    points : tensor of shape (n, 2)
    M : int
        Largest circular frequency (default 4, i.e. 9 frequencies).
    n_radial, r_max, width
        Radial functions (see :func:`gaussian_radial_basis`).

    Returns
    -------
    complex tensor of shape (n, 2M+1, n_radial): ``complex64`` for float32 (or float16/bfloat16)
    input, ``complex128`` for float64 input.

    Examples
    --------
    >>> import math, torch
    >>> x = torch.tensor([[1.0, 2.0], [-0.5, 0.3]])
    >>> F = circular_harmonic_features(x)
    >>> F.shape, F.dtype
    (torch.Size([2, 9, 4]), torch.complex64)
    >>> G = circular_harmonic_features(rotate_points(x, 0.7))
    >>> phase = torch.exp(1j * 0.7 * torch.arange(-4, 5, dtype=torch.float64)).to(torch.complex64)
    >>> bool(torch.allclose(G, phase[:, None] * F, atol=1e-6))
    True
    """
    x = _as_points(points)
    if int(M) != M or M < 0:
        raise ValueError(f"M must be a non-negative integer, got {M}")
    M = int(M)
    cdtype = torch.complex128 if x.dtype == torch.float64 else torch.complex64
    x64 = x.to(torch.float64)
    z = torch.complex(x64[..., 0], x64[..., 1])
    r = torch.sqrt(x64[..., 0] ** 2 + x64[..., 1] ** 2)
    safe_r = torch.where(r > 0, r, torch.ones_like(r))
    u = torch.where(r > 0, z / safe_r, torch.ones_like(z))       # exp(i theta)
    powers = [torch.ones_like(u)]
    for _ in range(M):
        powers.append(powers[-1] * u)                                # exp(i m theta), m = 0..M
    harm = torch.stack([p.conj() for p in powers[:0:-1]] + powers, dim=-1)   # m = -M..M
    radial = gaussian_radial_basis(r, n_radial=n_radial, r_max=r_max, width=width)  # float64
    return (harm[..., :, None] * radial[..., None, :]).to(cdtype)


def _signed_to_targets(y_pm: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(((y_pm + 1) // 2).astype(np.float32))


def _polar(r: np.ndarray, theta: np.ndarray) -> np.ndarray:
    return np.stack((r * np.cos(theta), r * np.sin(theta)), axis=-1)


def make_wedge(seed: int = 0, n_per_class: int = 100) -> Dict[str, torch.Tensor]:
    """The wedge dataset: a disc against a wedge-shaped sector (not rotation invariant).

    * paper class ``+1`` (target ``1``): ``n_per_class`` points area-uniform in the unit disc,
      ``r = sqrt(U)``, ``U ~ U[0, 1]``, ``theta ~ U[0, 2 pi)``;
    * paper class ``-1`` (target ``0``): ``n_per_class`` points with angle ``theta ~ U[-45, 45]``
      degrees and radius ``r ~ U[2.3, 3.0]`` (uniform in the radius).

    The two classes are concatenated and shuffled with the same generator.

    Parameters
    ----------
    seed : int
        Seed of the :func:`numpy.random.default_rng` generator; the output is a deterministic
        function of ``(seed, n_per_class)``.
    n_per_class : int
        Points per class (100 in the paper).

    Returns
    -------
    dict with ``x`` (float32, shape (2 n_per_class, 2)), ``y`` (float32 targets in ``{0, 1}``,
    ``1`` = disc) and ``y_pm`` (int64 labels in ``{+1, -1}``, the paper's convention).

    Examples
    --------
    >>> d = make_wedge(seed=0)
    >>> d["x"].shape, d["x"].dtype, int(d["y"].sum())
    (torch.Size([200, 2]), torch.float32, 100)
    """
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be >= 1, got {n_per_class}")
    rng = np.random.default_rng(seed)
    r_in = np.sqrt(rng.uniform(0.0, 1.0, n_per_class))
    t_in = rng.uniform(0.0, 2.0 * math.pi, n_per_class)
    t_out = rng.uniform(-math.pi / 4, math.pi / 4, n_per_class)
    r_out = rng.uniform(2.3, 3.0, n_per_class)
    x = np.concatenate((_polar(r_in, t_in), _polar(r_out, t_out)))
    y_pm = np.concatenate((np.ones(n_per_class, np.int64), -np.ones(n_per_class, np.int64)))
    perm = rng.permutation(2 * n_per_class)
    x, y_pm = x[perm], y_pm[perm]
    return {"x": torch.from_numpy(x.astype(np.float32)), "y": _signed_to_targets(y_pm),
            "y_pm": torch.from_numpy(y_pm)}


def make_rings(amplitude: float, seed: int = 0, test_fraction: float = 0.2,
               n_per_class: int = 350) -> Dict[str, torch.Tensor]:
    """The wavy rings: two concentric rings whose radius oscillates five times per turn.

    With ``theta ~ U[0, 2 pi)`` and the amplitude ``a = amplitude``:

    * paper class ``+1`` (target ``1``, inner ring): ``r = 1.1 + a sin(5 theta) + U[-0.15, 0.15]``;
    * paper class ``-1`` (target ``0``, outer ring): ``r = 2.2 + a sin(5 theta) + U[-0.22, 0.22]``;

    and the point is ``(r cos(theta), r sin(theta))`` (for large ``a`` a radius can come out
    slightly negative, which places the point on the opposite side of the origin; it is kept).
    For ``a = 0`` the distribution is rotation invariant; for ``a > 0`` it is invariant only under
    rotations by multiples of 72 degrees. The paper sweeps ``a`` in ``{0, 0.25, 0.5, 0.75, 1}``.

    The train/test split is stratified: in each class ``round(test_fraction * n_per_class)``
    points (70 of 350 by default) are drawn at random for the test set; both sets are then
    shuffled. Default sizes: 700 points, 560 train and 140 test.

    Parameters
    ----------
    amplitude : float
        ``a >= 0``.
    seed : int
        Seed of the :func:`numpy.random.default_rng` generator (deterministic output).
    test_fraction : float
        In ``[0, 1)``.
    n_per_class : int
        Points per ring (350 in the paper).

    Returns
    -------
    dict with ``x_train``, ``x_test`` (float32, shape (n, 2)), ``y_train``, ``y_test`` (float32
    targets in ``{0, 1}``, ``1`` = inner ring) and ``y_pm_train``, ``y_pm_test`` (int64, ``+-1``).

    Examples
    --------
    >>> d = make_rings(0.5, seed=0)
    >>> d["x_train"].shape, d["x_test"].shape, float(d["y_test"].mean())
    (torch.Size([560, 2]), torch.Size([140, 2]), 0.5)
    """
    amplitude = float(amplitude)
    if not amplitude >= 0:
        raise ValueError(f"amplitude must be >= 0, got {amplitude}")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in [0, 1), got {test_fraction}")
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be >= 1, got {n_per_class}")
    rng = np.random.default_rng(seed)
    n_test = int(round(test_fraction * n_per_class))
    xs_tr, xs_te, ys_tr, ys_te = [], [], [], []
    for base, noise, label in ((1.1, 0.15, 1), (2.2, 0.22, -1)):
        theta = rng.uniform(0.0, 2.0 * math.pi, n_per_class)
        r = base + amplitude * np.sin(5.0 * theta) + rng.uniform(-noise, noise, n_per_class)
        pts = _polar(r, theta)
        perm = rng.permutation(n_per_class)
        xs_te.append(pts[perm[:n_test]])
        xs_tr.append(pts[perm[n_test:]])
        ys_te.append(np.full(n_test, label, np.int64))
        ys_tr.append(np.full(n_per_class - n_test, label, np.int64))
    out: Dict[str, torch.Tensor] = {}
    for split, xs, ys in (("train", xs_tr, ys_tr), ("test", xs_te, ys_te)):
        x, y_pm = np.concatenate(xs), np.concatenate(ys)
        perm = rng.permutation(len(y_pm))
        x, y_pm = x[perm], y_pm[perm]
        out[f"x_{split}"] = torch.from_numpy(x.astype(np.float32).reshape(-1, 2))
        out[f"y_{split}"] = _signed_to_targets(y_pm)
        out[f"y_pm_{split}"] = torch.from_numpy(y_pm)
    return out
