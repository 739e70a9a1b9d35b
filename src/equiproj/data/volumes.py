r"""Classification volumes of rendered implicit shapes (an offline stand-in for MedMNIST3D).

Section 4.4 of Berndt and Stühmer (2026) classifies 28^3 medical volumes (MedMNIST3D) with
SO(3) and O(3); MedMNIST downloads its data at run time, so this module renders volumes of the
same size from a seed instead. Every sample is one shape of its class, given by a signed
distance ``d(q)`` (negative inside) in its canonical frame and rendered as a soft occupancy

.. math::

    v(p) = a \, \sigma\!\left(-\frac{d(R^T (p - t) / s)\, s}{\tau}\right) + \varepsilon(p),
    \qquad \varepsilon(p) \sim \mathcal N(0, \sigma_n^2),

at the voxel centres ``p`` of ``[-1, 1]^3`` (array-axis order, axis 0 is "z", the slice axis):
a random rotation ``R``, offset ``t`` (uniform in a ball of radius ``offset``), scale ``s``
(uniform in ``scale``), intensity ``a`` (uniform in ``intensity``), edge width ``tau`` (one
voxel) and white noise. ``anisotropy > 0`` blurs along axis 0 with a Gaussian of that many
voxels (thick slices, as in clinical scans), which breaks the rotation symmetry on purpose.

Classes (:data:`SHAPES`): ``blobs`` (three spheres at random positions), ``rod_z`` and
``rod_x`` (the same capsule along the canonical z or x axis), ``disk``, ``branch`` (three tubes
meeting at 120 degrees), ``helix_right`` and ``helix_left`` (mirror images of each other),
``shell`` (a hollow sphere) and ``torus``. Two pairs probe the groups:

* ``rod_z`` / ``rod_x`` differ only by orientation: with a small ``rotation_std_deg`` (a
  canonical pose, as real scans have) they are separable, with ``"uniform"`` rotations they are
  the same distribution, and an exactly SO(3)- or O(3)-invariant model cannot separate them at
  any spread;
* ``helix_right`` / ``helix_left`` are mirror images (a reflection ``z -> -z`` of the canonical
  frame): an SO(3)-invariant model can separate them, an O(3)-invariant one cannot.

``rotation_std_deg="uniform"`` draws ``R`` from the Haar measure of SO(3) (and the offset is
isotropic), so the distribution of the continuous volumes is exactly SO(3)-invariant; on the
grid it is exactly invariant under the 24 rotations of the cube (tested on class statistics).
A number ``std`` instead draws ``R = exp([omega]_x)`` with ``omega ~ N(0, std^2 I)`` (in radians).

Generation is vectorised in torch (all voxels of a chunk of samples at once) and cached with
:func:`equiproj.data.cached_arrays` under ``volumes/<hash>.npz``.

Examples
--------
>>> d = make_volume_dataset("ci", use_cache=False)
>>> d["x_train"].shape, d["y_train"].dtype, len(d["classes"])
(torch.Size([54, 1, 16, 16, 16]), torch.int64, 9)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ._cache import cached_arrays

__all__ = ["SHAPES", "VolumeConfig", "VOLUME_PRESETS", "make_volume_dataset", "render_volumes", "sample_poses",
           "random_rotations", "save_volume_figure"]

_SPLITS = ("train", "val", "test")

#: The shape classes, in label order of the default configuration.
SHAPES: Tuple[str, ...] = ("blobs", "rod_z", "rod_x", "disk", "branch", "helix_right", "helix_left", "shell", "torus")

# number of per-sample shape parameters drawn for every class (blobs: 3 centres)
_N_SHAPE_PARAMS = 9


@dataclass
class VolumeConfig:
    """Every knob of the shape volumes (the defaults are the ``cpu`` preset).

    Parameters
    ----------
    size : int
        Grid side ``N`` (>= 8); voxel centres cover ``[-1, 1]^3``.
    n_train, n_val, n_test : int
        Volumes per split (classes balanced up to one).
    classes : tuple of str
        Class names from :data:`SHAPES`, in label order.
    rotation_std_deg : float or "uniform"
        Spread of the pose around the canonical one (degrees per axis of the rotation vector),
        or ``"uniform"`` (Haar measure on SO(3)).
    anisotropy : float
        Standard deviation in voxels of a Gaussian blur along axis 0 (slice thickness); 0: none.
    noise : float
        Standard deviation of the additive white noise.
    intensity, scale : (float, float)
        Uniform ranges of the intensity ``a`` and the scale ``s``.
    offset : float
        Radius of the ball the offset ``t`` is drawn from (in units of the half-width).
    seed : int
        Base seed; split ``k`` uses a generator seeded from ``(seed, k)``.
    """

    size: int = 28
    n_train: int = 1000
    n_val: int = 200
    n_test: int = 400
    classes: Tuple[str, ...] = SHAPES
    rotation_std_deg: Union[float, str] = 10.0
    anisotropy: float = 0.0
    noise: float = 0.1
    intensity: Tuple[float, float] = (0.7, 1.3)
    scale: Tuple[float, float] = (0.8, 1.1)
    offset: float = 0.1
    seed: int = 0

    def __post_init__(self):
        self.classes = tuple(self.classes)
        self.intensity = tuple(float(v) for v in self.intensity)
        self.scale = tuple(float(v) for v in self.scale)
        if int(self.size) != self.size or self.size < 8:
            raise ValueError(f"VolumeConfig: size must be an integer >= 8, got {self.size!r}")
        for nm in ("n_train", "n_val", "n_test"):
            if getattr(self, nm) < 0:
                raise ValueError(f"VolumeConfig: {nm} must be >= 0, got {getattr(self, nm)}")
        unknown = [c for c in self.classes if c not in SHAPES]
        if unknown or len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"VolumeConfig: classes must be at least two distinct names from {SHAPES}, "
                             f"got {self.classes}")
        r = self.rotation_std_deg
        if isinstance(r, str):
            if r != "uniform":
                raise ValueError(f"VolumeConfig: rotation_std_deg must be a number >= 0 or 'uniform', got {r!r}")
        elif not (float(r) >= 0):
            raise ValueError(f"VolumeConfig: rotation_std_deg must be >= 0 or 'uniform', got {r!r}")
        if not (self.anisotropy >= 0 and self.noise >= 0 and self.offset >= 0):
            raise ValueError(f"VolumeConfig: anisotropy, noise and offset must be >= 0, got "
                             f"{self.anisotropy}, {self.noise}, {self.offset}")
        for nm in ("intensity", "scale"):
            lo, hi = getattr(self, nm)
            if not (0 < lo <= hi):
                raise ValueError(f"VolumeConfig: {nm} must be a range (lo, hi) with 0 < lo <= hi, got {(lo, hi)}")

    def as_dict(self) -> Dict:
        d = dataclasses.asdict(self)
        d["classes"] = list(self.classes)
        d["intensity"], d["scale"] = list(self.intensity), list(self.scale)
        return d


#: Named configurations: ``ci`` (16^3, tens of volumes) and ``cpu`` (28^3, 1000 / 200 / 400).
VOLUME_PRESETS: Dict[str, Dict] = {
    "ci": dict(size=16, n_train=54, n_val=18, n_test=36),
    "cpu": dict(),
    "paper": dict(size=28, n_train=1000, n_val=200, n_test=400),
}


def _resolve(config_or_preset, overrides) -> VolumeConfig:
    if isinstance(config_or_preset, VolumeConfig):
        return dataclasses.replace(config_or_preset, **overrides) if overrides else config_or_preset
    if config_or_preset not in VOLUME_PRESETS:
        raise ValueError(f"unknown volume preset {config_or_preset!r}: choose one of {', '.join(VOLUME_PRESETS)} "
                         "or pass a VolumeConfig")
    return VolumeConfig(**{**VOLUME_PRESETS[config_or_preset], **overrides})


# ----------------------------------------------------------------------------- rotations


def _skew(w: torch.Tensor) -> torch.Tensor:
    z = torch.zeros_like(w[..., 0])
    return torch.stack([torch.stack([z, -w[..., 2], w[..., 1]], -1),
                        torch.stack([w[..., 2], z, -w[..., 0]], -1),
                        torch.stack([-w[..., 1], w[..., 0], z], -1)], -2)


def random_rotations(n: int, std_deg: Union[float, str], generator: torch.Generator) -> torch.Tensor:
    """``n`` rotation matrices ``(n, 3, 3)`` (float64): Haar-random for ``"uniform"``, else
    ``exp([omega]_x)`` with ``omega ~ N(0, (std_deg * pi / 180)^2 I)``.

    >>> R = random_rotations(5, "uniform", torch.Generator().manual_seed(0))
    >>> bool(torch.allclose(R @ R.transpose(1, 2), torch.eye(3, dtype=R.dtype).expand(5, 3, 3)))
    True
    """
    if std_deg == "uniform":
        q = torch.randn(n, 4, generator=generator, dtype=torch.float64)
        q = q / q.norm(dim=1, keepdim=True)
        w, x, y, z = q.unbind(1)
        return torch.stack([
            torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            torch.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            torch.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1)], -2)
    omega = torch.randn(n, 3, generator=generator, dtype=torch.float64) * math.radians(float(std_deg))
    return torch.linalg.matrix_exp(_skew(omega))


def sample_poses(config: VolumeConfig, n: int, generator: torch.Generator) -> Dict[str, torch.Tensor]:
    """Random poses and shape parameters of ``n`` samples (float64): ``rotation (n, 3, 3)``,
    ``offset (n, 3)``, ``scale (n,)``, ``intensity (n,)``, ``shape (n, 9)`` (uniform in [0, 1))."""
    R = random_rotations(n, config.rotation_std_deg, generator)
    u = torch.randn(n, 3, generator=generator, dtype=torch.float64)
    u = u / u.norm(dim=1, keepdim=True).clamp_min(1e-12)
    radius = config.offset * torch.rand(n, generator=generator, dtype=torch.float64) ** (1 / 3)
    lo, hi = config.scale
    scale = lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)
    lo, hi = config.intensity
    intensity = lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)
    shape = torch.rand(n, _N_SHAPE_PARAMS, generator=generator, dtype=torch.float64)
    return dict(rotation=R, offset=u * radius[:, None], scale=scale, intensity=intensity, shape=shape)


# ----------------------------------------------------------------------------- signed distances


def _segment_distance(q: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance from points ``q (..., 3)`` to the segment ``a``-``b`` (broadcast ``(..., 3)``)."""
    ab = b - a
    t = (((q - a) * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-12)).clamp(0, 1)
    return (q - a - t[..., None] * ab).norm(dim=-1)


