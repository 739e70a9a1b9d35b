"""The runtime and memory table of the 3D volume experiment (the paper's Table 4 analogue).

For the 3D ResNet of :mod:`equiproj.experiments.volumes` (SO(3) and O(3) gated fields) and every
method of the experiment, measured in one run on the same device:

* trainable parameters (RPP and the split scheme add parameters);
* training throughput: volumes per second of one Adam step (task loss, penalty, backward,
  update; parametrised weights computed once per step, as :func:`equiproj.train.fit` does);
* inference throughput: volumes per second of a forward pass in eval mode without gradients;
* peak memory of one training step: on CUDA ``torch.cuda.max_memory_allocated``; on the CPU the
  bytes autograd saves for the backward pass plus what the method stores besides the model;
* projector state: what equiproj's pair projectors keep (shared by all layers with the same pair
  of field types), beside the memory of a dense orthonormal basis ``Q`` of every layer's
  equivariant kernels (``D x dim`` float32 numbers per layer, the paper's approach) and of a dense
  per-layer projector ``Q Q^T`` (``D x D``).
"""

from __future__ import annotations

import argparse
import copy
import time
from typing import Dict, List

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..baselines import make_method
from ..groups import o3, so3
from ..regularise import declared_layers
from ._common import device_description, format_bytes, measure, save_benchmark
from .methods import _memory as _step_memory

__all__ = ["run", "to_markdown", "main", "PRESETS", "METHOD_RUNS", "projector_memory"]

PRESETS = {
    "ci": dict(size=16, resize=17, width=1, L=1, L_o3=1, kernels=(3, 3, 3), batch=4, repeats=2),
    # the model of the experiment's cpu preset
    "default": dict(size=28, resize=17, width=2, L=1, L_o3=1, kernels=(5, 3, 5), batch=16, repeats=3),
    # the model of the experiment's paper preset (GPU)
    "paper": dict(size=28, resize=33, width=2, L=3, L_o3=2, kernels=(7, 5, 7), batch=32, repeats=5),
}

#: (label, group, method, options).
METHOD_RUNS = [
    ("plain", "so3", "plain", {}),
    ("strict SO(3)", "so3", "strict", {}),
    ("strict O(3)", "o3", "strict", {}),
    ("projection SO(3), fro", "so3", "projection", {"lambda_perp": 1e-2, "norm": "fro"}),
    ("projection SO(3), fro2", "so3", "projection", {"lambda_perp": 1e-2, "norm": "fro2"}),
    ("projection O(3), fro", "o3", "projection", {"lambda_perp": 1e-2, "norm": "fro"}),
    ("rpp SO(3)", "so3", "rpp", {}),
    ("sample-output SO(3), k=1", "so3", "sample-output", {"lambda_": 1e-2, "k": 1}),
]


def projector_memory(model: nn.Module) -> Dict[str, int]:
    """Bytes of the pair projectors of ``model``'s declared layers (each shared pair counted once),
    against dense per-layer bases ``Q`` (``D x dim`` float32) and projectors (``D x D``)."""
    seen, shared, dense_q, dense_p = set(), 0, 0, 0
    for _, _, spec in declared_layers(model):
        P = spec.projector
        for pair in P._pairs.values():
            if id(pair) not in seen:
                seen.add(id(pair))
                shared += pair.state_bytes()
        D = P.total_dim
        dense_q += D * P.dim * 4
        dense_p += D * D * 4
    return dict(projector_bytes=shared, dense_q_bytes=dense_q, dense_projector_bytes=dense_p)


def _model(p: Dict, group: str):
    from ..experiments.volumes import ResNet3d

    G = so3() if group == "so3" else o3()
    torch.manual_seed(0)
    return ResNet3d(9, G, width=p["width"], L=p["L"] if group == "so3" else p["L_o3"], kernels=p["kernels"],
                    input_size=p["size"], resize=p["resize"])


