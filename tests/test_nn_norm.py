"""Equivariant normalisation layers: equivariance in both dtypes and modes, statistics, state."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from equiproj.actions import transform_feature_map
from equiproj.groups import cyclic, dihedral, o2, o3, octahedral, so2, so3, symmetric
from equiproj.nn import FieldBatchNorm, FieldLayerNorm, field_statistics

from conftest import TOL, quaternion_group, test_elements


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _randomise(module, seed=1):
    """Non-trivial affine parameters, so that a shared scale is tested, not a unit one."""
    g = _gen(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.rand(p.shape, generator=g, dtype=p.dtype) + 0.5)
    return module


def _cube_rotations(n=4):
    """Rotation matrices of the cube (they map a cubic voxel grid onto itself), as SO(3) elements."""
    O = octahedral()
    R = O.standard()(O.elements(), dtype=torch.float64)
    return R[torch.tensor([1, 5, 11, 17][:n])]


# (id, rep, elements, spatial size or None): the group acts exactly on the grid
GRID_CASES = [
    ("C4", cyclic(4).trivial() * 2 + 2 * cyclic(4).regular() + cyclic(4).irrep(1) + cyclic(4).irrep(2),
     cyclic(4).elements(), (6, 6)),
    ("D4", dihedral(4).trivial() + dihedral(4).regular() + dihedral(4).standard() + dihedral(4).irrep(1, 0),
     dihedral(4).elements(), (5, 5)),
    ("SO3-l3-volume", 2 * so3().trivial() + so3().irrep(1) + so3().irrep(2) + so3().irrep(3),
     _cube_rotations(), (4, 4, 4)),
    ("O3-volume", o3().irrep(0, 1) + o3().irrep(0, -1) + o3().irrep(1, 1) + 2 * o3().irrep(1, -1) + o3().irrep(3, -1),
     torch.cat([_cube_rotations(2), -_cube_rotations(2)]), (3, 3, 3)),
]

# (id, rep): inputs (N, C), Haar samples (or all elements)
VECTOR_CASES = [
    ("SO2", 2 * so2().irrep(0) + so2().irrep(1) + 2 * so2().irrep(3) + so2().standard() * so2().standard()),
    ("O2", o2().irrep(0, 0) + o2().irrep(1, 0) + 2 * o2().irrep(1, 1) + o2().irrep(1, 2)),
    ("SO3", 3 * so3().trivial() + 2 * so3().irrep(1) + so3().irrep(2) + so3().irrep(3)),
    ("O3", o3().irrep(0, 1) + o3().irrep(0, -1) + o3().irrep(1, -1) + o3().irrep(2, 1)),
    ("S4", symmetric(4).trivial() + 2 * symmetric(4).standard() + symmetric(4).irrep(2)),
    ("Q8", quaternion_group().regular() + quaternion_group().standard() + quaternion_group().irrep(1)),
]


def _act(rep, g, x):
    """g . x for one element: feature maps by transform_feature_map, vectors by rho(g)."""
    if x.ndim > 2:
        return transform_feature_map(x, g, rep)
    return x @ rep(g, dtype=x.dtype)[0].T


def _elements(G, elems):
    return [elems[i:i + 1] for i in range(len(elems))]


def _layers(rep, dtype, spatial):
    layers = {
        "batch": FieldBatchNorm(rep),
        "layer": FieldLayerNorm(rep),
    }
    if spatial:
        layers["layer-over-space"] = FieldLayerNorm(rep, over_space=True)
    return {k: _randomise(m).to(dtype) for k, m in layers.items()}


def _check(rep, elems, x, dtype, train_batches):
    tol = TOL[dtype]
    for name, layer in _layers(rep, dtype, x.ndim > 2).items():
        layer.train()
        for xb in train_batches:  # move the running statistics away from their initial values
            layer(xb)
        for mode in ("train", "eval"):
            layer.train(mode == "train")
            y = layer(x)
            for g in _elements(rep.group, elems):
                err = (layer(_act(rep, g, x)) - _act(rep, g, y)).abs().max().item()
                assert err < tol, f"{name} ({mode}) not equivariant: {err:.3g}"


@pytest.mark.parametrize("case", GRID_CASES, ids=[c[0] for c in GRID_CASES])
def test_equivariant_on_grids(case, dtype):
    _, rep, elems, size = case
    g = _gen(0)
    x = 1.5 * torch.randn(6, rep.dim, *size, generator=g, dtype=dtype) + 0.7
    batches = [torch.randn(6, rep.dim, *size, generator=g, dtype=dtype) * 2 + 1 for _ in range(3)]
    _check(rep, elems, x, dtype, batches)


@pytest.mark.parametrize("case", VECTOR_CASES, ids=[c[0] for c in VECTOR_CASES])
def test_equivariant_on_vectors(case, dtype):
    _, rep = case
    g = _gen(0)
    x = 1.5 * torch.randn(16, rep.dim, generator=g, dtype=dtype) + 0.7
    batches = [torch.randn(16, rep.dim, generator=g, dtype=dtype) * 2 + 1 for _ in range(3)]
    _check(rep, test_elements(rep.group, n=6), x, dtype, batches)


def test_torch_batch_norm_is_not_equivariant():
    """The check above can fail: a per-channel batch norm on regular fields breaks it."""
    G = cyclic(4)
    rep = 2 * G.regular()
    bn = _randomise(nn.BatchNorm2d(rep.dim)).double()
    x = torch.randn(4, rep.dim, 6, 6, generator=_gen(0), dtype=torch.float64)
    err = (bn(transform_feature_map(x, 1, rep)) - transform_feature_map(bn(x), 1, rep)).abs().max()
    assert err > 1e-2


def test_statistics_groups():
    G = cyclic(4)
    s = field_statistics(G.trivial() + G.regular() + G.irrep(1) + G.trivial())
    assert s.kinds == ("trivial", "permutation", "norm", "trivial")
    assert s.group.tolist() == [0, 1, 1, 1, 1, 2, 2, 3]
    assert s.sizes.tolist() == [1, 4, 2, 1]
    # fields of a tensor product of sums are its summands' products
    S = so3()
    s = field_statistics((S.trivial() + S.irrep(1)) * S.irrep(1))
    assert s.kinds == ("norm", "norm")
    with pytest.raises(TypeError, match="Representation"):
        field_statistics(8)


def test_matches_torch_on_trivial_channels():
    """With only trivial channels the layers are torch's, statistics included."""
    rep = 5 * cyclic(4).trivial()
    g = _gen(0)
    for momentum in (0.1, None):
        ours = _randomise(FieldBatchNorm(rep, momentum=momentum)).double()
        ref = nn.BatchNorm2d(5, momentum=momentum).double()
        with torch.no_grad():
            ref.weight.copy_(ours.weight)
            ref.bias.copy_(ours.bias)
        for _ in range(3):
            x = torch.randn(4, 5, 3, 3, generator=g, dtype=torch.float64) * 3 + 2
            torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=1e-12)
        torch.testing.assert_close(ours.running_mean, ref.running_mean, rtol=0, atol=1e-12)
        torch.testing.assert_close(ours.running_var, ref.running_var, rtol=0, atol=1e-12)
        ours.eval(), ref.eval()
        torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=1e-12)
    ln, ref = _randomise(FieldLayerNorm(rep, channel_dim=-1)).double(), nn.LayerNorm(5).double()
    with torch.no_grad():
        ref.weight.copy_(ln.weight)
        ref.bias.copy_(ln.bias)
    x = torch.randn(3, 7, 5, generator=g, dtype=torch.float64) + 1
    torch.testing.assert_close(ln(x), ref(x), rtol=0, atol=1e-12)
    # regular fields without affine parameters: torch's LayerNorm (its statistics are invariant)
    ln = FieldLayerNorm(2 * cyclic(4).regular(), affine=False, over_space=True).double()
    x = torch.randn(3, 8, 4, 4, generator=g, dtype=torch.float64) + 1
    torch.testing.assert_close(ln(x), nn.GroupNorm(1, 8, affine=False).double()(x), rtol=0, atol=1e-12)


