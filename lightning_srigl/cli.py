"""The ``lightning-srigl`` command (also ``python -m lightning_srigl``).

* ``fit`` / ``validate`` / ``test`` / ``predict``: Lightning's ``LightningCLI`` with
  any LightningModule / LightningDataModule named by ``class_path`` and this project's callbacks
  available by short name, e.g. ``--trainer.callbacks+=SRigLCallback --trainer.callbacks.sparsity=0.9``.
* ``benchmark``: the kernel benchmark, [`run_benchmark`][lightning_srigl.benchmark.run_benchmark], from
  a flat YAML (``--config configs/benchmark_cpu.yaml``) and/or flags (``--sparsities [0.9]``).
* ``convert``: one-shot conversion of a trained checkpoint to N:M or constant fan-in sparsity
  ([`convert_and_evaluate`][lightning_srigl.convert.convert_and_evaluate]), optionally with AdaPrune
  reconstruction.

``class_path`` modules are imported relative to the current directory, as ``python -m`` does (a
console script's ``sys.path`` holds its own ``bin/`` folder instead), so ``lightning-srigl fit
--config example_projects/digits_mlp/config.yaml`` works from a clone's root like it does for a
user's own project folder. The command imports torch and Lightning only for the subcommand that needs
them, so ``lightning-srigl --help`` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jsonargparse import ArgumentParser, Namespace
    from lightning.pytorch.cli import LightningCLI
    from torch import nn

PROG = "lightning-srigl"
SUBCOMMANDS = {
    "fit": "train a model (LightningCLI); callbacks by short name, e.g. --trainer.callbacks+=SRigLCallback",
    "validate": "one evaluation epoch on the validation set (LightningCLI)",
    "test": "one evaluation epoch on the test set (LightningCLI), e.g. with --ckpt_path",
    "predict": "run predictions (LightningCLI)",
    "benchmark": "time dense vs CSR vs condensed layers; writes CSV, a table and plots",
    "convert": "one-shot conversion of a trained checkpoint to N:M or constant fan-in sparsity",
}
DESCRIPTION = (
    "Structured RigL (SRigL) for PyTorch Lightning: sparse training callbacks (SRigLCallback, RigLCallback, "
    "NMSparsityCallback, AccelerateCallback, usable by short name) and condensed inference layers."
)
EPILOG = f"Run `{PROG} <subcommand> --help` for the arguments of a subcommand."


# Keys of a `fit` config that `convert` accepts and ignores, with their types.
TRAINING_ONLY_KEYS: dict[str, Any] = {
    "trainer": dict | None,
    "seed_everything": int | bool | None,
    "weights_only": bool | None,
}


class ConfigError(ValueError):
    """A command line or config that cannot work; ``main`` prints it as one ``error:`` line."""


def overview_parser() -> argparse.ArgumentParser:
    """The top-level help: the subcommands and what each does (imports neither torch nor Lightning)."""
    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    subcommands = parser.add_subparsers(title="subcommands", metavar="{" + ",".join(SUBCOMMANDS) + "}")
    for name, text in SUBCOMMANDS.items():
        subcommands.add_parser(name, help=text)
    return parser


def _version() -> str:
    from lightning_srigl import __version__

    return __version__


def check_one_sparsity_callback(callbacks: Sequence[Any] | None) -> None:
    """Raise [`ConfigError`][lightning_srigl.cli.ConfigError] when the configured ``trainer.callbacks`` hold two
    sparsity callbacks.

    ``callbacks`` are the parsed entries (``class_path`` namespaces, dicts or strings).
    """
    from lightning_srigl.callbacks.sparsity_callback import (
        SparsityCallback,
    )  # the base of every callback that owns masks

    found = []
    for index, entry in enumerate(callbacks or []):
        class_path = entry if isinstance(entry, str) else entry.get("class_path")
        if class_path and issubclass(_import_class(class_path), SparsityCallback):
            found.append(f"{class_path.rsplit('.', 1)[-1]} (#{index})")
    if len(found) > 1:
        raise ConfigError(
            f"trainer.callbacks has {len(found)} sparsity callbacks, {', '.join(found)}; a Trainer takes one. "
            "Change the config's own instead of adding one with --trainer.callbacks+=..., e.g. "
            "--trainer.callbacks.sparsity=0.95 (an override applies to the last callback of the list)."
        )


def check_callback_arguments(callbacks: Sequence[Any] | None) -> None:
    """Build each configured sparsity callback once, so a bad argument is one
    [`ConfigError`][lightning_srigl.cli.ConfigError] line naming it (jsonargparse buries it in a dump of
    every type it tried)."""
    from lightning_srigl.callbacks.sparsity_callback import SparsityCallback

    for index, entry in enumerate(callbacks or []):
        class_path = entry if isinstance(entry, str) else entry.get("class_path")
        cls = _import_class(class_path) if class_path else None
        if cls is None or not issubclass(cls, SparsityCallback):
            continue
        init_args = {} if isinstance(entry, str) else _as_kwargs(entry.get("init_args") or {})
        try:
            cls(**init_args)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"trainer.callbacks #{index} ({cls.__name__}): {err}") from None


def _import_class(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def lightning_cli(args: Sequence[str] | None = None, run: bool = True) -> LightningCLI:
    """The LightningCLI behind ``fit``/``validate``/``test``/``predict``.

    ``args=None`` reads ``sys.argv``; ``run=False`` only builds the model, data and trainer.
    Models and data modules are given by ``class_path`` (``subclass_mode``), so one command serves
    every example project and any user project.
    """
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningCLI

    # jsonargparse resolves a short class name such as ``SRigLCallback`` only among the subclasses of
    # ``Callback`` that have been imported.
    import lightning_srigl.callbacks  # noqa: F401

    class SRigLCLI(LightningCLI):
        """LightningCLI that rejects a second sparsity callback before Lightning builds the Trainer."""

        def before_instantiate_classes(self) -> None:
            config = self.config[self.subcommand] if self.subcommand else self.config
            callbacks = config.get("trainer", {}).get("callbacks")
            check_one_sparsity_callback(callbacks)
            check_callback_arguments(callbacks)

    return SRigLCLI(
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
    """Flags and ``--config`` for [`SweepConfig`][lightning_srigl.benchmark.SweepConfig] (help from its field docs)."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    from lightning_srigl.benchmark import SweepConfig

    parser = ArgumentParser(
        prog=f"{PROG} benchmark",
        description="Time dense vs CSR vs condensed layers; writes CSV, a table and plots to output_dir.",
    )
    parser.add_argument("--config", action=ActionConfigFile, help="flat YAML of the fields below")
    parser.add_class_arguments(SweepConfig, as_group=False)
    return parser


