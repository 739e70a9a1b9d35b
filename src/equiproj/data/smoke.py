r"""Smoke-plume simulations (PhiFlow) with approximate rotation or translation symmetry.

The data of the smoke-plume benchmark of Wang, Walters and Yu, "Approximately Equivariant
Networks for Imperfectly Symmetric Dynamics" (ICML 2022), regenerated with PhiFlow 3 (Holl and
Thuerey; the optional extra ``equiproj[smoke]``). Their data-generation notebook used PhiFlow
2.0.1; the physics below follow it, the code is ours.

Physics (per step, ``dt = 1``): a closed square box of side 64 (zero velocity on the walls),
``n x n`` cells; smoke density ``s`` (cell centres) advected by MacCormack and a spherical
inflow of radius 5 added every step; the velocity ``u`` (staggered) advected semi-Lagrangian
(time step ``dt_velocity``), the buoyancy force ``s * f`` added, and the incompressibility
projection solved in float64 (PhiFlow's ``'auto'`` solver, relative and absolute tolerance
``1e-8``). Nothing is random. All simulations of a case run in one PhiFlow batch dimension.

Cases
-----
``"rotation"``
    Four inflow positions on the walls' midpoints, ``(32, 5)``, ``(59, 32)``, ``(32, 59)``,
    ``(5, 32)`` (the first rotated by 0, 90, 180, 270 degrees about the centre), each with
    the buoyancy force pointing into the box. Simulation ``s = 4 i + j`` (``i`` the magnitude
    group, ``j`` the direction) has buoyancy magnitude ``0.025 (4 i + 1 + level j)``: at
    ``level = 1`` these are Wang et al.'s magnitudes (``0.025 k``, ``k = 1, 2, ...``), which
    differ between the four directions and so break the C4 symmetry; at ``level = 0`` the four
    directions of a group share one magnitude and the data are exactly C4-symmetric:
    simulation ``4 i + j + 1`` is simulation ``4 i + j`` rotated by 90 degrees
    (:func:`rotate_velocity`), up to the solver's tolerance.
``"translation"``
    Inflow positions on a grid (Wang et al.: ``x`` in 8, 16, ..., 56 and ``y`` in 5, 10, ...,
    25), buoyancy force ``(0, b(x))`` upwards with ``b = 0.1`` left of ``x = 32`` and
    ``b = 0.1 (1 + level)`` right of it (``level = 1``: their 0.1 and 0.2); ``dt_velocity =
    0.5`` as in their notebook. ``level = 0`` is translation-symmetric away from the walls.
``"scale"``
    One simulation per scale factor ``f`` in ``factors`` (Wang et al.: ``1.0, 1.1, ..., 4.7``,
    38 factors): the whole set-up enlarged ``f`` times (box ``64 f``, inflow ``(32 f, 5 f)`` of
    radius ``5 f``, buoyancy ``(0, 0.1 f)``, ``dt_velocity = 0.5``) on ``m = n f^level`` cells
    (rounded to even), then resampled to ``n x n`` (bilinear, antialiased) and the velocity
    divided by ``f``, as in their notebook (``f`` is the requested factor). Under the scaling
    symmetry of the inviscid equations (``x -> f x``, ``u -> f u``, ``t -> t``, force ``-> f``
    force) every simulation is the one at ``f = 1``; what breaks it is the resolution. At
    ``level = 1`` (Wang et al.) the cell size stays ``64 / n``, so the larger simulations are
    resolved ``f`` times finer; at ``level = 0`` every simulation has ``n`` cells and is the
    ``f = 1`` simulation scaled, up to the solver's tolerance. ``size * max(factors)^level`` is
    capped below 256 (PhiFlow 3.4).

Stored arrays (float32 unless noted)
------------------------------------
``velocity``: ``(S, T, 2, n, n)``, the velocity after every step, sampled at the *cell
centres*, components ``(u_x, u_y)``, array axes ``(x, y)``: axis ``-2`` is ``x``, axis ``-1``
is ``y``. In this array-axis order the component and position coordinates agree, so the
quarter turn of :func:`equiproj.groups.cyclic` (4) acts as
``transform_feature_map(v, 1, G.standard())`` (``rot90`` of the grid plus the rotation of the
components), exactly, because the cell centres are symmetric about the box centre.
``buoyancy`` ``(S, 2)`` (the force per unit smoke; for translation the left-half value),
``inflow`` ``(S, 2)`` (scale: in the enlarged box), ``factor`` ``(S,)`` (scale: ``f``; 1
otherwise), ``cells`` ``(S,)`` int64 (cells per side of the simulation before resampling),
``group`` and ``direction`` ``(S,)`` int64 (rotation; ``-1`` otherwise), ``max_divergence``
``(S,)`` float64: the largest absolute divergence of the final velocity (the solver's residual), ``dx`` scalar.

Examples
--------
>>> import numpy as np
>>> from equiproj.data.smoke import SmokeConfig, rotate_velocity
>>> cfg = SmokeConfig("rotation", size=8, steps=3, groups=1, level=0.0)
>>> cfg.n_sims                    # make_smoke_data(cfg)["velocity"] has shape (4, 3, 2, 8, 8)
4
>>> v = np.random.default_rng(0).normal(size=(2, 8, 8))
>>> bool(np.allclose(rotate_velocity(rotate_velocity(v, 3), 1), v))
True

``tests/test_data_smoke.py`` checks that at ``level = 0`` ``rotate_velocity(v[0], 1)`` equals
``v[1]`` for the simulated fields.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import numpy as np

from ._cache import cached_arrays

__all__ = ["SMOKE_CASES", "SMOKE_PRESETS", "SmokeConfig", "make_smoke_data", "simulate_smoke", "rotate_velocity",
           "phiflow_version"]

SMOKE_CASES = ("rotation", "translation", "scale")
_FORMAT_VERSION = 1
_BOX = 64.0
_RADIUS = 5.0
_ROT_UNIT = 0.025
_TRANS_BASE = 0.1
_WANG_X = tuple(float(v) for v in range(8, 64, 8))
_WANG_Y = tuple(float(v) for v in range(5, 30, 5))
_WANG_FACTORS = tuple(round(1.0 + 0.1 * i, 1) for i in range(38))  # np.linspace(1, 5, 41)[:38]


@dataclass(frozen=True)
class SmokeConfig:
    """Everything that determines one set of simulations.

    Parameters
    ----------
    case : {'rotation', 'translation', 'scale'}
    size : int
        Cells per side ``n`` (the box is always 64 x 64 in physical units, so the cell size is
        ``64 / n``). PhiFlow 3.4 fails from 256 on (an int32 overflow in a sparse index).
    steps : int
        Stored steps ``T`` (Wang et al.: 310).
    level : float
        Symmetry breaking (see the module docstring); 0 is symmetric.
    groups : int
        Rotation: magnitude groups ``i`` (4 simulations each; Wang et al.: 9).
    positions_x, positions_y : tuple of float
        Translation: the inflow grid (Wang et al.: 7 x 5 = 35 positions).
    factors : tuple of float
        Scale: the scale factors ``f >= 1`` (one simulation each; Wang et al.: 1.0 to 4.7 in
        steps of 0.1); ``size * max(factors)^level`` must stay below 256.
    """

    case: str = "rotation"
    size: int = 32
    steps: int = 60
    level: float = 1.0
    groups: int = 1
    positions_x: Tuple[float, ...] = _WANG_X
    positions_y: Tuple[float, ...] = _WANG_Y
    factors: Tuple[float, ...] = (1.0, 1.5, 2.0, 2.5)
    tol: float = 1e-8
    extra: Dict = field(default_factory=dict)

    def __post_init__(self):
        if self.case not in SMOKE_CASES:
            raise ValueError(f"SmokeConfig.case: expected one of {', '.join(map(repr, SMOKE_CASES))}, "
                             f"got {self.case!r}")
        for nm in ("size", "steps", "groups"):
            v = getattr(self, nm)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"SmokeConfig.{nm} must be a positive integer, got {v!r}")
        if self.size % 2:
            raise ValueError(f"SmokeConfig.size must be even (cell centres symmetric about the box centre), "
                             f"got {self.size}")
        if self.size >= 256:
            raise ValueError(f"SmokeConfig.size={self.size}: PhiFlow 3.4 fails from 256 cells per side on "
                             "(int32 overflow in a sparse index); use at most 254")
        if not (float(self.level) >= 0):
            raise ValueError(f"SmokeConfig.level must be >= 0, got {self.level!r}")
        if self.case == "scale":
            fs = tuple(float(f) for f in self.factors)
            if not fs or min(fs) < 1:
                raise ValueError(f"SmokeConfig.factors: the scale case needs factors >= 1, got {self.factors!r}")
            m = _fine_cells(self.size, max(fs), self.level)
            if m >= 256:
                raise ValueError(f"SmokeConfig.factors: the scale case simulates factor {max(fs):g} on {m} cells per "
                                 f"side (size {self.size}, level {float(self.level):g}), but PhiFlow 3.4 fails from 256 "
                                 f"on; use factors below {(256 / self.size) ** (1 / float(self.level)):.3g}")

    @property
    def n_sims(self) -> int:
        if self.case == "rotation":
            return 4 * self.groups
        if self.case == "scale":
            return len(self.factors)
        return len(self.positions_x) * len(self.positions_y)

    @property
    def dt_velocity(self) -> float:
        return 1.0 if self.case == "rotation" else 0.5

    def key(self) -> Dict:
        d = dataclasses.asdict(self)
        d.update(level=float(self.level), positions_x=[float(v) for v in self.positions_x],
                 positions_y=[float(v) for v in self.positions_y], format=_FORMAT_VERSION, phiflow=phiflow_version())
        if self.case == "scale":
            d["factors"] = [float(v) for v in self.factors]
        else:  # keeps the keys (and caches) of the other cases as they were before the scale case
            del d["factors"]
        return d


def _fine_cells(n: int, f: float, level: float) -> int:
    """Cells per side of the enlarged scale simulation: ``n f^level`` rounded to an even number."""
    return max(2, 2 * int(round(n * float(f) ** float(level) / 2)))


#: The data sizes of the experiment's presets (``paper``: Wang et al.'s sizes).
SMOKE_PRESETS: Dict[str, Dict[str, Dict]] = {
    "ci": {"rotation": dict(size=16, steps=14, groups=2),
           "translation": dict(size=16, steps=14, positions_x=(16.0, 48.0), positions_y=(5.0, 15.0)),
           "scale": dict(size=16, steps=14, factors=(1.0, 1.5, 2.0, 2.5))},
    "cpu": {"rotation": dict(size=32, steps=150, groups=4),
            "translation": dict(size=32, steps=150, positions_x=(8.0, 24.0, 40.0, 56.0), positions_y=(5.0, 15.0, 25.0)),
            "scale": dict(size=32, steps=150, factors=(1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 2.75))},
    # scale: Wang et al.'s factors below 4 (64 * 4 = 256 cells is PhiFlow 3.4's limit), 30 of their 38
    "paper": {"rotation": dict(size=64, steps=310, groups=9), "translation": dict(size=64, steps=310),
              "scale": dict(size=64, steps=310, factors=tuple(f for f in _WANG_FACTORS if f < 3.95))},
}


def phiflow_version() -> str:
    """The installed PhiFlow version (part of the cache key), or ``'missing'``."""
    try:
        import phi
    except ImportError:
        return "missing"
    return str(getattr(phi, "__version__", "unknown"))


def _import_phi():
    try:
        from phi import flow, math  # noqa: F401
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("equiproj.data.smoke needs PhiFlow: pip install 'equiproj[smoke]' (phiflow>=3.4)") from err
    return flow


def _setup(cfg: SmokeConfig):
    """Per simulation: inflow position, buoyancy per unit smoke, group and direction."""
    if cfg.case == "rotation":
        c = _BOX / 2
        base = np.array([0.0, _RADIUS - c])  # (32, 5) relative to the centre
        pos, force, grp, dirs = [], [], [], []
        for i in range(cfg.groups):
            for j in range(4):
                R = np.linalg.matrix_power(np.array([[0.0, -1.0], [1.0, 0.0]]), j)
                mag = _ROT_UNIT * (4 * i + 1 + float(cfg.level) * j)
                pos.append(c + R @ base)
                force.append(mag * (R @ np.array([0.0, 1.0])))
                grp.append(i)
                dirs.append(j)
        return (np.array(pos), np.array(force), np.array(grp, dtype=np.int64), np.array(dirs, dtype=np.int64))
    pos = np.array([(x, y) for x in cfg.positions_x for y in cfg.positions_y], dtype=np.float64)
    force = np.tile([0.0, _TRANS_BASE], (len(pos), 1))
    minus = -np.ones(len(pos), dtype=np.int64)
    return pos, force, minus, minus.copy()


def _simulate(n: int, box: float, pos: np.ndarray, radius: float, force, dt_velocity: float, steps: int,
              tol: float, progress: bool, desc: str) -> Tuple[np.ndarray, np.ndarray]:
    """One PhiFlow batch of ``len(pos)`` simulations on ``n x n`` cells of a ``box x box`` box:
    ``(velocity (S, T, 2, n, n) at the cell centres, max |divergence| (S,))``. ``force`` is an
    ``(S, 2)`` array of per-simulation forces per unit smoke, or a callable building a force
    field from the smoke grid's constructor arguments."""
    flow = _import_phi()
    from phi import math as pmath

    S = len(pos)
    sim = flow.batch("sim")
    vec = flow.channel(vector="x,y")
    frames = []
    with warnings.catch_warnings(), pmath.precision(64):
        warnings.simplefilter("ignore")  # the closed box's singular pressure system; checked below
        bounds = flow.Box(x=box, y=box)
        smoke = flow.CenteredGrid(0, flow.ZERO_GRADIENT, x=n, y=n, bounds=bounds)
        velocity = flow.StaggeredGrid(0, 0, x=n, y=n, bounds=bounds)
        centres = flow.tensor(pos, sim, vec)
        inflow = flow.resample(flow.Sphere(center=centres, radius=radius), to=smoke, soft=False)
        f = force(flow, n, bounds, vec) if callable(force) else flow.tensor(force, sim, vec)
        pressure = None
        it = range(steps)
        if progress:
            try:
                from tqdm.auto import tqdm

                it = tqdm(it, desc=desc, unit="step")
            except ImportError:  # pragma: no cover
                pass
        for _ in it:
            smoke = flow.advect.mac_cormack(smoke, velocity, 1.0) + inflow
            buoyancy = flow.resample(smoke * f, to=velocity)
            velocity = flow.advect.semi_lagrangian(velocity, velocity, dt_velocity) + buoyancy
            velocity, pressure = flow.fluid.make_incompressible(velocity, (), flow.Solve("auto", tol, tol, x0=pressure))
            frames.append(velocity.at_centers().values.numpy("sim,vector,x,y").astype(np.float32))
        div = flow.field.divergence(velocity).values.numpy("sim,x,y")
        max_div = np.abs(div).reshape(S, -1).max(axis=1).astype(np.float64)
    return np.stack(frames, axis=1), max_div


