"""The ci presets of the experiments, the sweep/report machinery and the command line."""

import json
import subprocess
import sys

import pytest
import torch

from equiproj.cli import main
from equiproj.experiments import RunConfig, available_experiments, get_experiment, report, run, sweep
from equiproj.experiments.so2_toy import CircularHarmonicNet, FrequencyMaskProjector
from equiproj.groups import so2


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return str(tmp_path_factory.mktemp("experiments"))


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("EQUIPROJ_CACHE", str(tmp_path_factory.getbasetemp() / "data-cache"))


# ------------------------------------------------------------------ so2-toy


def test_frequency_mask_is_the_group_average():
    """P(W)_ab = 1/(2 pi) int e^{i m_a phi} W_ab e^{-i m_b phi} d phi, by exact quadrature."""
    f_in, f_out = torch.tensor([-2, -1, 0, 1, 2, 1]), torch.tensor([0, 1, -1, 2, 1])
    P = FrequencyMaskProjector(f_in, f_out)
    W = torch.randn(5, 6, dtype=torch.complex128)
    phi, w = so2().quadrature(4)
    ph = torch.exp(1j * phi[:, None, None] * (f_out[None, :, None] - f_in[None, None, :]))
    avg = torch.einsum("q,qab,ab->ab", w.to(torch.complex128), ph, W)
    assert torch.allclose(P.project(W), avg, atol=1e-12)


def test_strict_harmonic_net_is_exactly_invariant():
    from equiproj import constrain_
    from equiproj.data import rotate_points

    torch.manual_seed(0)
    net = constrain_(CircularHarmonicNet(hidden_per_frequency=2).double())
    x = torch.randn(30, 2, dtype=torch.float64)
    for a in (0.3, 1.7, 4.0):
        assert torch.allclose(net(rotate_points(x, a)), net(x), atol=1e-9)


def test_so2_toy_invariance_error_falls_with_lambda_perp(out):
    rows = sweep("so2-toy", out, {"lambda_perp": [0.0, 1e-2, 1.0]}, base=dict(preset="ci"), progress=False)
    err = {r["lambda_perp"]: r["invariance_error"] for r in rows}
    assert err[0.0] > 0.5 > err[1e-2] > err[1.0]
    assert all(r["train_accuracy"] > 0.95 for r in rows)  # the wedge separates by radius
    mlp = run(RunConfig("so2-toy", method="plain", options={"arch": "mlp"}), out, progress=False)
    strict = run(RunConfig("so2-toy", method="strict"), out, progress=False)
    assert mlp["invariance_error"] > 0.5
    assert strict["invariance_error"] < 1e-6
    # on symmetric rings strict equivariance costs nothing; on broken rings it costs accuracy
    r0 = run(RunConfig("so2-toy", method="strict", level=0.0, options={"dataset": "rings"}), out, progress=False)
    r1 = run(RunConfig("so2-toy", method="strict", level=1.0, options={"dataset": "rings"}), out, progress=False)
    p1 = run(RunConfig("so2-toy", method="plain", level=1.0, options={"dataset": "rings"}), out, progress=False)
    assert r0["test_accuracy"] > 0.97 and r1["test_accuracy"] < p1["test_accuracy"]


# ------------------------------------------------------------------ vectors


def test_vectors_ci_behaviour(out):
    def mi(method, lp=0.0, c=0.0, **opts):
        cfg = RunConfig("vectors", method=method, lambda_perp=lp, level=c,
                        options=dict(task="modified_inertia", **opts))
        return run(cfg, out, progress=False)

    # c = 0: the exact symmetry helps, the strict model is at least as accurate as the plain MLP
    assert mi("strict")["test_mse"] <= mi("plain", arch="mlp")["test_mse"]
    # c = 0.3: an intermediate lambda_perp beats both the plain and the strict model
    plain, strict = mi("plain", c=0.3, arch="mlp"), mi("strict", c=0.3)
    proj = {lp: mi("projection", lp, c=0.3) for lp in (1e-3, 3e-2, 1.0)}
    assert proj[3e-2]["test_mse"] < min(plain["test_mse"], strict["test_mse"])
    # the error under rotation falls as lambda_perp grows
    e = [proj[lp]["equivariance_error"] for lp in (1e-3, 3e-2, 1.0)]
    assert e[0] > e[1] > e[2], e
    assert strict["equivariance_error"] < 1e-5 < plain["equivariance_error"]


