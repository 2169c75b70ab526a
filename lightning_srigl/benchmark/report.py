"""Benchmark outputs: raw CSV, summary CSV with ratios, a rich table and Figure-11-style plots.

Summary ratios are ``time(reference) / time(method)`` measured in the same run (> 1: the method is
faster). ``memory_ratio`` is the condensed fp32 layer's values+indices bytes over the dense fp32
weight's bytes; ``byte_ceiling`` is its inverse, the batch-1 speedup limit when weights stream from
DRAM (``docs/benchmarks.md``).
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Callable, Sequence
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
    "cond_vs_dense_tf32": ("dense_tf32", "condensed_fp32"),
    "cond_fp16_vs_dense_fp16": ("dense_fp16", "condensed_fp16"),
    "cond_graph_vs_dense_graph": ("dense_graph_fp32", "condensed_graph_fp32"),
    "cond_graph_vs_cond": ("condensed_fp32", "condensed_graph_fp32"),
    "semi_bf16_vs_dense_bf16": ("dense_bf16", "semi_structured_bf16"),
    "semi_fp16_vs_dense_fp16": ("dense_fp16", "semi_structured_fp16"),
}
"""Summary ratio name -> (reference method, method): ``time(reference) / time(method)``, > 1 = faster."""


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
    "cond_fp16_vs_dense_fp16": "fp16 cond ×dense",
    "cond_vs_dense_tf32": "cond ×TF32 dense",
    "cond_graph_vs_dense_graph": "graph cond ×graph dense",
    "semi_bf16_vs_dense_bf16": "2:4 bf16 ×dense",
    "byte_ceiling": "byte ceiling",
}
"""Summary key -> table header; a column no row fills (e.g. GPU-only methods on CPU) is left out."""


def _columns(summary: Sequence[Row]) -> dict[str, str]:
    """The :data:`TABLE_COLUMNS` that at least one summary row has."""
    return {key: header for key, header in TABLE_COLUMNS.items() if any(key in row for row in summary)}


def summary_table(summary: Sequence[Row], title: str = "lightning_srigl benchmark") -> Table:
    """A rich table of :func:`summarize`: one row per case, key times (µs) and ratios (×)."""
    table = Table(title=title)
    columns = _columns(summary)
    for header in ("layer", "sparsity", "batch", "threads", "cache", *columns.values()):
        table.add_column(header, justify="left" if header in ("layer", "cache") else "right")
    for row in summary:
        layer = f"{row['in_features']}→{row['out_features']}" + (" 2:4" if row["structure"] == "2:4" else "")
        cells = [layer, f"{row['sparsity']:.2f}", str(row["batch"]), str(row["threads"]), row["cache"]]
        table.add_row(*cells, *(str(row.get(key, "")) for key in columns))
    return table


def plot(rows: Sequence[Row], path: Path, threads: int, statistic: str = "median") -> Path:
    """Time vs sparsity per method, log y, one panel per (shape, batch): the paper's Figure 11 style.

    Only hot-cache constant-fan-in rows at ``threads``; 2:4 layers are drawn as single markers at 50 %.
    """
    column = "time_us" if statistic == "median" else "min_us"
    hot = [r for r in rows if r["cache"] == "hot" and r["threads"] == threads]

    def series(panel: Sequence[Row]) -> dict[str, list[tuple[float, float]]]:
        points: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for r in panel:
            label = r["method"] if r["structure"] == "srigl" else f"{r['method']} (2:4)"
            points[label].append((r["sparsity"], r[column]))
        return points

    return _panels(hot, series, path, f"{threads} thread(s)", f"time per call (µs, {statistic}, log)")


def plot_speedup(summary: Sequence[Row], path: Path, threads: int) -> Path:
    """Speedup vs sparsity, log y, one panel per (shape, batch): each :data:`RATIOS` entry of the summary.

    Hot-cache rows at ``threads``; 2:4 layers are single markers at 50 %; the dotted line is 1 (no gain).
    """
    hot = [r for r in summary if r["cache"] == "hot" and r["threads"] == threads]

    def series(panel: Sequence[Row]) -> dict[str, list[tuple[float, float]]]:
        points: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for r in panel:
            for name, (reference, method) in RATIOS.items():
                if name in r and method.startswith(("condensed", "semi_structured")):
                    label = f"{method} / {reference}" + ("" if r["structure"] == "srigl" else " (2:4)")
                    points[label].append((r["sparsity"], r[name]))
        return points

    return _panels(hot, series, path, f"{threads} thread(s)", "speedup (×, log)", ref=1.0)


def _panels(
    rows: Sequence[Row],
    series: Callable[[Sequence[Row]], dict[str, list[tuple[float, float]]]],
    path: Path,
    subtitle: str,
    ylabel: str,
    ref: float | None = None,
) -> Path:
    """A (shape x batch) grid of log-y panels, each drawing ``series(rows of that panel)`` against sparsity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = list(dict.fromkeys((r["in_features"], r["out_features"]) for r in rows))
    batches = sorted({r["batch"] for r in rows})
    fig, axes = plt.subplots(
        len(shapes), len(batches), figsize=(4 * len(batches), 3.2 * len(shapes)), squeeze=False, sharex=True
    )
    for i, shape in enumerate(shapes):
        for j, batch in enumerate(batches):
            ax = axes[i][j]
            panel = [r for r in rows if (r["in_features"], r["out_features"]) == shape and r["batch"] == batch]
            for label, points in series(panel).items():
                points.sort()
                style = "s" if "(2:4)" in label else "o-"
                ax.plot([p[0] for p in points], [p[1] for p in points], style, label=label, markersize=4)
            if ref is not None:
                ax.axhline(ref, color="black", linestyle=":", linewidth=1)
            ax.set_yscale("log")
            ax.grid(True, which="both", alpha=0.3)
            ax.set_title(f"{shape[0]}→{shape[1]}, batch {batch}, {subtitle}", fontsize=9)
    labelled = [ax for ax in axes.flat if ax.get_legend_handles_labels()[0]]
    if labelled:
        labelled[0].legend(fontsize=7)
    fig.supxlabel("sparsity")
    fig.supylabel(ylabel)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_outputs(
    rows: Sequence[Row], output_dir: Path, name: str, statistic: str = "median", console: Console | None = None
) -> dict[str, Path]:
    """Write ``<name>.csv`` (raw), ``<name>_summary.csv``, ``<name>_t<threads>.png`` (times) and
    ``<name>_speedup_t<threads>.png`` (ratios); print the table."""
    summary = summarize(rows, statistic)
    outputs = {
        "raw_csv": write_csv(rows, output_dir / f"{name}.csv"),
        "summary_csv": write_csv(summary, output_dir / f"{name}_summary.csv"),
    }
    for threads in sorted({r["threads"] for r in rows}):
        outputs[f"plot_t{threads}"] = plot(rows, output_dir / f"{name}_t{threads}.png", threads, statistic)
        speedup = output_dir / f"{name}_speedup_t{threads}.png"
        outputs[f"speedup_plot_t{threads}"] = plot_speedup(summary, speedup, threads)
    title = f"{name} ({statistic} µs per call; ratios ×, > 1 = faster)"
    (console or Console(width=180)).print(summary_table(summary, title=title))
    return outputs


def markdown_table(summary: Sequence[Row]) -> str:
    """The :func:`summary_table` columns as a GitHub-flavoured markdown table (for ``docs/``)."""
    columns = _columns(summary)
    headers = ["layer", "sparsity", "batch", "threads", "cache", *columns.values()]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in summary:
        layer = f"{row['in_features']}→{row['out_features']}" + (" 2:4" if row["structure"] == "2:4" else "")
        cells = [layer, f"{row['sparsity']:.2f}", str(row["batch"]), str(row["threads"]), row["cache"]]
        cells += [str(row.get(key, "")) for key in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
