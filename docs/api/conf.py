"""Sphinx configuration of the equiproj API reference (``python -m sphinx -W -b html docs/api build/api``)."""

import importlib.util
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "src")))

import equiproj  # noqa: E402

project = "equiproj"
author = "equiproj developers"
copyright = "equiproj developers"
release = version = equiproj.__version__

extensions = ["sphinx.ext.autodoc", "sphinx.ext.mathjax", "numpydoc"]

# optional dependencies that the build does not need installed
autodoc_mock_imports = [m for m in ("escnn", "lightning", "pytorch_lightning") if importlib.util.find_spec(m) is None]
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True}
autodoc_typehints = "none"          # numpydoc's Parameters sections carry the types
numpydoc_show_class_members = False  # members are documented by autodoc below each class
numpydoc_xref_param_type = False
numpydoc_validation_checks = set()

html_theme = "alabaster"
html_title = f"equiproj {release} API reference"
exclude_patterns = ["_build"]