def test_vectors_scheme_figure_and_table_keep_initialisations_apart(tmp_path):
    """A results table (no run folders needed) with two initialisations of one scheme: the table
    gets an init column with a row for each, the figure a line for each; spreads are sample std."""
    import csv

    from equiproj.experiments._core import read_results_csv

    cols = ["run_id", "experiment", "method", "scheme", "perp_lr", "lambda_perp", "norm", "seed", "preset", "level",
            "task", "arch", "opt_init", "test_mse_abs", "sel_test_mse_abs", "test_mse", "sel_test_mse",
            "equivariance_error", "time_per_step_s", "device"]
    rows = []
    for init, base in (("", 1.0), ("projected", 5.0)):
        for lam in (0.1, 1.0):
            for seed in (0, 1):
                rows.append(dict(run_id=f"p{init}{lam}{seed}", experiment="vectors", method="projection",
                                 scheme="penalty", perp_lr="", lambda_perp=lam, norm="fro", seed=seed, preset="rpp",
                                 level=0.3, task="modified_inertia", arch="emlp384", opt_init=init,
                                 test_mse_abs=base + seed, sel_test_mse_abs=base + seed, test_mse=0.1, sel_test_mse=0.1,
                                 equivariance_error=0.1, time_per_step_s=0.01, device="cpu"))
    rows.append(dict(run_id="s0", experiment="vectors", method="strict", norm="fro", seed=0, preset="rpp", level=0.3,
                     task="modified_inertia", arch="emlp384", test_mse_abs=2.0, sel_test_mse_abs=2.0, test_mse=0.1,
                     sel_test_mse=0.1, equivariance_error=0.0, time_per_step_s=0.01, lambda_perp=0.0, device="cpu"))
    table = tmp_path / "results.csv"
    with open(table, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    assert len(read_results_csv(table)) == len(rows)
    text = report(str(table), into=str(tmp_path / "rep"))
    lines = [ln for ln in text.splitlines() if ln.startswith("| emlp384 | projection")]
    assert len(lines) == 4  # two weights x two initialisations, never averaged together
    assert any("| projected |" in ln and "5.5 ± 0.71" in ln for ln in lines)  # sample std of 5 and 6
    assert any("| equivariant |" in ln and "1.5 ± 0.71" in ln for ln in lines)
    assert (tmp_path / "rep" / "figures" / "vectors_modified_inertia_rpp_emlp384_c0.3_schemes.png").exists()


def test_vectors_o5_basis_route_runs(out):
    r = run(RunConfig("vectors", method="strict", steps=50, options={"task": "o5"}), out, progress=False)
    assert r["equivariance_error"] < 1e-5 and r["test_mse"] > 0


def test_training_schemes_in_runs_and_sweeps(out, capsys):
    from equiproj import DEFAULT_SCHEME

    cfg = RunConfig("vectors", method="projection", lambda_perp=0.1, steps=40, options={"task": "inertia"})
    assert cfg.scheme == DEFAULT_SCHEME and f"_{DEFAULT_SCHEME}_" in cfg.run_id()
    assert RunConfig("vectors", method="plain").scheme is None
    with pytest.raises(ValueError, match="method 'strict' has no training scheme"):
        run(RunConfig("vectors", method="strict", scheme="split"), out, progress=False)
    rows = sweep("vectors", out, {"method": ["plain", "projection"], "scheme": ["penalty", "proximal"]},
                 base=dict(steps=40, lambda_perp=0.1, options={"task": "inertia", "arch": "emlp"}), progress=False)
    assert sorted((r["method"], r["scheme"]) for r in rows) == [
        ("plain", None), ("projection", "penalty"), ("projection", "proximal")]  # plain runs once
    # model selection on the validation MSE: the selected model's metrics beside the final ones
    r = rows[-1]
    assert r["reported"] == "final" and r["sel_metric"] == "val_mse" and 0 < r["sel_step"] <= 40
    assert r["sel_val_mse"] <= r["val_mse"] + 1e-12 and "sel_test_mse" in r
    assert main(["run", "vectors", "--method", "projection", "--scheme", "split-proximal", "--steps", "20",
                 "--option", "task=inertia", "--out", out, "--quiet"]) == 0
    assert "scheme: split-proximal" in capsys.readouterr().out


# ------------------------------------------------------------------ machinery


def test_run_is_resumable_and_results_are_collected(out):
    cfg = RunConfig("so2-toy", method="projection", lambda_perp=0.1, steps=20)
    first = run(cfg, out, progress=False)
    folder = f"{out}/runs/{cfg.run_id()}"
    mtime = (pytest.importorskip("pathlib").Path(folder) / "metrics.json").stat().st_mtime
    again = run(cfg, out, progress=False)
    assert again == first
    assert (pytest.importorskip("pathlib").Path(folder) / "metrics.json").stat().st_mtime == mtime
    lines = open(f"{out}/results.csv").read().strip().splitlines()
    assert len(lines) - 1 == len(set(l.split(",")[0] for l in lines[1:]))  # one row per run
    assert json.load(open(f"{folder}/layers.json"))[0]["group"] == "SO(2)"
    assert "preset_values" not in lines[0].split(",")  # kept in metrics.json, not in the CSV


def test_finished_run_with_other_preset_values_is_refused(out, monkeypatch):
    cfg = RunConfig("so2-toy", method="projection", lambda_perp=0.1, steps=5)
    run(cfg, out, progress=False)
    exp = get_experiment("so2-toy")
    changed = {name: dict(p) for name, p in exp.presets.items()}
    key = next(iter(changed["ci"]))
    changed["ci"][key] = "something else"
    monkeypatch.setattr(type(exp), "presets", changed)
    with pytest.raises(ValueError, match=f"other values of preset 'ci' \\({key}: .* -> 'something else'\\)"):
        run(cfg, out, progress=False)


def test_report_writes_tables_and_figures(out):
    text = report(out)
    assert "## so2-toy" in text and "## vectors" in text
    assert "figures/so2_toy_wedge_boundaries.png" in text
    import pathlib

    for name in ("so2_toy_wedge_boundaries.png", "report.md"):
        p = pathlib.Path(out) / ("figures" if name.endswith(".png") else "") / name
        assert p.exists() and p.stat().st_size > 1000


def test_clear_errors():
    with pytest.raises(ValueError, match="unknown experiment 'toy'.*so2-toy"):
        run(RunConfig("toy"), "unused")
    with pytest.raises(ValueError, match="method 'eqreg' is not available for experiment 'so2-toy'"):
        run(RunConfig("so2-toy", method="eqreg"), "unused")
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        run(RunConfig("so2-toy", preset="huge"), "unused")
    with pytest.raises(ValueError, match="option task must be"):
        run(RunConfig("vectors", options={"task": "o7"}), "unused")
    with pytest.raises(ValueError, match=r"lambda_perp \(--lambda-perp\) must be a finite number >= 0"):
        run(RunConfig("so2-toy", lambda_perp=-1.0), "unused")
    assert {"so2-toy", "vectors"} <= set(available_experiments())


# ------------------------------------------------------------------ command line


def test_cli(out, capsys, tmp_path):
    assert main(["list"]) == 0
    text = capsys.readouterr().out
    assert "so2-toy" in text and "sample-output" in text
    assert main(["run", "so2-toy", "--method", "nope", "--out", str(tmp_path)]) == 2
    assert "method 'nope' is not available" in capsys.readouterr().err
    assert main(["run", "so2-toy", "--lambda-perp", "0.01", "--steps", "10", "--quiet", "--out", str(tmp_path)]) == 0
    assert "invariance_error" in capsys.readouterr().out
    assert main(["sweep", "so2-toy", "--methods", "projection", "--lambda-perp", "0", "1", "--steps", "10",
                 "--quiet", "--out", str(tmp_path)]) == 0
    assert main(["report", str(tmp_path)]) == 0
    assert (tmp_path / "report.md").exists()
    assert main(["run", "so2-toy", "--option", "novalue", "--out", str(tmp_path)]) == 2
    assert "--option expects key=value" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "empty")]) == 2


