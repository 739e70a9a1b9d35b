"""Model checks (check_model, declare_model(strict=...)) and replace_norms."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import equiproj
from equiproj import EquivarianceWarning, ModelCheckError, check_model, declare_model, project_
from equiproj._checks import grid_residue
from equiproj.actions import transform_feature_map
from equiproj.groups import cyclic, so2, so3
from equiproj.nn import FieldBatchNorm, GatedNonlinearity, RepConv2d, RepLinear

from conftest import TOL


class Block(nn.Module):
    """A ResNet basic block written with torch.nn only."""

    def __init__(self, c_in, c_out, stride, norm):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = norm(c_out)
        self.relu = nn.ReLU()
        self.down = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), norm(c_out))
                     if stride != 1 or c_in != c_out else nn.Identity())

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + self.down(x))


class ResNet(nn.Module):
    def __init__(self, norm=nn.BatchNorm2d, width=8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), norm(width), nn.ReLU())
        self.layer1 = Block(width, width, 1, norm)
        self.layer2 = Block(width, 2 * width, 2, norm)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.layer2(self.layer1(self.stem(x)))), 1))


def _randomise_norms(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, FieldBatchNorm)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g))


def _invariance_error(model, x):
    """max over the quarter turns of |f(g x) - f(x)| (the outputs are trivial)."""
    y = model(x)
    return max((model(torch.rot90(x, k, dims=(-2, -1))) - y).abs().max().item() for k in range(1, 4))


def _record(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn()
    return out, [w for w in caught if issubclass(w.category, EquivarianceWarning)]


def test_stock_resnet_with_batch_norm_is_warned_once_per_module():
    model = ResNet()
    x = torch.randn(2, 1, 9, 9)
    _, caught = _record(lambda: declare_model(model, cyclic(4), example_input=x))
    names = sorted(str(w.message).split("'")[1] for w in caught)
    bns = sorted(n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d))
    assert names == bns  # one warning per BatchNorm, nothing else at this (odd) size
    assert all("FieldBatchNorm" in str(w.message) and "replace_norms=True" in str(w.message) for w in caught)
    # what the warning is about: after projection the model is still not invariant
    _randomise_norms(model)
    project_(model)
    for _ in range(3):  # running statistics from data
        model(torch.randn(8, 1, 9, 9) * 2 + 1)
    for mode in (True, False):
        model.train(mode)
        assert _invariance_error(model, x) > 1e-4   # the equivariant model: < 1e-5 (below)


@pytest.mark.parametrize("how", ["replace_norms", "library_norms"])
def test_resnet_with_equivariant_norms_is_not_warned_and_invariant(how, dtype):
    C4 = cyclic(4)
    x = torch.randn(3, 1, 9, 9, generator=torch.Generator().manual_seed(1), dtype=dtype)
    if how == "replace_norms":
        model = ResNet().to(dtype)
        _, caught = _record(lambda: declare_model(model, C4, replace_norms=True, example_input=x))
        assert isinstance(model.layer2.down[1], FieldBatchNorm)
        assert model.layer2.bn1.rep == 4 * C4.regular() and model.stem[1].rep == 2 * C4.regular()
        assert model.stem[1].weight.dtype == dtype
    else:
        model = ResNet(norm=lambda c: FieldBatchNorm((c // 4) * C4.regular())).to(dtype)
        _, caught = _record(lambda: declare_model(model, C4, example_input=x))
    assert caught == []
    _randomise_norms(model)
    project_(model)
    for _ in range(3):
        model(torch.randn(8, 1, 9, 9, dtype=dtype) * 2 + 1)
    tol = 10 * TOL[dtype]
    model.train()
    assert _invariance_error(model, x) < tol
    model.eval()
    assert _invariance_error(model, x) < tol


def test_even_sizes_break_strided_layers():
    """The condition (n + 2p - d(k-1) - 1) % s == 0: odd sizes for the 3x3 / 1x1 stride-2 layers."""
    model = ResNet(norm=lambda c: FieldBatchNorm((c // 4) * cyclic(4).regular())).double()
    even = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    _, caught = _record(lambda: declare_model(model, cyclic(4), example_input=even))
    flagged = sorted(str(w.message).split("'")[1] for w in caught)
    assert flagged == ["layer2.conv1", "layer2.down.0"]
    assert "only for sizes that are odd" in str(caught[0].message)
    project_(model)
    model.eval()
    assert _invariance_error(model, even) > 1e-3
    assert _invariance_error(model, torch.randn(2, 1, 9, 9, dtype=torch.float64)) < 1e-10
    # without an example input the condition is stated for every strided layer, in one warning
    issues, caught = _record(lambda: check_model(model))
    assert {(i.name, i.kind) for i in issues} == {("layer2.conv1", "size"), ("layer2.down.0", "size")}
    assert all("odd" in i.problem for i in issues)
    assert len(caught) == 1 and caught[0].category is equiproj.GridSizeWarning
    assert "'layer2.conv1' (Conv2d)" in str(caught[0].message) and "example_input" in str(caught[0].message)
    with pytest.raises(ModelCheckError, match="layer2.conv1"):
        check_model(model, strict=True, example_input=even)
    assert check_model(model, strict=True, example_input=torch.randn(1, 1, 11, 11, dtype=torch.float64)) == []


@pytest.mark.parametrize("k,s,p,d", [(3, 2, 1, 1), (2, 2, 0, 1), (3, 3, 1, 1), (4, 2, 1, 1), (3, 2, 0, 2),
                                     (1, 2, 0, 1), (5, 3, 2, 1)])
def test_grid_condition_matches_equivariance(k, s, p, d):
    """The stated condition is exactly when a projected C4 convolution is equivariant."""
    C4 = cyclic(4)
    conv = RepConv2d(C4.trivial(), C4.regular(), k, stride=s, padding=p, dilation=d, equivariant=True).double()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        conv.parametrizations.weight.original.copy_(torch.randn(conv.weight.shape, generator=g, dtype=torch.float64))
    for n in range(7, 13):
        x = torch.randn(2, 1, n, n, generator=g, dtype=torch.float64)
        err = (conv(transform_feature_map(x, 1, C4.trivial()))
               - transform_feature_map(conv(x), 1, C4.regular())).abs().max().item()
        exact = n % s == grid_residue(k, s, p, d)
        assert (err < 1e-10) == exact, (n, err)
        pool = torch.nn.functional.max_pool2d
        perr = (pool(torch.rot90(x, 1, (-2, -1)), k, s, p, d) - torch.rot90(pool(x, k, s, p, d), 1, (-2, -1))).abs()
        if p <= k // 2:
            assert (perr.max().item() < 1e-12) == exact


def _so3_mlp(nonlinearity):
    S = so3()
    hidden = 4 * S.irrep(1)
    model = nn.Sequential(nn.Linear(3, 12), nonlinearity, nn.Linear(12, 1))
    return model, dict(in_rep=S.standard(), out_rep=S.trivial(), hidden=hidden)


def test_relu_on_so3_vectors_is_warned_and_collapses():
    model, kw = _so3_mlp(nn.ReLU())
    _, caught = _record(lambda: declare_model(model, so3(), **kw))
    assert len(caught) == 1
    msg = str(caught[0].message)
    assert "layer '1' (ReLU)" in msg and "not permutation fields" in msg and "GatedNonlinearity" in msg
    project_(model)
    x = torch.randn(20, 3)
    out = model(x)
    assert float(out.detach().std()) < 1e-6  # a constant: the equivariant maps from vectors to scalars are 0
    with pytest.raises(ModelCheckError, match="ReLU"):
        declare_model(_so3_mlp(nn.ReLU())[0], so3(), strict=True, **kw)


def test_gated_so3_model_and_odd_functions_are_not_warned():
    S = so3()
    gate = GatedNonlinearity(2 * S.standard(), n_scalars=2)
    model = nn.Sequential(RepLinear(S.standard(), gate.in_rep), gate, RepLinear(gate.out_rep, S.trivial()))
    assert check_model(model) == []
    O3 = equiproj.groups.o3()
    model = nn.Sequential(RepLinear(O3.irrep(0, -1), 3 * O3.irrep(0, -1)), nn.Tanh(),
                          RepLinear(3 * O3.irrep(0, -1), O3.trivial()))
    assert check_model(model) == []   # an odd function commutes with the sign of a pseudoscalar
    model[1] = nn.ReLU()
    assert [i.kind for i in check_model(model, warn=False)] == ["nonlinearity"]


def test_pooling_and_padding():
    C4, SO2 = cyclic(4), so2()
    reg = 2 * C4.regular()
    ok = nn.Sequential(RepConv2d(C4.trivial(), reg, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.AvgPool2d(2),
                       RepConv2d(reg, C4.trivial(), 3, padding=1))
    assert check_model(ok, example_input=torch.randn(1, 1, 8, 8)) == []
    issues = check_model(ok, example_input=torch.randn(1, 1, 10, 10), warn=False)
    assert [(i.name, i.kind) for i in issues] == [("3", "grid")]   # 10 -> 5 is odd for the second pool
    irreps = SO2.irrep(0) + SO2.irrep(1) + SO2.irrep(2)
    steer = nn.Sequential(RepConv2d(SO2.trivial(), irreps, 5, padding=2), nn.MaxPool2d(2, 2),
                          nn.AvgPool2d(2), RepConv2d(irreps, SO2.trivial(), 5, padding=2))
    kinds = [(i.name, i.kind) for i in check_model(steer, example_input=torch.randn(1, 1, 8, 8), warn=False)]
    assert kinds == [("1", "pooling")]
    pad = nn.Sequential(RepConv2d(C4.trivial(), reg, 3), nn.ZeroPad2d((0, 1, 0, 1)), nn.Flatten(),
                        nn.Linear(8 * 49, 1))
    equiproj.declare(pad[3], 392 * C4.trivial(), C4.trivial())
    kinds = [(i.name, i.kind) for i in check_model(pad, example_input=torch.randn(1, 1, 8, 8), warn=False)]
    assert kinds == [("1", "grid"), ("2", "flatten")]
    same = nn.Sequential(nn.Conv2d(1, 4, 2, padding="same"), nn.ConvTranspose2d(4, 4, 3, 2, 1, output_padding=1),
                         nn.Conv2d(4, 1, 3, stride=(2, 1), padding=1))
    kinds = [(i.name, i.kind) for i in check_model(declare_model_silent(same, C4), warn=False)]
    assert kinds == [("0", "grid"), ("1", "grid"), ("2", "grid")]


def declare_model_silent(model, group, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        declare_model(model, group, **kw)
    return model


def test_norms_prelu_and_layer_norm_on_regular_fields():
    C4 = cyclic(4)
    mlp = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.PReLU(16), nn.Linear(16, 16),
                        nn.LayerNorm(16, elementwise_affine=False), nn.PReLU(), nn.Linear(16, 1))
    declare_model_silent(mlp, C4, in_rep=2 * C4.regular())
    kinds = [(i.name, i.kind) for i in check_model(mlp, warn=False)]
    assert kinds == [("1", "norm"), ("2", "nonlinearity")]
    # trivial channels may be normalised per channel
    triv = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))
    assert check_model(declare_model_silent(triv, cyclic(1)), warn=False) == []


def test_replace_norms_options():
    C4 = cyclic(4)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 12), nn.LayerNorm(12),
                          nn.Linear(12, 1))
    rep = 2 * C4.trivial() + 2 * C4.irrep(1) + 2 * C4.irrep(2) + C4.regular()
    declare_model_silent(model, C4, in_rep=C4.regular(), layers={"3": (2 * C4.regular(), rep)},
                         replace_norms={"4": rep})
    assert type(model[1]).__name__ == "FieldBatchNorm" and model[1].rep == 2 * C4.regular()
    assert type(model[4]).__name__ == "FieldLayerNorm" and model[4].rep == rep and model[4].channel_dim == -1
    with pytest.raises(ValueError, match="no BatchNorm, GroupNorm or LayerNorm named \\['nope'\\]"):
        declare_model_silent(nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 1)), C4,
                             replace_norms={"nope": C4.regular()})
    with pytest.raises(ValueError, match="cannot tell the representation of the 6 channels of '1'"):
        declare_model_silent(nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(6), nn.Linear(8, 1)), C4,
                             replace_norms=True)
