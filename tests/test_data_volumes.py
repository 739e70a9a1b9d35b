"""Shape volumes (equiproj.data.volumes): determinism, cache, invariance in distribution, mirror pair."""

import pytest
import torch

from equiproj.actions import transform_feature_map
from equiproj.data.volumes import (SHAPES, VolumeConfig, make_volume_dataset, random_rotations, render_volumes,
                                   sample_poses)
from equiproj.groups import octahedral


def test_deterministic_and_cached(tmp_path):
    a = make_volume_dataset("ci", use_cache=False, n_train=12, n_val=3, n_test=3)
    b = make_volume_dataset("ci", cache=str(tmp_path), n_train=12, n_val=3, n_test=3)
    c = make_volume_dataset("ci", cache=str(tmp_path), n_train=12, n_val=3, n_test=3)  # from the cache
    assert list((tmp_path / "volumes").glob("*.npz"))
    for k in ("x_train", "y_train", "x_test", "rotation_val"):
        assert torch.equal(a[k], b[k]) and torch.equal(b[k], c[k])
    d = make_volume_dataset("ci", use_cache=False, n_train=12, n_val=3, n_test=3, seed=1)
    assert not torch.equal(a["x_train"], d["x_train"])
    assert not torch.equal(a["x_train"][:3], a["x_val"])  # the splits are distinct
    assert a["x_train"].shape == (12, 1, 16, 16, 16) and a["x_train"].dtype == torch.float32
    assert sorted(a["y_train"].tolist()) == sorted([i % len(SHAPES) for i in range(12)])  # balanced


def test_config_errors():
    with pytest.raises(ValueError, match="rotation_std_deg"):
        VolumeConfig(rotation_std_deg="haar")
    with pytest.raises(ValueError, match="classes"):
        VolumeConfig(classes=("rod_z", "cube"))
    with pytest.raises(ValueError, match="unknown volume preset"):
        make_volume_dataset("big", use_cache=False)


def test_small_spread_rotations_are_close_to_identity():
    R = random_rotations(200, 5.0, torch.Generator().manual_seed(0))
    angle = torch.arccos(((R.diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2).clamp(-1, 1)).rad2deg()
    assert 3.0 < float(angle.mean()) < 12.0  # sqrt(8 / pi) * 5 = 8 degrees for a Maxwell distribution
    assert bool(torch.allclose(torch.linalg.det(R), torch.ones(200, dtype=R.dtype)))


def _cube_ratio(x, y, c):
    """max over the 24 cube rotations of ||g . M - M|| over the split-half spread of the class mean M."""
    O = octahedral()
    xc = x[y == c].double()
    m = xc.mean(0, keepdim=True)
    half = float((xc[::2].mean(0) - xc[1::2].mean(0)).norm())
    return max(float((transform_feature_map(m, O.elements()[i:i + 1], O.trivial()) - m).norm())
               for i in range(24)) / half


def test_uniform_rotations_give_cube_invariant_class_statistics():
    cfg = dict(size=12, n_train=9 * 40, n_val=0, n_test=0, noise=0.0)
    uni = make_volume_dataset(VolumeConfig(rotation_std_deg="uniform", **cfg), use_cache=False)
    can = make_volume_dataset(VolumeConfig(rotation_std_deg=10.0, **cfg), use_cache=False)
    # uniform: the class means move under cube rotations no more than by Monte Carlo noise
    for c in range(len(SHAPES)):
        assert _cube_ratio(uni["x_train"], uni["y_train"], c) < 2.5, SHAPES[c]
    # a canonical pose: the oriented classes are far from invariant
    for name in ("rod_z", "rod_x", "disk", "torus"):
        c = SHAPES.index(name)
        assert _cube_ratio(can["x_train"], can["y_train"], c) > 4.0, name


def test_rods_differ_only_by_orientation():
    cfg = VolumeConfig(size=16, rotation_std_deg=0.0, offset=0.0)
    poses = sample_poses(cfg, 2, torch.Generator().manual_seed(3))
    poses["shape"][1] = poses["shape"][0]
    poses["scale"][1], poses["intensity"][1] = poses["scale"][0], poses["intensity"][0]
    v = render_volumes(["rod_z", "rod_x"], poses, 16)
    # a quarter turn exchanging axes 0 and 2 maps rod_z onto rod_x
    assert torch.allclose(v[0, 0].transpose(0, 2), v[1, 0], atol=1e-5)
    assert not torch.allclose(v[0], v[1], atol=1e-2)


@pytest.mark.parametrize("axis", [0, 1])
def test_mirror_helices_are_mirror_images(axis):
    cfg = VolumeConfig(size=16, rotation_std_deg=0.0, offset=0.0)
    poses = sample_poses(cfg, 1, torch.Generator().manual_seed(0))
    poses = {k: v.repeat(2, *([1] * (v.ndim - 1))) for k, v in poses.items()}
    v = render_volumes(["helix_right", "helix_left"], poses, 16)
    assert torch.allclose(v[0, 0].flip(axis), v[1, 0], atol=1e-5)
    # and not superimposable by the rotations of the cube
    O = octahedral()
    assert min(float((transform_feature_map(v[:1], O.elements()[i:i + 1], O.trivial()) - v[1:]).abs().max())
               for i in range(24)) > 0.1


def test_anisotropy_blurs_along_axis_0_only():
    cfg = VolumeConfig(size=16, rotation_std_deg=0.0, offset=0.0)
    poses = sample_poses(cfg, 1, torch.Generator().manual_seed(0))
    sharp = render_volumes(["shell"], poses, 16)
    blur = render_volumes(["shell"], poses, 16, anisotropy=2.0)
    d0 = (sharp.diff(dim=2).abs().mean() / blur.diff(dim=2).abs().mean())
    d2 = (sharp.diff(dim=4).abs().mean() / blur.diff(dim=4).abs().mean())
    assert float(d0) > 1.5 and abs(float(d2) - 1) < 0.35
