"""Condensed convolution designs on ResNet layers at 90 % sparsity, 1 thread, side by side in one run.

Usage: ``python scripts/bench_conv_layouts.py [--isa avx2] [--seconds 1]``. Compares, per layer:

* ``dense``: ``F.conv2d`` with the masked weight (NCHW, oneDNN);
* ``dense_cl``: the same in channels-last;
* ``direct``: the condensed kernel (``csrc/conv.h``: output pixels as the batch, read straight from the
  stride phase planes of the NCHW input, no im2col);
* ``im2col``: a materialised im2col (``F.unfold``) fed to the condensed linear panel kernel.

Times are the minimum of interleaved samples of the timing thread's CPU time (robust on a shared
machine). This is the measurement behind the choice of the direct NCHW design (docs/acceleration.md).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import torch
import torch.nn.functional as F

from lightning_srigl.benchmark.machine import emulation_env, is_emulating, machine_fields
from lightning_srigl.condensed import CondensedLinear
from lightning_srigl.condensed.layers.conv import CondensedConv2d
from lightning_srigl.timing import hot_times

# (name, in, out, kernel, stride, padding, image side): ResNet-50 and CIFAR ResNet-18 layers.
LAYERS = [
    ("r50 3x3 64 @56", 64, 64, 3, 1, 1, 56),
    ("r50 1x1 64->256 @56", 64, 256, 1, 1, 0, 56),
    ("r50 1x1 256->64 @56", 256, 64, 1, 1, 0, 56),
    ("r50 3x3/2 128 @56", 128, 128, 3, 2, 1, 56),
    ("r50 3x3 256 @14", 256, 256, 3, 1, 1, 14),
    ("r50 3x3 512 @7", 512, 512, 3, 1, 1, 7),
    ("r18c 3x3 64 @32", 64, 64, 3, 1, 1, 32),
    ("r18c 3x3 512 @4", 512, 512, 3, 1, 1, 4),
]


def im2col_conv(layer: CondensedLinear, x: torch.Tensor, kernel: int, stride: int, padding: int) -> torch.Tensor:
    """The convolution as unfold -> condensed linear -> fold back to (N, out, Ho, Wo)."""
    n, _, h, w = x.shape
    cols = F.unfold(x, kernel, padding=padding, stride=stride)  # (N, C*k*k, L)
    ho, wo = (h + 2 * padding - kernel) // stride + 1, (w + 2 * padding - kernel) // stride + 1
    y = layer(cols.transpose(1, 2).reshape(-1, cols.shape[1]))  # (N*L, out)
    return y.view(n, ho * wo, -1).transpose(1, 2).reshape(n, -1, ho, wo)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--isa", choices=["native", "avx2"], default="native")
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    if args.isa != "native" and not is_emulating(args.isa):
        sys.exit(subprocess.run([sys.executable, *sys.argv], env={**os.environ, **emulation_env(args.isa)}).returncode)
    print(machine_fields(), f"threads=1 batch={args.batch} load={os.getloadavg()[0]:.1f}")
    g = torch.Generator().manual_seed(0)
    print(f"{'layer':24} {'dense':>8} {'dense_cl':>9} {'direct':>8} {'im2col':>8}   ms; direct x dense, x im2col")
    for name, c, out, k, s, p, side in LAYERS:
        conv = torch.nn.Conv2d(c, out, k, s, p, bias=False)
        fan_in = c * k * k
        order = torch.argsort(torch.rand(out, fan_in, generator=g), dim=1)[:, : max(1, fan_in // 10)]
        mask = torch.zeros(out, fan_in, dtype=torch.bool).scatter_(1, order, True).view_as(conv.weight)
        with torch.no_grad():
            conv.weight.mul_(mask)
        x = torch.randn(args.batch, c, side, side, generator=g)
        x_cl, conv_cl = x.contiguous(memory_format=torch.channels_last), conv.to(memory_format=torch.channels_last)
        direct = CondensedConv2d.from_masked(conv, mask)
        unfolded = CondensedLinear.from_dense_weight(conv.weight.detach().flatten(1), mask.flatten(1))
        with torch.no_grad():
            torch.testing.assert_close(im2col_conv(unfolded, x, k, s, p), direct(x), atol=1e-4, rtol=1e-4)
            calls = {
                "dense": lambda: F.conv2d(x, conv.weight, None, s, p),
                "dense_cl": lambda: conv_cl(x_cl),
                "direct": lambda: direct(x),
                "im2col": lambda: im2col_conv(unfolded, x, k, s, p),
            }
            t = hot_times(calls, threads=1, min_run_time=args.seconds, device=torch.device("cpu"))
        ms = {key: timing.min * 1e3 for key, timing in t.items()}
        ratios = f"{ms['dense'] / ms['direct']:.2f}x, {ms['im2col'] / ms['direct']:.2f}x"
        print(f"{name:24} {ms['dense']:8.2f} {ms['dense_cl']:9.2f} {ms['direct']:8.2f} {ms['im2col']:8.2f}   {ratios}")


if __name__ == "__main__":
    main()
