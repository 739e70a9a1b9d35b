"""Runtime and memory of the 3D volume classifier per method (the paper's Table 4 analogue).

    python benchmarks/bench_volumes.py --threads 1             # preset 'default' (the cpu experiment's model)
    python benchmarks/bench_volumes.py --preset paper          # the paper's model size, for a GPU
"""

from equiproj.benchmarks.volumes import main

if __name__ == "__main__":
    main()
