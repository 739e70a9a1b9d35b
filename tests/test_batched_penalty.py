"""The batched Frobenius penalty against the layer-by-layer reference, orbit plans, compile."""

import copy

import pytest
import torch
from torch import nn

from equiproj import LinearProjector, Projector, ProjectionRegulariser, declare, declare_model
from equiproj.actions import KernelAction, grid_permutations, transform_feature_map
from equiproj.groups import cyclic, dihedral, so2
from equiproj.models import UNet2d
from equiproj.nn import RepLinear

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

TOL = {torch.float64: 1e-10, torch.float32: 1e-4}


def _unet(route, dtype):
    torch.manual_seed(0)
    net = UNet2d(1, 1, width=4, depth=1).to(dtype)
    declare_model(net, cyclic(4), route=route)
    return net


def _mixed(dtype):
    """Linear layers with trivial, regular and irreducible fields of D4 and an SO(2) layer."""
    torch.manual_seed(1)
    D4 = dihedral(4)
    r1 = D4.trivial() + 2 * D4.regular()
    r2 = D4.irrep((1, 0)) + D4.regular() + D4.irrep((1, 1)) + 2 * D4.trivial()
    S = so2()
    net = nn.ModuleList([RepLinear(r1, r2), nn.ReLU(), RepLinear(r2, r1), nn.Linear(6, 5), nn.Linear(5, 5)]).to(dtype)
    declare(net[3], S.irrep(0) + 2 * S.irrep(1) + S.irrep(0), 3 * S.irrep(0) + S.irrep(1))
    declare(net[4], 3 * S.irrep(0) + S.irrep(1), 3 * S.irrep(0) + S.irrep(1))
    return net


@pytest.mark.parametrize("scheme", ["penalty", "split"])
@pytest.mark.parametrize("norm", ["fro", "fro2"])
@pytest.mark.parametrize("case", ["unet-spatial", "unet-spectral", "unet-basis", "mixed"])
def test_batched_matches_layer_by_layer(case, norm, scheme, dtype):
    net = _mixed(dtype) if case == "mixed" else _unet(case.split("-")[1], dtype)
    reg = ProjectionRegulariser(net, lambda_perp=0.7, lambda_G=0.2, norm=norm, scheme=scheme)
    if scheme == "split":  # make A and B differ
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.1 * torch.randn_like(p))
    assert reg._plan() is not None
    batched = {n: (p, e) for n, p, e in reg.terms()}
    ref = {n: (p, e) for n, p, e in reg._layer_terms()}
    assert batched.keys() == ref.keys()
    for n in ref:
        for a, b in zip(batched[n], ref[n]):
            assert torch.allclose(a, b, rtol=TOL[dtype], atol=TOL[dtype]), (n, float(a), float(b))
    # the fused penalty (one autograd node, closed-form gradient) has the reference's value and gradients
    v_b = reg.value()
    g_b = torch.autograd.grad(v_b, list(net.parameters()), allow_unused=True)
    reg.batched = False
    v_r = reg.value()
    assert torch.allclose(v_b, v_r, rtol=TOL[dtype], atol=TOL[dtype]), (float(v_b), float(v_r))
    g_r = torch.autograd.grad(v_r, list(net.parameters()), allow_unused=True)
    for a, b in zip(g_b, g_r):
        if a is None or b is None:
            assert a is None and b is None
        else:
            assert torch.allclose(a, b, rtol=10 * TOL[dtype], atol=10 * TOL[dtype])


def test_batched_groups_layers_into_few_calls():
    net = _unet("spatial", torch.float64)
    reg = ProjectionRegulariser(net, lambda_perp=1.0, scheme="penalty")
    assert reg._plan()[0].calls == 1  # every layer is an orbit mean: one index_add and one gather
    net = _unet("spectral", torch.float64)
    reg = ProjectionRegulariser(net, lambda_perp=1.0, scheme="penalty")
    net = _unet("auto", torch.float64)  # auto takes the basis route for small pairs: the same orbit plan
    assert ProjectionRegulariser(net, lambda_perp=1.0, scheme="penalty")._plan()[0].calls == 1
    net = _unet("spectral", torch.float64)
    reg = ProjectionRegulariser(net, lambda_perp=1.0, scheme="penalty")
    n_pairs = len({id(p) for _, m, s in reg.layers for P in (s.projector, s.projector.bias_projector())
                   for p in P._pairs.values()})
    assert reg._plan()[0].calls <= n_pairs < 2 * len(reg.layers)


