"""Time per training step and memory of every method, as ratios to the unregularised step.

Models (float32, Adam, mean squared error against random targets):

* ``mlp-C8``: ``RepLinear`` layers with C8 regular fields (ReLU in between), vectors;
* ``unet2d-C4 ...``: :class:`equiproj.models.UNet2d` declared for C4 with :func:`equiproj.declare_model`
  (regular hidden fields), images; preset ``default`` has a small one (where PER's dense matrices
  fit in the 2 GB default limit) and the size of ``benchmarks/bench_conv.py``'s default (where
  they do not: PER refuses, and the row says how much it would need);
* ``relaxed-cnn-C4``: a relaxed C4 group CNN (:func:`equiproj.baselines.relaxed_cnn`) of a size
  comparable to the U-Net. The relaxed group convolution is an architecture, not a penalty on
  the other models, so it has its own reference: the same network trained without the
  relaxation penalty (``plain``); ``strict`` there is the same network with
  ``equal_weights=True`` (the ordinary group CNN).

Every method is built by ``make_method(name, model, **options)`` on a fresh copy of the same
initial model; ``plain`` is the reference measured in the same run. The sample-based methods
are measured with ``k = 1`` and ``k = 3`` sampled elements per step.

Memory: on CUDA the peak of ``torch.cuda.max_memory_allocated`` during one step; on the CPU the
bytes autograd saves for the backward pass of the loss (task loss plus penalty,
:func:`equiproj.benchmarks._common.saved_tensor_bytes`) plus what the method stores besides the
model (PER's dense matrices); parameters (RPP's free paths) are listed separately.
"""

from __future__ import annotations

import argparse
import copy
import time
from typing import Dict, List

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..actions import feature_map_action
from ..baselines import DenseMatrixTooLarge, make_method, relaxed_cnn
from ..groups import cyclic
from ..models import UNet2d
from ..nn import RepLinear
from ..regularise import declare_model
from ._common import device_description, format_bytes, measure, save_benchmark, saved_tensor_bytes

__all__ = ["run", "to_markdown", "main", "PRESETS", "METHOD_RUNS"]

PRESETS = {
    "ci": dict(mlp_in=2, mlp_hidden=4, mlp_depth=3, mlp_batch=32,
               unets=[dict(width=4, depth=1, image=16, batch=2)], relaxed_width=4, relaxed_depth=3, repeats=2),
    "default": dict(mlp_in=4, mlp_hidden=8, mlp_depth=3, mlp_batch=512,
                    unets=[dict(width=8, depth=2, image=32, batch=4), dict(width=16, depth=3, image=64, batch=8)],
                    relaxed_width=12, relaxed_depth=4, repeats=3),
}

#: (label, method name, options, k) measured on the declared models.
METHOD_RUNS = [
    ("plain", "plain", {}, None),
    ("strict", "strict", {}, None),
    ("projection split (default)", "projection", {"lambda_perp": 1e-2, "scheme": "split"}, None),
    ("projection penalty", "projection", {"lambda_perp": 1e-2, "scheme": "penalty"}, None),
    ("projection proximal", "projection", {"lambda_perp": 1e-2, "scheme": "proximal"}, None),
    ("projection split-proximal", "projection", {"lambda_perp": 1e-2, "scheme": "split-proximal"}, None),
    ("sample-output k=1", "sample-output", {"k": 1}, 1),
    ("sample-output k=3", "sample-output", {"k": 3}, 3),
    ("eqreg k=1", "eqreg", {"k": 1}, 1),
    ("eqreg k=3", "eqreg", {"k": 3}, 3),
    ("weight-sample k=1", "weight-sample", {"k": 1}, 1),
    ("weight-sample k=3", "weight-sample", {"k": 3}, 3),
    ("rpp", "rpp", {}, None),
    ("per", "per", {}, None),
]


def _mlp(p: Dict):
    G = cyclic(8)
    rin, hid = p["mlp_in"] * G.regular(), p["mlp_hidden"] * G.regular()
    layers: List[nn.Module] = [RepLinear(rin, hid), nn.ReLU()]
    for _ in range(p["mlp_depth"] - 2):
        layers += [RepLinear(hid, hid), nn.ReLU()]
    layers.append(RepLinear(hid, rin))
    x = torch.randn(p["mlp_batch"], rin.dim)
    return nn.Sequential(*layers), x, torch.randn_like(x), dict(act_in=rin, act_out=rin)


def _unet(u: Dict):
    G = cyclic(4)
    net = UNet2d(1, 1, width=u["width"], depth=u["depth"])
    declare_model(net, G)
    x = torch.randn(u["batch"], 1, u["image"], u["image"])
    act = feature_map_action(G.trivial())
    return net, x, torch.randn_like(x), dict(act_in=act, act_out=act)


