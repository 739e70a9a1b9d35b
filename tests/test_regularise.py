import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from equiproj import (LinearProjector, ProjectionRegulariser, constrain_, declare, format_report, unconstrain_)
from equiproj.groups import cyclic, o3, so3
from equiproj.metrics import equivariance_error
from equiproj.nn import GatedNonlinearity, PointwiseNonlinearity, RepLinear

F64 = torch.float64


def c4_mlp(dtype=torch.float32, seed=0, equivariant=False):
    torch.manual_seed(seed)
    G = cyclic(4)
    r_in, r_h = 2 * G.regular(), 4 * G.regular()
    return nn.Sequential(
        RepLinear(r_in, r_h, equivariant=equivariant), PointwiseNonlinearity(r_h),
        RepLinear(r_h, r_h, equivariant=equivariant), PointwiseNonlinearity(r_h),
        RepLinear(r_h, G.regular(), equivariant=equivariant),
    ).to(dtype)


def test_penalty_matches_manual_computation():
    model = c4_mlp(F64)
    reg = ProjectionRegulariser(model, lambda_perp=0.3, lambda_G=0.05)
    expected = 0.0
    for layer in model:
        if isinstance(layer, RepLinear):
            P = LinearProjector(layer.in_rep, layer.out_rep, route="basis")  # an independent route
            W, b = layer.weight, layer.bias
            PW, Pb = P.project(W), P.project_bias(b)
            perp = torch.cat([W - PW, (b - Pb)[:, None]], 1)
            eq = torch.cat([PW, Pb[:, None]], 1)
            expected = expected + 0.3 * torch.linalg.norm(perp) + 0.05 * torch.linalg.norm(eq)
    assert torch.allclose(reg(), expected, atol=1e-12)


def test_include_bias_false_ignores_bias():
    model = c4_mlp(F64)
    reg = ProjectionRegulariser(model, lambda_perp=1.0, include_bias=False)
    before = reg().item()
    with torch.no_grad():
        model[0].bias.add_(torch.arange(16, dtype=F64))
    assert reg().item() == pytest.approx(before)


def test_report_and_project():
    model = c4_mlp(F64)
    reg = ProjectionRegulariser(model, lambda_perp=1.0)
    rows = reg.report()
    assert [r.name for r in rows] == ["0", "2", "4"]
    for r in rows:
        assert r.weight_norm ** 2 == pytest.approx(r.equivariant_norm ** 2 + r.defect_norm ** 2)
        assert 0.5 < r.relative_defect < 1.0  # a random init is mostly not equivariant
        assert r.equivariant_dim < r.total_dim
    assert "relative defect" in format_report(rows)
    x = torch.randn(32, 8, dtype=F64)
    assert equivariance_error(model, x, model[0].in_rep, model[-1].out_rep).max > 0.1
    reg.project_()
    assert reg().item() < 1e-12
    assert all(r.defect_norm < 1e-12 for r in reg.report())
    err = equivariance_error(model, x, model[0].in_rep, model[-1].out_rep)
    assert err.max < 1e-12


def test_lambda_G_gradient_lies_in_the_equivariant_subspace():
    model = c4_mlp(F64)
    reg = ProjectionRegulariser(model, lambda_perp=0.0, lambda_G=1.0, scheme="penalty")
    reg().backward()
    grad = model[2].weight.grad
    P = model[2].projector
    assert torch.allclose(P.project(grad), grad, atol=1e-12)
    assert grad.abs().max() > 0


@pytest.mark.parametrize("scheme", ["penalty", "split"])
@pytest.mark.parametrize("norm", ["fro2", "fro"])
def test_training_on_the_penalty_alone_drives_the_defect_to_zero(norm, scheme):
    model = c4_mlp(F64)
    reg = ProjectionRegulariser(model, lambda_perp=1.0, norm=norm, scheme=scheme)
    eq_before = [model[i].projector.project(model[i].weight).detach().clone() for i in (0, 2, 4)]
    start = reg().item()
    if norm == "fro2":
        opt = torch.optim.SGD(model.parameters(), lr=0.2)
        steps, sched = 150, None
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        steps = 400
        sched = torch.optim.lr_scheduler.ExponentialLR(opt, 0.98)
    for _ in range(steps):
        opt.zero_grad()
        reg().backward()
        opt.step()
        if sched:
            sched.step()
    end = reg().item()
    assert end < 1e-8 * start if norm == "fro2" else end < 1e-3 * start
    # the penalty's gradient is orthogonal to the equivariant part, which is untouched
    for i, Pw in zip((0, 2, 4), eq_before):
        assert torch.allclose(model[i].projector.project(model[i].weight), Pw, atol=1e-10)


