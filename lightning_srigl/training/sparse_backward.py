"""Masked ``nn.Linear`` layers whose weight gradient is computed only at active positions.

With simulated sparsity the backward of a linear layer computes the dense weight gradient
``go^T x`` (``(out, in)``, as many flops as the forward) and the sparsity callback then zeroes the
inactive part. `SparseBackward` makes the layer compute it only where the mask is active
([`sampled_product`][lightning_srigl.kernels.sampled.sampled_product], the dense flops times the density) and
``+0`` elsewhere, which is what the zeroing leaves anyway: the masked gradient is the same up to the
order of the floating-point sums. The input gradient ``go W`` and the bias gradient stay dense.

It applies to an fp32 ``nn.Linear`` (or a subclass that keeps its ``forward``) on the CPU, called on
a plain tensor while autograd records and no CPU autocast, ``torch.compile`` tracing or ``torch.func``
transform is active, and only on steps where `SparseBackward.enabled` is True: the dynamic
sparsity callbacks switch it off for the steps whose dense gradient scores the next topology update.
Everywhere else the layer runs its own ``forward``. A backward with ``create_graph=True`` takes the
differentiable dense gradient, masked, so gradient penalties keep working. The layers are patched by
an instance attribute ``forward`` (the class is untouched) and restored by `SparseBackward.remove`.

Under FSDP2 (``fully_shard``, weights sharded by rows) the layer's ``forward`` runs on the whole weight that
FSDP2 gathers before it, and the weight gradient it computes is the whole layer's, which FSDP2 then
reduce-scatters: so the sampled product needs the positions of the whole mask, while each process holds its
rows only. `SparseBackward` gathers them (the mask's rows from every process, a collective) at the first
sparse forward after `SparseBackward.masks_changed`, which the callbacks call on every process after each
topology update, and keeps the whole layout until the next. Each process then computes exactly the
gradient a process of a DDP fit computes on the same data (the same kernel on the same operands), so FSDP2's
reduction of it matches DDP's (see ``docs/distributed.md``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_srigl.derived_cache import DerivedCache
from lightning_srigl.kernels.sampled import SampledLayout, sampled_product, sampled_product_available
from lightning_srigl.masking import MaskedParameters, is_sharded, local_part, whole_tensor

__all__ = ["SparseBackward", "supports_sparse_backward"]


def _has_own_forward(module: nn.Module) -> bool:
    """Whether ``module`` carries an instance ``forward`` other than its class's bound to it (what a
    copy of a patched layer holds, see `_own_forward`)."""
    forward = vars(module).get("forward")
    return forward is not None and not (
        getattr(forward, "__self__", None) is module and getattr(forward, "__func__", None) is type(module).forward
    )


def supports_sparse_backward(module: nn.Module, param_name: str) -> bool:
    """Whether ``module.<param_name>`` is the fp32 CPU weight of a linear layer `SparseBackward`
    can patch: an ``nn.Linear`` (or a subclass that keeps its ``forward``) whose ``forward`` runs (not
    ``nn.MultiheadAttention``'s ``out_proj``, which the attention reads the weight of directly); whole, or
    sharded by rows with FSDP2 (whose ``forward`` sees the gathered whole weight)."""
    if not isinstance(module, nn.Linear) or param_name != "weight":
        return False
    weight = module.weight
    return (
        type(module).forward is nn.Linear.forward
        and not isinstance(module, nn.modules.linear.NonDynamicallyQuantizableLinear)
        and not _has_own_forward(module)
        and weight.dtype == torch.float32
        and local_part(weight).device.type == "cpu"
    )


class _LinearSampledWeightGrad(torch.autograd.Function):
    """``F.linear(x, weight, bias)`` whose backward gives the weight gradient at ``layout``'s positions only.

    Under ``create_graph=True`` (a gradient penalty) the backward is the differentiable dense one,
    ``where(mask, go^T x, 0)``, so a second backward works.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, x: Tensor, weight: Tensor, bias: Tensor | None, layout: SampledLayout, owner: SparseBackward, fqn: str
    ) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.layout, ctx.owner, ctx.fqn = layout, owner, fqn
        ctx.has_bias = bias is not None
        return nn.functional.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, weight = ctx.saved_tensors
        out_features, in_features = weight.shape
        go = grad_output.reshape(-1, out_features)
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_output.matmul(weight)
        if ctx.needs_input_grad[1]:
            if torch.is_grad_enabled():  # create_graph=True: differentiable, dense then masked
                dense = go.t().matmul(x.reshape(-1, in_features))
                mask = ctx.owner.whole_mask(ctx.fqn)
                grad_weight = torch.where(mask, dense, torch.zeros((), dtype=dense.dtype))
            else:
                grad_weight = sampled_product(go, x.reshape(-1, in_features), ctx.layout)
                ctx.owner.record_gradient(ctx.fqn, grad_weight)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = go.sum(0)
        return grad_x, grad_weight, grad_bias, None, None, None


