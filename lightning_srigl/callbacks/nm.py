"""``NMSparsityCallback``: train N:M sparse networks from scratch with SR-STE (Zhou et al., ICLR 2021).

SR-STE keeps dense weights ``W`` but runs every forward and backward with ``W * mask``, where the
mask keeps the ``n`` largest ``|W|`` of every ``m`` consecutive inputs (optionally a transposable
N:M mask, Hubara et al., NeurIPS 2021) and is recomputed every ``mask_interval`` optimizer steps.
The gradient at the sparse point reaches *every* dense weight (straight-through estimator), plus the
sparse-refined term ``lambda_w * (1 - mask) * W`` that decays only the pruned weights.

How it is done here, without autograd functions, hooks or parametrizations: the parameter itself
holds ``W * mask`` and the pruned values ``P = (1 - mask) * W`` wait in the callback, as a tensor of
the weight's shape (zero at kept positions). The ordinary backward then yields ``dL/d(W * mask)`` for
every entry, which *is* the STE gradient of the dense ``W``. In ``on_before_optimizer_step`` (after
AMP unscaling, DDP averaging and gradient accumulation) the pruned values are put back, ``W += P``,
and the SR term, which is exactly ``lambda_w * P``, is added to ``p.grad``: two ``torch._foreach_add_``
calls over all layers, once per step, so ``lambda_w`` does not scale with the number of processes,
accumulation steps or the loss scale (the reference code's in-backward placement does). Right after
the step the mask is recomputed and the pruned values are set aside again
([`move_inactive_`][lightning_srigl.masking.move_inactive_]: exact, no allocation). Outside that window the
model is exactly N:M, so validation, checkpoints' model weights, ``AccelerateCallback`` and any code
touching ``module.weight`` directly (tied weights, ``nn.MultiheadAttention``) all see the sparse
network.

Checkpoints: the masks are ``<param>_mask`` buffers of the model; the pruned values and counters are
this callback's ``state_dict`` (1-D, the entries at ``~mask`` in row-major order), so
``trainer.fit(ckpt_path=...)`` resumes the exact trajectory. A weights-only checkpoint restarts the
pruned values at zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch import Tensor
from typing_extensions import override

from lightning_srigl.callbacks.arguments import as_integer, as_real, check_choice, check_flag, check_patterns
from lightning_srigl.callbacks.sparsity_callback import SparsityCallback, log_metrics
from lightning_srigl.logs import rank_zero_info
from lightning_srigl.masking import MaskedParameters, move_inactive_, select_structured_parameters
from lightning_srigl.sparsity.nm import check_nm, is_nm, nm_mask
from lightning_srigl.sparsity.structure import Structure
from lightning_srigl.sparsity.transposable import check_transposable_nm, is_transposable_nm, transposable_nm_mask

Transposable = Literal["greedy", "exact"]


class NMSparsityCallback(SparsityCallback):
    """SR-STE N:M sparse training; at the end of fit every selected weight is exactly N:M.

    Args:
        n: keep ``n`` of every ``m`` consecutive weights along the input dimension (conv: input
            channels at each kernel position); ``None``: 2, or what ``structure`` says.
        m: the group size of ``n``; ``None``: 4, or what ``structure`` says.
        lambda_w: strength of the sparse-refined decay on pruned weights; 0 is the plain STE. SR-STE
            was tuned with SGD + momentum; with Adam(W) it is reported to work less well.
        mask_interval: recompute the masks every this many optimizer steps (the reference SR-STE
            recomputes every step; transposable training used 40).
        transposable: ``None`` for plain N:M; ``"exact"`` or ``"greedy"`` for transposable N:M masks
            (every ``m x m`` out x in tile keeps ``n`` per row and column; the greedy may keep fewer).
        include: fnmatch patterns of fully-qualified weight names to sparsify (``None``: every
            Linear, Conv1d/2d/3d and MultiheadAttention projection).
        exclude: patterns removed from the selection.
        keep_first_dense: leave the model's first sparsifiable layer dense (a stem conv rarely has a
            multiple of ``m`` inputs).
        keep_last_dense: leave the model's last sparsifiable layer (the head, which is small) dense.
        log_every_n_steps: log mask flips (SAD) per layer and globally every this many steps.
        structure: the pattern written once, e.g. ``"2:4"`` (the spelling ``SRigLCallback`` and
            ``convert`` take, `Structure.parse`); instead of ``n``
            and ``m``.

    Layers whose input (or, for transposable masks, output) dimension is not divisible by ``m`` stay
    dense with a logged message, unless an ``include`` pattern names them: then ``setup`` raises.
    Frozen layers (``requires_grad=False``) stay dense with a warning.
    """

    mask_defining = frozenset({"n", "m", "transposable", "include", "exclude", "keep_first_dense", "keep_last_dense"})

    def __init__(
        self,
        n: int | None = None,
        m: int | None = None,
        lambda_w: float = 2e-4,
        mask_interval: int = 1,
        transposable: Transposable | None = None,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] = (),
        keep_first_dense: bool = True,
        keep_last_dense: bool = True,
        log_every_n_steps: int = 50,
        structure: str | Structure = "n:m",
    ) -> None:
        super().__init__()
        n = None if n is None else as_integer(n, "n", 1)
        m = None if m is None else as_integer(m, "m", 2)
        parsed = Structure.parse(structure, n, m)
        if parsed.nm is None:
            raise ValueError(f"NMSparsityCallback trains N:M patterns, got structure={structure!r}; use SRigLCallback")
        self.n, self.m = parsed.nm
        self.lambda_w = as_real(lambda_w, "lambda_w", "the SR-STE decay of pruned weights, e.g. 2e-4 (0: plain STE)")
        if self.lambda_w < 0:
            raise ValueError(f"lambda_w must be >= 0, got {lambda_w}.")
        self.mask_interval = as_integer(mask_interval, "mask_interval", 1, "recompute the masks every this many steps")
        self.log_every_n_steps = as_integer(log_every_n_steps, "log_every_n_steps", 1)
        self.transposable = check_choice(transposable, "transposable", (None, "greedy", "exact"))
        self.include = check_patterns(include, "include")
        self.exclude = check_patterns(exclude, "exclude") or ()
        self.keep_first_dense = check_flag(keep_first_dense, "keep_first_dense")
        self.keep_last_dense = check_flag(keep_last_dense, "keep_last_dense")
        self.masked: MaskedParameters | None = None
        self._pruned: dict[str, Tensor] = {}  # fqn -> (1 - mask) * W, weight-shaped
        self._dense = False  # True between on_before_optimizer_step and the end of that batch
        self._flips: dict[str, Tensor] = {}  # fqn -> mask flips since the last log (0-dim int64)
        self._updates_since_log = 0
        self._loaded: dict[str, Any] | None = None

    # -- mask math glue ---------------------------------------------------------------------------
    def _check_shape(self, shape: tuple[int, ...]) -> None:
        if self.transposable is None:
            check_nm(shape, self.n, self.m)
        else:
            check_transposable_nm(shape, self.n, self.m)

    def _mask_of(self, weight: Tensor) -> Tensor:
        """Bool mask ``weight.shape`` of the largest ``|weight|`` under the (transposable) N:M pattern."""
        if self.transposable is None:
            return nm_mask(weight.detach().abs(), self.n, self.m)
        return transposable_nm_mask(weight.detach().abs(), self.n, self.m, method=self.transposable).mask

    def _masks(self) -> MaskedParameters:
        if self.masked is None:
            raise RuntimeError("NMSparsityCallback has no masks yet: it is set up by trainer.fit().")
        return self.masked

    # -- Lightning hooks --------------------------------------------------------------------------
    @override
    def setup_fit(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Select the layers and register their ``<param>_mask`` buffers (before a checkpoint loads)."""
        if not pl_module.automatic_optimization:
            raise RuntimeError(
                "NMSparsityCallback needs automatic optimization (one optimizer step per batch); the "
                "LightningModule sets automatic_optimization = False."
            )
        selected, skipped = select_structured_parameters(
            pl_module, self._check_shape, self.include, self.exclude, self.keep_first_dense, self.keep_last_dense
        )
        for fqn, reason in skipped.items():
            rank_zero_info(f"NMSparsityCallback: {fqn} stays dense ({reason}).")
        self.masked = MaskedParameters(self.select_trainable(selected))
        if self.adopt_existing_masks(pl_module, self.masked.fqns):
            rank_zero_info("NMSparsityCallback: training on with the masks already installed on the model")
            return
        self.masked.install_({fqn: self._mask_of(self.masked.param(fqn)) for fqn in self.masked.fqns})

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Check the masks, then sparsify the weights: set the pruned values aside (or take them from the
        checkpoint)."""
        super().on_fit_start(trainer, pl_module)
        masked = self._masks()
        loaded, self._loaded = self._loaded, None
        if loaded is not None and loaded["pruned"]:
            self._restore_state(loaded)
            return
        # A fresh run, or a checkpoint written after fit ended (its pruned values were dropped: zeros).
        self._flips = {fqn: torch.zeros((), dtype=torch.long, device=masked.param(fqn).device) for fqn in masked.fqns}
        self._set_aside_pruned()

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        """Put the pruned values back (dense step) and add ``lambda_w * (1 - mask) * W`` to the gradients."""
        if self._dense:
            return
        self._check_gradients_unscaled(trainer, optimizer)
        masked = self._masks()
        self._dense = True
        if not masked.fqns:
            return  # no sparse layer (setup warned): nothing to put back
        params = [masked.param(fqn) for fqn in masked.fqns]
        pruned = [self._pruned[fqn] for fqn in masked.fqns]
        with torch.no_grad():
            torch._foreach_add_([p.detach() for p in params], pruned)  # W is zero at ~mask: W + P is dense W
            with_grad = [(p.grad, values) for p, values in zip(params, pruned) if p.grad is not None]
            if with_grad and self.lambda_w > 0:  # sr_ste_refine_term(W, mask, lambda_w) == lambda_w * P
                grads, values = zip(*with_grad)
                torch._foreach_add_(list(grads), list(values), alpha=self.lambda_w)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """After an optimizer step: recompute the masks when due, set the pruned values aside, log."""
        if not self._dense:
            return  # a gradient-accumulation micro-batch: no step happened
        if trainer.global_step % self.mask_interval == 0:
            self._update_masks()
        self._set_aside_pruned()
        if trainer.global_step % self.log_every_n_steps == 0:
            self._log_flips(trainer)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Drop the pruned values: from here on the weights are the N:M network, zero outside the masks."""
        masked = self._masks()
        for fqn, mask in masked.masks().items():
            if not self._is_structured(mask) or bool(masked.param(fqn)[~mask].any()):
                raise RuntimeError(f"NMSparsityCallback: {fqn} is not {self.n}:{self.m} sparse at the end of fit.")
        self._pruned = {}
        rank_zero_info(f"NMSparsityCallback: {len(masked.fqns)} weights are {self.n}:{self.m} sparse.")

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """Leave the model sparse if training stopped between the dense step and the re-masking."""
        if self._dense:
            self._set_aside_pruned()

    # -- state --------------------------------------------------------------------------------------
    @override
    def resumable_state(self) -> dict[str, Any]:
        """Pruned values (the dense weights' missing half) and flip counters; masks live in the model."""
        masks = self.masked.masks() if self.masked is not None else {}
        return {
            "pruned": {fqn: values[~masks[fqn]].to("cpu", copy=True) for fqn, values in self._pruned.items()},
            "flips": {fqn: count.to("cpu", copy=True) for fqn, count in self._flips.items()},
            "updates_since_log": self._updates_since_log,
        }

    @override
    def state_defaults(self) -> dict[str, Any]:
        """Without pruned values (a weights-only or older checkpoint) the pruned weights restart at zero."""
        return {"pruned": {}, "flips": {}, "updates_since_log": 0}

    @override
    def restore_state(self, state: dict[str, Any]) -> None:
        """Keep the checkpoint's state until ``on_fit_start``, when the model's masks are loaded too."""
        self._loaded = state

    @override
    def config(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "m": self.m,
            "transposable": self.transposable,
            "include": list(self.include) if self.include is not None else None,
            "exclude": list(self.exclude),
            "keep_first_dense": self.keep_first_dense,
            "keep_last_dense": self.keep_last_dense,
            "lambda_w": self.lambda_w,
            "mask_interval": self.mask_interval,
        }

    @override
    def mask_problem(self, fqn: str, mask: Tensor, rows: Tensor) -> str | None:
        if not self._is_structured(mask):
            return f"not {'transposable ' if self.transposable else ''}{self.n}:{self.m} sparse"
        return super().mask_problem(fqn, mask, rows)

    # -- helpers ------------------------------------------------------------------------------------
    def _is_structured(self, mask: Tensor) -> bool:
        if self.transposable is None:
            return is_nm(mask, self.n, self.m)
        return is_transposable_nm(mask, self.n, self.m, exact=self.transposable == "exact")

    @torch.no_grad()
    def _set_aside_pruned(self) -> None:
        """Move ``(1 - mask) * W`` of every sparse weight into its pruned-values tensor, leaving ``W * mask``."""
        masked = self._masks()
        for fqn in masked.fqns:
            weight = masked.param(fqn).detach()
            pruned = self._pruned.get(fqn)
            if pruned is None or (pruned.shape, pruned.dtype, pruned.device) != (
                weight.shape,
                weight.dtype,
                weight.device,
            ):
                pruned = self._pruned[fqn] = torch.empty_like(weight)
            move_inactive_(weight, masked.step_mask(fqn, weight), pruned)
        self._dense = False

    @torch.no_grad()
    def _update_masks(self) -> None:
        """Recompute every mask from the dense ``|W|`` and count the flips (kept on device, no sync)."""
        masked = self._masks()
        for fqn, old in masked.masks().items():
            new = self._mask_of(masked.param(fqn))
            self._flips[fqn] += torch.count_nonzero(old != new)
            masked.set_mask_(fqn, new)
        self._updates_since_log += 1

    def _log_flips(self, trainer: pl.Trainer) -> None:
        """Log mask flips (SAD between consecutive masks) summed since the last log, and the flip rate.

        Like the other sparsity callbacks, metrics go straight to the loggers on rank 0 (masks agree
        across ranks), as ``nm/mask_change``, ``nm/<param>/mask_change`` and ``nm/flip_rate`` (flips
        per weight per mask update).
        """
        if self._updates_since_log == 0:
            return
        masked = self._masks()
        flips = {fqn: int(count) for fqn, count in self._flips.items()}
        numel = sum(masked.param(fqn).numel() for fqn in masked.fqns)
        metrics = {f"nm/{fqn}/mask_change": float(count) for fqn, count in flips.items()}
        metrics["nm/mask_change"] = float(sum(flips.values()))
        metrics["nm/flip_rate"] = metrics["nm/mask_change"] / (numel * self._updates_since_log)
        log_metrics(trainer, metrics, trainer.global_step)
        for count in self._flips.values():
            count.zero_()
        self._updates_since_log = 0

    def _restore_state(self, state: dict[str, Any]) -> None:
        """Install a checkpoint's pruned values after checking they fit the loaded masks."""
        masked = self._masks()
        if set(state["pruned"]) != set(masked.fqns):
            raise ValueError(
                f"The checkpoint's NMSparsityCallback state covers {sorted(state['pruned'])} but this run "
                f"sparsifies {masked.fqns}: use the same include/exclude/keep_*_dense settings as the run that "
                "wrote it."
            )
        for fqn, mask in masked.masks().items():
            weight = masked.param(fqn)
            values = state["pruned"][fqn].to(device=weight.device, dtype=weight.dtype)
            if values.numel() != int((~mask).sum()):
                raise ValueError(f"Checkpoint pruned values of {fqn} do not match its mask; the checkpoint is corrupt.")
            self._pruned[fqn] = pruned = torch.zeros_like(weight)
            pruned[~mask] = values  # the order of resumable_state's values[~mask]
            self._flips[fqn] = state["flips"].get(fqn, torch.zeros((), dtype=torch.long)).to(weight.device)
        self._updates_since_log = state["updates_since_log"]

    @staticmethod
    def _check_gradients_unscaled(trainer: pl.Trainer, optimizer: torch.optim.Optimizer) -> None:
        """Refuse fused optimizers under a GradScaler: their gradients are still scaled at this hook."""
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is not None and getattr(optimizer, "_step_supports_amp_scaling", False):
            raise RuntimeError(
                "NMSparsityCallback adds the SR-STE term to unscaled gradients, but this fused optimizer "
                "unscales inside step(). Use the optimizer with fused=False, or precision='bf16-mixed'."
            )
