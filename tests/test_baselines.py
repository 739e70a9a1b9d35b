"""The baselines of equiproj.baselines: each tested for what it promises."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from equiproj import LinearProjector, constrain_, declare_model, declared_layers, project_
from equiproj.actions import feature_map_action, transform_feature_map
from equiproj.baselines import (SHARED_OPTIONS, DenseMatrixTooLarge, ElementSampler, GroupPool2d, RelaxedGroupConv2d,
                                RelaxedLiftingConv2d, available_methods, check_subgroup, grid_symmetries, make_method,
                                relaxed_cnn, rotate_kernels, rpp_paths)
from equiproj.groups import cyclic, o3, so2, so3
from equiproj.metrics import equivariance_error
from equiproj.models import UNet2d
from equiproj.nn import GatedNonlinearity, RepConv2d, RepLinear

F64 = torch.float64
SAMPLE_BASED = ["sample-output", "eqreg", "weight-sample"]


# ------------------------------------------------------------------ small models with their actions


def c4_unet(dtype=F64, seed=0):
    """A stock U-Net declared for C4 (regular hidden fields), on 8x8 images."""
    torch.manual_seed(seed)
    net = UNet2d(1, 1, width=4, depth=1, residual=False)
    declare_model(net, cyclic(4))
    act = feature_map_action(cyclic(4).trivial())
    return net.to(dtype), act, act, torch.randn(3, 1, 8, 8, dtype=dtype)


def c4_convnet(dtype=F64, seed=0):
    G = cyclic(4)
    torch.manual_seed(seed)
    net = nn.Sequential(RepConv2d(G.trivial(), 2 * G.regular(), 3, padding=1), nn.ReLU(),
                        RepConv2d(2 * G.regular(), G.regular(), 3, padding=1))
    return (net.to(dtype), feature_map_action(G.trivial()), feature_map_action(G.regular()),
            torch.randn(2, 1, 6, 6, dtype=dtype))


def rotation_mlp(G, dtype=F64, seed=0):
    """RepLinear + GatedNonlinearity + RepLinear for SO(3) or O(3); vectors on the last dim."""
    torch.manual_seed(seed)
    if G.name == "SO(3)":
        l0, l1, l2 = G.irrep(0), G.irrep(1), G.irrep(2)
    else:
        l0, l1, l2 = G.irrep(0, 1), G.irrep(1, -1), G.irrep(2, 1)
    rin, rout = 2 * l1 + l0, l0 + l1
    gate = GatedNonlinearity(2 * l1 + l2, n_scalars=3)
    net = nn.Sequential(RepLinear(rin, gate.in_rep), gate, RepLinear(gate.out_rep, rout))
    return net.to(dtype), rin, rout, torch.randn(5, rin.dim, dtype=dtype)


def c8_mlp(dtype=F64, seed=0):
    G = cyclic(8)
    torch.manual_seed(seed)
    net = nn.Sequential(RepLinear(G.regular(), 2 * G.regular()), nn.ReLU(), RepLinear(2 * G.regular(), G.regular()))
    return net.to(dtype), G.regular(), G.regular(), torch.randn(4, 8, dtype=dtype)


MODELS = {
    "c4-unet": c4_unet,
    "so3-mlp": lambda dtype=F64, seed=0: rotation_mlp(so3(), dtype, seed),
    "o3-mlp": lambda dtype=F64, seed=0: rotation_mlp(o3(), dtype, seed),
}


def _options(name, act_in, act_out, k=2):
    # init="keep": these tests need the random (non-equivariant) weights
    if name == "weight-sample":
        return dict(k=k, seed=1, init="keep")
    return dict(k=k, seed=1, act_in=act_in, act_out=act_out, lambda_=1.0, init="keep")


def _grad_norm(model):
    return sum(float(p.grad.abs().sum()) for p in model.parameters() if p.grad is not None)


# ------------------------------------------------------------------ sample-based penalties


@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("method", SAMPLE_BASED)
def test_sample_penalties_vanish_exactly_on_equivariant_models(method, model_name):
    net, ai, ao, x = MODELS[model_name]()
    m = make_method(method, net, **_options(method, ai, ao))
    pen = m.penalty([x])
    assert pen.ndim == 0 and pen.dtype == F64
    assert float(pen.detach()) > 1e-4                       # clearly positive on random weights
    pen.backward()
    assert _grad_norm(net) > 0                     # gradients flow
    project_(net)
    for _ in range(3):                             # fresh elements every call
        assert float(m.penalty([x]).detach()) < 1e-10


@pytest.mark.parametrize("method", SAMPLE_BASED)
def test_sample_penalties_vanish_under_the_hard_constraint_float32(method):
    net, ai, ao, x = c4_convnet(torch.float32)
    m = make_method(method, net, **_options(method, ai, ao))
    assert float(m.penalty([x]).detach()) > 1e-3
    constrain_(net)
    pen = m.penalty([x])
    assert pen.dtype == torch.float32 and float(pen.detach()) < 1e-9
    pen.backward()                                 # still differentiable through P(W)


def test_sample_output_value_batched_and_per_copy():
    net, ai, ao, x = c8_mlp()
    G = cyclic(8)
    a = make_method("sample-output", net, k=3, act_in=ai, act_out=ao, seed=5, lambda_=2.0)
    b = make_method("sample-output", net, k=3, act_in=ai, act_out=ao, seed=5, lambda_=2.0, batched=False)
    g = ElementSampler(5).sample(G, 3)
    R = G.regular()(g, dtype=F64)
    ref = sum(((net(x @ R[i].T) - net(x) @ R[i].T) ** 2).sum(1).mean() for i in range(3)) / 3
    pa, pb = a.penalty([x]), b.penalty([x])
    assert torch.allclose(pa, 2.0 * ref, rtol=1e-12) and torch.allclose(pb, pa, rtol=1e-12)


def test_element_sampling():
    G = cyclic(8)
    s = ElementSampler(3)
    g = s.sample(G, 3)
    assert g.shape == (3,) and len(set(g.tolist())) == 3 and 0 not in g.tolist()
    assert s.sample(G, 7).tolist() == list(range(1, 8))            # all non-identity elements
    assert s.sample(G, 100, include_identity=True).tolist() == list(range(8))
    assert torch.equal(ElementSampler(3).sample(G, 3), g)           # explicit seed: reproducible
    R = ElementSampler(0).sample(so3(), 4)
    assert R.shape == (4, 3, 3) and torch.allclose(R @ R.transpose(1, 2), torch.eye(3, dtype=R.dtype).expand(4, 3, 3))
    assert ElementSampler(0).sample(so2(), 5).shape == (5,)


def test_eqreg_layers_reduction_and_output_term():
    net, ai, ao, x = c4_unet()
    m = make_method("eqreg", net, act_in=ai, k=3, seed=2, lambda_=1.0)
    terms = m.terms([x])
    assert set(terms) == {name for name, _, _ in declared_layers(net)}
    assert all(float(t.detach()) > 0 for t in terms.values())
    # with the same seed, 'sum' is the number of layers times 'mean'
    a = make_method("eqreg", net, act_in=ai, k=3, seed=9, lambda_=1.0)
    b = make_method("eqreg", net, act_in=ai, k=3, seed=9, lambda_=1.0, reduction="sum")
    assert torch.allclose(b.penalty([x]), len(terms) * a.penalty([x]), rtol=1e-10)
    b2 = make_method("eqreg", net, act_in=ai, act_out=ao, k=3, seed=9, lambda_=1.0, batched=False)
    assert "<output>" in b2.terms([x])
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'sum', got 'max'"):
        make_method("eqreg", net, act_in=ai, reduction="max")


def test_weight_sample_on_steerable_kernels_uses_grid_symmetries():
    G = so2()
    torch.manual_seed(0)
    conv = nn.Sequential(RepConv2d(G.trivial(), G.irrep(0) + G.irrep(1), 5, padding=2)).double()
    m = make_method("weight-sample", conv, k=2, seed=0, init="keep")
    pool = m.pools["0"]
    assert torch.allclose(pool.sort().values, torch.tensor([0, 0.5, 1.0, 1.5], dtype=F64) * math.pi)   # quarter turns
    assert float(m.penalty().detach()) > 1e-4
    project_(conv)
    assert float(m.penalty().detach()) < 1e-10
    # grid symmetries of other groups
    assert grid_symmetries(cyclic(8), (3, 3)).tolist() == [0, 2, 4, 6]
    assert grid_symmetries(so3(), (3, 3, 3)).shape == (24, 3, 3)
    assert grid_symmetries(o3(), (3, 3, 3)).shape == (48, 3, 3)
    C3 = cyclic(3)
    with pytest.raises(ValueError, match="only symmetry of the 3x3 grid is the identity"):
        make_method("weight-sample", nn.Sequential(RepConv2d(C3.trivial(), C3.regular(), 3)))


def test_weight_sample_value():
    G = cyclic(4)
    torch.manual_seed(1)
    layer = RepLinear(G.regular(), G.regular()).double()
    m = make_method("weight-sample", nn.Sequential(layer), k=5, lambda_=3.0)    # k >= 3: all non-identity
    R = G.regular()(torch.arange(1, 4), dtype=F64)
    W, b = layer.weight, layer.bias
    ref = sum(((R[i] @ W @ R[i].T - W) ** 2).sum() + ((R[i] @ b - b) ** 2).sum() for i in range(3)) / 3
    assert torch.allclose(m.penalty(), 3.0 * ref, rtol=1e-12)
    nb = make_method("weight-sample", nn.Sequential(layer), k=5, lambda_=3.0, include_bias=False)
    ref_nb = sum(((R[i] @ W @ R[i].T - W) ** 2).sum() for i in range(3)) / 3
    assert torch.allclose(nb.penalty(), 3.0 * ref_nb, rtol=1e-12)


# ------------------------------------------------------------------ RPP


def test_rpp_free_path_zero_is_equivariant_and_penalty_value():
    net, ai, ao, x = c4_convnet()
    m = make_method("rpp", net, lambda_eq=0.3, lambda_free=2.0)
    assert m.model is net
    G = cyclic(4)
    A = [p for n, p in net.named_parameters() if n.endswith("original")]
    with torch.no_grad():                        # any A: only P(A) is used
        for p in A:
            p.add_(torch.randn_like(p))
    assert equivariance_error(net, x, ai, ao, group=G).max < 1e-10
    free = m.free_parameters()
    assert len(free) == 4 and all(float(p.detach().abs().sum()) == 0 for p in free)
    with torch.no_grad():
        for p in free:
            p.normal_()
    assert equivariance_error(net, x, ai, ao, group=G).max > 1e-2
    eq = sum(float((PA.detach() ** 2).sum()) for _, mod, _ in declared_layers(net) for _, PA, _ in rpp_paths(mod))
    fr = sum(float((p.detach() ** 2).sum()) for p in free)
    pen = m.penalty()
    assert math.isclose(float(pen.detach()), 0.3 * eq + 2.0 * fr, rel_tol=1e-12)
    pen.backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in free + A)
    # the layer's weight is P(A) + B
    conv = net[0]
    PA = conv.projector.project(conv.parametrizations.weight.original)
    assert torch.allclose(conv.weight, PA + free[0])


def test_rpp_on_an_so3_mlp_float32_and_errors():
    net, rin, rout, x = rotation_mlp(so3(), torch.float32)
    m = make_method("rpp", net)
    assert (m.lambda_eq, m.lambda_free) == (1e-6, 1e-2)
    err = equivariance_error(net, x, rin, rout, generator=torch.Generator().manual_seed(0), n_samples=4)
    assert err.max < 1e-5
    assert m.penalty().dtype == torch.float32
    strict = nn.Sequential(RepLinear(rin, rout, equivariant=True))
    with pytest.raises(ValueError, match="already parametrised"):
        make_method("rpp", strict)


# ------------------------------------------------------------------ PER


def _our_penalty(net):
    t = 0.0
    for _, mod, spec in declared_layers(net):
        W, b = mod.weight, mod.bias
        t = t + ((W - spec.projector.project(W)) ** 2).sum() + ((b - spec.projector.project_bias(b)) ** 2).sum()
    return t


@pytest.mark.parametrize("case", ["c8-mlp", "so3-mlp", "c4-unet"])
def test_per_dense_projection_equals_ours(case):
    if case == "c8-mlp":
        net = c8_mlp()[0]
    elif case == "so3-mlp":
        net = rotation_mlp(so3())[0]
    else:
        net = c4_unet()[0]
    m = make_method("per", net, lambda_=1.0)
    for name, mod, spec in declared_layers(net):
        W = torch.randn_like(mod.weight)
        assert torch.allclose(m.project(name, W), spec.projector.project(W), atol=1e-10, rtol=0)
        b = torch.randn_like(mod.bias)
        assert torch.allclose(m.project_bias(name, b), spec.projector.project_bias(b), atol=1e-10, rtol=0)
        D = mod.weight.numel()
        assert m.matrices[name][0].shape == (D, D)
    assert torch.allclose(m.penalty(), _our_penalty(net), rtol=1e-10)
    assert m.state_bytes() >= sum(M.numel() * 8 for Ms in m.matrices.values() for M in Ms)


def test_per_subgroup_candidate_projects_onto_the_subgroups_equivariant_maps():
    G = cyclic(8)
    layer = RepLinear(G.regular(), 2 * G.regular()).double()
    H = [0, 2, 4, 6]
    m = make_method("per", nn.Sequential(layer), subgroups=[None, H], alphas=[1.0, 0.5], lambda_=1.0)
    W = torch.randn(16, 8, dtype=F64)
    PH = m.project("0", W, candidate=1)
    A = layer.projector.action
    assert torch.allclose(m.project("0", PH, candidate=1), PH, atol=1e-12)                # idempotent
    assert torch.allclose(A.act(torch.tensor(H), PH), PH.expand(4, 16, 8), atol=1e-12)    # H-equivariant
    assert (A.act(torch.tensor([1]), PH)[0] - PH).abs().max() > 1e-2                       # not C8-equivariant
    # the same as LinearProjector on the restrictions to C4 (generator 1 of C4 -> element 2 of C8)
    C4 = cyclic(4)
    r_in = C4.representation([G.regular()(torch.tensor([2]), dtype=F64)[0]])
    r_out = C4.representation([(2 * G.regular())(torch.tensor([2]), dtype=F64)[0]])
    assert torch.allclose(PH, LinearProjector(r_in, r_out).project(W), atol=1e-10)
    # penalty: both candidates with their weights
    Wl, b = layer.weight, layer.bias
    ref = ((Wl - m.project("0", Wl, 0)) ** 2).sum() + 0.5 * ((Wl - m.project("0", Wl, 1)) ** 2).sum()
    ref = ref + ((b - m.project_bias("0", b, 0)) ** 2).sum() + 0.5 * ((b - m.project_bias("0", b, 1)) ** 2).sum()
    assert torch.allclose(m.penalty(), ref, rtol=1e-12)


def test_per_memory_guard_and_subgroup_checks():
    net = c4_unet(torch.float32)[0]
    with pytest.raises(DenseMatrixTooLarge, match=r"layer 'down\.0\.2' is 144 x 144 \(82.9 kB in torch.float32\), above max_bytes = 50 kB"):
        make_method("per", net, max_bytes=5e4)
    with pytest.raises(DenseMatrixTooLarge, match=r"all 8 layers \(1 candidate\(s\) each\) need 2.23 MB.*'down\.1\.2'"):
        make_method("per", net, max_bytes=2e6)
    G = cyclic(8)
    with pytest.raises(ValueError, match="not closed"):
        check_subgroup(G, [0, 1])
    with pytest.raises(ValueError, match="identity"):
        check_subgroup(G, [2, 4, 6])
    quarter = torch.tensor([0, 0.5, 1, 1.5], dtype=F64) * math.pi
    assert check_subgroup(so2(), quarter).shape == (4,)
    with pytest.raises(ValueError, match="not closed"):
        check_subgroup(so2(), quarter[:3])
    with pytest.raises(ValueError, match="steerable kernel"):
        make_method("per", nn.Sequential(RepConv2d(so2().trivial(), so2().irrep(1), 3)))
    with pytest.raises(ValueError, match=r"alphas must have one weight per candidate subgroup \(2\), got 1"):
        make_method("per", c8_mlp()[0], subgroups=[None, [0, 4]], alphas=[1.0])


# ------------------------------------------------------------------ relaxed group convolutions


def _rot_err(layer, x, r, rep_in, rep_out):
    with torch.no_grad():
        y1 = layer(transform_feature_map(x, r, rep_in))
        y2 = transform_feature_map(layer(x), r, rep_out)
    return float((y1 - y2).abs().max() / y2.abs().max())


def test_relaxed_convs_equal_weights_are_equivariant_unequal_are_not():
    G = cyclic(4)
    torch.manual_seed(0)
    lift = RelaxedLiftingConv2d(2, 3, 3, N=4, num_banks=3, padding=1, dtype=F64)
    gconv = RelaxedGroupConv2d(3, 2, 3, N=4, num_banks=3, padding=1, dtype=F64)
    x0 = torch.randn(2, 2, 9, 9, dtype=F64)
    x1 = torch.randn(2, 12, 9, 9, dtype=F64)
    with torch.no_grad():                             # equal across h, different across banks
        lift.relaxed_weights.copy_(torch.tensor([[0.5], [-1.0], [2.0]], dtype=F64).expand(3, 4))
        gconv.relaxed_weights.copy_(torch.tensor([[1.5], [0.3], [-0.7]], dtype=F64).expand(3, 4))
    for r in range(4):
        assert _rot_err(lift, x0, r, 2 * G.trivial(), 3 * G.regular()) < 1e-12
        assert _rot_err(gconv, x1, r, 3 * G.regular(), 2 * G.regular()) < 1e-12
    # the quarter turn of the input is torch.rot90
    with torch.no_grad():
        assert torch.allclose(lift(torch.rot90(x0, 1, dims=(-2, -1))),
                              transform_feature_map(lift(x0), 1, 3 * G.regular()), atol=1e-12)
    for layer in (lift, gconv):
        assert float(layer.relaxation_penalty().detach()) < 1e-15
        with torch.no_grad():
            layer.relaxed_weights[1, 2] += 0.7
        assert float(layer.relaxation_penalty().detach()) > 0.1
    assert _rot_err(lift, x0, 1, 2 * G.trivial(), 3 * G.regular()) > 1e-2
    assert _rot_err(gconv, x1, 1, 3 * G.regular(), 2 * G.regular()) > 1e-2


def test_strict_group_convolution_flag_and_relaxed_cnn():
    G = cyclic(4)
    torch.manual_seed(1)
    net = relaxed_cnn(1, 2, width=2, depth=3, equal_weights=True, dtype=F64)
    assert net[0].relaxed_weights.shape == (2, 1)
    with torch.no_grad():
        for mod in net.modules():
            if hasattr(mod, "relaxed_weights"):
                mod.relaxed_weights.normal_()             # still shared by all rotations
    x = torch.randn(2, 1, 10, 10, dtype=F64)
    act = feature_map_action(G.trivial())
    assert equivariance_error(net, x, act, feature_map_action(2 * G.trivial()), group=G).max < 1e-12
    assert float(make_method("relaxed", net).penalty().detach()) == 0.0
    relaxed = relaxed_cnn(1, 1, width=2, depth=3, dtype=F64)
    m = make_method("relaxed", relaxed, lambda_=0.5)
    assert float(m.penalty().detach()) == 0.0            # starts equivariant
    assert equivariance_error(relaxed, x, act, act, group=G).max < 1e-12
    with torch.no_grad():
        relaxed[2].relaxed_weights.normal_()
    assert equivariance_error(relaxed, x, act, act, group=G).max > 1e-3
    pen = m.penalty()
    assert float(pen.detach()) > 0
    pen.backward()
    assert float(relaxed[2].relaxed_weights.grad.abs().sum()) > 0
    assert [r["name"] for r in m.report()] == ["0", "2"]
    assert GroupPool2d(4)(torch.ones(1, 8, 2, 2)).shape == (1, 2, 2, 2)


def test_relaxation_penalty_form_and_interpolated_rotations():
    conv = RelaxedGroupConv2d(1, 1, 3, N=4, num_banks=1, dtype=F64)
    with torch.no_grad():
        conv.relaxed_weights.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=F64))
    assert float(conv.relaxation_penalty("l1").detach()) == 6.0      # |1-4| + 1 + 1 + 1
    assert float(conv.relaxation_penalty("l2").detach()) == 12.0     # 9 + 1 + 1 + 1
    # N = 8: quarter turns stay exact, 45 degrees are interpolated
    K = torch.randn(2, 3, 5, 5, dtype=F64)
    assert torch.equal(rotate_kernels(K, 2, 8), torch.rot90(K, 1, dims=(-2, -1)))
    assert not torch.allclose(rotate_kernels(rotate_kernels(K, 1, 8), 1, 8), rotate_kernels(K, 2, 8))
    G8 = cyclic(8)
    torch.manual_seed(2)
    conv8 = RelaxedGroupConv2d(1, 1, 5, N=8, padding=2, dtype=F64)
    assert not conv8.exact
    x = torch.randn(1, 8, 11, 11, dtype=F64)
    assert _rot_err(conv8, x, 2, G8.regular(), G8.regular()) < 1e-10                # quarter turn: exact
    with torch.no_grad():
        conv8.relaxed_weights[0, 3] += 1.0
    assert _rot_err(conv8, x, 2, G8.regular(), G8.regular()) > 1e-3


# ------------------------------------------------------------------ registry


def _suitable(name, dtype):
    """A small model and options for every registered method."""
    if name == "relaxed":
        net = relaxed_cnn(1, 1, width=2, depth=3, dtype=dtype)
        with torch.no_grad():
            net[2].relaxed_weights.normal_()
        return net, {}, torch.randn(2, 1, 8, 8, dtype=dtype)
    net, ai, ao, x = c4_convnet(dtype)
    return net, dict(act_in=ai, act_out=ao, seed=0, init="keep"), x


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["float64", "float32"])
def test_every_registered_method_builds_and_gives_a_differentiable_scalar(dtype):
    names = available_methods()
    assert {"plain", "strict", "projection", "sample-output", "eqreg", "weight-sample", "rpp", "per",
            "relaxed"} <= set(names)
    for name in names:
        net, opts, x = _suitable(name, dtype)
        m = make_method(name, net, **opts)            # the shared options are accepted by every method
        pen = m.penalty([x] if m.needs_batch else None)
        assert isinstance(pen, torch.Tensor) and pen.ndim == 0 and pen.dtype == dtype, name
        loss = m.model(x).pow(2).mean() + pen         # a training step's loss
        loss.backward()
        if name not in ("plain", "strict"):
            assert pen.requires_grad and float(pen.detach()) > 0, name
        assert isinstance(m.report(), list)


def test_unknown_names_and_bad_options_raise_clearly():
    net, ai, ao, x = c4_convnet()
    with pytest.raises(ValueError, match="unknown method 'nope': choose one of .*sample-output"):
        make_method("nope", net)
    with pytest.raises(TypeError, match=r"method 'weight-sample': unknown option\(s\) 'lamda'"):
        make_method("weight-sample", net, lamda=1.0)
    with pytest.raises(TypeError, match=r"unknown option\(s\) 'k'"):
        make_method("per", net, k=3)
    with pytest.raises(ValueError, match="option k must be a positive integer, got 0"):
        make_method("sample-output", net, act_in=ai, act_out=ao, k=0)
    with pytest.raises(ValueError, match=r"option lambda_ must be a finite number >= 0, got -1"):
        make_method("eqreg", net, act_in=ai, lambda_=-1)
    with pytest.raises(ValueError, match="option act_out is required"):
        make_method("sample-output", net, act_in=ai)
    with pytest.raises(TypeError, match="option act_in must be an equiproj.groups.Representation"):
        make_method("sample-output", net, act_in=3, act_out=ao)
    with pytest.raises(ValueError, match="option group is C8 but an action acts by C4"):
        make_method("sample-output", net, act_in=ai, act_out=ao, group=cyclic(8))
    with pytest.raises(ValueError, match="needs the batch"):
        make_method("sample-output", net, act_in=ai, act_out=ao).penalty()
    with pytest.raises(ValueError, match="no RelaxedLiftingConv2d"):
        make_method("relaxed", net)
    with pytest.raises(ValueError, match="no declared layers"):
        make_method("weight-sample", nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="option norm must be 'l1' or 'l2', got 'l3'"):
        make_method("relaxed", relaxed_cnn(), norm="l3")
    assert SHARED_OPTIONS == {"seed", "act_in", "act_out", "group", "input_fn", "init"}
    make_method("rpp", net, seed=3, group=cyclic(4), input_fn=lambda b: b[0])   # shared: ignored


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_every_method_on_cuda():
    dev = torch.device("cuda")
    for name in available_methods():
        net, opts, x = _suitable(name, torch.float32)
        net, x = net.to(dev), x.to(dev)
        m = make_method(name, net, **opts)
        pen = m.penalty([x] if m.needs_batch else None)
        assert pen.device.type == "cuda", name
        (m.model(x).pow(2).mean() + pen).backward()
