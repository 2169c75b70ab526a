"""The condensed convolution on every distinct convolution of the 90 %-sparse ResNet-50 (the whole-model
benchmark's ERK SRigL masks, seed 0), per batch size, against oneDNN's dense convolution and optionally
against the kernel of another git revision, side by side in one process (docs/acceleration.md).

Usage: ``python scripts/bench_conv_resnet50.py [--batches 1 8] [--seconds 0.15] [--baseline REV]``.
``--baseline`` builds ``REV``'s ``lightning_srigl/kernels/cpu/csrc`` for the running variant under the op
namespace ``lightning_srigl_baseline`` (so both load in one process). Every layer takes its real input shape
(ablated channels removed), a bias and a ReLU in the epilogue; the outputs are checked against
``F.conv2d`` (within 1e-4 of the output scale). Times: the minimum of interleaved samples of the timing
thread's CPU time, 1 thread. ``total`` sums each layer's time times its count in the model.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # example_projects, scripts

from lightning_srigl.benchmark.machine import machine_fields  # noqa: E402
from lightning_srigl.benchmark.whole_model import masked_model  # noqa: E402
from lightning_srigl.condensed.layers.conv import CondensedConv2d  # noqa: E402
from lightning_srigl.kernels.cpu.build import running_torch_build  # noqa: E402
from lightning_srigl.kernels.cpu.loader import load_extension  # noqa: E402
from lightning_srigl.kernels.cpu.variants import variants_for_machine  # noqa: E402
from lightning_srigl.timing import hot_times  # noqa: E402
from scripts.bench_resnet50_plan import CASE  # noqa: E402

BASELINE_NAMESPACE = "lightning_srigl_baseline"


def baseline_conv(revision: str, variant_name: str) -> Callable:
    """``revision``'s ``condensed_conv2d`` op, built for ``variant_name`` in a temporary folder."""
    from torch.utils import cpp_extension

    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", revision, "lightning_srigl/kernels/cpu/csrc"],
        check=True, capture_output=True,
    ).stdout  # fmt: skip
    folder = Path(tempfile.mkdtemp(prefix="lsr_baseline_"))
    tarfile.open(fileobj=io.BytesIO(archive)).extractall(folder, filter="data")
    variant = next(v for v in variants_for_machine() if v.name == variant_name)
    flags = [
        f"-DLSR_OPS_NAMESPACE={BASELINE_NAMESPACE}" if flag.startswith("-DLSR_OPS_NAMESPACE=") else flag
        for flag in variant.build_flags(running_torch_build())
    ]
    # Every translation unit of that revision's csrc/ (ops.cpp alone before the op families had sources of their own).
    sources = [str(path) for path in sorted((folder / "lightning_srigl/kernels/cpu/csrc").glob("*.cpp"))]
    cpp_extension.load(
        name=f"lsr_baseline_{variant_name}", sources=sources,
        extra_cflags=flags, extra_ldflags=["-fopenmp"], build_directory=str(folder), is_python_module=False,
    )  # fmt: skip
    return getattr(torch.ops, BASELINE_NAMESPACE).condensed_conv2d


def resnet50_layers() -> dict[str, tuple[torch.nn.Conv2d, tuple[int, ...], int]]:
    """``{name: (masked conv, input shape at batch 1, count in the model)}`` for each distinct masked
    convolution of the benchmark's 90 % ResNet-50."""
    model = masked_model(CASE, 0.9, seed=0)
    shapes: dict[str, tuple[int, ...]] = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            module.register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, tuple(i[0].shape)))
    with torch.no_grad():
        model(CASE.example(1))
    layers: dict[str, tuple[torch.nn.Conv2d, tuple[int, ...], int]] = {}
    for name, conv in model.named_modules():
        if isinstance(conv, torch.nn.Conv2d) and hasattr(conv, "weight_sparsity_mask"):
            shape = shapes[name]
            kernel, stride = conv.kernel_size, conv.stride[0]
            key = f"{shape[1]}->{conv.out_channels} {kernel[0]}x{kernel[1]}/{stride} @{shape[2]}"
            previous = layers.get(key)
            layers[key] = (conv, shape, 1) if previous is None else (*previous[:2], previous[2] + 1)
    return layers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--seconds", type=float, default=0.15, help="seconds of samples per layer and batch")
    parser.add_argument("--baseline", help="a git revision whose kernel to time beside the working tree's")
    args = parser.parse_args()
    torch.set_num_threads(1)
    kernel = load_extension()
    if kernel is None:
        sys.exit("the C++ kernels are not available")
    ours = {"ours": kernel.condensed_conv2d}
    if args.baseline:
        ours = {"baseline": baseline_conv(args.baseline, kernel.variant), **ours}
    print(machine_fields(), f"kernels={kernel.variant} threads=1 load={os.getloadavg()[0]:.1f}")
    columns = ["dense", *ours]
    print("| layer | A, k | count | batch | " + " | ".join(f"{c} µs" for c in columns) + " | × dense |"
          + (" ours × baseline |" if args.baseline else ""))  # fmt: skip
    print("|---" * (6 + len(ours) + bool(args.baseline)) + "|")
    totals = {(batch, column): 0.0 for batch in args.batches for column in columns}
    for key, (conv, shape, count) in resnet50_layers().items():
        torch.manual_seed(0)
        conv.bias = torch.nn.Parameter(torch.randn(conv.out_channels))
        layer = CondensedConv2d.from_masked(conv, conv.weight_sparsity_mask)
        geometry = [list(layer.kernel_size), list(layer.stride), list(layer.padding), list(layer.dilation)]
        weights = (layer.values, layer.indices, layer.active_rows, layer.bias, layer.out_channels, 1)
        op_args = (*weights, *geometry, 0, True)
        for batch in args.batches:
            x = torch.randn(batch, *shape[1:])
            calls = {"dense": lambda: F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding)}
            calls |= {name: lambda op=op: op(x, *op_args) for name, op in ours.items()}
            with torch.no_grad():
                expected = calls["dense"]().relu()
                for name in ours:
                    error = float((calls[name]() - expected).abs().max()) / max(float(expected.abs().max()), 1e-6)
                    if error > 1e-4:
                        sys.exit(f"{name} on {key} at batch {batch}: error {error:.2g} of the output scale")
                times = hot_times(calls, threads=1, min_run_time=args.seconds, device=torch.device("cpu"))
            us = {name: timing.min * 1e6 for name, timing in times.items()}
            for name in columns:
                totals[(batch, name)] += us[name] * count
            ratio = f" {us['baseline'] / us['ours']:.2f} |" if args.baseline else ""
            cells = " | ".join(f"{us[c]:.0f}" for c in columns)
            speedup = us["dense"] / us["ours"]
            print(
                f"| {key} | {tuple(layer.values.shape)} | {count} | {batch} | {cells} | {speedup:.2f} |{ratio}",
                flush=True,
            )
    for batch in args.batches:
        cells = " ".join(f"{name} {totals[(batch, name)] / 1e3:.1f}" for name in columns)
        print(f"total at batch {batch} (each layer times its count), ms: {cells}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
