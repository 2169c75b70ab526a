"""``make demo`` runs end to end (tiny settings) and writes the table it prints."""

from __future__ import annotations

import csv
from pathlib import Path

from example_projects.digits_mlp.demo import main


def test_demo_writes_one_row_per_method(tmp_path: Path) -> None:
    records = main(["--seeds", "1", "--epochs", "1", "--hidden", "32", "32", "--out", str(tmp_path), "--min-run-time", "0.02"])
    assert [r["method"] for r in records] == ["dense", "SRigL 90%", "RigL 90%", "2:4 SR-STE"]
    assert all(r["same predictions"] == "yes" for r in records), "accelerated models changed predictions"
    densities = [float(r["density"]) for r in records]
    assert densities[0] == 1.0 and max(densities[1:3]) < 0.15 and 0.45 < densities[3] <= 0.5
    with (tmp_path / "digits_demo.csv").open() as f:
        assert [row["method"] for row in csv.DictReader(f)] == [r["method"] for r in records]
    assert "python -m example_projects.digits_mlp.demo" in (tmp_path / "digits_demo.md").read_text()
