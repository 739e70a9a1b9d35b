"""The training loop: data loading, optimiser and schedule, :func:`fit`."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, TensorDataset

from .._io import atomic_torch_save, atomic_write_json
from ._config import TrainConfig, _as_config
from ._distributed import _all_gather_object, _broadcast_object, _Dist, _dist_ready, _dist_setup, _mean_across_ranks, device_description
from ._results import _CHECKPOINT_FORMAT, BEST_MODEL_NAME, CHECKPOINT_NAME, MODEL_NAME, RESULT_NAME, load_result
from ._state import RunFolderError, StopTraining, TrainState, _check_start, _load_weights, _rng_state, _set_rng_state, seed_everything

__all__ = ["fit", "load_best_model"]

log = logging.getLogger("equiproj.train")


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------

class _ResumableSampler(DistributedSampler):
    """A ``DistributedSampler`` (also used with one replica) that can start inside an epoch.

    The order of epoch ``e`` is a permutation drawn from ``seed + e`` only, so it is known again
    after a restart; every rank takes an interleaved shard of it.
    """

    def __init__(self, dataset, num_replicas: int, rank: int, shuffle: bool, seed: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.start = 0

    def set_start(self, start: int) -> None:
        self.start = int(start)

    def __iter__(self):
        return iter(list(super().__iter__())[self.start:])

    def __len__(self) -> int:
        return max(self.num_samples - self.start, 0)


def _worker_init(worker_id: int) -> None:  # pragma: no cover - runs in worker processes
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def _as_dataset(train_data) -> Dataset:
    if isinstance(train_data, DataLoader):
        raise TypeError("fit: pass the Dataset (or a tuple of tensors), not a DataLoader; fit builds its own "
                        "seeded, resumable loader")
    if isinstance(train_data, torch.Tensor):
        train_data = (train_data,)
    if isinstance(train_data, (tuple, list)):
        if not train_data or not all(isinstance(t, torch.Tensor) for t in train_data):
            raise TypeError("fit: train_data as a tuple must hold tensors (wrapped in a TensorDataset)")
        n = {len(t) for t in train_data}
        if len(n) != 1:
            raise ValueError(f"fit: the tensors of train_data have different first dimensions {sorted(n)}")
        return TensorDataset(*train_data)
    if isinstance(train_data, Dataset) and hasattr(train_data, "__len__"):
        return train_data
    raise TypeError(f"fit: train_data must be a map-style torch Dataset (with __len__) or a tuple of tensors, "
                    f"got {type(train_data).__name__}")


def _make_loader(dataset: Dataset, sampler: _ResumableSampler, config: TrainConfig, epoch: int, start_batch: int,
                 rank: int, pin: bool) -> DataLoader:
    sampler.set_epoch(epoch)
    sampler.set_start(start_batch * config.batch_size)
    # the loader draws its workers' base seed from this generator (never from the global one)
    g = torch.Generator()
    g.manual_seed((config.seed * 1_000_003 + epoch * 9_176 + rank) % 2**63)
    common = dict(num_workers=config.num_workers, pin_memory=pin, generator=g,
                  worker_init_fn=_worker_init if config.num_workers > 0 else None)
    if isinstance(dataset, TensorDataset):
        # index the tensors once per batch instead of once per sample
        batches = BatchSampler(sampler, config.batch_size, drop_last=config.drop_last)
        return DataLoader(dataset, sampler=batches, batch_size=None, **common)
    return DataLoader(dataset, sampler=sampler, batch_size=config.batch_size, drop_last=config.drop_last, **common)


def _to_device(batch, device: torch.device, non_blocking: bool):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, dict):
        return {k: _to_device(v, device, non_blocking) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(_to_device(v, device, non_blocking) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device, non_blocking) for v in batch)
    return batch


# ----------------------------------------------------------------------------------------------
# optimiser, schedule
# ----------------------------------------------------------------------------------------------

def _full_precision(t: torch.Tensor) -> torch.Tensor:
    """Half-precision losses (from autocast) in float32; float32 and float64 stay as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _make_optimizer(params, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def _lr_factor(config: TrainConfig) -> Callable[[int], float]:
    """The learning-rate multiplier at each step: linear warm-up, then constant, cosine or step decay."""
    steps, warm, schedule = config.steps, config.warmup_steps, config.schedule

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if schedule == "step":
            return config.lr_gamma ** ((step - warm) // config.lr_step_size)
        if schedule != "cosine":
            return 1.0
        t = min(max(step - warm, 0), steps - warm) / max(steps - warm, 1)
        return 0.5 * (1.0 + math.cos(math.pi * t))

    return factor


# ----------------------------------------------------------------------------------------------
# fit
# ----------------------------------------------------------------------------------------------

def _progress_bar(enabled: bool, total: int, initial: int):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except Exception:  # tqdm is optional: train silently without a bar
        return None
    return tqdm(total=total, initial=initial, desc="train", dynamic_ncols=True, leave=False)


def _floats(metrics: Any, where: str) -> Dict[str, float]:
    if not isinstance(metrics, dict):
        raise TypeError(f"{where} must return a dict of floats, got {type(metrics).__name__}")
    out = {}
    for k, v in metrics.items():
        if isinstance(v, torch.Tensor):
            if v.numel() != 1:
                raise TypeError(f"{where}: metric {k!r} is a tensor of shape {tuple(v.shape)}, expected a scalar")
            v = v.item()
        try:
            out[str(k)] = float(v)
        except (TypeError, ValueError):
            raise TypeError(f"{where}: metric {k!r} is not a number ({v!r})") from None
    return out


def fit(model: nn.Module, train_data, config: Union[TrainConfig, Dict[str, Any]],
        loss_fn: Callable[[nn.Module, Any], torch.Tensor], out_dir: Optional[Union[str, os.PathLike]],
        regulariser=None, eval_fn: Optional[Callable[[nn.Module], Dict[str, float]]] = None,
        callbacks: Optional[Sequence[Callable[[int, TrainState], None]]] = None, progress: bool = True,
        ddp_kwargs: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    r"""Train ``model`` for ``config.steps`` steps on ``loss_fn + regulariser.penalty``.

    Parameters
    ----------
    model : nn.Module
        Trained in place (moved to the device). Under DDP it is wrapped internally; pass the
        plain module.
    train_data : Dataset or tuple of tensors
        A map-style dataset, or tensors with a common first dimension (a ``TensorDataset``).
        Batches are drawn by a seeded sampler that reshuffles every epoch; under DDP every rank
        gets its own shard (a ``DistributedSampler``).
    config : TrainConfig or dict
    loss_fn : callable
        ``loss_fn(model, batch) -> scalar tensor``, the task loss. ``model`` is the module to
        call (the DDP wrapper under DDP); ``batch`` is what the loader yields, already on the
        device (for tensors: a list ``[x, y, ...]``).
    out_dir : str or path, optional
        The run folder (checkpoint, result, final weights); ``None`` writes nothing and never
        resumes.
    regulariser : object, optional
        Anything with ``penalty(batch) -> scalar tensor`` and a boolean ``needs_batch``
        (e.g. :class:`equiproj.ProjectionRegulariser`), built around the plain ``model``. The
        penalty receives the batch only when ``needs_batch`` is true, and is computed outside
        autocast (in the parameters' precision). If it has ``attach(optimizer)`` (the proximal
        schemes), it is called once the optimiser is built; if it has ``state_dict()`` and
        ``load_state_dict()``, that state is checkpointed and restored with the run. Within a
        step, parametrised weights (strict, split, RPP) are computed once for the forward pass
        and the penalty (``torch.nn.utils.parametrize.cached``).
    eval_fn : callable, optional
        ``eval_fn(model) -> dict of floats``, called on the plain model in eval mode under
        ``torch.no_grad()`` every ``config.eval_every`` steps and at the end. It does not disturb
        the training's random streams. Under DDP it runs on every rank and the metrics are averaged.
    callbacks : sequence of callables, optional
        ``callback(step, state)`` after every step (after logging, evaluation and checkpointing),
        with a :class:`TrainState`. Raising :class:`StopTraining` interrupts the run; under DDP
        callbacks must act alike on every rank.
    progress : bool
        A ``tqdm`` progress bar on rank 0 (silently none without ``tqdm``).
    ddp_kwargs : dict, optional
        Extra arguments for ``DistributedDataParallel`` (e.g. ``find_unused_parameters=True``).

    Returns
    -------
    dict
        The result also written to ``out_dir/result.json``: ``status`` (``"finished"``),
        ``config``, ``config_hash``, ``steps``, ``epochs``, ``final`` (``{"train": {task_loss,
        penalty, loss, lr}, "eval": {...}}``), ``history`` (``{"train": [...], "eval": [...]}``),
        ``wall_time_s``, ``train_time_s``, ``eval_time_s``, ``time_per_step_s``,
        ``samples_per_s``, ``device``, ``world_size``, ``amp_active``, ``resumes``, ``out_dir``,
        ``torch_version``, ``stopped_early`` and, with ``config.select``, ``selected``
        (``{"metric", "step", "value"}``; the weights are in ``out_dir/best_model.pt``, see
        :func:`load_best_model`). After a :class:`StopTraining`: ``{"status": "interrupted", "step",
        "checkpoint_step", "history", "out_dir"}``. For a folder that already holds the result of
        the same configuration, that result (the final weights are loaded into ``model``).

    Raises
    ------
    ValueError
        ``out_dir`` holds a checkpoint or result of a different configuration.
    RuntimeError
        CUDA was asked for and is not available.

    Examples
    --------
    Interrupt a run by a callback and continue it later:

    >>> import tempfile, torch
    >>> from equiproj.train import StopTraining, TrainConfig, fit
    >>> x = torch.linspace(-1, 1, 32)[:, None]; y = 3 * x
    >>> mse = lambda m, b: torch.nn.functional.mse_loss(m(b[0]), b[1])
    >>> cfg = TrainConfig(steps=12, batch_size=8, lr=0.1, checkpoint_every=4, device="cpu")
    >>> def stop_at_6(step, state):
    ...     if step == 6:
    ...         raise StopTraining
    >>> with tempfile.TemporaryDirectory() as out:
    ...     first = fit(torch.nn.Linear(1, 1), (x, y), cfg, mse, out, callbacks=[stop_at_6], progress=False)
    ...     second = fit(torch.nn.Linear(1, 1), (x, y), cfg, mse, out, progress=False)
    >>> first["status"], first["checkpoint_step"], second["status"], second["resumes"]
    ('interrupted', 4, 'finished', 1)
    """
    config = _as_config(config)
    if regulariser is not None and not callable(getattr(regulariser, "penalty", None)):
        raise TypeError("fit: regulariser must have a penalty(batch) method (and a needs_batch attribute)")
    if not callable(loss_fn):
        raise TypeError("fit: loss_fn must be callable as loss_fn(model, batch)")
    info, device = _dist_setup(config.device)
    try:
        return _fit(model, train_data, config, loss_fn, out_dir, regulariser, eval_fn, list(callbacks or ()),
                    progress, dict(ddp_kwargs or {}), info, device)
    finally:
        if info.owns_group and _dist_ready():
            torch.distributed.destroy_process_group()


def _fit(model, train_data, config: TrainConfig, loss_fn, out_dir, regulariser, eval_fn, callbacks, progress,
         ddp_kwargs, info: _Dist, device: torch.device) -> Dict[str, Any]:
    dataset = _as_dataset(train_data)
    out = Path(out_dir) if out_dir is not None else None
    main = info.rank == 0
    h = config.hash

    # 1. what is in out_dir (decided on rank 0, shared with the others)
    start = None
    if main:
        try:
            start = _check_start(out, config)
        except Exception as exc:  # never leave the other ranks waiting for rank 0
            start = {"kind": "error", "message": f"cannot read the run folder {str(out)!r}: {exc!r}. Use another "
                                                 f"out_dir or delete the folder."}
    start = _broadcast_object(start, info, device)
    if start["kind"] == "error":
        raise RunFolderError(start["message"])
    if start.get("repair"):
        log.warning("%s", start["repair"])
        if main:  # never silently: the run's final files were not usable
            import sys

            print(f"equiproj: {start['repair']}", file=sys.stderr, flush=True)
    if start["kind"] == "finished":
        made_by = start["result"].get("world_size", 1)
        if made_by != info.world_size:
            warnings.warn(f"{str(out)!r} holds the finished result of a run with {made_by} process(es), returned to a "
                          f"run with {info.world_size}: its numbers come from that run (put the world size in "
                          f"TrainConfig.meta, or use another out_dir, to keep such runs apart)")
        try:
            model.load_state_dict(start["model"])
        except RuntimeError as exc:
            raise RunFolderError(f"the final weights {str(out / MODEL_NAME)!r} do not fit this model ({exc}). "
                                 f"Use another out_dir or delete the folder.") from None
        log.info("%s: finished run of the same configuration found, not training again", out)
        return start["result"]
    ckpt = start.get("checkpoint")

    # 2. precision
    amp_active = bool(config.amp and device.type == "cuda")
    if config.amp and not amp_active:
        warnings.warn(f"TrainConfig.amp=True is ignored on device {device} (mixed precision is only used on CUDA)")
    amp_dtype = torch.bfloat16 if config.amp_dtype == "bf16" else torch.float16
    if amp_active and amp_dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ValueError(f"TrainConfig.amp_dtype: 'bf16' is not supported by {torch.cuda.get_device_name(device)}; "
                         f"use amp_dtype='fp16'")
    use_scaler = amp_active and amp_dtype == torch.float16

    # 3. model, optimiser, schedule, scaler (weights restored before DDP copies rank 0's)
    model.to(device)
    if ckpt is not None:
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as exc:
            raise ValueError(f"the checkpoint in {str(out)!r} does not fit this model ({exc}). Use another out_dir "
                             f"or delete the folder.") from None
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("fit: the model has no trainable parameters")
    groups = getattr(regulariser, "param_groups", None)
    groups = groups(params, config.lr) if callable(groups) else None  # e.g. the split scheme's B at its own lr
    optimizer = _make_optimizer(params if groups is None else groups, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(config))
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    train_model: nn.Module = model
    if info.enabled:
        kw = {"device_ids": [device.index]} if device.type == "cuda" else {}
        kw.update(ddp_kwargs)
        train_model = nn.parallel.DistributedDataParallel(model, **kw)

    # 4. data
    sampler = _ResumableSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=config.shuffle,
                                seed=config.seed)
    n_local = sampler.num_samples
    per_epoch = n_local // config.batch_size if config.drop_last else math.ceil(n_local / config.batch_size)
    if per_epoch == 0:
        raise ValueError(f"fit: {len(dataset)} samples over {info.world_size} process(es) give no batch of "
                         f"batch_size={config.batch_size} with drop_last=True")
    pin = device.type == "cuda"

    # 5. starting state
    if ckpt is None:
        seed_everything(config.seed + info.rank)
        step, epoch, pos = 0, 0, 0
        history: Dict[str, List[Dict[str, Any]]] = {"train": [], "eval": [], "defects": []}
        acc = torch.zeros(3, dtype=torch.float64, device=device)
        acc_n, times, resumes, ckpt_step = 0, {"train": 0.0, "eval": 0.0, "checkpoint": 0.0}, 0, None
    else:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        if ckpt.get("regulariser") is not None and callable(getattr(regulariser, "load_state_dict", None)):
            regulariser.load_state_dict(ckpt["regulariser"])
        ranks = ckpt["ranks"]
        if len(ranks) != info.world_size:
            warnings.warn(f"resuming a checkpoint written by {len(ranks)} process(es) with {info.world_size}: the "
                          f"data shards and random streams differ from an uninterrupted run")
        mine = ranks[info.rank % len(ranks)]
        _set_rng_state(mine["rng"])
        step, epoch, pos = ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"]
        history = ckpt["history"]
        history.setdefault("defects", [])
        acc = mine["log_acc"].to(device=device, dtype=torch.float64)
        acc_n, times, resumes, ckpt_step = mine["log_n"], dict(ckpt["times"]), ckpt["resumes"] + 1, step
        log.info("%s: resuming at step %d (epoch %d, batch %d)", out, step, epoch, pos)
    needs_batch = bool(getattr(regulariser, "needs_batch", False))
    attach = getattr(regulariser, "attach", None)
    if callable(attach):  # e.g. the proximal step of ProjectionRegulariser, after every optimizer.step()
        attach(optimizer)
    # model selection: the best evaluation so far (restored from the checkpoint)
    sel_key = config.select.lstrip("-").strip() if config.select else None
    sel_sign = -1.0 if (config.select or "").startswith("-") else 1.0
    best: Dict[str, Any] = {"step": None, "value": None, "model": None, "bad_evals": 0}
    if ckpt is not None and ckpt.get("best") is not None:
        best.update(ckpt["best"])
    stopped_early = False
    state = TrainState(step=step, epoch=epoch, batch_in_epoch=pos, config=config, model=model,
                       optimizer=optimizer, history=history, checkpoint_step=ckpt_step, out_dir=out,
                       rank=info.rank, world_size=info.world_size)
    if history["train"]:
        state.last_log = dict(history["train"][-1])
    if history["eval"]:
        state.last_eval = dict(history["eval"][-1])

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def write_checkpoint():
        t0 = time.perf_counter()
        # per-rank parts: random states and the (not yet reduced) running sums of the log
        per_rank = _all_gather_object({"rng": _rng_state(), "log_acc": acc.detach().cpu(), "log_n": acc_n}, info)
        if main and out is not None:
            atomic_torch_save({
                "format": _CHECKPOINT_FORMAT, "config_hash": h, "config": config.to_dict(),
                "hashed_config": config.hashed_dict(), "step": step, "epoch": epoch, "batch_in_epoch": pos,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "ranks": per_rank,
                "history": history, "times": dict(times),
                "resumes": resumes, "world_size": info.world_size,
                "regulariser": _regulariser_state(regulariser), "best": best if sel_key else None,
            }, out / CHECKPOINT_NAME)
        times["checkpoint"] += time.perf_counter() - t0
        state.checkpoint_step = step

    def record_defects():
        """Every layer's relative defect ``||W - P(W)|| / ||W||`` (the regulariser's report)."""
        rows = _layer_defects(regulariser)
        if rows is not None:
            history["defects"].append({"step": step, **rows})

    def evaluate():
        t0 = time.perf_counter()
        record_defects()
        saved = _rng_state()
        model.eval()
        try:
            with torch.no_grad(), parametrize.cached():
                metrics = _floats(eval_fn(model), "eval_fn")
        finally:
            model.train()
            _set_rng_state(saved)
        if info.enabled:
            gathered = _all_gather_object(sorted(metrics), info)
            if any(g != gathered[0] for g in gathered):
                raise RuntimeError(f"eval_fn returned different metric names on different ranks: {gathered}")
            vals = _mean_across_ranks(torch.tensor([metrics[k] for k in sorted(metrics)], dtype=torch.float64,
                                                   device=device), info).tolist()
            metrics = dict(zip(sorted(metrics), vals))
        entry = {"step": step, **metrics}
        history["eval"].append(entry)
        state.last_eval = dict(entry)
        if sel_key:
            if sel_key not in metrics:
                raise ValueError(f"TrainConfig.select: eval_fn returned no metric {sel_key!r}; it returned "
                                 f"{sorted(metrics)}")
            v = metrics[sel_key]
            if math.isfinite(v) and (best["value"] is None or sel_sign * v < sel_sign * best["value"]):
                best.update(step=step, value=v, bad_evals=0,
                            model={k: t.detach().cpu().clone() for k, t in model.state_dict().items()})
            else:
                best["bad_evals"] += 1
        times["eval"] += time.perf_counter() - t0
        return entry

    def flush_log():
        nonlocal acc_n
        means = (_mean_across_ranks(acc, info) / acc_n).tolist()
        if not all(math.isfinite(v) for v in means):
            raise FloatingPointError(
                f"fit: the loss is not finite in the steps up to {step} (task {means[0]:.4g}, "
                f"penalty {means[1]:.4g}); lower the learning rate or set grad_clip "
                f"(the last checkpoint, step {state.checkpoint_step}, is kept)")
        entry = {"step": step, "epoch": epoch, "lr": optimizer.param_groups[0]["lr"],
                 "task_loss": means[0], "penalty": means[1], "loss": means[2]}
        history["train"].append(entry)
        state.last_log = dict(entry)
        acc.zero_()
        acc_n = 0
        if bar is not None:
            bar.set_postfix(loss=f"{means[2]:.4g}", task=f"{means[0]:.4g}", pen=f"{means[1]:.3g}")
        log.info("step %d: loss %.6g (task %.6g, penalty %.6g)", step, means[2], means[0], means[1])

    if ckpt is None:
        record_defects()  # the starting point of the defect history (step 0)
    bar = _progress_bar(progress and main, config.steps, step)
    model.train()
    session_start = time.perf_counter()
    segment_start = session_start  # start of the training time not yet added to times["train"]
    try:
        while step < config.steps and not stopped_early:
            loader = _make_loader(dataset, sampler, config, epoch, pos, info.rank, pin)
            for batch in loader:
                batch = _to_device(batch, device, non_blocking=pin)
                optimizer.zero_grad(set_to_none=True)
                # parametrised weights (strict, split, RPP) are computed once for forward and penalty
                with parametrize.cached():
                    with torch.autocast(device_type="cuda", dtype=amp_dtype) if amp_active else \
                            contextlib.nullcontext():
                        task = loss_fn(train_model, batch)
                    if not isinstance(task, torch.Tensor) or task.numel() != 1:
                        got = f"shape {tuple(task.shape)}" if isinstance(task, torch.Tensor) else type(task).__name__
                        raise TypeError(f"loss_fn must return a scalar tensor, got {got}")
                    task = _full_precision(task.reshape(()))
                    if regulariser is not None:
                        pen = regulariser.penalty(batch if needs_batch else None)
                        pen = _full_precision(pen.reshape(())) if isinstance(pen, torch.Tensor) else torch.tensor(
                            float(pen), device=device)
                        total = task + pen
                    else:
                        pen = torch.zeros((), device=device)
                        total = task
                scaler.scale(total).backward()
                if config.grad_clip is not None:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()

                step += 1
                pos += 1
                if pos >= per_epoch:
                    epoch, pos = epoch + 1, 0
                acc += torch.stack([task.detach(), pen.detach(), total.detach()]).to(torch.float64)
                acc_n += 1
                state.step, state.epoch, state.batch_in_epoch = step, epoch, pos
                if bar is not None:
                    bar.update(1)

                last = step >= config.steps

                if step % config.log_every == 0 or last:
                    flush_log()
                    if eval_fn is None:  # without evaluations the defects follow the log
                        record_defects()
                do_eval = eval_fn is not None and ((config.eval_every and step % config.eval_every == 0) or last)
                do_ckpt = bool(config.checkpoint_every) and (step % config.checkpoint_every == 0 or last)
                if do_eval or do_ckpt:
                    # close the timed training segment (synchronising only here keeps CUDA asynchronous)
                    sync()
                    times["train"] += time.perf_counter() - segment_start
                    if do_eval:
                        evaluate()
                        if config.patience and best["bad_evals"] >= config.patience and not last:
                            stopped_early = last = True
                            log.info("early stopping at step %d: %s has not improved for %d evaluations "
                                     "(best %.6g at step %s)", step, sel_key, config.patience, best["value"],
                                     best["step"])
                            if acc_n:
                                flush_log()
                            do_ckpt = bool(config.checkpoint_every)
                    if do_ckpt:
                        write_checkpoint()
                    segment_start = time.perf_counter()
                for cb in callbacks:
                    cb(step, state)
                if last:
                    break
    except StopTraining:
        log.info("training stopped by a callback at step %d (last checkpoint: %s)", step, state.checkpoint_step)
        return {"status": "interrupted", "step": step, "checkpoint_step": state.checkpoint_step,
                "history": history, "out_dir": str(out) if out is not None else None}
    finally:
        if bar is not None:
            bar.close()

    # 6. results
    sync()
    bad = [n for n, p in model.state_dict().items() if isinstance(p, torch.Tensor)
           and (p.is_floating_point() or p.is_complex()) and not bool(torch.isfinite(p).all())]
    if bad:
        raise FloatingPointError(
            f"fit: the weights are not finite after step {step} ({', '.join(bad[:3])}); lower the learning rate or "
            f"set grad_clip (the last checkpoint, step {state.checkpoint_step}, is kept)")
    now = time.perf_counter()
    if segment_start < now and not (config.checkpoint_every or eval_fn is not None):
        times["train"] += now - segment_start
    wall = now - session_start
    train_time = times["train"]
    world = info.world_size
    final_train = {k: v for k, v in state.last_log.items() if k in ("task_loss", "penalty", "loss", "lr")}
    final_eval = {k: v for k, v in state.last_eval.items() if k != "step"}

    result = {
        "status": "finished",
        "config": config.to_dict(),
        "config_hash": h,
        "steps": step,
        "epochs": epoch + pos / per_epoch,
        "final": {"train": final_train, "eval": final_eval},
        "history": history,
        "wall_time_s": train_time + times["eval"] + times["checkpoint"],
        "session_wall_time_s": wall,
        "train_time_s": train_time,
        "eval_time_s": times["eval"],
        "checkpoint_time_s": times["checkpoint"],
        "time_per_step_s": train_time / max(step, 1),
        "samples_per_s": step * config.batch_size * world / train_time if train_time > 0 else float("nan"),
        "device": device_description(device),
        "world_size": world,
        "amp_active": amp_active,
        "resumes": resumes,
        "out_dir": str(out) if out is not None else None,
        "torch_version": torch.__version__,
        "stopped_early": stopped_early,
    }
    if sel_key:
        result["selected"] = {"metric": config.select, "step": best["step"], "value": best["value"]}
    if main and out is not None:
        atomic_torch_save(model.state_dict(), out / MODEL_NAME)
        if sel_key and best["model"] is not None:
            atomic_torch_save(best["model"], out / BEST_MODEL_NAME)
        atomic_write_json(out / RESULT_NAME, result)
    return result


def load_best_model(model: nn.Module, out_dir: Union[str, os.PathLike]) -> Dict[str, Any]:
    """Load the selected weights of a finished run (``TrainConfig.select``) into ``model``.

    Returns the run's ``result["selected"]`` (``metric``, ``step``, ``value``). Raises a
    ``ValueError`` naming the file when the run has no selection or the weights are missing.
    """
    out = Path(out_dir)
    result = load_result(out)
    if result is None or "selected" not in result:
        raise ValueError(f"{str(out)!r} holds no finished run with model selection (TrainConfig.select)")
    path = out / BEST_MODEL_NAME
    state, why = _load_weights(path)
    if why is not None:
        raise RunFolderError(f"the selected weights {str(path)!r} {why}: delete the run folder {str(out)!r} "
                             f"and run it again")
    model.load_state_dict(state)
    return result["selected"]


def _layer_defects(regulariser) -> Optional[Dict[str, float]]:
    """``{layer name: relative defect}`` from ``regulariser.report()``, or ``None`` when it has no
    per-layer report of :class:`equiproj.regularise.LayerReport` rows."""
    fn = getattr(regulariser, "report", None)
    if not callable(fn):
        return None
    rows = fn()
    if not rows or not all(hasattr(r, "relative_defect") and hasattr(r, "name") for r in rows):
        return None
    return {str(r.name): float(r.relative_defect) for r in rows}


def _regulariser_state(regulariser) -> Optional[Dict[str, Any]]:
    fn = getattr(regulariser, "state_dict", None)
    return fn() if callable(fn) else None
