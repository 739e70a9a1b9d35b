"""Run results: the file names of a run folder, ``result.json``, and rows of ``results.csv``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Union

from .._io import append_csv_row
from ._distributed import is_main_process

__all__ = ["load_result", "result_row", "record_result", "CHECKPOINT_NAME", "RESULT_NAME", "MODEL_NAME",
           "BEST_MODEL_NAME"]

#: File names inside ``out_dir``.
CHECKPOINT_NAME = "checkpoint.pt"
RESULT_NAME = "result.json"
MODEL_NAME = "model.pt"
BEST_MODEL_NAME = "best_model.pt"

_CHECKPOINT_FORMAT = 1


def load_result(out_dir: Union[str, os.PathLike]) -> Optional[Dict[str, Any]]:
    """The ``result.json`` of a run folder, or ``None`` if it has none."""
    path = Path(out_dir) / RESULT_NAME
    if not path.exists():
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _flatten(prefix: str, obj: Any, out: Dict[str, Any]) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(obj, (list, tuple)):
        out[prefix] = json.dumps(obj)
    else:
        out[prefix] = obj


def result_row(result: Dict[str, Any], **extra: Any) -> Dict[str, Any]:
    """One flat CSV row of a :func:`fit` result: ``extra`` first, then the configuration fields
    (``meta`` as ``meta.<key>``), the final metrics (``train_<name>``, ``eval_<name>``), the
    timings and ``device_description``. The history is left out."""
    row: Dict[str, Any] = {}
    _flatten("", extra, row)
    _flatten("", {k: v for k, v in result.get("config", {}).items()}, row)
    row["config_hash"] = result.get("config_hash")
    final = result.get("final", {})
    for k, v in final.get("train", {}).items():
        row[f"train_{k}"] = v
    for k, v in final.get("eval", {}).items():
        row[f"eval_{k}"] = v
    for k in ("status", "steps", "epochs", "wall_time_s", "time_per_step_s", "samples_per_s", "world_size",
              "amp_active", "resumes", "out_dir"):
        if k in result:
            row[k] = result[k]
    if "device" in result:  # the configured device string stays under "device"
        row["device_description"] = result["device"]
    return row


def record_result(csv_path: Union[str, os.PathLike], row: Dict[str, Any], **extra: Any) -> Optional[Dict[str, Any]]:
    """Append a run to an aggregate CSV over runs (atomically, header grown as needed).

    ``row`` is a flat dict, or a :func:`fit` result (flattened by :func:`result_row`, ``extra``
    columns first). Only the main process writes; returns the row written (``None`` elsewhere).

    Examples
    --------
    >>> import os, tempfile
    >>> from equiproj.train import record_result
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = os.path.join(d, "runs.csv")
    ...     _ = record_result(path, {"lambda_perp": 0.1, "test_mse": 0.02})
    ...     _ = record_result(path, {"lambda_perp": 1.0, "test_mse": 0.01})
    ...     print(open(path).read().strip())
    lambda_perp,test_mse
    0.1,0.02
    1.0,0.01
    """
    if "config" in row and "final" in row:
        row = result_row(row, **extra)
    else:
        row = {**extra, **row}
    if not is_main_process():
        return None
    append_csv_row(csv_path, row)
    return row