def _helix_points(handedness: float, n: int = 48, turns: float = 2.0, radius: float = 0.3,
                  height: float = 1.1) -> torch.Tensor:
    t = torch.linspace(0, 2 * math.pi * turns, n, dtype=torch.float64)
    z = torch.linspace(-height / 2, height / 2, n, dtype=torch.float64)
    # array-axis order (z, y, x); a right-handed helix turns counter-clockwise in (x, y) as z grows
    x, y = radius * torch.cos(t), handedness * radius * torch.sin(t)
    return torch.stack([z, y, x], -1)


def _sdf(name: str, q: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Signed distance of class ``name`` at canonical points ``q (B, V, 3)`` with shape
    parameters ``u (B, 9)`` in [0, 1). Coordinates are in array-axis order ``(z, y, x)``."""
    B = q.shape[0]
    if name == "blobs":
        c = (u.reshape(B, 3, 3) - 0.5) * 0.7  # three centres in a cube of side 0.7
        d = (q[:, :, None, :] - c[:, None, :, :]).norm(dim=-1) - 0.22
        return d.min(-1).values
    if name in ("rod_z", "rod_x"):
        half = 0.55 + 0.1 * u[:, :1]
        e = torch.zeros(B, 1, 3, dtype=q.dtype)
        e[:, 0, 0 if name == "rod_z" else 2] = 1.0
        return _segment_distance(q, -half[:, :, None] * e, half[:, :, None] * e) - 0.11
    if name == "disk":
        r = (q[..., 1] ** 2 + q[..., 2] ** 2).sqrt()
        radius = 0.5 + 0.1 * u[:, :1]
        dr, dz = r - radius, q[..., 0].abs() - 0.07
        return torch.maximum(dr, dz).clamp_max(0) + torch.stack([dr.clamp_min(0), dz.clamp_min(0)], -1).norm(dim=-1)
    if name == "branch":
        length = 0.5 + 0.1 * u[:, :1, None]
        ang = torch.tensor([math.pi / 2, math.pi / 2 + 2 * math.pi / 3, math.pi / 2 + 4 * math.pi / 3],
                           dtype=q.dtype)
        ends = torch.stack([torch.zeros(3, dtype=q.dtype), torch.sin(ang), torch.cos(ang)], -1)  # (3, 3) in (z,y,x)
        origin = torch.zeros(3, dtype=q.dtype)
        d = torch.stack([_segment_distance(q, origin, length * ends[k]) for k in range(3)], -1)
        return d.min(-1).values - 0.1
    if name in ("helix_right", "helix_left"):
        pts = _helix_points(1.0 if name == "helix_right" else -1.0).to(q.dtype)
        d = torch.stack([_segment_distance(q, pts[k], pts[k + 1]) for k in range(len(pts) - 1)], -1)
        return d.min(-1).values - 0.085
    if name == "shell":
        radius = 0.45 + 0.1 * u[:, :1]
        return (q.norm(dim=-1) - radius).abs() - 0.07
    if name == "torus":
        r = (q[..., 1] ** 2 + q[..., 2] ** 2).sqrt()
        return ((r - 0.42 - 0.08 * u[:, :1]) ** 2 + q[..., 0] ** 2).sqrt() - 0.13
    raise ValueError(f"unknown shape {name!r}: choose one of {SHAPES}")


def _grid_points(size: int) -> torch.Tensor:
    a = torch.linspace(-1, 1, size, dtype=torch.float64)
    return torch.stack(torch.meshgrid(a, a, a, indexing="ij"), -1).reshape(-1, 3)


def render_volumes(names: Sequence[str], poses: Dict[str, torch.Tensor], size: int, noise: float = 0.0,
                   anisotropy: float = 0.0, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Render one volume per entry of ``names`` with the given poses (:func:`sample_poses`).

    Returns ``(n, 1, size, size, size)`` float32. ``noise > 0`` needs ``generator``.

    >>> g = torch.Generator().manual_seed(0)
    >>> cfg = VolumeConfig(size=12, rotation_std_deg=0.0, offset=0.0)
    >>> v = render_volumes(["shell", "torus"], sample_poses(cfg, 2, g), 12)
    >>> v.shape, bool(v.max() > 0.5)
    (torch.Size([2, 1, 12, 12, 12]), True)
    """
    n = len(names)
    P = _grid_points(size)
    tau = 2.0 / (size - 1)  # one voxel
    out = torch.empty(n, P.shape[0], dtype=torch.float64)
    R, t, s = poses["rotation"], poses["offset"], poses["scale"]
    for name in dict.fromkeys(names):
        idx = torch.tensor([i for i, c in enumerate(names) if c == name])
        # canonical coordinates q = R^T (p - t) / s; as rows: (p - t) R / s
        q = ((P[None] - t[idx, None, :]) @ R[idx]) / s[idx, None, None]
        d = _sdf(name, q, poses["shape"][idx]) * s[idx, None]
        out[idx] = poses["intensity"][idx, None] * torch.sigmoid(-d / tau)
    vol = out.reshape(n, 1, size, size, size)
    if anisotropy > 0:
        r = max(1, int(math.ceil(3 * anisotropy)))
        k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float64) / anisotropy) ** 2)
        k = (k / k.sum()).reshape(1, 1, -1, 1, 1)
        vol = torch.nn.functional.conv3d(torch.nn.functional.pad(vol, (0, 0, 0, 0, r, r), mode="replicate"), k)
    if noise > 0:
        if generator is None:
            raise ValueError("render_volumes: noise > 0 needs a torch.Generator")
        vol = vol + noise * torch.randn(vol.shape, generator=generator, dtype=torch.float64)
    return vol.to(torch.float32)