def test_zero_defect_has_zero_gradient():
    net = _unet("auto", torch.float32)
    reg = ProjectionRegulariser(net, lambda_perp=1.0, scheme="penalty")
    reg.project_()
    g = torch.autograd.grad(reg(), list(net.parameters()), allow_unused=True)
    assert all(x is None or bool(torch.isfinite(x).all()) for x in g)
    # the layers are exactly equivariant, so ||W - P W|| = 0 and its gradient is 0 (as safe_sqrt), not nan
    assert float(reg()) == 0.0
    assert all(x is None or float(x.abs().max()) == 0.0 for x in g)


@pytest.mark.parametrize("norm", ["fro", "fro2"])
def test_fused_penalty_gradient_is_the_closed_form(norm, dtype):
    """d/dW lambda ||W - P W|| = lambda (W - P W) / ||W - P W|| for an orthogonal P; squared: 2 lambda (W - P W)."""
    G = cyclic(4)
    torch.manual_seed(3)
    net = nn.Sequential(RepLinear(G.regular(), 2 * G.regular()), RepLinear(2 * G.regular(), G.regular() + G.trivial()))
    net = net.to(dtype)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    reg = ProjectionRegulariser(net, lambda_perp=0.7, norm=norm, scheme="penalty", include_bias=False)
    v = reg.value()
    grads = torch.autograd.grad(v, [net[0].weight, net[1].weight])
    want_v = 0.0
    for layer, g in zip(net, grads):
        P = layer.equiproj_spec.projector
        R = layer.weight.detach() - P.project(layer.weight.detach())
        want = 1.4 * R if norm == "fro2" else 0.7 * R / R.norm()
        want_v = want_v + (0.7 * R.pow(2).sum() if norm == "fro2" else 0.7 * R.norm())
        assert torch.allclose(g, want, rtol=TOL[dtype], atol=TOL[dtype])
    assert torch.allclose(v, torch.as_tensor(want_v, dtype=dtype), rtol=TOL[dtype])


@pytest.mark.parametrize("norm", ["fro", "fro2"])
def test_fused_penalty_second_derivative_matches_reference(norm):
    """Hessian-vector products (create_graph=True) through the fused node equal the layer-by-layer ones."""
    net = _mixed(torch.float64)
    reg = ProjectionRegulariser(net, lambda_perp=0.5, lambda_G=0.3, norm=norm, scheme="penalty")
    params = [p for p in net.parameters()]
    vs = [torch.randn_like(p) for p in params]
    hv = []
    for batched in (True, False):
        reg.batched = batched
        gs = torch.autograd.grad(reg.value(), params, create_graph=True)
        dot = sum((g * v).sum() for g, v in zip(gs, vs))
        hv.append(torch.autograd.grad(dot, params))
    for a, b in zip(*hv):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-10)
    assert max(float(a.abs().max()) for a in hv[0]) > 1e-3  # a real, non-zero curvature


def test_plan_follows_structure_changes():
    from equiproj import split_, unconstrain_

    net = _unet("auto", torch.float64)
    reg = ProjectionRegulariser(net, lambda_perp=1.0, scheme="penalty")
    v0 = float(reg())
    split_(net)
    assert float(reg()) == pytest.approx(v0, rel=1e-12)
    with torch.no_grad():
        net.head.parametrizations.weight.original1.add_(1.0)
    v1 = float(reg())
    reg.batched = False
    assert float(reg()) == pytest.approx(v1, rel=1e-10)
    unconstrain_(net)
    reg.batched = True
    assert float(reg()) == pytest.approx(v1, rel=1e-10)


@pytest.mark.parametrize("G", [cyclic(4), dihedral(4)], ids=["C4", "D4"])
def test_orbit_plan_projection_is_the_group_average(G, dtype):
    ri, ro = 2 * G.regular() + G.trivial(), G.regular() + 3 * G.trivial()
    for P in (LinearProjector(ri, ro, route="spatial"), Projector(KernelAction(ri, ro, (3, 3)), route="spatial")):
        assert P.orbit_plan() is not None
        W = torch.randn(*P.action.weight_shape, dtype=torch.float64)
        ref = P.action.act(G.elements(), W).mean(0)  # independent: the average over the group
        assert torch.allclose(P.project(W.to(dtype)).double(), ref, atol=TOL[dtype])


