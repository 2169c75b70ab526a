"""Benchmark outputs: raw CSV, summary CSV with ratios, a rich table and a Figure-11-style plot.

Summary ratios are ``time(reference) / time(method)`` measured in the same run (> 1: the method is
faster). ``memory_ratio`` is the condensed fp32 layer's values+indices bytes over the dense fp32
weight's bytes; ``byte_ceiling`` is its inverse, the batch-1 speedup limit when weights stream from
DRAM (``research/kernels.md`` §2).
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

Row = dict[str, Any]
CASE_KEYS = ("structure", "in_features", "out_features", "sparsity", "fan_in", "active_neurons", "batch", "threads", "cache")
RATIOS = {
    "cond_vs_dense": ("dense_fp32", "condensed_fp32"),
    "cond_vs_csr": ("csr_fp32", "condensed_fp32"),
    "csr_vs_dense": ("dense_fp32", "csr_fp32"),
    "cond_bf16_vs_dense_bf16": ("dense_bf16", "condensed_bf16"),
    "dense_bf16_vs_dense_fp32": ("dense_fp32", "dense_bf16"),
}


def write_csv(rows: Sequence[Row], path: Path) -> Path:
    """Write ``rows`` (dicts with the same keys) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["method"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_csv(path: Path) -> list[Row]:
    """Read a raw benchmark CSV back (numbers parsed), e.g. to re-plot it."""
    with path.open() as handle:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def summarize(rows: Sequence[Row], statistic: str = "median") -> list[Row]:
    """One row per case: each method's time (µs, ``statistic`` of its samples) and the ratios of
    :data:`RATIOS` present."""
    column = {"median": "time_us", "min": "min_us"}[statistic]
    cases: dict[tuple[Any, ...], Row] = {}
    for row in rows:
        key = tuple(row[k] for k in CASE_KEYS)
        case = cases.setdefault(key, {k: row[k] for k in CASE_KEYS})
        case[f"{row['method']}_us"] = row[column]
        case[f"{row['method']}_bytes"] = row["weight_bytes"]
    summary = []
    for case in cases.values():
        out = {k: case[k] for k in CASE_KEYS}
        out.update({k: v for k, v in case.items() if k.endswith("_us")})
        for name, (reference, method) in RATIOS.items():
            if f"{reference}_us" in case and f"{method}_us" in case:
                out[name] = round(case[f"{reference}_us"] / case[f"{method}_us"], 2)
        if "dense_fp32_bytes" in case and "condensed_fp32_bytes" in case:
            ratio = case["condensed_fp32_bytes"] / case["dense_fp32_bytes"]
            out["memory_ratio"] = round(ratio, 4)
            out["byte_ceiling"] = round(1.0 / ratio, 2)
        summary.append(out)
    return summary


TABLE_COLUMNS = {
    "dense_fp32_us": "dense µs",
    "dense_bf16_us": "dense bf16 µs",
    "csr_fp32_us": "CSR µs",
    "condensed_fp32_us": "cond µs",
    "condensed_bf16_us": "cond bf16 µs",
    "cond_vs_dense": "cond ×dense",
    "cond_vs_csr": "cond ×CSR",
    "cond_bf16_vs_dense_bf16": "bf16 cond ×dense",
    "byte_ceiling": "byte ceiling",
}


def summary_table(summary: Sequence[Row], title: str = "lightning_srigl benchmark") -> Table:
    """A rich table of :func:`summarize`: one row per case, key times (µs) and ratios (×)."""
    table = Table(title=title)
    for header in ("layer", "sparsity", "batch", "threads", "cache", *TABLE_COLUMNS.values()):
        table.add_column(header, justify="left" if header in ("layer", "cache") else "right")
    for row in summary:
        layer = f"{row['in_features']}→{row['out_features']}" + (" 2:4" if row["structure"] == "2:4" else "")
        cells = [layer, f"{row['sparsity']:.2f}", str(row["batch"]), str(row["threads"]), row["cache"]]
        table.add_row(*cells, *(str(row.get(key, "")) for key in TABLE_COLUMNS))
    return table


def plot(rows: Sequence[Row], path: Path, threads: int, statistic: str = "median") -> Path:
    """Time vs sparsity per method, log y, one panel per (shape, batch): the paper's Figure 11 style.

    Only hot-cache constant-fan-in rows at ``threads``; 2:4 layers are drawn as single markers at 50 %.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hot = [r for r in rows if r["cache"] == "hot" and r["threads"] == threads]
    shapes = list(dict.fromkeys((r["in_features"], r["out_features"]) for r in hot))
    batches = sorted({r["batch"] for r in hot})
    fig, axes = plt.subplots(
        len(shapes), len(batches), figsize=(4 * len(batches), 3.2 * len(shapes)), squeeze=False, sharex=True
    )
    for i, shape in enumerate(shapes):
        for j, batch in enumerate(batches):
            panel = [r for r in hot if (r["in_features"], r["out_features"]) == shape and r["batch"] == batch]
            _panel(axes[i][j], panel, "time_us" if statistic == "median" else "min_us")
            axes[i][j].set_title(f"{shape[0]}→{shape[1]}, batch {batch}, {threads} thread(s)", fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.supxlabel("sparsity")
    fig.supylabel(f"time per call (µs, {statistic}, log)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _panel(ax: Any, rows: Sequence[Row], column: str) -> None:
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in rows:
        label = r["method"] if r["structure"] == "srigl" else f"{r['method']} (2:4)"
        series[label].append((r["sparsity"], r[column]))
    for label, points in series.items():
        points.sort()
        style = "s" if "(2:4)" in label else "o-"
        ax.plot([p[0] for p in points], [p[1] for p in points], style, label=label, markersize=4)
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)


def write_outputs(
    rows: Sequence[Row], output_dir: Path, name: str, statistic: str = "median", console: Console | None = None
) -> dict[str, Path]:
    """Write ``<name>.csv`` (raw), ``<name>_summary.csv``, ``<name>_t<threads>.png``; print the table."""
    summary = summarize(rows, statistic)
    outputs = {
        "raw_csv": write_csv(rows, output_dir / f"{name}.csv"),
        "summary_csv": write_csv(summary, output_dir / f"{name}_summary.csv"),
    }
    for threads in sorted({r["threads"] for r in rows}):
        outputs[f"plot_t{threads}"] = plot(rows, output_dir / f"{name}_t{threads}.png", threads, statistic)
    title = f"{name} ({statistic} µs per call; ratios ×, > 1 = faster)"
    (console or Console(width=180)).print(summary_table(summary, title=title))
    return outputs


def markdown_table(summary: Sequence[Row]) -> str:
    """The :func:`summary_table` columns as a GitHub-flavoured markdown table (for ``docs/``)."""
    headers = ["layer", "sparsity", "batch", "threads", "cache", *TABLE_COLUMNS.values()]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in summary:
        layer = f"{row['in_features']}→{row['out_features']}" + (" 2:4" if row["structure"] == "2:4" else "")
        cells = [layer, f"{row['sparsity']:.2f}", str(row["batch"]), str(row["threads"]), row["cache"]]
        cells += [str(row.get(key, "")) for key in TABLE_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