def test_console_script_is_installed():
    r = subprocess.run([sys.executable, "-m", "equiproj.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "demo" in r.stdout and "sweep" in r.stdout


def test_demo_quick(tmp_path):
    from equiproj.experiments.demo import demo

    path = demo(str(tmp_path), progress=False, quick=True)
    text = path.read_text()
    assert "# equiproj demo" in text and "## vectors" in text and "Per-layer report" in text
    figs = list((tmp_path / "figures").glob("*.png"))
    assert len(figs) >= 3


def test_method_options_come_from_the_method_class_not_its_name():
    """A method registered by a user gets --lambda-perp / --lambda-G / --k through the names its
    class declares (``weight_option``, ``second_weight_option``, option ``k``)."""
    from equiproj.baselines import METHODS, Method, register_method
    from equiproj.experiments._core import method_options, sweep_configs, takes_weight

    @register_method("test-weighted-sampler")
    class _Dummy(Method):
        name = "test-weighted-sampler"
        weight_option = "alpha"
        second_weight_option = "beta"
        _options = ("alpha", "beta", "k")

    try:
        cfg = RunConfig("so2-toy", method="test-weighted-sampler", lambda_perp=0.3, lambda_G=0.2, k=3, seed=4)
        assert method_options(cfg) == {"alpha": 0.3, "beta": 0.2, "k": 3, "seed": 4}
        cfg0 = RunConfig("so2-toy", method="test-weighted-sampler", lambda_perp=0.3)
        assert method_options(cfg0) == {"alpha": 0.3, "k": 1, "seed": 0}  # the second weight only when positive
        assert takes_weight("test-weighted-sampler") and not takes_weight("strict")
        assert method_options(RunConfig("so2-toy", method="strict", lambda_perp=0.0)) == {"seed": 0}
        # a sweep runs plain once whatever the lambdas, and the weighted method once per lambda
        cfgs = sweep_configs("so2-toy", {"method": ["plain", "projection"], "lambda_perp": [1e-2, 1e-1]})
        assert sorted((c.method, c.lambda_perp) for c in cfgs) == [("plain", 0.0), ("projection", 1e-2),
                                                                   ("projection", 1e-1)]
    finally:
        METHODS.pop("test-weighted-sampler", None)
