"""How close the condensed many-rows kernel gets to the CPU's dense fp32 GEMM, per BERT-base layer shape.

Usage: ``python scripts/bench_panel_ceiling.py [--seconds 0.5]``. For each of BERT-base's condensed layer shapes
at 90 % sparsity (10 % of the neurons ablated, as the whole-model benchmark's masks are) and 128 / 1024 rows
(batch 1 and 8 of 128 tokens), times side by side, 1 thread, the fastest interleaved sample of the timing
thread's CPU time:

* ``condensed``: ``condensed_linear`` on the ``(A, k)`` buffers (the panel kernel, ``csrc/panel.h``);
* ``dense_onednn``: oneDNN's fp32 GEMM on a prepacked weight of the same ``(A, in)`` shape (what
  ``PackedLinear`` and inductor's freezing run), the FMA-rate ceiling of this CPU's dense code.

Prints each one's fused multiply-adds per second (useful ones: ``rows * A * k`` for condensed,
``rows * A * in`` for dense).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package

from lightning_srigl.benchmark.machine import machine_fields
from lightning_srigl.kernels.cpu.loader import load_extension
from lightning_srigl.timing import hot_times

SHAPES = [(768, 692, 85), (768, 2765, 85), (3072, 692, 340)]  # (in, active rows A, fan-in k)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    kernel = load_extension()
    print(machine_fields(), f"load {os.getloadavg()[0]:.1f}")
    g = torch.Generator().manual_seed(0)
    for rows in (128, 1024):
        for inp, active, k in SHAPES:
            indices = torch.rand(active, inp, generator=g).argsort(1)[:, :k].sort(1).values.short()
            values, x = torch.randn(active, k, generator=g), torch.randn(rows, inp, generator=g)
            packed = torch.ops.mkldnn._reorder_linear_weight(torch.randn(active, inp, generator=g))
            calls = {
                "condensed": lambda: kernel.condensed_linear(x, values, indices, None),
                "dense_onednn": lambda: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], ""),
            }
            with torch.no_grad():
                times = hot_times(calls, threads=1, min_run_time=args.seconds, device=torch.device("cpu"))
            sparse_rate = rows * active * k / times["condensed"].min / 1e9
            dense_rate = rows * active * inp / times["dense_onednn"].min / 1e9
            print(f"rows {rows:4d} {inp}->{active} k={k}: condensed {times['condensed'].min * 1e6:8.1f} us "
                  f"{sparse_rate:5.1f} GFMA/s; dense oneDNN {times['dense_onednn'].min * 1e6:8.1f} us "
                  f"{dense_rate:5.1f} GFMA/s")  # fmt: skip
    print(f"load at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
