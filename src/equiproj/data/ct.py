r"""Bilateral-implant CT metal-artefact reduction data (an approximately C4-symmetric task).

Patients lie the same way up on the table and hip implants sit on a near-horizontal line, so the
dark band that beam hardening and photon starvation draw between two implants is horizontal,
while streak texture and anatomy edges have no preferred orientation. Equivariance to the
rotations by 90 degrees (the cyclic group C4) is therefore a good but imperfect prior. This
module generates the data from a seed; nothing is downloaded.

Pipeline for one sample (all randomness from one ``numpy.random.Generator``):

1. **Phantom** on the ``N x N`` pixel centres of ``[-1, 1]^2`` (water = 1): body ellipse
   (semi-axes 0.85 x 0.60, centre ``y = +0.05``), ``Poisson(6)`` soft-tissue ellipses of contrast
   up to ``+-0.15``, a spine disc (1.8), two mirrored bone ellipses (1.6), all rotated about the
   image centre by the patient angle ``alpha``; an axis-aligned table bar (0.6) that does not
   rotate. Split into a soft map ``s`` and a bone map ``b``.
2. **Metal**: with probability 0.9 each, a disc (radius 0.03-0.07) inside each bone; metal
   attenuates ``m`` (25 by default) times water. Metal displaces tissue.
3. **Polychromatic parallel-beam measurement** with line integrals ``L_s, L_b, L_m`` (radon of
   each material map, :func:`skimage.transform.radon`) and three energy bins with weights
   ``w_e`` and per-material scales ``c_{k,e}`` (normalised so that ``sum_e w_e c_{k,e} = 1``):

   .. math::

       \bar I = \sum_e w_e \exp\!\big(-a\,(c_{s,e} L_s + c_{b,e} L_b + c_{m,e}\, m L_m)\big),
       \qquad I = \mathrm{Poisson}(I_0 \bar I) / I_0,
       \qquad p = -\log\max(I, 1/I_0) / a,

   with ``a = mu_water * pixel`` the water attenuation per pixel (0.2 / cm, field of view 40 cm)
   and ``I_0`` the incident photons per detector bin and view.
4. **Reconstruction**: ramp-filtered back-projection (:func:`skimage.transform.iradon`) of ``p``
   is the network input; optionally also the FBP of ``p`` after linear interpolation across the
   metal trace (LI). The target is the phantom without metal (``s + b``, the bone continues
   under the implant).

Metrics (:func:`psnr_outside_metal`, :func:`ssim_outside_metal`) are computed on the pixels
outside the metal with the fixed data range :data:`CT_DATA_RANGE` ``= 2.0`` (the nominal range
``[0, 2]`` of the targets).

Symmetry: with ``rotation_std_deg="uniform"``, ``table=False`` and ``limited_angle_deg=0`` the
distribution of phantoms is invariant under ``np.rot90`` and parallel-beam FBP with an even
number of equally spaced views over ``[0, 180)`` commutes with it (up to interpolation: the
rotation centre of scikit-image, pixel ``N // 2``, is half a pixel off the array centre), so the
task is C4-symmetric. The default knobs (5 degree jitter, table, bilateral implants) break it
mildly; ``limited_angle_deg > 0`` breaks the symmetry of the measurement itself.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np

from ._cache import cached_arrays

__all__ = [
    "CT_DATA_RANGE", "CTConfig", "CTPhantom", "make_phantom", "projection_angles", "radon_transform",
    "fbp", "polychromatic_sinogram", "li_inpaint", "simulate_ct_sample", "make_ct_dataset",
    "psnr_outside_metal", "ssim_outside_metal", "save_sample_figure",
]

#: Fixed data range of the PSNR / SSIM metrics: the nominal range ``[0, 2]`` of the targets.
CT_DATA_RANGE = 2.0

#: Bump when the generator changes, so that old cache entries are not reused.
_GENERATOR_VERSION = 1

# Physical scale: field of view 40 cm across [-1, 1], water 0.2 / cm at the effective energy.
_FOV_CM = 40.0
_MU_WATER_CM = 0.2

# Three-bin spectrum: weights and per-material attenuation scales relative to the effective
# energy (low bins attenuate more; bone and above all metal harden the beam more than water).
_BIN_WEIGHTS = np.array([0.3, 0.45, 0.25])
_RAW_SCALES = {
    "soft": np.array([1.15, 0.98, 0.88]),
    "bone": np.array([1.60, 0.93, 0.68]),
    "metal": np.array([2.00, 0.92, 0.60]),
}
_SCALES = {k: v / float(_BIN_WEIGHTS @ v) for k, v in _RAW_SCALES.items()}

_METAL_LEVELS = {"strong": {"metal_attenuation": 25.0, "photons": 3e4},
                 "mild": {"metal_attenuation": 8.0, "photons": 2e5}}

_PRESETS = {
    "ci": {"size": 64, "n_views": 90, "n_train": 64, "n_test": 16},
    "paper": {"size": 128, "n_views": 180, "n_train": 2000, "n_test": 200},
}

_SPLITS = {"train": 0, "test": 1}


def _check(cond: bool, name: str, expected: str, got: Any) -> None:
    if not cond:
        raise ValueError(f"{name} must be {expected}, got {got!r}")


@dataclass(frozen=True)
class CTConfig:
    """Every knob of the bilateral-implant CT data (the defaults are the ``ci`` preset).

    Parameters
    ----------
    size : int
        Image side ``N`` (even, >= 16). Pixel centres cover ``[-1, 1]^2``.
    n_views : int
        Views equally spaced over ``[0, 180)`` degrees (even for the C4 property).
    limited_angle_deg : float
        Missing wedge in degrees, ``0 <= . < 180``: only views with angle ``< 180 - limited``
        are measured (breaks the rotation symmetry of the measurement).
    photons : float
        Incident photons ``I_0`` per detector bin and view (> 0; ``inf``: no noise).
    metal_attenuation : float
        Metal attenuation in water units at the effective energy (>= 0).
    metal_probability : float
        Probability that each of the two bones carries an implant.
    rotation_std_deg : float or "uniform"
        Standard deviation of the patient rotation in degrees, or ``"uniform"`` over the circle.
    layout : {"bilateral", "random"}
        ``"bilateral"``: mirrored bones, implants on a near-horizontal line (in the patient
        frame); ``"random"``: bones and implants at random positions and orientations.
    table : bool
        Add the axis-aligned table bar (value 0.6) under the patient.
    li_input : bool
        Also return the FBP after linear interpolation across the metal trace (``input_li``).
    n_train, n_test : int
        Number of images in the two splits.
    seed : int
        Base seed; the splits and samples use seeds derived from it.
    """

    size: int = 64
    n_views: int = 90
    limited_angle_deg: float = 0.0
    photons: float = 3e4
    metal_attenuation: float = 25.0
    metal_probability: float = 0.9
    rotation_std_deg: Union[float, str] = 5.0
    layout: str = "bilateral"
    table: bool = True
    li_input: bool = False
    n_train: int = 64
    n_test: int = 16
    seed: int = 0

    def __post_init__(self):
        self.validate()

    def validate(self) -> "CTConfig":
        """Raise ``ValueError`` naming the option, the expected and the actual value."""
        _check(isinstance(self.size, (int, np.integer)) and not isinstance(self.size, bool)
               and self.size >= 16 and self.size % 2 == 0, "size", "an even integer >= 16", self.size)
        _check(isinstance(self.n_views, (int, np.integer)) and not isinstance(self.n_views, bool)
               and self.n_views >= 2, "n_views", "an integer >= 2", self.n_views)
        _check(_is_real(self.limited_angle_deg) and 0 <= self.limited_angle_deg < 180,
               "limited_angle_deg", "a number in [0, 180)", self.limited_angle_deg)
        _check(len(projection_angles(self.n_views, self.limited_angle_deg)) >= 2, "limited_angle_deg",
               f"small enough to keep at least 2 of the {self.n_views} views", self.limited_angle_deg)
        _check(_is_real(self.photons) and self.photons > 0, "photons", "a positive number (inf: no noise)",
               self.photons)
        _check(_is_real(self.metal_attenuation) and math.isfinite(self.metal_attenuation)
               and self.metal_attenuation >= 0, "metal_attenuation", "a finite number >= 0",
               self.metal_attenuation)
        _check(_is_real(self.metal_probability) and 0 <= self.metal_probability <= 1, "metal_probability",
               "a number in [0, 1]", self.metal_probability)
        r = self.rotation_std_deg
        _check(r == "uniform" or (_is_real(r) and math.isfinite(r) and r >= 0), "rotation_std_deg",
               "a number >= 0 or 'uniform'", r)
        _check(self.layout in ("bilateral", "random"), "layout", "'bilateral' or 'random'", self.layout)
        _check(isinstance(self.table, (bool, np.bool_)), "table", "True or False", self.table)
        _check(isinstance(self.li_input, (bool, np.bool_)), "li_input", "True or False", self.li_input)
        for name in ("n_train", "n_test"):
            v = getattr(self, name)
            _check(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1, name,
                   "an integer >= 1", v)
        _check(isinstance(self.seed, (int, np.integer)) and not isinstance(self.seed, bool) and self.seed >= 0,
               "seed", "an integer >= 0", self.seed)
        return self

    @classmethod
    def preset(cls, name: str = "ci", metal: str = "strong", **overrides) -> "CTConfig":
        """A named preset, ``"ci"`` (64 x 64, 90 views, 64 / 16 images) or ``"paper"``
        (128 x 128, 180 views, 2000 / 200 images), with ``metal="strong"`` (25 x water,
        ``3e4`` photons) or ``"mild"`` (8 x water, ``2e5`` photons); keyword overrides win.

        >>> CTConfig.preset("paper", metal="mild", n_train=10).size
        128
        """
        _check(name in _PRESETS, "preset", "one of " + ", ".join(repr(k) for k in _PRESETS), name)
        _check(metal in _METAL_LEVELS, "metal", "'strong' or 'mild'", metal)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unknown CTConfig option(s) {unknown}; known: {sorted(known)}")
        return cls(**{**_PRESETS[name], **_METAL_LEVELS[metal], **overrides})

    def n_for(self, split: str) -> int:
        _check(split in _SPLITS, "split", "'train' or 'test'", split)
        return self.n_train if split == "train" else self.n_test

    def cache_key(self, split: str) -> Dict[str, Any]:
        """The JSON description of one split (the other split's size left out)."""
        d = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in asdict(self).items()}
        d.pop("n_train"), d.pop("n_test")
        return {"generator_version": _GENERATOR_VERSION, "split": split, "n": self.n_for(split), **d}


