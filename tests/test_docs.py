"""The documentation site builds with warnings as errors, and its figures are committed."""

from __future__ import annotations

import os
import re
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
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    callbacks_page = site / "api" / "callbacks" / "index.html"
    assert "gamma_sal" in callbacks_page.read_text(), "the SRigLCallback arguments are missing from the API page"
    check_rendered_site(site)


def check_rendered_site(site: Path) -> None:
    """No raw Sphinx role on any page, no Lightning hook in the API contents, no internal wording."""
    for page in site.rglob("*.html"):
        text = page.read_text()
        role = re.search(r":(func|class|meth|attr|mod|data|obj|exc):(`|<code>)", text)  # Markdown makes `x` <code>
        assert role is None, f"{page.relative_to(site)} shows a raw role: {text[role.start() : role.start() + 80]}"
        for internal in ("targets from issue", "All targets met", "as required"):
            assert internal not in text, f"{page.relative_to(site)} says {internal!r}"
    callbacks = (site / "api" / "callbacks" / "index.html").read_text()
    # NMSparsityCallback and AccelerateCallback implement these hooks themselves (the filters in mkdocs.yml hide them)
    for owner, hook in [
        ("nm.NMSparsityCallback", "on_train_batch_end"),
        ("nm.NMSparsityCallback", "on_fit_start"),
        ("accelerate.AccelerateCallback", "setup"),
        ("accelerate.AccelerateCallback", "on_fit_end"),
    ]:
        assert f'id="lightning_srigl.callbacks.{owner}.{hook}"' not in callbacks, hook
    assert 'id="lightning_srigl.callbacks.nm.NMSparsityCallback"' in callbacks
    for page in ("index", "getting-started"):
        html = (site / ("" if page == "index" else page) / "index.html").read_text()
        assert "pip install" in re.sub(r"<[^>]+>", "", html), f"{page}: no pip install line"


def table_cells(line: str) -> list[str]:
    """The cells of a markdown table line, split at the pipes that are not escaped (``\\|``) or in code."""
    outside_code = re.sub(r"`[^`]*`", lambda code: "x" * len(code.group()), line)
    bounds = [m.start() for m in re.finditer(r"(?<!\\)\|", outside_code)]
    return [line[a + 1 : b].strip() for a, b in zip(bounds, bounds[1:])]


@pytest.mark.parametrize("document", ["README.md", *sorted(p.name for p in (ROOT / "docs").glob("*.md"))])
def test_every_table_row_has_its_headers_cell_count(document: str) -> None:
    """A row with more cells than its header (an unescaped ``|`` in ``|Δ logit|``) makes the whole table
    render as plain text."""
    path = ROOT / document if document == "README.md" else ROOT / "docs" / document
    in_code, header = False, None
    for number, line in enumerate(path.read_text().splitlines(), 1):
        in_code = in_code != line.startswith("```")
        if in_code or not line.startswith("|"):
            header = None
            continue
        if header is None:
            header = len(table_cells(line))
        cells = len(table_cells(line))
        assert cells == header, f"{document}:{number} has {cells} cells, its header {header}"


def test_getting_started_quotes_the_current_speed_figures() -> None:
    """Its expected-speed figures are those of the benchmark page (both kernel classes) and of the README's
    demo table, which the commands regenerate."""
    text = " ".join((ROOT / "docs" / "getting-started.md").read_text().split())
    ranges = re.findall(
        r"ran ([\d.–]+)× faster than dense at batch 1 and ([\d.–]+)× at batch 256",
        (ROOT / "docs" / "benchmarks.md").read_text(),
    )
    assert len(ranges) == 2
    for batch1, batch256 in ranges:
        assert f"{batch1}×" in text and f"{batch256}×" in text, (batch1, batch256)
    (demo,) = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| SRigL 90% |")]
    batch1, batch256 = table_cells(demo)[-2:]
    assert f"SRigL 90 % model was {batch1}× faster than dense at batch 1 and {batch256}× at batch 256" in text
    assert "AVX2-only x86, ARM) are not measured" not in text


def test_method_figures_are_committed() -> None:
    for name in ("constant_fan_in.png", "ablation.png", "condensed_layout.png"):
        assert (ROOT / "docs" / "assets" / name).stat().st_size > 1000, f"run python docs/make_figures.py ({name})"
