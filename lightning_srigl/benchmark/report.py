"""Benchmark outputs: raw CSV, summary CSV with ratios, rich tables and Figure-11-style plots.

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

from lightning_srigl import tables
from lightning_srigl.tables import fitted_table, terminal_console

Row = dict[str, Any]
CASE_KEYS = (
    "structure",
    "in_features",
    "out_features",
    "sparsity",
    "fan_in",
    "active_neurons",
    "batch",
    "threads",
    "cache",
)
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
    `RATIOS` present."""
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
    """The ``TABLE_COLUMNS`` that at least one summary row has."""
    return {key: header for key, header in TABLE_COLUMNS.items() if any(key in row for row in summary)}


CASE_HEADERS = ("layer", "sparsity", "batch", "threads", "cache")


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

    The columns are those of ``TABLE_COLUMNS`` that some row has, times apart from ratios so that each
    table fits a console ``width`` columns wide, down to 100.
    """
    columns = _columns(summary)
    times = {key: header.removesuffix(" µs") for key, header in columns.items() if key.endswith("_us")}
    ratios = {key: header for key, header in columns.items() if not key.endswith("_us")}
    tables = []
    for kind, headers, cell in (("µs per call", times, format_us), ("ratios, > 1 = faster", ratios, str)):
        rows = [case_cells(row) + [cell(row.get(key, "")) for key in headers] for row in summary]
        tables.append(
            fitted_table(f"{title}: {kind}", [*CASE_HEADERS, *headers.values()], rows, width, left=("layer", "cache"))
        )
    return tables


Series = Callable[[Sequence[Row]], dict[str, list[tuple[float, float]]]]


def _time_series(column: str) -> Series:
    """``label -> [(sparsity, µs)]`` per method; 2:4 layers labelled ``"<method> (2:4)"``."""

    def series(panel: Sequence[Row]) -> dict[str, list[tuple[float, float]]]:
        points: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for r in panel:
            label = r["method"] if r["structure"] == "srigl" else f"{r['method']} (2:4)"
            points[label].append((r["sparsity"], r[column]))
        return points

    return series


def plot(rows: Sequence[Row], path: Path, threads: int, statistic: str = "median") -> Path:
    """Time vs sparsity per method, log y, one panel per (shape, batch): the paper's Figure 11 style.

    Only hot-cache constant-fan-in rows at ``threads``; 2:4 layers are drawn as single markers at 50 %.
    """
    column = "time_us" if statistic == "median" else "min_us"
    hot = [r for r in rows if r["cache"] == "hot" and r["threads"] == threads]
    return _panels(hot, _time_series(column), path, f"{threads} thread(s)", f"time per call (µs, {statistic}, log)")


def plot_layer(
    rows: Sequence[Row], path: Path, threads: int, shape: tuple[int, int], statistic: str = "median"
) -> Path:
    """[`plot`][lightning_srigl.benchmark.report.plot] for one layer ``shape``: one figure, a panel per batch
    size, sized to stay legible in a documentation column about 700 px wide."""
    column = "time_us" if statistic == "median" else "min_us"
    hot = [
        r
        for r in rows
        if r["cache"] == "hot" and r["threads"] == threads and (r["in_features"], r["out_features"]) == shape
    ]
    title = f"{shape[0]}→{shape[1]} layer, {threads} thread{'s' if threads > 1 else ''}"
    return _panels(hot, _time_series(column), path, title, f"µs per call ({statistic}, log)", one_figure_per_shape=True)


def plot_speedup(summary: Sequence[Row], path: Path, threads: int) -> Path:
    """Speedup vs sparsity, log y, one panel per (shape, batch): each ``RATIOS`` entry of the summary.

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
    series: Series,
    path: Path,
    subtitle: str,
    ylabel: str,
    ref: float | None = None,
    one_figure_per_shape: bool = False,
) -> Path:
    """Log-y panels, each drawing ``series(rows of that panel)`` against sparsity: a (shape x batch) grid,
    or (``one_figure_per_shape``, rows of one shape) a row of batch panels titled ``subtitle``.

    A label keeps one colour in every panel; its 2:4 point is an open square of that colour.
    """
    from matplotlib.figure import Figure  # the Agg canvas, no display or pyplot state needed

    shapes = list(dict.fromkeys((r["in_features"], r["out_features"]) for r in rows))
    batches = sorted({r["batch"] for r in rows})
    if one_figure_per_shape:
        figure = Figure(figsize=(3.3 * len(batches), 4.4), layout="constrained")
        fonts = {"title": 13, "label": 12, "ticks": 11, "legend": 11}
    else:
        figure = Figure(figsize=(4 * len(batches), 3.4 * len(shapes) + 0.8), layout="constrained")
        fonts = {"title": 10, "label": 11, "ticks": 9, "legend": 10}
    axes = figure.subplots(len(shapes), len(batches), squeeze=False, sharex=True)
    panels = {
        (i, j): series([r for r in rows if (r["in_features"], r["out_features"]) == shape and r["batch"] == batch])
        for i, shape in enumerate(shapes)
        for j, batch in enumerate(batches)
    }
    methods = list(dict.fromkeys(label.removesuffix(" (2:4)") for points in panels.values() for label in points))
    for (i, j), points_by_label in panels.items():
        ax = axes[i][j]
        for label, points in points_by_label.items():
            points.sort()
            color = f"C{methods.index(label.removesuffix(' (2:4)')) % 10}"
            xs, ys = [p[0] for p in points], [p[1] for p in points]
            if label.endswith(" (2:4)"):
                ax.plot(xs, ys, "s", color=color, markersize=6, mfc="none")
            else:
                ax.plot(xs, ys, "o-", color=color, label=label, markersize=4)
        if ref is not None:
            ax.axhline(ref, color="black", linestyle=":", linewidth=1)
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.tick_params(labelsize=fonts["ticks"])
        where = f"batch {batches[j]}" if one_figure_per_shape else f"{shapes[i][0]}→{shapes[i][1]}, batch {batches[j]}"
        ax.set_title(where, fontsize=fonts["title"])
    handles, labels = [], []
    for ax in axes.flat:  # every method once, in first-seen order
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    if any(label.endswith(" (2:4)") for points in panels.values() for label in points):
        handles += axes[0][0].plot([], [], "s", color="grey", mfc="none")
        labels.append("2:4 layer (50 %)")
    for ax in axes[-1]:  # on the axes, not the figure: the legend sits below them
        ax.set_xlabel("sparsity", fontsize=fonts["label"])
    figure.legend(handles, labels, loc="outside lower center", ncols=3, fontsize=fonts["legend"], frameon=False)
    figure.supylabel(ylabel, fontsize=fonts["label"])
    figure.suptitle(subtitle, fontsize=fonts["title"] + 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100 if one_figure_per_shape else 110)
    return path


