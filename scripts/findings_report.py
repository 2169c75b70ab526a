"""Tables and plots of ``findings_sweep.py``: CSVs, Markdown, accuracy and active-neuron plots.

Files written to the output folder:

* ``runs.csv`` — one row per training run (accuracy, per-layer active neurons and fan-in);
* ``findings.csv`` — one row per setting (mean ± sd over seeds, batch-1 latency of the first seed);
* ``findings.md`` — the same as Markdown tables, with the command and the machine in the header;
* ``accuracy.png``, ``active_neurons.png`` — test accuracy and active neurons against sparsity;
* ``paper.png`` — the paper's accuracy numbers (quoted, see :data:`PAPER`) drawn on the same axes;
* ``meta.json`` — command, machine, CPU time and the wall-time estimate.
"""

from __future__ import annotations

import csv
import json
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lightning_srigl.benchmark.machine import machine_fields
from lightning_srigl.kernels.cpu.isa import cpu_model

# The paper's top-1 accuracies (%) from the reference code's notebooks/final_results.ipynb, as
# quoted in docs/reproducing.md: (model, dense, {method: {sparsity %: accuracy}}).
PAPER = [
    ("CIFAR-10 ResNet-18 (5 seeds)", 95.45, {
        "RigL": {80: 95.20, 90: 95.06, 95: 94.62, 99: 92.88},
        "SRigL w/o ablation": {80: 95.19, 90: 95.00, 95: 94.48, 99: 91.47},
        "SRigL w/ ablation (γ=0.3)": {80: 95.22, 90: 95.11, 95: 94.70, 99: 92.79},
    }),
    ("CIFAR-10 WRN-22 (5 seeds)", 95.0, {
        "RigL": {80: 94.0, 90: 93.3, 95: 92.1, 99: 84.9},
        "SRigL w/o ablation": {80: 94.1, 90: 93.1, 95: 91.4, 99: 76.9},
        "SRigL w/ ablation (γ=0.3)": {80: 94.0, 90: 93.3, 95: 91.8, 99: 82.7},
    }),
    ("ImageNet ResNet-50 (1 seed)", 76.74, {
        "RigL": {80: 74.98, 90: 72.81, 95: 69.66, 99: 51.47},
        "SRigL w/o ablation": {80: 74.83, 90: 72.65, 95: 68.83, 99: 48.74},
        "SRigL w/ ablation (γ=0.3)": {80: 75.01, 90: 72.71, 95: 69.18, 99: 51.55},
    }),
]  # fmt: skip


@dataclass(frozen=True)
class LayerTopology:
    """One ``Linear`` at the end of a run: rows with at least one active weight and their fan-in."""

    layer: str
    out_features: int
    in_features: int
    active: int
    fan_in_mean: float
    fan_in_max: int


@dataclass(frozen=True)
class Latency:
    """Batch-1 latency (µs, median) of a setting's accelerated first-seed model and of the dense model."""

    setting: Any
    dense_us: float
    model_us: float
    kernels: str
    same_predictions: bool


def run_metadata(
    *, command: str, results_cpu_seconds: float, training_wall_seconds: float, latency_wall_seconds: float,
    latency_cpu_seconds: float, workers: int, latency_threads: int, reused_runs: int, recipes: dict[str, str],
) -> dict[str, Any]:  # fmt: skip
    """The machine and the timing of a sweep.

    The estimate is for the default ``--workers 2`` on a quiet 2-core machine: the single-threaded
    runs keep their CPU time and fill both cores, and the latency phase (one process,
    ``latency_threads`` threads) takes its CPU time: ``training CPU seconds / 2 + latency CPU
    seconds``. The training CPU seconds include runs reused from ``--cache`` (as measured when they
    ran); the wall seconds do not.
    """
    cores = 2
    return {
        "command": command,
        "cpu": cpu_model(),
        "condensed_kernel": machine_fields()["kernel_variant"],
        "torch": torch.__version__,
        "workers": workers,
        "latency_threads": latency_threads,
        "loadavg_at_end": [round(v, 2) for v in os.getloadavg()],
        "reused_runs": reused_runs,
        "training_cpu_seconds": round(results_cpu_seconds, 1),
        "training_wall_seconds": round(training_wall_seconds, 1),
        "latency_cpu_seconds": round(latency_cpu_seconds, 1),
        "latency_wall_seconds": round(latency_wall_seconds, 1),
        "estimated_quiet_wall_seconds": round(results_cpu_seconds / cores + latency_cpu_seconds, 1),
        "recipes": recipes,
    }


