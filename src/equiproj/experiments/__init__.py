"""The paper's experiments on top of the library: presets, data, models, training, reports.

``run(RunConfig(...), out)`` trains and evaluates one configuration; ``sweep`` runs a grid and
skips finished runs; ``report(out)`` writes Markdown tables and figures (also from the
``results.csv`` of an earlier sweep). The ``equiproj``
command line (``equiproj run | sweep | report | bench | demo``) is a thin layer over these.
"""

from ._core import (EXPERIMENTS, Experiment, RunConfig, Setup, available_experiments, collect, get_experiment,
                    read_results_csv, register_experiment, report, run, sweep)

__all__ = ["RunConfig", "Setup", "Experiment", "EXPERIMENTS", "register_experiment", "get_experiment",
           "available_experiments", "run", "sweep", "collect", "report", "read_results_csv"]
