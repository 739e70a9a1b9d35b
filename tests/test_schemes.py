"""Training schemes of the projection penalty: split parametrisation and proximal steps."""

from __future__ import annotations

import math
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from scipy.optimize import minimize
from torch import nn
from torch.nn.utils import parametrize

from equiproj import (ProjectionRegulariser, constrain_, project_,
                      report, split_, unconstrain_)
from equiproj.baselines import make_method
from equiproj.groups import cyclic, so3
from equiproj.nn import RepConv2d, RepLinear
from equiproj.train import StopTraining, TrainConfig, fit

from conftest import TOL

F64 = torch.float64
G = cyclic(4)
R = G.regular()


def c4_net(dtype=F64, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(RepLinear(2 * R, 3 * R), nn.ReLU(), RepLinear(3 * R, G.trivial() + R)).to(dtype)


def so3_layer(dtype=F64, seed=0):
    torch.manual_seed(seed)
    S = so3()
    return nn.Sequential(RepLinear(2 * S.trivial() + S.standard(), S.trivial() + 2 * S.standard() + S.irrep(2))).to(dtype)


def dense(P, W):
    """The dense matrix of ``W -> P(W)`` on flattened weights (an independent reference)."""
    n = W.numel()
    E = torch.eye(n, dtype=W.dtype).reshape(n, *W.shape)
    return P.project(E).reshape(n, n).T


# ------------------------------------------------------------------ split parametrisation


def test_split_layers_are_evaluated_together_inside_cached(dtype):
    """Inside parametrize.cached() every split tensor of a split_ call comes from one batched
    node (orbit-mean layers and the others); values and gradients equal the layer-by-layer path,
    a deep copy has its own group, and a layer that leaves the group makes the rest fall back."""
    import copy

    from equiproj.projection import _batched

    def build():
        torch.manual_seed(3)
        S = so3()
        return nn.Sequential(RepLinear(2 * R, 3 * R), nn.ReLU(), RepLinear(3 * R, 2 * R),
                             RepLinear(2 * S.trivial() + S.standard(), S.trivial() + S.irrep(2)).to(dtype)).to(dtype)

    net = build()
    split_(net)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x1, x2 = torch.randn(4, 8, dtype=dtype), torch.randn(4, 5, dtype=dtype)

    def loss_and_grads(model, cached):
        model.zero_grad()
        ctx = parametrize.cached() if cached else torch.enable_grad()
        with ctx:
            loss = model[:3](x1).pow(2).sum() + model[3](x2).pow(3).sum()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    calls = []
    orig = _batched._SplitFn.apply
    _batched._SplitFn.apply = lambda *a: calls.append(1) or orig(*a)
    try:
        l_alone, g_alone = loss_and_grads(net, cached=False)
        assert not calls
        l_batch, g_batch = loss_and_grads(net, cached=True)
        assert len(calls) == 1  # one node for the 6 split tensors (3 weights, 3 biases)
    finally:
        _batched._SplitFn.apply = orig
    assert torch.allclose(l_batch, l_alone, rtol=TOL[dtype], atol=TOL[dtype])
    for a, b in zip(g_batch, g_alone):
        assert torch.allclose(a, b, rtol=TOL[dtype], atol=TOL[dtype])

    twin = copy.deepcopy(net)  # its own group, over its own layers
    group = twin[0].parametrizations.weight[0].group
    assert group is not net[0].parametrizations.weight[0].group and group.members[0][0] is twin[0]
    with torch.no_grad():
        twin[0].parametrizations.weight.original1.add_(torch.randn_like(twin[0].parametrizations.weight.original1))
    expect = [m.weight.detach().clone() for m in (twin[0], twin[2])]  # alone, outside the context
    with parametrize.cached():  # (torch's own cache is keyed by the original module: one model per context)
        for m, W in zip((twin[0], twin[2]), expect):
            assert torch.allclose(m.weight, W, atol=TOL[dtype])
    unconstrain_(twin[0])  # twin[0] leaves the group: the others are computed alone, correctly
    with parametrize.cached():
        W2 = twin[2].weight
    pl = twin[2].parametrizations.weight
    assert torch.allclose(W2, twin[2].projector.project(pl.original0 - pl.original1) + pl.original1,
                          atol=TOL[dtype])



def test_constrained_layers_are_evaluated_together_inside_cached(dtype):
    """constrain_ groups its tensors like split_: inside parametrize.cached() all of them come from
    one node computing P(V); values and gradients (P g) equal the layer-by-layer path, and a layer
    that leaves the group (unconstrain_) makes the rest fall back."""
    from equiproj.projection import _batched

    torch.manual_seed(4)
    S = so3()
    net = nn.Sequential(RepLinear(2 * R, 3 * R), nn.ReLU(), RepLinear(3 * R, 2 * R),
                        RepLinear(2 * S.trivial() + S.standard(), S.trivial() + S.irrep(2))).to(dtype)
    constrain_(net)
    with torch.no_grad():  # free weights away from the equivariant subspace
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x1, x2 = torch.randn(4, 8, dtype=dtype), torch.randn(4, 5, dtype=dtype)

    def loss_and_grads(cached):
        net.zero_grad()
        with parametrize.cached() if cached else torch.enable_grad():
            loss = net[:3](x1).pow(2).sum() + net[3](x2).pow(3).sum()
            W = [m.weight.detach().clone() for m in (net[0], net[2], net[3])]
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in net.parameters()], W

    calls = []
    orig = _batched._ProjectFn.apply
    _batched._ProjectFn.apply = lambda *a: calls.append(1) or orig(*a)
    try:
        l_alone, g_alone, W_alone = loss_and_grads(cached=False)
        assert not calls
        l_batch, g_batch, W_batch = loss_and_grads(cached=True)
        assert len(calls) == 1  # one node for the 6 constrained tensors
    finally:
        _batched._ProjectFn.apply = orig
    assert torch.allclose(l_batch, l_alone, rtol=TOL[dtype], atol=TOL[dtype])
    for a, b in zip(g_batch, g_alone):
        assert torch.allclose(a, b, rtol=TOL[dtype], atol=TOL[dtype])
    for m, W in zip((net[0], net[2], net[3]), W_batch):  # the weights are P(V), exactly equivariant
        V = m.parametrizations.weight.original
        assert torch.allclose(W, m.projector.project(V), atol=TOL[dtype])
        assert torch.allclose(m.projector.project(W), W, atol=TOL[dtype])
    unconstrain_(net[0])
    with parametrize.cached():
        W2 = net[2].weight
    assert torch.allclose(W2, net[2].projector.project(net[2].parametrizations.weight.original), atol=TOL[dtype])


