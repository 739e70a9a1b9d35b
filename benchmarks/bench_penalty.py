"""Cost of the projection penalty against a plain training step (issue 11, item 5).

Measured in one process, one thread, as ratios within the run:

* ``unet2d-C4``: :class:`equiproj.models.UNet2d` at the ``default`` preset of
  ``benchmarks/bench_conv.py`` (width 16, depth 3, batch 8 of 64x64 images), declared for C4
  with :func:`equiproj.declare_model` (regular hidden fields) on route ``spatial``,
  ``spectral`` and ``auto``. *plain* is an Adam step on the task loss of the undeclared model;
  *penalty* the forward and backward of ``ProjectionRegulariser(scheme="penalty")`` alone;
  *share* = penalty / plain; *spectral / spatial* compares the penalty of the two routes.
* ``mlp-C8``: three ``RepLinear`` layers with C8 regular fields (4 in/out, 8 hidden), batch 512,
  as in ``benchmarks/bench_methods.py``: the step of ``make_method("projection")`` (its default
  scheme) and of the schemes ``penalty`` and ``proximal`` over the ``plain`` step.
* ``unet2d-C4 proximal``: the step of the proximal scheme over the penalty scheme.

The script uses only the public API, so it also runs on older versions of the library
(``--label before`` with ``PYTHONPATH`` pointing at them); ``--merge`` writes the Markdown table
of every labelled JSON in ``benchmarks/results/penalty-*.json`` to ``docs/benchmarks/penalty.md``.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_penalty.py --label after
    python benchmarks/bench_penalty.py --merge
"""

from __future__ import annotations

import argparse
import copy
import glob
import json
import os
import platform
import statistics
import time

import torch
from torch import nn
from torch.nn.utils import parametrize

UNET = dict(width=16, depth=3, image=64, batch=8)
MLP = dict(mlp_in=4, mlp_hidden=8, depth=3, batch=512)


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def interleaved(fns, dev, rounds=7, min_time=0.1):
    """Time every function of ``fns`` once per round, in turn, ``rounds`` times (each sample runs a
    function enough times to last ``min_time``): a load that changes during the run then affects
    every variant of one round alike, and ratios are taken within rounds. Returns per-round times."""
    inner = {}
    for name, fn in fns.items():
        for _ in range(2):
            fn()
        _sync(dev)
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        inner[name] = max(1, int(min_time / max(time.perf_counter() - t0, 1e-7)))
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            _sync(dev)
            t0 = time.perf_counter()
            for _ in range(inner[name]):
                fn()
            _sync(dev)
            times[name].append((time.perf_counter() - t0) / inner[name])
    return times


def _med(xs):
    return statistics.median(xs)


def _ratio(times, a, b):
    return _med([x / y for x, y in zip(times[a], times[b])])


def _unet_case(dev, repeats, routes=("spatial", "spectral", "auto")):
    from equiproj import ProjectionRegulariser, declare_model
    from equiproj.baselines import make_method
    from equiproj.groups import cyclic
    from equiproj.models import UNet2d

    torch.manual_seed(0)
    G = cyclic(4)
    base = UNet2d(1, 1, width=UNET["width"], depth=UNET["depth"])
    x = torch.randn(UNET["batch"], 1, UNET["image"], UNET["image"], device=dev)
    y = torch.randn_like(x)

    def step_fn(model, opt, extra=None):
        def step():
            opt.zero_grad(set_to_none=True)
            with parametrize.cached():
                loss = nn.functional.mse_loss(model(x), y)
                if extra is not None:
                    loss = loss + extra()
            loss.backward()
            opt.step()
        return step

    fns = {}
    plain = copy.deepcopy(base).to(dev)
    fns["plain step"] = step_fn(plain, torch.optim.Adam(plain.parameters(), lr=1e-4))
    for route in routes:
        model = copy.deepcopy(base).to(dev)
        declare_model(model, G, route=route)
        reg = ProjectionRegulariser(model, lambda_perp=1e-2, scheme="penalty")
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)

        def penalty_only(reg=reg, opt=opt):
            opt.zero_grad(set_to_none=True)
            reg().backward()

        fns[f"penalty {route}"] = penalty_only
    for scheme in ("penalty", "proximal"):
        model = copy.deepcopy(base).to(dev)
        declare_model(model, G)
        m = make_method("projection", model, lambda_perp=1e-2, scheme=scheme)
        opt = torch.optim.Adam(m.model.parameters(), lr=1e-4)
        m.attach(opt)
        fns[f"step {scheme}"] = step_fn(m.model, opt, m.penalty)
    times = interleaved(fns, dev, rounds=repeats)
    rows = [dict(case="unet2d-C4", what="plain step", seconds=_med(times["plain step"]))]
    for route in routes:
        k = f"penalty {route}"
        rows.append(dict(case="unet2d-C4", what=k, seconds=_med(times[k]), share=_ratio(times, k, "plain step")))
    if "spectral" in routes and "spatial" in routes:
        rows.append(dict(case="unet2d-C4", what="spectral / spatial", ratio=_ratio(times, "penalty spectral", "penalty spatial")))
    for scheme in ("penalty", "proximal"):
        k = f"step {scheme}"
        rows.append(dict(case="unet2d-C4", what=k, seconds=_med(times[k]), ratio=_ratio(times, k, "plain step")))
    rows.append(dict(case="unet2d-C4", what="proximal / penalty", ratio=_ratio(times, "step proximal", "step penalty")))
    return rows