def _is_real(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool) and not (
        isinstance(x, float) and math.isnan(x))


# ---------------------------------------------------------------------------------------------
# Phantom
# ---------------------------------------------------------------------------------------------


@dataclass
class CTPhantom:
    """One phantom: ``soft`` and ``bone`` maps (water units, ``(N, N)`` float64), ``metal``
    mask (bool), implant centres ``metal_xy`` (``(2, 2)``, NaN rows where absent, ``(x, y)``
    with ``y`` up) and the patient angle ``rotation_deg`` (counter-clockwise)."""

    soft: np.ndarray
    bone: np.ndarray
    metal: np.ndarray
    metal_xy: np.ndarray
    rotation_deg: float

    @property
    def target(self) -> np.ndarray:
        """The metal-free phantom ``soft + bone``."""
        return self.soft + self.bone


def pixel_grid(size: int) -> Tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(x, y)`` of an ``N x N`` image on ``[-1, 1]^2``; ``x`` grows
    with the column, ``y`` decreases with the row (``y`` up), so ``np.rot90`` is the
    counter-clockwise rotation by 90 degrees about the origin."""
    c = -1.0 + (2.0 * np.arange(size) + 1.0) / size
    return np.meshgrid(c, c[::-1], indexing="xy")


def _ellipse(x, y, cx, cy, a, b, theta=0.0):
    ct, st = math.cos(theta), math.sin(theta)
    u = (x - cx) * ct + (y - cy) * st
    v = -(x - cx) * st + (y - cy) * ct
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def _draw_rotation(rng: np.random.Generator, rotation_std_deg) -> float:
    if rotation_std_deg == "uniform":
        return float(rng.uniform(-180.0, 180.0))
    return float(rng.normal(0.0, rotation_std_deg)) if rotation_std_deg > 0 else 0.0


def make_phantom(size: int, rng: np.random.Generator, rotation_std_deg: Union[float, str] = 5.0,
                 layout: str = "bilateral", table: bool = True, metal_probability: float = 0.9) -> CTPhantom:
    """Draw one phantom (patient frame rotated by a random angle, table fixed).

    Body ellipse ``0.85 x 0.60`` at ``(0, 0.05)`` (value 1), ``Poisson(6)`` lesions (semi-axes
    0.03-0.10, contrast ``+-(0.05-0.15)``), spine disc 1.8 (radius 0.07-0.09) near the bottom,
    two bones 1.6 (mirrored at ``x = +-(0.36-0.48)`` for ``"bilateral"``; random for
    ``"random"``), implants of radius 0.03-0.07 inside the bones with probability
    ``metal_probability`` each; table ``0.6`` on ``-0.78 <= y <= -0.66``. Everything is clipped
    to the disc of radius ``1 - 2/N`` (the reconstruction circle of parallel-beam FBP).

    >>> ph = make_phantom(32, np.random.default_rng(0))
    >>> ph.target.shape, float(ph.target.max()) <= 2.0, ph.metal.dtype
    ((32, 32), True, dtype('bool'))
    """
    x, y = pixel_grid(size)
    alpha = math.radians(_draw_rotation(rng, rotation_std_deg))
    ca, sa = math.cos(alpha), math.sin(alpha)
    # patient-frame coordinates of each pixel: rotate the lab coordinates by -alpha
    u, v = ca * x + sa * y, -sa * x + ca * y
    inside = x ** 2 + y ** 2 <= (1.0 - 2.0 / size) ** 2

    body = _ellipse(u, v, 0.0, 0.05, 0.85, 0.60) & inside
    soft = body.astype(np.float64)
    for _ in range(int(rng.poisson(6.0))):
        rho, phi = math.sqrt(rng.uniform(0.0, 0.75 ** 2)), rng.uniform(0.0, 2 * math.pi)
        cx, cy = 0.85 * rho * math.cos(phi), 0.05 + 0.60 * rho * math.sin(phi)
        a, b = rng.uniform(0.03, 0.10, size=2)
        contrast = rng.choice([-1.0, 1.0]) * rng.uniform(0.05, 0.15)
        soft += contrast * (_ellipse(u, v, cx, cy, a, b, rng.uniform(0, math.pi)) & body)

    bone = np.zeros_like(soft)
    spine = _ellipse(u, v, 0.0, -0.38 + rng.uniform(-0.02, 0.02), *(2 * [rng.uniform(0.07, 0.09)])) & body
    bone[spine] = 1.8
    if layout == "bilateral":
        bx, by = rng.uniform(0.36, 0.48), 0.05 + rng.uniform(-0.15, 0.0)
        a, b, tilt = rng.uniform(0.10, 0.14), rng.uniform(0.09, 0.12), rng.normal(0.0, math.radians(5))
        bones = [(-bx, by, a, b, -tilt), (bx, by, a, b, tilt)]
        dy = rng.normal(0.0, 0.005)
        implants = [(bx_ + rng.uniform(-0.015, 0.015), by + dy + rng.normal(0.0, 0.003)) for bx_, *_ in bones]
    elif layout == "random":
        phi0 = rng.uniform(0.0, 2 * math.pi)
        bones, implants = [], []
        for phi in (phi0, phi0 + math.pi + rng.uniform(-math.pi / 3, math.pi / 3)):
            rho = rng.uniform(0.35, 0.55)
            cx, cy = 0.85 * rho * math.cos(phi), 0.05 + 0.60 * rho * math.sin(phi)
            bones.append((cx, cy, rng.uniform(0.10, 0.14), rng.uniform(0.09, 0.12), rng.uniform(0, math.pi)))
            implants.append((cx + rng.uniform(-0.015, 0.015), cy + rng.uniform(-0.015, 0.015)))
    else:
        raise ValueError(f"layout must be 'bilateral' or 'random', got {layout!r}")
    for cx, cy, a, b, th in bones:
        mask = _ellipse(u, v, cx, cy, a, b, th) & body
        bone[mask] = 1.6
    soft[bone > 0] = 0.0

    metal = np.zeros(soft.shape, dtype=bool)
    metal_xy = np.full((2, 2), np.nan)
    for k, (mx, my) in enumerate(implants):
        r = rng.uniform(0.03, 0.07)
        if rng.uniform() < metal_probability:
            metal |= _ellipse(u, v, mx, my, r, r) & inside
            metal_xy[k] = (ca * mx - sa * my, sa * mx + ca * my)  # back to the lab frame

    if table:
        bar = (y >= -0.78) & (y <= -0.66) & (np.abs(x) <= 0.9) & inside & ~body
        soft[bar] = 0.6
    return CTPhantom(soft=soft, bone=bone, metal=metal, metal_xy=metal_xy, rotation_deg=math.degrees(alpha))


# ---------------------------------------------------------------------------------------------
# Measurement and reconstruction
# ---------------------------------------------------------------------------------------------


def projection_angles(n_views: int, limited_angle_deg: float = 0.0) -> np.ndarray:
    """View angles in degrees: ``k * 180 / n_views`` for the ``k`` with angle ``< 180 - limited``.

    >>> projection_angles(4)
    array([ 0., 45., 90., 135.])
    >>> projection_angles(4, limited_angle_deg=60)
    array([ 0., 45., 90.])
    """
    theta = np.arange(n_views) * (180.0 / n_views)
    return theta[theta < 180.0 - limited_angle_deg - 1e-9]


def radon_transform(image: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Parallel-beam line integrals (pixel units) of an image that vanishes outside the
    inscribed circle: :func:`skimage.transform.radon` with ``circle=True``; shape
    ``(N, n_views)``."""
    from skimage.transform import radon

    return radon(np.asarray(image, dtype=np.float64), theta=theta, circle=True)


