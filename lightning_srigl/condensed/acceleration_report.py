"""What :func:`~lightning_srigl.condensed.accelerate.plan_acceleration` measured and chose, per layer.

:class:`AccelerationReport` prints it as a rich table, writes it as CSV and turns it into logger metrics.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lightning_srigl.condensed.registry import CANDIDATES

__all__ = ["CANDIDATES", "AccelerationReport", "LayerAcceleration"]


@dataclass(frozen=True)
class LayerAcceleration:
    """What :func:`plan_acceleration` measured and chose for one layer (times in seconds)."""

    name: str
    in_features: int
    out_features: int
    batch: int
    density: float
    active_neurons: int
    chosen: str
    times: dict[str, float]
    skipped: dict[str, str]

    @property
    def speedup(self) -> float:
        """Dense time / chosen kernel's time (1.0 when dense was kept)."""
        return self.times["dense"] / self.times[self.chosen]


@dataclass(frozen=True)
class AccelerationReport:
    """One :class:`LayerAcceleration` per accelerated layer, with printing, CSV and metric views."""

    rows: list[LayerAcceleration]

    def columns(self) -> list[str]:
        """Candidate names timed in at least one layer, in :data:`CANDIDATES` order."""
        return [c for c in CANDIDATES if any(c in row.times for row in self.rows)]

    def records(self) -> list[dict[str, object]]:
        """One flat dict per layer (times in microseconds), the CSV rows."""
        return [
            {
                "layer": r.name,
                "shape": f"{r.in_features}->{r.out_features}",
                "batch": r.batch,
                "density": round(r.density, 4),
                "active_neurons": f"{r.active_neurons}/{r.out_features}",
                "chosen": r.chosen,
                **{f"{c}_us": round(r.times[c] * 1e6, 2) if c in r.times else "" for c in self.columns()},
                "speedup_vs_dense": round(r.speedup, 3),
            }
            for r in self.rows
        ]

    def table(self) -> Table:
        """A rich table of :meth:`records`."""
        records = self.records()
        table = Table(title="lightning_srigl: accelerated layers (times in µs)")
        for key in records[0] if records else ["layer"]:
            table.add_column(key, justify="left" if key in ("layer", "shape", "chosen") else "right")
        for record in records:
            table.add_row(*(str(v) for v in record.values()))
        return table

    def print(self, console: Console | None = None) -> None:
        """Print :meth:`table` (to a 160-column rich console by default)."""
        (console or Console(width=160)).print(self.table())

    def to_csv(self, path: str | Path) -> Path:
        """Write :meth:`records` to ``path`` (parents created) and return it."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        records = self.records()
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(records[0]) if records else ["layer"])
            writer.writeheader()
            writer.writerows(records)
        return path

    def metrics(self) -> dict[str, float]:
        """``accelerate/<layer>/speedup`` for every layer, for ``logger.log_metrics``."""
        return {f"accelerate/{r.name}/speedup": r.speedup for r in self.rows}
