"""Discretisation error of steerable convolutions under rotations that do not map the grid onto
itself.

For SO(2) (5x5 and 7x7 kernels) and SO(3) (5x5x5 kernels), layers from a scalar input to one
irrep of degree ``l`` (no bias) are projected onto the steerable subspace, and their end-to-end
relative equivariance error ``||f(g x) - g f(x)|| / ||f(x)||`` is measured on a smooth input
(a sum of wide Gaussians well inside the frame, so rotating the frame loses nothing), for
quarter turns (exact) and other angles (interpolated with bilinear / trilinear sampling), over
several random kernels. The same for unprojected layers, for comparison.
"""

from __future__ import annotations

import argparse
import math
from typing import Dict

import torch

from ..actions import feature_map_action
from ..groups import octahedral, so2, so3
from ..metrics import equivariance_error
from ..nn import RepConv2d, RepConv3d
from ._common import device_description, save_benchmark

__all__ = ["run", "to_markdown", "main"]

F64 = torch.float64


def _smooth_input(d: int, n: int) -> torch.Tensor:
    axes = torch.meshgrid(*[torch.arange(n, dtype=F64) - (n - 1) / 2] * d, indexing="ij")
    g = torch.Generator().manual_seed(0)
    x = torch.zeros((n,) * d, dtype=F64)
    for _ in range(4):
        c = (torch.rand(d, generator=g, dtype=F64) - 0.5) * n / 3
        x += torch.exp(-sum((a - ci) ** 2 for a, ci in zip(axes, c)) / (2 * (n / 10) ** 2))
    return x[None, None]


def run(seeds: int = 5, progress: bool = True) -> Dict:
    rows = []
    cases = [("SO(2)", so2(), 5, 33), ("SO(2)", so2(), 7, 41), ("SO(3)", so3(), 5, 21)]
    for name, G, k, n in cases:
        d = G.standard().dim
        x = _smooth_input(d, n)
        if d == 2:
            angle_sets = {"quarter turns": torch.tensor([math.pi / 2, math.pi, 1.5 * math.pi], dtype=F64),
                          "45 deg": torch.tensor([math.pi / 4], dtype=F64),
                          "random": G.sample(4, generator=torch.Generator().manual_seed(1))}
        else:
            cube = octahedral().standard()(octahedral().elements()[1:], dtype=F64)
            angle_sets = {"cube rotations": cube, "random": G.sample(4, generator=torch.Generator().manual_seed(1))}
        for l in range(3):
            rout = G.irrep(l)
            for label, elements in angle_sets.items():
                errs = {"projected": [], "free": []}
                for seed in range(seeds):
                    torch.manual_seed(seed)
                    Conv = RepConv2d if d == 2 else RepConv3d
                    conv = Conv(G.trivial(), rout, k, padding=k // 2, bias=False).double()
                    act_in, act_out = feature_map_action(G.trivial()), feature_map_action(rout)
                    errs["free"].append(equivariance_error(conv, x, act_in, act_out, elements=elements).mean)
                    with torch.no_grad():
                        conv.weight.copy_(conv.projector.project(conv.weight))
                    errs["projected"].append(equivariance_error(conv, x, act_in, act_out, elements=elements).mean)
                row = dict(group=name, kernel=k, degree=l, rotations=label,
                           projected_mean=sum(errs["projected"]) / seeds, projected_max=max(errs["projected"]),
                           free_mean=sum(errs["free"]) / seeds)
                rows.append(row)
                if progress:
                    print(f"{name} k={k} l={l} {label:15s} projected {row['projected_mean']:.2e} "
                          f"(max {row['projected_max']:.2e})  free {row['free_mean']:.2e}", flush=True)
    return dict(benchmark="steerable-discretisation", seeds=seeds, device=device_description(torch.device("cpu")),
                rows=rows)


def to_markdown(res: Dict, command: str) -> str:
    lines = [
        "## Discretisation error of steerable convolutions",
        "",
        f"Device: {res['device']}, float64. Command: `{command}`.",
        "",
        f"Relative end-to-end equivariance error of a layer from a scalar field to one irrep of degree l "
        f"(no bias, default rings and band limits), on a smooth input, mean over {res['seeds']} random kernels "
        "(max in brackets); *free* is the same layer before projection. Quarter turns and cube rotations map "
        "the grid onto itself and are exact; other rotations interpolate the feature maps, so the projected "
        "layer's error there is discretisation, not learned non-equivariance.",
        "",
        "| group | kernel | degree l | rotations | projected | free |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for r in res["rows"]:
        lines.append(f"| {r['group']} | {r['kernel']} | {r['degree']} | {r['rotations']} | "
                     f"{r['projected_mean']:.2e} ({r['projected_max']:.2e}) | {r['free_mean']:.2e} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> Dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--json", default="benchmarks/results/steerable-discretisation.json")
    ap.add_argument("--markdown", default="docs/benchmarks/steerable-discretisation.md")
    args = ap.parse_args(argv)
    res = run(args.seeds)
    return save_benchmark(res, args.json, args.markdown, to_markdown, "benchmarks/bench_steerable.py", argv)


if __name__ == "__main__":
    main()
