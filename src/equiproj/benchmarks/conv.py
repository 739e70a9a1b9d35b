"""Cost of the projection penalty for convolutional models, against one training step.

* ``unet2d-C4``: :class:`equiproj.models.UNet2d` declared with :func:`equiproj.declare_model` for
  C4 (regular fields), images ``size x size``;
* ``cnn3d-SO3``: :class:`equiproj.models.CNN3d` whose convolutions are pulled towards the SO(3)
  steerable subspace (hidden field type ``l = 0 + 1 + 2``), volumes ``size^3``.

For each route that applies: the time of one optimisation step of the task loss alone, the
time of the penalty's forward and backward alone, and the time of a step with both; the
penalty's share of a step; and memory: what the projectors keep (shared by layers with the same
pair of field types), against a dense per-layer basis of the equivariant subspace (``D x dim``
floats per layer, as a per-layer cached basis would need) and a dense per-layer projector
(``D x D``).
"""

from __future__ import annotations

import argparse
import time
from typing import Dict

import torch
from torch import nn

from ..groups import cyclic, so3
from ..models import CNN3d, UNet2d
from ..projection import clear_pair_cache
from ..regularise import ProjectionRegulariser, declare_model, declared_layers
from ._common import device_description, format_bytes, measure, save_benchmark

__all__ = ["run", "to_markdown", "main", "PRESETS"]

PRESETS = {
    "ci": dict(unet_width=8, unet_depth=2, image=32, batch2d=4, cnn_width=9, volume=8, batch3d=2),
    "default": dict(unet_width=16, unet_depth=3, image=64, batch2d=8, cnn_width=18, volume=16, batch3d=4),
    "paper": dict(unet_width=32, unet_depth=4, image=128, batch2d=16, cnn_width=36, volume=29, batch3d=16),
}


def _models(p: Dict):
    G4 = cyclic(4)
    unet = UNet2d(1, 1, width=p["unet_width"], depth=p["unet_depth"])
    x2 = torch.randn(p["batch2d"], 1, p["image"], p["image"])
    y2 = torch.randn_like(x2)
    G3 = so3()
    hidden = G3.irrep(0) + G3.irrep(1) + G3.irrep(2)
    cnn = CNN3d(1, 4, width=p["cnn_width"], depth=2)
    x3 = torch.randn(p["batch3d"], 1, p["volume"], p["volume"], p["volume"])
    y3 = torch.randint(4, (p["batch3d"],))
    return [
        ("unet2d-C4", unet, lambda m: declare_model(m, G4), x2, y2, nn.functional.mse_loss, ("spatial", "spectral", "basis", "auto")),
        ("cnn3d-SO3", cnn, lambda m: declare_model(m, G3, hidden=hidden), x3, y3, nn.functional.cross_entropy, ("basis",)),
    ]


def _memory(model) -> Dict[str, int]:
    seen, shared, dense_basis, dense_proj = set(), 0, 0, 0
    for _, _, spec in declared_layers(model):
        P = spec.projector
        for key, pair in P._pairs.items():
            if id(pair) not in seen:
                seen.add(id(pair))
                shared += pair.state_bytes()
        D = P.total_dim
        dense_basis += D * P.dim * 4
        dense_proj += D * D * 4
    return dict(projector_bytes=shared, dense_basis_bytes=dense_basis, dense_projector_bytes=dense_proj)


