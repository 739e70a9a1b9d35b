"""Benchmarks that write JSON and Markdown tables (run them with ``benchmarks/*.py``).

Nothing here runs in the test suite; timings are ratios within one run on one device.
"""

from ._common import device_description, measure, write_json_atomic

__all__ = ["device_description", "measure", "write_json_atomic"]