def _own_forward(module: nn.Module) -> object:
    """``module``'s class ``forward`` bound to it: what a copy of a patched layer runs."""
    return type(module).forward.__get__(module)


class _SparseBackwardForward:
    """The instance ``forward`` of one patched layer: the sampled-gradient path when it applies.

    A copy (``copy.deepcopy``, pickling) of the layer gets its class ``forward`` instead: the copy is not
    the callback's to switch.
    """

    def __init__(self, owner: SparseBackward, fqn: str, module: nn.Linear) -> None:
        self.owner, self.fqn, self.module = owner, fqn, module

    def __reduce__(self) -> tuple[object, tuple[nn.Module]]:
        return _own_forward, (self.module,)

    def __call__(self, input: Tensor) -> Tensor:
        module = self.module
        weight = module.weight
        if (
            torch.compiler.is_compiling()
            or not self.owner.enabled
            or not torch.is_grad_enabled()
            or not weight.requires_grad
            or type(input) is not Tensor  # subclasses, nested tensors and functorch wrappers take the class path
            or input.is_nested
            or torch._C._are_functorch_transforms_active()
            or is_sharded(weight)  # a sharded weight outside FSDP2's forward hooks, which gather it
            or weight.dtype != torch.float32
            or input.dtype != torch.float32
            or weight.device.type != "cpu"
            or input.device.type != "cpu"
            or torch.is_autocast_enabled("cpu")
        ):
            return nn.Linear.forward(module, input)
        return _LinearSampledWeightGrad.apply(
            input, weight, module.bias, self.owner.layout(self.fqn), self.owner, self.fqn
        )


