"""Outputs of the whole-model benchmark ([`whole_model`][lightning_srigl.benchmark.whole_model]): a rich table, a
markdown table for ``docs/``, and a plot of each variant's speedup over dense fp32."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from lightning_srigl import tables

__all__ = ["markdown_table", "plot_speedups", "rich_table"]

Row = dict[str, Any]
COLUMNS = {
    "model": "model",
    "batch": "batch",
    "variant": "variant",
    "latency_ms": "latency ms",
    "speedup": "× dense fp32",
    "max_logit_diff": "max |Δ logit|",
    "weight_mb": "weights MB",
    "chosen": "layers chosen",
}


def _cells(row: Row) -> list[str]:
    values = {
        **row,
        "speedup": f"{row['speedup']:.2f}",
        "max_logit_diff": f"{row['max_logit_diff']:.1e}",
        "weight_mb": f"{row['weight_bytes'] / 2**20:.1f}",
    }
    return [str(values[key]) for key in COLUMNS]


def rich_table(rows: Sequence[Row], title: str) -> Table:
    """One line per (model, batch, variant)."""
    table = Table(title=title)
    for header in COLUMNS.values():
        table.add_column(header, justify="left" if header in ("model", "variant", "layers chosen") else "right")
    for row in rows:
        table.add_row(*_cells(row))
    return table


def markdown_table(rows: Sequence[Row]) -> str:
    """The `rich_table` columns as a GitHub-flavoured markdown table."""
    return tables.markdown_table(list(COLUMNS.values()), [_cells(row) for row in rows])


def plot_speedups(rows: Sequence[Row], path: Path) -> Path:
    """Grouped bars: per (model, batch), each variant's speedup over dense fp32 (1 = dense)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys((r["model"], r["batch"]) for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    width = 0.8 / len(variants)
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(groups)), 3.6))
    for i, variant in enumerate(variants):
        speedups = [
            next((r["speedup"] for r in rows if (r["model"], r["batch"]) == g and r["variant"] == variant), 0)
            for g in groups
        ]
        ax.bar([j + i * width for j in range(len(groups))], speedups, width, label=variant)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(groups))], [f"{m}\nbatch {b}" for m, b in groups], fontsize=8)
    ax.set_ylabel("× dense fp32 (end to end)")
    first = rows[0]
    ax.set_title(f"{first['cpu_model']}, {first['kernel_variant']} kernels, {first['threads']} thread(s)", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
