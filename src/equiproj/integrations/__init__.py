"""Integrations with training frameworks (optional dependencies, imported on demand).

* :mod:`equiproj.integrations.lightning`: :class:`~equiproj.integrations.lightning.ProjectionRegulariserCallback`,
  the projection penalty as a Lightning callback (``pip install -e ".[lightning]"``).
"""

__all__: list = []
