"""Kernel benchmark: dense vs CSR vs condensed layers over sparsities, shapes, batch sizes and threads.

``run_benchmark("configs/benchmark_cpu.yaml")`` (or ``lightning-srigl benchmark --config ...``) runs
``BenchmarkModule`` through ``Trainer.test`` and writes CSVs, a rich table and a plot.
"""

from lightning_srigl.benchmark.module import BenchmarkModule, run_benchmark
from lightning_srigl.benchmark.sweep import SweepConfig

__all__ = ["BenchmarkModule", "SweepConfig", "run_benchmark"]