def _unet_name(u: Dict) -> str:
    return f"unet2d-C4 w{u['width']} d{u['depth']} {u['image']}px"


def _relaxed(p: Dict, equal_weights: bool = False):
    torch.manual_seed(0)
    net = relaxed_cnn(1, 1, width=p["relaxed_width"], depth=p["relaxed_depth"], N=4, num_banks=2,
                      equal_weights=equal_weights)
    u = p["unets"][0]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(u["batch"], 1, u["image"], u["image"], generator=g)
    return net, x, torch.randn(x.shape, generator=g)


def _step_fns(method, x, y):
    model = method.model
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)  # after make_method: RPP and split add parameters
    method.attach(opt)  # the proximal schemes act after every step
    batch = [x, y]

    def loss():
        with parametrize.cached():  # as equiproj.train.fit: parametrised weights once per step
            task = nn.functional.mse_loss(model(x), y)
            return task + method.penalty(batch if method.needs_batch else None)

    def step():
        opt.zero_grad(set_to_none=True)
        loss().backward()
        opt.step()

    return loss, step


def _state_tensors(method) -> List[torch.Tensor]:
    """The tensors a method stores besides the model (PER's dense matrices)."""
    out = []
    for attr in ("matrices", "bias_matrices"):
        for Ms in (getattr(method, attr, None) or {}).values():
            out += list(Ms or [])
    return out


def _memory(method, loss, step, dev: torch.device) -> int:
    if dev.type == "cuda":
        step()
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        step()
        torch.cuda.synchronize(dev)
        return int(torch.cuda.max_memory_allocated(dev))
    # saved for backward, not counting the method's stored tensors twice (P @ v saves P)
    state = _state_tensors(method)
    ptrs = {t.untyped_storage().data_ptr() for t in state}
    own = sum(t.numel() * t.element_size() for t in state)
    return saved_tensor_bytes(loss) - _saved_state_bytes(loss, ptrs) + own


def _saved_state_bytes(fn, ptrs) -> int:
    """Bytes of the tensors saved for backward by ``fn()`` that live in the storages ``ptrs``."""
    total, seen = 0, set()

    def pack(t):
        nonlocal total
        key = (t.data_ptr(), t.numel(), t.dtype)
        if t.untyped_storage().data_ptr() in ptrs and key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
        return t

    if not ptrs:
        return 0
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def _measure_one(model_name, label, name, k, base, opts, x, y, dev, repeats, progress):
    model = copy.deepcopy(base).to(dev)
    t0 = time.perf_counter()
    try:
        method = make_method(name, model, **opts)
    except DenseMatrixTooLarge as e:
        if progress:
            print(f"{model_name:15s} {label:26s} refused: {e}", flush=True)
        return dict(model=model_name, method=label, name=name, k=k, status="refused", note=str(e))
    build = time.perf_counter() - t0
    loss, step = _step_fns(method, x, y)
    state = int(method.state_bytes()) if hasattr(method, "state_bytes") else 0
    t_step = measure(step, dev, repeats=repeats, warmup=1)
    mem = _memory(method, loss, step, dev)
    row = dict(model=model_name, method=label, name=name, k=k, status="ok", build_s=build, step_s=t_step,
               memory_bytes=mem, state_bytes=state, params=sum(q.numel() for q in method.model.parameters()))
    if progress:
        print(f"{model_name:15s} {label:26s} step {t_step * 1e3:9.2f} ms  memory {mem / 1e6:9.2f} MB  "
              f"(state {state / 1e6:.2f} MB, build {build:.2f} s)", flush=True)
    return row


def _ratios(rows: List[Dict]) -> None:
    ref = {r["model"]: r for r in rows if r["method"] == "plain" and r["status"] == "ok"}
    for r in rows:
        if r["status"] == "ok" and r["model"] in ref:
            r["step_ratio"] = r["step_s"] / ref[r["model"]]["step_s"]
            r["memory_ratio"] = r["memory_bytes"] / max(ref[r["model"]]["memory_bytes"], 1)


