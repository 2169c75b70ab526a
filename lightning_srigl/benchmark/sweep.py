"""The benchmark sweep: its YAML configuration and the list of cases it expands to."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from lightning_srigl.benchmark.layers import SparseLayerSpec, parse_method
from lightning_srigl.benchmark.machine import emulation_env
from lightning_srigl.condensed.layers.linear import BACKENDS
from lightning_srigl.sparsity.validation import as_integer, as_real, check_sparsity

_EXAMPLES = {"batch_sizes": "1, 16", "threads": "1", "sparsities": "0.9"}
Case = dict[str, Any]
"""One timed configuration: a layer spec's fields plus ``batch``, ``threads``, ``cache``, ``methods``."""


@dataclass
class SweepConfig:
    """What to time. Every field can be set in the YAML file (flat keys, same names).

    Hot-cache cases: every ``shapes × sparsities × batch_sizes × threads`` with constant fan-in
    (SRigL) masks, timing ``methods``; plus every ``shapes × batch_sizes × threads`` with a 2:4 mask
    (50 % sparse) timing ``nm_methods``. Cold-cache cases: ``shapes × cold_sparsities ×
    cold_batch_sizes × threads``, timing ``cold_methods`` while cycling through enough copies of
    the layer to exceed ``cold_bytes``. Ratios in the summary use ``statistic`` of each method's
    samples: ``"median"``, or ``"min"`` on a machine shared with other work (preempted samples only
    ever make a call look slower). ``cpu_isa`` (``"avx2"``, ``"avx512"``, ``"scalar"``) emulates a CPU
    with only that instruction set: dense and condensed kernels are limited alike, in a subprocess
    (``lightning_srigl.benchmark.machine``). ``condensed_backend`` is the backend of the condensed
    layers (``"auto"``: C++ on CPU, Triton on CUDA).

    Attributes:
        shapes: layers as ``[in_features, out_features]`` pairs.
        sparsities: fractions of zero weights of the constant fan-in layers.
        batch_sizes: rows of the input ``(batch, in_features)`` of the hot-cache cases.
        threads: intra-op thread counts (``torch.set_num_threads``) to time each case with.
        ablation: fraction of output neurons removed from the constant fan-in layers (SRigL ablation).
        methods: ``<kernel>_<dtype>`` names timed on the constant fan-in layers; must include
            ``dense_fp32``.
        nm_methods: methods timed on the 2:4 layers (empty: no 2:4 cases).
        cold_sparsities: sparsities that also get cold-cache cases (empty: none).
        cold_batch_sizes: batch sizes of the cold-cache cases.
        cold_methods: methods timed with cold caches.
        cold_bytes: bytes the copies of a cold-cache layer must exceed (more than the last-level cache).
        min_run_time: seconds of timed samples per method and case, at least.
        statistic: ``"median"`` or ``"min"`` of the samples, used for the ratios.
        device: where to time, e.g. ``"cpu"`` or ``"cuda"``.
        seed: seed of the random weights, masks and inputs.
        output_dir: folder for the CSVs and plots (``null``: write nothing).
        name: stem of the output files, ``<name>.csv``, ``<name>_summary.csv`` and the plots
            ``<name>_t<threads>_<in>x<out>.png``.
        cpu_isa: ``"avx2"``, ``"avx512"`` or ``"scalar"`` to emulate a CPU with only that instruction
            set (``null``: this CPU as it is).
        condensed_backend: backend of the condensed layers: ``"auto"`` (C++ on CPU, Triton on CUDA),
            or one of the backends ``CondensedLinear`` takes.
    """

    shapes: list[list[int]] = field(default_factory=lambda: [[768, 3072], [3072, 768], [4096, 4096]])
    sparsities: list[float] = field(default_factory=lambda: [0.8, 0.9, 0.95, 0.99])
    batch_sizes: list[int] = field(default_factory=lambda: [1, 16, 197, 256])
    threads: list[int] = field(default_factory=lambda: [1, 2])
    ablation: float = 0.0
    methods: list[str] = field(
        default_factory=lambda: ["dense_fp32", "dense_bf16", "csr_fp32", "condensed_fp32", "condensed_bf16"]
    )
    nm_methods: list[str] = field(default_factory=lambda: ["dense_fp32", "csr_fp32", "condensed_fp32"])
    cold_sparsities: list[float] = field(default_factory=lambda: [0.9])
    cold_batch_sizes: list[int] = field(default_factory=lambda: [1])
    cold_methods: list[str] = field(default_factory=lambda: ["dense_fp32", "csr_fp32", "condensed_fp32"])
    cold_bytes: float = 1.0e9
    min_run_time: float = 0.2
    statistic: str = "median"
    device: str = "cpu"
    condensed_backend: str = "auto"
    seed: int = 0
    output_dir: str | None = "benchmark_results"
    name: str = "benchmark"
    cpu_isa: str | None = None

    def __post_init__(self) -> None:
        for method in [*self.methods, *self.nm_methods, *self.cold_methods]:
            parse_method(method)
        if self.condensed_backend not in BACKENDS:
            raise ValueError(f"condensed_backend is one of {BACKENDS}, got {self.condensed_backend!r}.")
        if self.cpu_isa is not None:
            emulation_env(self.cpu_isa)  # raises on an unknown instruction set
        if self.statistic not in ("median", "min"):
            raise ValueError(f"statistic is 'median' or 'min' (of the timed samples), got {self.statistic!r}.")
        if "dense_fp32" not in self.methods:
            raise ValueError("methods must include 'dense_fp32': every ratio is taken against it.")
        bad = [s for s in self.shapes if len(s) != 2 or min(s) < 1]
        if bad:
            raise ValueError(f"shapes are [in_features, out_features] pairs of positive ints; got {bad}.")
        self._check_numbers()

    def _check_numbers(self) -> None:
        """Every count a positive integer, every sparsity in ``[0, 1)`` leaving each neuron a weight."""
        for name in ("batch_sizes", "cold_batch_sizes", "threads"):
            for value in getattr(self, name):
                as_integer(value, f"each of {name}", 1, f"got {name}={getattr(self, name)}")
        for name in ("batch_sizes", "threads", "sparsities"):
            if not getattr(self, name):
                raise ValueError(f"{name} is empty; give at least one value, e.g. --{name} '[{_EXAMPLES[name]}]'.")
        for name in ("sparsities", "cold_sparsities"):
            for value in getattr(self, name):
                check_sparsity(value, f"each of {name}")
        if not 0.0 <= as_real(self.ablation, "ablation") < 1.0:
            raise ValueError(f"ablation is the fraction of neurons removed, in [0, 1); got {self.ablation!r}.")
        if as_real(self.min_run_time, "min_run_time") <= 0 or as_real(self.cold_bytes, "cold_bytes") <= 0:
            raise ValueError(
                f"min_run_time and cold_bytes must be > 0; got {self.min_run_time!r}, {self.cold_bytes!r}."
            )
        smallest = min(in_features for in_features, _ in self.shapes) if self.shapes else 0
        too_sparse = [s for s in self.sparsities if smallest and round(smallest * (1 - s)) < 1]
        if too_sparse:
            raise ValueError(
                f"sparsities {too_sparse} leave no weight per neuron of a layer with {smallest} inputs; "
                f"use at most {1 - 1 / smallest:.4g} for these shapes."
            )

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> SweepConfig:
        """Read a flat YAML mapping of these fields; ``overrides`` win over the file."""
        data = yaml.safe_load(Path(path).read_text()) or {}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown keys {unknown} in {path}; valid keys: {sorted(known)}.")
        return cls(**{**data, **overrides})

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict view (for logging and for the report header)."""
        return asdict(self)

    def cases(self) -> list[Case]:
        """All cases in timing order (cases sharing a layer are adjacent so it is built once)."""
        cases: list[Case] = []
        for in_features, out_features in self.shapes:
            layer = {"in_features": in_features, "out_features": out_features, "ablation": self.ablation}
            for sparsity in self.sparsities:
                spec = {**layer, "sparsity": sparsity, "structure": "srigl"}
                cases += self._grid(spec, self.batch_sizes, "hot", self.methods)
                if sparsity in self.cold_sparsities:
                    cases += self._grid(spec, self.cold_batch_sizes, "cold", self.cold_methods)
            if self.nm_methods:
                spec = {**layer, "sparsity": 0.5, "structure": "2:4", "ablation": 0.0}
                cases += self._grid(spec, self.batch_sizes, "hot", self.nm_methods)
        return cases

    def _grid(self, spec: dict[str, Any], batch_sizes: list[int], cache: str, methods: list[str]) -> list[Case]:
        return [
            {**spec, "batch": batch, "threads": threads, "cache": cache, "methods": list(methods)}
            for batch in batch_sizes
            for threads in self.threads
        ]


def case_spec(case: Case) -> SparseLayerSpec:
    """The layer a case times."""
    return SparseLayerSpec(
        in_features=case["in_features"],
        out_features=case["out_features"],
        sparsity=case["sparsity"],
        structure=case["structure"],
        ablation=case["ablation"],
    )