def fbp(sinogram: np.ndarray, theta: np.ndarray, size: Optional[int] = None) -> np.ndarray:
    """Ramp-filtered back-projection, :func:`skimage.transform.iradon` with
    ``filter_name="ramp"`` and ``circle=True``.

    >>> th = projection_angles(32)
    >>> img = make_phantom(32, np.random.default_rng(1), table=False).target
    >>> rec = fbp(radon_transform(img, th), th)
    >>> bool(np.abs(rec - img).mean() < 0.1)
    True
    """
    from skimage.transform import iradon

    size = sinogram.shape[0] if size is None else size
    return iradon(sinogram, theta=theta, filter_name="ramp", circle=True, output_size=size)


def polychromatic_sinogram(phantom: CTPhantom, theta: np.ndarray, rng: Optional[np.random.Generator],
                           photons: float = 3e4, metal_attenuation: float = 25.0
                           ) -> Tuple[np.ndarray, np.ndarray]:
    r"""Measured sinogram ``p`` (water-equivalent line integrals, pixel units) and metal-only
    sinogram ``L_m`` (radon of the metal mask).

    .. math::

        p = -\frac{1}{a}\log\max\Big(\frac{\mathrm{Poisson}(I_0 \bar I)}{I_0}, \frac{1}{I_0}\Big),
        \quad \bar I = \sum_e w_e\, e^{-a (c_{s,e} L_s + c_{b,e} L_b + c_{m,e} m L_m)}

    ``a`` is the water attenuation per pixel, ``w_e`` the three bin weights, ``c_{k,e}`` the
    per-bin scales of soft tissue, bone and metal (``sum_e w_e c_{k,e} = 1``). ``rng=None`` or
    ``photons=inf`` gives the noise-free polychromatic measurement.

    >>> ph = make_phantom(32, np.random.default_rng(0))
    >>> p, lm = polychromatic_sinogram(ph, projection_angles(16), np.random.default_rng(1))
    >>> p.shape, lm.shape
    ((32, 16), (32, 16))
    """
    size = phantom.soft.shape[0]
    a = _MU_WATER_CM * _FOV_CM / size
    keep = ~phantom.metal
    Ls = radon_transform(phantom.soft * keep, theta)
    Lb = radon_transform(phantom.bone * keep, theta)
    Lm = radon_transform(phantom.metal.astype(np.float64), theta) if phantom.metal.any() else np.zeros_like(Ls)
    Lm = np.maximum(Lm, 0.0)
    mean_i = np.zeros_like(Ls)
    for e, w in enumerate(_BIN_WEIGHTS):
        att = _SCALES["soft"][e] * Ls + _SCALES["bone"][e] * Lb + _SCALES["metal"][e] * metal_attenuation * Lm
        mean_i += w * np.exp(-a * att)
    if rng is None or not math.isfinite(photons):
        intensity = np.maximum(mean_i, np.finfo(np.float64).tiny)
    else:
        intensity = np.maximum(rng.poisson(photons * mean_i) / photons, 1.0 / photons)
    return -np.log(intensity) / a, Lm


