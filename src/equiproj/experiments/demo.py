"""``equiproj demo``: the README's main job, about four minutes on a 2-core CPU (one thread).

It runs, at the ``ci`` preset:

1. the SO(2) toy on the wedge, over ``lambda_perp`` and ``lambda_G``, with a plain MLP for
   comparison (decision boundaries annotated with the invariance error);
2. the SO(2) toy on the wavey rings against the symmetry-breaking amplitude (plain, strict,
   projection);
3. the modified-inertia task with ``c = 0`` (exact O(3) symmetry) and ``c = 0.3`` (broken):
   plain MLP, strict equivariant MLP, and the projection penalty for two values of
   ``lambda_perp``;

and writes ``<out>/report.md`` with tables and figures (``<out>/figures``). Every run is
resumable: running the demo again skips what is finished.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from .._io import atomic_write_text
from ._core import report, sweep

__all__ = ["demo"]


#: Seconds per training step and per run (data, set-up, final metrics) with one thread on a
#: 2-core machine (``ci`` preset; measured while other jobs shared it), for the time estimate
#: printed before the demo starts.
_STEP_SECONDS = {"so2-toy": 0.006, "vectors": 0.02}
_RUN_SECONDS = {"so2-toy": 1.0, "vectors": 2.0}


def _plan(quick: bool, steps: Optional[int], threads: Optional[int]):
    toy_steps = steps or (40 if quick else None)
    vec_steps = steps or (150 if quick else None)
    lps = [0.0, 1e-2, 1.0] if not quick else [0.0, 1.0]
    lgs = [0.0, 1e-2] if not quick else [0.0]
    common = dict(preset="ci", threads=threads)
    levels = [0.0, 0.3]
    return [
        ("so2-toy", {"method": ["projection"], "lambda_perp": lps, "lambda_G": lgs},
         dict(common, steps=toy_steps, options={"dataset": "wedge"})),
        ("so2-toy", {"method": ["plain"]}, dict(common, steps=toy_steps, options={"dataset": "wedge", "arch": "mlp"})),
        ("so2-toy", {"method": ["plain", "strict", "projection"], "level": [0.0, 1.0] if quick else [0.0, 0.5, 1.0]},
         dict(common, steps=toy_steps, lambda_perp=1e-2, options={"dataset": "rings"})),
        ("vectors", {"method": ["plain"], "level": levels},
         dict(common, steps=vec_steps, options={"task": "modified_inertia", "arch": "mlp"})),
        ("vectors", {"method": ["strict", "projection"], "lambda_perp": [3e-2, 1e-1], "level": levels},
         dict(common, steps=vec_steps, options={"task": "modified_inertia"})),
    ]


def demo(out: str, progress: bool = True, quick: bool = False, steps: Optional[int] = None,
         threads: Optional[int] = None) -> Path:
    """Run the demo into ``out`` and return the path of its report.

    ``quick=True`` runs fewer configurations with few steps (used by the test suite). The runs
    use one CPU thread unless ``threads`` says otherwise: these models are small, and more
    threads on a shared or busy CPU slow every step down by an order of magnitude. Before it
    starts, the demo prints how many runs are left and the expected time; a line per sweep and
    a progress bar per run follow.
    """
    import math
    import time

    from ._core import METRICS_NAME, _say, get_experiment, sweep_configs

    out_p = Path(out)
    plan = _plan(quick, steps, threads)
    todo, total, secs = 0, 0, 0.0
    for name, grid, base in plan:
        preset = get_experiment(name).presets["ci"]
        for cfg in sweep_configs(name, grid, base):
            total += 1
            if not (out_p / "runs" / cfg.run_id() / METRICS_NAME).exists():
                todo += 1
                secs += _RUN_SECONDS[name] + (cfg.steps or preset["steps"]) * _STEP_SECONDS[name]
    minutes = max(1, math.ceil(secs / 60)) if todo else 0
    _say(f"equiproj demo: {total} runs, {total - todo} already finished; about {minutes} minute(s) for the rest "
         f"with {threads or 1} thread(s) on a 2-core CPU (longer on a busy one)", progress)
    t0 = time.perf_counter()
    rows = []
    for i, (name, grid, base) in enumerate(plan, 1):
        _say(f"[{i}/{len(plan)}] {name}: {', '.join(f'{k}={v}' for k, v in grid.items())} "
             f"({time.perf_counter() - t0:.0f} s so far)", progress)
        rows = sweep(name, out, grid, base=base, progress=progress)
    body = report(out)
    layers = ""
    chosen = [r for r in rows if r.get("method") == "projection" and r.get("level") == 0.3]
    if chosen:
        r = min(chosen, key=lambda r: r["lambda_perp"])
        path = out_p / "runs" / r["run_id"] / "layers.json"
        if path.exists():
            import json

            from ..regularise import LayerReport, format_report

            rows_l = [LayerReport(**d) for d in json.loads(path.read_text())]
            layers = (f"\n## Per-layer report\n\nThe equivariant MLP trained with `lambda_perp = {r['lambda_perp']:g}` on the "
                      "modified inertia task with `c = 0.3` (norms of the weight with its bias appended as a column; "
                      "dim P / dim W: equivariant and total parameters):\n\n" + format_report(rows_l) + "\n")
    intro = (
        "# equiproj demo\n\n"
        "Projection-based regularisation towards equivariance (Berndt and Stühmer, arXiv 2601.05028) on two "
        "small problems, at the `ci` preset on a CPU" + (" (quick mode: few steps)" if quick else "") + ".\n\n"
        "* **so2-toy**: a circular-harmonic network with complex linear layers; `lambda_perp` pulls both layers "
        "towards their frequency-preserving (equivariant) part, which makes the classifier rotation-invariant.\n"
        "* **vectors / modified inertia**: an equivariant MLP (RepLinear, bilinear features, gated "
        "nonlinearities) on the O(3) inertia task whose target is broken by `c (I e_z) e_z^T`; with `c = 0` the "
        "strict model wins, with `c = 0.3` an intermediate `lambda_perp` beats both the plain MLP and the strict "
        "model (see the tables).\n\n"
        f"Re-run with `equiproj demo --out {out}` (finished runs are skipped); individual runs with "
        "`equiproj run`, grids with `equiproj sweep`, this report with `equiproj report`.\n\n"
    )
    text = intro + body.split("\n", 1)[1] + layers
    path = out_p / "report.md"
    atomic_write_text(path, text)
    return path