def run(preset: str = "default", device: str = "cpu", repeats=None, progress: bool = True) -> Dict:
    from ..actions import feature_map_action

    p = PRESETS[preset]
    repeats = repeats or p["repeats"]
    dev = torch.device(device)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(p["batch"], 1, p["size"], p["size"], p["size"], generator=g).to(dev)
    y = torch.randint(9, (p["batch"],), generator=g).to(dev)
    t0 = time.perf_counter()
    bases = {grp: _model(p, grp) for grp in ("so3", "o3")}
    build = {grp: time.perf_counter() - t0 for grp in bases}  # the first build includes the basis caches
    rows: List[Dict] = []
    for label, grp, name, opts in METHOD_RUNS:
        G = so3() if grp == "so3" else o3()
        model = copy.deepcopy(bases[grp]).to(dev)
        o = dict(opts)
        if name == "sample-output":
            o.update(act_in=feature_map_action(G.trivial()), act_out=9 * G.trivial(), group=G, seed=0)
        method = make_method(name, model, **o)
        params = list(method.model.parameters())  # after make_method: RPP and the split scheme add parameters
        opt = torch.optim.Adam(method.param_groups(params, 1e-3) or params, lr=1e-3)  # as fit builds it
        method.attach(opt)
        batch = [x, y]

        def loss():
            with parametrize.cached():
                task = nn.functional.cross_entropy(method.model(x), y)
                return task + method.penalty(batch if method.needs_batch else None)

        def step():
            opt.zero_grad(set_to_none=True)
            loss().backward()
            opt.step()

        def infer():
            with torch.no_grad(), parametrize.cached():
                method.model(x)

        method.model.train()
        t_step = measure(step, dev, repeats=repeats, warmup=1, min_time=0.0)
        mem = _step_memory(method, loss, step, dev)
        method.model.eval()
        t_inf = measure(infer, dev, repeats=repeats, warmup=1, min_time=0.0)
        state = int(method.state_bytes()) if hasattr(method, "state_bytes") else 0
        row = dict(method=label, name=name, group=G.name, status="ok", step_s=t_step, infer_s=t_inf,
                   train_throughput=p["batch"] / t_step, infer_throughput=p["batch"] / t_inf, memory_bytes=mem,
                   method_state_bytes=state,
                   params=sum(q.numel() for q in method.model.parameters() if q.requires_grad),
                   equivariant_dims=sum(spec.projector.dim for _, _, spec in declared_layers(method.model)),
                   **(projector_memory(method.model) if name != "plain" else
                      dict(projector_bytes=0, **{k: v for k, v in projector_memory(method.model).items()
                                                 if k != "projector_bytes"})))
        rows.append(row)
        if progress:
            print(f"{label:28s} step {t_step * 1e3:8.1f} ms  infer {t_inf * 1e3:7.1f} ms  memory {mem / 1e6:8.1f} MB  "
                  f"projectors {format_bytes(row['projector_bytes'])} vs dense Q {format_bytes(row['dense_q_bytes'])}",
                  flush=True)
    ref = next(r for r in rows if r["name"] == "plain")
    for r in rows:
        r["step_ratio"] = r["step_s"] / ref["step_s"]
        r["memory_ratio"] = r["memory_bytes"] / max(ref["memory_bytes"], 1)
    return dict(benchmark="volumes", preset=preset, sizes={k: list(v) if isinstance(v, tuple) else v
                                                           for k, v in p.items()},
                device=device_description(dev), dtype="float32", build_s=build, layers=len(declared_layers(bases["so3"])),
                memory=("torch.cuda.max_memory_allocated during one step" if dev.type == "cuda" else
                        "bytes saved by autograd for the backward of task loss + penalty, plus the method's "
                        "stored state"), rows=rows, torch=torch.__version__)


def to_markdown(res: Dict, command: str) -> str:
    p = res["sizes"]
    lines = [
        "## Runtime and memory of the 3D volume classifier (Table 4 analogue)",
        "",
        f"Device: {res['device']}, {res['dtype']}. Preset `{res['preset']}`: the 3D ResNet of the `volumes` "
        f"experiment ({res['layers']} declared convolutions), width {p['width']}, band limit L = {p['L']} (SO(3)) / "
        f"{p['L_o3']} (O(3)), kernels {tuple(p['kernels'])}, batch {p['batch']} of {p['size']}^3 volumes resized to "
        f"{p['resize']}^3; Adam. Command: `{command}`.",
        "",
        f"*memory*: {res['memory']}. *projectors*: what equiproj's pair projectors keep for the whole network "
        "(shared by layers with the same pair of field types); *dense Q*: a dense orthonormal basis of the "
        "equivariant kernels of every layer (`D x dim` float32 numbers per layer, what the paper caches); "
        "*dense QQ^T*: a dense per-layer projector. Throughputs in volumes per second.",
        "",
        "*params*: trainable parameters (RPP and the split scheme of the projection method add a second copy of the "
        "kernels); *equiv. dims*: the dimension of the equivariant kernel spaces of all layers (the strict model's "
        "free parameters in its convolutions).",
        "",
        "| method | params | equiv. dims | train vol/s | step ratio | infer vol/s | memory | memory ratio | projectors | "
        "dense Q | dense QQ^T |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['method']} | {r['params']:,} | {r.get('equivariant_dims', 0):,} | {r['train_throughput']:.1f} | {r['step_ratio']:.2f} | "
            f"{r['infer_throughput']:.1f} | {format_bytes(r['memory_bytes'])} | {r['memory_ratio']:.2f} | "
            f"{format_bytes(r['projector_bytes']) if r['projector_bytes'] else '–'} | "
            f"{format_bytes(r['dense_q_bytes'])} | {format_bytes(r['dense_projector_bytes'])} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> Dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="default")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--json", default=None)
    ap.add_argument("--markdown", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    res = run(args.preset, device=args.device, repeats=args.repeats)
    return save_benchmark(res, args.json or f"benchmarks/results/volumes-{args.preset}.json",
                          args.markdown or f"docs/benchmarks/volumes-{args.preset}.md", to_markdown,
                          "benchmarks/bench_volumes.py", argv)


if __name__ == "__main__":
    main()
