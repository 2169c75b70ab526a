"""``scripts/findings_sweep.py``: the quick sweep's report, the matched-budget check, and docs/findings.md.

The quick sweep (the command docs/findings.md prints, with ``--quick``) is checked for structure,
not numbers: every planned run, matched weight counts, neurons traced over training, tables that are
a function of ``results.json``. The committed results are checked against the page that quotes them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
FINDINGS = ROOT / "docs" / "assets" / "findings"
sys.path.insert(0, str(ROOT / "scripts"))
import findings_report  # noqa: E402  (scripts/ is not a package)

# Sections of docs/findings.md that summarise the earlier, unmatched-budget sweep in hand-made tables
# (claims, the paper's numbers, thresholds); the matched sweep's sections quote its report only.
EARLIER_SWEEP_SUMMARIES = ("Short answer", "The paper's numbers, for comparison", "Data set or implementation?")


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("mnist1d", reason="the mnist1d package is not installed (pip install -e '.[examples]')")
    out = tmp_path_factory.mktemp("findings")
    command = [sys.executable, "scripts/findings_sweep.py", "--quick", "--output", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return out


def _load(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "results.json").read_text())


def test_quick_sweep_runs_every_setting_at_matched_weight_counts(quick_report: Path) -> None:
    runs = _load(quick_report)["runs"]
    seen = {(r["model"], r["schedule"], r["label"], r["sparsity"], r["seed"]) for r in runs}
    expected = {(m, "short", "dense", 0.0, seed) for m in ("mlp", "cnn") for seed in (0, 1)}
    for model in ("mlp", "cnn"):
        for seed in (0, 1):
            expected |= {(model, schedule, label, 0.9, seed) for schedule in ("short", "long")
                         for label in ("RigL", "SRigL γ=0", "SRigL γ=0.3", "SRigL γ=0.95")}  # fmt: skip
            expected |= {
                (model, "short", label, 0.9, seed) for label in ("RigL, init 2/fan_in", "SRigL γ=0.3, init 2/fan_in")
            }
    assert seen == expected and len(runs) == len(expected)
    rigl = {(r["model"], r["schedule"], r["seed"]): sum(r["weights"].values()) for r in runs if r["label"] == "RigL"}
    for run in runs:
        assert run["error"] is None and 0.0 <= run["accuracy"] <= 1.0
        if run["method"] == "dense":
            assert run["weights"] == {}
            continue
        count = sum(run["weights"].values())
        assert abs(count / rigl[(run["model"], run["schedule"], run["seed"])] - 1) <= 0.01, run["label"]
        assert count > 0
    assert _load(quick_report)["meta"]["weight_budget"]["worst"] <= 0.01  # QUICK_BUDGET_TOLERANCE: ~1 neuron


def test_quick_sweep_traces_active_neurons_over_training(quick_report: Path) -> None:
    for run in _load(quick_report)["runs"]:
        fractions = [point for point, _ in run["trace"]]
        assert fractions == [i / 10 for i in range(11)]
        assert run["trace"][-1][1] == run["neurons"], "the last point is the model at the end"
        for _, neurons in run["trace"]:
            assert neurons.keys() == run["rows"].keys()
            assert all(0 < neurons[layer] <= run["rows"][layer] for layer in neurons)
        if run["method"] == "srigl":  # constant fan-in: every active row of a layer has the same count
            assert all(mean == maximum for mean, maximum in run["fan_in"].values())
    layers = {r["model"]: list(r["rows"]) for r in _load(quick_report)["runs"]}
    assert layers == {"mlp": ["fc1", "fc2", "fc3"], "cnn": ["conv1", "conv2", "fc1"]}


def test_quick_report_tables_are_made_from_the_results_file(quick_report: Path) -> None:
    data = _load(quick_report)
    markdown = (quick_report / "findings.md").read_text()
    assert markdown == findings_report.markdown_report(data)
    assert "PYTHONPATH=. python scripts/findings_sweep.py --quick" in markdown
    sections = [line[3:] for line in markdown.splitlines() if line.startswith("## ")]
    assert sections[:4] == ["mlp, short schedule", "mlp, long schedule", "cnn, short schedule", "cnn, long schedule"]
    assert len(sections) == 6 and sections[4].startswith("The reference's sparse init")
    assert data["meta"]["training_cpu_seconds"] > 0 and data["meta"]["estimated_quiet_wall_seconds"] > 0


def _run(seed: int, label: str, weights: int, accuracy: float) -> dict[str, Any]:
    method = "rigl" if label == "RigL" else "srigl"
    return {"model": "mlp", "schedule": "short", "method": method, "label": label, "sparsity": 0.99, "seed": seed,
            "accuracy": accuracy, "weights": {"fc1": weights}}  # fmt: skip


def test_budget_check_and_paired_differences_compare_runs_of_the_same_seed() -> None:
    runs = [_run(0, "RigL", 1000, 0.60), _run(1, "RigL", 1000, 0.50),
            _run(0, "SRigL γ=0", 1000, 0.55), _run(1, "SRigL γ=0", 990, 0.52)]  # fmt: skip
    assert findings_report.budget_summary(runs) == {
        "worst": pytest.approx(0.01),
        "worst_setting": "mlp short SRigL γ=0 at 99 %",
    }
    assert findings_report.paired_differences(runs[2:], runs[:2]) == pytest.approx([-5.0, 2.0])


def test_docs_page_quotes_the_committed_results() -> None:
    """Every table row on docs/findings.md is in a committed report; each sweep report is its results.json tables."""
    page = (ROOT / "docs" / "findings.md").read_text()
    reports = sorted(FINDINGS.rglob("findings.md"))
    report_rows = {line for report in reports for line in report.read_text().splitlines()}
    quoted_sections = [s for s in page.split("\n## ") if not s.startswith(EARLIER_SWEEP_SUMMARIES)]
    table_rows = [line for section in quoted_sections for line in section.splitlines() if line.startswith("|")]
    missing = [line for line in table_rows if line not in report_rows]
    assert not missing, f"docs/findings.md has table rows that no committed report has: {missing[:3]}"
    for report in reports:
        assert report.read_text().split("`")[1] in page, f"the command of {report} is not on the page"
    results = sorted(FINDINGS.rglob("results.json"))
    assert results, "no committed results of scripts/findings_sweep.py"
    for path in results:
        data = _load(path.parent)
        assert (path.parent / "findings.md").read_text() == findings_report.markdown_report(data), path
        meta = data["meta"]
        assert meta["weight_budget"]["worst"] <= 0.005, "methods must be compared at matched weight counts"
        assert meta["estimated_quiet_wall_seconds"] <= 3600, "the sweep must fit in 60 minutes on 2 cores"
        quoted = [line for line in (path.parent / "findings.md").read_text().splitlines() if line in table_rows]
        assert len(quoted) >= 10, f"the page quotes almost nothing of {path.parent}"
