"""CI runs the lint and type checks next to the tests, and a failing check fails CI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_lint_script_after_the_tests() -> None:
    commands = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and line[0] != "#"]
    assert "set -euo pipefail" in commands and commands.index("make test") < commands.index("bash scripts/lint.sh")


@pytest.mark.parametrize("failing", ["ruff check", "ruff format", "mypy"])
def test_the_lint_script_runs_every_check_and_fails_when_one_fails(tmp_path: Path, failing: str) -> None:
    """``scripts/lint.sh`` with a stand-in interpreter that logs each command and fails ``failing``."""
    log = tmp_path / "calls.log"
    stub = tmp_path / "python"
    stub.write_text(f'#!/usr/bin/env bash\necho "$*" >> {log}\ncase "$*" in *"{failing}"*) exit 1;; esac\n')
    stub.chmod(0o755)
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "lint.sh")], env={**os.environ, "PYTHON": str(stub)}, check=False
    )
    assert done.returncode == 1
    calls = log.read_text().splitlines()
    assert [call.split(" ")[1] for call in calls] == ["ruff", "ruff", "mypy"]
    assert calls[0].startswith("-m ruff check lightning_srigl") and calls[1].startswith("-m ruff format --check")


@pytest.mark.skipif(shutil.which("ruff", path=str(Path(sys.executable).parent)) is None, reason="ruff is not installed")
def test_the_stated_ruleset_rejects_a_lint_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import os\n\n\ndef f(x):\n    return x == None\n")
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent))
    done = subprocess.run(
        [ruff, "check", "--config", str(ROOT / "pyproject.toml"), "--no-cache", str(bad)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 1 and "F401" in done.stdout and "E711" in done.stdout