def test_running_statistics_are_pooled_per_field():
    C4 = cyclic(4)
    rep = C4.trivial() + C4.regular() + C4.irrep(1)
    bn = FieldBatchNorm(rep, momentum=1.0).double()
    x = torch.randn(10, rep.dim, 3, 3, generator=_gen(2), dtype=torch.float64) * 2 + 1
    bn(x)
    flat = x.transpose(0, 1).reshape(rep.dim, -1)
    triv, perm, irr = flat[0], flat[1:5].reshape(-1), flat[5:7]
    torch.testing.assert_close(bn.running_mean, torch.stack([triv.mean(), perm.mean()]))
    expected_var = torch.stack([triv.var(), perm.var(), irr.pow(2).sum(0).mean() / 2])
    torch.testing.assert_close(bn.running_var, expected_var)
    assert int(bn.num_batches_tracked) == 1
    # eval uses them: the irrep field is divided by its running RMS, not centred
    bn.eval()
    y = bn(x)
    torch.testing.assert_close(y[:, 5:7], x[:, 5:7] / torch.sqrt(expected_var[2] + bn.eps))
    torch.testing.assert_close(y[:, 1:5], (x[:, 1:5] - perm.mean()) / torch.sqrt(perm.var() + bn.eps))


def test_state_dict_round_trip():
    rep = 2 * so3().trivial() + so3().irrep(1)
    bn = _randomise(FieldBatchNorm(rep))
    for _ in range(2):
        bn(torch.randn(8, rep.dim, generator=_gen(3)))
    sd = bn.state_dict()
    assert set(sd) == {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}
    assert sd["weight"].shape == (3,) and sd["bias"].shape == (2,) and sd["running_var"].shape == (3,)
    fresh = FieldBatchNorm(rep)
    fresh.load_state_dict(sd)
    bn.eval(), fresh.eval()
    x = torch.randn(4, rep.dim, generator=_gen(4))
    torch.testing.assert_close(fresh(x), bn(x))
    ln = _randomise(FieldLayerNorm(rep))
    fresh = FieldLayerNorm(rep)
    fresh.load_state_dict(ln.state_dict())
    torch.testing.assert_close(fresh(x), ln(x))