class SparseBackward:
    """Patches the masked linear layers of ``masked`` so that their weight gradient is sparse.

    Args:
        masked: the sparse weights; the layers that `supports_sparse_backward` are patched by
            `install`.

    Attributes:
        enabled: whether the patched layers take the sampled path now (the callbacks set it per step).
    """

    def __init__(self, masked: MaskedParameters) -> None:
        self.masked = masked
        self.enabled = True
        self._patched: dict[str, nn.Module] = {}
        self._layouts: DerivedCache[SampledLayout] = DerivedCache()
        self._written: dict[str, tuple[torch.UntypedStorage, int, int]] = {}
        self._whole_layouts: dict[str, SampledLayout] = {}  # of sharded masks, until `masks_changed`

    @property
    def fqns(self) -> list[str]:
        """The weights whose layers are patched."""
        return list(self._patched)

    def install(self) -> list[str]:
        """Patch every supported layer (none without the C++ kernels, which are loaded only when some
        layer qualifies); returns the patched weights' names."""
        candidates = [
            p
            for p in self.masked.params
            if p.fqn not in self._patched and supports_sparse_backward(p.module, p.param_name)
        ]
        if not candidates or not sampled_product_available():
            return self.fqns
        for p in candidates:
            vars(p.module).pop("forward", None)  # a copy's bound class forward (see _own_forward)
            p.module.forward = _SparseBackwardForward(self, p.fqn, p.module)
            self._patched[p.fqn] = p.module
        return self.fqns

    def remove(self) -> None:
        """Give every patched layer its own ``forward`` back."""
        for module in self._patched.values():
            if isinstance(vars(module).get("forward"), _SparseBackwardForward):
                del module.forward
        self._patched.clear()
        self._layouts.clear()
        self._written.clear()
        self._whole_layouts.clear()

    def layout(self, fqn: str) -> SampledLayout:
        """The positions of ``fqn``'s mask, rebuilt when the mask buffer is replaced or changed (its version
        counter moves: ``set_mask_``, ``load_state_dict``, any in-place op; a write through ``mask.data``
        or numpy changes its checksum, see `lightning_srigl.derived_cache`).

        A sharded mask's layout covers the whole mask: gathered from every process's rows at the first call
        after `masks_changed` (a collective: every process that shards the weight makes the same calls)."""
        mask = self.masked.mask(fqn)
        if is_sharded(mask):
            if fqn not in self._whole_layouts:
                self._whole_layouts[fqn] = SampledLayout.from_mask(whole_tensor(mask))
            return self._whole_layouts[fqn]
        layout = self._layouts.get(fqn, (mask,), lambda: SampledLayout.from_mask(mask), (mask,))
        return SampledLayout.from_mask(mask) if layout is None else layout

    def masks_changed(self) -> None:
        """Forget the whole layouts of sharded masks, which no version counter tracks (the processes write their
        own rows): call it on every process whenever the masks change."""
        self._whole_layouts.clear()

    def whole_mask(self, fqn: str) -> Tensor:
        """``fqn``'s mask over the whole weight, ``BoolTensor(out, in)``: the buffer, or for a sharded mask one
        built from its whole layout (no collective: `layout` gathered it for the forward)."""
        mask = self.masked.mask(fqn)
        if not is_sharded(mask):
            return mask
        layout = self.layout(fqn)
        rows = torch.repeat_interleave(torch.arange(layout.shape[0]), layout.row_ptr.diff())
        whole = torch.zeros(layout.shape, dtype=torch.bool)
        whole[rows, layout.cols.long()] = True
        return whole

    def record_gradient(self, fqn: str, grad: Tensor) -> None:
        """Note the weight gradient the sampled backward of ``fqn`` just returned (zero where inactive).

        Its storage is held until `untouched_gradients` reads the note, so no other tensor can be
        allocated at its address meanwhile. Not for a sharded weight: FSDP2 reduce-scatters the gradient into
        a new tensor, so it is never untouched, and holding it would keep the whole layer's gradient alive.
        """
        if is_sharded(self.masked.mask(fqn)):
            return
        self._written[fqn] = (grad.untyped_storage(), grad.data_ptr(), grad._version)

    def untouched_gradients(self) -> set[str]:
        """The weights whose ``.grad`` is exactly what their sampled backward wrote, and forget the notes.

        Such a gradient is ``+0`` at every inactive position already. It is untouched when it is that
        tensor (stolen by autograd's accumulation, the same storage and address) and its version counter
        has not moved: a second contribution (another use of the weight in the graph, gradient
        accumulation over micro-batches), an unscale or any other in-place write through autograd moves
        it. Writes through ``.data`` do not; the callbacks apply this only where no other code runs
        between backward and the optimizer step (see ``DynamicSparsityCallback``).
        """
        untouched = set()
        for fqn, (_storage, address, version) in self._written.items():
            grad = self.masked.param(fqn).grad
            if grad is not None and grad.data_ptr() == address and grad._version == version:
                untouched.add(fqn)
        self._written.clear()
        return untouched
