"""torch's ``F.scaled_dot_product_attention`` (the CPU flash kernel) against ``lightning_srigl::attention``, 1 thread.

Usage: ``python scripts/bench_attention.py [--seconds 1]``. Shapes ``(B, H, L, D)``: ViT-B/16's (197 tokens),
BERT-base's and GPT-2's (128 tokens; causal too, as ``is_causal`` and as a bool mask), at batch 1 and 8; q, k, v
are transposed views of ``(B, L, H, D)`` tensors, as Hugging Face passes them. Then decoding: one query row (a
transposed view) against a KV cache of ``L`` positions (contiguous ``(B, H, L, D)``, as a cache's concatenation
leaves it). "ours" is `scaled_dot_product_attention`, the eager entry models call (the variant's op, directly,
where the kernel applies). Times are the minimum of interleaved samples of the timing thread's CPU time (robust
on a shared machine); the CPU, kernel variant and load are printed beside them.
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
from lightning_srigl.kernels.attention import scaled_dot_product_attention
from lightning_srigl.timing import cpu_ms

SHAPES = [(1, 12, 197, 64), (8, 12, 197, 64), (1, 12, 128, 64), (8, 12, 128, 64)]
DECODE_SHAPES = [(1, 12, 129, 64), (8, 12, 129, 64), (1, 12, 1025, 64)]  # (B, H, cache length, D), one query


def timed_row(shape: str, causal: bool | str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seconds: float) -> str:
    """One table row: torch's SDPA against ours on ``q``, ``k``, ``v``; ``causal="mask"``: causal, given as the bool
    mask a compiled Hugging Face decoder passes."""
    mask = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool).tril() if causal == "mask" else None
    flag = causal is True
    diff = float((scaled_dot_product_attention(q, k, v, mask, is_causal=flag) - F.scaled_dot_product_attention(
        q, k, v, mask, is_causal=flag)).abs().max())  # fmt: skip
    ms = cpu_ms(
        {
            "sdpa": lambda: F.scaled_dot_product_attention(q, k, v, mask, is_causal=flag),
            "ours": lambda: scaled_dot_product_attention(q, k, v, mask, is_causal=flag),
        },
        seconds,
    )
    return f"| {shape} | {causal} | {ms['sdpa']:.3f} | {ms['ours']:.3f} | {ms['sdpa'] / ms['ours']:.2f} | {diff:.1e} |"


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    machine = machine_fields()
    print(f"{machine['cpu_model']}, kernels {machine['kernel_variant']}, load {os.getloadavg()[0]:.1f}")
    print("| (B, H, L, D) | causal | SDPA ms | ours ms | x | max abs diff |")
    print("|---|---|---|---|---|---|")
    for batch, heads, length, dim in SHAPES:
        torch.manual_seed(0)
        q, k, v = (torch.randn(batch, length, heads, dim).transpose(1, 2) for _ in range(3))
        for causal in (False, True, "mask"):
            print(timed_row(f"({batch}, {heads}, {length}, {dim})", causal, q, k, v, args.seconds))
    for batch, heads, length, dim in DECODE_SHAPES:
        torch.manual_seed(0)
        q = torch.randn(batch, 1, heads, dim).transpose(1, 2)
        k, v = torch.randn(batch, heads, length, dim), torch.randn(batch, heads, length, dim)
        print(timed_row(f"({batch}, {heads}, 1, {dim}) x {length} keys", False, q, k, v, args.seconds))
    print(f"load at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
