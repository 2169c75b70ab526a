"""What ``plan_acceleration`` measured and chose, per layer.

[`AccelerationReport`][lightning_srigl.acceleration.report.AccelerationReport] prints it as a rich table,
writes it as CSV and turns it into logger metrics.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field, replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lightning_srigl.condensed.kinds.registry import CANDIDATES, QUANTIZED_CANDIDATES
from lightning_srigl.tables import fitted_table, terminal_console

SHORT_NAMES = {
    "dense": "dense", "condensed": "cond.", "csr": "CSR", "semi_structured": "2:4",
    "int8_condensed": "int8 cond.", "int8_condensed_static": "int8 cond. static", "int8_dense": "int8 dense",
}  # fmt: skip

__all__ = ["CANDIDATES", "SHORT_NAMES", "AccelerationReport", "LayerAcceleration"]


@dataclass(frozen=True)
class LayerAcceleration:
    """What ``plan_acceleration`` measured and chose for one layer (times in seconds).

    ``errors``: the relative output error of each quantized candidate tried (exact ones are not listed);
    ``input_range``: the calibrated activation ``(scale, zero)`` a static quantized choice was built with.
    """

    name: str
    in_features: int
    out_features: int
    batch: int
    density: float
    active_neurons: int
    chosen: str
    times: dict[str, float]
    skipped: dict[str, str]
    errors: dict[str, float] = field(default_factory=dict)
    input_range: tuple[float, int] | None = None

    @property
    def speedup(self) -> float:
        """Dense time / chosen kernel's time (1.0 when dense was kept)."""
        return self.times["dense"] / self.times[self.chosen]


@dataclass(frozen=True)
class AccelerationReport:
    """One ``LayerAcceleration`` per accelerated layer, with printing, CSV and metric views.

    ``model_times``: seconds per call of the whole model, ``"dense"`` (before), ``"accelerated"`` (after,
    eager) and ``"compiled"`` (after, ``compile=True``), when they were timed; ``compile_seconds``: the
    compile time of ``compile=True``; ``dense_layers``: each dense ``nn.Linear`` without a mask -> the product it
    kept (``"dense"``: torch's, ``"packed"``: oneDNN's on the prepacked weight; ``accelerate(pack_dense=True)``);
    ``attention``: each attention site (a Hugging Face model, a ``ProjectedAttention``) -> the attention it kept
    (``"sdpa"``: torch's, ``"lightning_srigl"``: the ``lightning_srigl::attention`` op;
    ``accelerate(fast_attention=True)``).
    """

    rows: list[LayerAcceleration]
    model_times: dict[str, float] = field(default_factory=dict)
    compile_seconds: float | None = None
    dense_layers: dict[str, str] = field(default_factory=dict)
    attention: dict[str, str] = field(default_factory=dict)

    def with_model_times(self, times: dict[str, float]) -> AccelerationReport:
        """This report with the whole model's ``times``."""
        return replace(self, model_times=dict(times))

    def with_dense_layers(self, chosen: dict[str, str]) -> AccelerationReport:
        """This report with the products kept by the dense linear layers without a mask."""
        return replace(self, dense_layers=dict(chosen))

    def with_attention(self, chosen: dict[str, str]) -> AccelerationReport:
        """This report with the attention kept by each attention site."""
        return replace(self, attention=dict(chosen))

    def with_compile_seconds(self, seconds: float) -> AccelerationReport:
        """This report with the compile time."""
        return replace(self, compile_seconds=seconds)

    def summary(self) -> str:
        """One line: the whole model's times before and after, and the compile time ('' when none)."""
        parts = []
        if "dense" in self.model_times:
            dense = self.model_times["dense"]
            parts.append(f"whole model: dense {dense * 1e3:.3g} ms")
            for name in ("accelerated", "compiled"):
                if name in self.model_times:
                    time = self.model_times[name]
                    parts.append(f"{name} {time * 1e3:.3g} ms ({dense / time:.2f}×)")
        if self.compile_seconds is not None:
            parts.append(f"compile {self.compile_seconds:.1f} s")
        packed = [name for name, kept in self.dense_layers.items() if kept == "packed"]
        if packed:
            parts.append(f"dense linear on oneDNN: {', '.join(packed)}")
        if self.attention:
            sites = [name or "model" for name, kept in self.attention.items() if kept == "lightning_srigl"]
            parts.append(f"attention on lightning_srigl::attention: {', '.join(sites) or 'none (torch SDPA faster)'}")
        return ", ".join(parts)

    def columns(self) -> list[str]:
        """Candidate names timed in at least one layer, in ``CANDIDATES`` order, then the quantized ones."""
        return [c for c in (*CANDIDATES, *QUANTIZED_CANDIDATES) if any(c in row.times for row in self.rows)]

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
                "relative_error": r.errors.get(r.chosen, 0.0),
            }
            for r in self.rows
        ]

    def table(self, width: int = 100) -> Table:
        """A rich table of the layers for a console ``width`` columns wide (long layer names fold; the
        density is in [`records`][lightning_srigl.acceleration.report.AccelerationReport.records])."""
        columns = self.columns()
        batches = sorted({r.batch for r in self.rows})
        at = f" at batch {batches[0]}" if len(batches) == 1 else ""
        headers = ["layer", "in→out", *([] if at else ["batch"]), "active neurons", "kernel", "× dense"]
        headers += [f"{SHORT_NAMES.get(c, c)} µs" for c in columns]
        rows = []
        for r in self.rows:
            cells = [r.name, f"{r.in_features}→{r.out_features}", *([] if at else [str(r.batch)])]
            cells += [f"{r.active_neurons}/{r.out_features}", SHORT_NAMES.get(r.chosen, r.chosen), f"{r.speedup:.2f}"]
            rows.append(cells + [_microseconds(r.times[c]) if c in r.times else "" for c in columns])
        title = f"lightning_srigl: accelerated layers{at} (times in µs)"
        return fitted_table(title, headers, rows, width, left=("layer", "kernel"), fold=("layer",))

    def print(self, console: Console | None = None) -> None:
        """Print [`table`][lightning_srigl.acceleration.report.AccelerationReport.table] (by default on a
        console as wide as the terminal)."""
        console = console or terminal_console()
        console.print(self.table(console.width))
        if self.summary():
            console.print(self.summary())

    def to_csv(self, path: str | Path) -> Path:
        """Write [`records`][lightning_srigl.acceleration.report.AccelerationReport.records] to ``path``
        (parents created) and return it."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        records = self.records()
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(records[0]) if records else ["layer"])
            writer.writeheader()
            writer.writerows(records)
        return path

    def metrics(self) -> dict[str, float]:
        """``accelerate/<layer>/speedup`` for every layer, the whole model's ``accelerate/model/<form>_ms``
        and ``accelerate/compile_s``, for ``logger.log_metrics``."""
        metrics = {f"accelerate/{r.name}/speedup": r.speedup for r in self.rows}
        metrics |= {f"accelerate/model/{name}_ms": time * 1e3 for name, time in self.model_times.items()}
        return metrics | ({} if self.compile_seconds is None else {"accelerate/compile_s": self.compile_seconds})


def _microseconds(seconds: float) -> str:
    us = seconds * 1e6
    return f"{us:,.0f}" if us >= 100 else f"{us:.3g}"
