"""Condensed convolutions against oneDNN's dense ones on every distinct ResNet-50 convolution shape and the
ViT-B/16 patch embedding, at 90 % sparsity, 1 thread, side by side in one run (docs/acceleration.md).

Usage: ``python scripts/bench_conv_layouts.py [--batch 8] [--isa avx2] [--seconds 0.3] [--markdown]``.
Per layer (constant fan-in ``k = round(0.1 * C * kh * kw)`` per output channel, random taps, a bias):

* ``dense``: ``F.conv2d(x, w, b)`` with the masked weight (NCHW, oneDNN; the bias is fused, no ReLU);
* ``dense_cl``: the same in channels-last;
* ``direct``: the condensed kernel (``csrc/conv.h``: output pixels as the batch, read straight from the
  stride phase planes of the NCHW input) with the bias and a ReLU in its epilogue (``relu=True``);
* ``im2col``: a materialised im2col (``F.unfold``) fed to the condensed linear kernels (no ReLU).

``x dense`` is dense / direct; ``% ceiling`` is that speed-up over the FLOP ratio ``C kh kw / k`` (10x), the
speed-up of a kernel as efficient per FLOP as oneDNN's (research/kernels.md, section 2: at batch 1 the
weights are reused over every output pixel, so convolutions are FLOP-bound, not byte-bound).
Times are the minimum of interleaved samples of the timing thread's CPU time (robust on a shared machine).
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

# (name, in, out, kernel, stride, padding, image side): every distinct ResNet-50 convolution (torchvision
# layout: stride on the 3x3), the ViT-B/16 patch embedding, and two CIFAR ResNet-18 layers.
LAYERS = [
    ("r50 stem 7x7/2 3->64 @224", 3, 64, 7, 2, 3, 224),
    ("r50 1x1 64->64 @56", 64, 64, 1, 1, 0, 56),
    ("r50 3x3 64 @56", 64, 64, 3, 1, 1, 56),
    ("r50 1x1 64->256 @56", 64, 256, 1, 1, 0, 56),
    ("r50 1x1 256->64 @56", 256, 64, 1, 1, 0, 56),
    ("r50 1x1 256->128 @56", 256, 128, 1, 1, 0, 56),
    ("r50 3x3/2 128 @56", 128, 128, 3, 2, 1, 56),
    ("r50 1x1/2 256->512 @56", 256, 512, 1, 2, 0, 56),
    ("r50 1x1 128->512 @28", 128, 512, 1, 1, 0, 28),
    ("r50 1x1 512->128 @28", 512, 128, 1, 1, 0, 28),
    ("r50 3x3 128 @28", 128, 128, 3, 1, 1, 28),
    ("r50 1x1 512->256 @28", 512, 256, 1, 1, 0, 28),
    ("r50 3x3/2 256 @28", 256, 256, 3, 2, 1, 28),
    ("r50 1x1/2 512->1024 @28", 512, 1024, 1, 2, 0, 28),
    ("r50 1x1 256->1024 @14", 256, 1024, 1, 1, 0, 14),
    ("r50 1x1 1024->256 @14", 1024, 256, 1, 1, 0, 14),
    ("r50 3x3 256 @14", 256, 256, 3, 1, 1, 14),
    ("r50 1x1 1024->512 @14", 1024, 512, 1, 1, 0, 14),
    ("r50 3x3/2 512 @14", 512, 512, 3, 2, 1, 14),
    ("r50 1x1/2 1024->2048 @14", 1024, 2048, 1, 2, 0, 14),
    ("r50 1x1 512->2048 @7", 512, 2048, 1, 1, 0, 7),
    ("r50 1x1 2048->512 @7", 2048, 512, 1, 1, 0, 7),
    ("r50 3x3 512 @7", 512, 512, 3, 1, 1, 7),
    ("vit patch 16x16/16 3->768 @224", 3, 768, 16, 16, 0, 224),
    ("r18c 3x3 64 @32", 64, 64, 3, 1, 1, 32),
    ("r18c 3x3 512 @4", 512, 512, 3, 1, 1, 4),
]
COLUMNS = ("dense", "dense_cl", "direct", "im2col")


def im2col_conv(layer: CondensedLinear, x: torch.Tensor, kernel: int, stride: int, padding: int) -> torch.Tensor:
    """The convolution as unfold -> condensed linear -> fold back to (N, out, Ho, Wo)."""
    n, _, h, w = x.shape
    cols = F.unfold(x, kernel, padding=padding, stride=stride)  # (N, C*k*k, L)
    ho, wo = (h + 2 * padding - kernel) // stride + 1, (w + 2 * padding - kernel) // stride + 1
    y = layer(cols.transpose(1, 2).reshape(-1, cols.shape[1]))  # (N*L, out)
    return y.view(n, ho * wo, -1).transpose(1, 2).reshape(n, -1, ho, wo)


def measure(layer: tuple, batch: int, seconds: float, generator: torch.Generator) -> tuple[dict[str, float], float]:
    """Microseconds per call of each column for one ``LAYERS`` entry, and its FLOP ratio ``C kh kw / k``."""
    _, c, out, k, s, p, side = layer
    conv = torch.nn.Conv2d(c, out, k, s, p)
    fan_in = c * k * k
    kept = max(1, round(fan_in / 10))
    order = torch.argsort(torch.rand(out, fan_in, generator=generator), dim=1)[:, :kept]
    mask = torch.zeros(out, fan_in, dtype=torch.bool).scatter_(1, order, True).view_as(conv.weight)
    with torch.no_grad():
        conv.weight.mul_(mask)
    w, b = conv.weight.detach(), conv.bias.detach()
    x = torch.randn(batch, c, side, side, generator=generator)
    x_cl, w_cl = x.contiguous(memory_format=torch.channels_last), w.contiguous(memory_format=torch.channels_last)
    direct = CondensedConv2d.from_masked(conv, mask)
    direct.relu = True
    unfolded = CondensedLinear.from_dense_weight(w.flatten(1), mask.flatten(1), b)
    with torch.no_grad():
        expected = F.conv2d(x, w, b, s, p)
        torch.testing.assert_close(direct(x), expected.relu(), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(im2col_conv(unfolded, x, k, s, p), expected, atol=1e-4, rtol=1e-4)
        calls = {
            "dense": lambda: F.conv2d(x, w, b, s, p),
            "dense_cl": lambda: F.conv2d(x_cl, w_cl, b, s, p),
            "direct": lambda: direct(x),
            "im2col": lambda: im2col_conv(unfolded, x, k, s, p),
        }
        times = hot_times(calls, threads=1, min_run_time=seconds, device=torch.device("cpu"))
    return {name: timing.min * 1e6 for name, timing in times.items()}, fan_in / kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--isa", choices=["native", "avx2"], default="native")
    parser.add_argument("--seconds", type=float, default=0.3, help="seconds of samples per column and layer")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--markdown", action="store_true", help="print a markdown table (docs/acceleration.md)")
    args = parser.parse_args()
    if args.isa != "native" and not is_emulating(args.isa):
        sys.exit(subprocess.run([sys.executable, *sys.argv], env={**os.environ, **emulation_env(args.isa)}).returncode)
    torch.set_num_threads(1)
    load = os.getloadavg()[0]
    print(machine_fields(), f"threads=1 batch={args.batch} load={load:.1f}")
    generator = torch.Generator().manual_seed(0)
    if args.markdown:
        print("| layer | dense µs | dense channels-last µs | ours µs (bias+ReLU) | im2col µs | × dense | % ceiling |")
        print("|---|---|---|---|---|---|---|")
    else:
        print(f"{'layer':32} " + " ".join(f"{c:>9}" for c in COLUMNS) + "   us; x dense, % of the FLOP ceiling")
    for layer in LAYERS:
        us, ceiling = measure(layer, args.batch, args.seconds, generator)
        speedup = us["dense"] / us["direct"]
        if args.markdown:
            cells = " | ".join(f"{us[c]:.0f}" for c in COLUMNS)
            print(f"| {layer[0]} | {cells} | {speedup:.2f} | {100 * speedup / ceiling:.0f} |")
        else:
            cells = " ".join(f"{us[c]:9.1f}" for c in COLUMNS)
            print(f"{layer[0]:32} {cells}   {speedup:5.2f}x {100 * speedup / ceiling:4.0f}%", flush=True)
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (start {load:.1f})")


if __name__ == "__main__":
    main()
