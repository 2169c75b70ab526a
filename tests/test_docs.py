"""The documentation site builds with warnings as errors, and its figures are committed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MKDOCS = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or shutil.which("mkdocs")


@pytest.mark.skipif(MKDOCS is None, reason="mkdocs is not installed (pip install -e '.[docs]')")
def test_mkdocs_build_strict(tmp_path: Path) -> None:
    site = tmp_path / "site"
    result = subprocess.run(
        [MKDOCS, "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    callbacks_page = site / "api" / "callbacks" / "index.html"
    assert "gamma_sal" in callbacks_page.read_text(), "the SRigLCallback arguments are missing from the API page"


def test_method_figures_are_committed() -> None:
    for name in ("constant_fan_in.png", "ablation.png", "condensed_layout.png"):
        assert (ROOT / "docs" / "assets" / name).stat().st_size > 1000, f"run python docs/make_figures.py ({name})"