@pytest.mark.parametrize("make", [c4_net, so3_layer], ids=["C4", "SO3"])
def test_split_parts_gradients_and_start(make, dtype):
    net = make(dtype)
    before = [m.weight.detach().clone() for m in net if isinstance(m, RepLinear)]
    x = torch.randn(5, net[0].in_features, dtype=dtype)
    y0 = net(x).detach()
    split_(net)
    layers = [m for m in net if isinstance(m, RepLinear)]
    # it starts from the layer's weight: the function is unchanged
    assert torch.allclose(net(x), y0, atol=TOL[dtype])
    for m, W0 in zip(layers, before):
        assert torch.allclose(m.weight, W0, atol=TOL[dtype])
    with torch.no_grad():  # move A and B apart
        for m in layers:
            for p in (m.parametrizations.weight.original0, m.parametrizations.weight.original1):
                p.add_(torch.randn_like(p))
    with parametrize.cached():  # net(x) uses these very tensors
        Ws = [m.weight for m in layers]
        for W in Ws:
            W.retain_grad()
        loss = net(x).pow(2).sum()
    loss.backward()
    for m, W in zip(layers, Ws):
        P = m.projector
        A, B = m.parametrizations.weight.original0, m.parametrizations.weight.original1
        # P(W) = P(A) and W - P(W) = (I - P) B exactly
        assert torch.allclose(P.project(W), P.project(A), atol=TOL[dtype] * 10)
        assert torch.allclose(W - P.project(W), B - P.project(B), atol=TOL[dtype] * 10)
        # the gradients are P g and (I - P) g
        g = W.grad
        assert torch.allclose(A.grad, P.project(g), atol=TOL[dtype] * 10)
        assert torch.allclose(B.grad, g - P.project(g), atol=TOL[dtype] * 10)


def test_split_penalty_equals_the_penalty_of_the_weight():
    net = c4_net()
    ref = ProjectionRegulariser(net, lambda_perp=0.3, lambda_G=0.1, scheme="penalty")().item()
    reg = ProjectionRegulariser(net, lambda_perp=0.3, lambda_G=0.1, scheme="split")
    assert reg().item() == pytest.approx(ref, rel=1e-12)
    # ... also after A and B move apart
    with torch.no_grad():
        for m in (net[0], net[2]):
            m.parametrizations.weight.original1.add_(1.0)
    plain = c4_net()
    with torch.no_grad():
        for a, b in zip((plain[0], plain[2]), (net[0], net[2])):
            a.weight.copy_(b.weight)
            a.bias.copy_(b.bias)
    assert reg().item() == pytest.approx(ProjectionRegulariser(plain, 0.3, 0.1, scheme="penalty")().item(), rel=1e-12)
    rows, rows_ref = reg.report(), report(plain)
    for r, q in zip(rows, rows_ref):
        assert r.defect_norm == pytest.approx(q.defect_norm, rel=1e-10)
        assert r.equivariant_norm == pytest.approx(q.equivariant_norm, rel=1e-10)