def benchmark(args: Sequence[str]) -> Any:
    """``lightning-srigl benchmark``: parse flags/YAML and run the sweep; returns the module."""
    from lightning_srigl.benchmark import SweepConfig, run_benchmark

    cfg = benchmark_parser().parse_args(list(args)).as_dict()
    cfg.pop("config", None)
    try:
        sweep = SweepConfig(**cfg)
    except (TypeError, ValueError) as err:
        raise ConfigError(str(err)) from None
    return run_benchmark(sweep)


def convert_parser() -> ArgumentParser:
    """Model/data by ``class_path`` plus the arguments of ``convert_to_structured``."""
    from jsonargparse import ActionConfigFile, ArgumentParser
    from lightning.pytorch import LightningDataModule, LightningModule

    from lightning_srigl.convert import convert_to_structured

    parser = ArgumentParser(
        prog=f"{PROG} convert",
        description="Convert a trained checkpoint to N:M or constant fan-in sparsity and report accuracy.",
    )
    parser.add_argument(
        "--config", action=ActionConfigFile, help="YAML with any of the keys below, or a training config"
    )
    for key, kind in TRAINING_ONLY_KEYS.items():  # so that the config given to `fit` works here too
        parser.add_argument(f"--{key}", type=kind, default=None, help="ignored (a training config's key)")
    parser.add_subclass_arguments(LightningModule, "model", required=True)
    parser.add_subclass_arguments(LightningDataModule, "data", required=False)
    # jsonargparse titles these groups with the base classes' repr or docstring; say what they are for.
    parser.groups["model"].title = "model: the trained LightningModule (class_path and init_args, as in training)"
    parser.groups["data"].title = "data (optional): a LightningDataModule for AdaPrune calibration and accuracy"
    parser.add_argument("--ckpt_path", type=str, required=True, help="checkpoint of the trained model")
    parser.add_argument("--output", type=str, required=True, help="where to write the converted checkpoint")
    parser.add_argument(
        "--calibration_batches",
        type=int,
        default=8,
        help="training batches for AdaPrune reconstruction; 0 = magnitude pruning only",
    )
    parser.add_function_arguments(convert_to_structured, "convert", skip={"model", "calibration_batches"})
    parser.groups["convert"].title = "convert: how to make the model structured (convert_to_structured's arguments)"
    return parser


def load_weights(model: nn.Module, ckpt_path: str | Path) -> None:
    """Load a Lightning checkpoint's ``state_dict`` into ``model``, ignoring sparsity masks.

    Masks (``*_mask`` buffers) are dropped: the weights are already zero outside them. Any other
    missing or unexpected key is an error.
    """
    import torch

    from lightning_srigl.masking import MASK_SUFFIX, without_masks

    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    weights = without_masks(checkpoint.get("state_dict", checkpoint))
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
    import torch

    from lightning_srigl.convert import convert_and_evaluate, convert_to_structured

    parser = convert_parser()
    cfg = parser.parse_args(list(args))
    for key in TRAINING_ONLY_KEYS:
        cfg.pop(key, None)
    objects = parser.instantiate_classes(cfg)
    model = objects.model
    load_weights(model, cfg.ckpt_path)
    options = _as_kwargs(cfg.convert)
    data = objects.get("data")
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
    return namespace.as_dict() if hasattr(namespace, "as_dict") else dict(namespace)


def run(args: Sequence[str] | None = None) -> Any:
    """Run ``lightning-srigl`` with ``args`` (default ``sys.argv[1:]``) and return what it made.

    ``benchmark`` returns the ``BenchmarkModule``, ``convert`` its ``ConversionReport``, anything else
    the ``LightningCLI`` instance. ``-h``/``--help`` prints the overview of the subcommands and exits
    (status 2 with no arguments at all); ``--version`` prints the version.
    """
    argv = list(sys.argv[1:] if args is None else args)
    if not argv:
        overview_parser().print_help()
        raise SystemExit(2)
    if argv[0] in ("-h", "--help", "--version"):
        overview_parser().parse_args(argv)
    if not argv[0].startswith("-") and argv[0] not in SUBCOMMANDS:
        overview_parser().error(f"invalid subcommand {argv[0]!r} (choose from {', '.join(SUBCOMMANDS)})")
    if argv[0] == "benchmark":
        return benchmark(argv[1:])
    if argv[0] == "convert":
        return convert(argv[1:])
    return lightning_cli(args)


def main(args: Sequence[str] | None = None) -> None:
    """Console entry point of ``lightning-srigl``: [`run`][lightning_srigl.cli.run] with ``class_path``
    modules importable from the current directory; a [`ConfigError`][lightning_srigl.cli.ConfigError]
    becomes one ``error:`` line and exit status 2.
    """
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        run(args)
    except ConfigError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
