"""Time per training step and memory of every method (plain, strict, projection, sample-based, RPP, PER, relaxed).

    python benchmarks/bench_methods.py                  # preset 'default' (CPU-sized, a few minutes)
    python benchmarks/bench_methods.py --preset ci      # seconds
"""

from equiproj.benchmarks.methods import main

if __name__ == "__main__":
    main()
