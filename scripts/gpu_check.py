"""The GPU sweep of ``scripts/gpu_check.sh``: run ``configs/benchmark_gpu.yaml``, check exactness, compare with the
speed goals.

Usage (``scripts/gpu_check.sh`` calls it; it can also run alone)::

    python scripts/gpu_check.py --out DIR                    # on a CUDA machine
    TRITON_INTERPRET=1 python scripts/gpu_check.py --out DIR --interpret-smoke   # anywhere, tiny sizes

The sweep runs one layer shape at a time and rewrites the CSVs, plots and ``gpu_check_verdict.md``
after each, so a run cut short still leaves its finished shapes. The verdict holds every method's worst
error against the masked dense fp32 layer (with the tolerance of its dtype), the methods that did not
run, and the speed goals at 90 % sparsity, 3072→768 (batch 256: condensed ≥ 2× dense of the same
dtype and ≥ 13× CSR; batch 1: ≥ 3× dense). Exit status 1 when an output is inexact or an expected
method is missing; a goal that is not met is a measurement, not a failure.

``--interpret-smoke`` proves the plumbing without a GPU: the same methods on CPU tensors at tiny sizes,
condensed layers through the Triton interpreter (``condensed_backend="triton"``); the methods that
need CUDA (2:4 tensor cores, CUDA graphs) are expected to be skipped.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from lightning_srigl.benchmark import SweepConfig, run_benchmark
from lightning_srigl.benchmark.layers import parse_method
from lightning_srigl.benchmark.report import summarize, write_outputs

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "benchmark_gpu.yaml"
# Worst |method - masked dense fp32| accepted per dtype of the method (outputs are O(1): unit-variance layers).
TOLERANCE = {"fp32": 1e-3, "tf32": 2e-2, "fp16": 2e-2, "bf16": 1.5e-1}
SMOKE = {
    "device": "cpu",
    "condensed_backend": "triton",
    "shapes": [[32, 16]],
    "sparsities": [0.9],
    "batch_sizes": [1, 17],  # gather-dot (<= 16) and tiled kernels
    "cold_bytes": 20_000,
    "min_run_time": 0.001,
}
CUDA_ONLY_KERNELS = ("semi_structured",)
# (batch, ratio column, goal): the speed this release aims for at 90 % sparsity, 3072->768.
TARGETS = [
    (256, "cond_vs_dense", 2.0),
    (256, "cond_bf16_vs_dense_bf16", 2.0),
    (256, "cond_fp16_vs_dense_fp16", 2.0),
    (256, "cond_vs_csr", 13.0),
    (1, "cond_vs_dense", 3.0),
    (1, "cond_graph_vs_dense_graph", 3.0),
]


def environment() -> str:
    """Versions and devices, for the verdict's header."""
    import triton

    lines = [f"python {platform.python_version()}, torch {torch.__version__}, triton {triton.__version__}"]
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        lines.append(f"GPU {props.name}, {props.total_memory / 2**30:.0f} GiB, capability {props.major}.{props.minor}")
        lines.append(f"CUDA {torch.version.cuda}, cuSPARSELt {torch.backends.cusparselt.version()}")
    else:
        lines.append(f"no CUDA device; CPU {platform.processor() or platform.machine()}")
    return "\n".join(lines)


def run_sweep(config: SweepConfig, out: Path, report: Callable[[list[dict]], object]) -> list[dict]:
    """The sweep one shape at a time; after each, the outputs in ``out`` are rewritten and ``report(rows)`` runs."""
    rows: list[dict] = []
    for shape in config.shapes:
        start = time.perf_counter()
        module = run_benchmark(config, shapes=[shape], output_dir=None)
        rows += module.results
        write_outputs(rows, out, config.name, config.statistic)
        report(rows)
        print(f"gpu_check: {shape[0]}->{shape[1]} took {time.perf_counter() - start:.0f} s", flush=True)
    return rows


