"""Discretisation error of steerable (SO(2), SO(3)) convolutions under non-grid rotations.

    python benchmarks/bench_steerable.py
"""

from equiproj.benchmarks.steerable import main

if __name__ == "__main__":
    main()
