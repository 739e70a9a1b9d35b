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
    equiproj sweep so2-toy --lambda-perp 0 0.01 0.1 1 --seeds 0 1 2 --shard 0/2 --out runs/toy
    equiproj report runs/shard0 runs/shard1 --into runs/merged
    equiproj bench projection --widths 64 256 --out bench-out
    equiproj list

Several GPUs for one run: torchrun --nproc-per-node 4 -m equiproj.cli run ct --preset paper --out runs/ct
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
        if "=" not in p or not p.split("=", 1)[0].strip():
            raise ValueError(f"--option expects key=value, got {p!r}")
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
                   help="penalty norm of the projection method: fro, fro2, spectral, nuclear, max, l1, l21, ...")
    p.add_argument("--route" + ("s" if sweep else ""), dest="route", nargs=n, default=None,
                   help="projection route: auto, spatial, spectral, basis (experiments that have a choice: ct)")
    p.add_argument("--scheme" + ("s" if sweep else ""), dest="scheme", nargs=n, default=None,
                   help="training scheme of the projection method: split (default), penalty (the paper's), "
                        "proximal, split-proximal (see docs/training.md)")
    p.add_argument("--perp-lr", dest="perp_lr", type=float, nargs=n, default=None,
                   help="learning rate of the non-equivariant part B relative to the rest (split schemes; "
                        "default 0.1)")
    p.add_argument("--k", type=int, nargs=n, default=None,
                   help="sampled group elements (sample-output, eqreg, weight-sample; default 1)")
    p.add_argument("--seed" + ("s" if sweep else ""), dest="seed", type=int, nargs=n, default=None, help="random seed")
    p.add_argument("--level" + ("s" if sweep else ""), dest="level", type=float, nargs=n, default=None,
                   help="symmetry-breaking level (the experiment's knob, see `equiproj list`)")
    p.add_argument("--preset", default="ci", help="size preset (see `equiproj list`): ci (CPU, minutes), "
                                                  "paper (the real size, GPU), ...")
    p.add_argument("--steps", type=int, default=None, help="override the preset's number of steps")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:<i>")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default 1 on a CPU: small models are fastest and reproducible with one "
                        "thread; another count is part of the run's identity)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="experiment-specific option (repeatable), e.g. --option task=inertia (keys: `equiproj list`)")
    p.add_argument("--out", required=True, help="output folder (runs/, results.csv, report.md)")
    p.add_argument("--quiet", action="store_true", help="no progress bars nor status lines")
    if sweep:
        p.add_argument("--shard", default=None, metavar="I/N",
                       help="run only the configurations I, I+N, I+2N, ... (0 <= I < N): N jobs, e.g. a SLURM array "
                            "with --shard $SLURM_ARRAY_TASK_ID/N, split a sweep without coordination")
        p.add_argument("--skip-bad", action="store_true",
                       help="go on without run folders that cannot be read (listed) instead of failing")