def test_split_project_constrain_and_unconstrain():
    net = c4_net()
    ProjectionRegulariser(net, lambda_perp=1.0, scheme="split")
    project_(net)
    assert all(r.defect_norm < 1e-12 for r in report(net))
    with torch.no_grad():
        net[0].parametrizations.weight.original1.add_(torch.randn(12, 8, dtype=F64))
    assert report(net)[0].defect_norm > 0.1
    net[0].weight = net[0].projector.project(net[0].weight)  # assignment goes through right_inverse
    assert report(net)[0].defect_norm < 1e-12
    x = torch.randn(4, 8, dtype=F64)
    y = net(x)
    unconstrain_(net)
    assert not parametrize.is_parametrized(net[0]) and torch.allclose(net(x), y)
    # constrain_ on top of a split layer keeps it strict; split_ refuses a constrained layer
    net = c4_net()
    split_(net)
    constrain_(net)
    with torch.no_grad():
        net[0].parametrizations.weight.original1.add_(1.0)
    assert report(net)[0].defect_norm < 1e-12
    with pytest.raises(ValueError, match="already parametrised"):
        split_(constrain_(c4_net()))


def test_split_state_dict_round_trip_and_make_method():
    net = c4_net()
    m = make_method("projection", net, lambda_perp=0.1)  # default scheme, equivariant start
    assert m.regulariser.scheme == "split" and report(net)[0].defect_norm < 1e-12
    keys = set(net.state_dict())
    assert "0.parametrizations.weight.original0" in keys and "0.parametrizations.weight.original1" in keys
    other = c4_net(seed=3)
    split_(other)
    other.load_state_dict(net.state_dict())
    x = torch.randn(3, 8, dtype=F64)
    assert torch.equal(other(x), net(x))
    with pytest.raises(ValueError, match="unknown scheme 'prox'"):
        ProjectionRegulariser(c4_net(), 1.0, scheme="prox")


# ------------------------------------------------------------------ the proximal map


def _objective(V, W, P, t, lp, lg, sq):
    PV = P @ V
    perp, eq = np.linalg.norm(V - PV), np.linalg.norm(PV)
    f = (lambda n: n * n) if sq else (lambda n: n)
    return 0.5 / t * np.sum((V - W) ** 2) + lp * f(perp) + lg * f(eq)


@pytest.mark.parametrize("norm", ["fro", "fro2"])
@pytest.mark.parametrize("lp, lg", [(0.3, 0.0), (0.3, 0.2), (50.0, 0.1), (0.0, 0.4)])
def test_proximal_step_is_the_exact_minimiser(norm, lp, lg):
    """Against a dense convex solve (BFGS on the objective with the dense projector), float64."""
    torch.manual_seed(1)
    layer = nn.Sequential(RepLinear(R + G.trivial(), R, bias=False)).double()
    P = layer[0].projector
    W = layer[0].weight.detach().clone()
    Pd = dense(P, W).numpy()
    t = 0.5
    reg = ProjectionRegulariser(layer, lambda_perp=lp, lambda_G=lg, norm=norm, scheme="proximal")
    reg.proximal_step(lr=t)
    got = layer[0].weight.detach().flatten().numpy()
    w = W.flatten().numpy()
    best = None
    for start in (w, Pd @ w, np.zeros_like(w)):
        r = minimize(_objective, start, args=(w, Pd, t, lp, lg, norm == "fro2"), method="BFGS",
                     options={"gtol": 1e-12, "maxiter": 5000})
        best = r if best is None or r.fun < best.fun else best
    f_got = _objective(got, w, Pd, t, lp, lg, norm == "fro2")
    assert f_got <= best.fun + 1e-9
    if best.success:  # BFGS may stall at the kink of the norm; where it converges, the points agree
        assert np.allclose(got, best.x, atol=1e-4)
    # the objective is (1/t)-strongly convex: its minimiser x satisfies f(V) >= f(x) + |V - x|^2 / (2t)
    rng = np.random.default_rng(0)
    for scale in (1e-4, 1e-2, 1.0):
        for _ in range(50):
            V = got + scale * rng.standard_normal(got.shape)
            gap = _objective(V, w, Pd, t, lp, lg, norm == "fro2") - f_got
            assert gap >= np.sum((V - got) ** 2) / (2 * t) - 1e-10
    # the value stored for logging is the penalty at the new weights
    assert reg.penalty().item() == pytest.approx(
        ProjectionRegulariser(layer, lp, lg, norm=norm, scheme="penalty")().item(), rel=1e-9, abs=1e-12)


