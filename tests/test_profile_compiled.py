"""scripts/profile_compiled.py on the tiny GPT-2: the compiled model's ops, ours among them, with their shares."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

from tests.condensed.test_compiled import condensed_everywhere

ROOT = Path(__file__).resolve().parents[1]


def test_the_profile_lists_the_compiled_models_ops_with_shares(capsys: pytest.CaptureFixture[str]) -> None:
    script = runpy.run_path(str(ROOT / "scripts" / "profile_compiled.py"))
    # the choice pinned: on some CPUs dense wins every tiny layer, and the profile would hold none of ours
    script["main"](["--smoke", "--model", "gpt2", "--batch", "2", "--rows", "40"], timer=condensed_everywhere)
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith("| ")][1:]
    ops = [row[0].removeprefix("| ") for row in rows]
    assert any(op.endswith("::condensed_linear_rows") for op in ops)  # the condensed layers: our op, by name
    assert any(op.startswith("graph_") for op in ops)  # inductor's kernels, each under its own name
    shares = [float(row[3].removesuffix("% |")) for row in rows]
    assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 100 + 0.05 * len(shares)  # 0.1 % rounding
