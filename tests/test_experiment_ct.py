"""The 'ct' experiment (CT metal-artefact reduction, C4): ci preset runs, lambda_perp, strict vs
plain, option errors, the command line and the report."""

import math
from pathlib import Path

import pytest
import torch

from equiproj.cli import main
from equiproj.experiments import RunConfig, report, run, sweep
from equiproj.actions import feature_map_action
from equiproj import equivariant_init_
from equiproj.experiments.ct import SYMMETRY_SETTINGS, CTExperiment, build_model, ct_data_config
from equiproj.groups import cyclic
from equiproj.metrics import equivariance_error


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Small convolutions run faster on one thread, above all on a shared CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("EQUIPROJ_CACHE", str(tmp_path_factory.getbasetemp() / "ct-data-cache"))


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return str(tmp_path_factory.mktemp("ct-runs"))


@pytest.fixture(scope="module")
def rows(out, tmp_path_factory):
    """The ci preset: projection at three weights, plain and strict (about 20 s on one core)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("EQUIPROJ_CACHE", str(tmp_path_factory.getbasetemp() / "ct-data-cache"))
    try:
        res = sweep("ct", out, {"method": ["projection"], "lambda_perp": [0.0, 1e-2, 1.0]}, base=dict(preset="ci"),
                    progress=False)
        res += [run(RunConfig("ct", method=m, preset="ci"), out, progress=False) for m in ("plain", "strict")]
    finally:
        mp.undo()
    return {(r["method"], r["lambda_perp"] if r["method"] == "projection" else None): r for r in res}


def test_projection_beats_the_fbp_input(rows):
    r = rows[("projection", 1e-2)]
    assert r["n_train"] == 64 and r["n_test"] == 16 and r["size"] == 64
    assert 15.0 < r["psnr_input"] < 21.0  # the strong-metal FBP (see docs/data/ct.md)
    # clipping the input alone gives about +2.6 dB here; the network must do clearly better
    assert r["psnr"] > r["psnr_input"] + 3.5
    assert r["ssim"] > 0 and math.isfinite(r["time_per_step_s"]) and r["throughput"] > 0


def test_defect_falls_as_lambda_perp_grows(rows):
    d = [rows[("projection", lp)]["defect_sum"] for lp in (0.0, 1e-2, 1.0)]
    assert d[0] > 5 * d[1] > 0 and d[1] > 5 * d[2] > 0, d
    # for the Frobenius penalty the framework's defect is the Frobenius defect
    for lp in (0.0, 1e-2, 1.0):
        r = rows[("projection", lp)]
        assert r["defect_fro"] == pytest.approx(r["defect_sum"], rel=1e-6)
    e = [rows[("projection", lp)]["equiv_error"] for lp in (0.0, 1e-2, 1.0)]
    assert e[0] > e[1] > e[2]


def test_strict_is_equivariant_and_plain_is_not(rows):
    strict, plain = rows[("strict", None)], rows[("plain", None)]
    assert strict["equiv_error"] < 1e-5 and strict["equiv_error_max"] < 1e-5
    assert strict["defect_sum"] < 1e-5
    assert plain["equiv_error"] > 1e-2 > 1e3 * strict["equiv_error"]
    assert plain["defect_sum"] > 3 * rows[("projection", 0.0)]["defect_sum"]  # plain starts from a random init


def test_projected_init_is_exactly_equivariant():
    """He init + projection + rescaling: exactly C4-equivariant (one and two input channels)."""
    G = cyclic(4)
    torch.manual_seed(0)
    for c_in in (1, 2):
        net = build_model(c_in, width=8, depth=2, zero_head=False).double()
        x = torch.randn(3, c_in, 32, 32, dtype=torch.float64)
        act_in, act_out = feature_map_action(c_in * G.trivial()), feature_map_action(G.trivial())
        before = equivariance_error(net, x, act_in, act_out, elements=G.elements()[1:])
        equivariant_init_(net)
        after = equivariance_error(net, x, act_in, act_out, elements=G.elements()[1:])
        assert before.mean > 1e-2 and after.max < 1e-10
        assert float((net(x) - x[:, :1]).detach().std()) > 0.05  # the rescaled projection keeps a signal


def test_symmetry_settings():
    preset = CTExperiment.presets["ci"]
    control = ct_data_config(preset, "control", "strong", False, 0)
    assert control.rotation_std_deg == "uniform" and not control.table and control.limited_angle_deg == 0
    default = ct_data_config(preset, "default", "mild", True, 3)
    assert default.rotation_std_deg == 5.0 and default.table and default.li_input and default.seed == 3
    assert default.metal_attenuation == 8.0
    strong = ct_data_config(preset, "strong", "strong", False, 0)
    assert strong.limited_angle_deg == 60.0
    assert set(SYMMETRY_SETTINGS) == {"control", "default", "strong"}


@pytest.mark.parametrize("cfg, message", [
    (RunConfig("ct", options={"symetry": "control"}), "unknown options for ct: \\['symetry'\\]"),
    (RunConfig("ct", options={"symmetry": "broken"}), "option symmetry must be 'control', 'default' or 'strong'"),
    (RunConfig("ct", options={"metal": "heavy"}), "option metal must be 'strong' or 'mild'"),
    (RunConfig("ct", options={"li_input": "yes"}), "option li_input must be true or false"),
    (RunConfig("ct", options={"init": "zeros"}), "option init must be 'equivariant' or 'random'"),
    (RunConfig("ct", options={"data_seed": -1}), "option data_seed must be an integer >= 0"),
    (RunConfig("ct", level=0.5), "has no numeric level"),
    (RunConfig("ct", method="per"), "method 'per' is not available for experiment 'ct'"),
    (RunConfig("ct", preset="huge"), "unknown preset 'huge'"),
])
def test_clear_errors(cfg, message):
    with pytest.raises(ValueError, match=message):
        run(cfg, "unused")


def test_width_must_fit_regular_fields():
    with pytest.raises(ValueError, match="multiple of 4"):
        build_model(1, width=6, depth=1)


@pytest.mark.parametrize("method, lam", [("sample-output", 1e-3), ("eqreg", 0.1), ("rpp", 1e-2)])
def test_baselines_run(out, method, lam):
    r = run(RunConfig("ct", method=method, lambda_perp=lam, k=3 if method != "rpp" else 1, steps=6), out,
            progress=False)
    assert math.isfinite(r["psnr"]) and math.isfinite(r["equiv_error"]) and r["train_steps"] == 6
    assert math.isfinite(r["defect_sum"]) and r["time_per_step_s"] > 0


def test_cli_li_input_and_control(tmp_path, capsys):
    assert main(["run", "ct", "--method", "strict", "--steps", "4", "--option", "li_input=true", "--option",
                 "symmetry=control", "--quiet", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "psnr_li" in text and "symmetry: control" in text
    assert main(["run", "ct", "--option", "symmetry=sideways", "--out", str(tmp_path)]) == 2
    assert "option symmetry must be" in capsys.readouterr().err


def test_report(out, rows):
    # a sample-based run for the throughput figure (already there when test_baselines_run ran)
    run(RunConfig("ct", method="sample-output", lambda_perp=1e-3, k=3, steps=6), out, progress=False)
    text = report(out)
    assert (Path(out) / "report.md").read_text() == text
    for heading in ("## ct", "FBP input", "Method comparison"):
        assert heading in text
    assert "| strict |" in text and "| projection split | 0.01 |" in text
    figs = Path(out) / "figures"
    names = {p.name for p in figs.glob("ct_*.png")}
    assert {"ct_ci_strongmetal_panels.png", "ct_ci_strongmetal_lambda.png", "ct_ci_strongmetal_throughput.png"} <= names, names
    for name in names:
        assert f"figures/{name}" in text


def test_report_of_a_symmetry_sweep(tmp_path):
    """Two symmetry settings: the report has the symmetry table and its figure, one marker per
    setting and method with the seeds beside it."""
    from equiproj.experiments import report

    out = str(tmp_path / "sym")
    for sym in ("default", "strong"):
        run(RunConfig("ct", method="plain", steps=4, options={"symmetry": sym}), out, progress=False)
    text = report(out)
    assert "#### Symmetry sweep" in text and "| strong |" in text and "| default |" in text
    (fig,) = (tmp_path / "sym" / "figures").glob("ct_*_symmetry.png")
    assert fig.stat().st_size > 1000 and f"figures/{fig.name}" in text
