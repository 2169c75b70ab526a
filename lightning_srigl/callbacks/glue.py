"""``SparsityCallback``: the Lightning glue every sparsity callback shares (no mask math here).

* ``setup`` — in ``fit``: one sparsity callback per Trainer, a strategy that keeps whole weights on
  every rank, a model that was not accelerated for inference, then the subclass's
  `SparsityCallback.setup_fit`. In ``validate``/``test``/``predict`` nothing is selected and no
  mask is made up: the model only *accepts* the masks a loaded checkpoint carries
  ([`accept_masks_on_load`][lightning_srigl.masking.accept_masks_on_load]), so a later ``fit`` never mistakes
  placeholders for trained masks.
* frozen weights (``requires_grad=False``) are left dense, with a warning;
* masks already on the model (an earlier fit, a checkpoint loaded for evaluation) are reused only
  when they cover exactly the weights this callback selects;
* metrics go straight to the loggers on rank 0; no collective runs inside rank-zero-only code;
* ``state_dict`` is versioned: keys a checkpoint lacks take their defaults, and only arguments that
  change what the masks mean (`SparsityCallback.mask_defining`) block a resume.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from lightning_srigl.condensed.kinds.registry import accelerated_layers
from lightning_srigl.masking import (
    MaskedParameters,
    SparseParameter,
    accept_masks_on_load,
    masked_weights,
    split_frozen,
)

STATE_VERSION = 2  # 1: checkpoints written before the state carried a version
_SHARDED_STRATEGIES = (FSDPStrategy, DeepSpeedStrategy, ModelParallelStrategy)


def run_folder(trainer: Trainer) -> Path:
    """Where a run's files go: the first logger's folder, else ``trainer.default_root_dir``.

    Unlike ``trainer.log_dir`` this is no collective, so rank 0 may call it alone.
    """
    if trainer.loggers:
        logger = trainer.loggers[0]
        folder = logger.log_dir if isinstance(logger, (TensorBoardLogger, CSVLogger)) else logger.save_dir
        if folder is not None:
            return Path(folder)
    return Path(trainer.default_root_dir)


def log_metrics(trainer: Trainer, metrics: dict[str, float], step: int) -> None:
    """Write straight to the loggers on rank 0 (like ``LearningRateMonitor``), whatever ``log_every_n_steps`` is."""
    if trainer.is_global_zero:
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)


def layers_per_optimizer(trainer: Trainer, masked: MaskedParameters) -> dict[int, list[str]]:
    """``id(optimizer)`` -> the sparse weights it steps; weights no optimizer holds go with the first."""
    owner = {id(masked.param(fqn)): fqn for fqn in masked.fqns}
    per_optimizer: dict[int, list[str]] = {}
    for optimizer in trainer.optimizers:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        per_optimizer[id(optimizer)] = [owner.pop(id(p)) for p in params if id(p) in owner]
    if trainer.optimizers:
        per_optimizer[id(trainer.optimizers[0])] += list(owner.values())
    return per_optimizer


def check_ranks_agree(trainer: Trainer, masked: MaskedParameters | None, owner: str) -> None:
    """Under DDP, compare a cheap per-layer mask fingerprint across ranks (on every rank); raise if they differ."""
    if trainer.world_size <= 1 or masked is None or not masked.fqns:
        return
    fingerprint = torch.stack([torch.stack([m.sum(), m.flatten().nonzero().sum()]) for m in masked.masks().values()])
    gathered = trainer.strategy.all_gather(fingerprint)
    if not bool((gathered == gathered[0]).all()):
        raise RuntimeError(
            f"{owner}: masks differ across DDP ranks. The update is deterministic given identical gradients; "
            "check that every rank runs the same model and data order per step."
        )


def check_trainable(pl_module: LightningModule, owner: str) -> None:
    """Refuse to train a model whose sparse layers were swapped for inference layers."""
    accelerated = accelerated_layers(pl_module)
    if accelerated:
        described = ", ".join(f"{name} ({kind})" for name, kind in list(accelerated.items())[:4])
        raise RuntimeError(
            f"{owner}: this model was accelerated for inference ({described}) and cannot be trained: its "
            "sparse layers are gone. Train a fresh instance from a checkpoint written during fit, e.g. "
            "trainer.fit(MyModel(), ckpt_path=...), or keep a copy of the model before AccelerateCallback runs."
        )


class SparsityCallback(Callback):
    """Shared base of `DynamicSparsityCallback` and
    [`NMSparsityCallback`][lightning_srigl.callbacks.NMSparsityCallback].

    A subclass implements `setup_fit`, `config`, `resumable_state` and
    `restore_state`, and names its `mask_defining` config keys.
    """

    mask_defining: frozenset[str] = frozenset()

    def __init__(self) -> None:
        self._accept_handle: RemovableHandle | None = None

    # ---- what a subclass provides ------------------------------------------------------------
    def setup_fit(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Select the sparse weights and install their masks (before a checkpoint is restored)."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """The arguments that define the run, saved with the state."""
        raise NotImplementedError

    def resumable_state(self) -> dict[str, Any]:
        """Everything a resume needs besides the config and the masks (which live in the model)."""
        raise NotImplementedError

    def state_defaults(self) -> dict[str, Any]:
        """Values of `resumable_state` keys that an older checkpoint may lack."""
        return {}

    def restore_state(self, state: dict[str, Any]) -> None:
        """Take the state back (every key of `state_defaults` is present)."""
        raise NotImplementedError

    # ---- Lightning hooks ----------------------------------------------------------------------
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            self._stop_accepting_masks()
            self._accept_handle = accept_masks_on_load(pl_module)
            return
        self._check_trainer(trainer)
        check_trainable(pl_module, type(self).__name__)
        self.setup_fit(trainer, pl_module)

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._stop_accepting_masks()

    def _stop_accepting_masks(self) -> None:
        if self._accept_handle is not None:
            self._accept_handle.remove()
            self._accept_handle = None

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "config": self.config(), **self.resumable_state()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        version = state_dict.get("version", 1)
        if version > STATE_VERSION:
            raise ValueError(
                f"{type(self).__name__}: the checkpoint's state has version {version}, newer than this "
                f"lightning_srigl understands ({STATE_VERSION}); upgrade lightning_srigl to resume it."
            )
        self._check_resumable(state_dict.get("config", {}))
        state = {k: v for k, v in state_dict.items() if k not in ("version", "config")}
        self.restore_state({**self.state_defaults(), **state})

    # ---- shared steps ---------------------------------------------------------------------------
    def _check_trainer(self, trainer: Trainer) -> None:
        name = type(self).__name__
        strategy = trainer.strategy
        if isinstance(strategy, _SHARDED_STRATEGIES) or strategy.restore_checkpoint_after_setup:
            raise ValueError(f"{name} does not support {type(strategy).__name__} (sharded weights); use DDP")
        others = [c for c in trainer.callbacks if isinstance(c, SparsityCallback) and c is not self]
        if others:
            raise ValueError(f"Use one sparsity callback per Trainer; {name} found {type(others[0]).__name__} too")

    def select_trainable(self, selected: Sequence[SparseParameter]) -> list[SparseParameter]:
        """``selected`` without frozen weights, which stay dense (a frozen weight could never regrow)."""
        trainable, frozen = split_frozen(selected)
        if frozen:
            rank_zero_warn(
                f"{type(self).__name__}: {[p.fqn for p in frozen]} are frozen (requires_grad=False) and stay "
                "dense, outside the sparsity budget; unfreeze them before fit, or exclude them to silence this."
            )
        return trainable

    def adopt_existing_masks(self, pl_module: LightningModule, fqns: Sequence[str]) -> bool:
        """True when the model already carries masks for exactly ``fqns`` (reuse them); False when it has
        none; ``ValueError`` when it has masks for other weights."""
        existing = [m.fqn for m in masked_weights(pl_module)]
        if not existing:
            return False
        if set(existing) == set(fqns):
            return True
        raise ValueError(
            f"{type(self).__name__}: the model already has masks on {sorted(existing)}, but this callback "
            f"selects {sorted(fqns)}. Use the include/exclude arguments of the run that made them, or start "
            "from plain weights: lightning_srigl.masking.remove_masks_(model)."
        )

    def _check_resumable(self, saved: dict[str, Any]) -> None:
        current = self.config()
        defaults = self._default_config()
        saved = {**defaults, **saved}
        differ = sorted(k for k in current if k in saved and saved[k] != current[k])
        blocking = [k for k in differ if k in self.mask_defining]

        def details(keys: list[str]) -> str:
            return "; ".join(f"{k}: checkpoint {saved[k]!r}, now {current[k]!r}" for k in keys)

        if blocking:
            raise ValueError(
                f"{type(self).__name__}: {', '.join(blocking)} differ from the checkpoint's ({details(blocking)}); "
                "they change what the saved masks mean. Resume with the checkpoint's values, or start a new run "
                "from its weights without ckpt_path."
            )
        if differ:
            rank_zero_warn(f"{type(self).__name__}: resuming with arguments that differ from the checkpoint's ({details(differ)})")

    def _default_config(self) -> dict[str, Any]:
        """The config of this class with default arguments: what a checkpoint that lacks a key ran with."""
        try:
            return type(self)().config()
        except TypeError:  # a subclass with required arguments: missing keys are taken as unchanged
            return self.config()