def li_inpaint(sinogram: np.ndarray, metal_sinogram: np.ndarray) -> np.ndarray:
    """Linear interpolation across the metal trace (``metal_sinogram > 0``), view by view along
    the detector axis (axis 0); views without trace, or all trace, are left unchanged.

    >>> s = np.array([[0.0], [5.0], [5.0], [3.0]])
    >>> li_inpaint(s, np.array([[0.0], [1.0], [1.0], [0.0]])).ravel()
    array([0., 1., 2., 3.])
    """
    out = np.array(sinogram, dtype=np.float64, copy=True)
    trace = np.asarray(metal_sinogram) > 0
    idx = np.arange(out.shape[0])
    for k in range(out.shape[1]):
        t = trace[:, k]
        if t.any() and not t.all():
            out[t, k] = np.interp(idx[t], idx[~t], out[~t, k])
    return out


def simulate_ct_sample(config: CTConfig, rng: np.random.Generator) -> Dict[str, np.ndarray]:
    """One sample: ``input`` (FBP), ``target``, ``metal_mask``, ``input_li`` (if enabled) as
    ``(N, N)`` arrays, and ``rotation_deg``, ``metal_xy``.

    >>> s = simulate_ct_sample(CTConfig(size=32, n_views=16), np.random.default_rng(0))
    >>> s["input"].shape, s["target"].dtype
    ((32, 32), dtype('float32'))
    """
    ph = make_phantom(config.size, rng, config.rotation_std_deg, config.layout, config.table,
                      config.metal_probability)
    theta = projection_angles(config.n_views, config.limited_angle_deg)
    p, lm = polychromatic_sinogram(ph, theta, rng, config.photons, config.metal_attenuation)
    out = {"input": fbp(p, theta, config.size).astype(np.float32),
           "target": ph.target.astype(np.float32),
           "metal_mask": ph.metal.copy(),
           "rotation_deg": np.float32(ph.rotation_deg),
           "metal_xy": ph.metal_xy.astype(np.float32)}
    if config.li_input:
        out["input_li"] = fbp(li_inpaint(p, lm), theta, config.size).astype(np.float32)
    return out


