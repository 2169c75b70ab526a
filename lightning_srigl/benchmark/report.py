"""Benchmark outputs: raw CSV, summary CSV with ratios, rich tables and Figure-11-style plots.

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

from lightning_srigl.tables import fitted_table, terminal_console

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
    ``RATIOS`` present."""
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


CASE_HEADERS = ("layer", "sparsity", "batch", "threads", "cache")
# The printed tables: times and ratios apart, so each fits a 100-column terminal.
TIME_HEADERS = {
    "dense_fp32_us": "dense",
    "dense_bf16_us": "dense bf16",
    "csr_fp32_us": "CSR",
    "condensed_fp32_us": "cond.",
    "condensed_bf16_us": "cond. bf16",
}
RATIO_HEADERS = {
    "cond_vs_dense": "cond. × dense",
    "cond_vs_csr": "cond. × CSR",
    "cond_bf16_vs_dense_bf16": "bf16: cond. × dense",
    "byte_ceiling": "byte ceiling",
}


def case_cells(row: Row) -> list[str]:
    """The cells that name a case: layer (``in→out``, `` 2:4`` for N:M), sparsity, batch, threads, cache."""
    layer = f"{row['in_features']}→{row['out_features']}" + (" 2:4" if row["structure"] == "2:4" else "")
    return [layer, f"{row['sparsity']:.2f}", str(row["batch"]), str(row["threads"]), row["cache"]]


def format_us(value: Any) -> str:
    """A time in µs with 4 significant digits at most (``""`` when the method was not timed)."""
    if value == "" or value is None:
        return ""
    return f"{value:.4g}" if value < 1000 else f"{value:,.0f}"


def summary_tables(summary: Sequence[Row], title: str = "lightning_srigl benchmark", width: int = 100) -> list[Table]:
    """Two rich tables of [`summarize`][lightning_srigl.benchmark.report.summarize]: times (µs) and ratios (×).

    Columns of methods that no case timed are left out; each table fits a console ``width`` columns
    wide down to 100.
    """
    tables = []
    for kind, headers, cell in (("µs per call", TIME_HEADERS, format_us), ("ratios, > 1 = faster", RATIO_HEADERS, str)):
        keys = [k for k in headers if any(k in row for row in summary)]
        rows = [case_cells(row) + [cell(row.get(key, "")) for key in keys] for row in summary]
        columns = [*CASE_HEADERS, *(headers[k] for k in keys)]
        tables.append(fitted_table(f"{title}: {kind}", columns, rows, width, left=("layer", "cache")))
    return tables


def plot(rows: Sequence[Row], path: Path, threads: int, shape: tuple[int, int], statistic: str = "median") -> Path:
    """Time vs sparsity per method for one layer ``shape`` at ``threads``, one panel per batch size.

    The paper's Figure 11 style, log y; only hot-cache rows; 2:4 layers are single markers at 50 %.
    Sized to stay legible in a documentation column about 700 px wide.
    """
    from matplotlib.figure import Figure  # the Agg canvas, no display or pyplot state needed

    hot = [
        r for r in rows
        if r["cache"] == "hot" and r["threads"] == threads and (r["in_features"], r["out_features"]) == shape
    ]
    batches = sorted({r["batch"] for r in hot})
    figure = Figure(figsize=(3.3 * len(batches), 4.4), layout="constrained")
    axes = figure.subplots(1, len(batches), squeeze=False)[0]
    column = "time_us" if statistic == "median" else "min_us"
    for ax, batch in zip(axes, batches):
        _panel(ax, [r for r in hot if r["batch"] == batch], column)
        ax.set_title(f"batch {batch}", fontsize=13)
        ax.set_xlabel("sparsity", fontsize=12)
        ax.tick_params(labelsize=11)
    axes[0].set_ylabel(f"µs per call ({statistic}, log)", fontsize=12)
    figure.suptitle(f"{shape[0]}→{shape[1]} layer, {threads} thread{'s' if threads > 1 else ''}", fontsize=14)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=3, fontsize=11, frameon=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path


def plot_paths(rows: Sequence[Row], output_dir: Path, name: str) -> dict[tuple[int, tuple[int, int]], Path]:
    """``(threads, (in, out)) -> <output_dir>/<name>_t<threads>_<in>x<out>.png`` for the hot-cache cases."""
    hot = [r for r in rows if r["cache"] == "hot"]
    timed = {(r["threads"], (r["in_features"], r["out_features"])) for r in hot}
    shapes = dict.fromkeys((r["in_features"], r["out_features"]) for r in hot)
    return {
        (threads, shape): output_dir / f"{name}_t{threads}_{shape[0]}x{shape[1]}.png"
        for threads in sorted({r["threads"] for r in hot})
        for shape in shapes
        if (threads, shape) in timed
    }


def _panel(ax: Any, rows: Sequence[Row], column: str) -> None:
    """One method per colour: a line over the constant fan-in sparsities, a square for its 2:4 layer."""
    series: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for r in rows:
        series[(r["method"], r["structure"])].append((r["sparsity"], r[column]))
    methods = list(dict.fromkeys(method for method, _ in series))
    for (method, structure), points in series.items():
        points.sort()
        color = f"C{methods.index(method) % 10}"
        if structure == "2:4":
            ax.plot([p[0] for p in points], [p[1] for p in points], "s", color=color, markersize=6, mfc="none")
        else:
            ax.plot([p[0] for p in points], [p[1] for p in points], "o-", color=color, label=method, markersize=4)
    if any(structure == "2:4" for _, structure in series):
        ax.plot([], [], "s", color="grey", mfc="none", label="2:4 layer (50 %)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)


def write_outputs(
    rows: Sequence[Row], output_dir: Path, name: str, statistic: str = "median", console: Console | None = None
) -> dict[str, Path]:
    """Write ``<name>.csv`` (raw), ``<name>_summary.csv`` and one plot per thread count and layer
    (``<name>_t<threads>_<in>x<out>.png``); print the tables (sized to the terminal)."""
    summary = summarize(rows, statistic)
    outputs = {
        "raw_csv": write_csv(rows, output_dir / f"{name}.csv"),
        "summary_csv": write_csv(summary, output_dir / f"{name}_summary.csv"),
    }
    for (threads, shape), path in plot_paths(rows, output_dir, name).items():
        outputs[path.stem.removeprefix(f"{name}_")] = plot(rows, path, threads, shape, statistic)
    console = console or terminal_console()
    for table in summary_tables(summary, f"{name} ({statistic})", console.width):
        console.print(table)
    return outputs


def markdown_table(summary: Sequence[Row]) -> str:
    """Every case with its times and ratios as one GitHub-flavoured markdown table (for ``docs/``)."""
    headers = [*CASE_HEADERS, *TABLE_COLUMNS.values()]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in summary:
        cells = case_cells(row) + [str(row.get(key, "")) for key in TABLE_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
