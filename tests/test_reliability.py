"""Reliability the hard way: killed sweeps, damaged run folders, concurrent sweeps, DDP, failing writes.

Every test uses the so2-toy experiment at the ci preset with a few steps (well under a second of
training per run), so the cost is mostly process start-up.
"""

from __future__ import annotations

import errno
import shutil
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from equiproj._io import atomic_write_json, is_temp_file
from equiproj.cli import main
from equiproj.experiments import RunConfig, run
from equiproj.experiments._core import (BadRunFolders, _csv_cell, collect, read_results_csv, report, save_figure, scan,
                                        sweep)
from equiproj.train import RunFolderError

SRC = str(Path(__file__).resolve().parents[1] / "src")
METRICS = ("train_accuracy", "test_accuracy", "invariance_error", "defect_sum")


def _cfg(steps=8, **kw):
    return RunConfig("so2-toy", method="projection", lambda_perp=kw.pop("lambda_perp", 0.1), steps=steps, **kw)


def _same_metrics(a, b):
    return all(a[k] == b[k] for k in METRICS)


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


# ---------------------------------------------------------------------------- damaged run folders


def test_missing_or_broken_weights_resume_from_the_checkpoint_or_are_refused(tmp_path, capsys):
    cfg = _cfg()
    ref = run(cfg, str(tmp_path), progress=False)
    d = tmp_path / "runs" / cfg.run_id()
    # 1. model.pt missing: metrics.json is no longer trusted, the run continues from its final checkpoint
    (d / "model.pt").unlink()
    again = run(cfg, str(tmp_path), progress=False)
    err = capsys.readouterr().err
    assert "model.pt is missing" in err and "checkpoint" in err
    assert _same_metrics(again, ref) and (d / "model.pt").exists()
    # 2. non-finite weights in model.pt: not trusted either (the checkpoint is good)
    state = torch.load(d / "model.pt", weights_only=True)
    key = next(k for k, v in state.items() if v.is_floating_point() or v.is_complex())
    state[key].view(-1)[0] = float("nan")
    torch.save(state, d / "model.pt")
    (d / "metrics.json").unlink()
    assert _same_metrics(run(cfg, str(tmp_path), progress=False), ref)
    # 3. no usable weights and a truncated checkpoint: refused, naming both files; nothing is reported
    (d / "model.pt").unlink()
    (d / "metrics.json").unlink()
    data = (d / "checkpoint.pt").read_bytes()
    (d / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(RunFolderError, match=r"model\.pt.*is missing.*cannot read the checkpoint"):
        run(cfg, str(tmp_path), progress=False)
    assert not (d / "metrics.json").exists()
    # 4. no checkpoint at all: refused with the fix
    (d / "checkpoint.pt").unlink()
    with pytest.raises(RunFolderError, match=r"no checkpoint to continue from.*Delete the folder"):
        run(cfg, str(tmp_path), progress=False)


@pytest.mark.parametrize("content", ["{garbage", "[1, 2, 3]", '{"run_id": "x"}'])
def test_unreadable_metrics_are_listed_by_report_and_recomputed_by_run(tmp_path, capsys, content):
    cfg, other = _cfg(), _cfg(lambda_perp=1.0)
    ref = run(cfg, str(tmp_path), progress=False)
    run(other, str(tmp_path), progress=False)
    bad = tmp_path / "runs" / cfg.run_id() / "metrics.json"
    bad.write_text(content)
    capsys.readouterr()
    # report: the folder and the reason are named, exit code 2, no report written
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert cfg.run_id() in err and "--skip-bad" in err and err.count("\n") <= 4
    assert not (tmp_path / "report.md").exists()
    assert main(["report", str(tmp_path), "--skip-bad"]) == 0
    assert "Left out (unreadable)" in (tmp_path / "report.md").read_text()
    rows = (tmp_path / "results.csv").read_text().strip().splitlines()
    assert len(rows) == 2  # the header and the readable run
    # run on the same folder: recomputed from the run's own files, same numbers
    again = run(cfg, str(tmp_path), progress=False)
    assert "recomputing" in capsys.readouterr().err and _same_metrics(again, ref)
    assert len((tmp_path / "results.csv").read_text().strip().splitlines()) == 3


def test_garbage_result_json_resumes_from_the_checkpoint(tmp_path):
    cfg = _cfg()
    ref = run(cfg, str(tmp_path), progress=False)
    d = tmp_path / "runs" / cfg.run_id()
    (d / "metrics.json").unlink()
    (d / "result.json").write_text('["not", "a", "result"]')
    assert _same_metrics(run(cfg, str(tmp_path), progress=False), ref)
    assert json.loads((d / "result.json").read_text())["status"] == "finished"


def test_stale_temp_files_are_removed_and_figures_leave_none(tmp_path):
    cfg = _cfg()
    d = tmp_path / "runs" / cfg.run_id()
    d.mkdir(parents=True)
    stale = d / ".checkpoint.pt.k2x9_abc.tmp"
    stale.write_bytes(b"x" * 100)
    keep = d / "notes.tmp"
    keep.write_text("mine")
    run(cfg, str(tmp_path), progress=False)
    assert not stale.exists() and keep.exists()
    assert is_temp_file(".metrics.json.abcd1234.tmp") and not is_temp_file("metrics.json")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure()
    orig = fig.savefig

    def failing(*a, **k):
        orig(*a, **k)
        raise RuntimeError("renderer failed")

    fig.savefig = failing
    with pytest.raises(RuntimeError):
        save_figure(fig, tmp_path / "figs" / "a.png")
    assert not (tmp_path / "figs").exists() or not list((tmp_path / "figs").iterdir())


def test_csv_cells_round_trip_and_stale_results_are_removed(tmp_path):
    import csv
    import io

    values = ['say "hi", twice', "plain", "a,b", 'only"quote', "two\nlines", 0.1, None]
    line = ",".join(_csv_cell(v) for v in values)
    back = next(csv.reader(io.StringIO(line)))
    assert back == ['say "hi", twice', "plain", "a,b", 'only"quote', "two\nlines", "0.1", ""]
    (tmp_path / "runs").mkdir()
    (tmp_path / "results.csv").write_text("stale\n")
    assert collect(str(tmp_path)) == [] and not (tmp_path / "results.csv").exists()


# ---------------------------------------------------------------------------- errors before work is spent


def test_cli_errors_are_one_line_with_exit_code_2_before_any_training(tmp_path, capsys):
    afile = tmp_path / "file"
    afile.write_text("x")
    cases = [
        (["run", "so2-toy", "--out", str(afile)], "is not a folder"),
        (["run", "so2-toy", "--out", str(afile / "sub")], "not writable"),
        (["run", "so2-toy", "--out", ""], "--out is empty"),
        (["run", "so2-toy", "--lambda-perp", "inf", "--out", str(tmp_path / "o")], r"--lambda-perp\) must be a finite"),
        (["run", "so2-toy", "--k", "0", "--out", str(tmp_path / "o")], r"--k"),
        (["run", "so2-toy", "--seed", "-1", "--out", str(tmp_path / "o")], r"seed \(--seed\)"),
        (["run", "so2-toy", "--route", "fourier", "--out", str(tmp_path / "o")], "does not use --route"),
        (["run", "so2-toy", "--option", "novalue", "--out", str(tmp_path / "o")], "key=value"),
        (["run", "so2-toy", "--device", "cuda:7", "--out", str(tmp_path / "o")], "cuda"),
        (["sweep", "so2-toy", "--methods", "projection", "nope", "--lambda-perp", "0", "nan",
          "--out", str(tmp_path / "o")], "nothing was trained"),
        (["sweep", "so2-toy", "--shard", "3/3", "--out", str(tmp_path / "o")], "--shard"),
        (["bench", "projection", "--widths", "60", "--out", str(tmp_path / "b")], "multiples of 16"),
    ]
    if torch.cuda.is_available():
        cases = [c for c in cases if "cuda:7" not in c[0]]
    for argv, expected in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("equiproj: error:") and "Traceback" not in err, (argv, err)
        assert __import__("re").search(expected, err), (argv, err)
    assert not (tmp_path / "o" / "runs").exists()  # nothing was trained
    # the sweep's error lists both bad values at once
    main(["sweep", "so2-toy", "--methods", "projection", "nope", "--lambda-perp", "0", "nan", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert "'nope'" in err and "nan" in err
    # --debug shows the traceback instead
    with pytest.raises(ValueError):
        main(["run", "so2-toy", "--k", "0", "--debug", "--out", str(tmp_path / "o")])
    # a subcommand's error prints that subcommand's usage
    with pytest.raises(SystemExit) as exc:
        main(["sweep", "so2-toy", "--bogus", "--out", str(tmp_path / "o")])
    assert exc.value.code == 2 and "usage: equiproj sweep" in capsys.readouterr().err


def test_full_disk_is_one_clear_line_and_leaves_no_partial_files(tmp_path, capsys, monkeypatch):
    out = tmp_path / "o"
    assert main(["run", "so2-toy", "--steps", "4", "--quiet", "--out", str(out)]) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    assert main(["run", "so2-toy", "--steps", "5", "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "checkpoint.pt" in err and "Traceback" not in err
    assert not [p for p in out.rglob("*") if is_temp_file(p.name)]
    assert all(p.read_bytes() == b for p, b in before.items())  # the finished run is untouched
    monkeypatch.undo()
    assert main(["run", "so2-toy", "--steps", "5", "--quiet", "--out", str(out)]) == 0


def test_cli_says_what_it_skips_and_resumes_and_list_shows_options(tmp_path, capsys):
    out = str(tmp_path / "o")
    assert main(["run", "so2-toy", "--steps", "4", "--out", out]) == 0
    capsys.readouterr()
    assert main(["run", "so2-toy", "--steps", "4", "--out", out]) == 0
    assert "skip " in capsys.readouterr().err
    cfg = RunConfig("so2-toy", steps=8, lambda_perp=0.01)
    d = Path(out) / "runs" / cfg.run_id()
    run(cfg, out, progress=False)
    (d / "metrics.json").unlink()
    (d / "result.json").unlink()
    (d / "model.pt").unlink()
    assert main(["run", "so2-toy", "--steps", "8", "--out", out]) == 0
    assert "resume " in capsys.readouterr().err
    assert main(["list"]) == 0
    text = capsys.readouterr().out
    assert "--option dataset=...  default wedge" in text and "preset paper: steps=2000" in text
    assert "not used: --route" in text


# ---------------------------------------------------------------------------- shards and merged reports


def test_shards_cover_the_grid_once_and_report_merges_their_folders(tmp_path):
    grid = {"method": ["projection"], "lambda_perp": [0.0, 0.1, 1.0]}
    base = dict(steps=4)
    rows = [sweep("so2-toy", str(tmp_path / f"s{i}"), grid, base, progress=False, shard=(i, 2)) for i in range(2)]
    ids = [r["run_id"] for rs in rows for r in rs]
    assert len(rows[0]) == 2 and len(rows[1]) == 1 and len(set(ids)) == 3
    assert main(["report", str(tmp_path / "s0"), str(tmp_path / "s1"), "--into", str(tmp_path / "m")]) == 0
    text = (tmp_path / "m" / "report.md").read_text()
    assert "(3 runs)" in text and "so2_toy_defect_history.png" in text
    assert (tmp_path / "m" / "figures" / "so2_toy_wedge_boundaries.png").exists()
    assert len((tmp_path / "m" / "results.csv").read_text().strip().splitlines()) == 4


def test_report_merges_an_earlier_results_table_without_its_run_folders(tmp_path):
    grid = {"method": ["projection"], "lambda_perp": [0.0, 0.1, 1.0]}
    sweep("so2-toy", str(tmp_path / "old"), grid, dict(steps=4), progress=False)
    full = report(str(tmp_path / "old"), into=str(tmp_path / "full"))
    table = tmp_path / "kept" / "results.csv"
    table.parent.mkdir()
    table.write_text((tmp_path / "old" / "results.csv").read_text())
    old_rows = {r["run_id"]: r for r in scan(str(tmp_path / "old"))[0]}
    shutil.rmtree(tmp_path / "old")  # the run folders are gone, the table is left
    # the table's rows come back with their types
    back = read_results_csv(table)
    assert {r["run_id"] for r in back} == set(old_rows)
    for r in back:
        o = old_rows[r["run_id"]]
        for k in ("lambda_perp", "seed", "method", "invariance_error", "stopped_early", "device"):
            assert r[k] == o[k] and type(r[k]) is type(o[k]), k
    # new runs (one of them a rerun of a tabled configuration) merged with the table
    sweep("so2-toy", str(tmp_path / "new"), {"method": ["projection"], "lambda_perp": [1.0, 3.0]}, dict(steps=4),
          progress=False)
    assert main(["report", str(table), str(tmp_path / "new"), "--into", str(tmp_path / "m")]) == 0
    text = (tmp_path / "m" / "report.md").read_text()
    assert "(4 runs)" in text
    merged = read_results_csv(tmp_path / "m" / "results.csv")
    assert len(merged) == 4 and len({r["run_id"] for r in merged}) == 4
    # the tables of the report built from the table alone match the report built from the folders
    assert main(["report", str(table), "--into", str(tmp_path / "t")]) == 0
    strip = lambda t: [ln for ln in t.splitlines() if ln.startswith("|")]  # noqa: E731
    assert strip((tmp_path / "t" / "report.md").read_text()) == strip(full)
    # clear errors
    with pytest.raises(ValueError, match="say where the report goes: --into"):
        report(str(table))
    with pytest.raises(ValueError, match="does not exist"):
        report(str(tmp_path / "nope.csv"), into=str(tmp_path / "x"))
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a results table written by `equiproj sweep` .*run_id"):
        report(str(tmp_path / "bad.csv"), into=str(tmp_path / "x"))


def test_defect_history_is_recorded_by_fit(tmp_path):
    cfg = _cfg(steps=30)
    run(cfg, str(tmp_path), progress=False)
    res = json.loads((tmp_path / "runs" / cfg.run_id() / "result.json").read_text())
    hist = res["history"]["defects"]
    assert [h["step"] for h in hist] == [0] + [h["step"] for h in res["history"]["train"]]
    assert set(hist[0]) == {"step", "l1", "l2"}
    layers = json.loads((tmp_path / "runs" / cfg.run_id() / "layers.json").read_text())
    assert hist[-1]["l1"] == pytest.approx(layers[0]["relative_defect"], rel=1e-6)
    assert hist[-1]["l1"] < hist[1]["l1"]  # the penalty pulls the layer towards equivariance


# ---------------------------------------------------------------------------- processes


def _sweep_child(argv, counter):
    """A sweep in a forked child (no new interpreter to start): every training is counted."""
    import equiproj.experiments._core as core

    orig = core._train_and_measure

    def counted(exp, cfg, *a, **k):
        with open(counter, "a") as f:
            f.write(cfg.run_id() + "\n")
        return orig(exp, cfg, *a, **k)

    core._train_and_measure = counted
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os._exit(main(argv))


def _fork(argv, counter):
    import multiprocessing

    p = multiprocessing.get_context("fork").Process(target=_sweep_child, args=(argv, str(counter)))
    p.start()
    return p


def _sweep_argv(out, steps=40):
    return ["sweep", "so2-toy", "--methods", "projection", "--lambda-perp", "0", "0.1", "1", "--steps", str(steps),
            "--quiet", "--out", str(out)]


pytestmark_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


@pytestmark_fork
def test_sigkilled_sweep_resumes_without_lost_or_duplicated_rows(tmp_path):
    out, counter = tmp_path / "killed", tmp_path / "count.txt"
    argv = _sweep_argv(out)
    runs = out / "runs"

    def start_and_kill(when):
        p = _fork(argv, counter)
        deadline = time.monotonic() + 60
        while p.is_alive() and not when() and time.monotonic() < deadline:
            time.sleep(0.002)
        if p.is_alive():
            os.kill(p.pid, signal.SIGKILL)
        p.join()
        return p.exitcode

    # killed inside the first run (at its first checkpoint, step 37 of 40), after the first finished
    # run, and inside the last run; then completed
    codes = [start_and_kill(lambda: any(runs.glob("*/checkpoint.pt"))),
             start_and_kill(lambda: len(list(runs.glob("*/metrics.json"))) >= 1),
             start_and_kill(lambda: len(list(runs.glob("*/checkpoint.pt"))) >= 3)]
    assert -signal.SIGKILL in codes  # at least one kill landed before the sweep had finished
    p = _fork(argv, counter)
    p.join(120)
    assert p.exitcode == 0
    rows = (out / "results.csv").read_text().strip().splitlines()
    assert len(rows) == 4 and len({row.split(",")[0] for row in rows[1:]}) == 3
    ref = sweep("so2-toy", str(tmp_path / "ref"), {"method": ["projection"], "lambda_perp": [0.0, 0.1, 1.0]},
                dict(steps=40), progress=False)
    for want in ref:
        got = json.loads((runs / want["run_id"] / "metrics.json").read_text())
        assert _same_metrics(got, want), want["run_id"]


@pytestmark_fork
def test_two_concurrent_sweeps_train_every_run_once(tmp_path):
    out, counter = tmp_path / "shared", tmp_path / "count.txt"
    procs = [_fork(_sweep_argv(out), counter) for _ in range(2)]
    for p in procs:
        p.join(180)
    assert [p.exitcode for p in procs] == [0, 0]
    trained = counter.read_text().split()
    assert len(trained) == 3 and len(set(trained)) == 3  # each run trained by exactly one of the sweeps
    assert len((out / "results.csv").read_text().strip().splitlines()) == 4


_DDP_SCRIPT = r"""
import json, os, sys
rank = int(os.environ["RANK"])
log = sys.argv[1]
sys.stdout = open(os.path.join(log, f"stdout{rank}.txt"), "w")
import equiproj._io as eio
import equiproj.experiments._core as core
orig_write = eio.atomic_write_bytes
def logged(path, *a, **k):
    with open(os.path.join(log, f"writes{rank}.txt"), "a") as f:
        f.write(str(path) + "\n")
    return orig_write(path, *a, **k)
eio.atomic_write_bytes = logged
orig_tm = core._train_and_measure
def measured(*a, **k):
    row = orig_tm(*a, **k)
    with open(os.path.join(log, f"row{rank}.json"), "w") as f:
        json.dump({k: v for k, v in row.items() if isinstance(v, (int, float, str))}, f)
    return row
core._train_and_measure = measured
from equiproj.cli import main
rc = main(sys.argv[2:])
sys.stdout.flush()
sys.exit(rc)
"""


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_gloo_processes_one_writer_identical_metrics(tmp_path):
    log, out = tmp_path / "log", tmp_path / "out"
    log.mkdir()
    script = tmp_path / "ddp.py"
    script.write_text(_DDP_SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port()),
           str(script), str(log), "run", "so2-toy", "--steps", "6", "--quiet", "--out", str(out)]
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    # one writer: rank 0 wrote every file once, rank 1 nothing
    writes = (log / "writes0.txt").read_text().split()
    assert not (log / "writes1.txt").exists()
    names = [Path(w).name for w in writes if "/runs/" in w]
    assert sorted(names) == sorted(set(names)) and {"metrics.json", "model.pt", "result.json"} <= set(names)
    # identical metrics on the ranks, printed by rank 0 only
    r0, r1 = (json.loads((log / f"row{i}.json").read_text()) for i in range(2))
    assert _same_metrics(r0, r1) and r0["ranks_agree"] is True
    assert "train_accuracy" in (log / "stdout0.txt").read_text() and (log / "stdout1.txt").read_text() == ""
    # the world size is part of the run's identity: a single-process run does not reuse it
    row = json.loads(next(out.glob("runs/*/metrics.json")).read_text())
    assert row["world_size"] == 2 and "ws2" in row["run_id"]
    assert RunConfig("so2-toy", steps=6).run_id() != row["run_id"]


def test_non_finite_final_weights_stop_fit_and_keep_the_checkpoint(tmp_path):
    from equiproj.train import TrainConfig, fit

    x = torch.linspace(-1, 1, 16)[:, None]
    model = torch.nn.Linear(1, 1)
    cfg = TrainConfig(steps=4, batch_size=8, lr=0.1, checkpoint_every=2, device="cpu")

    def poison(step, state):  # after the last checkpoint: the loss was finite, the weights are not
        if step == 4:
            with torch.no_grad():
                state.model.weight.fill_(float("inf"))

    mse = lambda m, b: torch.nn.functional.mse_loss(m(b[0]), 3 * b[0])  # noqa: E731
    with pytest.raises(FloatingPointError, match="weights are not finite after step 4"):
        fit(model, (x,), cfg, mse, tmp_path, callbacks=[poison], progress=False)
    assert not (tmp_path / "model.pt").exists() and not (tmp_path / "result.json").exists()
    assert fit(torch.nn.Linear(1, 1), (x,), cfg, mse, tmp_path, progress=False)["status"] == "finished"


def test_thread_count_is_part_of_the_identity():
    one, default, four = (RunConfig("so2-toy", threads=t) for t in (1, None, 4))
    assert one.run_id() == default.run_id() != four.run_id() and "t4" in four.run_id()


def test_bad_folder_in_a_sweep_is_listed_and_skip_bad_goes_on(tmp_path):
    grid = {"method": ["projection"], "lambda_perp": [0.0, 1.0]}
    sweep("so2-toy", str(tmp_path), grid, dict(steps=4), progress=False)
    junk = tmp_path / "runs" / "old_run"
    junk.mkdir()
    (junk / "metrics.json").write_text("{")
    with pytest.raises(BadRunFolders, match="old_run"):
        sweep("so2-toy", str(tmp_path), grid, dict(steps=4), progress=False)
    assert len(sweep("so2-toy", str(tmp_path), grid, dict(steps=4), progress=False, skip_bad=True)) == 2
    atomic_write_json(junk / "metrics.json", {"x": 1})
    with pytest.raises(BadRunFolders, match="lacks the field"):
        sweep("so2-toy", str(tmp_path), grid, dict(steps=4), progress=False)


def test_demo_states_runs_threads_and_expected_time_before_it_starts(tmp_path, monkeypatch, capsys):
    import equiproj.experiments.demo as demo_mod

    calls = []
    monkeypatch.setattr(demo_mod, "sweep", lambda name, out, grid, base, progress: calls.append(base) or [])
    monkeypatch.setattr(demo_mod, "report", lambda out: "# r\n")
    demo_mod.demo(str(tmp_path), progress=True)
    err = capsys.readouterr().err
    first = err.splitlines()[0]  # 6 + 1 + 9 so2-toy runs, 2 + 2 + 4 vectors runs
    assert first.startswith("equiproj demo: 24 runs, 0 already finished; about") and "1 thread(s)" in first
    assert int(first.split("about ")[1].split(" ")[0]) >= 5  # the vectors runs alone take minutes
    assert "[1/5] so2-toy" in err and "[5/5] vectors" in err
    assert all(b["threads"] is None for b in calls)  # None: one thread on a CPU (see RunConfig.key)
    demo_mod.demo(str(tmp_path), progress=False, threads=3)
    assert all(b["threads"] == 3 for b in calls[5:])
