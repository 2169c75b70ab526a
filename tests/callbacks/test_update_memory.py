"""One topology update needs at most 3x the layer's weight bytes (``scripts/update_memory.py``, as the docs run it)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="peak RSS reset needs Linux /proc")
def test_one_update_peaks_below_three_times_the_weight() -> None:
    command = [sys.executable, "scripts/update_memory.py", "--size", "2048", "--sparsity", "0.9", "--ablate"]
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ratio = float(re.search(r"ratio=([\d.]+)", result.stdout).group(1))
    assert 0.1 < ratio <= 3.0, result.stdout