class _Parser(argparse.ArgumentParser):
    """Errors print this (sub)command's usage, and exit with code 2."""

    def error(self, message):  # pragma: no cover - exercised through main()
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    debug = argparse.ArgumentParser(add_help=False)  # --debug after the command as well
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the full traceback of an error")
    ap = _Parser(
        prog="equiproj", description="Approximate equivariance by projection-based regularisation.",
        epilog=__doc__.split("Examples::", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = ap.add_subparsers(dest="command", metavar="command", parser_class=_Parser)
    sub.required = True
    p = sub.add_parser("run", help="train and evaluate one configuration (resumable)", parents=[debug],
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="example: equiproj run so2-toy --method projection --lambda-perp 0.01 --out runs/toy\n"
                              "several GPUs: torchrun --nproc-per-node 4 -m equiproj.cli run ct --preset paper ...")
    _add_common(p, sweep=False)
    p = sub.add_parser("sweep", help="run a grid of configurations (resumable)", parents=[debug],
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="example: equiproj sweep so2-toy --lambda-perp 0 1e-3 1e-2 1e-1 1 --lambda-G 0 1e-2 "
                              "--out runs/toy\nsplit over jobs: ... --shard 0/4, ..., --shard 3/4 (then `equiproj "
                              "report` on the folder, or on the jobs' folders to merge them)")
    _add_common(p, sweep=True)
    p = sub.add_parser("report", help="Markdown tables and PNG plots from one run folder, or merged from several",
                       parents=[debug], formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples: equiproj report shard0 shard1 --into merged\n"
                              "          equiproj report old/results.csv new_runs --into merged  (an earlier "
                              "sweep's table, its run folders gone, with new runs)")
    p.add_argument("out", nargs="+", help="folder(s) written by run / sweep, or results.csv table(s) of earlier "
                                          "sweeps")
    p.add_argument("--into", default=None, help="where report.md, results.csv and figures/ go (default: the first "
                                                "folder; required with tables only)")
    p.add_argument("--skip-bad", action="store_true",
                   help="report without run folders that cannot be read (they are listed in the report)")
    p = sub.add_parser("bench", help="run a benchmark (projection, conv, steerable, methods, volumes)", parents=[debug],
                       epilog="example: equiproj bench projection --widths 64 256 512 --out bench-out")
    p.add_argument("name", help="projection | conv | steerable | methods | volumes")
    p.add_argument("--out", default=None,
                   help="folder for the JSON and Markdown results (default: a fresh bench-<name>-<time> folder in the "
                        "working directory)")
    p.add_argument("--update-docs", action="store_true",
                   help="write the results into the repository's docs/benchmarks and benchmarks/results instead")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the benchmark (see --help of each)")
    p = sub.add_parser("demo", help="the main job: a CPU demo writing a report with figures", parents=[debug],
                       epilog="example: equiproj demo --out demo-out")
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1: fastest for these "
                                                             "small models, and reproducible)")
    p.add_argument("--quiet", action="store_true")
    sub.add_parser("list", help="experiments with their presets, methods and --option keys; all method names",
                   parents=[debug])
    ap._subcommands = dict(sub.choices)
    return ap


def _one(v):
    return v[0] if isinstance(v, list) else v


def _expected_errors():
    from .experiments._core import ExperimentError
    from .train import DeviceUnavailableError

    return (ValueError, TypeError, OSError, FloatingPointError, DeviceUnavailableError, ExperimentError)


def main(argv: Optional[List[str]] = None) -> int:
    ap = build_parser()
    args, extra = ap.parse_known_args(argv)
    if extra:  # unknown arguments: the subcommand's usage, not the top-level one
        sub = ap._subcommands.get(getattr(args, "command", None), ap)
        sub.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        print("equiproj: interrupted; run the same command again to resume (finished runs are kept)",
              file=sys.stderr)
        return 130
    except Exception as err:
        if getattr(args, "debug", False) or not isinstance(err, _expected_errors()):
            raise
        print(f"equiproj: error: {_one_line(err)}", file=sys.stderr)
        return 2


def _one_line(err: BaseException) -> str:
    """The error as one line per problem (the first line names it; listed folders follow)."""
    if isinstance(err, OSError) and err.filename and str(err.filename) not in str(err):
        text = f"{err.strerror or err}: {err.filename}"
    else:
        text = str(err) or type(err).__name__
    if isinstance(err, FloatingPointError) and "fit:" in text:
        text = text.replace("fit: ", "training diverged: ")
    return text


def _check_widths(args: List[str]) -> None:
    """``bench projection --widths``: positive multiples of 16 (C8: width / 8 regular fields; SO(3):
    width / 16 copies of the irreps of degree 0..3)."""
    if "--widths" not in args:
        return
    vals = []
    for t in args[args.index("--widths") + 1:]:
        if t.startswith("--"):
            break
        vals.append(t)
    bad = [v for v in vals if not (v.lstrip("-").isdigit() and int(v) > 0 and int(v) % 16 == 0)]
    if bad or not vals:
        raise ValueError(f"bench projection: --widths must be positive multiples of 16 (width / 8 regular fields of "
                         f"C8 and width / 16 copies of each SO(3) irrep of degree 0..3), got {', '.join(bad) or 'none'}")


def _list() -> None:
    from . import experiments as ex
    from .baselines import available_methods

    for name in ex.available_experiments():
        e = ex.get_experiment(name)
        print(f"{name}: {e.description}")
        for pn in sorted(e.presets):
            p = e.presets[pn]
            main_keys = ", ".join(f"{k}={p[k]}" for k in ("steps", "batch_size", "lr") if k in p)
            print(f"    preset {pn}: {main_keys}")
        print(f"    methods: {', '.join(e.methods)}")
        print(f"    level (--level): {e.level_name}" + (f", default {e.default_level:g}" if e.default_level is not None
                                                          else ""))
        if e.option_defaults:
            for k, (default, what) in e.option_defaults.items():
                print(f"    --option {k}=...  default {default}: {what}")
        if e.unused:
            print(f"    not used: {', '.join('--' + u.replace('_', '-') for u in e.unused)}")
    print(f"all methods: {', '.join(available_methods())}")


def _dispatch(args) -> int:
    from . import experiments as ex

    threads = getattr(args, "threads", None)
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")

    if args.command == "list":
        _list()
        return 0
    if args.command == "report":
        ex.report(args.out if len(args.out) > 1 else args.out[0], into=args.into, skip_bad=args.skip_bad)
        print(f"wrote {args.into or args.out[0]}/report.md")
        return 0
    if args.command == "bench":
        return _bench(args)
    if args.command == "demo":
        from .experiments.demo import demo

        path = demo(args.out, progress=not args.quiet, threads=threads)
        print(f"wrote {path}")
        return 0
    options = _options(args.option)
    if args.command == "run":
        cfg = ex.RunConfig(experiment=args.experiment, method=args.method,
                           lambda_perp=1e-2 if args.lambda_perp is None else args.lambda_perp,
                           lambda_G=0.0 if args.lambda_G is None else args.lambda_G,
                           norm=args.norm or "fro", route=args.route or "auto", k=1 if args.k is None else args.k,
                           seed=0 if args.seed is None else args.seed, preset=args.preset,
                           level=args.level, steps=args.steps, device=args.device, options=options,
                           scheme=args.scheme, perp_lr=args.perp_lr, threads=threads)
        if cfg.level is None:
            cfg.level = ex.get_experiment(args.experiment).default_level
        row = ex.run(cfg, args.out, progress=not args.quiet)
        from .train import is_main_process

        if is_main_process():
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
    base = dict(preset=args.preset, steps=args.steps, device=args.device, options=options, threads=threads)
    if "level" not in grid and exp.default_level is not None:
        base["level"] = exp.default_level
    from .experiments._core import parse_shard

    shard = parse_shard(args.shard)
    rows = ex.sweep(args.experiment, args.out, grid, base=base, progress=not args.quiet, shard=shard,
                    skip_bad=args.skip_bad)
    from .train import is_main_process

    if is_main_process():
        print(f"{len(rows)} runs in {args.out}; results in {args.out}/results.csv (`equiproj report {args.out}`)")
    return 0


def _bench(args) -> int:
    import importlib
    import time
    from pathlib import Path

    from ._io import check_writable_folder

    names = ("projection", "conv", "steerable", "methods", "volumes")
    if args.name not in names:
        raise ValueError(f"unknown benchmark {args.name!r}: choose one of {', '.join(names)}")
    extra = list(args.args)
    # --out and --update-docs may also follow the benchmark's own arguments
    if "--out" in extra:
        i = extra.index("--out")
        if i + 1 >= len(extra):
            raise ValueError("bench: --out needs a folder name")
        args.out = extra[i + 1]
        del extra[i:i + 2]
    if "--update-docs" in extra:
        extra.remove("--update-docs")
        args.update_docs = True
    if args.name == "projection":
        _check_widths(extra)
    if not args.update_docs and "--help" not in extra and "-h" not in extra:
        out = Path(args.out or f"bench-{args.name}-{time.strftime('%Y%m%d-%H%M%S')}")
        check_writable_folder(out)
        if "--json" not in extra:
            extra += ["--json", str(out / f"{args.name}.json")]
        if "--markdown" not in extra:
            extra += ["--markdown", str(out / f"{args.name}.md")]
        print(f"equiproj bench: results go to {out}/ (--update-docs writes the repository's docs instead)",
              file=sys.stderr)
    elif args.update_docs and args.out:
        raise ValueError("bench: give either --out or --update-docs, not both")
    importlib.import_module(f"equiproj.benchmarks.{args.name}").main(extra)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
