"""Saving and loading constrained models, both ways (docs/regularisation.md, "Saving and loading")."""

import io

import pytest
import torch
from torch import nn

from equiproj import ProjectionRegulariser, constrain_, project_, report, unconstrain_
from equiproj.groups import cyclic
from equiproj.nn import RepLinear
from equiproj.testing import assert_equivariant

G = cyclic(4)
R = G.regular()


def _arch(declared=True, seed=0):
    torch.manual_seed(seed)
    if declared:
        return nn.Sequential(RepLinear(2 * R, 3 * R), nn.ReLU(), RepLinear(3 * R, R)).double()
    return nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 4)).double()


def _roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_unconstrain_then_save_loads_into_a_plain_model():
    model = constrain_(_arch())
    with pytest.raises(RuntimeError, match="state_dict"):
        torch.save(model, io.BytesIO())  # torch refuses to pickle parametrised modules
    x = torch.randn(5, 8, dtype=torch.float64)
    y = model(x)
    unconstrain_(model)
    state = _roundtrip(model.state_dict())
    assert sorted(state) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    plain = _arch(declared=False, seed=1)
    plain.load_state_dict(state)  # strict: the keys of a plain torch model
    assert torch.allclose(plain(x), y, atol=1e-12)
    assert_equivariant(plain, x, 2 * R, R)


def test_constrained_state_dict_loads_into_a_constrained_model():
    model = constrain_(_arch())
    state = _roundtrip(model.state_dict())
    assert all(".parametrizations." in k for k in state)
    other = constrain_(_arch(seed=5))
    other.load_state_dict(state)
    x = torch.randn(5, 8, dtype=torch.float64)
    assert torch.allclose(other(x), model(x), atol=1e-12)


def test_plain_weights_into_a_constrained_model_are_projected():
    free = _arch(seed=2)  # not equivariant
    state = _roundtrip(free.state_dict())
    model = _arch(seed=3)
    model.load_state_dict(state)  # load first, then constrain: constrain_ projects
    constrain_(model)
    x = torch.randn(5, 8, dtype=torch.float64)
    assert_equivariant(model, x, 2 * R, R)
    ref = project_(_arch(seed=2))
    assert torch.allclose(model(x), ref(x), atol=1e-12)
    # assigning a weight to a constrained layer stores its projection (right_inverse)
    W = torch.randn(12, 8, dtype=torch.float64)
    model[0].weight = W
    assert torch.allclose(model[0].weight, model[0].projector.project(W), atol=1e-12)
    assert report(model)[0].relative_defect < 1e-12


def test_split_model_saves_merged_weights_after_unconstrain():
    model = _arch()
    reg = ProjectionRegulariser(model, lambda_perp=0.1)  # the default split scheme parametrises
    x = torch.randn(5, 8, dtype=torch.float64)
    y = model(x)
    assert any("original1" in k for k in model.state_dict())
    unconstrain_(model)
    plain = _arch(declared=False)
    plain.load_state_dict(_roundtrip(model.state_dict()))
    assert torch.allclose(plain(x), y, atol=1e-12)
    assert reg.state_dict()["scheme"] == "split"


def test_eval_cache_projects_once_and_follows_updates():
    model = constrain_(_arch())
    layer = model[0]
    calls = {"n": 0}
    P = layer.projector
    orig = P.project

    def counting(W):
        calls["n"] += 1
        return orig(W)

    P.project = counting
    try:
        x = torch.randn(3, 8, dtype=torch.float64)
        model.eval()
        with torch.no_grad():
            a = model(x)
            b = model(x)
        assert calls["n"] == 1 and torch.equal(a, b)
        with torch.no_grad():
            layer.parametrizations.weight.original.add_(1.0)  # the cache follows the stored weight
            c = model(x)
        assert calls["n"] == 2 and not torch.allclose(a, c)
        model.train()
        model(x)
        model(x)
        assert calls["n"] == 4  # no cache in training
    finally:
        P.project = orig