def exactness(rows: list[dict]) -> tuple[list[str], bool]:
    """Markdown lines with each method's worst error and tolerance; False when one exceeds it."""
    worst: dict[str, float] = {}
    for row in rows:
        worst[row["method"]] = max(worst.get(row["method"], 0.0), row["max_abs_err"])
    lines = ["| method | worst abs error vs masked dense fp32 | tolerance | exact |", "|---|---|---|---|"]
    ok = True
    for method, error in worst.items():
        tolerance = TOLERANCE[method.rpartition("_")[2]]
        ok &= error <= tolerance
        lines.append(f"| {method} | {error:.3g} | {tolerance:g} | {'yes' if error <= tolerance else '**no**'} |")
    return lines, ok


def missing_methods(rows: list[dict], config: SweepConfig, smoke: bool) -> tuple[list[str], bool]:
    """(case, method) pairs that produced no row; False when one was expected to run here."""
    done = {(r["structure"], r["in_features"], r["out_features"], r["sparsity"], r["batch"], r["cache"], r["method"])
            for r in rows}  # fmt: skip
    lines, ok = [], True
    for case in config.cases():
        for method in case["methods"]:
            key = (case["structure"], case["in_features"], case["out_features"], case["sparsity"], case["batch"])
            if (*key, case["cache"], method) not in done:
                parsed = parse_method(method)
                expected = smoke and (parsed.graph or parsed.kernel in CUDA_ONLY_KERNELS)
                ok &= expected
                lines.append(
                    f"- {method} at {key} {case['cache']}: did not run" + (" (needs CUDA)" if expected else "")
                )
    return lines, ok


def targets(rows: list[dict], statistic: str) -> list[str]:
    """The speed goals as a markdown table (measured ratio, goal, met)."""
    summary = [s for s in summarize(rows, statistic) if s["structure"] == "srigl" and s["cache"] == "hot"]
    lines = ["| batch | ratio (reference time / condensed time) | measured | goal | met |", "|---|---|---|---|---|"]
    for batch, column, target in TARGETS:
        key = (3072, 768, 0.9, batch)
        cell = [s for s in summary if (s["in_features"], s["out_features"], s["sparsity"], s["batch"]) == key]
        value = cell[0].get(column) if cell else None
        met = "n/a" if value is None else ("yes" if value >= target else "**no**")
        lines.append(f"| {batch} | {column} | {value if value is not None else 'not measured'} | ≥ {target} | {met} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the CSVs, plots and verdict")
    parser.add_argument("--interpret-smoke", action="store_true", help="tiny sizes on CPU, Triton interpreter")
    args = parser.parse_args(argv)
    config = SweepConfig.from_yaml(CONFIG, **(SMOKE if args.interpret_smoke else {}))
    if not args.interpret_smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA device; on a machine without one, use --interpret-smoke", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    outcome = {}

    def report(rows: list[dict]) -> None:
        exact_lines, outcome["exact"] = exactness(rows)
        missing_lines, outcome["complete"] = missing_methods(rows, config, args.interpret_smoke)
        verdict = [
            f"# GPU check: {'interpreter smoke run (no GPU speed)' if args.interpret_smoke else 'GPU sweep'}",
            "", "```", environment(), "```", "",
            f"Sweep: `{CONFIG.name}`{' with ' + str(SMOKE) if args.interpret_smoke else ''}; {len(rows)} timings in "
            f"{time.perf_counter() - start:.0f} s; statistic: {config.statistic}.", "",
            "## Speed goals (90 % sparsity, 3072→768, same run)", "", *targets(rows, config.statistic), "",
            "## Exactness", "", *exact_lines, "",
            "## Methods that did not run (so far)", "", *(missing_lines or ["none"]), "",
        ]  # fmt: skip
        outcome["text"] = "\n".join(verdict)
        (args.out / "gpu_check_verdict.md").write_text(outcome["text"])

    run_sweep(config, args.out, report)
    print(outcome["text"], flush=True)
    return 0 if outcome["exact"] and outcome["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
