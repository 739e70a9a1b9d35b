"""The SO(2) toy data (features, wedge, wavy rings) and the EMLP-style vector tasks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from equiproj.data.toy import (circular_harmonic_features, gaussian_radial_basis, make_rings, make_wedge,
                               radial_centres, rotate_points)
from equiproj.data.vectors import (VECTOR_TASKS, describe_layout, generate_raw, inertia_target,
                                   make_vector_task, modified_inertia_target, o5_target, raw_splits,
                                   unstandardize_targets)
from equiproj.groups import o3, so3


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _points(n, dtype, seed=0):
    """Points with radii in [0.1, 4] (away from the origin, where the angle is ill-defined)."""
    g = _gen(seed)
    r = 0.1 + 3.9 * torch.rand(n, generator=g, dtype=torch.float64)
    t = 2 * math.pi * torch.rand(n, generator=g, dtype=torch.float64)
    return torch.stack((r * torch.cos(t), r * torch.sin(t)), -1).to(dtype)


# ----------------------------------------------------------------------------- SO(2) features


@pytest.mark.parametrize("dtype,cdtype,tol", [(torch.float32, torch.complex64, 1e-6),
                                              (torch.float64, torch.complex128, 1e-12)])
def test_circular_harmonics_shape_dtype_and_rotation_law(dtype, cdtype, tol):
    x = _points(300, dtype)
    F = circular_harmonic_features(x, M=4, n_radial=4, r_max=4.0)
    assert F.shape == (300, 9, 4) and F.dtype == cdtype
    m = torch.arange(-4, 5, dtype=torch.float64)
    for phi in (0.3, -2.1, math.pi / 2, 5.0):
        G = circular_harmonic_features(rotate_points(x, phi), M=4)
        expected = torch.exp(1j * m * phi).to(cdtype)[:, None] * F
        assert (G - expected).abs().max().item() < tol
    # a generic rotation must not be the identity on the m != 0 rows (the test can fail)
    G = circular_harmonic_features(rotate_points(x, 0.3))
    assert (G - F)[:, 5].abs().max().item() > 1e-2


def test_circular_harmonics_values():
    x = torch.tensor([[0.0, 2.0], [-3.0, 0.0]], dtype=torch.float64)
    F = circular_harmonic_features(x, M=2)
    R = gaussian_radial_basis(torch.tensor([2.0, 3.0], dtype=torch.float64))
    theta = torch.tensor([math.pi / 2, math.pi], dtype=torch.float64)
    for m in range(-2, 3):
        ref = torch.exp(1j * m * theta)[:, None] * R
        assert torch.allclose(F[:, m + 2], ref.to(F.dtype), atol=1e-14)
    # m = 0 row is real and equals the radial functions
    assert torch.allclose(F[:, 2].real, R) and F[:, 2].imag.abs().max() == 0
    # the origin is finite (theta = 0 by convention)
    F0 = circular_harmonic_features(torch.zeros(1, 2))
    assert torch.isfinite(F0.real).all() and torch.isfinite(F0.imag).all()


def test_radial_functions_positive_and_centred():
    c = radial_centres(4, 4.0)
    assert torch.allclose(c, torch.tensor([0.0, 4 / 3, 8 / 3, 4.0], dtype=torch.float64))
    r = torch.linspace(0.0, 4.0, 3001, dtype=torch.float64)
    R = gaussian_radial_basis(r)
    assert R.shape == (3001, 4) and (R > 0).all() and R.max() <= 1.0
    peaks = r[R.argmax(dim=0)]
    assert torch.allclose(peaks, c, atol=2e-3)
    # default width = spacing: neighbours cross at exp(-1/2) of the peak at the midpoint
    mid = gaussian_radial_basis(torch.tensor([2 / 3], dtype=torch.float64))[0]
    assert abs(mid[0] - math.exp(-1 / 8)) < 1e-12 and abs(mid[0] - mid[1]) < 1e-12
    narrow = gaussian_radial_basis(torch.tensor([2 / 3], dtype=torch.float64), width=0.1)[0]
    assert narrow[0] < 1e-8
    with pytest.raises(ValueError):
        gaussian_radial_basis(r, width=-1.0)


def test_rotate_points():
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    y = rotate_points(x, math.pi / 2)
    assert torch.allclose(y, torch.tensor([[0.0, 1.0], [-2.0, 0.0]], dtype=torch.float64), atol=1e-15)
    per_point = rotate_points(x, torch.tensor([math.pi, 0.0], dtype=torch.float64))
    assert torch.allclose(per_point, torch.tensor([[-1.0, 0.0], [0.0, 2.0]], dtype=torch.float64), atol=1e-15)
    assert rotate_points(x.float(), 1.0).dtype == torch.float32
    z = _points(50, torch.float64)
    assert torch.allclose(rotate_points(rotate_points(z, 0.4), -0.4), z, atol=1e-14)
    assert torch.allclose(z.norm(dim=1), rotate_points(z, 1.3).norm(dim=1), atol=1e-14)
    with pytest.raises(ValueError):
        rotate_points(torch.zeros(4, 3), 0.1)


# ----------------------------------------------------------------------------- wedge and rings


def _polar(x):
    x = x.double()
    return x.norm(dim=1), torch.atan2(x[:, 1], x[:, 0])


def test_wedge():
    d = make_wedge(seed=0)
    x, y, ypm = d["x"], d["y"], d["y_pm"]
    assert x.shape == (200, 2) and x.dtype == torch.float32 and y.dtype == torch.float32
    assert int((y == 1).sum()) == 100 and int((y == 0).sum()) == 100
    assert torch.equal(y, ((ypm + 1) // 2).float()) and set(ypm.tolist()) == {1, -1}
    r, t = _polar(x)
    out = y == 0
    eps = 1e-5
    assert (t[out].abs() <= math.pi / 4 + eps).all()
    assert (r[out] >= 2.3 - eps).all() and (r[out] <= 3.0 + eps).all()
    assert (r[~out] <= 1.0 + eps).all()
    # area-uniform in the disc: about a quarter of the points within radius 1/2
    assert 0.12 < float((r[~out] < 0.5).float().mean()) < 0.38
    # the disc is not confined to the wedge: some points have angles beyond 90 degrees
    assert (t[~out].abs() > math.pi / 2).any()
    # determinism and dependence on the seed
    d2 = make_wedge(seed=0)
    assert torch.equal(d2["x"], x) and torch.equal(d2["y"], y)
    assert not torch.equal(make_wedge(seed=1)["x"], x)


def test_rings_sizes_and_split():
    d = make_rings(0.5, seed=0)
    assert d["x_train"].shape == (560, 2) and d["x_test"].shape == (140, 2)
    assert d["x_train"].dtype == torch.float32 and d["y_train"].dtype == torch.float32
    assert float(d["y_train"].sum()) == 280 and float(d["y_test"].sum()) == 70   # stratified
    assert torch.equal(d["y_test"], ((d["y_pm_test"] + 1) // 2).float())
    # train and test are disjoint
    both = torch.cat((d["x_train"], d["x_test"]))
    assert torch.unique(both, dim=0).shape[0] == 700
    d2 = make_rings(0.5, seed=0)
    for k in d:
        assert torch.equal(d[k], d2[k])
    assert not torch.equal(make_rings(0.5, seed=1)["x_train"], d["x_train"])
    assert make_rings(0.0, test_fraction=0.5)["x_test"].shape == (350, 2)
    for bad in (dict(amplitude=-0.1), dict(amplitude=0.2, test_fraction=1.0)):
        with pytest.raises(ValueError):
            make_rings(**bad)


def test_rings_radii():
    d = make_rings(0.0, seed=3)
    x = torch.cat((d["x_train"], d["x_test"]))
    y = torch.cat((d["y_train"], d["y_test"]))
    r, _ = _polar(x)
    eps = 1e-5
    assert (r[y == 1] >= 0.95 - eps).all() and (r[y == 1] <= 1.25 + eps).all()
    assert (r[y == 0] >= 1.98 - eps).all() and (r[y == 0] <= 2.42 + eps).all()

    d = make_rings(1.0, seed=3)
    x = torch.cat((d["x_train"], d["x_test"]))
    y = torch.cat((d["y_train"], d["y_test"]))
    for label, base in ((1, 1.1), (0, 2.2)):
        r, t = _polar(x[y == label])
        corr = np.corrcoef((r - base).numpy(), torch.sin(5 * t).numpy())[0, 1]
        assert corr > 0.9, corr
    # no angular modulation for a = 0
    d = make_rings(0.0, seed=3)
    r, t = _polar(d["x_train"][d["y_train"] == 1])
    assert abs(np.corrcoef(r.numpy(), torch.sin(5 * t).numpy())[0, 1]) < 0.2


# ----------------------------------------------------------------------------- vector tasks


def _orthogonal(d, seed):
    A = torch.randn(d, d, dtype=torch.float64, generator=_gen(seed))
    Q, R = torch.linalg.qr(A)
    return (Q * torch.sign(torch.diagonal(R))).numpy()


def test_o5_target_invariant():
    raw = generate_raw("o5", 200, seed=4)
    x1, x2, y = raw["x"][:, :5], raw["x"][:, 5:], raw["y"][:, 0]
    assert np.allclose(o5_target(x1, x2), y, atol=0, rtol=0)
    dets = []
    for s in range(6):
        Q = _orthogonal(5, s)
        dets.append(np.linalg.det(Q))
        assert np.abs(o5_target(x1 @ Q.T, x2 @ Q.T) - y).max() < 1e-12
    assert min(dets) < 0 < max(dets)              # reflections are included
    # but not invariant under rotating only one of the two vectors
    Q = _orthogonal(5, 0)
    assert np.abs(o5_target(x1 @ Q.T, x2) - y).max() > 1e-2


def test_o5_standardisation(tmp_path):
    d = make_vector_task("o5", "ci", seed=0, cache=str(tmp_path))
    raw = raw_splits("o5", "ci", seed=0)
    s = d["x_scale"].double().numpy()
    assert s.shape == (10,)
    assert np.all(s[:5] == s[0]) and np.all(s[5:] == s[5])      # one scale per vector
    assert np.allclose(d["vector_scales"].double().numpy(), [s[0], s[5]])
    ratio = raw["x_train"] / d["x_train"].double().numpy()
    assert np.allclose(ratio[:, :5], s[0], rtol=1e-5) and np.allclose(ratio[:, 5:], s[5], rtol=1e-5)
    # the scale is the per-coordinate RMS of each vector on the training set
    assert abs(s[0] - np.sqrt(np.mean(raw["x_train"][:, :5] ** 2))) < 1e-6
    xt = d["x_train"].double()
    assert abs(float((xt[:, :5] ** 2).mean()) - 1) < 1e-5 and abs(float((xt[:, 5:] ** 2).mean()) - 1) < 1e-5
    # the target: mean 0, std 1 on train; un-standardising recovers the raw targets
    assert abs(float(d["y_train"].mean())) < 1e-5 and abs(float(d["y_train"].double().std(unbiased=False)) - 1) < 1e-5
    for split in ("train", "val", "test"):
        back = unstandardize_targets(d[f"y_{split}"], d).double().numpy()
        assert np.abs(back - raw[f"y_{split}"]).max() < 1e-4
    # standardised targets are still invariant: the model sees the same function of x
    x = d["x_test"].double().numpy() * s
    y = (o5_target(x[:, :5], x[:, 5:]) - float(d["y_mean"])) / float(d["y_std"])
    assert np.abs(y - d["y_test"][:, 0].double().numpy()).max() < 1e-4


def _inertia_inputs(n=64, seed=0):
    raw = generate_raw("inertia", n, seed=seed)
    x = raw["x"]
    return x[:, :5], x[:, 5:].reshape(n, 5, 3), raw["y"].reshape(n, 3, 3)


def test_inertia_layout_and_values():
    m, r, T = _inertia_inputs()
    assert (m > 0).all()
    assert np.allclose(T, inertia_target(m, r), atol=0, rtol=0)
    i = 7
    ref = sum(m[i, k] * (r[i, k] @ r[i, k] * np.eye(3) - np.outer(r[i, k], r[i, k])) for k in range(5))
    assert np.abs(T[i] - ref).max() < 1e-12
    assert np.allclose(T, np.swapaxes(T, 1, 2))
    d = make_vector_task("inertia", use_cache=False)
    raw = raw_splits("inertia")
    assert np.allclose(d["x_train"].double().numpy(), raw["x_train"], rtol=1e-6)   # not standardised
    assert np.allclose(d["y_train"].double().numpy(), raw["y_train"], rtol=1e-6)
    lay = describe_layout("inertia")
    a, b = lay["input_slices"]["positions"]
    assert (a, b) == (5, 20) and lay["input"] == (("scalar", 5), ("vector", 5))


@pytest.mark.parametrize("sampler", ["so3", "o3"])
def test_inertia_equivariance(sampler):
    m, r, T = _inertia_inputs()
    G = {"so3": so3, "o3": o3}[sampler]().sample(8, generator=_gen(1)).numpy()
    for R in G:
        T2 = inertia_target(m, r @ R.T)
        assert np.abs(T2 - R @ T @ R.T).max() < 1e-12
        # float32 inputs: the relation holds to float32 accuracy
        T32 = inertia_target(m.astype(np.float32), (r @ R.T).astype(np.float32)).astype(np.float32)
        scale = np.abs(T).max(axis=(1, 2), keepdims=True)
        assert (np.abs(T32 - (R @ T @ R.T)) / scale).max() < 1e-5


def _z_fixing():
    out = [np.diag([1.0, 1.0, -1.0]), np.diag([-1.0, 1.0, 1.0])]
    for a in (0.3, 1.7, -2.5):
        c, s = math.cos(a), math.sin(a)
        Rz = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        out += [Rz, Rz @ np.diag([1.0, -1.0, -1.0])]
    return out


def test_modified_inertia_symmetry():
    m, r, T = _inertia_inputs()
    for c in (0.03, 0.3, 1.0):
        Tm = modified_inertia_target(m, r, c)
        assert np.abs(Tm - T).max() > 1e-3
        for R in _z_fixing():
            assert np.abs(modified_inertia_target(m, r @ R.T, c) - R @ Tm @ R.T).max() < 1e-12
        R = so3().sample(1, generator=_gen(5))[0].numpy()
        err = np.abs(modified_inertia_target(m, r @ R.T, c) - R @ Tm @ R.T).max()
        assert err > 1e-3 * c
    assert np.abs(modified_inertia_target(m, r, 0.0) - T).max() == 0
    Tm = modified_inertia_target(m, r, 0.3)
    assert np.allclose(Tm[:, :, :2], T[:, :, :2]) and np.allclose(Tm[:, :, 2], 1.3 * T[:, :, 2])


def test_modified_inertia_task(tmp_path):
    base = make_vector_task("inertia", seed=2, cache=str(tmp_path))
    zero = make_vector_task("modified_inertia", seed=2, c=0.0, cache=str(tmp_path))
    mod = make_vector_task("modified_inertia", seed=2, c=0.3, cache=str(tmp_path))
    for k in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(base[k], zero[k])
    assert torch.equal(mod["x_train"], base["x_train"])
    assert not torch.allclose(mod["y_train"], base["y_train"])
    assert mod["c"] == 0.3 and base["c"] is None
    assert mod["layout"]["group"].startswith("O(2)")


@pytest.mark.parametrize("name", VECTOR_TASKS)
def test_vector_task_sizes_and_splits(name, tmp_path):
    d = make_vector_task(name, "ci", seed=0, cache=str(tmp_path))
    lay = describe_layout(name)
    for split in ("train", "val", "test"):
        x, y = d[f"x_{split}"], d[f"y_{split}"]
        assert x.shape == (256, lay["input_dim"]) and y.shape == (256, lay["output_dim"])
        assert x.dtype == torch.float32 and y.dtype == torch.float32
        assert torch.isfinite(x).all() and torch.isfinite(y).all()
    assert not torch.allclose(d["x_train"], d["x_val"]) and not torch.allclose(d["x_val"], d["x_test"])
    assert d["input_layout"] == lay["input_layout"] and d["output_layout"] == lay["output_layout"]
    assert not torch.equal(make_vector_task(name, seed=1, use_cache=False)["x_train"], d["x_train"])


def test_paper_preset_sizes():
    d = make_vector_task("o5", "paper", seed=0, use_cache=False)
    assert [d[f"x_{s}"].shape[0] for s in ("train", "val", "test")] == [1000, 1000, 1000]


def test_determinism_and_cache(tmp_path):
    a = make_vector_task("inertia", seed=3, use_cache=False)
    b = make_vector_task("inertia", seed=3, use_cache=False)
    c1 = make_vector_task("inertia", seed=3, cache=str(tmp_path))      # miss: written
    files = sorted(p.name for p in (tmp_path / "vectors").iterdir())
    assert any(f.endswith(".npz") for f in files)
    c2 = make_vector_task("inertia", seed=3, cache=str(tmp_path))      # hit
    assert sorted(p.name for p in (tmp_path / "vectors").iterdir()) == files
    for k in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test", "x_scale", "y_mean", "y_std"):
        assert torch.equal(a[k], b[k]) and torch.equal(a[k], c1[k]) and torch.equal(c1[k], c2[k])
    # a cache hit really reads the file (a doctored file is returned as is)
    npz = next(p for p in (tmp_path / "vectors").iterdir() if p.suffix == ".npz")
    with np.load(npz) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["x_train"] = arrays["x_train"] + 1.0
    np.savez(npz, **arrays)
    c3 = make_vector_task("inertia", seed=3, cache=str(tmp_path))
    assert torch.allclose(c3["x_train"], c1["x_train"] + 1.0, atol=1e-6)


def test_vector_task_errors():
    with pytest.raises(ValueError, match="unknown vector task"):
        make_vector_task("o4", use_cache=False)
    with pytest.raises(ValueError, match="unknown preset"):
        make_vector_task("o5", preset="huge", use_cache=False)
    with pytest.raises(ValueError, match="c must be >= 0"):
        make_vector_task("modified_inertia", c=-0.1, use_cache=False)
    with pytest.raises(ValueError, match="unknown vector task"):
        describe_layout("inertia3")
    with pytest.raises(ValueError):
        modified_inertia_target(np.ones((1, 1)), np.ones((1, 1, 3)), c=-1.0)