def _resample(v: np.ndarray, n: int) -> np.ndarray:
    """Fields ``(..., m, m)`` resampled to ``(..., n, n)`` (cell-centred bilinear, antialiased)."""
    import torch

    shape = v.shape
    t = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)).reshape(-1, 1, *shape[-2:])
    if shape[-1] == n:
        return v.astype(np.float32)
    out = torch.nn.functional.interpolate(t.double(), size=(n, n), mode="bilinear", align_corners=False,
                                          antialias=True)
    return out.float().reshape(*shape[:-2], n, n).numpy()


def simulate_smoke(cfg: SmokeConfig, progress: bool = False) -> Dict[str, np.ndarray]:
    """Run the simulations of ``cfg`` (no cache; see :func:`make_smoke_data`)."""
    n = int(cfg.size)
    if cfg.case == "scale":
        vs, divs, pos, force, cells = [], [], [], [], []
        for f in (float(x) for x in cfg.factors):
            m = _fine_cells(n, f, cfg.level)
            p = np.array([[_BOX / 2 * f, _RADIUS * f]])
            b = _TRANS_BASE * f
            v, d = _simulate(m, _BOX * f, p, _RADIUS * f, np.array([[0.0, b]]), cfg.dt_velocity, cfg.steps, cfg.tol,
                             progress, f"smoke scale f={f:g} ({m}^2)")
            vs.append(_resample(v, n) / f)
            divs.append(d)
            pos.append(p[0])
            force.append([0.0, b])
            cells.append(m)
        v, max_div = np.concatenate(vs), np.concatenate(divs)
        pos, force = np.array(pos), np.array(force)
        minus = -np.ones(len(pos), dtype=np.int64)
        grp, dirs, factor = minus, minus.copy(), np.array([float(x) for x in cfg.factors])
        cells = np.array(cells, dtype=np.int64)
    else:
        pos, force, grp, dirs = _setup(cfg)
        if cfg.case == "rotation":
            forcing = force
        else:
            def forcing(flow, cells, bounds, vec):
                xs = (np.arange(cells) + 0.5) * (_BOX / cells)
                b = np.where(xs < _BOX / 2, _TRANS_BASE, _TRANS_BASE * (1.0 + float(cfg.level)))
                bx = flow.tensor(np.repeat(b[:, None], cells, axis=1), flow.spatial("x,y"))
                return flow.CenteredGrid(flow.stack([bx * 0, bx], vec), flow.ZERO_GRADIENT, x=cells, y=cells,
                                         bounds=bounds)
        v, max_div = _simulate(n, _BOX, pos, _RADIUS, forcing, cfg.dt_velocity, cfg.steps, cfg.tol, progress,
                               f"smoke {cfg.case} {n}^2 x {len(pos)}")
        factor, cells = np.ones(len(pos)), np.full(len(pos), n, dtype=np.int64)
    if not np.isfinite(v).all():
        raise FloatingPointError(f"smoke simulation {cfg.case} {n}^2 produced non-finite velocities")
    return dict(velocity=v, buoyancy=force.astype(np.float32), inflow=pos.astype(np.float32), group=grp,
                direction=dirs, factor=factor, cells=cells, max_divergence=max_div, dx=np.array(_BOX / n))


def make_smoke_data(cfg: SmokeConfig, cache: Optional[str] = None, use_cache: bool = True,
                    progress: bool = False) -> Dict[str, np.ndarray]:
    """The simulations of ``cfg``, generated once and cached (kind ``"smoke"``, keyed by the
    configuration, the format version and the PhiFlow version)."""
    return cached_arrays("smoke", cfg.key(), lambda: simulate_smoke(cfg, progress=progress), cache=cache,
                         use_cache=use_cache)


def rotate_velocity(v: np.ndarray, k: int = 1) -> np.ndarray:
    """The C4 action on velocity fields ``(..., 2, n, n)`` (array axes ``(x, y)``, components
    ``(u_x, u_y)``): rotation by ``k`` quarter turns counter-clockwise,
    ``(g . u)(p) = R u(R^{-1} p)``; the same as
    ``equiproj.actions.transform_feature_map(v, k, cyclic(4).standard())``."""
    k = int(k) % 4
    out = np.asarray(v)
    for _ in range(k):
        w = np.rot90(out, 1, axes=(-2, -1))
        out = np.stack([-w[..., 1, :, :], w[..., 0, :, :]], axis=-3)
    return np.ascontiguousarray(out)
