"""The ``equiproj`` command: run, sweep, report, bench, demo, list.

Examples::

    equiproj demo --out demo-out
    equiproj run so2-toy --method projection --lambda-perp 0.01 --preset ci --out runs/toy
    equiproj run vectors --method strict --option task=inertia --seed 1 --out runs/vec
    equiproj sweep vectors --methods plain strict projection --lambda-perp 1e-3 1e-2 1e-1 \\
        --levels 0 0.3 --seeds 0 1 2 --option task=modified_inertia --out runs/vec
    equiproj sweep vectors --methods projection --schemes split penalty proximal --lambda-perp 0.1 1 \\
        --preset rpp --option arch=emlp384 --out runs/schemes
    equiproj report runs/vec
    equiproj bench projection --widths 64 256
    equiproj list
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, List, Optional

__all__ = ["main", "build_parser"]


def _parse_value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _options(pairs: Optional[List[str]]) -> Dict[str, Any]:
    out = {}
    for p in pairs or []:
        if "=" not in p:
            raise SystemExit(f"equiproj: --option expects key=value, got {p!r}")
        k, v = p.split("=", 1)
        out[k.strip()] = _parse_value(v.strip())
    return out


def _add_common(p: argparse.ArgumentParser, sweep: bool) -> None:
    n = "+" if sweep else None
    p.add_argument("experiment", help="experiment name (see `equiproj list`)")
    if sweep:
        p.add_argument("--methods", nargs="+", default=None, help="methods (default: the experiment's sweep)")
    else:
        p.add_argument("--method", default="projection", help="method name (see `equiproj list`)")
    p.add_argument("--lambda-perp", dest="lambda_perp", type=float, nargs=n, default=None,
                   help="weight of ||W - P(W)||" + (" (several values)" if sweep else " (default 0.01)"))
    p.add_argument("--lambda-G", dest="lambda_G", type=float, nargs=n, default=None,
                   help="weight of ||P(W)||" + (" (several values)" if sweep else " (default 0)"))
    p.add_argument("--norm" + ("s" if sweep else ""), dest="norm", nargs=n, default=None,
                   help="penalty norm: fro, fro2, spectral, nuclear, max, l1, l21, ...")
    p.add_argument("--route" + ("s" if sweep else ""), dest="route", nargs=n, default=None,
                   help="projection route: auto, spatial, spectral, basis")
    p.add_argument("--scheme" + ("s" if sweep else ""), dest="scheme", nargs=n, default=None,
                   help="training scheme of the projection method: split (default), penalty (the paper's), "
                        "proximal, split-proximal (see docs/training.md)")
    p.add_argument("--perp-lr", dest="perp_lr", type=float, nargs=n, default=None,
                   help="learning rate of the non-equivariant part B relative to the rest (split schemes; "
                        "default 0.1)")
    p.add_argument("--k", type=int, nargs=n, default=None, help="sampled group elements (sample-based methods)")
    p.add_argument("--seed" + ("s" if sweep else ""), dest="seed", type=int, nargs=n, default=None, help="random seed")
    p.add_argument("--level" + ("s" if sweep else ""), dest="level", type=float, nargs=n, default=None,
                   help="symmetry-breaking level (the experiment's knob, see `equiproj list`)")
    p.add_argument("--preset", default="ci", help="size preset: ci (CPU, minutes) or paper (the real size, GPU)")
    p.add_argument("--steps", type=int, default=None, help="override the preset's number of steps")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:<i>")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (use 1 on a shared or busy CPU: small models slow down badly otherwise)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="experiment-specific option (repeatable), e.g. --option task=inertia")
    p.add_argument("--out", required=True, help="output folder (runs/, results.csv, report.md)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="equiproj", description="Approximate equivariance by projection-based regularisation.",
        epilog=__doc__.split("Examples::", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", metavar="command")
    sub.required = True
    p = sub.add_parser("run", help="train and evaluate one configuration (resumable)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="example: equiproj run so2-toy --method projection --lambda-perp 0.01 --out runs/toy")
    _add_common(p, sweep=False)
    p = sub.add_parser("sweep", help="run a grid of configurations (resumable)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="example: equiproj sweep so2-toy --lambda-perp 0 1e-3 1e-2 1e-1 1 --lambda-G 0 1e-2 "
                              "--out runs/toy")
    _add_common(p, sweep=True)
    p = sub.add_parser("report", help="Markdown tables and PNG plots from a run folder")
    p.add_argument("out", help="folder written by run / sweep")
    p = sub.add_parser("bench", help="run a benchmark (projection, conv, steerable, methods, volumes)",
                       epilog="example: equiproj bench projection --widths 64 256 512")
    p.add_argument("name", help="projection | conv | steerable | methods | volumes")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the benchmark (see --help of each)")
    p = sub.add_parser("demo", help="the main job: a few-minute CPU demo writing a report with figures",
                       epilog="example: equiproj demo --out demo-out")
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 on a busy CPU)")
    p.add_argument("--quiet", action="store_true")
    sub.add_parser("list", help="experiments, their presets, levels and methods; all method names")
    return ap


def _one(v):
    return v[0] if isinstance(v, list) else v


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except (ValueError, TypeError) as err:
        print(f"equiproj: error: {err}", file=sys.stderr)
        return 2


def _dispatch(args) -> int:
    from . import experiments as ex

    threads = getattr(args, "threads", None)
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be >= 1, got {threads}")
        import torch

        torch.set_num_threads(threads)

    if args.command == "list":
        from .baselines import available_methods

        for name in ex.available_experiments():
            e = ex.get_experiment(name)
            print(f"{name}: {e.description}")
            print(f"    presets: {', '.join(sorted(e.presets))}; level: {e.level_name}; methods: {', '.join(e.methods)}")
        print(f"all methods: {', '.join(available_methods())}")
        return 0
    if args.command == "report":
        ex.report(args.out)
        print(f"wrote {args.out}/report.md")
        return 0
    if args.command == "bench":
        import importlib

        names = {"projection": "projection", "conv": "conv", "steerable": "steerable", "methods": "methods",
                 "volumes": "volumes"}
        if args.name not in names:
            raise ValueError(f"unknown benchmark {args.name!r}: choose one of {', '.join(names)}")
        importlib.import_module(f"equiproj.benchmarks.{names[args.name]}").main(args.args)
        return 0
    if args.command == "demo":
        from .experiments.demo import demo

        path = demo(args.out, progress=not args.quiet)
        print(f"wrote {path}")
        return 0
    options = _options(args.option)
    if args.command == "run":
        cfg = ex.RunConfig(experiment=args.experiment, method=args.method,
                           lambda_perp=1e-2 if args.lambda_perp is None else args.lambda_perp,
                           lambda_G=0.0 if args.lambda_G is None else args.lambda_G,
                           norm=args.norm or "fro", route=args.route or "auto", k=args.k or 1,
                           seed=0 if args.seed is None else args.seed, preset=args.preset,
                           level=args.level, steps=args.steps, device=args.device, options=options,
                           scheme=args.scheme, perp_lr=args.perp_lr)
        if cfg.level is None:
            cfg.level = ex.get_experiment(args.experiment).default_level
        row = ex.run(cfg, args.out, progress=not args.quiet)
        shown = {k: v for k, v in row.items() if k not in ("config",) and not isinstance(v, dict)}
        for k, v in shown.items():
            print(f"{k}: {v}")
        return 0
    # sweep
    exp = ex.get_experiment(args.experiment)
    given = {f: v for f, v in (("method", args.methods), ("lambda_perp", args.lambda_perp),
                               ("lambda_G", args.lambda_G), ("norm", args.norm), ("route", args.route),
                               ("scheme", args.scheme), ("perp_lr", args.perp_lr),
                               ("k", args.k), ("seed", args.seed), ("level", args.level)) if v is not None}
    # the experiment's default grid only when no axis is given at all
    grid: Dict[str, List[Any]] = {f: list(v) for f, v in (given or exp.default_sweep).items()}
    base = dict(preset=args.preset, steps=args.steps, device=args.device, options=options)
    if "level" not in grid and exp.default_level is not None:
        base["level"] = exp.default_level
    rows = ex.sweep(args.experiment, args.out, grid, base=base, progress=not args.quiet)
    print(f"{len(rows)} runs in {args.out}; results in {args.out}/results.csv (`equiproj report {args.out}`)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
