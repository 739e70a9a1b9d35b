"""Interoperability with other libraries (optional dependencies, imported on demand).

* :mod:`equiproj.interop.escnn`: escnn groups, representations and field types.
"""

__all__: list = []
