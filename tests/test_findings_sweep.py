"""``scripts/findings_sweep.py --quick`` (the command docs/findings.md prints) writes a complete report.

Checks the report's structure, not its numbers: one summary row per (data set, method, sparsity),
one run row per seed, per-layer topology columns, latencies with unchanged predictions, the plots,
and that the docs page quotes the committed tables unchanged.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FINDINGS = ROOT / "docs" / "assets" / "findings"
METHODS = {"dense", "RigL", "SRigL γ=0", "SRigL γ=0.3"}


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("mnist1d", reason="the mnist1d package is not installed (pip install -e '.[examples]')")
    out = tmp_path_factory.mktemp("findings")
    command = [sys.executable, "scripts/findings_sweep.py", "--quick", "--output", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return out


def test_quick_sweep_summarises_every_setting(quick_report: Path) -> None:
    summary = _rows(quick_report / "findings.csv")
    keys = {(r["dataset"], r["method"], float(r["sparsity"])) for r in summary}
    expected = {(d, "dense", 0.0) for d in ("digits", "mnist1d")}
    expected |= {(d, m, s) for d in ("digits", "mnist1d") for m in METHODS - {"dense"} for s in (0.9, 0.95)}
    assert keys == expected and len(summary) == len(expected)
    for row in summary:
        assert row["seeds"] == "2" and row["error"] == ""
        assert 0.0 <= float(row["acc_mean"]) <= 100.0 and float(row["acc_sd"]) >= 0.0
        for layer, neurons in (("fc1", 128), ("fc2", 128), ("fc3", 10)):
            assert int(row[f"{layer}_neurons"]) == neurons
            assert 0 < float(row[f"{layer}_active"]) <= neurons
            assert float(row[f"{layer}_fan_in"]) <= int(row[f"{layer}_fan_in_max"])
        assert float(row["dense_us"]) > 0 and float(row["model_us"]) > 0
        assert row["same_predictions"] == "True", f"accelerating {row['method']} changed its predictions"
    dense = [r for r in summary if r["method"] == "dense"]
    assert all(r["fc1_active"] == "128" and r["kernels"] == "dense" for r in dense)


def test_quick_sweep_writes_runs_tables_and_plots(quick_report: Path) -> None:
    runs = _rows(quick_report / "runs.csv")
    assert len(runs) == 2 * (2 + 3 * 2 * 2)  # data sets x (dense seeds + methods x sparsities x seeds)
    assert {r["seed"] for r in runs} == {"0", "1"}
    for run in runs:  # mean fan-in of the active rows equals their maximum: every row has the same
        if run["method"].startswith("SRigL"):
            assert all(float(run[f"{fc}_fan_in"]) == int(run[f"{fc}_fan_in_max"]) for fc in ("fc1", "fc2", "fc3"))
    markdown = (quick_report / "findings.md").read_text()
    assert "PYTHONPATH=. python scripts/findings_sweep.py --quick" in markdown
    assert markdown.count("| sparsity | RigL | SRigL γ=0 | SRigL γ=0.3 |") == 2
    meta = json.loads((quick_report / "meta.json").read_text())
    assert meta["training_cpu_seconds"] > 0 and meta["estimated_quiet_wall_seconds"] > 0
    for name in ("accuracy.png", "active_neurons.png", "paper.png"):
        assert (quick_report / name).stat().st_size > 10_000, name


def test_docs_page_quotes_the_committed_tables() -> None:
    """Every table row of the committed reports (main sweep and γ check) appears unchanged on docs/findings.md."""
    page = (ROOT / "docs" / "findings.md").read_text()
    reports = sorted(FINDINGS.rglob("findings.md"))
    assert [p.relative_to(FINDINGS).as_posix() for p in reports] == ["findings.md", "gamma/findings.md"]
    for report in reports:
        table_rows = [line for line in report.read_text().splitlines() if line.startswith("| ")]
        assert len(table_rows) > 5
        missing = [line for line in table_rows if line not in page]
        assert not missing, f"docs/findings.md differs from {report}: {missing[:3]}"
        assert report.read_text().split("`")[1] in page, f"the command of {report} is not on the page"
    for name in ("accuracy.png", "active_neurons.png", "paper.png"):
        assert f"assets/findings/{name}" in page and (FINDINGS / name).stat().st_size > 10_000
