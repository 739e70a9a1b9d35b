"""Time and memory of the spatial, spectral and basis routes against layer width.

    python benchmarks/bench_projection.py                 # widths 64 .. 2048, JSON + docs table
    python benchmarks/bench_projection.py --widths 64 256 # quicker
"""

from equiproj.benchmarks.projection import main

if __name__ == "__main__":
    main()