def test_proximal_step_at_zero_lambda_and_with_lambda_G_zero():
    net = c4_net()
    W = [m.weight.detach().clone() for m in (net[0], net[2])]
    reg = ProjectionRegulariser(net, lambda_perp=0.0, scheme="proximal")
    reg.proximal_step(lr=1.0)
    assert all(torch.equal(m.weight, w) for m, w in zip((net[0], net[2]), W))  # idempotent at lambda = 0
    reg = ProjectionRegulariser(net, lambda_perp=0.7, scheme="proximal")
    reg.proximal_step(lr=0.1)
    for m, w in zip((net[0], net[2]), W):
        P = m.projector
        assert torch.allclose(P.project(m.weight), P.project(w), atol=1e-12)   # P(W) unchanged
        assert (m.weight - P.project(m.weight)).norm() < (w - P.project(w)).norm()


def test_proximal_uses_each_groups_current_lr_and_split_proximal_acts_on_B():
    net = c4_net()
    reg = ProjectionRegulariser(net, lambda_perp=0.5, scheme="proximal", include_bias=False)
    opt = torch.optim.SGD([{"params": net[0].parameters(), "lr": 0.1}, {"params": net[2].parameters(), "lr": 0.02}],
                          lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    reg.attach(opt)
    x = torch.randn(16, 8, dtype=F64)
    for step in range(2):
        opt.zero_grad()
        net(x).pow(2).mean().backward()
        # the expected shrink: the SGD step, then the prox with the group's lr at this step
        with torch.no_grad():
            expect = []
            for m, g in zip((net[0], net[2]), opt.param_groups):
                W = m.weight - g["lr"] * m.weight.grad
                n = (W - m.projector.project(W)).norm().item()
                expect.append(max(0.0, n - g["lr"] * 0.5))
        opt.step()
        sched.step()
        after = [(m.weight - m.projector.project(m.weight)).norm().item() for m in (net[0], net[2])]
        assert after == pytest.approx(expect, rel=1e-9), step
    # split-proximal: the prox shrinks (I - P) B and leaves A alone when lambda_G = 0
    net = c4_net()
    reg = ProjectionRegulariser(net, lambda_perp=0.5, scheme="split-proximal")
    A = net[0].parametrizations.weight.original0.detach().clone()
    reg.proximal_step(lr=0.1)
    assert torch.equal(net[0].parametrizations.weight.original0, A)
    r = report(net)[0]
    fresh = report(c4_net())[0]
    assert r.defect_norm == pytest.approx(max(0.0, fresh.defect_norm - 0.05), rel=1e-9)


def test_proximal_skipped_when_gradscaler_skips_the_step():
    net = c4_net(dtype=torch.float32)
    reg = ProjectionRegulariser(net, lambda_perp=100.0, scheme="proximal")
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    reg.attach(opt)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    x = torch.randn(4, 8)
    W = net[0].weight.detach().clone()
    loss = net(x).sum() * float("inf")        # non-finite gradients: the scaler skips the step
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    assert torch.equal(net[0].weight, W) and report(net)[0].defect_norm > 0.1
    opt.zero_grad()
    scaler.scale(net(x).pow(2).mean()).backward()
    scaler.step(opt)                          # a real step: the prox removes the defect (t * lambda large)
    assert report(net)[0].defect_norm < 1e-5


def test_other_norms_fall_back_with_a_warning():
    with pytest.warns(UserWarning, match="trained with scheme 'penalty' instead"):
        reg = ProjectionRegulariser(c4_net(), 1.0, norm="spectral", scheme="proximal")
    assert reg.scheme == "penalty" and reg().requires_grad
    with pytest.warns(UserWarning, match="trained with scheme 'split' instead"):
        assert ProjectionRegulariser(c4_net(), 1.0, norm="nuclear", scheme="split-proximal").scheme == "split"


def test_proximal_on_a_convolution():
    torch.manual_seed(0)
    net = nn.Sequential(RepConv2d(G.trivial(), 2 * R, 3, padding=1)).double()
    reg = ProjectionRegulariser(net, lambda_perp=0.2, scheme="proximal")
    n0 = report(net)[0].defect_norm
    reg.proximal_step(lr=1.0)
    assert report(net)[0].defect_norm == pytest.approx(max(0.0, n0 - 0.2), rel=1e-9)


# ------------------------------------------------------------------ with fit: resume and DDP


def _data(n=48, dtype=F64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g, dtype=dtype)
    y = torch.cat([x[:, :1] * 0, x[:, :4].roll(1, 1)], 1) + 0.3 * x[:, 4:5]
    return x, y


def _mse(m, b):
    return nn.functional.mse_loss(m(b[0]), b[1])


@pytest.mark.parametrize("scheme", ["split", "proximal", "split-proximal"])
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_resumed_run_equals_uninterrupted_run(tmp_path, scheme, optimizer):
    x, y = _data()
    cfg = TrainConfig(steps=12, batch_size=16, lr=0.05, optimizer=optimizer, schedule="cosine", log_every=3,
                      checkpoint_every=4, device="cpu")

    def method(seed):
        return make_method("projection", c4_net(seed=seed), lambda_perp=0.5, lambda_G=0.01, scheme=scheme)

    a = method(0)
    res_a = fit(a.model, (x, y), cfg, _mse, tmp_path / "a", regulariser=a, progress=False)

    def stop(step, state):
        if step == 6:
            raise StopTraining

    b = method(0)
    fit(b.model, (x, y), cfg, _mse, tmp_path / "b", regulariser=b, callbacks=[stop], progress=False)
    c = method(7)  # other starting weights: the checkpoint must restore them
    res_c = fit(c.model, (x, y), cfg, _mse, tmp_path / "b", regulariser=c, progress=False)
    sa, sc = a.model.state_dict(), c.model.state_dict()
    assert all(torch.equal(sa[k], sc[k]) for k in sa)
    assert res_c["history"] == res_a["history"] and res_c["resumes"] == 1
    assert res_a["final"]["train"]["penalty"] > 0


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, tmp):
    import os

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    x, y = _data(n=64)
    m = make_method("projection", c4_net(seed=rank), lambda_perp=0.5, scheme="proximal")
    cfg = TrainConfig(steps=6, batch_size=8, lr=0.05, log_every=2, checkpoint_every=0, device="cpu")
    res = fit(m.model, (x, y), cfg, _mse, None, regulariser=m, progress=False)
    torch.save({"state": m.model.state_dict(), "history": res["history"]}, Path(tmp) / f"rank{rank}.pt")


