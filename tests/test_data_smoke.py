"""equiproj.data.smoke: PhiFlow smoke plumes, determinism, the C4 symmetry at level 0, the cache."""

import numpy as np
import pytest
import torch

pytest.importorskip("phi")

from equiproj.actions import transform_feature_map  # noqa: E402
from equiproj.data.smoke import SMOKE_PRESETS, SmokeConfig, make_smoke_data, rotate_velocity  # noqa: E402
from equiproj.groups import cyclic  # noqa: E402


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("EQUIPROJ_CACHE", str(tmp_path_factory.getbasetemp() / "smoke-data-cache"))


@pytest.fixture(scope="module")
def sym(tmp_path_factory):
    """The ci rotation data at level 0 (about 15-30 s; cached for test_experiment_smoke.py)."""
    cache = str(tmp_path_factory.getbasetemp() / "smoke-data-cache")
    return make_smoke_data(SmokeConfig("rotation", level=0.0, **SMOKE_PRESETS["ci"]["rotation"]), cache=cache)


def test_level_zero_is_c4_symmetric_and_the_action_agrees_with_the_library(sym):
    v = sym["velocity"]
    assert v.shape == (8, 14, 2, 16, 16) and v.dtype == np.float32
    assert np.abs(v[:, -1]).max() > 1e-2                       # the plume moves
    assert sym["max_divergence"].max() < 1e-6                  # the pressure solve converged
    G = cyclic(4)
    for s in range(8):
        a = rotate_velocity(v[s], 1)
        b = transform_feature_map(torch.from_numpy(v[s]), 1, G.standard()).numpy()
        np.testing.assert_array_equal(a, b)                     # one action, two implementations
        # simulation 4 i + j + 1 is simulation 4 i + j rotated by a quarter turn
        assert np.abs(a - v[4 * (s // 4) + (s + 1) % 4]).max() < 1e-5 * np.abs(v).max()
    # the four rotations of sim 0 are not all equal (the test is not vacuous)
    assert np.abs(rotate_velocity(v[0], 1) - v[0]).max() > 1e-2


def test_symmetry_breaking_level_breaks_c4_and_generation_is_deterministic(sym, tmp_path):
    cfg = SmokeConfig("rotation", size=8, steps=2, groups=1, level=1.0)
    d1 = make_smoke_data(cfg, cache=str(tmp_path))
    d2 = make_smoke_data(cfg, use_cache=False)               # regenerated: bit-identical
    for k in d1:
        np.testing.assert_array_equal(d1[k], d2[k])
    assert list((tmp_path / "smoke").glob("*.npz"))          # cached by configuration
    d3 = make_smoke_data(cfg, cache=str(tmp_path))           # from the cache
    np.testing.assert_array_equal(d3["velocity"], d1["velocity"])
    v = d1["velocity"]
    np.testing.assert_allclose(np.linalg.norm(d1["buoyancy"], axis=1), 0.025 * np.array([1, 2, 3, 4]), rtol=1e-6)
    err = np.abs(rotate_velocity(v[0], 1) - v[1]).max() / np.abs(v).max()
    assert err > 1e-2                                         # different magnitudes: no longer symmetric


def test_translation_case_and_errors():
    d = make_smoke_data(SmokeConfig("translation", size=8, steps=2, positions_x=(16.0, 48.0), positions_y=(5.0,),
                                    level=1.0), use_cache=False)
    assert d["velocity"].shape == (2, 2, 2, 8, 8) and (d["group"] == -1).all()
    np.testing.assert_allclose(d["inflow"], [[16, 5], [48, 5]])
    assert SMOKE_PRESETS["paper"]["rotation"]["groups"] * 4 == 36       # Wang et al.'s 36 simulations
    assert SmokeConfig("translation").n_sims == 35
    with pytest.raises(ValueError, match="case"):
        SmokeConfig("shear")
    with pytest.raises(ValueError, match="256"):
        SmokeConfig("rotation", size=256)
    with pytest.raises(ValueError, match="even"):
        SmokeConfig("rotation", size=15)


def test_scale_case_level_zero_is_the_scaled_first_simulation_and_level_one_is_wang_et_al():
    """Level 0: every factor's simulation (n cells, everything enlarged f times) is the f = 1 one
    under x -> f x, u -> f u (stored divided by f); level 1 (Wang et al.'s same cell size, f
    times more cells) breaks it only through the resolution."""
    sym = make_smoke_data(SmokeConfig("scale", size=8, steps=6, factors=(1.0, 1.5, 2.0), level=0.0), use_cache=False)
    v = sym["velocity"]
    assert v.shape == (3, 6, 2, 8, 8) and list(sym["cells"]) == [8, 8, 8]
    assert np.abs(v[0, -1]).max() > 1e-2
    assert np.abs(v - v[:1]).max() < 1e-5 * np.abs(v).max()
    np.testing.assert_allclose(sym["factor"], [1.0, 1.5, 2.0])
    np.testing.assert_allclose(sym["buoyancy"][:, 1], [0.1, 0.15, 0.2], rtol=1e-6)
    np.testing.assert_allclose(sym["inflow"], [[32, 5], [48, 7.5], [64, 10]])
    wang = make_smoke_data(SmokeConfig("scale", size=8, steps=6, factors=(1.0, 1.5, 2.0), level=1.0), use_cache=False)
    assert list(wang["cells"]) == [8, 12, 16] and wang["max_divergence"].max() < 1e-6
    np.testing.assert_array_equal(wang["velocity"][0], v[0])           # f = 1 is the same simulation
    assert np.abs(wang["velocity"][2] - v[0]).max() > 1e-2 * np.abs(v).max()
    assert SmokeConfig("scale", size=64, factors=SMOKE_PRESETS["paper"]["scale"]["factors"]).n_sims == 30
    with pytest.raises(ValueError, match="factor 4 on 256 cells per side .* fails from 256"):
        SmokeConfig("scale", size=64, factors=(1.0, 4.0))
    SmokeConfig("scale", size=64, factors=(1.0, 4.0), level=0.0)     # n cells at every factor: allowed
    with pytest.raises(ValueError, match="factors >= 1"):
        SmokeConfig("scale", factors=(0.5, 1.0))