def _synthetic_task(seed=0, n=512, breaking=0.3):
    """C4-regular regression with a weakly symmetry-breaking teacher."""
    g = torch.Generator().manual_seed(seed)
    teacher = c4_mlp(F64, seed=100)
    with torch.no_grad():
        for layer in teacher:
            if isinstance(layer, RepLinear):
                W = layer.weight
                PW = layer.projector.project(W)
                W.copy_(PW + breaking * (W - PW))
    x = torch.randn(n, 8, dtype=F64, generator=g)
    with torch.no_grad():
        y = teacher(x)
    return x, y


@pytest.mark.parametrize("scheme", ["penalty", "split"])
def test_defect_after_fixed_budget_falls_monotonically_with_lambda_perp(scheme):
    x, y = _synthetic_task()
    defects = []
    for lam in [0.0, 1e-3, 1e-2, 1e-1, 1.0]:
        model = c4_mlp(F64, seed=1)
        reg = ProjectionRegulariser(model, lambda_perp=lam, scheme=scheme)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for step in range(250):
            opt.zero_grad()
            with parametrize.cached():  # the split weights once per step, as fit does
                loss = ((model(x) - y) ** 2).mean() + reg()
            loss.backward()
            opt.step()
        defects.append(sum(r.defect_norm for r in reg.report()))
    assert all(b < a for a, b in zip(defects, defects[1:])), defects
    assert defects[-1] < 0.1 * defects[0]


def test_hard_constraint_is_equivariant_and_trainable():
    model = c4_mlp(torch.float32, equivariant=True)
    G = cyclic(4)
    x = torch.randn(16, 8)
    assert equivariance_error(model, x, 2 * G.regular(), G.regular()).max < 1e-5
    raw = model[0].parametrizations.weight.original.detach().clone()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(5):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    assert not torch.equal(raw, model[0].parametrizations.weight.original)
    assert equivariance_error(model, x, 2 * G.regular(), G.regular()).max < 1e-5
    # state_dict round trip and deepcopy keep the constraint
    clone = c4_mlp(torch.float32, seed=5, equivariant=True)
    clone.load_state_dict(model.state_dict())
    assert torch.allclose(clone(x), model(x))
    assert torch.allclose(copy.deepcopy(model)(x), model(x))
    unconstrain_(model)
    assert ProjectionRegulariser(model, 1.0)() < 1e-5


def test_constrain_on_an_existing_model_with_declare():
    G = so3()
    torch.manual_seed(0)
    gate = GatedNonlinearity(2 * G.standard(), n_scalars=4)
    model = nn.Sequential(nn.Linear(6, gate.in_rep.dim), gate, nn.Linear(gate.out_rep.dim, 3))
    declare(model[0], 2 * G.standard(), gate.in_rep)
    declare(model[2], gate.out_rep, G.standard())
    x = torch.randn(10, 6)
    assert equivariance_error(model, x, 2 * G.standard(), G.standard(),
                              generator=torch.Generator().manual_seed(0)).max > 0.05
    constrain_(model)
    err = equivariance_error(model, x, 2 * G.standard(), G.standard(), generator=torch.Generator().manual_seed(0))
    assert err.max < 1e-5


def test_float32_and_float64_models():
    for dtype in (torch.float32, torch.float64):
        model = c4_mlp(dtype)
        reg = ProjectionRegulariser(model, lambda_perp=1.0, norm="spectral")
        p = reg()
        assert p.dtype == dtype and p.requires_grad
        p.backward()


# ------------------------------------------------------------------ errors


def test_declare_checks_dimensions_and_names_the_layer():
    G = cyclic(4)
    model = nn.Sequential(nn.Linear(16, 8))
    with pytest.raises(ValueError, match=r"in_rep dimension 12 does not match in_features 16 of layer 'enc'"):
        declare(model[0], 3 * G.regular(), 2 * G.regular(), name="enc")
    with pytest.raises(ValueError, match=r"out_rep dimension 4 does not match out_features 8"):
        declare(model[0], 4 * G.regular(), G.regular())
    with pytest.raises(TypeError, match="not supported"):
        declare(nn.LayerNorm(4), G.regular(), G.regular())


def test_regulariser_errors():
    with pytest.raises(ValueError, match="no declared layers"):
        ProjectionRegulariser(nn.Linear(3, 3), lambda_perp=1.0)
    with pytest.raises(ValueError, match="lambda_perp must be a finite number >= 0"):
        ProjectionRegulariser(c4_mlp(), lambda_perp=-1.0)
    with pytest.raises(ValueError, match="unknown norm"):
        ProjectionRegulariser(c4_mlp(), lambda_perp=1.0, norm="hilbert")


def test_layer_shape_mismatch_in_forward_of_projector():
    layer = RepLinear(o3().standard(), o3().standard())
    with pytest.raises(ValueError, match="expected"):
        layer.projector.project(torch.zeros(4, 3))
