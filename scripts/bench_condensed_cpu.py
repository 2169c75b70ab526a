"""Quick CPU timing of CondensedLinear vs dense ``F.linear`` and torch CSR at 90 % sparsity.

Usage: ``python scripts/bench_condensed_cpu.py [threads=1,2] [batches=1,16,197,256] [seconds per cell=2]``.
Each method runs in short back-to-back samples, interleaved with the others, and the minimum sample
is reported (robust to other processes on a shared machine); at 1 thread a sample is the CPU time of
the calling thread (``time.thread_time``), which time spent descheduled does not inflate. CSR is the
faster of ``F.linear(x, W_csr, b)`` and ``addmm(b, W_csr, x.T).T``. The first line names the CPU, ATen's
capability and the condensed kernel variant; to time an AVX2-only CPU on a newer one, limit every
kernel before torch loads::

    MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 LIGHTNING_SRIGL_CPU_ISA=avx2 \
        python scripts/bench_condensed_cpu.py

The project's full sweep is ``lightning-srigl benchmark``; this script is the kernel author's quick check.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

from lightning_srigl.benchmark.machine import machine_fields
from lightning_srigl.condensed import CondensedLinear

SHAPES = [(3072, 768), (768, 3072)]


def constant_fan_in_layer(inp: int, out: int, sparsity: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random ``(out, inp)`` weight with ``round((1 - sparsity) * inp)`` inputs per row, its mask and a bias."""
    g = torch.Generator().manual_seed(0)
    keep = torch.argsort(torch.rand(out, inp, generator=g), dim=1)[:, : round((1 - sparsity) * inp)]
    mask = torch.zeros(out, inp, dtype=torch.bool).scatter_(1, keep, True)
    return torch.randn(out, inp, generator=g) * mask, mask, torch.randn(out, generator=g)


def min_times_us(fns: dict[str, Callable[[], object]], seconds: float) -> dict[str, float]:
    """Minimum per-call time of each function over interleaved ~3 ms samples, in microseconds."""
    clock = time.thread_time if torch.get_num_threads() == 1 else time.perf_counter
    reps = {}
    for name, fn in fns.items():
        for _ in range(3):
            fn()
        start = time.perf_counter()
        fn()
        reps[name] = max(1, int(0.003 / (time.perf_counter() - start)))
    best = dict.fromkeys(fns, float("inf"))
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for name, fn in fns.items():
            t = clock()
            for _ in range(reps[name]):
                fn()
            best[name] = min(best[name], (clock() - t) / reps[name])
    return {name: value * 1e6 for name, value in best.items()}


def main(threads: list[int], batches: list[int], seconds: float) -> None:
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    print(" | ".join(f"{key}: {value}" for key, value in machine_fields().items()), flush=True)
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        for inp, out in SHAPES:
            # Plain tensors and no_grad, as when serving a trained model: CondensedLinear does not cache
            # its batch-1 layout for inference-mode buffers (they have no version counter).
            weight, mask, bias = constant_fan_in_layer(inp, out, 0.9)
            condensed = CondensedLinear.from_dense_weight(weight, mask, bias)
            condensed_bf16 = CondensedLinear.from_dense_weight(weight, mask, bias).to(torch.bfloat16)
            weight_bf16, bias_bf16 = weight.bfloat16(), bias.bfloat16()
            csr, bias_column = weight.to_sparse_csr(), bias[:, None]
            with torch.no_grad():
                for batch in batches:
                    x = torch.randn(batch, inp)
                    x_bf16 = x.bfloat16()
                    fns = {
                        "dense": lambda: F.linear(x, weight, bias),
                        "csr_linear": lambda: F.linear(x, csr, bias),
                        "condensed": lambda: condensed(x),
                        "dense_bf16": lambda: F.linear(x_bf16, weight_bf16, bias_bf16),
                        "condensed_bf16": lambda: condensed_bf16(x_bf16),
                    }
                    if batch > 1:
                        fns["csr_addmm"] = lambda: torch.addmm(bias_column, csr, x.T).T
                    t = min_times_us(fns, seconds)
                    csr_t = min(t["csr_linear"], t.get("csr_addmm", float("inf")))
                    print(
                        f"threads={n_threads} {inp}->{out} B={batch}: dense {t['dense']:.0f} us, CSR {csr_t:.0f} us, "
                        f"condensed {t['condensed']:.0f} us -> {t['dense'] / t['condensed']:.2f}x dense, "
                        f"{csr_t / t['condensed']:.2f}x CSR | bf16: dense {t['dense_bf16']:.0f} us, condensed "
                        f"{t['condensed_bf16']:.0f} us -> {t['dense_bf16'] / t['condensed_bf16']:.2f}x",
                        flush=True,
                    )


if __name__ == "__main__":
    args = sys.argv[1:]
    main(
        [int(v) for v in (args[0] if args else "1,2").split(",")],
        [int(v) for v in (args[1] if len(args) > 1 else "1,16,197,256").split(",")],
        float(args[2]) if len(args) > 2 else 2.0,
    )
