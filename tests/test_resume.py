"""Exact resume for every registered method and every penalty norm: an interrupted and resumed
``fit`` ends with bit-identical weights to an uninterrupted one (penalty state, such as the
power-iteration vectors of the spectral norm and the generators of the element samplers, is
checkpointed with the run)."""

import pytest
import torch
from torch import nn

from equiproj.baselines import available_methods, make_method, relaxed_cnn
from equiproj.groups import cyclic
from equiproj.norms import NORM_NAMES
from equiproj.nn import RepLinear
from equiproj.train import StopTraining, TrainConfig, fit

G = cyclic(4)
R = G.regular()
F64 = torch.float64


def _net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(RepLinear(2 * R, 3 * R), nn.ReLU(), RepLinear(3 * R, G.trivial() + R)).to(F64)


def _vectors(n=48):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g, dtype=F64)
    y = torch.cat([x[:, :1] * 0, x[:, :4].roll(1, 1)], 1) + 0.3 * x[:, 4:5]
    return x, y


def _images(n=12):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 8, 8, generator=g, dtype=F64)
    return x, x.flip(-1) + 0.1 * torch.randn(x.shape, generator=g, dtype=F64)


def _mse(m, b):
    return nn.functional.mse_loss(m(b[0]), b[1])


#: method -> (options, model factory, data)
def _case(name):
    opts = {"act_in": 2 * R, "act_out": G.trivial() + R}
    if name == "relaxed":
        def model(seed):
            torch.manual_seed(seed)
            return relaxed_cnn(1, 1, width=2, depth=3, N=4, num_banks=2).to(F64)
        return {}, model, _images()
    if name in ("sample-output", "eqreg"):
        return dict(opts, k=2), _net, _vectors()
    if name == "weight-sample":
        return {"k": 2}, _net, _vectors()
    return {}, _net, _vectors()


CASES = [(m, {}) for m in available_methods()] + [
    ("projection", {"norm": n, "scheme": "penalty"}) for n in NORM_NAMES if n != "fro"] + [
    ("projection", {"norm": "spectral", "scheme": "split"})]


@pytest.mark.parametrize("name,extra", CASES, ids=[f"{m}-{'-'.join(map(str, e.values())) or 'default'}" for m, e in CASES])
def test_resume_is_bit_identical(tmp_path, name, extra):
    opts, model, data = _case(name)
    opts = dict(opts, **extra)
    cfg = TrainConfig(steps=8, batch_size=12, lr=0.03, optimizer="adam", log_every=2, checkpoint_every=3,
                      device="cpu")

    def method(seed):
        return make_method(name, model(seed), **opts)

    a = method(0)
    res_a = fit(a.model, data, cfg, _mse, tmp_path / "a", regulariser=a, progress=False)

    def stop(step, state):
        if step == 5:
            raise StopTraining

    b = method(0)
    fit(b.model, data, cfg, _mse, tmp_path / "b", regulariser=b, callbacks=[stop], progress=False)
    c = method(3)  # other starting weights (and a fresh penalty state): the checkpoint restores them
    res_c = fit(c.model, data, cfg, _mse, tmp_path / "b", regulariser=c, progress=False)
    sa, sc = a.model.state_dict(), c.model.state_dict()
    assert sa.keys() == sc.keys()
    diff = {k: float((sa[k] - sc[k]).abs().max()) for k in sa if not torch.equal(sa[k], sc[k])}
    assert not diff, diff
    assert res_c["resumes"] == 1 and res_c["history"] == res_a["history"]


@pytest.mark.parametrize("name", available_methods())
def test_every_method_declares_its_weight_option_and_rejects_typos(name):
    from equiproj.baselines import METHODS, method_info

    info = method_info(name)
    assert info["needs_data"] == bool(METHODS[name].needs_batch)
    if info["weight_option"] is not None:
        assert info["weight_option"] in info["options"]
    else:
        assert name in ("plain", "strict")
    opts, model, _ = _case(name)
    with pytest.raises(TypeError, match="unknown option.*lambda_prep"):
        make_method(name, model(0), lambda_prep=1.0, **opts)
