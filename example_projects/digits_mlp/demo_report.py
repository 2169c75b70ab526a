"""The demo's two tables (accuracy and topology; inference on this CPU), their notes, and the files.

Every cell and every note is computed from the measured ``Row`` of each method.
"""

from __future__ import annotations

import csv
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from lightning_srigl.acceleration.report import SHORT_NAMES, AccelerationReport
from lightning_srigl.tables import fitted_table


@dataclass
class Row:
    """One method: accuracies over seeds, the seed-0 network's topology, its accelerated models' cost.

    ``param_bytes`` and ``report`` are those of the batch-1 model; latencies are in microseconds.
    """

    method: str
    accuracies: list[float]
    density: float
    active_neurons: str
    param_bytes: int
    report: AccelerationReport | None
    latency_b1: float
    latency_b256: float
    exact: bool
    two_four: bool = False


def kernels(row: Row) -> str:
    """The kernels ``accelerate`` chose for the sparse layers, e.g. ``"2 cond., 1 dense"``."""
    if row.report is None:
        return "dense (not sparse)"
    counts = Counter(layer.chosen for layer in row.report.rows)
    return ", ".join(f"{n} {SHORT_NAMES.get(kernel, kernel)}" for kernel, n in counts.most_common())


def accuracy_records(rows: list[Row]) -> list[dict[str, str]]:
    """Accuracy (mean ± sd over seeds, per seed, Δ vs the first row), density and active neurons."""
    dense_mean = statistics.mean(rows[0].accuracies)
    records = []
    for r in rows:
        mean = 100 * statistics.mean(r.accuracies)
        spread = 100 * statistics.stdev(r.accuracies) if len(r.accuracies) > 1 else 0.0
        records.append(
            {
                "method": r.method,
                "test acc % (mean ± sd)": f"{mean:.2f} ± {spread:.2f}",
                "per seed": " ".join(f"{100 * a:.2f}" for a in r.accuracies),
                "Δ vs dense": f"{mean - 100 * dense_mean:+.2f}",
                "density": f"{r.density:.3f}",
                "active neurons": r.active_neurons,
            }
        )
    return records


def inference_records(rows: list[Row]) -> list[dict[str, str]]:
    """Kernels, bytes and interleaved latencies of the accelerated models, as ratios against the first row."""
    dense = rows[0]
    return [
        {
            "method": r.method,
            "kernels (batch 1)": kernels(r),
            "bytes": f"{r.param_bytes:,}",
            "batch 1 µs": f"{r.latency_b1:.0f}",
            "× dense b1": f"{dense.latency_b1 / r.latency_b1:.2f}",
            "batch 256 µs": f"{r.latency_b256:.0f}",
            "× dense b256": f"{dense.latency_b256 / r.latency_b256:.2f}",
            "same predictions": "yes" if r.exact else "NO",
        }
        for r in rows
    ]


def notes(rows: list[Row]) -> list[str]:
    """What the tables cannot say in a cell: where neurons were ablated, and why 2:4 gains little on CPU."""
    dense = rows[0]
    lines = []
    for r in rows:
        active, total = (int(n) for n in r.active_neurons.split("/"))
        if active < total:
            lines.append(f"{r.method}: {total - active} of {total} neurons have no active weight left.")
        skipped = r.report.rows[0].skipped.get("semi_structured") if r.report and r.report.rows else None
        if r.two_four and skipped:
            reason = skipped.split(": ", 1)[-1]
            lines.append(
                f"{r.method}: no 2:4 kernel here ({reason}); its layers ran as {kernels(r)}, storing "
                f"{r.param_bytes / dense.param_bytes:.2f} of the dense bytes, hence "
                f"{dense.latency_b1 / r.latency_b1:.2f}× at batch 1 and {dense.latency_b256 / r.latency_b256:.2f}× "
                "at batch 256."
            )
    return lines


def print_and_write(rows: list[Row], header: str, out: Path, console: Console) -> list[dict[str, str]]:
    """Print both tables and the notes; write ``<out>/digits_demo.md`` and ``.csv``; return the CSV rows."""
    accuracy, inference = accuracy_records(rows), inference_records(rows)
    tables = [
        ("Accuracy and topology (test accuracy over seeds; density and neurons of seed 0)", accuracy),
        (
            "Inference on this CPU (seed-0 model, accelerated for each batch size; median of interleaved timings)",
            inference,
        ),
    ]
    for title, records in tables:
        headers = list(records[0])
        cells = [list(record.values()) for record in records]
        console.print(
            fitted_table(title, headers, cells, console.width, left=("method", "kernels (batch 1)"), fold=("method",))
        )
    lines = notes(rows)
    for line in lines:
        console.print(f"• {line}", highlight=False)
    merged = [{**a, **i} for a, i in zip(accuracy, inference)]
    write_results(tables, lines, header, merged, out)
    console.print(f"Written to {out / 'digits_demo.md'} and {out / 'digits_demo.csv'}", highlight=False)
    return merged


def write_results(
    tables: list[tuple[str, list[dict[str, str]]]],
    lines: list[str],
    header: str,
    merged: list[dict[str, str]],
    out: Path,
) -> None:
    """``<out>/digits_demo.md`` (header, both tables, notes) and ``<out>/digits_demo.csv`` (one row per method)."""
    out.mkdir(parents=True, exist_ok=True)
    text = [header]
    for title, records in tables:
        keys = list(records[0])
        text += ["", f"**{title}**", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        text += ["| " + " | ".join(r[k] for k in keys) + " |" for r in records]
    text += [""] + [f"* {line}" for line in lines]
    (out / "digits_demo.md").write_text("\n".join(text) + "\n")
    with (out / "digits_demo.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(merged[0]))
        writer.writeheader()
        writer.writerows(merged)