def layer_plot_paths(rows: Sequence[Row], output_dir: Path, name: str) -> dict[tuple[int, tuple[int, int]], Path]:
    """``(threads, (in, out)) -> <output_dir>/<name>_t<threads>_<in>x<out>.png``, the per-layer plots."""
    hot = [r for r in rows if r["cache"] == "hot"]
    timed = {(r["threads"], (r["in_features"], r["out_features"])) for r in hot}
    shapes = dict.fromkeys((r["in_features"], r["out_features"]) for r in hot)
    return {
        (threads, shape): output_dir / f"{name}_t{threads}_{shape[0]}x{shape[1]}.png"
        for threads in sorted({r["threads"] for r in hot})
        for shape in shapes
        if (threads, shape) in timed
    }


def write_outputs(
    rows: Sequence[Row], output_dir: Path, name: str, statistic: str = "median", console: Console | None = None
) -> dict[str, Path]:
    """Write ``<name>.csv`` (raw), ``<name>_summary.csv``, ``<name>_t<threads>.png`` (times, every layer),
    ``<name>_t<threads>_<in>x<out>.png`` (times, one layer, for the docs) and ``<name>_speedup_t<threads>.png``
    (ratios); print the tables, sized to the terminal."""
    summary = summarize(rows, statistic)
    outputs = {
        "raw_csv": write_csv(rows, output_dir / f"{name}.csv"),
        "summary_csv": write_csv(summary, output_dir / f"{name}_summary.csv"),
    }
    for threads in sorted({r["threads"] for r in rows}):
        outputs[f"plot_t{threads}"] = plot(rows, output_dir / f"{name}_t{threads}.png", threads, statistic)
        speedup = output_dir / f"{name}_speedup_t{threads}.png"
        outputs[f"speedup_plot_t{threads}"] = plot_speedup(summary, speedup, threads)
    for (threads, shape), path in layer_plot_paths(rows, output_dir, name).items():
        outputs[path.stem.removeprefix(f"{name}_")] = plot_layer(rows, path, threads, shape, statistic)
    console = console or terminal_console()
    for table in summary_tables(summary, f"{name} ({statistic})", console.width):
        console.print(table)
    return outputs


def markdown_table(summary: Sequence[Row]) -> str:
    """Every case with the ``TABLE_COLUMNS`` some row has, as one GitHub-flavoured markdown table (for ``docs/``)."""
    columns = _columns(summary)
    headers = [*CASE_HEADERS, *columns.values()]
    cells = [case_cells(row) + [str(row.get(key, "")) for key in columns] for row in summary]
    return tables.markdown_table(headers, cells)
