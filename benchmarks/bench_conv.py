"""Penalty cost in a C4 U-Net and an SO(3) 3D CNN, against one training step.

    python benchmarks/bench_conv.py                  # preset 'default' (CPU-sized)
    python benchmarks/bench_conv.py --preset paper   # the real size, for a GPU
"""

from equiproj.benchmarks.conv import main

if __name__ == "__main__":
    main()
