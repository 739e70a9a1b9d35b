"""Time and memory of the three projection routes against layer width.

Two families of square layers ``width -> width``:

* ``C8-regular``: ``width / 8`` regular fields of C8 on both sides;
* ``SO3-l<=3``: ``width / 16`` copies of each SO(3) irrep of degree 0..3 on both sides.

For every route that applies: construction time, forward time of ``P(W)``, forward+backward
time of the penalty ``||W - P(W)||_F``, the projector's cached state, and the bytes autograd
saves for the backward pass; with the dense ``(out*in)^2`` projector matrix of a PER-style
implementation for comparison (its size only, it is never built).
"""

from __future__ import annotations

import argparse
import time
from typing import Dict, List

import torch

from ..groups import cyclic, so3
from ..projection import LinearProjector, RouteNotApplicable, clear_pair_cache
from ._common import device_description, format_bytes, measure, save_benchmark, saved_tensor_bytes

__all__ = ["run", "to_markdown", "main"]


def _reps(family: str, width: int):
    if family == "C8-regular":
        G = cyclic(8)
        return 8, (width // 8) * G.regular()
    G = so3()
    m = width // 16
    return 16, sum((m * G.irrep(l) for l in range(1, 4)), m * G.irrep(0))


def run(widths: List[int], families=("C8-regular", "SO3-l<=3"), routes=("spatial", "spectral", "basis"),
        device: str = "cpu", dtype=torch.float32, repeats: int = 5, progress: bool = True) -> Dict:
    dev = torch.device(device)
    rows = []
    for family in families:
        for width in widths:
            unit, rep = _reps(family, width)
            if width % unit:
                continue
            W0 = torch.randn(rep.dim, rep.dim, dtype=dtype, device=dev, generator=None)
            for route in routes:
                clear_pair_cache()
                t0 = time.perf_counter()
                try:
                    P = LinearProjector(rep, rep, route=route)
                except RouteNotApplicable:
                    continue
                build = time.perf_counter() - t0
                W = W0.clone().requires_grad_(True)

                def fwd():
                    with torch.no_grad():
                        return P.project(W0)

                def fwd_bwd():
                    W.grad = None
                    d = torch.linalg.vector_norm(W - P.project(W))
                    d.backward()
                    return d

                t_f = measure(fwd, dev, repeats=repeats)
                t_fb = measure(fwd_bwd, dev, repeats=repeats)
                saved = saved_tensor_bytes(lambda: torch.linalg.vector_norm(W - P.project(W)))
                peak = None
                if dev.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(dev)
                    base = torch.cuda.memory_allocated(dev)
                    fwd_bwd()
                    peak = torch.cuda.max_memory_allocated(dev) - base
                row = dict(family=family, width=width, route=route, dim=P.dim, total_dim=P.total_dim,
                           build_s=build, forward_s=t_f, forward_backward_s=t_fb,
                           state_bytes=P.state_bytes(), saved_bytes=saved, cuda_peak_bytes=peak,
                           weight_bytes=W0.numel() * W0.element_size(),
                           dense_projector_bytes=(W0.numel() ** 2) * W0.element_size())
                rows.append(row)
                if progress:
                    print(f"{family:11s} width {width:5d} {route:9s} build {build:7.3f}s  fwd {t_f * 1e3:8.3f} ms"
                          f"  fwd+bwd {t_fb * 1e3:8.3f} ms  state {row['state_bytes'] / 1e3:8.1f} kB", flush=True)
    return dict(benchmark="projection", device=device_description(dev), dtype=str(dtype).replace("torch.", ""),
                torch=torch.__version__, rows=rows)


def to_markdown(result: Dict, command: str) -> str:
    lines = [
        "## Projection routes against layer width",
        "",
        f"Device: {result['device']}; dtype {result['dtype']}. Command: `{command}`.",
        "",
        "Times are medians; *fwd* is `P(W)`, *fwd+bwd* the penalty `||W - P(W)||_F` and its gradient. "
        "*state* is what the projector caches; *saved* what autograd keeps for the backward pass; "
        "*dense P* the size a dense projection matrix over the whole layer would need (never built). "
        "*ratio* is fwd+bwd of the route over that of the fastest route at the same width. *build* is the "
        "construction with an empty pair cache (decompositions of the field types stay cached in the group; "
        "later layers with the same pairs of field types reuse the pair projectors).",
        "",
        "| family | width | route | dim P / dim W | build (s) | fwd (ms) | fwd+bwd (ms) | ratio | state | saved | dense P |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    best = {}
    for r in result["rows"]:
        k = (r["family"], r["width"])
        best[k] = min(best.get(k, float("inf")), r["forward_backward_s"])
    for r in result["rows"]:
        ratio = r["forward_backward_s"] / best[(r["family"], r["width"])]
        lines.append(
            f"| {r['family']} | {r['width']} | {r['route']} | {r['dim']} / {r['total_dim']} | {r['build_s']:.3f} | "
            f"{r['forward_s'] * 1e3:.3f} | {r['forward_backward_s'] * 1e3:.3f} | {ratio:.2f} | "
            f"{format_bytes(r['state_bytes'])} | {format_bytes(r['saved_bytes'])} | {format_bytes(r['dense_projector_bytes'])} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> Dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256, 512, 1024, 2048])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default="benchmarks/results/projection.json")
    ap.add_argument("--markdown", default="docs/benchmarks/projection.md")
    args = ap.parse_args(argv)
    res = run(args.widths, device=args.device, repeats=args.repeats)
    return save_benchmark(res, args.json, args.markdown, to_markdown, "benchmarks/bench_projection.py", argv)


if __name__ == "__main__":
    main()
