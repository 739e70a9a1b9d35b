"""The 'smoke' experiment: relaxed layers' projections against the projector of their kernels,
strict models C4-equivariant end to end, lambda controls the defect, the command line."""

import csv
import json
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("phi")

from equiproj.actions import KernelAction, feature_map_action  # noqa: E402
from equiproj.baselines import (RelaxedGroupConv2d, RelaxedLiftingConv2d, RelaxedSteerableConv2d,  # noqa: E402
                                dense_projector, make_method)
from equiproj.cli import main  # noqa: E402
from equiproj.experiments import RunConfig, report, run  # noqa: E402
from equiproj.experiments.smoke import build_net, rollout, smoke_windows  # noqa: E402
from equiproj.groups import cyclic  # noqa: E402
from equiproj.metrics import equivariance_error  # noqa: E402
from equiproj.nn import RepConv2d  # noqa: E402

F64 = torch.float64
TOL = {torch.float64: 1e-10, torch.float32: 1e-4}
G = cyclic(4)
V = G.standard()


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("EQUIPROJ_CACHE", str(tmp_path_factory.getbasetemp() / "smoke-data-cache"))


def _relaxed_layers(dtype):
    torch.manual_seed(1)
    layers = [RelaxedLiftingConv2d(6, 2, 3, N=4, num_banks=3, padding=1, in_rep=3 * V, dtype=dtype),
              RelaxedLiftingConv2d(2, 3, 3, N=4, num_banks=2, padding=1, dtype=dtype),
              RelaxedGroupConv2d(2, 3, 3, N=4, num_banks=3, padding=1, dtype=dtype),
              RelaxedSteerableConv2d(2 * V, 2 * G.regular(), 3, padding=1, dtype=dtype),
              RelaxedSteerableConv2d(2 * G.regular(), V, 5, padding=2, dtype=dtype)]
    with torch.no_grad():
        for m in layers:
            m.relaxed_weights.add_(torch.randn_like(m.relaxed_weights))
    return layers


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["float64", "float32"])
def test_projection_of_relaxed_layers_is_the_projector_of_their_kernel(dtype):
    for layer in _relaxed_layers(dtype):
        name = type(layer).__name__
        i, o = layer.kernel_reps()
        K = layer.kernel().detach()
        # the projector of an equivalent RepConv2d, and a dense Reynolds-operator oracle in float64
        ref = RepConv2d(i, o, layer.kernel_size, dtype=dtype).projector.project(K)
        A = KernelAction(i, o, (layer.kernel_size, layer.kernel_size))
        M = dense_projector(A)
        dense = A.from_matrix((M @ A.to_matrix(K.to(F64)).reshape(-1)).reshape(A.matrix_shape))
        assert torch.allclose(ref.to(F64), dense, atol=TOL[dtype] * 10), name
        d_ref = float(torch.linalg.vector_norm(K - ref))
        assert d_ref > 1e-2, name                           # the relaxed weights are not equivariant
        assert abs(float(layer.projection_defect().detach()) - d_ref) < TOL[dtype] * max(1.0, d_ref) * 10, name
        if not isinstance(layer, RelaxedSteerableConv2d):  # closed form: P replaces w_l(h) by its mean over h
            with torch.no_grad():
                w = layer.relaxed_weights.clone()
                layer.relaxed_weights.copy_(w.mean(1, keepdim=True).expand_as(w))
                assert torch.allclose(layer.kernel(), ref, atol=TOL[dtype]), name
                assert float(layer.projection_defect().detach()) < math.sqrt(TOL[dtype]), name
                layer.relaxed_weights.copy_(w)
        # the penalty is differentiable and moves only the relaxed weights' non-equivariant part
        layer.zero_grad()
        layer.projection_defect().backward()
        assert float(layer.relaxed_weights.grad.abs().sum()) > 0, name


def test_steerable_basis_is_orthonormal_and_equivariant():
    conv = RelaxedSteerableConv2d(V, G.regular(), 3, padding=1, equal_weights=True, dtype=F64)
    Q = conv.basis.reshape(conv.basis.shape[0], -1)
    assert torch.allclose(Q @ Q.T, torch.eye(Q.shape[0], dtype=F64), atol=1e-12)
    P = RepConv2d(V, G.regular(), 3, dtype=F64).projector
    assert Q.shape[0] == P.dim == 18                      # the whole equivariant space, no more
    assert torch.allclose(P.project(conv.basis), conv.basis, atol=1e-12)
    with pytest.raises(ValueError, match="one field type"):
        RelaxedSteerableConv2d(V + G.regular(), G.regular(), 3)


