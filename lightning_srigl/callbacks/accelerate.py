"""``AccelerateCallback``: at the end of ``fit``, swap each sparse layer for its fastest exact kernel."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from itertools import chain
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from lightning_srigl.acceleration.accelerate import (
    AccelerationPlan,
    check_candidates,
    check_quantize,
    fit_inputs_to_layers,
    fold_in_place,
    plan_acceleration,
    rebuild_plan,
    restore_modules,
    snapshot_modules,
    swap_layers,
)
from lightning_srigl.acceleration.attention import (
    attention_sites,
    install_attention,
    projected_sites,
    restore_attention,
    switch_attention,
)
from lightning_srigl.acceleration.report import AccelerationReport
from lightning_srigl.callbacks.arguments import as_integer, check_flag
from lightning_srigl.callbacks.sparsity_callback import check_trainable, log_metrics, run_folder
from lightning_srigl.condensed.kinds.quantized import DEFAULT_ERROR_BUDGET
from lightning_srigl.condensed.kinds.registry import CANDIDATES, accelerated_layers, sparse_kind, sparse_layers
from lightning_srigl.kernels.compiled import check_compile_options, compile_lazily, holder_of
from lightning_srigl.layer_call import LayerCall, record_calls
from lightning_srigl.logs import rank_zero_info
from lightning_srigl.masking import is_sharded, masked_weights, qualified_name, unshard_modules_

REPORT_FILENAME = "acceleration.csv"


class AccelerateCallback(Callback):
    """Make the trained sparse model fast at inference, in place, when ``trainer.fit`` ends.

    During fit it keeps (by reference, no copy) the latest input of every layer of an accelerable
    kind (``nn.Linear``; ``lightning_srigl.condensed.kinds.registry``). At ``on_fit_end`` rank 0 times
    the exact candidates of the masked ones on those real inputs and installs the modules it timed;
    the other ranks build the same choice (broadcast). After an FSDP2 fit (``ModelParallelStrategy``) the
    layers it may change are first gathered into plain modules with whole weights and masks, on every rank.
    The report is printed, logged (``log_metrics``/``log_hyperparams``) and saved as ``acceleration.csv`` in the first
    logger's folder
    (else ``trainer.default_root_dir``) on rank 0. Afterwards ``trainer.test()``, ``trainer.predict()``
    and ``trainer.validate()`` run the accelerated model; a later ``trainer.fit()`` on it is refused
    (its sparse layers are gone), before any weight changes.

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
        warmup, repeats: untimed calls before timing, and the fewest ~1 ms samples per candidate
            (interleaved rounds, fastest sample; see
            [`accelerate`][lightning_srigl.acceleration.accelerate.accelerate]).
        quantize, error_budget: ``"int8"`` also tries int8 layers, calibrated on the captured inputs and
            kept within ``error_budget`` (relative output error); as for ``accelerate``.
        compile: after the swap, compile the innermost module holding the accelerated layers in place
            into one graph (``torch.compile`` with inductor freezing,
            [`lightning_srigl.kernels.compiled`][lightning_srigl.kernels.compiled]);
            it compiles at its first call (the first test/predict batch), which takes the compile time once.
        compile_options: with ``compile``, inductor options over the defaults, as for ``accelerate`` (e.g.
            ``{"cpp_wrapper": True}``: the graph's wrapper in C++, less time per call for graphs of many small steps
            such as decoding, a longer compile; [`compile_lazily`][lightning_srigl.kernels.compiled.compile_lazily]).
        fast_attention: also time the attention of each attention site at fit end, torch's
            ``scaled_dot_product_attention`` against the ``lightning_srigl::attention`` op, and switch to the op where
            it is exact and faster, as ``accelerate(fast_attention=True)`` does
            ([`switch_attention`][lightning_srigl.acceleration.attention.switch_attention]): a Hugging Face model on
            ``"sdpa"`` is timed on the attention calls its forward makes on its latest call of the fit (recorded like
            the layers' inputs; one whose weights FSDP shards keeps torch's attention), a ``ProjectedAttention`` (an
            ``nn.MultiheadAttention`` the swap condensed) on its recorded call; the report's ``attention`` says which
            each kept. ``restore_dense`` and loading a checkpoint written during fit switch back to torch's.
    """

    def __init__(
        self,
        batch_size: int | None = None,
        candidates: Sequence[str] = CANDIDATES,
        fold: bool = True,
        verbose: bool = True,
        warmup: int = 3,
        repeats: int = 10,
        quantize: str | None = None,
        error_budget: float = DEFAULT_ERROR_BUDGET,
        compile: bool = False,
        fast_attention: bool = True,
        compile_options: dict[str, Any] | None = None,
    ) -> None:
        if batch_size is not None:
            batch_size = as_integer(batch_size, "batch_size", 1, "or None to time at the training batch size")
        self.batch_size = batch_size
        self.candidates = check_candidates(candidates)
        self.fold = check_flag(fold, "fold")
        self.verbose = check_flag(verbose, "verbose")
        self.warmup = as_integer(warmup, "warmup", 0)
        self.repeats = as_integer(repeats, "repeats", 1)
        check_quantize(quantize, error_budget)
        self.quantize, self.error_budget = quantize, error_budget
        self.compile = check_flag(compile, "compile")
        self.compile_options = check_compile_options(compile_options, compile=self.compile)
        self.fast_attention = check_flag(fast_attention, "fast_attention")
        self.report: AccelerationReport | None = None
        self._inputs: dict[str, LayerCall] = {}
        self._site_calls: dict[str, LayerCall] = {}  # the Hugging Face attention sites' latest calls
        self._handles: list[RemovableHandle] = []
        self._snapshot: dict[str, nn.Module] = {}
        self._originals: dict[str, nn.Module] = {}
        self._reapply = False
        self._load_hook: RemovableHandle | None = None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Refuse to ``fit`` a model that was already accelerated (before any weight changes)."""
        if stage == "fit":
            check_trainable(pl_module, type(self).__name__)

    # -- capture ---------------------------------------------------------------------------------
    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start keeping the latest input of every accelerable layer (which are sparse is decided at fit
        end, so masks installed by callbacks that run after this one count too) and, with ``fast_attention``, the
        latest call of every Hugging Face attention site whose weights are whole (rank 0 alone runs it at fit end)."""
        layers = {name: layer for name, layer in pl_module.named_modules() if sparse_kind(layer) is not None}
        self._handles = record_calls(layers, self._inputs)
        if self.fast_attention:
            sites = {
                name: site
                for name, site in attention_sites(pl_module).items()
                if not any(is_sharded(tensor) for tensor in site.parameters())
            }
            self._handles += record_calls(sites, self._site_calls, tensor_first=False)

    # -- swap ------------------------------------------------------------------------------------
    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Fold on every rank, time candidates on rank 0, broadcast the choice, swap on every rank."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        sparse = sparse_layers(pl_module)
        inputs = {
            name: call.resized(self.batch_size, sparse_kind(sparse[name].module).batch_dims(sparse[name].module))
            for name, call in self._inputs.items()
            if name in sparse
        }
        self._inputs.clear()
        site_calls = {name: _resized_site_call(call, self.batch_size) for name, call in self._site_calls.items()}
        self._site_calls.clear()
        if not inputs:
            rank_zero_warn("AccelerateCallback: no sparse layer ran during fit; nothing was accelerated.")
            return
        # FSDP2: the layers folding and swapping may change become plain modules with whole weights and masks
        unshard_modules_(pl_module, _foldable_modules(pl_module))
        self._snapshot = snapshot_modules(pl_module, _foldable_modules(pl_module))
        zero = trainer.is_global_zero
        self._fold_and_swap(pl_module, inputs if zero else None, trainer, site_calls if zero else None)
        if trainer.is_global_zero:
            self._publish(trainer, self.report)

    def _fold_and_swap(
        self,
        pl_module: pl.LightningModule,
        inputs: dict[str, LayerCall] | None,
        trainer: pl.Trainer | None = None,
        site_calls: dict[str, LayerCall] | None = None,
    ) -> None:
        """Fold, then plan, swap and switch attention (when ``inputs`` are given: timed on them and on the Hugging
        Face attention sites' ``site_calls``) or install the choice of ``report`` (no timing).

        Keeps shape-only copies of every module it changes, to undo the swap before loading a
        checkpoint written during fit (``_restore_before_load``).
        """
        touched = fold_in_place(pl_module) if self.fold else []
        if inputs is not None:
            was_training = pl_module.training
            pl_module.eval()
            fitted = fit_inputs_to_layers(pl_module, inputs)
            plan = self.choose(pl_module, fitted)
            swap_layers(pl_module, plan)
            self.report = plan.report
            if self.fast_attention:  # the ProjectedAttention layers the swap made are called as their attention was
                calls = (site_calls or {}) | {
                    name: fitted[name] for name in projected_sites(pl_module) if name in fitted
                }
                self.report = self.report.with_attention(self.choose_attention(pl_module, calls))
            pl_module.train(was_training)
        if trainer is not None:
            self.report = trainer.strategy.broadcast(self.report, src=0)
        if inputs is None:  # the ranks that did not time, and re-acceleration after a checkpoint load
            swap_layers(pl_module, rebuild_plan(pl_module, self.report))
            install_attention(pl_module, self.report.attention)
        names = list(dict.fromkeys([*touched, *(row.name for row in self.report.rows)]))
        self._originals = {name: self._snapshot[name] for name in names}
        if self.compile:
            holder = holder_of(pl_module, [row.name for row in self.report.rows])
            compile_lazily(holder, options=self.compile_options)
        _leave_out_of_ddp_sync(pl_module)
        if self._load_hook is None:
            self._load_hook = pl_module.register_load_state_dict_pre_hook(self._restore_before_load)

    def choose(self, pl_module: pl.LightningModule, inputs: dict[str, Tensor]) -> AccelerationPlan:
        """Time the candidates of each sparse layer on its captured input ``(..., in)`` (the model is
        in eval mode) and keep the fastest; override to choose otherwise."""
        return plan_acceleration(
            pl_module, inputs, candidates=self.candidates, warmup=self.warmup, repeats=self.repeats,
            quantize=self.quantize, error_budget=self.error_budget,
        )  # fmt: skip

    def choose_attention(self, pl_module: pl.LightningModule, calls: dict[str, LayerCall]) -> dict[str, str]:
        """Time each attention site on its recorded call (site name -> call; the model is in eval mode, its sparse
        layers swapped) and switch it to the op where exact and faster
        ([`switch_attention`][lightning_srigl.acceleration.attention.switch_attention]); returns site name -> the
        attention kept. Override to choose otherwise."""
        return switch_attention(pl_module, calls, warmup=self.warmup, repeats=self.repeats)

    def _publish(self, trainer: pl.Trainer, report: AccelerationReport) -> None:
        """Rank 0 only: print, log and save the report (nothing here is a collective)."""
        if self.verbose:
            report.print()
        log_metrics(trainer, report.metrics(), trainer.global_step)
        for logger in trainer.loggers:
            logger.log_hyperparams({f"accelerate/{row.name}/kernel": row.chosen for row in report.rows})
            logger.log_hyperparams({f"accelerate/{site}/attention": kept for site, kept in report.attention.items()})
        path = report.to_csv(run_folder(trainer) / REPORT_FILENAME)
        rank_zero_info(f"AccelerateCallback: report saved to {path}")

    # -- checkpoints after the swap ------------------------------------------------------------------
    def _restore_before_load(self, module: nn.Module, state_dict: dict[str, Tensor], prefix: str, *_: object) -> None:
        """``load_state_dict`` pre-hook on the LightningModule: a state dict written before the swap
        (it has the mask of a swapped layer) gets the dense modules back to load into."""
        mask_keys = {
            prefix + qualified_name(name, masked.mask_key)
            for name, original in self._originals.items()
            for masked in masked_weights(original)
        }
        if not mask_keys & state_dict.keys():
            return
        device = next(module.parameters(), torch.empty(0)).device
        restore_modules(module, {n: copy.deepcopy(m).to_empty(device=device) for n, m in self._originals.items()})
        restore_attention(module)
        self._originals = {}
        self._reapply = True

    def _reaccelerate(self, pl_module: pl.LightningModule) -> None:
        """Fold and swap the same kernels in again, built from the weights the checkpoint loaded (outside the stage's
        inference mode: the layers stay usable by ``restore_dense`` and training)."""
        if self._reapply:
            self._reapply = False
            with torch.inference_mode(False):
                self._fold_and_swap(pl_module, inputs=None)

    @override
    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """See ``_reaccelerate``."""
        self._reaccelerate(pl_module)

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """See ``_reaccelerate``."""
        self._reaccelerate(pl_module)

    @override
    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """See ``_reaccelerate``."""
        self._reaccelerate(pl_module)


def _leave_out_of_ddp_sync(pl_module: pl.LightningModule) -> None:
    """Keep the inference layers out of the parameter/buffer broadcast DDP runs when a stage starts.

    Every rank builds them from identical weights, and some of their tensors cannot be broadcast
    (int16 indices: neither gloo nor NCCL has the type; sparse CSR weights).
    """
    names = {
        qualified_name(layer, tensor_name)
        for layer in accelerated_layers(pl_module)
        for tensor_name, _ in chain(
            pl_module.get_submodule(layer).named_parameters(), pl_module.get_submodule(layer).named_buffers()
        )
    }
    ignored = set(getattr(pl_module, "_ddp_params_and_buffers_to_ignore", ()))
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(pl_module, sorted(ignored | names))


def _resized_site_call(call: LayerCall, batch_size: int | None) -> LayerCall:
    """An attention site's ``call`` with its tensors of the first tensor's batch (dim 0) cut or tiled to
    ``batch_size`` (``None``: as it was)."""
    arguments: list[tuple[int | str, object]] = [*enumerate(call.args), *call.kwargs.items()]
    tensors = [(key, v) for key, v in arguments if isinstance(v, Tensor) and v.dim()]
    if not tensors:
        return call
    batch = tensors[0][1].shape[0]
    return call.resized(batch_size, {key: 0 for key, v in tensors if v.shape[0] == batch})


def _foldable_modules(model: nn.Module) -> list[str]:
    """Names of the modules folding or swapping may change (Linear, Conv, BatchNorm, every sparse kind)."""
    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.modules.batchnorm._BatchNorm)
    return [
        name
        for name, module in model.named_modules()
        if name and (isinstance(module, kinds) or sparse_kind(module) is not None)
    ]
