"""``DynamicSparsityCallback``: the Lightning glue shared by SRigL and RigL (no mask math here).

The hooks read like the algorithm:

* ``setup`` — select the sparse weights, allocate per-layer budgets, draw the initial masks from
  one seeded generator (identical on every rank), install them as buffers (before a checkpoint is
  restored, so ``load_state_dict`` fills them), zero the weights there, optionally re-initialise.
* ``on_train_start`` — fix the end of exploration from ``trainer.estimated_stepping_batches``.
* ``on_before_optimizer_step`` — the gradient here is dense, accumulated over micro-batches,
  averaged over DDP ranks and unscaled by AMP: keep it for the next update if it is inside the
  window, then mask it.
* ``on_train_batch_end`` (once per optimizer step) — re-mask the weights; on scheduled steps update
  the topology, zero optimizer state at inactive and newly grown positions, log metrics.

Counting is in optimizer steps (``trainer.global_step``). All state is in ``state_dict``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from lightning_srigl.callbacks.report import (
    LayerStats,
    layer_stats,
    print_layer_table,
    save_active_neurons_plot,
    topology_metrics,
)
from lightning_srigl.logs import rank_zero_info
from lightning_srigl.masking import MaskedParameters, check_patterns_match, matches, select_parameters
from lightning_srigl.masking import zero_optimizer_state_
from lightning_srigl.sparsity import (
    check_sparsity,
    cosine_drop_fraction,
    erk_densities,
    exploration_end,
    is_update_step,
    layer_budgets,
    mask_change,
    sparse_init_,
    uniform_densities,
)

Distribution = Literal["erk", "uniform"]
_UNSUPPORTED_STRATEGIES = ("FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy")


def _patterns(value: str | Sequence[str] | None, argument: str) -> tuple[str, ...] | None:
    """Normalise a pattern argument; a bare string is one pattern (never a substring test)."""
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    if not all(isinstance(v, str) for v in value):
        raise TypeError(f"{argument} must be a list of fnmatch patterns (strings), got {value!r}")
    return tuple(value)


def _check_positive_int(value: int, argument: str, hint: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{argument} must be a positive integer, got {value!r}; {hint}")


class DynamicSparsityCallback(Callback):
    """Shared engine of the dynamic sparse training callbacks.

    Subclasses provide the initial mask (:meth:`initial_mask`) and one layer's topology update
    (:meth:`layer_update`). See :class:`~lightning_srigl.callbacks.SRigLCallback` for the arguments.
    """

    metric_prefix = "sparsity"

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
    ) -> None:
        self.sparsity = check_sparsity(sparsity)
        if distribution not in ("erk", "uniform"):
            raise ValueError(f"distribution must be 'erk' or 'uniform', got {distribution!r}")
        _check_positive_int(delta_t, "delta_t", "it is the number of optimizer steps between updates (paper: 100)")
        if not 0.0 < t_end_fraction <= 1.0:
            raise ValueError(f"t_end_fraction must be in (0, 1], got {t_end_fraction}; 0.75 stops updates at 75%")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha (initial drop fraction) must be in [0, 1], got {alpha}; the paper uses 0.3")
        _check_positive_int(grad_accumulation_n, "grad_accumulation_n", "use 1 to grow by the last gradient only")
        if grad_accumulation_n > delta_t:
            raise ValueError(f"grad_accumulation_n={grad_accumulation_n} must not exceed delta_t={delta_t}")
        if log_every_n_steps is not None:
            _check_positive_int(log_every_n_steps, "log_every_n_steps", "or None to log only at updates")
        self.distribution = distribution
        self.delta_t = delta_t
        self.t_end_fraction = t_end_fraction
        self.alpha = alpha
        self.include = _patterns(include, "include")
        self.exclude = _patterns(exclude, "exclude") or ()
        self.dense = _patterns(dense, "dense") or ()
        self.sparse_init = sparse_init
        self.init_std_quirk = init_std_quirk
        self.grad_accumulation_n = grad_accumulation_n
        self.seed = int(seed)
        self.log_every_n_steps = log_every_n_steps
        self.report = report
        self.masked: MaskedParameters | None = None
        self.budgets: dict[str, int] = {}
        self.t_end: int | None = None
        self.skipped_updates = 0
        self.history: list[dict[str, Any]] = []
        self._generator = torch.Generator().manual_seed(self.seed)
        self._ever_active: dict[str, Tensor] = {}
        self._grad_sums: dict[str, Tensor] = {}
        self._grads_finite = True
        self._last_step = 0

    # ---- what a method must provide -------------------------------------------------------
    def initial_mask(self, fqn: str, shape: torch.Size, budget: int, generator: torch.Generator) -> Tensor:
        """Initial ``BoolTensor(shape)`` with ``budget`` (or fewer, by construction) active weights."""
        raise NotImplementedError

    def layer_update(
        self, fqn: str, weight: Tensor, mask: Tensor, dense_grad: Tensor, budget: int, drop_fraction: float
    ) -> tuple[Tensor, Tensor]:
        """One layer's topology update: ``(new_mask, grown)``, both ``BoolTensor(weight.shape)``."""
        raise NotImplementedError

    def allocate_densities(self, names: list[str], shapes: list[tuple[int, ...]], pinned: list[int]) -> list[float]:
        """Per-layer densities of the selected weights (``pinned`` indices stay dense; 1.0 = no mask)."""
        allocate = erk_densities if self.distribution == "erk" else uniform_densities
        return allocate(shapes, self.sparsity, dense=pinned)

    def configure_layers(self, fqns: list[str]) -> None:
        """Resolve method-specific per-layer options once the sparse layers are known."""

    def config(self) -> dict[str, Any]:
        """The arguments that define the run; a checkpoint written with other values cannot resume it."""
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
        }

    # ---- Lightning hooks ------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._check_trainer(trainer)
        self._reset_run_state()
        self._build_layers(pl_module)
        assert self.masked is not None
        if self.masked.is_installed():
            rank_zero_info(f"{type(self).__name__}: reusing the masks already installed on the model")
        elif stage == "fit":
            self._install_initial_masks()
        else:  # placeholders, so that a sparse checkpoint can be loaded for evaluation
            self.masked.install_({fqn: torch.ones(self.masked.param(fqn).shape, dtype=torch.bool) for fqn in self.masked.fqns})
        self._ever_active = {fqn: m.clone() for fqn, m in self.masked.masks().items()}
        self._check_ranks_agree(trainer)

    def _reset_run_state(self) -> None:
        """Forget a previous fit's schedule; a checkpoint restored after ``setup`` refills it."""
        self._generator.manual_seed(self.seed)
        self.t_end = None
        self.skipped_updates = 0
        self.history = []
        self._grad_sums, self._grads_finite = {}, True

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
        masks = self.masked.masks()
        self._ever_active = {fqn: ever.to(masks[fqn].device) for fqn, ever in self._ever_active.items()}
        self._grad_sums = {fqn: g.to(masks[fqn].device) for fqn, g in self._grad_sums.items()}
        self._last_step = trainer.global_step
        if trainer.global_step == 0:
            self._log(trainer, self._metrics(), step=0)

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        assert self.masked is not None
        if self._in_grad_window(trainer.global_step + 1):
            self._accumulate_dense_grads()
        self.masked.apply_to_gradients_()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step == self._last_step:
            return  # a micro-batch of gradient accumulation: no optimizer step happened
        self._last_step = step
        assert self.masked is not None and self.t_end is not None
        self.masked.apply_to_weights_()
        if is_update_step(step, self.delta_t, self.t_end):
            self._update_topology(trainer, step)
        elif self.log_every_n_steps and step % self.log_every_n_steps == 0:
            self._log(trainer, self._metrics(), step)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.report or not trainer.is_global_zero or self.masked is None:
            return
        stats = self._layer_stats()
        print_layer_table(stats, title=f"{type(self).__name__}: sparse layers at the end of fit")
        path = save_active_neurons_plot(stats, self.history, Path(trainer.log_dir or ".") / "active_neurons.png")
        rank_zero_info(f"{type(self).__name__}: active-neurons plot saved to {path}")

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.config(),
            "t_end": self.t_end,
            "generator": self._generator.get_state(),
            "grad_sums": {fqn: g.to("cpu", copy=True) for fqn, g in self._grad_sums.items()},
            "grads_finite": self._grads_finite,
            "ever_active": {fqn: e.to("cpu", copy=True) for fqn, e in self._ever_active.items()},
            "skipped_updates": self.skipped_updates,
            "history": list(self.history),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved, current = state_dict["config"], self.config()
        diff = {k: (saved.get(k), current.get(k)) for k in current.keys() | saved.keys() if saved.get(k) != current.get(k)}
        if diff:
            details = "; ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in sorted(diff.items()))
            raise ValueError(
                f"{type(self).__name__} arguments differ from the checkpoint's ({details}). Resume with the "
                "same arguments, or start a new run from the weights without ckpt_path."
            )
        self.t_end = state_dict["t_end"]
        self._generator.set_state(state_dict["generator"])
        self._grad_sums = dict(state_dict["grad_sums"])
        self._grads_finite = state_dict["grads_finite"]
        self._ever_active = dict(state_dict["ever_active"])
        self.skipped_updates = state_dict["skipped_updates"]
        self.history = list(state_dict["history"])

    # ---- steps of the algorithm -----------------------------------------------------------
    def _check_trainer(self, trainer: Trainer) -> None:
        strategy = type(trainer.strategy).__name__
        if strategy in _UNSUPPORTED_STRATEGIES:
            raise ValueError(f"{type(self).__name__} does not support {strategy} (sharded weights); use DDP")
        others = [c for c in trainer.callbacks if isinstance(c, DynamicSparsityCallback) and c is not self]
        if others:
            raise ValueError(f"Use one dynamic sparsity callback per Trainer; also found {type(others[0]).__name__}")

    def _build_layers(self, pl_module: LightningModule) -> None:
        """Select sparse weights, allocate densities and integer budgets; dense layers get no mask."""
        selected = select_parameters(pl_module, include=self.include, exclude=self.exclude)
        names = [p.fqn for p in selected]
        check_patterns_match(self.dense, names, "dense")
        shapes = [tuple(p.shape) for p in selected]
        pinned = [i for i, name in enumerate(names) if matches(name, self.dense)]
        densities = self.allocate_densities(names, shapes, pinned)
        budgets = layer_budgets(shapes, densities)
        sparse = [i for i, d in enumerate(densities) if d < 1.0]
        if not sparse:
            rank_zero_warn(f"{type(self).__name__}: every selected layer is dense at sparsity {self.sparsity}")
        self.masked = MaskedParameters([selected[i] for i in sparse])
        self.budgets = {names[i]: budgets[i] for i in sparse}
        self.configure_layers(self.masked.fqns)

    def _install_initial_masks(self) -> None:
        assert self.masked is not None
        masks = {}
        for fqn, budget in self.budgets.items():
            shape = self.masked.param(fqn).shape
            try:
                masks[fqn] = self.initial_mask(fqn, shape, budget, self._generator)
            except ValueError as error:
                raise ValueError(f"sparse layer {fqn!r}: {error}") from error
        self.masked.install_(masks)
        self.masked.apply_to_weights_()
        if self.sparse_init:
            for fqn, mask in self.masked.masks().items():
                sparse_init_(self.masked.param(fqn).data, mask, self._generator, std_quirk=self.init_std_quirk)

    def _in_grad_window(self, step: int) -> bool:
        """Whether optimizer step ``step``'s gradient feeds the next update (the last ``n`` steps before it)."""
        assert self.t_end is not None
        next_update = -(-step // self.delta_t) * self.delta_t
        return next_update - step < self.grad_accumulation_n and is_update_step(next_update, self.delta_t, self.t_end)

    @torch.no_grad()
    def _accumulate_dense_grads(self) -> None:
        """Add this step's dense gradient / n into the growth-score sums; note whether all are finite."""
        assert self.masked is not None
        finite = []
        for fqn in self.masked.fqns:
            param = self.masked.param(fqn)
            grad = param.grad if param.grad is not None else torch.zeros_like(param)
            finite.append(torch.isfinite(grad).all())
            scaled = grad.detach() / self.grad_accumulation_n
            self._grad_sums[fqn] = self._grad_sums[fqn].add_(scaled) if fqn in self._grad_sums else scaled
        if finite:
            self._grads_finite = self._grads_finite and bool(torch.stack(finite).all())

    @torch.no_grad()
    def _update_topology(self, trainer: Trainer, step: int) -> None:
        """Replace connections in every sparse layer; skip the whole update on non-finite inputs."""
        assert self.masked is not None and self.t_end is not None
        grads, finite = self._grad_sums, self._grads_finite
        self._grad_sums, self._grads_finite = {}, True
        weights = {fqn: self.masked.param(fqn) for fqn in self.masked.fqns}
        finite = finite and all(bool(torch.isfinite(w).all()) for w in weights.values())
        if not finite or grads.keys() != weights.keys():
            self.skipped_updates += 1
            reason = "non-finite gradients or weights" if not finite else "no dense gradient was captured"
            rank_zero_warn(f"{type(self).__name__}: skipped the topology update at step {step} ({reason})")
            self._log(trainer, {f"{self.metric_prefix}/skipped_updates": float(self.skipped_updates)}, step)
            return
        drop_fraction = cosine_drop_fraction(step, self.t_end, self.alpha)
        changed: dict[str, int] = {}
        for fqn, weight in weights.items():
            old = self.masked.mask(fqn).clone()
            new, grown = self.layer_update(fqn, weight.data, old, grads[fqn].abs(), self.budgets[fqn], drop_fraction)
            self.masked.set_mask_(fqn, new)
            weight.data.masked_fill_(new.logical_not(), 0)
            for optimizer in trainer.optimizers:
                zero_optimizer_state_(optimizer, weight, new.logical_not() | grown)
            self._ever_active[fqn] |= new
            changed[fqn] = mask_change(old, new)
        self._check_ranks_agree(trainer)
        metrics = self._metrics()
        self.history.append(self._history_record(step, drop_fraction, changed, metrics))
        metrics[f"{self.metric_prefix}/drop_fraction"] = drop_fraction
        metrics[f"{self.metric_prefix}/mask_change"] = float(sum(changed.values()))
        metrics.update({f"{self.metric_prefix}/{fqn}/mask_change": float(n) for fqn, n in changed.items()})
        metrics[f"{self.metric_prefix}/skipped_updates"] = float(self.skipped_updates)
        self._log(trainer, metrics, step)

    # ---- observability and checks ----------------------------------------------------------
    def _layer_stats(self) -> list[LayerStats]:
        assert self.masked is not None
        return [layer_stats(fqn, mask, self._ever_active[fqn]) for fqn, mask in self.masked.masks().items()]

    def _metrics(self) -> dict[str, float]:
        return topology_metrics(self._layer_stats(), self.metric_prefix)

    def _history_record(
        self, step: int, drop_fraction: float, changed: dict[str, int], metrics: dict[str, float]
    ) -> dict[str, Any]:
        p = self.metric_prefix
        return {
            "step": step,
            "drop_fraction": drop_fraction,
            "mask_change": dict(changed),
            "active_neurons_pct": {fqn: metrics[f"{p}/{fqn}/active_neurons_pct"] for fqn in changed},
            "fan_in": {fqn: metrics[f"{p}/{fqn}/fan_in"] for fqn in changed},
        }

    @staticmethod
    def _log(trainer: Trainer, metrics: dict[str, float], step: int) -> None:
        """Write straight to the loggers (like LearningRateMonitor), whatever Trainer.log_every_n_steps is."""
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)

    def _check_ranks_agree(self, trainer: Trainer) -> None:
        """Under DDP, compare a cheap per-layer mask fingerprint across ranks; raise if they differ."""
        if trainer.world_size <= 1 or self.masked is None or not self.masked.fqns:
            return
        fingerprint = torch.stack(
            [torch.stack([m.sum(), m.flatten().nonzero().sum()]) for m in self.masked.masks().values()]
        )
        gathered = trainer.strategy.all_gather(fingerprint)
        if not bool((gathered == gathered[0]).all()):
            raise RuntimeError(
                f"{type(self).__name__}: masks differ across DDP ranks. The update is deterministic given "
                "identical gradients; check that every rank runs the same model and data order per step."
            )
