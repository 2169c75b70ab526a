"""``BenchmarkModule``: time dense vs CSR vs condensed layers with ``Trainer.test``.

The test dataloader yields the sweep's cases ([`SweepConfig`][lightning_srigl.benchmark.sweep.SweepConfig]);
each ``test_step`` builds every method of one case from the same masked weight, checks it against
the masked dense fp32 output and times it. At the end the CSVs, the rich table and the plot are
written (``lightning_srigl.benchmark.report``). ``run_benchmark`` is the one-call entry point
(``lightning-srigl benchmark --config configs/benchmark_cpu.yaml``).
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
import yaml
from lightning.pytorch.callbacks import RichProgressBar
from torch import Tensor, nn
from typing_extensions import override

from lightning_srigl.benchmark.layers import SparseLayerSpec, build_method, make_masked_linear, weight_bytes
from lightning_srigl.benchmark.machine import (
    device_name,
    emulation_env,
    is_emulating,
    machine_fields,
    triton_variant,
)
from lightning_srigl.benchmark.report import read_csv, write_outputs
from lightning_srigl.benchmark.sweep import Case, SweepConfig, case_spec
from lightning_srigl.benchmark.timing import Timing, cold_copies, cold_time, hot_times
from lightning_srigl.logs import quiet


class BenchmarkModule(pl.LightningModule):
    """A LightningModule whose test loop is a kernel benchmark sweep.

    Args:
        config: the sweep; ``None`` uses [`SweepConfig`][lightning_srigl.benchmark.sweep.SweepConfig] defaults updated
            with ``overrides``.
        overrides: [`SweepConfig`][lightning_srigl.benchmark.sweep.SweepConfig] fields.

    After ``trainer.test(module)``: ``results`` holds one dict per (case, method) and
    ``outputs`` the written files (when ``config.output_dir`` is set).
    """

    def __init__(self, config: SweepConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        self.config = config if config is not None else SweepConfig(**overrides)
        self.results: list[dict[str, Any]] = []
        self.outputs: dict[str, Path] = {}
        self._layer_key: SparseLayerSpec | None = None
        self._layer: tuple[nn.Linear, Tensor] | None = None
        self._built: dict[str, nn.Module] = {}

    @override
    def test_dataloader(self) -> torch.utils.data.DataLoader:
        """One case per step, uncollated (``batch_size=None``)."""
        return torch.utils.data.DataLoader(self.config.cases(), batch_size=None, shuffle=False)

    @override
    def transfer_batch_to_device(self, batch: Case, device: torch.device, dataloader_idx: int) -> Case:
        """Cases are plain settings: nothing to move."""
        return batch

    @override
    def test_step(self, case: Case, batch_idx: int) -> None:
        """Time every method of ``case`` and append one result row per method."""
        spec = case_spec(case)
        linear, mask = self._masked_layer(spec)
        device = torch.device(self.config.device)
        generator = torch.Generator().manual_seed(self.config.seed + batch_idx)
        x = torch.randn(case["batch"], spec.in_features, generator=generator).to(device)
        reference = F.linear(x, linear.weight.to(device), linear.bias.to(device))
        dense_bytes = spec.in_features * spec.out_features * 4
        modules = {m: module for m in case["methods"] if (module := self._method(m, linear, mask, device)) is not None}
        inputs = {m: x.to(module_dtype(module)) for m, module in modules.items()}
        errors = {}
        for method in list(modules):
            try:  # the first call compiles, autotunes or captures: a failure skips the method, not the sweep
                errors[method] = float((modules[method](inputs[method]).float() - reference).abs().max())
            except (RuntimeError, ValueError, NotImplementedError) as err:
                pl.utilities.rank_zero_warn(f"benchmark: skipping {method} for {case} ({type(err).__name__}: {err})")
                del modules[method]
        backend = self.config.condensed_backend
        if case["cache"] == "cold":
            timings = {}
            for method in modules:
                build = lambda: build_method(method, linear, mask, device, backend)  # noqa: E731
                copies = cold_copies(build, dense_bytes, int(self.config.cold_bytes))
                timings[method] = cold_time(
                    copies,
                    inputs[method],
                    threads=case["threads"],
                    min_run_time=self.config.min_run_time,
                    device=device,
                )
                del copies
        else:  # interleaved rounds: every method sees the same machine
            calls = {m: functools.partial(module, inputs[m]) for m, module in modules.items()}
            timings = hot_times(calls, threads=case["threads"], min_run_time=self.config.min_run_time, device=device)
        machine = {**machine_fields(), "device": device_name(device)}
        triton = triton_variant(device, self.config.condensed_backend)
        if triton is not None:  # the condensed rows ran Triton, not the CPU kernel variant
            machine["kernel_variant"] = triton
        for method, module in modules.items():
            row = _row(case, spec, method, timings[method], weight_bytes(module), errors[method])
            self.results.append({**row, **machine})

    def _masked_layer(self, spec: SparseLayerSpec) -> tuple[nn.Linear, Tensor]:
        """Build (once per consecutive run of cases) the random masked layer of ``spec``."""
        if spec != self._layer_key:
            self._layer_key, self._built = spec, {}
            self._layer = make_masked_linear(spec, seed=self.config.seed)
        return self._layer

    def _method(self, method: str, linear: nn.Linear, mask: Tensor, device: torch.device) -> nn.Module | None:
        """The built module of ``method`` for the current layer, or ``None`` (with a warning) if unsupported."""
        if method not in self._built:
            try:
                self._built[method] = build_method(method, linear, mask, device, self.config.condensed_backend)
            except (ValueError, RuntimeError, NotImplementedError, ImportError) as err:
                pl.utilities.rank_zero_warn(f"benchmark: skipping {method} ({type(err).__name__}: {err})")
                self._built[method] = None
        return self._built[method]

    @override
    def on_test_end(self) -> None:
        """Write the CSVs, table and plot (rank 0)."""
        if self.config.output_dir is not None and self.trainer.is_global_zero:
            output_dir = Path(self.config.output_dir)
            self.outputs = write_outputs(self.results, output_dir, self.config.name, self.config.statistic)


def module_dtype(module: nn.Module) -> torch.dtype:
    """The floating dtype of a module's weights (values for condensed/CSR layers)."""
    for tensor in [*module.parameters(), *module.buffers()]:
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def _row(case: Case, spec: SparseLayerSpec, method: str, timing: Timing, nbytes: int, error: float) -> dict[str, Any]:
    return {
        "structure": spec.structure,
        "in_features": spec.in_features,
        "out_features": spec.out_features,
        "sparsity": spec.sparsity,
        "ablation": spec.ablation,
        "fan_in": spec.fan_in,
        "active_neurons": spec.active_neurons,
        "batch": case["batch"],
        "threads": case["threads"],
        "cache": case["cache"],
        "method": method,
        "time_us": round(timing.median * 1e6, 3),
        "min_us": round(timing.min * 1e6, 3),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "weight_bytes": nbytes,
        "max_abs_err": float(f"{error:.3g}"),
    }