@pytest.mark.parametrize("arch", ["convnet", "gconv", "steer"])
def test_strict_models_are_c4_equivariant_end_to_end(arch):
    torch.manual_seed(0)
    net = build_net(arch, in_frames=3, width=8, depth=3, kernel=3, equal_weights=arch != "convnet").double()
    if arch == "convnet":
        net = make_method("strict", net).model
    with torch.no_grad():  # a non-trivial last layer (it starts at zero)
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(3, 6, 12, 12, dtype=F64)
    act_in, act_out = feature_map_action(3 * V), feature_map_action(V)

    def f(z):
        with torch.no_grad():
            return rollout(net, z, 3)[:, -1]

    err = equivariance_error(f, x, act_in, act_out, group=G, elements=G.elements()[1:])
    assert err.max < 1e-10
    assert float((f(x) - x[:, -2:]).abs().max()) > 1e-3      # not trivially the persistence forecast
    # the unconstrained version is not equivariant
    free = build_net(arch, in_frames=3, width=8, depth=3, kernel=3).double()
    with torch.no_grad():
        for p in free.parameters():
            p.add_(0.3 * torch.randn_like(p))
    g = lambda z: free(z)  # noqa: E731
    assert equivariance_error(g, x, act_in, act_out, group=G, elements=G.elements()[1:]).max > 1e-3


def test_windows_and_errors():
    w = smoke_windows(8, [4, 5, 6, 7], T=32, splits=(12, 16, 18), F=10, R_train=2, R_test=4)
    assert {s for s, _ in w["train"]} == {0, 1, 2, 3} and {s for s, _ in w["domain"]} == {4, 5, 6, 7}
    assert max(t for _, t in w["future"]) + 10 + 4 <= 32
    with pytest.raises(ValueError, match="lower c"):
        smoke_windows(8, [], T=30, splits=(12, 16, 18), F=10, R_train=2, R_test=4)
    with pytest.raises(ValueError, match="arch=convnet"):
        run(RunConfig("smoke", method="projection", preset="ci", options={"arch": "gconv"}), "/nonexistent")
    with pytest.raises(ValueError, match="option case must be one of"):
        run(RunConfig("smoke", method="plain", preset="ci", options={"case": "shear"}), "/nonexistent")
    with pytest.raises(ValueError, match="the scale case has none"):
        run(RunConfig("smoke", method="projection", preset="ci", options={"case": "scale"}), "/nonexistent")
    with pytest.raises(ValueError, match="option width must be a positive multiple of 4"):
        run(RunConfig("smoke", method="plain", preset="ci", options={"width": 6}), "/nonexistent")
    with pytest.raises(ValueError, match="the scale case has none"):
        run(RunConfig("smoke", method="strict", preset="ci", options={"case": "scale"}), "/nonexistent")
    with pytest.raises(ValueError, match="option schedule must be"):
        run(RunConfig("smoke", method="plain", preset="ci", options={"schedule": "linear"}), "/nonexistent")
    with pytest.raises(ValueError, match="relaxed layers"):
        run(RunConfig("smoke", method="relaxed", preset="ci", options={"arch": "convnet"}), "/nonexistent")


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return str(tmp_path_factory.mktemp("smoke-runs"))


def test_lambda_controls_the_defect_and_the_report(out):
    """The ci preset on the level-0 (exactly C4-symmetric) data, which test_data_smoke.py generates
    into the same session cache."""
    rows = {}
    for m, lam, opts in [("projection", 1e-3, {}), ("projection", 1.0, {}),
                         ("relaxed", 1e-4, {"arch": "steer", "penalty": "projection"}),
                         ("relaxed", 1.0, {"arch": "steer", "penalty": "projection"})]:
        rows[(m, lam, opts.get("penalty"), opts.get("arch"))] = run(
            RunConfig("smoke", method=m, lambda_perp=lam, preset="ci", level=0.0, options=opts), out, progress=False)
    lo, hi = rows[("projection", 1e-3, None, None)], rows[("projection", 1.0, None, None)]
    for r in rows.values():
        assert r["n_sims"] == 8 and r["size"] == 16 and math.isfinite(r["rmse_future"]) and r["rmse_domain"] > 0
        assert r["time_per_step_s"] > 0
    assert hi["defect_fro"] < 0.5 * lo["defect_fro"] and lo["defect_fro"] > 0
    assert hi["equiv_error"] < lo["equiv_error"]
    s_lo, s_hi = rows[("relaxed", 1e-4, "projection", "steer")], rows[("relaxed", 1.0, "projection", "steer")]
    assert s_hi["defect_fro"] < 0.5 * s_lo["defect_fro"] and s_hi["equiv_error"] < s_lo["equiv_error"]
    text = report(out)
    assert "rmse" in open(f"{out}/results.csv").readline() and "rmse_domain" in open(f"{out}/results.csv").readline()
    assert "steer relaxed (projection penalty)" in text and "convnet projection (split)" in text
    assert "smoke_rotation_ci_lvl0_lambda.png" in text and "rollouts.png" in text


