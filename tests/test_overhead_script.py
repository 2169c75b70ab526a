"""scripts/srigl_overhead.py runs as docs/training-overhead.md prints it (with fewer steps and rounds)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_overhead_script_reports_ratios_and_hook_times() -> None:
    command = [sys.executable, "scripts/srigl_overhead.py", "--case", "light", "--steps", "2", "--rounds", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [*command, "--warmup-steps", "1", "--threads", "1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "fit ratio" in out and "ms per call" in out and "on_before_optimizer_step" in out
    assert "load average" in out and "CPU " in out and "the masking pass" in out
    assert "srigl report=False" in out and "srigl defaults" in out
    assert "re-mask every step: no" in out  # the benchmark's own timers keep the skip