def test_proximal_scheme_is_identical_on_two_gloo_ranks(tmp_path):
    ctx = mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=False)
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the DDP workers did not finish within 120 s")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    assert all(torch.equal(r0["state"][k], r1["state"][k]) for k in r0["state"])
    assert r0["history"] == r1["history"]
    assert math.isfinite(r0["history"]["train"][-1]["penalty"])


def test_perp_lr_gives_B_its_own_learning_rate(tmp_path):
    x, y = _data()
    m = make_method("projection", c4_net(), lambda_perp=0.1, perp_lr=0.1)
    B = {id(t) for t in m.regulariser.perp_parameters()}
    assert len(B) == 4  # weight and bias of two layers
    seen = []

    def look(step, state):
        seen.append([(g["lr"], sum(id(p) in B for p in g["params"]), len(g["params"]))
                     for g in state.optimizer.param_groups])

    cfg = TrainConfig(steps=2, batch_size=16, lr=0.05, schedule="cosine", device="cpu")
    fit(m.model, (x, y), cfg, _mse, None, regulariser=m, callbacks=[look], progress=False)
    (lr_a, nb_a, n_a), (lr_b, nb_b, n_b) = seen[0]
    assert nb_a == 0 and nb_b == n_b == 4 and lr_b == pytest.approx(0.1 * lr_a)
    assert seen[1][1][0] == pytest.approx(0.1 * seen[1][0][0])  # the schedule keeps the ratio
    assert ProjectionRegulariser(c4_net(), 0.1, scheme="penalty").param_groups(lr=0.3)[0]["lr"] == 0.3
    with pytest.raises(ValueError, match="perp_lr .* needs a split scheme"):
        ProjectionRegulariser(c4_net(), 0.1, scheme="proximal", perp_lr=0.1)
    with pytest.raises(ValueError, match="perp_lr must be a finite number > 0"):
        ProjectionRegulariser(c4_net(), 0.1, perp_lr=0)