def run(preset: str = "default", device: str = "cpu", repeats: int = 5, progress: bool = True) -> Dict:
    p = PRESETS[preset]
    dev = torch.device(device)
    rows = []
    for name, model, declare, x, y, loss_fn, routes in _models(p):
        model = model.to(dev)
        x, y = x.to(dev), y.to(dev)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        for route in routes:
            for m in model.modules():
                if hasattr(m, "equiproj_spec"):
                    del m.equiproj_spec
            clear_pair_cache()
            t0 = time.perf_counter()
            declare_model_route = lambda mdl: declare(mdl)  # noqa: E731
            declare_model_route(model)
            for _, _, spec in declared_layers(model):  # rebuild with the requested route
                spec.projector = type(spec.projector)(spec.projector.action, route=route)
            build = time.perf_counter() - t0
            reg = ProjectionRegulariser(model, lambda_perp=1e-2)

            def step(with_penalty: bool):
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(x), y)
                if with_penalty:
                    loss = loss + reg()
                loss.backward()
                opt.step()

            def penalty_only():
                opt.zero_grad(set_to_none=True)
                reg().backward()

            t_step = measure(lambda: step(False), dev, repeats=repeats, warmup=1)
            t_pen = measure(penalty_only, dev, repeats=repeats, warmup=1)
            t_both = measure(lambda: step(True), dev, repeats=repeats, warmup=1)
            row = dict(model=name, route=route, layers=len(reg.layers), build_s=build, step_s=t_step,
                       penalty_s=t_pen, step_with_penalty_s=t_both, penalty_fraction=t_pen / t_step,
                       step_ratio=t_both / t_step, params=sum(q.numel() for q in model.parameters()),
                       **_memory(model))
            rows.append(row)
            if progress:
                print(f"{name:10s} {route:8s} step {t_step * 1e3:8.1f} ms  penalty {t_pen * 1e3:7.2f} ms "
                      f"({100 * row['penalty_fraction']:.1f} %)  with {t_both * 1e3:8.1f} ms  "
                      f"projectors {row['projector_bytes'] / 1e3:.1f} kB vs dense basis "
                      f"{row['dense_basis_bytes'] / 1e6:.1f} MB", flush=True)
    return dict(benchmark="conv", preset=preset, sizes=p, device=device_description(dev), rows=rows,
                torch=torch.__version__)


def to_markdown(res: Dict, command: str) -> str:
    p = res["sizes"]
    lines = [
        "## Penalty cost in convolutional models",
        "",
        f"Device: {res['device']}. Preset `{res['preset']}`: U-Net width {p['unet_width']}, depth {p['unet_depth']}, "
        f"batch {p['batch2d']} of {p['image']}x{p['image']} images (C4, regular fields); 3D CNN width "
        f"{p['cnn_width']} (SO(3) steerable, hidden fields l = 0 + 1 + 2), batch {p['batch3d']} of "
        f"{p['volume']}^3 volumes. Adam step. Command: `{command}`.",
        "",
        "*penalty* is the forward and backward of `lambda_perp * sum ||W - P(W)||_F` alone; *share* is that "
        "time over a training step without the penalty; *ratio* is a step with the penalty over a step "
        "without. *projectors* is what all pair projectors keep (shared across layers), *dense basis* what "
        "a per-layer dense basis of the equivariant subspace would need, *dense P* a per-layer dense projector.",
        "",
        "| model | route | layers | step (ms) | penalty (ms) | share | ratio | projectors | dense basis | dense P |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['model']} | {r['route']} | {r['layers']} | {r['step_s'] * 1e3:.1f} | {r['penalty_s'] * 1e3:.2f} | "
            f"{100 * r['penalty_fraction']:.1f} % | {r['step_ratio']:.3f} | {format_bytes(r['projector_bytes'])} | "
            f"{format_bytes(r['dense_basis_bytes'])} | {format_bytes(r['dense_projector_bytes'])} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> Dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="default")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default=None)
    ap.add_argument("--markdown", default=None)
    args = ap.parse_args(argv)
    res = run(args.preset, device=args.device, repeats=args.repeats)
    return save_benchmark(res, args.json or f"benchmarks/results/conv-{args.preset}.json",
                          args.markdown or f"docs/benchmarks/conv-{args.preset}.md", to_markdown,
                          "benchmarks/bench_conv.py", argv)


if __name__ == "__main__":
    main()
