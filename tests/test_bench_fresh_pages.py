"""scripts/bench_fresh_pages.py on tiny shapes: one row per call with both allocation settings timed."""

from __future__ import annotations

import platform
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the script switches glibc's malloc settings")
def test_the_script_times_each_call_with_both_allocation_settings(capsys: pytest.CaptureFixture[str]) -> None:
    script = runpy.run_path(str(ROOT / "scripts" / "bench_fresh_pages.py"))
    script["main"](["--smoke", "--models", "gpt2", "--batch", "1", "--rounds", "1"])
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith("| ")][1:]
    labels = [row[0].removeprefix("| ") for row in rows]
    heads = ["LM head 500x64, 4 rows", "LM head 500x64, 32 rows"]
    assert labels == [*heads, "gpt2 b1 ours compiled", "gpt2 b1 dense eager"]
    for row in rows:
        default, kept, ratio = float(row[1]), float(row[2]), float(row[3].removesuffix(" |"))
        assert default >= 0 and kept >= 0 and ratio > 0
