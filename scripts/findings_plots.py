"""Plots of ``findings_sweep.py``: accuracy and active neurons against sparsity, and the paper's numbers.

Every plot puts sparsities at evenly spaced positions (80, 90, 95, 98, 99 % are too close together
on a linear axis), one line per method, and the dense model as a horizontal reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure  # the Agg canvas: no display and no pyplot state

COLORS = {"RigL": "tab:blue", "SRigL γ=0": "tab:red", "SRigL γ=0.3": "tab:green"}
PAPER_COLORS = {"RigL": "tab:blue", "SRigL w/o ablation": "tab:red", "SRigL w/ ablation (γ=0.3)": "tab:green"}


def _records(summary: Sequence[dict[str, Any]], dataset: str) -> list[dict[str, Any]]:
    return [r for r in summary if r["dataset"] == dataset and r["acc_mean"] is not None]


def _sparse_methods(records: Sequence[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(r["method"] for r in records if r["method"] != "dense"))


def _sparsity_axis(ax: Any, sparsities: Sequence[float]) -> None:
    ax.set_xticks(range(len(sparsities)), [f"{100 * s:g} %" for s in sparsities])
    ax.set_xlabel("sparsity")
    ax.grid(alpha=0.3)


def plot_accuracy(summary: Sequence[dict[str, Any]], path: Path) -> Path:
    """Test accuracy (mean ± sd over seeds) against sparsity, one panel per data set."""
    datasets = list(dict.fromkeys(r["dataset"] for r in summary))
    figure = Figure(figsize=(5.5 * len(datasets), 4), layout="constrained")
    for ax, dataset in zip(figure.subplots(1, len(datasets), squeeze=False)[0], datasets):
        records = _records(summary, dataset)
        sparsities = sorted({r["sparsity"] for r in records if r["method"] != "dense"})
        for method in _sparse_methods(records):
            points = {r["sparsity"]: r for r in records if r["method"] == method}
            xs = [i for i, s in enumerate(sparsities) if s in points]
            ys = [points[sparsities[i]]["acc_mean"] for i in xs]
            errors = [points[sparsities[i]]["acc_sd"] or 0.0 for i in xs]
            ax.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, label=method, color=COLORS.get(method))
        dense = next((r for r in records if r["method"] == "dense"), None)
        if dense is not None:
            ax.axhline(dense["acc_mean"], color="black", linestyle="--", label="dense")
            spread = dense["acc_sd"] or 0.0
            ax.axhspan(dense["acc_mean"] - spread, dense["acc_mean"] + spread, color="black", alpha=0.08)
        _sparsity_axis(ax, sparsities)
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{dataset} (ours; mean ± sd over {max((r['seeds'] for r in records), default=0)} seeds)")
        ax.legend(fontsize=8)
    figure.savefig(path, dpi=120)
    return path


def plot_active_neurons(summary: Sequence[dict[str, Any]], path: Path) -> Path:
    """Active neurons (% of the layer's rows, mean over seeds) against sparsity: data sets x layers."""
    datasets = list(dict.fromkeys(r["dataset"] for r in summary))
    layers = [key[: -len("_active")] for key in _records(summary, datasets[0])[0] if key.endswith("_active")]
    figure = Figure(figsize=(4.2 * len(layers), 3.4 * len(datasets)), layout="constrained")
    axes = figure.subplots(len(datasets), len(layers), squeeze=False)
    for row, dataset in enumerate(datasets):
        records = _records(summary, dataset)
        sparsities = sorted({r["sparsity"] for r in records if r["method"] != "dense"})
        for col, layer in enumerate(layers):
            ax = axes[row][col]
            for method in _sparse_methods(records):
                points = {r["sparsity"]: r for r in records if r["method"] == method}
                xs = [i for i, s in enumerate(sparsities) if s in points]
                ys = [100 * points[sparsities[i]][f"{layer}_active"] / points[sparsities[i]][f"{layer}_neurons"] for i in xs]
                ax.plot(xs, ys, marker="o", label=method, color=COLORS.get(method))
            ax.axhline(100, color="black", linestyle="--", label="dense")
            _sparsity_axis(ax, sparsities)
            neurons = records[0][f"{layer}_neurons"]
            ax.set_title(f"{dataset}: {layer} ({neurons} neurons)", fontsize=9)
            ax.set_ylabel("active neurons (%)")
            ax.legend(fontsize=7)
    figure.savefig(path, dpi=120)
    return path


def plot_paper(paper: Sequence[tuple[str, float, dict[str, dict[int, float]]]], path: Path) -> Path:
    """The paper's accuracies (quoted numbers, not our runs) against sparsity, one panel per model."""
    figure = Figure(figsize=(5 * len(paper), 3.8), layout="constrained")
    for ax, (model, dense, methods) in zip(figure.subplots(1, len(paper), squeeze=False)[0], paper):
        sparsities = sorted({s for points in methods.values() for s in points})
        for method, points in methods.items():
            xs = [i for i, s in enumerate(sparsities) if s in points]
            ax.plot(xs, [points[sparsities[i]] for i in xs], marker="o", label=method, color=PAPER_COLORS.get(method))
        ax.axhline(dense, color="black", linestyle="--", label="dense")
        _sparsity_axis(ax, [s / 100 for s in sparsities])
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title(f"the paper's numbers: {model}", fontsize=9)
        ax.legend(fontsize=7)
    figure.savefig(path, dpi=120)
    return path
