"""``DynamicSparsityCallback``: the Lightning glue shared by SRigL and RigL (no mask math here).

The hooks read like the algorithm:

* ``setup`` (``fit``) — select the sparse weights, allocate per-layer budgets, draw the initial masks
  from one seeded generator (identical on every rank), install them as buffers (before a checkpoint
  is restored, so ``load_state_dict`` fills them), zero the weights there, optionally re-initialise.
  Under FSDP2 (``ModelParallelStrategy``) this runs at ``on_fit_start``, and masks and per-weight state
  hold this rank's rows ([`sharding`][lightning_srigl.masking.sharding]). Stage handling, trainer checks and
  versioned state are [`SparsityCallback`][lightning_srigl.callbacks.sparsity_callback.SparsityCallback]'s.
* ``on_train_start`` — fix the end of exploration from ``trainer.estimated_stepping_batches``; patch
  the sparse linear layers to compute their weight gradient at active positions only
  ([`SparseBackward`][lightning_srigl.training.SparseBackward], ``sparse_backward=True``).
* ``on_train_batch_start`` — take the dense weight gradient instead on the steps whose gradient
  scores the next update.
* ``on_before_optimizer_step`` — the gradient here is accumulated over micro-batches, averaged over
  DDP ranks and unscaled by AMP, and dense on the steps inside the window: keep it for the next update
  then, and mask it (except a gradient the sampled backward wrote and nothing touched since, which
  is masked already; [`gradient_pass_reason`][lightning_srigl.callbacks.remask.gradient_pass_reason] says when that is
  known).
* ``on_train_batch_end`` (once per round of optimizer steps) — at a scheduled step, re-mask the
  weights, update the topology, zero optimizer state at inactive and newly grown positions, log
  metrics; other steps re-mask only when [`RemaskPolicy`][lightning_srigl.callbacks.remask.RemaskPolicy] says.
* ``on_train_end`` / ``on_exception`` — give the patched layers their own ``forward`` back.

Counting is in optimizer steps (``trainer.global_step``); with several optimizers (manual
optimization) the count moves by more than one per batch and the update runs at the batch that
reaches its step. All state is in ``state_dict``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from typing_extensions import override

from lightning_srigl.callbacks.arguments import (
    as_integer,
    check_choice,
    check_flag,
    check_patterns,
    check_range,
    check_range_int,
)
from lightning_srigl.callbacks.remask import RemaskPolicy, gradient_pass_reason
from lightning_srigl.callbacks.report import (
    LayerStats,
    dense_layer_stats,
    history_record,
    masked_layer_stats,
    print_layer_table,
    save_active_neurons_plot,
    topology_metrics,
)
from lightning_srigl.callbacks.sparsity_callback import (
    SparsityCallback,
    check_ranks_agree,
    layers_per_optimizer,
    log_metrics,
    run_folder,
)
from lightning_srigl.logs import rank_zero_info
from lightning_srigl.masking import (
    MaskedParameters,
    check_patterns_match,
    gather_rows,
    local_part,
    matches,
    reducer_for,
    select_parameters,
    zero_inactive_,
    zero_optimizer_state_,
)
from lightning_srigl.sparsity import (
    LayerInputs,
    LocalReducer,
    Reducer,
    all_finite,
    check_sparsity,
    cosine_drop_fraction,
    erk_densities,
    exploration_end,
    in_gradient_window,
    layer_budgets,
    mask_change,
    sparse_init_,
    uniform_densities,
    update_due,
    update_groups,
)
from lightning_srigl.training import SparseBackward

Distribution = Literal["erk", "uniform"]


class DynamicSparsityCallback(SparsityCallback):
    """Shared engine of the dynamic sparse training callbacks.

    Subclasses provide the initial mask (`initial_mask`) and one layer's topology update
    (`layer_updates`). Its arguments are every method's, declared here once: a subclass declares only
    its own and passes the rest on as ``**kwargs`` (LightningCLI and jsonargparse follow them here, so a
    config or ``--help`` of [`SRigLCallback`][lightning_srigl.callbacks.SRigLCallback] lists them all).

    Args:
        sparsity: overall fraction of zero weights in the selected layers, in ``[0, 1)``.
        distribution: per-layer densities: ``"erk"`` (Erdős–Rényi-Kernel) or ``"uniform"``.
        delta_t: optimizer steps between topology updates.
        t_end_fraction: fraction of ``trainer.estimated_stepping_batches`` after which the topology
            is frozen.
        alpha: initial drop fraction of the cosine schedule.
        include: fnmatch patterns of fully-qualified weight names to sparsify (``None``: every
            Linear, Conv1d/2d/3d and MultiheadAttention projection).
        exclude: patterns removed from the selection (not counted in the budget).
        dense: patterns of selected weights kept dense; the others become sparser to compensate.
        sparse_init: re-initialise the kept weights for their sparse fan-in when the masks are first
            drawn, as the paper does when training from scratch (without it, a 99 %-sparse layer keeps
            the dense initialisation's scale and its signal shrinks about tenfold). Pass ``False`` to
            fine-tune a pretrained model: the kept weights then keep their values.
        init_std_quirk: draw the re-initialised weights with the reference code's std ``2/fan_in``
            (it passes the grad-flow init's variance as the std) instead of ``sqrt(2/fan_in)``: a
            ``sqrt(fan_in/2)`` times smaller scale, 1.6x at fan-in 5 and 12x at fan-in 274. For
            reproducing the paper's runs; no effect with ``sparse_init=False``. Its measured effect
            on accuracy: ``docs/findings.md``.
        grad_accumulation_n: growth scores are ``|mean gradient|`` over this many optimizer steps
            before each update.
        seed: seed of the initial masks and re-initialisation (identical on every rank).
        log_every_n_steps: also log topology metrics every this many steps (``None``: at updates).
        report: at the end of fit, print a per-layer table and save ``active_neurons.png`` in the
            first logger's folder (else ``trainer.default_root_dir``), on rank 0.
        sparse_backward: compute the weight gradient of sparse fp32 ``nn.Linear`` layers on the CPU
            only at active positions (the dense product's work times the density; the same masked
            gradient up to summation order), except on the steps whose dense gradient scores the
            next update; under FSDP2 too (on the gathered weight, so a fit equals the DDP fit bit for bit).
            ``False``: the dense gradient, then masked.
    """

    metric_prefix = "sparsity"
    supports_row_sharding = True
    mask_defining = frozenset({"method", "sparsity", "distribution", "include", "exclude", "dense"})

    def __init__(
        self,
        sparsity: float = 0.9,
        distribution: Distribution = "erk",
        delta_t: int = 100,
        t_end_fraction: float = 0.75,
        alpha: float = 0.3,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] = (),
        dense: Sequence[str] = (),
        sparse_init: bool = True,
        init_std_quirk: bool = False,
        grad_accumulation_n: int = 1,
        seed: int = 0,
        log_every_n_steps: int | None = None,
        report: bool = True,
        sparse_backward: bool = True,
    ) -> None:
        super().__init__()
        self.sparsity = check_sparsity(sparsity)
        self.distribution = check_choice(distribution, "distribution", ("erk", "uniform"))
        self.delta_t = as_integer(
            delta_t, "delta_t", 1, "it is the number of optimizer steps between updates (paper: 100)"
        )
        self.t_end_fraction = check_range(
            t_end_fraction, "t_end_fraction", 0.0, 1.0, low_open=True, hint="0.75 stops updates at 75%"
        )
        self.alpha = check_range(alpha, "alpha (initial drop fraction)", 0.0, 1.0, hint="the paper uses 0.3")
        self.grad_accumulation_n = as_integer(
            grad_accumulation_n, "grad_accumulation_n", 1, "use 1 to grow by the last gradient only"
        )
        if self.grad_accumulation_n > self.delta_t:
            raise ValueError(f"grad_accumulation_n={grad_accumulation_n} must not exceed delta_t={delta_t}")
        if log_every_n_steps is not None:
            log_every_n_steps = as_integer(log_every_n_steps, "log_every_n_steps", 1, "or None to log only at updates")
        self.include = check_patterns(include, "include")
        self.exclude = check_patterns(exclude, "exclude") or ()
        self.dense = check_patterns(dense, "dense") or ()
        self.sparse_init = check_flag(sparse_init, "sparse_init")
        self.init_std_quirk = check_flag(init_std_quirk, "init_std_quirk")
        self.seed = check_range_int(seed, "seed", -(2**63), 2**64 - 1, "a 64-bit integer; the same on every rank")
        self.log_every_n_steps = log_every_n_steps
        self.report = check_flag(report, "report")
        self.sparse_backward = check_flag(sparse_backward, "sparse_backward")
        self.masked: MaskedParameters | None = None
        self.budgets: dict[str, int] = {}
        # Active weights per layer when training starts (the budget's nearest count the method can hold): the
        # topology updates keep the model-wide count there, so ablation does not move it (docs/deviations.md).
        self.targets: dict[str, int] = {}
        self.dense_shapes: dict[str, tuple[int, ...]] = {}  # selected weights that stay dense, neuron-major
        self.t_end: int | None = None
        self.skipped_updates = 0
        self.history: list[dict[str, Any]] = []
        self._ever_active: dict[str, Tensor] = {}
        self._grad_sums: dict[str, Tensor] = {}
        self._grads_finite = True
        self._last_step = 0
        self._steps_per_round = 1
        self._fqns_of: dict[int, list[str]] = {}
        self.remask = RemaskPolicy()
        self._backward: SparseBackward | None = None
        self._reducer: Reducer = LocalReducer()
        self._trust_sampled_gradients = False

    # ---- what a method must provide -------------------------------------------------------
    def initial_mask(self, fqn: str, shape: torch.Size, target: int, generator: torch.Generator) -> Tensor:
        """Initial ``BoolTensor(shape)`` with about ``target`` active weights.

        ``target`` is the layer's budget (``self.budgets[fqn]``) plus the rounding the layers before it
        carried over (their targets minus what they hold), so a method that cannot hit every count
        (constant fan-in) still keeps the model-wide count of weights asked for.
        """
        raise NotImplementedError

    def layer_updates(
        self, fqns: Sequence[str], layers: Sequence[LayerInputs], drop_fraction: float, reducer: Reducer, carry: int
    ) -> list[tuple[Tensor, Tensor]]:
        """The topology update of ``layers`` (named ``fqns``): per layer ``(new_mask, grown)``, both bool and
        shaped like its ``mask``, with about ``layer.budget`` active weights (the layer's count when training
        started, ``self.targets``) plus ``carry``, the rounding the layers before left (as for `initial_mask`;
        a method that keeps every budget exactly ignores it). Each layer is whole or this process's shard of its
        rows; ``reducer`` runs the layer-wide steps
        ([`lightning_srigl.sparsity.reducer`][lightning_srigl.sparsity.reducer])."""
        raise NotImplementedError

    def allocate_densities(self, names: list[str], shapes: list[tuple[int, ...]], pinned: list[int]) -> list[float]:
        """Per-layer densities of the selected weights (``pinned`` indices stay dense; 1.0 = no mask)."""
        allocate = erk_densities if self.distribution == "erk" else uniform_densities
        return allocate(shapes, self.sparsity, dense=pinned)

    def configure_layers(self, fqns: list[str]) -> None:
        """Resolve method-specific per-layer options once the sparse layers are known."""

    @override
    def config(self) -> dict[str, Any]:
        """The arguments that define the run (`mask_defining` ones must match to resume)."""
        return {
            "method": type(self).__name__,
            "sparsity": self.sparsity,
            "distribution": self.distribution,
            "delta_t": self.delta_t,
            "t_end_fraction": self.t_end_fraction,
            "alpha": self.alpha,
            "include": list(self.include) if self.include is not None else None,
            "exclude": list(self.exclude),
            "dense": list(self.dense),
            "sparse_init": self.sparse_init,
            "init_std_quirk": self.init_std_quirk,
            "grad_accumulation_n": self.grad_accumulation_n,
            "seed": self.seed,
            "sparse_backward": self.sparse_backward,
        }

    # ---- Lightning hooks ------------------------------------------------------------------
    @override
    def setup_fit(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._reset_run_state()
        self._build_layers(pl_module)
        assert self.masked is not None
        self._reducer = reducer_for(self.masked.params)  # refuses weights not sharded by rows, before any change
        if self.adopt_existing_masks(pl_module, self.masked.fqns):
            rank_zero_info(f"{type(self).__name__}: training on with the masks already installed on the model")
        else:
            self._install_initial_masks()
        self.targets = self._held_counts()
        self._ever_active = {fqn: self.masked.local(fqn, m).clone() for fqn, m in self.masked.masks().items()}
        check_ranks_agree(trainer, self.masked, type(self).__name__, self._reducer)

    def _reset_run_state(self) -> None:
        """Forget a previous fit's schedule; a checkpoint restored after ``setup`` refills it."""
        self.t_end = None
        self.skipped_updates = 0
        self.history = []
        self._grad_sums, self._grads_finite = {}, True

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        total = trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ValueError(
                f"{type(self).__name__} needs a finite number of optimizer steps to schedule updates; "
                "set Trainer(max_steps=...) or max_epochs with a sized dataloader"
            )
        t_end = exploration_end(int(total), self.t_end_fraction)
        if self.t_end is not None and self.t_end != t_end:
            rank_zero_warn(f"Resuming with exploration end {self.t_end} from the checkpoint (now it would be {t_end})")
        self.t_end = self.t_end if self.t_end is not None else t_end
        if self.t_end <= self.delta_t:
            rank_zero_warn(
                f"{type(self).__name__}: no topology update will happen: updates stop at step {self.t_end} "
                f"but the first is at delta_t={self.delta_t}; lower delta_t or train longer"
            )
        assert self.masked is not None
        local = self.masked.local
        masks = {fqn: local(fqn, mask) for fqn, mask in self.masked.masks().items()}
        ever = {fqn: local(fqn, self._ever_active.get(fqn, mask)) for fqn, mask in masks.items()}
        self._ever_active = {fqn: e.to(masks[fqn].device) | masks[fqn] for fqn, e in ever.items()}
        self._grad_sums = {fqn: local(fqn, g).to(masks[fqn].device) for fqn, g in self._grad_sums.items()}
        self._fqns_of = layers_per_optimizer(trainer, self.masked)
        self.masked.forget_step_masks()  # a distributed checkpoint loads masks without moving version counters
        if not isinstance(self._reducer, LocalReducer):  # sharded: a checkpoint is restored after on_fit_start
            self.check_sharded_masks(self._reducer)
        self.remask.start(trainer, pl_module, self, self.masked, self._fqns_of)
        self._last_step = trainer.global_step
        if self.sparse_backward:
            self._install_sparse_backward()
            self._trust_sampled_gradients = gradient_pass_reason(trainer, pl_module, self) is None
        if trainer.global_step == 0 and trainer.loggers:
            log_metrics(trainer, self._metrics(), step=0)

    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self._backward is not None:
            self._backward.enabled = not self._dense_gradient_needed()

    @override
    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        assert self.masked is not None
        if self._dense_gradient_needed():
            self._accumulate_dense_grads(self._fqns_of.get(id(optimizer), self.masked.fqns))
        untouched = self._backward.untouched_gradients() if self._backward is not None else set()
        self.masked.apply_to_gradients_(skip=untouched if self._trust_sampled_gradients else ())

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step == self._last_step:
            return  # a micro-batch of gradient accumulation: no optimizer step happened
        previous, self._last_step = self._last_step, step
        self._steps_per_round = step - previous
        assert self.masked is not None and self.t_end is not None
        due = update_due(previous, step, self.delta_t, self.t_end)
        if due is not None or self.remask.reason() is not None:
            self.masked.apply_to_weights_()
        if due is not None:
            self._update_topology(trainer, due)
        elif self.log_every_n_steps and step // self.log_every_n_steps > previous // self.log_every_n_steps:
            log_metrics(trainer, self._metrics(), step)

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._remove_sparse_backward()

    @override
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._remove_sparse_backward()  # Lightning runs no callback teardown after an exception

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_fit_end(trainer, pl_module)
        if not self.report or self.masked is None:
            return
        stats = self._layer_stats()  # on every rank: the counts of sharded masks are summed over ranks
        if not trainer.is_global_zero:
            return
        dense = [dense_layer_stats(name, shape) for name, shape in self.dense_shapes.items()]
        parameters = sum(p.numel() for p in pl_module.parameters())
        print_layer_table(stats, f"{type(self).__name__}: sparse layers at the end of fit", dense, parameters)
        path = save_active_neurons_plot(stats, self.history, run_folder(trainer) / "active_neurons.png")
        updates = f"{len(self.history)} topology updates" if self.history else "no topology update ran"
        rank_zero_info(f"{type(self).__name__}: active-neurons plot ({updates}) saved to {path}")

    @override
    def resumable_state(self) -> dict[str, Any]:
        """The state; per-weight tensors whole (gathered over the ranks that shard a weight's rows, on every
        rank, as Lightning asks every rank for it), so any rank, or a run with another layout, resumes it."""
        whole = self._whole_tensors
        return {
            "t_end": self.t_end,
            "grad_sums": whole(self._grad_sums),
            "grads_finite": self._agreed_finite(self._grads_finite),
            "ever_active": whole(self._ever_active),
            "skipped_updates": self.skipped_updates,
            "history": list(self.history),
        }

    @override
    def state_defaults(self) -> dict[str, Any]:
        """An older checkpoint lacking a key resumes from: exploration end recomputed, no pending gradients,
        in-time coverage from the loaded masks, no skipped updates, no history."""
        return {
            "t_end": None,
            "grad_sums": {},
            "grads_finite": True,
            "ever_active": {},
            "skipped_updates": 0,
            "history": [],
        }

    @override
    def restore_state(self, state: dict[str, Any]) -> None:
        self.t_end = state["t_end"]
        self._grad_sums = dict(state["grad_sums"])
        self._grads_finite = state["grads_finite"]
        self._ever_active = dict(state["ever_active"])  # {}: rebuilt from the loaded masks at train start
        self.skipped_updates = state["skipped_updates"]
        self.history = list(state["history"])

    def _whole_tensors(self, per_weight: dict[str, Tensor]) -> dict[str, Tensor]:
        """``{fqn: this process's rows}`` -> ``{fqn: the whole tensor}`` on the CPU (gathered when sharded)."""
        if self.masked is None:
            return {fqn: t.to("cpu", copy=True) for fqn, t in per_weight.items()}
        return {fqn: gather_rows(t, self.masked.param(fqn)).to("cpu", copy=True) for fqn, t in per_weight.items()}

    def _agreed_finite(self, finite: bool) -> bool:
        """``finite`` on every rank that shares the update (a sharded gradient is checked part by part)."""
        return self._reducer.sum([0 if finite else 1])[0] == 0

    # ---- steps of the algorithm -----------------------------------------------------------
    def _build_layers(self, pl_module: LightningModule) -> None:
        """Select sparse weights, allocate densities and integer budgets; dense layers get no mask."""
        selected = self.select_trainable(select_parameters(pl_module, include=self.include, exclude=self.exclude))
        if not selected:
            raise ValueError(f"{type(self).__name__}: every selected weight is frozen; nothing is left to sparsify")
        names = [p.fqn for p in selected]
        check_patterns_match(self.dense, names, "dense")
        shapes = [tuple(p.rows(p.weight).shape) for p in selected]  # neuron-major: (out, ...)
        pinned = [i for i, name in enumerate(names) if matches(name, self.dense)]
        densities = self.allocate_densities(names, shapes, pinned)
        budgets = layer_budgets(shapes, densities)
        sparse = [i for i, d in enumerate(densities) if d < 1.0]
        self.masked = MaskedParameters([selected[i] for i in sparse])
        self.budgets = {names[i]: budgets[i] for i in sparse}
        self.dense_shapes = {names[i]: shapes[i] for i in range(len(names)) if i not in sparse}
        self.configure_layers(self.masked.fqns)

    def _install_initial_masks(self) -> None:
        """Draw every layer's mask, carrying each layer's rounding into the next layer's target.

        The generator is made here from ``seed`` and dropped after: a callback that holds one cannot be
        pickled into ``ddp_spawn``'s processes (every rank draws the same masks from the same seed).
        """
        assert self.masked is not None
        generator = torch.Generator().manual_seed(self.seed)
        masks = {}
        rows = self.masked.rows
        carry = 0
        for fqn, budget in self.budgets.items():
            shape = rows(fqn, self.masked.param(fqn)).shape
            try:
                masks[fqn] = rows(fqn, self.initial_mask(fqn, shape, budget + carry, generator))
            except ValueError as error:
                raise ValueError(f"sparse layer {fqn!r}: {error}") from error
            carry += budget - int(masks[fqn].count_nonzero())
        self.masked.install_(masks)
        self.masked.apply_to_weights_()
        self._log_budget()
        if self.sparse_init:
            for fqn, mask in masks.items():
                param = self.masked.param(fqn)
                weight = torch.empty(param.shape, dtype=param.dtype, device=param.device)  # the whole weight
                sparse_init_(rows(fqn, weight), rows(fqn, mask), generator, std_quirk=self.init_std_quirk)
                self.masked.local(fqn, param.data).copy_(self.masked.local(fqn, weight))
            rank_zero_info(
                f"{type(self).__name__}: re-initialised the kept weights of {len(self.budgets)} layers for their "
                "sparse fan-in (the paper's recipe from scratch); pass sparse_init=False to keep pretrained values"
            )

    def _log_budget(self) -> None:
        """Log the active weights the masks hold against the budget they were drawn for (model-wide)."""
        assert self.masked is not None
        masks = self.masked.masks()
        if not masks:
            return
        held, asked = sum(self._held_counts().values()), sum(self.budgets.values())
        total = sum(m.numel() for m in masks.values())
        rank_zero_info(
            f"{type(self).__name__}: {held} active weights in {len(masks)} sparse layers (density {held / total:.4%}) "
            f"for a budget of {asked} ({(held - asked) / max(asked, 1):+.2%})"
        )

    def _held_counts(self) -> dict[str, int]:
        """``{fqn: active weights of the whole layer}`` (this process's rows summed over the ranks that shard it)."""
        assert self.masked is not None
        masks = self.masked.masks()
        local = [int(self.masked.local(fqn, mask).count_nonzero()) for fqn, mask in masks.items()]
        return dict(zip(masks, self._reducer.sum(local)))

    def _dense_gradient_needed(self) -> bool:
        """Whether the coming optimizer step's dense gradient feeds the next topology update."""
        assert self.t_end is not None
        return in_gradient_window(
            self._last_step, self._steps_per_round, self.grad_accumulation_n, self.delta_t, self.t_end
        )

    def _install_sparse_backward(self) -> None:
        assert self.masked is not None
        self._remove_sparse_backward()
        self._backward = SparseBackward(self.masked)
        patched = self._backward.install()
        if patched:
            rank_zero_info(
                f"{type(self).__name__}: {len(patched)} of {len(self.masked.fqns)} sparse layers compute their "
                "weight gradient at active positions only (dense on the steps before an update); pass "
                "sparse_backward=False for the dense one"
            )

    def _remove_sparse_backward(self) -> None:
        if self._backward is not None:
            self._backward.remove()
            self._backward = None

    @torch.no_grad()
    def _accumulate_dense_grads(self, fqns: Sequence[str]) -> None:
        """Add this step's dense gradient / n of ``fqns`` into the growth-score sums; note whether all are finite."""
        assert self.masked is not None
        for fqn in fqns:
            param = self.masked.param(fqn)
            grad = local_part(param.grad) if param.grad is not None else torch.zeros_like(local_part(param.data))
            self._grads_finite = self._grads_finite and all_finite(grad)
            scaled = grad.detach() / self.grad_accumulation_n
            self._grad_sums[fqn] = self._grad_sums[fqn].add_(scaled) if fqn in self._grad_sums else scaled

    @torch.no_grad()
    def _update_topology(self, trainer: Trainer, step: int) -> None:
        """Replace connections in every sparse layer; skip the whole update on non-finite inputs."""
        assert self.masked is not None and self.t_end is not None
        grads, finite = self._grad_sums, self._grads_finite
        self._grad_sums, self._grads_finite = {}, True
        weights = {fqn: self.masked.param(fqn) for fqn in self.masked.fqns}
        finite = self._agreed_finite(finite and all(all_finite(local_part(w.data)) for w in weights.values()))
        if not finite or grads.keys() != weights.keys():
            self.skipped_updates += 1
            reason = "non-finite gradients or weights" if not finite else "no dense gradient was captured"
            rank_zero_warn(f"{type(self).__name__}: skipped the topology update at step {step} ({reason})")
            log_metrics(trainer, {f"{self.metric_prefix}/skipped_updates": float(self.skipped_updates)}, step)
            return
        drop_fraction = cosine_drop_fraction(step, self.t_end, self.alpha)
        local_changes: dict[str, int] = {}
        numels = [weights[fqn].numel() for fqn in self.masked.fqns]
        carry = 0  # the layers so far hold this many weights fewer than their targets
        for group in update_groups(self.masked.fqns, numels, self._reducer.batch_elements):
            changes, active = self._update_group(trainer, group, grads, drop_fraction, carry)
            local_changes.update(changes)
            carry += sum(self.targets[fqn] for fqn in group) - sum(self._reducer.sum(active))
        if self._backward is not None:
            self._backward.masks_changed()
        changed = dict(zip(local_changes, self._reducer.sum(list(local_changes.values()))))
        check_ranks_agree(trainer, self.masked, type(self).__name__, self._reducer)
        metrics = self._metrics()
        self.history.append(history_record(step, drop_fraction, changed, metrics, self.metric_prefix))
        metrics[f"{self.metric_prefix}/drop_fraction"] = drop_fraction
        metrics[f"{self.metric_prefix}/mask_change"] = float(sum(changed.values()))
        metrics.update({f"{self.metric_prefix}/{fqn}/mask_change": float(n) for fqn, n in changed.items()})
        metrics[f"{self.metric_prefix}/skipped_updates"] = float(self.skipped_updates)
        log_metrics(trainer, metrics, step)

    def _update_group(
        self, trainer: Trainer, fqns: Sequence[str], grads: dict[str, Tensor], drop_fraction: float, carry: int
    ) -> tuple[dict[str, int], list[int]]:
        """Update ``fqns`` together (masks, weights, optimizer state, in place); per layer the number of
        positions of this process's part that changed, and its active weights there.

        ``grads`` holds this callback's own gradient sums (this process's rows), turned into ``|grad|``
        in place and dropped once used; the live masks are read, not copied, until the new ones are written.
        """
        assert self.masked is not None
        rows, local = self.masked.rows, self.masked.local
        layers = [
            LayerInputs(
                rows(fqn, local(fqn, self.masked.param(fqn).data)),
                rows(fqn, local(fqn, self.masked.mask(fqn))),
                rows(fqn, grads.pop(fqn).abs_()),
                self.targets[fqn],
            )
            for fqn in fqns
        ]
        results = self.layer_updates(fqns, layers, drop_fraction, self._reducer, carry)
        del layers
        changed, active = {}, []
        for fqn, (new, grown) in zip(fqns, results):
            weight = self.masked.param(fqn)
            new, grown = rows(fqn, new), rows(fqn, grown)
            mask = local(fqn, self.masked.mask(fqn))
            changed[fqn] = mask_change(mask, new)
            self.masked.set_mask_(fqn, new)
            local_weight = local(fqn, weight.data)
            zero_inactive_(local_weight, self.masked.step_mask(fqn, local_weight))  # the gradient pass reuses it
            reset = new.logical_not()
            reset |= grown
            for optimizer in trainer.optimizers:
                zero_optimizer_state_(optimizer, weight, reset)
            self._ever_active[fqn] |= new
            active.append(int(new.count_nonzero()))
        return changed, active

    # ---- observability and checks ----------------------------------------------------------
    def _layer_stats(self) -> list[LayerStats]:
        """Every layer's topology; a collective where the weights are sharded (call it on every rank)."""
        assert self.masked is not None
        return masked_layer_stats(self.masked, self._ever_active, self._reducer.sum)

    def _metrics(self) -> dict[str, float]:
        return topology_metrics(self._layer_stats(), self.metric_prefix)
