"""The training loop: learning, results, checkpoint and resume, atomic files, DDP on CPU, errors."""

from __future__ import annotations

import csv
import json
import os
import socket
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

import equiproj._io as eio
from equiproj import ProjectionRegulariser
from equiproj._io import append_csv_row, atomic_torch_save, atomic_write_json, atomic_write_text
from equiproj.groups import cyclic
from equiproj.nn import RepLinear
from equiproj.train import (CHECKPOINT_NAME, MODEL_NAME, RESULT_NAME, StopTraining, TrainConfig, fit,
                            is_main_process, record_result, seed_everything, select_device)

G = cyclic(4)
R = G.regular()

RESULT_KEYS = {"status", "config", "config_hash", "steps", "epochs", "final", "history", "wall_time_s",
               "train_time_s", "eval_time_s", "time_per_step_s", "samples_per_s", "device", "world_size",
               "amp_active", "resumes", "out_dir", "torch_version"}


def make_data(n=64, seed=0, dtype=torch.float32):
    """Inputs on 2 regular fields of C4, targets on one: an equivariant map plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g, dtype=dtype)
    y = x[:, :4].roll(1, dims=1) - 0.5 * x[:, 4:] + 0.01 * torch.randn(n, 4, generator=g, dtype=dtype)
    return x, y


def make_model(seed=0, dropout=0.0, dtype=torch.float32):
    seed_everything(seed)
    layers = [RepLinear(2 * R, 2 * R, dtype=dtype), nn.ReLU()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(RepLinear(2 * R, R, dtype=dtype))
    return nn.Sequential(*layers)


def mse(model, batch):
    x, y = batch[0], batch[1]
    return nn.functional.mse_loss(model(x), y)


def make_eval(x, y):
    def eval_fn(model):
        noise = torch.randn(1)  # draws from the global generator: fit must shield training from it
        return {"mse": float(nn.functional.mse_loss(model(x), y)), "noise": float(noise)}
    return eval_fn


def weights_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ----------------------------------------------------------------------------------------------
# learning and results
# ----------------------------------------------------------------------------------------------

def test_fit_learns_logs_penalty_and_writes_result(tmp_path):
    x, y = make_data()
    model = make_model()
    reg = ProjectionRegulariser(model, lambda_perp=0.3, scheme="penalty")  # from a random, non-equivariant start
    cfg = TrainConfig(steps=40, batch_size=16, lr=0.02, log_every=5, eval_every=20, checkpoint_every=20,
                      device="cpu", meta={"lambda_perp": 0.3})
    out = tmp_path / "run"
    res = fit(model, (x, y), cfg, mse, out, regulariser=reg, eval_fn=make_eval(x, y), progress=False)

    train = res["history"]["train"]
    assert [e["step"] for e in train] == list(range(5, 41, 5))
    assert train[-1]["task_loss"] < 0.3 * train[0]["task_loss"]
    for e in train:  # the penalty is logged separately and adds up
        assert e["penalty"] > 0
        assert e["loss"] == pytest.approx(e["task_loss"] + e["penalty"], rel=1e-6)
    # the regulariser pulls towards equivariance: less defect than the same run without it
    free = make_model()
    fit(free, (x, y), cfg, mse, None, progress=False)
    assert float(reg.penalty().detach()) < 0.5 * float(ProjectionRegulariser(free, lambda_perp=0.3).penalty().detach())
    assert [e["step"] for e in res["history"]["eval"]] == [20, 40]
    assert res["final"]["eval"]["mse"] == res["history"]["eval"][-1]["mse"]
    assert set(res["final"]["train"]) == {"task_loss", "penalty", "loss", "lr"}

    stored = json.loads((out / RESULT_NAME).read_text())
    assert RESULT_KEYS <= set(stored)
    assert stored["status"] == "finished" and stored["steps"] == 40 and stored["world_size"] == 1
    assert stored["config"] == cfg.to_dict() and stored["config_hash"] == cfg.hash
    assert stored["samples_per_s"] > 0 and stored["time_per_step_s"] > 0
    assert stored["epochs"] == pytest.approx(40 / 4)
    assert stored["history"] == res["history"]
    assert (out / CHECKPOINT_NAME).exists()
    final = torch.load(out / MODEL_NAME, weights_only=True)
    assert all(torch.equal(final[k], v) for k, v in model.state_dict().items())

    # the aggregate CSV over runs
    csv_path = tmp_path / "runs.csv"
    row = record_result(csv_path, res, method="proj")
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["method"] == "proj" and rows[0]["meta.lambda_perp"] == "0.3"
    assert float(rows[0]["train_loss"]) == pytest.approx(row["train_loss"])
    assert float(rows[0]["eval_mse"]) == pytest.approx(res["final"]["eval"]["mse"])
    assert rows[0]["device"] == "cpu" and rows[0]["device_description"].startswith("CPU")
    assert "history" not in rows[0] and rows[0]["steps"] == "40"


def test_options_schedules_and_regulariser_interface():
    x, y = make_data(n=32)
    calls = []

    class BatchReg:
        needs_batch = True

        def __init__(self, model):
            self.model = model

        def penalty(self, batch):
            calls.append(batch)
            return 1e-3 * self.model[0].weight.pow(2).sum()

    for opt, sched in (("sgd", "cosine"), ("adamw", "constant")):
        model = make_model()
        cfg = TrainConfig(steps=6, batch_size=8, lr=0.05, optimizer=opt, schedule=sched, warmup_steps=2,
                          weight_decay=1e-4, grad_clip=1.0, log_every=1, checkpoint_every=0, device="cpu")
        res = fit(model, (x, y), cfg, mse, None, regulariser=BatchReg(model), progress=False)
        lrs = [e["lr"] for e in res["history"]["train"]]
        assert lrs[0] == pytest.approx(0.05)  # step 1 ran at lr/2 (warm-up), the logged lr is the next one
        if sched == "cosine":
            assert lrs[-1] == pytest.approx(0.0, abs=1e-12) and lrs[2] < lrs[1]
        else:
            assert lrs[-1] == pytest.approx(0.05)
    assert len(calls) == 12 and all(isinstance(b, list) and len(b) == 2 for b in calls)

    # a data-free regulariser gets None
    model = make_model()
    seen = []
    reg = ProjectionRegulariser(model, lambda_perp=0.1)
    orig = reg.penalty

    def spy(batch=None):
        seen.append(batch)
        return orig(batch)

    reg.penalty = spy
    fit(model, (x, y), TrainConfig(steps=2, batch_size=8, device="cpu"), mse, None, regulariser=reg,
        progress=False)
    assert seen == [None, None]

    # amp is CUDA-only: on CPU it warns and stays off
    with pytest.warns(UserWarning, match="amp"):
        res = fit(make_model(), (x, y), TrainConfig(steps=1, batch_size=8, amp=True, device="cpu"), mse, None,
                  progress=False)
    assert res["amp_active"] is False


def test_step_schedule_decays_every_lr_step_size_and_leaves_other_hashes_alone(tmp_path):
    x, y = make_data(n=32)
    cfg = TrainConfig(steps=9, batch_size=8, lr=0.1, schedule="step", lr_step_size=3, lr_gamma=0.5,
                      warmup_steps=1, log_every=1, checkpoint_every=0, device="cpu")
    res = fit(make_model(), (x, y), cfg, mse, None, progress=False)
    lrs = [e["lr"] for e in res["history"]["train"]]  # the lr of the next step
    expected = [0.1 * 0.5 ** ((s - 1) // 3) for s in range(1, 10)]
    assert lrs == pytest.approx(expected)
    # the step fields enter the hash only under the step schedule
    assert TrainConfig(lr_gamma=0.3).hash == TrainConfig().hash
    assert TrainConfig(schedule="step", lr_step_size=3).hash != TrainConfig(schedule="step", lr_step_size=4).hash
    # and a resumed run under it equals an uninterrupted one
    a, b = make_model(), make_model()
    cfg = TrainConfig(steps=10, batch_size=8, lr=0.05, schedule="step", lr_step_size=2, lr_gamma=0.7,
                      checkpoint_every=4, device="cpu")

    def stop(step, state):
        if step == 6:
            raise StopTraining()

    fit(a, (x, y), cfg, mse, tmp_path / "a", progress=False)
    assert fit(b, (x, y), cfg, mse, tmp_path / "b", callbacks=[stop], progress=False)["status"] == "interrupted"
    fit(b, (x, y), cfg, mse, tmp_path / "b", progress=False)
    assert weights_equal(a, b)


# ----------------------------------------------------------------------------------------------
# checkpoint and resume
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("interrupt", ["StopTraining", "KeyboardInterrupt"])
def test_resume_equals_uninterrupted_run(tmp_path, interrupt):
    x, y = make_data(n=60)  # batch 16: 4 batches per epoch, the last one short
    # dropout and an eval that draws random numbers: the random states must be restored exactly
    cfg = TrainConfig(steps=22, batch_size=16, lr=0.02, log_every=4, eval_every=5, checkpoint_every=6,
                      device="cpu")
    ev = make_eval(x, y)

    a = make_model(dropout=0.2)
    res_a = fit(a, (x, y), cfg, mse, tmp_path / "a", regulariser=ProjectionRegulariser(a, lambda_perp=0.1),
                eval_fn=ev, progress=False)

    steps_seen = []

    def stop_at_9(step, state):
        steps_seen.append(step)
        if step == 9:
            assert state.checkpoint_step == 6 and state.epoch == 2 and state.batch_in_epoch == 1
            raise StopTraining() if interrupt == "StopTraining" else KeyboardInterrupt()

    b = make_model(dropout=0.2)
    reg_b = ProjectionRegulariser(b, lambda_perp=0.1)
    if interrupt == "StopTraining":
        part = fit(b, (x, y), cfg, mse, tmp_path / "b", regulariser=reg_b, eval_fn=ev, callbacks=[stop_at_9],
                   progress=False)
        assert part["status"] == "interrupted" and part["step"] == 9 and part["checkpoint_step"] == 6
    else:
        with pytest.raises(KeyboardInterrupt):
            fit(b, (x, y), cfg, mse, tmp_path / "b", regulariser=reg_b, eval_fn=ev, callbacks=[stop_at_9],
                progress=False)
    assert steps_seen == list(range(1, 10))
    assert not (tmp_path / "b" / RESULT_NAME).exists()
    ckpt = torch.load(tmp_path / "b" / CHECKPOINT_NAME, weights_only=True)
    assert ckpt["step"] == 6 and [e["step"] for e in ckpt["history"]["train"]] == [4]

    # a new process would build a fresh model: start from other weights to be sure they are restored
    c = make_model(seed=123, dropout=0.2)
    steps_seen.clear()
    res_c = fit(c, (x, y), cfg, mse, tmp_path / "b", regulariser=ProjectionRegulariser(c, lambda_perp=0.1),
                eval_fn=ev, callbacks=[lambda s, st: steps_seen.append(s)], progress=False)
    assert steps_seen == list(range(7, 23))
    assert res_c["status"] == "finished" and res_c["steps"] == 22 and res_c["resumes"] == 1
    assert weights_equal(a, c)
    assert res_c["history"] == res_a["history"]  # logged means, lr and eval continue seamlessly
    assert [e["step"] for e in res_c["history"]["train"]] == [4, 8, 12, 16, 20, 22]


def test_finished_run_is_not_retrained(tmp_path):
    x, y = make_data(n=32)
    cfg = TrainConfig(steps=8, batch_size=8, lr=0.05, device="cpu")
    a = make_model()
    res_a = fit(a, (x, y), cfg, mse, tmp_path, progress=False)

    calls = []

    def counting_loss(model, batch):
        calls.append(1)
        return mse(model, batch)

    b = make_model(seed=5)
    t0 = time.perf_counter()
    res_b = fit(b, (x, y), cfg, counting_loss, tmp_path, progress=False)
    assert calls == [] and time.perf_counter() - t0 < 1.0
    assert res_b == res_a
    assert weights_equal(a, b)  # the final weights are loaded into the model


def test_other_config_in_out_dir_raises(tmp_path):
    x, y = make_data(n=32)
    cfg = TrainConfig(steps=8, batch_size=8, lr=0.05, checkpoint_every=2, device="cpu")
    fit(make_model(), (x, y), cfg, mse, tmp_path / "done", progress=False)
    with pytest.raises(ValueError, match=r"different configuration.*lr: 0\.05 -> 0\.1.*another out_dir"):
        fit(make_model(), (x, y), TrainConfig(steps=8, batch_size=8, lr=0.1, device="cpu"), mse,
            tmp_path / "done", progress=False)

    def stop(step, state):
        if step == 3:
            raise StopTraining

    fit(make_model(), (x, y), cfg, mse, tmp_path / "part", callbacks=[stop], progress=False)
    with pytest.raises(ValueError, match=r"checkpoint of a different configuration.*steps: 8 -> 9.*delete"):
        fit(make_model(), (x, y), TrainConfig(steps=9, batch_size=8, lr=0.05, checkpoint_every=2, device="cpu"),
            mse, tmp_path / "part", progress=False)
    # a different checkpoint frequency is the same run
    res = fit(make_model(), (x, y), TrainConfig(steps=8, batch_size=8, lr=0.05, checkpoint_every=4, device="cpu"),
              mse, tmp_path / "part", progress=False)
    assert res["resumes"] == 1 and res["steps"] == 8


# ----------------------------------------------------------------------------------------------
# atomic files
# ----------------------------------------------------------------------------------------------

def test_append_csv_row_unions_headers(tmp_path):
    path = tmp_path / "sub" / "runs.csv"
    append_csv_row(path, {"run": "a", "loss": 0.5})
    append_csv_row(path, {"acc": 0.9, "run": "b"})
    append_csv_row(path, {"run": "c", "loss": None, "note": "x,y"})
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == ["run", "loss", "acc", "note"]
    assert rows == [{"run": "a", "loss": "0.5", "acc": "", "note": ""},
                    {"run": "b", "loss": "", "acc": "0.9", "note": ""},
                    {"run": "c", "loss": "", "acc": "", "note": "x,y"}]
    with pytest.raises(ValueError):
        append_csv_row(path, {})


def test_failed_write_leaves_previous_file_intact(tmp_path, monkeypatch):
    txt, js, pt, cs = (tmp_path / n for n in ("a.txt", "a.json", "a.pt", "a.csv"))
    atomic_write_text(txt, "old")
    atomic_write_json(js, {"v": 1})
    atomic_torch_save({"v": torch.ones(2)}, pt)
    append_csv_row(cs, {"v": 1})
    before = {p: p.read_bytes() for p in (txt, js, pt, cs)}
    assert txt.stat().st_mode & 0o777 == eio._default_mode()  # not mkstemp's owner-only mode

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(eio.os, "replace", broken_replace)
    for write in (lambda: atomic_write_text(txt, "new"), lambda: atomic_write_json(js, {"v": 2}),
                  lambda: atomic_torch_save({"v": torch.zeros(2)}, pt), lambda: append_csv_row(cs, {"w": 2})):
        with pytest.raises(OSError, match="disk full"):
            write()
    monkeypatch.undo()
    # an unserialisable object fails before the file is touched
    with pytest.raises(TypeError):
        atomic_write_json(js, {"v": object()})
    assert {p: p.read_bytes() for p in before} == before
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp"))
    assert leftovers == []


def test_checkpoint_write_failure_keeps_previous_checkpoint(tmp_path, monkeypatch):
    x, y = make_data(n=32)
    cfg = TrainConfig(steps=8, batch_size=8, lr=0.05, checkpoint_every=3, device="cpu")
    real_replace = os.replace
    n = {"ckpt": 0}

    def replace_failing_second_checkpoint(src, dst):
        if str(dst).endswith(CHECKPOINT_NAME):
            n["ckpt"] += 1
            if n["ckpt"] == 2:
                raise OSError("killed while saving")
        return real_replace(src, dst)

    monkeypatch.setattr(eio.os, "replace", replace_failing_second_checkpoint)
    with pytest.raises(OSError, match="killed"):
        fit(make_model(), (x, y), cfg, mse, tmp_path, progress=False)
    monkeypatch.undo()
    assert torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)["step"] == 3
    ref = make_model()
    fit(ref, (x, y), cfg, mse, tmp_path / "ref", progress=False)
    again = make_model(seed=9)
    res = fit(again, (x, y), cfg, mse, tmp_path, progress=False)
    assert res["resumes"] == 1 and weights_equal(ref, again)


# ----------------------------------------------------------------------------------------------
# DDP on CPU (gloo, two processes)
# ----------------------------------------------------------------------------------------------

DDP_N, DDP_BATCH, DDP_STEPS = 64, 8, 7


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_config(batch_size):
    return TrainConfig(steps=DDP_STEPS, batch_size=batch_size, lr=0.02, log_every=2, checkpoint_every=3,
                       device="cpu", seed=1)


def _ddp_worker(rank, world, ports, tmp):
    """One rank: train to step 4 through the torchrun-style environment (interrupted), then resume
    in a process group initialised by hand, and save what the test compares."""
    import datetime

    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(ports[0]), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    x, y = make_data(n=DDP_N, dtype=torch.float64)
    idx = torch.arange(DDP_N)
    model = make_model(seed=rank, dtype=torch.float64)  # different on purpose: DDP starts from rank 0's
    reg = ProjectionRegulariser(model, lambda_perp=0.1)
    seen = []

    def loss_fn(m, batch):
        seen.append(batch[2].tolist())
        return mse(m, batch)

    def stop(step, state):
        if step == 4:
            raise StopTraining

    out = Path(tmp) / "run"
    cfg = _ddp_config(DDP_BATCH)
    part = fit(model, (x, y, idx), cfg, loss_fn, out, regulariser=reg, callbacks=[stop], progress=False)
    assert part["status"] == "interrupted" and part["checkpoint_step"] == 3
    assert not dist.is_initialized()  # fit started the group, so fit closed it
    main_in_fit = []
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{ports[1]}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    res = fit(model, (x, y, idx), cfg, loss_fn, out, regulariser=reg, progress=False,
              callbacks=[lambda s, st: main_in_fit.append(is_main_process())])
    assert dist.is_initialized()  # a group started by the caller stays open
    dist.destroy_process_group()
    torch.save({"state": model.state_dict(), "penalty": float(reg.penalty().detach()), "seen": seen, "result": res,
                "main": main_in_fit}, Path(tmp) / f"rank{rank}.pt")


def test_ddp_two_cpu_processes_match_single_process(tmp_path):
    world = 2
    ports = (_free_port(), _free_port())
    ctx = mp.spawn(_ddp_worker, args=(world, ports, str(tmp_path)), nprocs=world, join=False)
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the DDP workers did not finish within 120 s")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world))

    # identical weights and penalty on both ranks
    assert all(torch.equal(r0["state"][k], r1["state"][k]) for k in r0["state"])
    assert r0["penalty"] == r1["penalty"]
    assert r0["main"] == [True] * 4 and r1["main"] == [False] * 4
    # every rank saw its own shard: steps 1-4 of the first run, then steps 4-7 after resuming at 3
    first_epoch = DDP_N // (world * DDP_BATCH)
    s0 = [i for b in r0["seen"][:first_epoch] for i in b]
    s1 = [i for b in r1["seen"][:first_epoch] for i in b]
    assert not set(s0) & set(s1) and sorted(s0 + s1) == list(range(DDP_N))
    assert len(r0["seen"]) == 4 + (DDP_STEPS - 3) and r0["seen"][3] == r0["seen"][4]  # step 4 done twice
    # only rank 0 wrote, and it recorded both processes
    res = json.loads((tmp_path / "run" / RESULT_NAME).read_text())
    assert res["world_size"] == 2 and res["resumes"] == 1 and res["steps"] == DDP_STEPS
    assert len(torch.load(tmp_path / "run" / CHECKPOINT_NAME, weights_only=True)["ranks"]) == 2
    assert r1["result"]["history"] == res["history"]  # reduced metrics agree on every rank

    # one process with the doubled batch takes the same steps (the shards interleave one permutation)
    ref = make_model(seed=0, dtype=torch.float64)
    x, y = make_data(n=DDP_N, dtype=torch.float64)
    ref_res = fit(ref, (x, y), _ddp_config(2 * DDP_BATCH), mse, tmp_path / "single",
                  regulariser=ProjectionRegulariser(ref, lambda_perp=0.1), progress=False)
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(r0["state"][k], v, rtol=1e-9, atol=1e-11)
    for a, b in zip(ref_res["history"]["train"], res["history"]["train"]):
        assert a["step"] == b["step"] and a["loss"] == pytest.approx(b["loss"], rel=1e-9)


# ----------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value, expected", [
    ("steps", 0, "an integer >= 1"),
    ("steps", 2.5, "an integer >= 1"),
    ("steps", True, "an integer >= 1"),
    ("batch_size", -4, "an integer >= 1"),
    ("lr", 0.0, "a finite number > 0"),
    ("lr", float("nan"), "a finite number > 0"),
    ("optimizer", "lbfgs", "one of 'adam', 'adamw', 'sgd'"),
    ("schedule", "linear", "one of 'constant', 'cosine', 'step'"),
    ("schedule", "step", None),  # without lr_step_size: named below
    ("lr_gamma", 1.5, "a factor in (0, 1]"),
    ("lr_gamma", 0.0, "a finite number > 0"),
    ("lr_step_size", -1, "an integer >= 0"),
    ("weight_decay", -1e-4, "a finite number >= 0"),
    ("eval_every", -1, "an integer >= 0"),
    ("log_every", 0, "an integer >= 1"),
    ("device", "tpu", "'auto', 'cpu', 'cuda' or 'cuda:<index>'"),
    ("amp", "yes", "True or False"),
    ("amp_dtype", "fp8", "one of 'bf16', 'fp16'"),
    ("grad_clip", 0, "a finite number > 0"),
    ("num_workers", -2, "an integer >= 0"),
    ("warmup_steps", 1000, "fewer than steps=1000"),
    ("meta", {"f": object()}, "a JSON-serialisable dict"),
])
def test_bad_config_values_name_the_field(field, value, expected):
    with pytest.raises(ValueError) as info:
        TrainConfig(**{field: value})
    msg = str(info.value)
    if expected is None:  # schedule="step" needs lr_step_size: that field is named
        assert msg.startswith("TrainConfig.lr_step_size: expected the steps between two decays")
        return
    assert msg.startswith(f"TrainConfig.{field}: expected {expected}")
    if field != "meta":
        assert msg.endswith(f"got {value!r}")


def test_unknown_config_field_and_bad_inputs():
    with pytest.raises(ValueError, match="unknown field.*'stepz'"):
        TrainConfig.from_dict({"stepz": 3})
    x, y = make_data(n=16)
    cfg = TrainConfig(steps=1, batch_size=4, device="cpu")
    with pytest.raises(ValueError, match="different first dimensions"):
        fit(make_model(), (x, y[:8]), cfg, mse, None, progress=False)
    with pytest.raises(TypeError, match="scalar tensor"):
        fit(make_model(), (x, y), cfg, lambda m, b: m(b[0]), None, progress=False)
    with pytest.raises(TypeError, match="penalty"):
        fit(make_model(), (x, y), cfg, mse, None, regulariser=object(), progress=False)


def test_diverging_run_stops_with_a_clear_error(tmp_path):
    x, y = make_data(n=32)
    y = y.clone()
    y[0] = float("inf")  # one corrupt target makes the loss infinite in the batch that holds it
    cfg = TrainConfig(steps=20, batch_size=8, log_every=5, checkpoint_every=5, device="cpu")
    with pytest.raises(FloatingPointError, match=r"not finite in the steps up to 5 .*grad_clip"):
        fit(make_model(), (x, y), cfg, mse, tmp_path / "run", progress=False)
    # nothing half-written: no result, and no checkpoint of the diverged weights
    assert not (tmp_path / "run" / RESULT_NAME).exists()
    assert not (tmp_path / "run" / CHECKPOINT_NAME).exists()


def test_cuda_requested_without_cuda(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for spec in ("cuda", "cuda:1"):
        with pytest.raises(RuntimeError, match=rf"device '{spec}' was requested but CUDA is not available"):
            select_device(spec)
    assert select_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="'auto', 'cpu', 'cuda' or 'cuda:<index>'"):
        select_device("gpu")
    x, y = make_data(n=16)
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        fit(make_model(), (x, y), TrainConfig(steps=1, batch_size=4, device="cuda"), mse, tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_progress_bar_with_and_without_tqdm(monkeypatch, capsys):
    x, y = make_data(n=16)
    cfg = TrainConfig(steps=3, batch_size=8, log_every=1, device="cpu")
    fit(make_model(), (x, y), cfg, mse, None, progress=True)
    assert "train" in capsys.readouterr().err  # the tqdm bar
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # tqdm not installed: no bar, no error
    res = fit(make_model(), (x, y), cfg, mse, None, progress=True)
    assert res["status"] == "finished" and capsys.readouterr().err == ""


# ----------------------------------------------------------------------------------------------
# model selection and early stopping
# ----------------------------------------------------------------------------------------------

def test_model_selection_keeps_the_best_evaluation_and_resumes(tmp_path):
    from equiproj.train import BEST_MODEL_NAME, load_best_model

    x, y = make_data(n=48)
    xv, yv = make_data(n=32, seed=9)
    yv = 0.4 * yv  # training passes by this target on its way to the training one: the best is in between

    def ev(m):
        return {"val_mse": float(nn.functional.mse_loss(m(xv), yv))}

    cfg = TrainConfig(steps=30, batch_size=16, lr=0.2, eval_every=3, checkpoint_every=7, select="val_mse",
                      device="cpu")
    snapshots = {}

    def keep(step, state):
        snapshots[step] = {k: v.clone() for k, v in state.model.state_dict().items()}

    a = make_model()
    res = fit(a, (x, y), cfg, mse, tmp_path / "a", eval_fn=ev, callbacks=[keep], progress=False)
    evals = {e["step"]: e["val_mse"] for e in res["history"]["eval"]}
    best_step = min(evals, key=evals.get)
    assert res["selected"] == {"metric": "val_mse", "step": best_step, "value": evals[best_step]}
    assert 3 < best_step < 30  # (else the test says nothing)
    b = make_model(seed=4)
    assert load_best_model(b, tmp_path / "a")["step"] == best_step
    assert all(torch.equal(b.state_dict()[k], snapshots[best_step][k]) for k in snapshots[best_step])
    # interrupted after the best evaluation and resumed: the same selection and weights
    def stop(step, state):
        if step == 17:
            raise StopTraining
    c = make_model()
    fit(c, (x, y), cfg, mse, tmp_path / "c", eval_fn=ev, callbacks=[stop], progress=False)
    res_c = fit(make_model(seed=2), (x, y), cfg, mse, tmp_path / "c", eval_fn=ev, progress=False)
    assert res_c["selected"] == res["selected"]
    sa = torch.load(tmp_path / "a" / BEST_MODEL_NAME, weights_only=True)
    sc = torch.load(tmp_path / "c" / BEST_MODEL_NAME, weights_only=True)
    assert all(torch.equal(sa[k], sc[k]) for k in sa)


def test_early_stopping_and_maximised_metric(tmp_path):
    x, y = make_data(n=32)
    calls = []

    def rising(m):  # best at the first evaluation, then worse and worse
        calls.append(1)
        return {"score": -float(len(calls))}

    cfg = TrainConfig(steps=100, batch_size=8, lr=0.05, eval_every=2, select="-score", patience=3, device="cpu")
    res = fit(make_model(), (x, y), cfg, mse, tmp_path, eval_fn=rising, progress=False)
    assert res["stopped_early"] and res["steps"] == 8 and res["selected"]["step"] == 2
    assert res["history"]["train"][-1]["step"] == 8
    with pytest.raises(ValueError, match="TrainConfig.patience: expected None unless select"):
        TrainConfig(patience=3)
    with pytest.raises(ValueError, match="eval_fn returned no metric 'acc'; it returned"):
        fit(make_model(), (x, y), TrainConfig(steps=4, batch_size=8, eval_every=2, select="-acc", device="cpu"),
            mse, None, eval_fn=rising, progress=False)
