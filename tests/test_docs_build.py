"""The API reference builds without warnings (Sphinx with numpydoc; needs the [docs] extra)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sphinx")
pytest.importorskip("numpydoc")

ROOT = Path(__file__).resolve().parents[1]


def test_api_reference_builds_without_warnings(tmp_path):
    # the documented command (DEVELOPERS.md), into a temporary folder; -W turns warnings into errors
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-E", "-q", "-b", "html",
           str(ROOT / "docs" / "api"), str(tmp_path / "html")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    page = (tmp_path / "html" / "equiproj.nn.html").read_text()
    assert "FieldBatchNorm" in page and "Parameters" in page
    for name in ("equiproj.groups", "equiproj.interop.e3nn", "equiproj.integrations.lightning"):
        assert (tmp_path / "html" / f"{name}.html").exists()
