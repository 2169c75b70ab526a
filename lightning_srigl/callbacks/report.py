"""Topology metrics as loggable numbers, the end-of-fit table and the active-neurons plot.

The table is the paper's Figure 8 as data: per sparse layer its shape, density, active neurons and
fan-in. The plot shows the percentage of active neurons per layer at the end of fit (bars) and over
the topology updates (lines).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from lightning_srigl.masking import MaskedParameters
from lightning_srigl.sparsity import active_neurons, fan_in


@dataclass(frozen=True)
class LayerStats:
    """Topology of one sparse layer at one moment."""

    name: str
    shape: tuple[int, ...]
    nnz: int
    active_neurons: int
    fan_in: float
    itop_rate: float

    @property
    def numel(self) -> int:
        """Number of weights of the dense layer."""
        return math.prod(self.shape)

    @property
    def density(self) -> float:
        """Fraction of active weights."""
        return self.nnz / self.numel

    @property
    def active_neurons_pct(self) -> float:
        """Percentage of output neurons (rows) with at least one active weight."""
        return 100.0 * self.active_neurons / self.shape[0]


def layer_counts(mask: Tensor, ever_active: Tensor) -> list[int]:
    """``[nnz, active neurons, positions ever active]`` of a ``(O, *rest)`` bool ``mask`` (or a part of its
    rows: the counts add up over parts)."""
    counts = fan_in(mask)
    return [int(counts.sum()), active_neurons(mask), int(ever_active.count_nonzero())]


def layer_stats(name: str, shape: tuple[int, ...], counts: Sequence[int]) -> LayerStats:
    """Statistics of a layer of ``shape`` from its `layer_counts`; ``fan_in`` is the mean over active neurons."""
    nnz, active, ever = counts
    return LayerStats(
        name=name,
        shape=tuple(shape),
        nnz=nnz,
        active_neurons=active,
        fan_in=nnz / active if active else 0.0,
        itop_rate=ever / max(math.prod(shape), 1),
    )


def masked_layer_stats(
    masked: MaskedParameters,
    ever_active: Mapping[str, Tensor],
    total: Callable[[Sequence[int]], list[int]] = list,
) -> list[LayerStats]:
    """``layer_stats`` of every layer of ``masked``, neuron-major; a layer missing from ``ever_active``
    (``fqn -> bool mask of the positions ever active``, this process's rows) counts its current mask.

    Args:
        total: sums counts over the processes that share the layers' rows (e.g. a reducer's ``sum``;
            a collective then, for every rank to call); the default keeps them (whole layers).
    """
    rows, local = masked.rows, masked.local
    counts = []
    for fqn, mask in masked.masks().items():
        mine = local(fqn, mask)
        counts += layer_counts(rows(fqn, mine), ever_active.get(fqn, mine))
    summed = total(counts)
    return [
        layer_stats(fqn, tuple(rows(fqn, masked.param(fqn)).shape), summed[3 * i : 3 * i + 3])
        for i, fqn in enumerate(masked.fqns)
    ]


def topology_metrics(stats: Sequence[LayerStats], prefix: str) -> dict[str, float]:
    """Per-layer and overall metrics, keyed ``"{prefix}/{layer}/{metric}"`` and ``"{prefix}/{metric}"``."""
    metrics: dict[str, float] = {}
    for s in stats:
        metrics[f"{prefix}/{s.name}/density"] = s.density
        metrics[f"{prefix}/{s.name}/active_neurons_pct"] = s.active_neurons_pct
        metrics[f"{prefix}/{s.name}/fan_in"] = s.fan_in
        metrics[f"{prefix}/{s.name}/itop_rate"] = s.itop_rate
    numel = sum(s.numel for s in stats)
    if numel:
        metrics[f"{prefix}/density"] = sum(s.nnz for s in stats) / numel
        metrics[f"{prefix}/active_neurons_pct"] = (
            100.0 * sum(s.active_neurons for s in stats) / sum(s.shape[0] for s in stats)
        )
        metrics[f"{prefix}/itop_rate"] = sum(s.itop_rate * s.numel for s in stats) / numel
    return metrics


def history_record(
    step: int, drop_fraction: float, changed: dict[str, int], metrics: dict[str, float], prefix: str
) -> dict[str, Any]:
    """One topology update for the history: its step, drop fraction, mask change, active neurons and fan-in per
    layer."""
    return {
        "step": step,
        "drop_fraction": drop_fraction,
        "mask_change": dict(changed),
        "active_neurons_pct": {fqn: metrics[f"{prefix}/{fqn}/active_neurons_pct"] for fqn in changed},
        "fan_in": {fqn: metrics[f"{prefix}/{fqn}/fan_in"] for fqn in changed},
    }


def dense_layer_stats(name: str, shape: tuple[int, ...]) -> LayerStats:
    """The statistics of a selected layer that stays dense (``shape`` neuron-major, ``(O, *rest)``)."""
    numel = math.prod(shape)
    return LayerStats(name, shape, nnz=numel, active_neurons=shape[0], fan_in=numel / shape[0], itop_rate=1.0)


def print_layer_table(
    stats: Sequence[LayerStats], title: str, dense: Sequence[LayerStats] = (), model_parameters: int = 0
) -> None:
    """Print one row per sparse layer (layer, shape, density, active neurons, fan-in, ITOP), then the
    selected layers that stay dense, the density of all selected weights and, given the number of the
    model's parameters, of the whole model (biases, norms and unselected layers count dense); terminal-wide."""
    from lightning_srigl.tables import fitted_table, terminal_console

    headers = ("layer", "shape", "density", "active neurons", "fan-in", "ITOP")
    rows = [
        (
            s.name + (" (dense)" if s in dense else ""),
            "x".join(map(str, s.shape)),
            f"{s.density:.4f}",
            f"{s.active_neurons}/{s.shape[0]} ({s.active_neurons_pct:.1f}%)",
            f"{s.fan_in:.1f}",
            f"{s.itop_rate:.3f}" if s not in dense else "-",
        )
        for s in [*stats, *dense]
    ]
    selected = [*stats, *dense]
    numel, nnz = sum(s.numel for s in selected), sum(s.nnz for s in selected)
    if numel:
        rows.append(("all selected layers (weights)", f"{numel:,}", f"{nnz / numel:.4f}", "", "", ""))
    if model_parameters:
        active = model_parameters - numel + nnz
        rows.append(
            ("whole model (parameters)", f"{model_parameters:,}", f"{active / model_parameters:.4f}", "", "", "")
        )
    console = terminal_console()
    console.print(fitted_table(title, headers, rows, console.width, fold=("layer",)))