def _sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), _SPLITS[split], int(index)]))


def _resolve(config_or_preset: Union[str, CTConfig], overrides: Dict[str, Any]) -> CTConfig:
    if isinstance(config_or_preset, CTConfig):
        metal = overrides.pop("metal", None)
        if metal is not None:
            _check(metal in _METAL_LEVELS, "metal", "'strong' or 'mild'", metal)
            overrides = {**_METAL_LEVELS[metal], **overrides}
        known = {f.name for f in fields(CTConfig)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unknown CTConfig option(s) {unknown}; known: {sorted(known)}")
        return replace(config_or_preset, **overrides)
    if isinstance(config_or_preset, str):
        return CTConfig.preset(config_or_preset, **overrides)
    raise TypeError(f"config_or_preset must be a preset name or a CTConfig, got {type(config_or_preset).__name__}")


def make_ct_dataset(config_or_preset: Union[str, CTConfig] = "ci", split: str = "train",
                    cache: Optional[str] = None, progress: bool = True, use_cache: bool = True,
                    **overrides) -> Dict[str, np.ndarray]:
    """Generate (or load from the cache) one split of the CT data.

    Parameters
    ----------
    config_or_preset : str or CTConfig
        ``"ci"``, ``"paper"`` or a :class:`CTConfig`.
    split : {"train", "test"}
        Sample ``i`` of a split uses the seed ``(seed, split, i)``, so the splits are disjoint
        and the first images do not depend on the split size.
    cache : str, optional
        Cache root (default ``$EQUIPROJ_CACHE`` or ``~/.cache/equiproj``); entries are stored
        under ``ct/<hash of the configuration>.npz``.
    progress : bool
        Show a ``tqdm`` bar while generating (silently skipped without tqdm).
    use_cache : bool
        ``False`` always regenerates and writes nothing.
    **overrides
        :class:`CTConfig` fields (and ``metal="strong" | "mild"``).

    Returns
    -------
    dict
        ``input`` ``(n, 1, N, N)`` float32 FBP, ``target`` ``(n, 1, N, N)`` float32,
        ``metal_mask`` ``(n, 1, N, N)`` bool, ``input_li`` (with ``li_input=True``),
        ``rotation_deg`` ``(n,)`` float32, ``metal_xy`` ``(n, 2, 2)`` float32 implant centres
        (NaN where absent), ``n_metal`` ``(n,)`` int64 implants per image.

    >>> d = make_ct_dataset("ci", "test", size=32, n_views=16, n_test=2, use_cache=False, progress=False)
    >>> d["input"].shape, d["metal_mask"].dtype
    ((2, 1, 32, 32), dtype('bool'))
    """
    config = _resolve(config_or_preset, dict(overrides))
    n = config.n_for(split)

    def build() -> Dict[str, np.ndarray]:
        it = range(n)
        if progress:
            try:
                from tqdm.auto import tqdm

                it = tqdm(it, desc=f"CT {split} {config.size}x{config.size}", leave=False)
            except ImportError:
                pass
        samples = [simulate_ct_sample(config, _sample_rng(config.seed, split, i)) for i in it]
        out = {k: np.stack([s[k] for s in samples])[:, None] for k in ("input", "target", "metal_mask")}
        if config.li_input:
            out["input_li"] = np.stack([s["input_li"] for s in samples])[:, None]
        out["rotation_deg"] = np.array([s["rotation_deg"] for s in samples], dtype=np.float32)
        out["metal_xy"] = np.stack([s["metal_xy"] for s in samples]).astype(np.float32)
        out["n_metal"] = (~np.isnan(out["metal_xy"][:, :, 0])).sum(1).astype(np.int64)
        return out

    return cached_arrays("ct", config.cache_key(split), build, cache=cache, use_cache=use_cache)


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _prepare(pred, target, metal_mask):
    p = _to_numpy(pred).astype(np.float64)
    t = _to_numpy(target).astype(np.float64)
    if p.shape != t.shape or p.ndim < 2:
        raise ValueError(f"pred and target must have the same shape (..., H, W), got {p.shape} and {t.shape}")
    if metal_mask is None:
        m = np.zeros(p.shape, dtype=bool)
    else:
        m = np.broadcast_to(_to_numpy(metal_mask).astype(bool), p.shape)
    lead = p.shape[:-2]
    hw = p.shape[-2:]
    return p.reshape(-1, *hw), t.reshape(-1, *hw), m.reshape(-1, *hw), lead


def _reduce(values: np.ndarray, lead, reduction: str):
    if reduction == "mean":
        return float(np.mean(values))
    if reduction == "none":
        return values.reshape(lead)
    raise ValueError(f"reduction must be 'none' or 'mean', got {reduction!r}")


def psnr_outside_metal(pred, target, metal_mask=None, data_range: float = CT_DATA_RANGE,
                       reduction: str = "none"):
    r"""PSNR in dB over the pixels outside the metal, per image.

    .. math::

        \mathrm{PSNR} = 10 \log_{10} \frac{R^2}{\operatorname{mean}_{i \notin M} (\hat x_i - x_i)^2}

    with the fixed data range ``R`` (default :data:`CT_DATA_RANGE` = 2). A perfect prediction
    gives ``inf``. Inputs: numpy arrays or torch tensors of shape ``(..., H, W)`` (e.g.
    ``(n, 1, H, W)``), ``metal_mask`` broadcastable to it (``True`` = metal, excluded).

    Returns
    -------
    numpy array of shape ``pred.shape[:-2]`` (``reduction="none"``) or a float (``"mean"``).

    >>> t = np.ones((2, 1, 8, 8)); p = t + 0.02
    >>> psnr_outside_metal(p, t).round(2)
    array([[40.], [40.]])
    >>> psnr_outside_metal(p, t, reduction="mean")
    40.0...
    """
    p, t, m, lead = _prepare(pred, target, metal_mask)
    keep = ~m
    n = keep.sum(axis=(1, 2))
    mse = (((p - t) ** 2) * keep).sum(axis=(1, 2)) / np.maximum(n, 1)
    with np.errstate(divide="ignore"):
        values = np.where(n > 0, 10.0 * np.log10(data_range ** 2 / mse), np.nan)
    return _reduce(values, lead, reduction)


def ssim_outside_metal(pred, target, metal_mask=None, data_range: float = CT_DATA_RANGE,
                       reduction: str = "none"):
    """SSIM averaged over the pixels outside the metal, per image: the local SSIM map of
    :func:`skimage.metrics.structural_similarity` (``full=True``, 7 x 7 uniform window, fixed
    ``data_range``) averaged over ``~metal_mask``. Same inputs and outputs as
    :func:`psnr_outside_metal`; identical images give 1.

    >>> t = np.random.default_rng(0).uniform(0, 2, (3, 16, 16))
    >>> ssim_outside_metal(t, t)
    array([1., 1., 1.])
    """
    from skimage.metrics import structural_similarity

    p, t, m, lead = _prepare(pred, target, metal_mask)
    values = np.empty(len(p))
    for i in range(len(p)):
        _, smap = structural_similarity(p[i], t[i], data_range=data_range, full=True)
        keep = ~m[i]
        values[i] = smap[keep].mean() if keep.any() else np.nan
    return _reduce(values, lead, reduction)


# ---------------------------------------------------------------------------------------------
# Figure
# ---------------------------------------------------------------------------------------------


def save_sample_figure(path: str, preset: Union[str, CTConfig] = "ci", n: int = 3, seed: int = 0,
                       **overrides) -> str:
    """Save a PNG with ``n`` rows of test samples and the columns clean target, corrupted FBP
    input (both shown on ``[0, 2]``) and metal mask. Uses matplotlib's Agg backend; returns
    ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = make_ct_dataset(preset, "test", progress=False, use_cache=False, seed=seed, n_test=n, **overrides)
    fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.5 * n), squeeze=False)
    psnr = psnr_outside_metal(d["input"], d["target"], d["metal_mask"])
    for i in range(n):
        panels = [(d["target"][i, 0], "clean target", dict(cmap="gray", vmin=0, vmax=CT_DATA_RANGE)),
                  (d["input"][i, 0], f"FBP input ({float(psnr[i, 0]):.1f} dB)",
                   dict(cmap="gray", vmin=0, vmax=CT_DATA_RANGE)),
                  (d["metal_mask"][i, 0], f"metal mask, rot {float(d['rotation_deg'][i]):+.1f} deg",
                   dict(cmap="gray", vmin=0, vmax=1))]
        for ax, (img, title, kw) in zip(axes[i], panels):
            ax.imshow(img, interpolation="nearest", **kw)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
