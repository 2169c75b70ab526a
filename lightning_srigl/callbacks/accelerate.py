"""``AccelerateCallback``: at the end of ``fit``, swap each sparse ``Linear`` for its fastest exact kernel."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from lightning_srigl.condensed.accelerate import (
    find_sparse_linears,
    fit_inputs_to_layers,
    fold_in_place,
    plan_acceleration,
    restore_modules,
    snapshot_modules,
    swap_layers,
)
from lightning_srigl.condensed.acceleration_report import CANDIDATES, AccelerationReport
from lightning_srigl.logs import rank_zero_info

REPORT_FILENAME = "acceleration.csv"


class AccelerateCallback(Callback):
    """Make the trained sparse model fast at inference, in place, when ``trainer.fit`` ends.

    During fit it keeps (by reference, no copy) the latest input of every ``Linear``. At
    ``on_fit_end`` rank 0 times the exact candidates on those real inputs, every rank applies the
    same choice (broadcast), and the report is printed, logged (``log_metrics``/``log_hyperparams``)
    and saved as ``acceleration.csv`` in ``trainer.log_dir``. Afterwards ``trainer.test()``,
    ``trainer.predict()`` and ``trainer.validate()`` run the accelerated model.

    Checkpoints written during fit hold the dense weights and masks. ``trainer.test(ckpt_path=...)``
    (e.g. ``"best"``) after the swap works: a ``load_state_dict`` pre-hook puts the dense (masked)
    modules back when such a checkpoint is loaded, and the same kernels are folded and swapped in
    again before the first test/validation/predict batch. (Plain ``model.load_state_dict(...)``
    outside a Trainer gets the dense model back; accelerate it again if needed.)

    Args:
        batch_size: time the kernels at this batch size (the captured input is cut or tiled along
            dim 0); ``None`` keeps the training batch size.
        candidates: kernels to try (``"dense"`` is required: it is the reference).
        fold: fold ablated neurons into the following layer where exact.
        verbose: print the report table on rank 0.
        warmup, repeats: calls before timing and timed calls (median) per candidate.
    """

    def __init__(
        self,
        batch_size: int | None = None,
        candidates: Sequence[str] = CANDIDATES,
        fold: bool = True,
        verbose: bool = True,
        warmup: int = 3,
        repeats: int = 10,
    ) -> None:
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be a positive int or None, got {batch_size}.")
        self.batch_size = batch_size
        self.candidates = tuple(candidates)
        self.fold = fold
        self.verbose = verbose
        self.warmup = warmup
        self.repeats = repeats
        self.report: AccelerationReport | None = None
        self._inputs: dict[str, Tensor] = {}
        self._handles: list[RemovableHandle] = []
        self._snapshot: dict[str, nn.Module] = {}
        self._originals: dict[str, nn.Module] = {}
        self._reapply = False
        self._load_hook: RemovableHandle | None = None

    # -- capture ---------------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start keeping the latest input of every ``nn.Linear`` (which are sparse is decided at fit end,
        so masks installed by callbacks that run after this one count too)."""
        for name, layer in pl_module.named_modules():
            if type(layer) is nn.Linear:
                self._handles.append(layer.register_forward_pre_hook(self._recorder(name)))

    def _recorder(self, name: str):  # noqa: ANN202 - a forward pre-hook
        def record(_: nn.Module, args: tuple[object, ...]) -> None:
            if args and isinstance(args[0], Tensor):
                self._inputs[name] = args[0].detach()

        return record

    # -- swap ------------------------------------------------------------------------------------
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Fold on every rank, time candidates on rank 0, broadcast the choice, swap on every rank."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        sparse = find_sparse_linears(pl_module)
        inputs = {name: _resize_batch(x, self.batch_size) for name, x in self._inputs.items() if name in sparse}
        self._inputs.clear()
        if not inputs:
            rank_zero_warn("AccelerateCallback: no sparse nn.Linear ran during fit; nothing was accelerated.")
            return
        self._snapshot = snapshot_modules(pl_module, _foldable_modules(pl_module))
        self._fold_and_swap(pl_module, inputs if trainer.is_global_zero else None, trainer)
        if trainer.is_global_zero:
            self._publish(trainer, self.report)

    def _fold_and_swap(
        self, pl_module: pl.LightningModule, inputs: dict[str, Tensor] | None, trainer: pl.Trainer | None = None
    ) -> None:
        """Fold, then plan (when ``inputs`` are given, else reuse ``report``) and swap.

        Keeps shape-only copies of every module it changes, to undo the swap before loading a
        checkpoint written during fit (``_restore_before_load``).
        """
        touched = fold_in_place(pl_module) if self.fold else []
        if inputs is not None:
            was_training = pl_module.training
            pl_module.eval()
            self.report = plan_acceleration(
                pl_module,
                fit_inputs_to_layers(pl_module, inputs),
                candidates=self.candidates,
                warmup=self.warmup,
                repeats=self.repeats,
            )
            pl_module.train(was_training)
        if trainer is not None:
            self.report = trainer.strategy.broadcast(self.report, src=0)
        names = list(dict.fromkeys([*touched, *(row.name for row in self.report.rows)]))
        self._originals = {name: self._snapshot[name] for name in names}
        swap_layers(pl_module, self.report)
        if self._load_hook is None:
            self._load_hook = pl_module.register_load_state_dict_pre_hook(self._restore_before_load)

    def _publish(self, trainer: pl.Trainer, report: AccelerationReport) -> None:
        if self.verbose:
            report.print()
        for logger in trainer.loggers:
            logger.log_metrics(report.metrics(), step=trainer.global_step)
            logger.log_hyperparams({f"accelerate/{row.name}/kernel": row.chosen for row in report.rows})
        if trainer.log_dir is not None:
            path = report.to_csv(Path(trainer.log_dir) / REPORT_FILENAME)
            rank_zero_info(f"AccelerateCallback: report saved to {path}")

    # -- checkpoints after the swap ------------------------------------------------------------------
    def _restore_before_load(self, module: nn.Module, state_dict: dict[str, Tensor], prefix: str, *_: object) -> None:
        """``load_state_dict`` pre-hook on the LightningModule: a state dict written before the swap
        (it has the ``weight_mask`` of a swapped layer) gets the dense modules back to load into."""
        if not self._originals or not any(f"{prefix}{row.name}.weight_mask" in state_dict for row in self.report.rows):
            return
        device = next(module.parameters(), torch.empty(0)).device
        restore_modules(module, {n: copy.deepcopy(m).to_empty(device=device) for n, m in self._originals.items()})
        self._originals = {}
        self._reapply = True

    def _reaccelerate(self, pl_module: pl.LightningModule) -> None:
        """Fold and swap the same kernels in again, built from the weights the checkpoint loaded."""
        if self._reapply:
            self._reapply = False
            self._fold_and_swap(pl_module, inputs=None)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """See ``_reaccelerate``."""
        self._reaccelerate(pl_module)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """See ``_reaccelerate``."""
        self._reaccelerate(pl_module)

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """See ``_reaccelerate``."""
        self._reaccelerate(pl_module)


def _resize_batch(x: Tensor, batch_size: int | None) -> Tensor:
    """Cut or tile ``x (B, ...)`` along dim 0 to ``(batch_size, ...)``; ``None`` returns ``x``."""
    if batch_size is None or x.shape[0] == batch_size:
        return x
    reps = math.ceil(batch_size / x.shape[0])
    return x.repeat(reps, *([1] * (x.dim() - 1)))[:batch_size]


def _foldable_modules(model: nn.Module) -> list[str]:
    """Names of the modules folding or swapping may change (Linear, Conv, BatchNorm)."""
    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.modules.batchnorm._BatchNorm)
    return [name for name, module in model.named_modules() if name and isinstance(module, kinds)]
