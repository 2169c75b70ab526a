"""torch's fp32 GEMM (``F.linear``, MKL) against oneDNN's on a prepacked weight (``PackedLinear``), 1 thread.

Usage: ``python scripts/bench_dense_linear.py [--rows 128 1024]``. Shapes: GPT-2's tied ``lm_head``
(768 -> 50257) and a transformer MLP's (768 -> 3072, 3072 -> 768), at each number of rows (tokens x batch).
Times are the minimum of interleaved samples of the timing thread's CPU time (robust on a shared machine);
the CPU, kernel variant and load are printed beside them.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package

from lightning_srigl.benchmark.machine import machine_fields
from lightning_srigl.condensed.layers.packed_linear import PackedLinear
from lightning_srigl.timing import cpu_ms

SHAPES = [(768, 50257), (768, 3072), (3072, 768)]  # (in, out)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", type=int, default=[128, 1024])
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    machine = machine_fields()
    print(f"{machine['cpu_model']}, kernels {machine['kernel_variant']}, load {os.getloadavg()[0]:.1f}")
    print("| in -> out | rows | F.linear ms | PackedLinear ms | x | max abs diff |")
    print("|---|---|---|---|---|---|")
    for width, out in SHAPES:
        torch.manual_seed(0)
        linear = nn.Linear(width, out).requires_grad_(False)
        packed = PackedLinear.from_linear(linear)
        for rows in args.rows:
            x = torch.randn(rows, width)
            diff = float((packed(x) - linear(x)).abs().max())
            ms = cpu_ms(
                {"torch": lambda: linear(x), "packed": lambda: packed(x)},
                args.seconds,
            )
            torch_ms, packed_ms = ms["torch"], ms["packed"]
            ratio = torch_ms / packed_ms
            print(f"| {width} -> {out} | {rows} | {torch_ms:.2f} | {packed_ms:.2f} | {ratio:.2f} | {diff:.1e} |")
    print(f"load at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