def _key(setting: Any) -> tuple[str, str, float]:
    return setting.dataset, setting.label, setting.sparsity


def summarize(results: Sequence[Any], latencies: Sequence[Latency]) -> list[dict[str, Any]]:
    """One record per (data set, method, sparsity): accuracy statistics, mean topology, latency."""
    groups: dict[tuple[str, str, float], list[Any]] = {}
    for result in results:
        groups.setdefault(_key(result.setting), []).append(result)
    by_key = {_key(latency.setting): latency for latency in latencies}
    records = []
    for key, runs in groups.items():
        ok = [r for r in runs if r.accuracy is not None]
        accuracies = [100 * r.accuracy for r in ok]
        record: dict[str, Any] = {
            "dataset": key[0], "method": key[1], "sparsity": key[2], "seeds": len(ok),
            "acc_mean": round(statistics.mean(accuracies), 2) if ok else None,
            "acc_sd": round(statistics.stdev(accuracies), 2) if len(ok) > 1 else None,
            "error": next((r.error for r in runs if r.error), ""),
        }  # fmt: skip
        for index, layer in enumerate(ok[0].layers if ok else []):
            tops = [r.layers[index] for r in ok]
            record[f"{layer.layer}_neurons"] = layer.out_features
            record[f"{layer.layer}_active"] = round(statistics.mean(t.active for t in tops), 1)
            record[f"{layer.layer}_fan_in"] = round(statistics.mean(t.fan_in_mean for t in tops), 1)
            record[f"{layer.layer}_fan_in_max"] = max(t.fan_in_max for t in tops)
        latency = by_key.get(key)
        if latency is not None:
            record.update(
                dense_us=round(latency.dense_us, 1), model_us=round(latency.model_us, 1),
                speedup_vs_dense=round(latency.dense_us / latency.model_us, 2), kernels=latency.kernels,
                same_predictions=latency.same_predictions,
            )  # fmt: skip
        records.append(record)
    return records


def run_records(results: Sequence[Any]) -> list[dict[str, Any]]:
    """One flat record per run."""
    records = []
    for r in results:
        s = r.setting
        record = {
            "dataset": s.dataset, "method": s.label, "sparsity": s.sparsity, "seed": s.seed,
            "accuracy": round(100 * r.accuracy, 2) if r.accuracy is not None else None,
            "cpu_seconds": round(r.cpu_seconds, 2), "error": r.error or "",
        }  # fmt: skip
        for layer in r.layers:
            record[f"{layer.layer}_active"] = layer.active
            record[f"{layer.layer}_fan_in"] = round(layer.fan_in_mean, 2)
            record[f"{layer.layer}_fan_in_max"] = layer.fan_in_max
        records.append(record)
    return records


def write_csv(records: Sequence[dict[str, Any]], path: Path) -> Path:
    """``records`` as CSV (columns: the union of their keys, in first-seen order)."""
    columns = list(dict.fromkeys(key for record in records for key in record))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(records)
    return path


def write_report(results: Sequence[Any], latencies: Sequence[Latency], meta: dict[str, Any], out: Path) -> None:
    """Every file listed in the module docstring, into ``out`` (created)."""
    from findings_plots import plot_accuracy, plot_active_neurons, plot_paper

    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(results, latencies)
    write_csv(run_records(results), out / "runs.csv")
    write_csv(summary, out / "findings.csv")
    (out / "findings.md").write_text(markdown_report(summary, meta))
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    plot_accuracy(summary, out / "accuracy.png")
    plot_active_neurons(summary, out / "active_neurons.png")
    plot_paper(PAPER, out / "paper.png")


def _methods(summary: Sequence[dict[str, Any]], dataset: str) -> list[str]:
    return list(dict.fromkeys(r["method"] for r in summary if r["dataset"] == dataset and r["method"] != "dense"))


