"""The ``lightning-srigl`` command (also ``python -m lightning_srigl``).

* ``fit`` / ``validate`` / ``test`` / ``predict``: :class:`~lightning.pytorch.cli.LightningCLI` with
  any LightningModule / LightningDataModule named by ``class_path`` and this project's callbacks
  available by short name, e.g. ``--trainer.callbacks+=SRigLCallback --trainer.callbacks.sparsity=0.9``.
* ``benchmark``: the kernel benchmark, :func:`lightning_srigl.benchmark.run_benchmark`, from a flat
  YAML (``--config configs/benchmark_cpu.yaml``) and/or flags (``--sparsities [0.9]``).
* ``convert``: one-shot conversion of a trained checkpoint to N:M or constant fan-in sparsity
  (:func:`lightning_srigl.convert.convert_and_evaluate`), optionally with AdaPrune reconstruction.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

# Imported for their side effect too: jsonargparse resolves a short class name such as
# ``SRigLCallback`` only among the subclasses of ``Callback`` that have been imported.
from lightning_srigl.callbacks.accelerate import AccelerateCallback  # noqa: F401
from lightning_srigl.callbacks.nm import NMSparsityCallback  # noqa: F401
from lightning_srigl.callbacks.rigl import RigLCallback  # noqa: F401
from lightning_srigl.callbacks.srigl import SRigLCallback  # noqa: F401
from lightning_srigl.masking import MASK_SUFFIX

EXTRA_COMMANDS = ("benchmark", "convert")
DESCRIPTION = (
    "Structured RigL for PyTorch Lightning. Subcommands: fit, validate, test, predict (LightningCLI; "
    "callbacks SRigLCallback, RigLCallback, NMSparsityCallback, AccelerateCallback by short name), "
    "benchmark (kernel timings: `lightning-srigl benchmark --help`) and convert (one-shot N:M / "
    "constant fan-in conversion: `lightning-srigl convert --help`)."
)


def lightning_cli(args: Sequence[str] | None = None, run: bool = True) -> LightningCLI:
    """The LightningCLI behind ``fit``/``validate``/``test``/``predict``.

    ``args=None`` reads ``sys.argv``; ``run=False`` only builds the model, data and trainer.
    Models and data modules are given by ``class_path`` (``subclass_mode``), so one command serves
    every example project and any user project.
    """
    return LightningCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"description": DESCRIPTION},
        args=list(args) if args is not None else None,
        run=run,
    )


def benchmark_parser() -> ArgumentParser:
    """Flags and ``--config`` for :class:`lightning_srigl.benchmark.SweepConfig`."""
    from lightning_srigl.benchmark import SweepConfig

    parser = ArgumentParser(
        prog="lightning-srigl benchmark",
        description="Time dense vs CSR vs condensed layers; writes CSV, a table and a plot to output_dir.",
    )
    parser.add_argument("--config", action=ActionConfigFile, help="flat YAML of SweepConfig fields")
    parser.add_class_arguments(SweepConfig)
    return parser


def benchmark(args: Sequence[str]) -> Any:
    """``lightning-srigl benchmark``: parse flags/YAML and run the sweep; returns the module."""
    from lightning_srigl.benchmark import SweepConfig, run_benchmark

    cfg = benchmark_parser().parse_args(list(args)).as_dict()
    cfg.pop("config", None)
    return run_benchmark(SweepConfig(**cfg))


def convert_parser() -> ArgumentParser:
    """Model/data by ``class_path`` plus the arguments of ``convert_to_structured``."""
    from lightning_srigl.convert import convert_to_structured

    parser = ArgumentParser(
        prog="lightning-srigl convert",
        description="Convert a trained checkpoint to N:M or constant fan-in sparsity and report accuracy.",
    )
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_subclass_arguments(LightningModule, "model", required=True)
    parser.add_subclass_arguments(LightningDataModule, "data", required=False)
    parser.add_argument("--ckpt_path", type=str, required=True, help="checkpoint of the trained model")
    parser.add_argument("--output", type=str, required=True, help="where to write the converted checkpoint")
    parser.add_argument("--calibration_batches", type=int, default=8, help="0 = magnitude pruning only")
    parser.add_function_arguments(convert_to_structured, "convert", skip={"model", "calibration_batches"})
    return parser


def load_weights(model: torch.nn.Module, ckpt_path: str | Path) -> None:
    """Load a Lightning checkpoint's ``state_dict`` into ``model``, ignoring sparsity masks.

    Masks (``*_mask`` buffers) are dropped: the weights are already zero outside them. Any other
    missing or unexpected key is an error.
    """
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    state = checkpoint.get("state_dict", checkpoint)
    weights = {k: v for k, v in state.items() if not k.endswith(MASK_SUFFIX)}
    hint = "Give the same model class_path and init_args as in training."
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise ValueError(f"{ckpt_path} does not fit {type(model).__name__}: {err}. {hint}") from err
    missing = [k for k in missing if not k.endswith(MASK_SUFFIX)]
    if missing or unexpected:
        raise ValueError(
            f"{ckpt_path} does not fit {type(model).__name__}: missing {missing}, unexpected {unexpected}. {hint}"
        )


def convert(args: Sequence[str]) -> Any:
    """``lightning-srigl convert``: load, convert (with AdaPrune when data is given), save, report."""
    from lightning_srigl.convert import convert_and_evaluate, convert_to_structured

    parser = convert_parser()
    cfg = parser.parse_args(list(args))
    objects = parser.instantiate_classes(cfg)
    model: LightningModule = objects.model
    load_weights(model, cfg.ckpt_path)
    options = _as_kwargs(cfg.convert)
    data: LightningDataModule | None = objects.get("data")
    if data is None:
        report = convert_to_structured(model, **options)
    else:
        data.prepare_data()
        data.setup("fit")
        calibration = data.train_dataloader() if cfg.calibration_batches > 0 else None
        report = convert_and_evaluate(
            model, data.val_dataloader(), calibration, calibration_batches=cfg.calibration_batches, **options
        )
    Path(cfg.output).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, cfg.output)
    print(report.format_table())
    print(f"Converted checkpoint written to {cfg.output}")
    return report


def _as_kwargs(namespace: Namespace | dict[str, Any]) -> dict[str, Any]:
    return namespace.as_dict() if isinstance(namespace, Namespace) else dict(namespace)


def run(args: Sequence[str] | None = None) -> Any:
    """Run ``lightning-srigl`` with ``args`` (default ``sys.argv[1:]``) and return what it made.

    ``benchmark`` returns the ``BenchmarkModule``, ``convert`` its ``ConversionReport``, anything else
    the ``LightningCLI`` instance.
    """
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] == "benchmark":
        return benchmark(argv[1:])
    if argv and argv[0] == "convert":
        return convert(argv[1:])
    return lightning_cli(args)


def main(args: Sequence[str] | None = None) -> None:
    """Console entry point of ``lightning-srigl`` (exit status 0 on success; see :func:`run`)."""
    run(args)