def _split_arrays(config: VolumeConfig, split: int, n: int, chunk: int = 64) -> Dict[str, np.ndarray]:
    g = torch.Generator().manual_seed(int(config.seed) * 7919 + 104729 * (split + 1))
    k = len(config.classes)
    labels = torch.arange(n) % k
    labels = labels[torch.randperm(n, generator=g)]
    vols, rots = [], []
    for i0 in range(0, n, chunk):
        lab = labels[i0:i0 + chunk]
        poses = sample_poses(config, len(lab), g)
        vols.append(render_volumes([config.classes[c] for c in lab.tolist()], poses, config.size, config.noise,
                                   config.anisotropy, g))
        rots.append(poses["rotation"].to(torch.float32))
    size = config.size
    empty = torch.zeros(0, 1, size, size, size)
    return dict(x=(torch.cat(vols) if vols else empty).numpy(), y=labels.numpy().astype(np.int64),
                rotation=(torch.cat(rots) if rots else torch.zeros(0, 3, 3)).numpy())


def make_volume_dataset(config_or_preset: Union[str, VolumeConfig] = "ci", cache: Optional[str] = None,
                        use_cache: bool = True, **overrides) -> Dict:
    """Generate (or load from the cache) the three splits of the shape volumes.

    Parameters
    ----------
    config_or_preset : str or VolumeConfig
        A name of :data:`VOLUME_PRESETS` or a :class:`VolumeConfig`.
    cache : str, optional
        Cache root (default ``$EQUIPROJ_CACHE`` or ``~/.cache/equiproj``).
    use_cache : bool
        ``False`` always regenerates and writes nothing.
    **overrides
        :class:`VolumeConfig` fields.

    Returns
    -------
    dict
        ``x_train, x_val, x_test`` float32 tensors ``(n, 1, N, N, N)``, ``y_*`` int64 labels,
        ``rotation_*`` ``(n, 3, 3)`` poses, ``classes`` (names) and ``config``.
    """
    config = _resolve(config_or_preset, dict(overrides))

    def build():
        arrays = {}
        for k, split in enumerate(_SPLITS):
            for key, v in _split_arrays(config, k, getattr(config, f"n_{split}")).items():
                arrays[f"{key}_{split}"] = v
        return arrays

    arrays = cached_arrays("volumes", config.as_dict(), build, cache=cache, use_cache=use_cache)
    out: Dict = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
    out["classes"] = tuple(config.classes)
    out["config"] = config
    return out


