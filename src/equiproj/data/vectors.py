"""Synthetic vector-valued regression tasks of the EMLP family (Finzi, Welling & Wilson, 2021).

Three tasks, generated from a seed (nothing is downloaded):

``"o5"``
    O(5)-invariant regression. ``x1, x2 ~ N(0, I_5)``,
    ``y = sin(|x1|) - |x2|^3 / 2 + <x1, x2> / (|x1| |x2|)``.
    Input ``[x1, x2]`` (10 numbers, two copies of the standard representation of O(5)),
    output one scalar.
``"inertia"``
    O(3)-equivariant regression. Five masses ``m_i = softplus(z_i)``, ``z_i ~ N(0, 1)``, and
    positions ``r_i ~ N(0, I_3)``; target the inertia tensor
    ``I = sum_i m_i (|r_i|^2 I_3 - r_i r_i^T)``. Input ``[m_1..m_5, r_1(xyz), ..., r_5(xyz)]``
    (20 numbers: 5 scalars, then 5 vectors), output ``I`` row-major (9 numbers, ``V (x) V``).
``"modified_inertia"``
    Same inputs; target ``I + c * (I e_z) e_z^T`` with ``e_z = (0, 0, 1)``, i.e. ``c`` times the
    third column of ``I`` is added to the third column (default ``c = 0.3``). For ``c > 0`` only
    the orthogonal maps ``R`` with ``R e_z = +-e_z`` remain symmetries (rotations about the z axis
    and the reflections fixing the z axis, i.e. O(2), together with ``z -> -z``); ``c = 0`` is the
    inertia task.

Splits are drawn from three independent child seeds of ``numpy.random.SeedSequence(seed)``
(train, validation, test), so the inputs of ``"inertia"`` and ``"modified_inertia"`` coincide
for equal seeds and sizes. Arrays are generated in float64, cached through
:func:`equiproj.data.cached_arrays` (kind ``"vectors"``) and returned as float32 tensors.

Standardisation (fitted on the training split only) never mixes coordinates and never centres
vectors, so it commutes with the group action:

* ``"o5"``: ``x1`` is divided by one scalar ``s_1 = sqrt(mean_train(|x1|^2) / 5)`` (the RMS of its
  coordinates), ``x2`` by ``s_2`` likewise; ``y`` becomes ``(y - y_mean) / y_std`` (a scalar
  target, so centring it is harmless).
* ``"inertia"`` and ``"modified_inertia"``: not standardised (all scales 1, mean 0), since
  subtracting a mean matrix from an equivariant target would not be equivariant.

The stored ``x_scale`` (one entry per input coordinate), ``y_mean`` and ``y_std`` undo it:
``x_raw = x * x_scale``, ``y_raw = y * y_std + y_mean`` (see :func:`unstandardize_targets`).
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np
import torch

from ._cache import cached_arrays

__all__ = [
    "VECTOR_TASKS",
    "VECTOR_PRESETS",
    "describe_layout",
    "o5_target",
    "inertia_target",
    "modified_inertia_target",
    "generate_raw",
    "raw_splits",
    "make_vector_task",
    "unstandardize_targets",
]

#: Names accepted by :func:`make_vector_task`.
VECTOR_TASKS = ("o5", "inertia", "modified_inertia")

#: Split sizes ``(train, val, test)`` per preset.
VECTOR_PRESETS: Dict[str, Tuple[int, int, int]] = {"ci": (256, 256, 256), "paper": (1000, 1000, 1000)}

_SPLITS = ("train", "val", "test")
_N_MASSES = 5
_FORMAT_VERSION = 1


def _check_name(name: str) -> str:
    if name not in VECTOR_TASKS:
        raise ValueError(f"unknown vector task {name!r}; expected one of {', '.join(map(repr, VECTOR_TASKS))}")
    return name


def _check_c(c: float) -> float:
    c = float(c)
    if not c >= 0:
        raise ValueError(f"c must be >= 0 (the strength of the symmetry-breaking term), got {c}")
    return c


def describe_layout(name: str) -> Dict[str, object]:
    """Which input and output coordinates are scalars, vectors or matrices.

    Returns a dict with

    * ``group``: the symmetry group of the task (a string);
    * ``vector_dim``: the dimension of the standard representation (5 or 3);
    * ``input`` / ``output``: tuples of ``(kind, count)`` blocks in coordinate order, kinds
      ``"scalar"`` (dimension 1), ``"vector"`` (``vector_dim``) and ``"matrix"``
      (``vector_dim**2``, row-major, the tensor square ``V (x) V``);
    * ``input_slices`` / ``output_slices``: named ``(start, stop)`` coordinate ranges;
    * ``input_dim`` / ``output_dim`` and human-readable ``input_layout`` / ``output_layout``.

    Examples
    --------
    >>> lay = describe_layout("inertia")
    >>> lay["input"], lay["output"], lay["input_dim"], lay["output_dim"]
    ((('scalar', 5), ('vector', 5)), (('matrix', 1),), 20, 9)
    >>> lay["input_slices"]["positions"]
    (5, 20)
    """
    _check_name(name)
    if name == "o5":
        return {
            "group": "O(5)",
            "vector_dim": 5,
            "input": (("vector", 2),),
            "output": (("scalar", 1),),
            "input_slices": {"x1": (0, 5), "x2": (5, 10)},
            "output_slices": {"y": (0, 1)},
            "input_dim": 10,
            "output_dim": 1,
            "input_layout": "[x1 (5), x2 (5)]: two copies of the standard representation of O(5)",
            "output_layout": "[y]: one O(5)-invariant scalar",
        }
    group = ("O(3)" if name == "inertia" else
             "O(2) x Z2: R in O(3) with R e_z = +-e_z (rotations about z, reflections fixing the z axis, z -> -z)")
    return {
        "group": group,
        "vector_dim": 3,
        "input": (("scalar", _N_MASSES), ("vector", _N_MASSES)),
        "output": (("matrix", 1),),
        "input_slices": {"masses": (0, _N_MASSES), "positions": (_N_MASSES, 4 * _N_MASSES)},
        "output_slices": {"tensor": (0, 9)},
        "input_dim": 4 * _N_MASSES,
        "output_dim": 9,
        "input_layout": "[m_1..m_5 (5 scalars), r_1(x,y,z), ..., r_5(x,y,z) (5 copies of the standard "
                        "representation of O(3))]",
        "output_layout": "[T_11, T_12, T_13, T_21, ..., T_33]: one 3x3 matrix, row-major (V (x) V)",
    }


def o5_target(x1, x2) -> np.ndarray:
    """``y = sin(|x1|) - |x2|^3 / 2 + <x1, x2> / (|x1| |x2|)`` for rows of ``x1``, ``x2``.

    Parameters
    ----------
    x1, x2 : array of shape (n, 5)
        Raw (un-standardised) vectors; computed in float64.

    Returns
    -------
    numpy array of shape (n,), float64.

    Examples
    --------
    >>> import numpy as np
    >>> e = np.eye(5)[:1]                         # |x1| = |x2| = 1, <x1, x2> = 1
    >>> bool(np.isclose(o5_target(e, e)[0], np.sin(1.0) - 0.5 + 1.0))
    True
    """
    x1 = np.asarray(x1, dtype=np.float64)
    x2 = np.asarray(x2, dtype=np.float64)
    n1 = np.linalg.norm(x1, axis=-1)
    n2 = np.linalg.norm(x2, axis=-1)
    return np.sin(n1) - 0.5 * n2 ** 3 + np.sum(x1 * x2, axis=-1) / (n1 * n2)


def inertia_target(masses, positions) -> np.ndarray:
    """Inertia tensor ``I = sum_i m_i (|r_i|^2 I_3 - r_i r_i^T)``.

    Parameters
    ----------
    masses : array of shape (n, k)
    positions : array of shape (n, k, 3)

    Returns
    -------
    numpy array of shape (n, 3, 3), float64 (symmetric).

    Examples
    --------
    >>> import numpy as np
    >>> inertia_target(np.ones((1, 1)), np.array([[[0.0, 0.0, 2.0]]]))[0]
    array([[4., 0., 0.],
           [0., 4., 0.],
           [0., 0., 0.]])
    """
    m = np.asarray(masses, dtype=np.float64)
    r = np.asarray(positions, dtype=np.float64)
    sq = np.sum(r * r, axis=-1)                                       # (n, k)
    eye = np.eye(r.shape[-1])
    return (np.einsum("nk,nk->n", m, sq)[:, None, None] * eye
            - np.einsum("nk,nka,nkb->nab", m, r, r))


def modified_inertia_target(masses, positions, c: float = 0.3) -> np.ndarray:
    """Inertia tensor with a symmetry-breaking term: ``T = I + c * (I e_z) e_z^T``.

    ``(I e_z) e_z^T`` is the matrix whose third column is the third column of ``I`` and whose
    other columns are zero, so ``T[:, :, 2] = (1 + c) I[:, :, 2]`` and the rest equals ``I``.
    For orthogonal ``R`` with ``R e_z = +-e_z`` the map ``r_i -> R r_i`` sends ``T`` to
    ``R T R^T``; for other ``R`` (and ``c > 0``) it does not.

    Parameters
    ----------
    masses, positions
        As for :func:`inertia_target`.
    c : float
        ``c >= 0``; ``c = 0`` gives the inertia tensor.

    Returns
    -------
    numpy array of shape (n, 3, 3), float64.

    Examples
    --------
    >>> import numpy as np
    >>> modified_inertia_target(np.ones((1, 1)), np.array([[[1.0, 0.0, 1.0]]]), c=0.5)[0]
    array([[ 1. ,  0. , -1.5],
           [ 0. ,  2. ,  0. ],
           [-1. ,  0. ,  1.5]])
    """
    c = _check_c(c)
    inertia = inertia_target(masses, positions)
    out = inertia.copy()
    out[..., :, 2] += c * inertia[..., :, 2]
    return out


def _split_rngs(seed: int):
    return [np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(len(_SPLITS))]


def _sample(name: str, n: int, rng: np.random.Generator, c: float) -> Tuple[np.ndarray, np.ndarray]:
    if name == "o5":
        x = rng.standard_normal((n, 10))
        return x, o5_target(x[:, :5], x[:, 5:])[:, None]
    masses = np.logaddexp(0.0, rng.standard_normal((n, _N_MASSES)))   # softplus
    positions = rng.standard_normal((n, _N_MASSES, 3))
    target = (inertia_target(masses, positions) if name == "inertia"
              else modified_inertia_target(masses, positions, c))
    x = np.concatenate((masses, positions.reshape(n, 3 * _N_MASSES)), axis=1)
    return x, target.reshape(n, 9)


def generate_raw(name: str, n: int, seed: int = 0, c: float = 0.3) -> Dict[str, np.ndarray]:
    """``n`` raw (un-standardised) float64 samples of a task from ``numpy.random.default_rng(seed)``.

    Returns a dict with ``x`` of shape (n, input_dim) and ``y`` of shape (n, output_dim) in the
    layout of :func:`describe_layout`. ``c`` is used by ``"modified_inertia"`` only.

    Examples
    --------
    >>> raw = generate_raw("o5", 4, seed=1)
    >>> raw["x"].shape, raw["y"].shape, raw["x"].dtype
    ((4, 10), (4, 1), dtype('float64'))
    """
    _check_name(name)
    c = _check_c(c)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    x, y = _sample(name, int(n), np.random.default_rng(seed), c)
    return {"x": x, "y": y}


def _resolve_preset(preset: str) -> Tuple[int, int, int]:
    if preset not in VECTOR_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(map(repr, VECTOR_PRESETS))}")
    return VECTOR_PRESETS[preset]


def raw_splits(name: str, preset: str = "ci", seed: int = 0, c: float = 0.3) -> Dict[str, np.ndarray]:
    """The raw float64 splits behind :func:`make_vector_task` (not cached, not standardised).

    Returns ``x_train, y_train, x_val, y_val, x_test, y_test`` as numpy arrays; split ``k`` is
    drawn from the ``k``-th child of ``numpy.random.SeedSequence(seed)``.

    Examples
    --------
    >>> raw = raw_splits("inertia", "ci", seed=0)
    >>> raw["x_train"].shape, raw["y_test"].shape
    ((256, 20), (256, 9))
    """
    _check_name(name)
    c = _check_c(c)
    sizes = _resolve_preset(preset)
    out: Dict[str, np.ndarray] = {}
    for split, n, rng in zip(_SPLITS, sizes, _split_rngs(seed)):
        out[f"x_{split}"], out[f"y_{split}"] = _sample(name, n, rng, c)
    return out


def _build(name: str, preset: str, seed: int, c: float) -> Dict[str, np.ndarray]:
    raw = raw_splits(name, preset, seed, c)
    lay = describe_layout(name)
    x_scale = np.ones(lay["input_dim"])
    y_mean = np.zeros(lay["output_dim"])
    y_std = np.ones(lay["output_dim"])
    vector_scales = np.ones(0)
    if name == "o5":
        xt = raw["x_train"]
        vector_scales = np.array([np.sqrt(np.mean(np.sum(xt[:, a:b] ** 2, axis=1)) / (b - a))
                                  for a, b in (lay["input_slices"]["x1"], lay["input_slices"]["x2"])])
        x_scale = np.repeat(vector_scales, 5)
        y_mean = raw["y_train"].mean(axis=0)
        y_std = raw["y_train"].std(axis=0)
    out = {"x_scale": x_scale, "y_mean": y_mean, "y_std": y_std, "vector_scales": vector_scales}
    for split in _SPLITS:
        out[f"x_{split}"] = raw[f"x_{split}"] / x_scale
        out[f"y_{split}"] = (raw[f"y_{split}"] - y_mean) / y_std
    return out


def make_vector_task(name: str, preset: str = "ci", seed: int = 0, c: float = 0.3,
                     cache: Optional[str] = None, use_cache: bool = True) -> Dict[str, object]:
    """Train/validation/test splits of a synthetic vector task, standardised, as float32 tensors.

    Parameters
    ----------
    name : {"o5", "inertia", "modified_inertia"}
        See the module documentation for the formulas.
    preset : {"ci", "paper"}
        Split sizes: ``"ci"`` 256/256/256, ``"paper"`` 1000/1000/1000.
    seed : int
        Base seed; the splits come from independent child seeds of it.
    c : float
        Strength of the symmetry-breaking term of ``"modified_inertia"`` (``c >= 0``; ignored by
        the other tasks, and not part of their cache key).
    cache, use_cache
        Passed to :func:`equiproj.data.cached_arrays` (kind ``"vectors"``).

    Returns
    -------
    dict with float32 tensors ``x_train, y_train, x_val, y_val, x_test, y_test`` (``x`` of shape
    (n, input_dim), ``y`` of shape (n, output_dim)), the standardisation ``x_scale``
    (input_dim,), ``y_mean``, ``y_std`` (output_dim,) and ``vector_scales`` (``(s_1, s_2)`` for
    ``"o5"``, empty otherwise) as float32 tensors, ``layout`` (:func:`describe_layout`),
    ``input_layout`` / ``output_layout`` strings, and ``name``, ``preset``, ``seed``, ``c``.

    Examples
    --------
    >>> d = make_vector_task("o5", "ci", seed=0, use_cache=False)
    >>> d["x_train"].shape, d["y_train"].shape, d["x_train"].dtype
    (torch.Size([256, 10]), torch.Size([256, 1]), torch.float32)
    >>> abs(float(d["y_train"].mean())) < 1e-5
    True
    """
    _check_name(name)
    c = _check_c(c)
    sizes = _resolve_preset(preset)
    seed = int(seed)
    config = {"task": name, "preset": preset, "sizes": list(sizes), "seed": seed, "version": _FORMAT_VERSION}
    if name == "modified_inertia":
        config["c"] = c
    arrays = cached_arrays("vectors", config, lambda: _build(name, preset, seed, c), cache=cache,
                           use_cache=use_cache)
    lay = describe_layout(name)
    out: Dict[str, object] = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in arrays.items()}
    out.update({"layout": lay, "input_layout": lay["input_layout"], "output_layout": lay["output_layout"],
                "name": name, "preset": preset, "seed": seed, "c": c if name == "modified_inertia" else None})
    return out


def unstandardize_targets(y: torch.Tensor, data: Dict[str, object]) -> torch.Tensor:
    """Undo the target standardisation of :func:`make_vector_task`: ``y * y_std + y_mean``.

    Examples
    --------
    >>> d = make_vector_task("o5", use_cache=False)
    >>> y = unstandardize_targets(d["y_test"], d)
    >>> raw = raw_splits("o5")["y_test"]
    >>> bool(abs(y.double().numpy() - raw).max() < 1e-4)
    True
    """
    y = torch.as_tensor(y)
    std = torch.as_tensor(data["y_std"]).to(y)
    mean = torch.as_tensor(data["y_mean"]).to(y)
    return y * std + mean