class BenchmarkProgressBar(RichProgressBar):
    """Lightning's bar, saying what the ``Trainer.test`` loop does here: one step per timed case."""

    @property
    @override
    def test_description(self) -> str:
        return "Timing cases"


def run_benchmark(config: str | Path | SweepConfig | None = None, **overrides: Any) -> BenchmarkModule:
    """Run the sweep through ``Trainer.test`` and return the module (``.results``, ``.outputs``).

    Args:
        config: a YAML path (flat [`SweepConfig`][lightning_srigl.benchmark.sweep.SweepConfig] keys), a
            [`SweepConfig`][lightning_srigl.benchmark.sweep.SweepConfig], or ``None``
            for the defaults.
        overrides: [`SweepConfig`][lightning_srigl.benchmark.sweep.SweepConfig] fields that win over the file.
    """
    if isinstance(config, SweepConfig):
        sweep = SweepConfig(**{**config.to_dict(), **overrides})
    elif config is None:
        sweep = SweepConfig(**overrides)
    else:
        sweep = SweepConfig.from_yaml(config, **overrides)
    if sweep.cpu_isa is not None and not is_emulating(sweep.cpu_isa):
        return _run_emulated(sweep)
    module = BenchmarkModule(sweep)
    accelerator = "gpu" if torch.device(sweep.device).type == "cuda" else "cpu"
    # no_grad rather than inference_mode: layers built from inference tensors cannot cache the
    # condensed kernel's batch-1 layout, whereas the layers of a trained model always can.
    with quiet():  # Lightning's banners and tips; the bar and the tables still print
        trainer = pl.Trainer(
            accelerator=accelerator,
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            callbacks=[BenchmarkProgressBar()],  # one step per case
            inference_mode=False,
        )
        trainer.test(module, verbose=False)
    return module


def _run_emulated(sweep: SweepConfig) -> BenchmarkModule:
    """Run ``sweep`` in a subprocess whose kernels are all limited to ``sweep.cpu_isa`` (the limits must
    be set before torch loads); its rows are read back from the CSV it writes."""
    with tempfile.TemporaryDirectory() as scratch:
        output_dir = sweep.output_dir or scratch
        config = Path(scratch) / "sweep.yaml"
        config.write_text(yaml.safe_dump({**sweep.to_dict(), "output_dir": output_dir}))
        env = {**os.environ, **emulation_env(sweep.cpu_isa)}
        code = "import sys; from lightning_srigl.benchmark import run_benchmark; run_benchmark(sys.argv[1])"
        subprocess.run([sys.executable, "-c", code, str(config)], env=env, check=True)
        module = BenchmarkModule(sweep)
        module.results = read_csv(Path(output_dir) / f"{sweep.name}.csv")
    if sweep.output_dir is not None:
        module.outputs = {"raw_csv": Path(sweep.output_dir) / f"{sweep.name}.csv"}
    return module