def test_from_torch_pools_statistics():
    C4 = cyclic(4)
    rep = C4.trivial() + C4.regular() + C4.irrep(1)
    ref = _randomise(nn.BatchNorm2d(rep.dim)).double()
    for _ in range(3):
        ref(torch.randn(6, rep.dim, 4, 4, generator=_gen(5), dtype=torch.float64) * 2 + 1)
    new = FieldBatchNorm.from_torch(ref, rep)
    assert new.running_mean.dtype == torch.float64
    torch.testing.assert_close(new.running_mean, torch.stack([ref.running_mean[0], ref.running_mean[1:5].mean()]))
    m = ref.running_mean[1:5].mean()
    torch.testing.assert_close(new.running_var[1], (ref.running_var[1:5] + (ref.running_mean[1:5] - m) ** 2).mean())
    torch.testing.assert_close(new.running_var[2], (ref.running_var[5:7] + ref.running_mean[5:7] ** 2).mean())
    torch.testing.assert_close(new.weight, torch.stack([ref.weight[0], ref.weight[1:5].mean(), ref.weight[5:7].mean()]))
    with pytest.raises(ValueError, match="cannot normalise"):
        FieldBatchNorm.from_torch(nn.BatchNorm2d(3), rep)
    ln = FieldLayerNorm.from_torch(nn.LayerNorm(rep.dim), rep)
    assert ln.channel_dim == -1 and not ln.over_space
    gn = FieldLayerNorm.from_torch(nn.GroupNorm(1, rep.dim), rep)
    assert gn.channel_dim == 1 and gn.over_space


def test_errors_name_the_shape():
    rep = 2 * cyclic(4).regular()
    with pytest.raises(ValueError, match="expects .* 8 channels in dimension 1, got shape \\(3, 7\\)"):
        FieldBatchNorm(rep)(torch.randn(3, 7))
    with pytest.raises(ValueError, match="more than one value per channel"):
        FieldBatchNorm(cyclic(4).trivial())(torch.randn(1, 1))
    with pytest.raises(ValueError, match="momentum"):
        FieldBatchNorm(rep, momentum=2.0)
