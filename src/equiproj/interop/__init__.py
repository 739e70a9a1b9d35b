"""Interoperability with other libraries (optional dependencies, imported on demand).

* :mod:`equiproj.interop.escnn`: escnn groups, representations and field types.
* :mod:`equiproj.interop.e3nn`: e3nn irreps (``"4x0e + 2x1o"``) as representations of ``so3()`` /
  ``o3()`` and back.
"""

__all__: list = []