def run(preset: str = "default", device: str = "cpu", repeats=None, progress: bool = True) -> Dict:
    p = PRESETS[preset]
    repeats = repeats or p["repeats"]
    dev = torch.device(device)
    rows: List[Dict] = []
    builds = [("mlp-C8", lambda: _mlp(p))] + [(_unet_name(u), (lambda u=u: _unet(u))) for u in p["unets"]]
    for model_name, build in builds:
        torch.manual_seed(0)
        base, x, y, acts = build()
        x, y = x.to(dev), y.to(dev)
        for label, name, opts, k in METHOD_RUNS:
            o = dict(opts)
            if name in ("sample-output", "eqreg"):
                o.update(acts, seed=0)
                if name == "eqreg":
                    o.pop("act_out")
            if name == "weight-sample":
                o["seed"] = 0
            rows.append(_measure_one(model_name, label, name, k, base, o, x, y, dev, repeats, progress))
    relaxed_runs = [("plain", "plain", False, {}), ("relaxed", "relaxed", False, {"lambda_": 1e-2}),
                    ("strict", "plain", True, {})]
    for label, name, equal, opts in relaxed_runs:
        base, x, y = _relaxed(p, equal_weights=equal)
        rows.append(_measure_one("relaxed-cnn-C4", label, name, None, base, opts, x.to(dev), y.to(dev), dev,
                                 repeats, progress))
    _ratios(rows)
    return dict(benchmark="methods", preset=preset, sizes=p, device=device_description(dev), dtype="float32",
                memory=("torch.cuda.max_memory_allocated during one step" if dev.type == "cuda" else
                        "bytes saved by autograd for the backward of task loss + penalty, plus the method's "
                        "stored state"), rows=rows, torch=torch.__version__)


def to_markdown(res: Dict, command: str) -> str:
    p = res["sizes"]
    lines = [
        "## Cost of the methods per training step",
        "",
        f"Device: {res['device']}. dtype {res['dtype']}. Preset `{res['preset']}`. Command: `{command}`.",
        "",
        f"- `mlp-C8`: {p['mlp_depth']} `RepLinear` layers, C8 regular fields ({p['mlp_in']} in/out, "
        f"{p['mlp_hidden']} hidden), ReLU, batch {p['mlp_batch']}.",
    ]
    for u in p["unets"]:
        lines.append(f"- `{_unet_name(u)}`: `UNet2d` width {u['width']}, depth {u['depth']}, declared for C4 with "
                     f"`declare_model` (regular hidden fields), batch {u['batch']} of {u['image']}x{u['image']} "
                     "images.")
    u = p["unets"][0]
    lines += [
        f"- `relaxed-cnn-C4`: `relaxed_cnn` width {p['relaxed_width']} regular C4 fields, depth "
        f"{p['relaxed_depth']}, 2 filter banks, batch {u['batch']} of {u['image']}x{u['image']} images (sized "
        f"like `{_unet_name(u)}`, see *params*). Its *plain* row is the same relaxed network without the "
        "relaxation penalty and its *strict* row the same network with `equal_weights=True` (an ordinary group "
        "CNN); its ratios are to its own plain row, not to a U-Net's.",
        "",
        "One Adam step on a mean squared error, plus the method's penalty. *step ratio* and *memory ratio* "
        "are to the `plain` row of the same model, measured in the same run. `k` is the number of sampled "
        "group elements per step (for C4, k = 3 is every non-identity element). *Memory*: "
        f"{res['memory']}. *state*: what the method stores besides parameters (PER's dense matrices). "
        "*params*: parameters of the trained model (RPP adds a free path per weight, the split scheme a "
        "second tensor `B` per declared weight; Adam keeps two more tensors of that size for each). The "
        "projection rows are its training schemes (`scheme=`, see docs/training.md): the penalty in the loss "
        "(`penalty`), the split parametrisation `W = P(A) + (I - P) B` (`split`), the proximal step after the "
        "optimiser's (`proximal`) and both (`split-proximal`).",
        "",
    ]
    for model in dict.fromkeys(r["model"] for r in res["rows"]):
        lines += [f"### {model}", "",
                  "| method | k | step (ms) | step ratio | memory | memory ratio | state | params | build (s) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in res["rows"]:
            if r["model"] != model:
                continue
            k = "" if r["k"] is None else str(r["k"])
            if r["status"] != "ok":
                lines.append(f"| {r['method']} | {k} | refused | | | | | | |")
                continue
            lines.append(
                f"| {r['method']} | {k} | {r['step_s'] * 1e3:.2f} | {r.get('step_ratio', float('nan')):.2f} | "
                f"{format_bytes(r['memory_bytes'])} | {r.get('memory_ratio', float('nan')):.2f} | {format_bytes(r['state_bytes'])} | "
                f"{r['params']} | {r['build_s']:.2f} |")
        notes = [r for r in res["rows"] if r["model"] == model and r["status"] != "ok"]
        for r in notes:
            lines += ["", f"*{r['method']}*: {r['note']}"]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> Dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="default")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads (1 gives stable CPU timings on a shared machine)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--markdown", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    res = run(args.preset, device=args.device, repeats=args.repeats)
    return save_benchmark(res, args.json or f"benchmarks/results/methods-{args.preset}.json",
                          args.markdown or f"docs/benchmarks/methods-{args.preset}.md", to_markdown,
                          "benchmarks/bench_methods.py", argv)


if __name__ == "__main__":
    main()
