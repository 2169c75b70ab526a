"""``scripts/gpu_check.sh --interpret-smoke``, run as a subprocess exactly as docs/benchmarks.md prints it.

This proves the GPU check's plumbing (test selection, the sweep with every GPU method, CSVs, plots,
the verdict) without a GPU: condensed layers go through Triton's interpreter on CPU tensors and the
methods that need CUDA are reported as skipped. It says nothing about GPU speed.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_interpret_smoke_runs_end_to_end(tmp_path: Path) -> None:
    env = {**os.environ, "GPU_CHECK_PYTHON": sys.executable, "GPU_CHECK_OUT": str(tmp_path)}
    done = subprocess.run(
        ["bash", "scripts/gpu_check.sh", "--interpret-smoke"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "tests exit 0, sweep exit 0" in done.stdout
    with (tmp_path / "benchmark_gpu.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    methods = {row["method"] for row in rows}
    assert {"dense_tf32", "dense_fp16", "condensed_fp32", "condensed_bf16", "condensed_fp16", "csr_fp32"} <= methods
    assert not {m for m in methods if "graph" in m or m.startswith("semi_structured")}  # CUDA only
    assert {row["device"] for row in rows} == {"cpu"}
    assert {row["kernel_variant"] for row in rows} == {"triton-interpreter"}
    verdict = (tmp_path / "gpu_check_verdict.md").read_text()
    assert "| condensed_fp16 |" in verdict and "**no**" not in verdict
    assert "condensed_graph_fp32 at ('srigl', 32, 16, 0.9, 1) hot: did not run (needs CUDA)" in verdict
    for plot in ("benchmark_gpu_t1.png", "benchmark_gpu_speedup_t1.png"):
        assert (tmp_path / plot).stat().st_size > 10_000
    assert "tests collected" in (tmp_path / "gpu_tests.log").read_text()


def test_unknown_option_is_refused() -> None:
    done = subprocess.run(["bash", "scripts/gpu_check.sh", "--fast"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and "usage: bash scripts/gpu_check.sh [--interpret-smoke]" in done.stderr