def _mlp_case(dev, repeats):
    from equiproj.baselines import make_method
    from equiproj.groups import cyclic
    from equiproj.nn import RepLinear

    torch.manual_seed(0)
    G = cyclic(8)
    rin, hid = MLP["mlp_in"] * G.regular(), MLP["mlp_hidden"] * G.regular()
    layers = [RepLinear(rin, hid), nn.ReLU()]
    for _ in range(MLP["depth"] - 2):
        layers += [RepLinear(hid, hid), nn.ReLU()]
    layers.append(RepLinear(hid, rin))
    base = nn.Sequential(*layers)
    x = torch.randn(MLP["batch"], rin.dim, device=dev)
    y = torch.randn_like(x)
    fns = {}
    for label, name, opts in (("plain", "plain", {}), ("projection (default scheme)", "projection", {"lambda_perp": 1e-2}),
                              ("projection penalty", "projection", {"lambda_perp": 1e-2, "scheme": "penalty"}),
                              ("projection proximal", "projection", {"lambda_perp": 1e-2, "scheme": "proximal"}),
                              ("strict", "strict", {})):
        m = make_method(name, copy.deepcopy(base).to(dev), **opts)
        opt = torch.optim.Adam(m.model.parameters(), lr=1e-3)
        m.attach(opt)

        def step(m=m, opt=opt):
            opt.zero_grad(set_to_none=True)
            with parametrize.cached():
                loss = nn.functional.mse_loss(m.model(x), y) + m.penalty(None)
            loss.backward()
            opt.step()

        fns[label] = step
    times = interleaved(fns, dev, rounds=repeats)
    rows = [dict(case="mlp-C8", what=f"step {k}", seconds=_med(v), ratio=_ratio(times, k, "plain")) for k, v in times.items()]
    rows.append(dict(case="mlp-C8", what="proximal / penalty", ratio=_ratio(times, "projection proximal", "projection penalty")))
    return rows


def device_text(dev):
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)} (CUDA {torch.version.cuda}, torch {torch.__version__})"
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s) (torch {torch.__version__})"


def run(label, dev, repeats):
    import equiproj

    rows = _unet_case(dev, repeats) + _mlp_case(dev, repeats)
    for r in rows:
        print(label, r, flush=True)
    return dict(benchmark="penalty", label=label, device=device_text(dev), rows=rows,
                equiproj=os.path.dirname(equiproj.__file__))


def _fmt(r):
    s = f"{r['seconds'] * 1e3:.2f}" if "seconds" in r else ""
    extra = []
    if "share" in r:
        extra.append(f"share {100 * r['share']:.1f} %")
    if "step_ratio" in r:
        extra.append(f"step ratio {r['step_ratio']:.3f}")
    if "ratio" in r:
        extra.append(f"ratio {r['ratio']:.3f}")
    return s, ", ".join(extra)


def merge(paths, out):
    results = [json.load(open(p)) for p in sorted(paths)]
    order = {"before": 0, "after": 1, "split-batched": 2, "pre-fused": 3, "fused": 4}
    results.sort(key=lambda r: (order.get(r["label"].split()[0], 2), r["label"]))
    lines = ["## Penalty cost against a plain step", "",
             "Made by `benchmarks/bench_penalty.py` (see its docstring): one thread, ratios within one run. "
             "`before` is the code before the batched penalty and `after` the code with it (version 0.2.0), "
             "`split-batched` the split scheme evaluated in one node per model (after 0.2.0), `pre-fused` "
             "and `fused` the code before and after the penalty became one autograd node with its closed-form "
             "gradient (and the leaner proximal step); each column pair was measured in one session with its "
             "neighbour (absolute times differ between sessions); "
             "*share* = penalty forward+backward / plain Adam step, *ratio* = this step / plain step (or the named "
             "quotient). Targets of issue 11: share <= 5 % (unet2d-C4), spectral / spatial <= 1.5, "
             "projection step <= 1.3x plain (mlp-C8), proximal no costlier than penalty.", ""]
    for res in results:
        lines.append(f"- `{res['label']}`: {res['device']}")
    lines += ["", "| case | quantity | " + " | ".join(f"{r['label']} ms | {r['label']}" for r in results) + " |",
              "|---|---|" + "---:|---|" * len(results)]
    keys = []
    for res in results:
        for r in res["rows"]:
            k = (r["case"], r["what"])
            if k not in keys:
                keys.append(k)
    for k in keys:
        cells = []
        for res in results:
            r = next((r for r in res["rows"] if (r["case"], r["what"]) == k), None)
            cells += list(_fmt(r)) if r else ["", ""]
        lines.append(f"| {k[0]} | {k[1]} | " + " | ".join(cells) + " |")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {out}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--label", default="after")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", default=None)
    ap.add_argument("--merge", action="store_true", help="write docs/benchmarks/penalty.md from the JSON files")
    ap.add_argument("--markdown", default="docs/benchmarks/penalty.md")
    args = ap.parse_args(argv)
    if args.merge:
        return merge(glob.glob("benchmarks/results/penalty-*.json"), args.markdown)
    torch.set_num_threads(args.threads)
    res = run(args.label, torch.device(args.device), args.repeats)
    path = args.json or f"benchmarks/results/penalty-{args.label.replace(' ', '_')}.json"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(res, f, indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
