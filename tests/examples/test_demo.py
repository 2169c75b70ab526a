"""The demo's settings show both of SRigL's ideas, and its tables and notes come from what it measured.

``make demo`` itself runs end to end in ``tests/test_documented_commands.py`` (as the README prints it).
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from example_projects.digits_mlp.demo import linear_stats, train
from example_projects.digits_mlp.demo_report import Row, notes, print_and_write
from lightning_srigl.acceleration.report import AccelerationReport, LayerAcceleration


def test_srigl_at_99_percent_ablates_neurons_that_it_keeps_without_ablation() -> None:
    """3 epochs hold one topology update (step 25 of 51): with gamma_sal=0.3 it removes neurons."""
    ablating, _ = train("SRigL 99%", seed=0, hidden=(512, 512), epochs=3)
    keeping, _ = train("SRigL 99%, no ablation", seed=0, hidden=(512, 512), epochs=3)
    active, total = (int(n) for n in linear_stats(ablating)[1].split("/"))
    assert total == 1034 and active < total
    assert linear_stats(keeping)[1] == "1034/1034"


def _row(method: str, neurons: str, param_bytes: int, chosen: list[str], b1: float, two_four: bool = False) -> Row:
    layers = [
        LayerAcceleration(
            f"net.{i}",
            64,
            512,
            1,
            0.5,
            512,
            kind,
            {"dense": 2e-5, kind: 1e-5},
            {"semi_structured": "NotImplementedError: 2:4 semi-structured kernels need a CUDA GPU"},
        )
        for i, kind in enumerate(chosen)
    ]
    report = AccelerationReport(layers) if layers else None
    return Row(method, [0.95, 0.97], 0.5, neurons, param_bytes, report, b1, 4 * b1, True, two_four)


def test_tables_fit_100_columns_and_notes_explain_ablation_and_2_4(tmp_path: Path) -> None:
    rows = [
        _row("dense", "1034/1034", 1_204_264, [], 80.0),
        _row("SRigL 99%, no ablation", "1034/1034", 26_004, ["condensed"] * 3, 40.0),
        _row("SRigL 99%", "991/1034", 20_000, ["condensed", "condensed", "dense"], 40.0),
        _row("2:4 SR-STE", "1034/1034", 912_504, ["condensed", "condensed", "dense"], 50.0, two_four=True),
    ]
    assert notes(rows) == [
        "SRigL 99%: 43 of 1034 neurons have no active weight left.",
        "2:4 SR-STE: no 2:4 kernel here (2:4 semi-structured kernels need a CUDA GPU); its layers ran as "
        "2 cond., 1 dense, storing 0.76 of the dense bytes, hence 1.60× at batch 1 and 1.60× at batch 256.",
    ]
    console = Console(width=100, record=True)
    records = print_and_write(rows, "header", tmp_path, console)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 100 and "…" not in text
    for cell in ("96.00 ± 1.41", "95.00 97.00", "991/1034", "1,204,264", "2 cond., 1 dense", "0.50"):
        assert cell in text, cell
    assert [r["method"] for r in records] == [r.method for r in rows]
    written = (tmp_path / "digits_demo.md").read_text()
    assert written.startswith("header") and "| 2:4 SR-STE | 2 cond., 1 dense | 912,504 |" in written
