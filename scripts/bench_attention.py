"""torch's ``F.scaled_dot_product_attention`` (the CPU flash kernel) against ``lightning_srigl::attention``, 1 thread.

Usage: ``python scripts/bench_attention.py [--seconds 1]``. Shapes ``(B, H, L, D)``: ViT-B/16's (197 tokens),
BERT-base's and GPT-2's (128 tokens; causal too), at batch 1 and 8; q, k, v are transposed views of
``(B, L, H, D)`` tensors, as Hugging Face passes them. Times are the minimum of interleaved samples of the timing
thread's CPU time (robust on a shared machine); the CPU, kernel variant and load are printed beside them.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package

from lightning_srigl.benchmark.machine import machine_fields
from lightning_srigl.kernels.attention import attention
from lightning_srigl.timing import cpu_ms

SHAPES = [(1, 12, 197, 64), (8, 12, 197, 64), (1, 12, 128, 64), (8, 12, 128, 64)]


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    machine = machine_fields()
    print(f"{machine['cpu_model']}, kernels {machine['kernel_variant']}, load {os.getloadavg()[0]:.1f}")
    print("| (B, H, L, D) | causal | SDPA ms | attention ms | x | max abs diff |")
    print("|---|---|---|---|---|---|")
    for batch, heads, length, dim in SHAPES:
        torch.manual_seed(0)
        q, k, v = (torch.randn(batch, length, heads, dim).transpose(1, 2) for _ in range(3))
        for causal in (False, True):
            scale = dim**-0.5
            diff = float((attention(q, k, v, None, scale, causal) - F.scaled_dot_product_attention(
                q, k, v, is_causal=causal)).abs().max())  # fmt: skip
            ms = cpu_ms(
                {
                    "sdpa": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal),
                    "ours": lambda: attention(q, k, v, None, scale, causal),
                },
                args.seconds,
            )
            sdpa_ms, ours_ms = ms["sdpa"], ms["ours"]
            shape = f"({batch}, {heads}, {length}, {dim})"
            print(f"| {shape} | {causal} | {sdpa_ms:.3f} | {ours_ms:.3f} | {sdpa_ms / ours_ms:.2f} | {diff:.1e} |")
    print(f"load at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
