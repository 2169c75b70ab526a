"""What fresh pages cost a call whose outputs are large: glibc's default allocation against freed memory kept.

Usage: ``python scripts/bench_fresh_pages.py [--models gpt2 bert resnet50] [--batch 8] [--rounds 3]``.

With glibc's defaults an allocation above its mmap threshold (which grows with use, to at most 32 MB) is a fresh
mapping: the kernel faults it in and zeroes it page by page at its first write, and unmaps it when freed, so
every call pays that again. GPT-2's logits at batch 8 (1024 × 50257 fp32, 206 MB) are such an output. ONNX
Runtime and OpenVINO allocate from arenas of their own; torch allocates with ``malloc``. This script times the
same calls with glibc's defaults and with freed memory kept (``mallopt``: no mmap, so the heap serves every size;
no trimming, so freed memory stays in the heap for the next call), switching between the two before each call of
interleaved rounds in one process, 1 thread, process CPU time (which counts the kernel's page faults), minimum:

* GPT-2's LM head alone: oneDNN's GEMM on the prepacked 50257 × 768 weight (what ``accelerate`` runs it on), 128 and
  1024 rows;
* whole models of ``scripts/bench_whole_models.py`` (90 % SRigL masks): ``accelerate(compile=True)`` and torch dense
  eager at ``--batch``.

Linux with glibc only. The library changes no allocator setting; the second setting is what a deployment gets from
arena allocators.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import platform
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_peers import inputs_of  # noqa: E402
from bench_whole_models import cases  # noqa: E402

from lightning_srigl.acceleration.accelerate import accelerate  # noqa: E402
from lightning_srigl.acceleration.model_timing import dense_reference  # noqa: E402
from lightning_srigl.benchmark.machine import load_averages, machine_fields  # noqa: E402
from lightning_srigl.benchmark.whole_model import masked_model  # noqa: E402

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's malloc.h
GLIBC_MMAP_MAX, GLIBC_TRIM_THRESHOLD = 65536, 128 * 1024  # glibc's defaults


def allocation_switch() -> Callable[[bool], None]:
    """``keep(True)``: freed memory kept in the heap (no mmap, no trim); ``keep(False)``: glibc's defaults."""
    libc = ctypes.CDLL(None)

    def keep(on: bool) -> None:
        libc.mallopt(M_MMAP_MAX, 0 if on else GLIBC_MMAP_MAX)
        libc.mallopt(M_TRIM_THRESHOLD, 1 << 40 if on else GLIBC_TRIM_THRESHOLD)
        if not on:
            libc.malloc_trim(0)

    return keep


def interleaved(calls: dict[str, Callable[[], object]], keep: Callable[[bool], None], rounds: int) -> dict:
    """``(label, kept) -> the fastest process CPU seconds`` of each call under both settings, interleaved; each
    timed call follows an untimed one under the same setting."""
    best: dict[tuple[str, bool], float] = {}
    with torch.no_grad():
        for _ in range(rounds):
            for label, call in calls.items():
                for on in (False, True):
                    keep(on)
                    call()
                    start = time.process_time()
                    call()
                    best[label, on] = min(best.get((label, on), float("inf")), time.process_time() - start)
    keep(False)
    return best


def head_calls(rows: tuple[int, ...], vocabulary: int, width: int) -> dict[str, Callable[[], object]]:
    g = torch.Generator().manual_seed(0)
    packed = torch.ops.mkldnn._reorder_linear_weight(torch.randn(vocabulary, width, generator=g))
    calls = {}
    for n in rows:
        x = torch.randn(n, width, generator=g)
        calls[f"LM head {vocabulary}x{width}, {n} rows"] = lambda x=x: torch.ops.mkldnn._linear_pointwise(
            x, packed, None, "none", [], ""
        )
    return calls


def model_calls(names: list[str], batch: int, smoke: bool) -> dict[str, Callable[[], object]]:
    calls = {}
    for name in names:
        case = cases(smoke)[name]
        masked = masked_model(case, 0.9, 0)
        inputs = inputs_of(case, batch, 0)
        dense, ours = dense_reference(masked), copy.deepcopy(masked)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            accelerate(ours, inputs, verbose=False, model_repeats=0, compile=True)
        calls[f"{name} b{batch} ours compiled"] = lambda m=ours, i=inputs: m(*i)
        calls[f"{name} b{batch} dense eager"] = lambda m=dense, i=inputs: m(*i)
    return calls


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", default=["gpt2", "bert", "resnet50"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes and models (the same code paths)")
    args = parser.parse_args(argv)
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        sys.exit("bench_fresh_pages.py switches glibc's malloc settings: Linux with glibc only")
    torch.set_num_threads(1)
    keep = allocation_switch()
    before = load_averages()
    head = head_calls((4, 32), 500, 64) if args.smoke else head_calls((128, 1024), 50257, 768)
    best = interleaved(head | model_calls(args.models, args.batch, args.smoke), keep, args.rounds)
    print(machine_fields(), f"load average {before} before, {load_averages()} after")
    print("| call | glibc defaults ms | freed memory kept ms | defaults ÷ kept |\n|---|---|---|---|")
    for label in dict.fromkeys(label for label, _ in best):
        default, kept = best[label, False], best[label, True]
        print(f"| {label} | {default * 1e3:.2f} | {kept * 1e3:.2f} | {default / kept:.2f} |")


if __name__ == "__main__":
    main()
