"""``SparsityCallback``: the Lightning glue every sparsity callback shares (no mask math here).

* ``setup`` — in ``fit``: one sparsity callback per Trainer, a strategy that keeps whole neurons on
  every rank (DDP; FSDP2 with weights sharded by rows for the callbacks that support it, whose
  `SparsityCallback.setup_fit` then runs at ``on_fit_start``, once the model is built and sharded),
  a model that was not accelerated for inference, then the subclass's `SparsityCallback.setup_fit`. In
  ``validate``/``test``/``predict`` nothing is selected and no
  mask is made up: the model only *accepts* the masks a loaded checkpoint carries
  ([`accept_masks_on_load`][lightning_srigl.masking.accept_masks_on_load]), so a later ``fit`` never mistakes
  placeholders for trained masks.
* frozen weights (``requires_grad=False``) are left dense, with a warning;
* masks already on the model (an earlier fit, a checkpoint loaded for evaluation) are reused only
  when they cover exactly the weights this callback selects;
* metrics go straight to the loggers on rank 0; no collective runs inside rank-zero-only code;
* ``state_dict`` is versioned and names the method (the class), so a checkpoint that another sparsity
  method wrote is refused by name. Keys a checkpoint lacks take their defaults, and only arguments that
  change what the masks mean (`SparsityCallback.mask_defining`) block a resume.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from lightning_srigl.condensed.kinds.registry import accelerated_layers
from lightning_srigl.masking import (
    LEGACY_MASK_SUFFIX,
    MASK_SUFFIX,
    MaskedParameters,
    MaskedWeight,
    accept_masks_on_load,
    check_not_pruned,
    mask_buffer_name,
    masked_weights,
    neuron_major,
    qualified_name,
    row_sharding,
    sparsifiable_weights,
    split_frozen,
)
from lightning_srigl.sparsity import LocalReducer, Reducer

STATE_VERSION = 3  # 1: before the state carried a version; 2: before it named the method
_METHODS = ("SRigLCallback", "RigLCallback", "NMSparsityCallback")  # the state keys of states without a method
WHAT_WORKS = (
    "use DDP (strategy='ddp'), or ModelParallelStrategy(data_parallel_size=N, tensor_parallel_size=1) with "
    "torch.distributed.fsdp.fully_shard applied in LightningModule.configure_model (FSDP2: each rank holds whole "
    "neurons); see docs/distributed.md"
)


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


def mask_fingerprint(mask: Tensor, first_row: int = 0) -> list[int]:
    """``[active positions, sum of their flat indices]`` of a mask, or of its rows from ``first_row`` on (the
    indices counted in the whole mask, so the fingerprints of a mask's row shards add up to its own)."""
    offset = first_row * math.prod(mask.shape[1:])
    positions = mask.reshape(-1).nonzero()
    return [int(positions.numel()), int(positions.sum()) + offset * int(positions.numel())]


def check_ranks_agree(
    trainer: Trainer, masked: MaskedParameters | None, owner: str, reducer: Reducer | None = None
) -> None:
    """Compare a cheap per-layer mask fingerprint across ranks (on every rank); raise if they differ.

    Under DDP every rank holds whole masks; under FSDP2 the fingerprints of a rank's row shards are first
    summed over the ranks that shard them (``reducer``), so ranks that replicate (HSDP) are compared too.
    No mask is gathered.
    """
    if trainer.world_size <= 1 or masked is None or not masked.fqns:
        return
    local = []
    for fqn, mask in masked.masks().items():
        sharding = row_sharding(masked.param(fqn), fqn)
        local += mask_fingerprint(masked.local(fqn, mask), 0 if sharding is None else sharding.start)
    summed = (reducer or LocalReducer()).sum(local)
    gathered = trainer.strategy.all_gather(torch.tensor(summed, dtype=torch.int64))
    if not bool((gathered == gathered[0]).all()):
        raise RuntimeError(
            f"{owner}: masks differ across ranks. The update is deterministic given identical gradients; "
            "check that every rank runs the same model and data order per step."
        )


def _all_mask_keys(model: nn.Module) -> set[str]:
    """The mask key every sparsifiable weight of ``model`` would have."""
    return {qualified_name(w.module_name, mask_buffer_name(w.param_name)) for w in sparsifiable_weights(model)}


def _listing(keys: list[str], shown: int = 4) -> str:
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


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
    supports_row_sharding = False  # True: ModelParallelStrategy with weights sharded by rows (FSDP2) works

    def __init__(self) -> None:
        self._accept_handle: RemovableHandle | None = None
        self._resume_handle: RemovableHandle | None = None
        self._setup_at_fit_start = False
        self.masked: MaskedParameters | None = None  # the sparse weights, known once fit is set up

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

    def mask_problem(self, fqn: str, mask: Tensor, rows: Tensor) -> str | None:
        """What in ``mask`` (weight-shaped bool, of the sparse weight ``fqn``; ``rows``: the same mask
        neuron-major, ``(O, *rest)``) breaks this method's rules, or ``None``; the base rule: a sparse
        layer is neither dense nor empty. A whole mask is one shard: `counts_problem` of its `shard_counts`."""
        return self.counts_problem(fqn, self.shard_counts(fqn, rows))

    def shard_counts(self, fqn: str, rows: Tensor) -> list[int]:
        """Counts of this process's rows of ``fqn``'s mask (neuron-major bool, ``(rows, *rest)``) whose sums
        over the processes that shard the layer decide `counts_problem`; the base: active weights, weights."""
        return [int(rows.count_nonzero()), rows.numel()]

    def counts_problem(self, fqn: str, counts: Sequence[int]) -> str | None:
        """`mask_problem` of a mask from its `shard_counts` summed over the shards (no mask gathered)."""
        active, weights = counts[:2]
        if active == weights:
            return "every weight is active (a dense layer)"
        if active == 0:
            return "no weight is active (a dead layer)"
        return None

    # ---- Lightning hooks ----------------------------------------------------------------------
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            self._stop_accepting_masks()
            self._accept_handle = accept_masks_on_load(pl_module)
            return
        self._check_trainer(trainer)
        check_trainable(pl_module, type(self).__name__)
        check_not_pruned(pl_module, type(self).__name__)
        # ModelParallelStrategy builds and shards the model after this hook (configure_model, then
        # materialisation) and restores a checkpoint after on_fit_start: select and install masks in between.
        self._setup_at_fit_start = isinstance(trainer.strategy, ModelParallelStrategy)
        if not self._setup_at_fit_start:
            self._set_up_fit(trainer, pl_module)

    def _set_up_fit(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """`setup_fit`, then watch what a checkpoint loads."""
        self.setup_fit(trainer, pl_module)
        if self.masked is not None and not self.masked.fqns:
            rank_zero_warn(
                f"{type(self).__name__}: no selected layer is sparse (each stays dense for the reason given above, "
                "e.g. a shape the structure does not divide, or a sparsity that leaves it dense), so this fit trains "
                "the dense model. Change the arguments or the model, or drop the callback."
            )
        self._stop_accepting_masks()
        self._resume_handle = pl_module.register_load_state_dict_pre_hook(self._check_checkpoint_masks)

    def _check_checkpoint_masks(self, module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        """``load_state_dict`` pre-hook during fit: the checkpoint has masks for exactly the weights this run
        masks, else one error that says which differ (instead of Lightning's missing/unexpected keys)."""
        if prefix:
            return
        expected = {m.mask_key for m in masked_weights(module)}
        legacy = [k[: -len(LEGACY_MASK_SUFFIX)] for k in state_dict if k.endswith(LEGACY_MASK_SUFFIX)]
        found = {k for k in state_dict if k.endswith(MASK_SUFFIX)} | {k + MASK_SUFFIX for k in legacy}
        found &= _all_mask_keys(module)  # other buffers may end in "_mask" too
        if found == expected:
            return
        missing, extra = sorted(expected - found), sorted(found - expected)
        what = "no masks: it was written without a sparsity callback" if not found else "masks for other weights"
        differ = ([f"it lacks {_listing(missing)}, which this run masks"] if missing else []) + (
            [f"it masks {_listing(extra)}, which this run keeps dense"] if extra else []
        )
        raise ValueError(
            f"{type(self).__name__}: the checkpoint has {what} ({'; '.join(differ)}). Resume with the "
            "callback and include/exclude/dense arguments that wrote it, or start a new run from its weights: "
            "model.load_state_dict(lightning_srigl.masking.without_masks(state_dict)), then fit without ckpt_path."
        )

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Check the masks the model carries now (drawn, adopted, or loaded from ``ckpt_path``); under
        ModelParallelStrategy first select the layers and install the masks (the model is sharded now)."""
        if self._setup_at_fit_start:
            self._setup_at_fit_start = False
            check_trainable(pl_module, type(self).__name__)
            self._set_up_fit(trainer, pl_module)
        self.check_masks()

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        check_not_pruned(pl_module, type(self).__name__)  # ModelPruning prunes at epoch ends

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        check_not_pruned(pl_module, type(self).__name__)

    def check_masks(self) -> None:
        """``ValueError`` naming every mask that breaks `mask_problem`'s rules (whole masks only: sharded ones
        are checked by `check_sharded_masks` once ModelParallelStrategy has restored a checkpoint)."""
        if self.masked is None or any(row_sharding(p.weight, p.fqn) is not None for p in self.masked.params):
            return
        masks = self.masked.masks()
        self._raise_mask_problems({fqn: (mask, self.masked.rows(fqn, mask)) for fqn, mask in masks.items()})

    def check_sharded_masks(self, reducer: Reducer) -> None:
        """``ValueError`` naming every mask that breaks the method's rules, judged by `counts_problem` from
        `shard_counts` of this process's rows summed over the shards (``reducer``; a collective, for every
        rank to call, and no mask is gathered)."""
        if self.masked is None:
            return
        local = {fqn: self.masked.rows(fqn, self.masked.local(fqn, mask)) for fqn, mask in self.masked.masks().items()}
        problems = [f"{fqn}: {problem}" for fqn, problem in self.shard_problems(local, reducer).items() if problem]
        self._raise_problems(problems)

    def shard_problems(self, rows: dict[str, Tensor], reducer: Reducer) -> dict[str, str | None]:
        """Per mask, `counts_problem` of the `shard_counts` of ``rows`` (this process's rows of each mask,
        neuron-major) summed over the shards by ``reducer`` in one call."""
        local = {fqn: self.shard_counts(fqn, part) for fqn, part in rows.items()}
        summed = iter(reducer.sum([count for counts in local.values() for count in counts]))
        return {fqn: self.counts_problem(fqn, [next(summed) for _ in counts]) for fqn, counts in local.items()}

    def _check_evaluated_masks(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Outside fit: the masks a loaded checkpoint brought must keep the method's rules too."""
        weights = masked_weights(pl_module)
        if trainer.state.fn != "fit" and all(row_sharding(m.weight, m.fqn) is None for m in weights):
            self._raise_mask_problems({m.fqn: (m.mask, neuron_major(m.module, m.mask)) for m in weights})

    def _raise_mask_problems(self, masks: dict[str, tuple[Tensor, Tensor]]) -> None:
        self._raise_problems(
            [f"{fqn}: {p}" for fqn, (mask, rows) in masks.items() if (p := self.mask_problem(fqn, mask, rows))]
        )

    def _raise_problems(self, problems: list[str]) -> None:
        if problems:
            raise ValueError(
                f"{type(self).__name__}: the model's masks break the method's rules ({'; '.join(problems)}). A "
                "checkpoint's masks were edited or written under other settings: use an untouched checkpoint, "
                "or start a new run from the weights without ckpt_path."
            )

    @override
    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._check_evaluated_masks(trainer, pl_module)

    @override
    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._check_evaluated_masks(trainer, pl_module)

    @override
    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._check_evaluated_masks(trainer, pl_module)

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._stop_accepting_masks()

    def _stop_accepting_masks(self) -> None:
        for handle in (self._accept_handle, self._resume_handle):
            if handle is not None:
                handle.remove()
        self._accept_handle = self._resume_handle = None

    @override
    def state_dict(self) -> dict[str, Any]:
        method = type(self).__name__
        return {"version": STATE_VERSION, "method": method, "config": self.config(), **self.resumable_state()}

    @override
    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint whose sparsity state another method wrote (Lightning files it under that
        method's key, so `load_state_dict` would never see it)."""
        for key, state in checkpoint.get("callbacks", {}).items():
            if key in (self.state_key, self._legacy_state_key) or not isinstance(state, dict):
                continue
            method = state.get("method", key if key in _METHODS else None)
            if method is not None and "config" in state:
                self._check_method(method)

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        version = state_dict.get("version", 1)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValueError(
                f"{type(self).__name__}: the checkpoint's callback state has version {version!r}, not a positive "
                "integer: the checkpoint is corrupt or was not written by lightning_srigl."
            )
        if version > STATE_VERSION:
            raise ValueError(
                f"{type(self).__name__}: the checkpoint's state has version {version}, newer than this "
                f"lightning_srigl understands ({STATE_VERSION}); upgrade lightning_srigl to resume it."
            )
        config = state_dict.get("config", {})
        self._check_method(state_dict.get("method", config.get("method", type(self).__name__)))
        self._check_resumable(config)
        state = {k: v for k, v in state_dict.items() if k not in ("version", "method", "config")}
        self.restore_state({**self.state_defaults(), **state})

    def _check_method(self, method: object) -> None:
        """``ValueError`` when the checkpoint was written by another sparsity method."""
        if method != type(self).__name__:
            raise ValueError(
                f"{type(self).__name__}: the checkpoint was written by {method}; its masks follow that method's "
                f"rules. Resume it with {method}, or start a new {type(self).__name__} run from its weights "
                "without ckpt_path (lightning_srigl.masking.remove_masks_(model) drops the old masks)."
            )

    # ---- shared steps ---------------------------------------------------------------------------
    def _check_trainer(self, trainer: Trainer) -> None:
        name = type(self).__name__
        strategy = trainer.strategy
        if isinstance(strategy, ModelParallelStrategy):
            self._check_model_parallel(strategy)
        elif isinstance(strategy, (FSDPStrategy, DeepSpeedStrategy)) or strategy.restore_checkpoint_after_setup:
            raise ValueError(
                f"{name} does not support {type(strategy).__name__}: it shards flattened parameters (a neuron's "
                f"weights may straddle ranks) and restores checkpoints after setup. Instead {WHAT_WORKS}."
            )
        others = [c for c in trainer.callbacks if isinstance(c, SparsityCallback) and c is not self]
        if others:
            raise ValueError(f"Use one sparsity callback per Trainer; {name} found {type(others[0]).__name__} too")

    def _check_model_parallel(self, strategy: ModelParallelStrategy) -> None:
        """Accept FSDP2 (rows sharded over the data-parallel dimension); refuse tensor parallelism."""
        name = type(self).__name__
        if not self.supports_row_sharding:
            raise ValueError(f"{name} does not support ModelParallelStrategy yet; use DDP (strategy='ddp')")
        mesh = strategy.device_mesh
        names = mesh.mesh_dim_names or ()
        tensor_parallel = mesh["tensor_parallel"].size() if "tensor_parallel" in names else 1
        if tensor_parallel > 1:
            raise ValueError(
                f"{name} does not support tensor parallelism (tensor_parallel_size={tensor_parallel}): it splits each "
                f"neuron's fan-in across ranks, while constant fan-in and the top-k updates need whole rows. "
                f"Instead {WHAT_WORKS}."
            )

    def select_trainable(self, selected: Sequence[MaskedWeight]) -> list[MaskedWeight]:
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
            rank_zero_warn(
                f"{type(self).__name__}: resuming with arguments that differ from the checkpoint's ({details(differ)})"
            )

    def _default_config(self) -> dict[str, Any]:
        """The config of this class with default arguments: what a checkpoint that lacks a key ran with."""
        try:
            return type(self)().config()
        except TypeError:  # a subclass with required arguments: missing keys are taken as unchanged
            return self.config()