def test_cli_run_at_the_ci_preset(tmp_path, capsys):
    """Also Wang et al.'s schedule: the learning rate times 0.95 after every epoch of windows."""
    o = str(tmp_path / "cli")
    main(["run", "smoke", "--preset", "ci", "--method", "projection", "--option", "case=rotation", "--out", o,
          "--seed", "1", "--level", "0", "--option", "schedule=step"])
    head = open(f"{o}/results.csv").readline().split(",")
    assert "rmse_future" in head and "rmse_domain" in head
    (res_path,) = Path(o).glob("runs/*/result.json")
    res = json.loads(res_path.read_text())
    row = next(csv.DictReader(open(f"{o}/results.csv")))
    per_epoch = math.ceil(int(row["n_train_windows"]) / 8)
    assert res["config"]["schedule"] == "step" and res["config"]["lr_step_size"] == per_epoch
    lrs = {e["step"]: e["lr"] for e in res["history"]["train"]}
    assert per_epoch < 30 and lrs[30] == pytest.approx(2e-3 * 0.95 ** (30 // per_epoch))
    main(["report", o])
    assert "convnet projection" in open(f"{o}/report.md").read()


def test_scale_case_at_the_ci_preset(tmp_path):
    """Relaxed scale-space convolutions: the projection penalty's weight controls the defect, the
    weight-tied network has none, the plain ConvNet is not declared; the report has a scale table."""
    out = str(tmp_path / "scale")
    rows = {}
    for key, m, lam, opts in [("convnet", "plain", 0.0, {}), ("strict", "plain", 0.0, {"arch": "gconv", "equal_weights": True}),
                              ("lo", "relaxed", 1e-4, {"arch": "gconv", "penalty": "projection"}),
                              ("hi", "relaxed", 1.0, {"arch": "gconv", "penalty": "projection"}),
                              ("wang", "relaxed", 1e-2, {"arch": "gconv"}),
                              ("wide", "plain", 0.0, {"arch": "gconv", "equal_weights": True, "width": 16}),
                              ("steer_lo", "relaxed", 1e-4, {"arch": "steer", "penalty": "projection"}),
                              ("steer_hi", "relaxed", 1.0, {"arch": "steer", "penalty": "projection"})]:
        rows[key] = run(RunConfig("smoke", method=m, lambda_perp=lam, preset="ci", level=1.0,
                                  options={"case": "scale", **opts}), out, progress=False)
    for r in rows.values():
        assert r["case"] == "scale" and r["n_sims"] == 4 and r["size"] == 16 and math.isfinite(r["rmse_future"])
        assert math.isnan(r["equiv_error"])
    assert rows["convnet"]["defect_fro"] == 0.0                         # not declared for any group
    assert rows["strict"]["defect_fro"] < 1e-6
    assert rows["wide"]["n_params"] > 2 * rows["strict"]["n_params"]   # --option width= overrides the preset
    assert rows["lo"]["defect_fro"] > 1e-3 and rows["hi"]["defect_fro"] < 0.5 * rows["lo"]["defect_fro"]
    assert rows["hi"]["rmse_future"] < rows["hi"]["rmse_future_persistence"] * 2
    assert rows["steer_lo"]["defect_fro"] > 1e-3 and rows["steer_hi"]["defect_fro"] < 0.5 * rows["steer_lo"]["defect_fro"]
    text = report(out)
    assert "gconv strict (equal weights), width 16" in text
    assert "case `scale`" in text and "gconv relaxed (projection penalty)" in text and "gconv relaxed (Wang penalty)" in text
