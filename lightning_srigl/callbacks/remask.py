"""When a fit may skip re-masking the weights after an optimizer step (the Lightning side).

Masked gradients and zeroed optimizer state keep inactive weights at exactly zero through the steps
of SGD, Adam and AdamW (derived in [`zero_keeping`][lightning_srigl.masking.zero_keeping]), *if nothing else
moves a weight*. What else could, in a Lightning fit, and keeps the per-step re-mask:

* manual optimization (the ``training_step`` steps optimizers and may touch anything between steps);
* a LightningModule that overrides a hook that runs between the gradient masking and the next forward
  pass and is where gradient or weight edits are written: ``on_before_optimizer_step`` (it runs
  after the callbacks' hook), ``configure_gradient_clipping``, ``optimizer_step``,
  ``on_before_zero_grad``, ``on_train_batch_end`` or ``on_train_batch_start``. Its epoch and
  validation hooks are taken as read-only (that is where metrics are computed);
* any other callback that overrides a hook of the training loop (batch, epoch, backward, optimizer
  and validation hooks: weight averaging such as ``StochasticWeightAveraging`` or
  ``EMAWeightAveraging``, pruning, user callbacks), except Lightning's own callbacks that only read
  (`LOOP_SAFE_CALLBACKS`: checkpointing, progress bars, summaries, monitors, early stopping,
  timer, accumulation scheduler) and [`AccelerateCallback`][lightning_srigl.callbacks.AccelerateCallback] (it
  swaps layers at fit end only).

Gradient clipping by norm or by value and gradient accumulation keep masked gradients zero (see
[`lightning_srigl.masking.zero_keeping`][lightning_srigl.masking.zero_keeping]), so they need no re-mask.

The same reasoning decides when the gradient pass may skip a weight whose gradient the sampled
backward wrote (`lightning_srigl.training.SparseBackward.untouched_gradients`, which sees every
write through autograd but not one through ``.data``): `gradient_pass_reason` also keeps the
pass under a strategy that reduces gradients across processes and for a LightningModule that
overrides ``backward``, ``on_before_backward`` or ``on_after_backward``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch import callbacks as pl_callbacks
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch.optim import Optimizer

from lightning_srigl.callbacks.accelerate import AccelerateCallback
from lightning_srigl.masking import MaskedParameters, establish_zeros_, weight_remask_reason

LOOP_SAFE_CALLBACKS: tuple[type[Callback], ...] = (
    AccelerateCallback,
    pl_callbacks.Checkpoint,  # ModelCheckpoint, OnExceptionCheckpoint
    pl_callbacks.DeviceStatsMonitor,
    pl_callbacks.EarlyStopping,
    pl_callbacks.GradientAccumulationScheduler,
    pl_callbacks.LearningRateMonitor,
    pl_callbacks.ModelSummary,  # and RichModelSummary
    pl_callbacks.ProgressBar,  # TQDMProgressBar, RichProgressBar
    pl_callbacks.ThroughputMonitor,
    pl_callbacks.Timer,
)
MODULE_STEP_HOOKS = (
    "on_train_batch_start",
    "on_before_optimizer_step",
    "configure_gradient_clipping",
    "optimizer_step",
    "on_before_zero_grad",
    "on_train_batch_end",
)
MODULE_GRADIENT_HOOKS = ("backward", "on_before_backward", "on_after_backward")
CALLBACK_LOOP_HOOKS = (
    "on_train_start",
    "on_train_epoch_start",
    "on_train_batch_start",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_before_zero_grad",
    "on_train_batch_end",
    "on_train_epoch_end",
    "on_validation_start",
    "on_validation_epoch_start",
    "on_validation_batch_start",
    "on_validation_batch_end",
    "on_validation_epoch_end",
    "on_validation_end",
)

__all__ = [
    "CALLBACK_LOOP_HOOKS",
    "LOOP_SAFE_CALLBACKS",
    "MODULE_GRADIENT_HOOKS",
    "MODULE_STEP_HOOKS",
    "RemaskPolicy",
    "fit_remask_reason",
    "gradient_pass_reason",
    "step_remask_reason",
]


def fit_remask_reason(trainer: Trainer, pl_module: LightningModule, owner: Callback) -> str | None:
    """Why this fit must re-mask weights after every step whatever the optimizer, or ``None``.

    Fixed for a fit (decided at ``on_train_start``); ``owner`` is the sparsity callback asking.
    """
    if not pl_module.automatic_optimization:
        return "the LightningModule uses manual optimization"
    hooks = [hook for hook in MODULE_STEP_HOOKS if is_overridden(hook, pl_module, LightningModule)]
    if hooks:
        return f"{type(pl_module).__name__} overrides {', '.join(hooks)}"
    for callback in trainer.callbacks:
        if callback is owner or isinstance(callback, LOOP_SAFE_CALLBACKS):
            continue
        hooks = [hook for hook in CALLBACK_LOOP_HOOKS if is_overridden(hook, callback, Callback)]
        if hooks:
            return f"callback {type(callback).__name__} overrides {', '.join(hooks)}"
    return None


def gradient_pass_reason(trainer: Trainer, pl_module: LightningModule, owner: Callback) -> str | None:
    """Why this fit must zero every gradient, even one the sampled backward wrote untouched, or ``None``."""
    reason = fit_remask_reason(trainer, pl_module, owner)
    if reason is not None:
        return reason
    if not isinstance(trainer.strategy, SingleDeviceStrategy):
        return f"the {type(trainer.strategy).__name__} strategy reduces gradients across processes"
    hooks = [hook for hook in MODULE_GRADIENT_HOOKS if is_overridden(hook, pl_module, LightningModule)]
    if hooks:
        return f"{type(pl_module).__name__} overrides {', '.join(hooks)}"
    return None


def step_remask_reason(optimizers: Iterable[Optimizer]) -> str | None:
    """Why the weights of ``optimizers`` (those that step masked weights) need re-masking after this step."""
    for optimizer in optimizers:
        reason = weight_remask_reason(optimizer)
        if reason is not None:
            return reason
    return None


class RemaskPolicy:
    """Per step, whether a sparsity callback must re-mask its weights (see the module's rules).

    `start` (at ``on_train_start``, after any restore) establishes the invariant the skip
    relies on: inactive weights and their optimizer state zero. `reason` then says, each step,
    why a re-mask is needed (``None``: it is not).
    """

    def __init__(self) -> None:
        self.fit_reason: str | None = None
        self.optimizers: list[Optimizer] = []

    def start(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        owner: Callback,
        masked: MaskedParameters,
        fqns_of: Mapping[int, list[str]],
    ) -> None:
        """Decide the fit's part, zero inactive weights and state, say once if every step will re-mask.

        Args:
            fqns_of: ``id(optimizer)`` -> the masked weights it steps (only those optimizers count).
        """
        self.optimizers = [opt for opt in trainer.optimizers if fqns_of.get(id(opt))]
        self.fit_reason = fit_remask_reason(trainer, pl_module, owner)
        establish_zeros_(masked, trainer.optimizers)
        reason = self.reason()
        if reason is not None:
            rank_zero_info(f"{type(owner).__name__}: re-masking the weights after every optimizer step ({reason})")

    def reason(self) -> str | None:
        """Why this step's weights need re-masking, or ``None`` when the optimizer step kept inactive ones zero."""
        return self.fit_reason or step_remask_reason(self.optimizers)