def save_volume_figure(path: str, config_or_preset: Union[str, VolumeConfig] = "cpu", per_class: int = 1,
                       seed: int = 0, **overrides) -> str:
    """A figure of samples per class: the central slice along each axis and the maximum
    intensity projection along axis 0 (rows), ``per_class`` samples per class (columns)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config = _resolve(config_or_preset, dict(overrides))
    g = torch.Generator().manual_seed(seed)
    names = [c for c in config.classes for _ in range(per_class)]
    vol = render_volumes(names, sample_poses(config, len(names), g), config.size, config.noise, config.anisotropy, g)
    vol = vol[:, 0].numpy()
    n = config.size // 2
    views = [("slice z (axis 0)", lambda v: v[n]), ("slice y (axis 1)", lambda v: v[:, n]),
             ("slice x (axis 2)", lambda v: v[:, :, n]), ("max along z", lambda v: v.max(0))]
    cols = len(names)
    fig, axes = plt.subplots(len(views), cols, figsize=(1.25 * cols + 0.6, 1.3 * len(views) + 0.6), squeeze=False,
                             constrained_layout=True)
    lo, hi = float(np.percentile(vol, 1)), float(np.percentile(vol, 99.5))
    for j, (name, v) in enumerate(zip(names, vol)):
        for i, (title, fn) in enumerate(views):
            ax = axes[i, j]
            ax.imshow(fn(v), cmap="gray", vmin=lo, vmax=hi, origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=8)
            if j == 0:
                ax.set_ylabel(title, fontsize=8)
    rot = config.rotation_std_deg
    fig.suptitle(f"shape volumes {config.size}^3, rotation {'uniform' if rot == 'uniform' else f'{rot:g} deg'}, "
                 f"noise {config.noise:g}, anisotropy {config.anisotropy:g}", fontsize=9)
    from pathlib import Path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)