def save_active_neurons_plot(stats: Sequence[LayerStats], history: Sequence[Mapping[str, object]], path: Path) -> Path:
    """Save a PNG: active neurons (%) per layer at the end (bars) and at every update (lines).

    Args:
        stats: final per-layer statistics.
        history: update records ``{"step": int, "active_neurons_pct": {layer: float}}``.
        path: output file, e.g. ``<log_dir>/active_neurons.png``; parent folders are created.
    """
    from matplotlib.figure import Figure  # the Agg canvas, no display or pyplot state needed

    figure = Figure(figsize=(12, 4.5), layout="constrained")
    bars, lines = figure.subplots(1, 2)
    names = [s.name for s in stats]
    bars.bar(range(len(stats)), [s.active_neurons_pct for s in stats])
    bars.set_xticks(range(len(stats)), names, rotation=90, fontsize=7)
    bars.set_ylabel("active neurons (%)")
    bars.set_ylim(0, 105)
    bars.set_title("end of fit")
    steps = [int(record["step"]) for record in history]
    for name in names:
        values = [record["active_neurons_pct"].get(name, math.nan) for record in history]  # type: ignore[union-attr]
        lines.plot(steps, values, marker=".", label=name)
    if not history:
        lines.text(0.5, 0.5, "no topology update ran in this fit", ha="center", va="center", transform=lines.transAxes)
    lines.set_xlabel("optimizer step")
    lines.set_ylabel("active neurons (%)")
    lines.set_title("at each topology update")
    if history and len(names) <= 12:
        lines.legend(fontsize=6)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path