def test_grid_permutations_cached_and_used_by_feature_maps():
    G = cyclic(4)
    a = grid_permutations(G, (5, 5), torch.device("cpu"))
    assert a is grid_permutations(G, (5, 5), torch.device("cpu"))
    assert a.shape == (4, 25)
    x = torch.randn(2, 1, 5, 5)
    for g in range(4):
        assert torch.equal(transform_feature_map(x, g, G.trivial()), torch.rot90(x, g, dims=(-2, -1)))
    assert grid_permutations(cyclic(8), (5, 5), torch.device("cpu")) is None


def test_torch_compile_matches_eager():
    if not hasattr(torch, "compile"):
        pytest.skip("torch.compile is not available")
    from equiproj.nn import RepConv2d

    G = cyclic(4)
    torch.manual_seed(0)
    net = nn.Sequential(RepConv2d(G.trivial(), G.regular(), 3), RepConv2d(G.regular(), G.regular() + G.trivial(), 3))
    reg = ProjectionRegulariser(net, lambda_perp=0.5, lambda_G=0.1, scheme="penalty")
    try:
        compiled = torch.compile(reg, backend="eager", fullgraph=False)
        got = compiled()
    except Exception as err:  # pragma: no cover - depends on the platform's compiler
        pytest.skip(f"torch.compile does not run here: {type(err).__name__}: {err}")
    want = reg()
    assert torch.allclose(got, want, rtol=1e-6)
    g1 = torch.autograd.grad(compiled(), [net[1].weight])[0]
    g2 = torch.autograd.grad(reg(), [net[1].weight])[0]
    assert torch.allclose(g1, g2, rtol=1e-5, atol=1e-7)
    assert copy.deepcopy(reg)() is not None


@pytest.mark.parametrize("scheme", ["proximal", "split-proximal"])
@pytest.mark.parametrize("norm", ["fro", "fro2"])
def test_batched_proximal_step_matches_layer_by_layer(scheme, norm):
    outs = []
    for batched in (True, False):
        net = _mixed(torch.float64)
        reg = ProjectionRegulariser(net, lambda_perp=0.8, lambda_G=0.3, norm=norm, scheme=scheme)
        reg.batched = batched
        params = list(net.parameters())
        opt = torch.optim.SGD([{"params": params[:3], "lr": 0.5}, {"params": params[3:], "lr": 0.05}])
        if scheme == "split-proximal":
            with torch.no_grad():
                for p in params:
                    p.add_(0.2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()),
                                             dtype=p.dtype))
        reg.proximal_step(opt)
        outs.append(([p.detach().clone() for p in net.parameters()], float(reg.penalty())))
    (pa, va), (pb, vb) = outs
    assert va == pytest.approx(vb, rel=1e-10)
    for a, b in zip(pa, pb):
        assert torch.allclose(a, b, atol=1e-12)


def test_mixed_dtypes_fall_back_to_layer_by_layer():
    G = cyclic(4)
    net = nn.Sequential(RepLinear(G.regular(), G.regular()), RepLinear(G.regular(), G.regular()).double())
    reg = ProjectionRegulariser(net, lambda_perp=1.0, scheme="penalty")
    assert reg._plan() is None
    terms = list(reg.terms())
    assert len(terms) == 2 and terms[1][1].dtype == torch.float64


def test_plan_follows_a_change_of_lambda_G():
    """Raising lambda_G from 0 after the first evaluation adds the split layers' P(A) terms."""
    net = _mixed(torch.float64)
    reg = ProjectionRegulariser(net, lambda_perp=0.5, lambda_G=0.0, scheme="split")
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    float(reg())
    reg.lambda_G = 0.4
    got = float(reg())
    reg.batched = False
    want = float(reg())
    assert got == pytest.approx(want, rel=1e-10)
    assert want > float(ProjectionRegulariser(net, lambda_perp=0.5, lambda_G=0.0, scheme="split")()) + 1e-3