def _accuracy_cell(record: dict[str, Any] | None) -> str:
    if record is None:
        return "—"
    if record["acc_mean"] is None:
        return f"failed: {record['error'][:60]}"
    spread = f" ± {record['acc_sd']:.2f}" if record["acc_sd"] is not None else ""
    return f"{record['acc_mean']:.2f}{spread}"


def _layers(record: dict[str, Any]) -> list[str]:
    return [key[: -len("_active")] for key in record if key.endswith("_active")]


def accuracy_table(summary: Sequence[dict[str, Any]], dataset: str) -> list[str]:
    """Markdown rows: one per sparsity, one column per method, cells ``mean ± sd``."""
    methods = _methods(summary, dataset)
    index = {(r["method"], r["sparsity"]): r for r in summary if r["dataset"] == dataset}
    sparsities = sorted({s for m, s in index if m != "dense"})
    lines = ["| sparsity | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for sparsity in sparsities:
        cells = [_accuracy_cell(index.get((m, sparsity))) for m in methods]
        lines.append(f"| {100 * sparsity:g} % | " + " | ".join(cells) + " |")
    return lines


def topology_table(summary: Sequence[dict[str, Any]], dataset: str) -> list[str]:
    """Markdown rows per setting: active neurons and fan-in per layer, batch-1 latency against dense."""
    records = [r for r in summary if r["dataset"] == dataset and r["acc_mean"] is not None]
    if not records:
        return []
    layers = _layers(records[0])
    header = ["sparsity", "method", *[f"{layer} active" for layer in layers], "fan-in (mean, max)",
              "batch-1 µs", "× dense", "kernels", "same predictions"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    for r in sorted(records, key=lambda r: (r["sparsity"], r["method"] != "RigL", r["method"])):
        active = [f"{r[f'{layer}_active']:g}/{r[f'{layer}_neurons']}" for layer in layers]
        fan_in = " / ".join(f"{r[f'{layer}_fan_in']:g} ({r[f'{layer}_fan_in_max']})" for layer in layers)
        timing = [f"{r['model_us']:.0f}", f"{r['speedup_vs_dense']:.2f}×", r["kernels"],
                  "yes" if r["same_predictions"] else "NO"] if "model_us" in r else ["—"] * 4  # fmt: skip
        sparsity = "dense" if r["method"] == "dense" else f"{100 * r['sparsity']:g} %"
        lines.append("| " + " | ".join([sparsity, r["method"], *active, fan_in, *timing]) + " |")
    return lines


def markdown_report(summary: Sequence[dict[str, Any]], meta: dict[str, Any]) -> str:
    """``findings.md``: the command and machine, then per data set the accuracy and topology tables."""
    lines = [
        "# Accuracy against sparsity, with and without neuron ablation",
        "",
        f"Command: `{meta['command']}`  ",
        f"CPU: {meta['cpu']}; condensed kernel variant: {meta['condensed_kernel']}; torch {meta['torch']}; "
        f"{meta['workers']} training processes (1 thread each); latency on {meta['latency_threads']} thread(s); "
        f"load average at the end {meta['loadavg_at_end']}.  ",
        f"Training CPU time {meta['training_cpu_seconds']:.0f} s (wall {meta['training_wall_seconds']:.0f} s); "
        f"estimated wall time on a quiet 2-core machine {meta['estimated_quiet_wall_seconds'] / 60:.1f} min.",
    ]
    for dataset in dict.fromkeys(r["dataset"] for r in summary):
        dense = next((r for r in summary if r["dataset"] == dataset and r["method"] == "dense"), None)
        lines += ["", f"## {dataset}", "", f"Recipe: {meta['recipes'].get(dataset, '')}", ""]
        lines += [f"Test accuracy (%), mean ± sd over seeds; dense: {_accuracy_cell(dense)}.", ""]
        lines += accuracy_table(summary, dataset)
        lines += ["", "Active neurons (mask rows with at least one weight; mean over seeds) and fan-in of the",
                  "active rows (mean over seeds; max over seeds); batch-1 latency of the first seed's",
                  "accelerated model (median µs) and its speed-up over the dense model, timed interleaved.", ""]  # fmt: skip
        lines += topology_table(summary, dataset)
    return "\n".join(lines) + "\n"
