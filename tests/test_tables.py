"""Every rich table of the package fits a 100-column terminal without cutting a cell."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from lightning_srigl.acceleration.report import AccelerationReport, LayerAcceleration
from lightning_srigl.benchmark import whole_model_report
from lightning_srigl.benchmark.report import format_us, read_csv, summarize, summary_tables
from lightning_srigl.callbacks.report import LayerStats, print_layer_table
from lightning_srigl.tables import fitted_table

ROOT = Path(__file__).resolve().parents[1]
WIDTH = 100


def _render(*tables: Table, width: int = WIDTH) -> str:
    console = Console(width=width, record=True)
    for table in tables:
        console.print(table)
    return console.export_text()


def _fits(text: str, width: int = WIDTH) -> None:
    assert max(len(line) for line in text.splitlines()) <= width
    assert "…" not in text, "a cell was cut"


def test_long_names_fold_and_numbers_stay_whole() -> None:
    name = "encoder.layers.encoder_layer_11.self_attention.out_proj"
    rows = [[name, "12,345,678", "0.0123"], ["net.0", "1", "1.0000"]]
    text = _render(
        fitted_table("t", ["layer", "a long header for bytes", "ratio"], rows, 40, fold=("layer",)), width=40
    )
    _fits(text, 40)
    assert "12,345,678" in text and "0.0123" in text
    assert name not in text and name[:12] in text  # folded onto several lines
    wide = _render(fitted_table("t", ["layer", "bytes", "ratio"], rows, 200, fold=("layer",)), width=200)
    assert name in wide and "a long" not in wide


def test_benchmark_tables_of_the_committed_sweep_fit() -> None:
    summary = summarize(read_csv(ROOT / "docs" / "assets" / "benchmark_cpu.csv"), "min")
    text = _render(*summary_tables(summary, "benchmark_cpu (min)", WIDTH))
    _fits(text)
    for row in summary:
        assert format_us(row["condensed_fp32_us"]) in text and str(row["cond_vs_dense"]) in text


def test_acceleration_report_fits() -> None:
    times = {"dense": 1.2e-2, "condensed": 2.5e-3, "csr": 4.1e-3, "semi_structured": 1.0e-3}
    rows = [
        LayerAcceleration(
            f"encoder.layers.encoder_layer_{i}.mlp.{j}",
            768,
            3072,
            256 if i else 1,
            0.1,
            3000,
            "semi_structured",
            times,
            {},
        )
        for i in (0, 11)
        for j in (0, 3)
    ]
    console = Console(width=WIDTH, record=True)
    AccelerationReport(rows).print(console)
    text = console.export_text()
    _fits(text)
    assert "12,000" in text and "3000/3072" in text and "12.00" in text and "semi_structured" not in text


def test_topology_table_fits(capsys) -> None:
    stats = [
        LayerStats(
            f"encoder.layers.encoder_layer_{i}.self_attention.in_proj_weight", (2304, 768), 177_000, 2304, 76.8, 0.25
        )
        for i in range(3)
    ]
    print_layer_table(stats, "SRigLCallback: sparse layers at the end of fit")
    text = capsys.readouterr().out
    _fits(text)
    assert "2304/2304 (100.0%)" in text and "2304x768" in text


def test_markdown_tables_escape_pipes_in_cells() -> None:
    """The whole-model table's `max |Δ logit|` header keeps its pipes inside one cell."""
    from tests.test_docs import table_cells

    row = {
        "model": "m|x",
        "batch": 1,
        "variant": "accelerated",
        "latency_ms": 1.0,
        "speedup": 2.0,
        "max_logit_diff": 1e-7,
        "weight_bytes": 2**20,
        "chosen": "condensed:1",
    }
    header, rule, line = whole_model_report.markdown_table([row]).splitlines()
    assert table_cells(header) == [h.replace("|", "\\|") for h in whole_model_report.COLUMNS.values()]
    assert table_cells(line)[0] == "m\\|x" and len(table_cells(line)) == len(whole_model_report.COLUMNS)
