"""``CondensedLinear``: an exact, smaller and faster stand-in for a constant-fan-in masked ``nn.Linear``.

A masked linear layer whose non-empty rows all keep the same number ``k`` of inputs (SRigL layers,
N:M layers) is stored as ``values (A, k)`` and ``indices (A, k)``, one row per *active* output neuron.
Ablated neurons (all-zero mask rows) are dropped; their bias is kept, so the output equals the masked
dense layer's output for every input.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from lightning_srigl.condensed.layers.contract import (
    BACKENDS,
    check_choice,
    dense_linear,
    eager_inference,
    own_mask,
    renamed_constructor,
    validate_after_load,
)
from lightning_srigl.condensed.layers.weight_facts import WeightFacts
from lightning_srigl.derived_cache import LAYOUT_CHECK_WORDS, DerivedCache
from lightning_srigl.kernels.cpu.loader import (
    batch1_forward,
    batch1_layout,
    condensed_linear_cpu,
    condensed_linear_rows_cpu,
    condensed_linear_torch,
    scatter_columns,
)
from lightning_srigl.kernels.layout import condense, pad_fan_in
from lightning_srigl.kernels.linear import condensed_linear, triton_kernels
from lightning_srigl.kernels.linear_rows import condensed_linear_rows
from lightning_srigl.kernels.validation import check_bias, check_condensed, check_width


def _eager_cpu_inference(x2d: Tensor, values: Tensor, bias: Tensor | None) -> bool:
    """[`eager_inference`][lightning_srigl.condensed.layers.contract.eager_inference] for CPU tensors."""
    return x2d.is_cpu and eager_inference(x2d, values, bias)


def _drop_frozen_layout(module: CondensedLinear, _: object) -> None:
    """``load_state_dict`` post hook: the loaded weights outdate a frozen batch-1 layout (a module-level function,
    so that ``torch.save(model)`` can pickle the hook)."""
    module.freeze_for_compile(False)


def _triton_layout(values: Tensor, indices: Tensor, _: Tensor) -> tuple[Tensor, Tensor]:
    """The ``(A, k)`` views over ``(k, A)`` storage that the Triton kernels were designed for."""
    return triton_kernels().prepare_triton_layout(values, indices)


class CondensedLinear(nn.Module):
    """Condensed constant-fan-in linear layer, ``(..., in) -> (..., out)``.

    Buffers: ``values (A, k)`` in the weight's dtype, ``indices (A, k)`` sorted per row (int16 when
    ``in_features <= 32767``, else int32), ``active_rows (A,)`` int64 and ``bias (out,)`` (or None).
    ``backend="auto"`` runs the C++ kernels on CPU and the Triton kernels on CUDA (through the
    ``lightning_srigl::condensed_linear`` op when a gradient is tracked or the call is compiled or
    exported); ``backend="triton"`` runs the Triton kernels on any device they support (CUDA, or CPU
    tensors under ``TRITON_INTERPRET=1``); ``backend="torch"`` runs the pure-torch reference.

    Kernel layouts derived from the buffers (the CPU batch-1 layout, the Triton kernels' ``(k, A)``
    storage) are built on the first call that needs them and kept until the buffers are replaced or
    changed in place (see `_derived_layout`); they are not part of the ``state_dict``.

    Under autocast (``bf16-mixed``, ``16-mixed``) an input in the autocast dtype is cast to the
    layer's dtype: the layer computes in its own dtype, exactly as the masked dense layer would.

    The constructor and ``load_state_dict`` validate the buffers once
    (``check_condensed``: shapes, dtypes, devices, every index
    inside the layer), so the kernels may trust them; a malformed layer raises ``ValueError``.
    """

    def __init__(
        self,
        values: Tensor,
        indices: Tensor,
        active_rows: Tensor,
        bias: Tensor | None,
        in_features: int,
        out_features: int,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.backend = check_choice(backend, BACKENDS, "backend")
        self.in_features = check_width(in_features, "in_features")
        self.out_features = check_width(out_features, "out_features")
        check_condensed(values, indices, active_rows, self.in_features, self.out_features)
        check_bias(bias, self.out_features, values)
        self.register_buffer("values", values)
        self.register_buffer("indices", indices)
        self.register_buffer("active_rows", active_rows.long())
        self.register_buffer("bias", bias)
        self._layouts: DerivedCache[Any] = DerivedCache()  # kernel layouts of the buffers; see _derived_layout
        self.register_load_state_dict_post_hook(validate_after_load)
        self.register_load_state_dict_post_hook(_drop_frozen_layout)

    def check_buffers(self) -> None:
        """Validate the buffers as the constructor does (``check_condensed``, ``check_bias``); run after loading.

        Raises:
            ValueError: naming the tensor that does not fit (and ``active_rows`` that are not int64: the
                constructor converts them, a loaded state dict must hold them so).
        """
        if self.active_rows.dtype != torch.int64:
            raise ValueError(f"active_rows must be int64, got {self.active_rows.dtype}; load active_rows.long()")
        check_condensed(self.values, self.indices, self.active_rows, self.in_features, self.out_features)
        check_bias(self.bias, self.out_features, self.values)

    @classmethod
    def from_dense_weight(
        cls, weight: Tensor, mask: Tensor, bias: Tensor | None = None, backend: str = "auto"
    ) -> CondensedLinear:
        """Build from tensors: a ``(out, in)`` weight, its bool mask and an optional ``(out,)`` bias.

        The weight is read at the mask's positions only. Raises ``ValueError`` unless every non-empty
        mask row keeps the same number of inputs (`from_masked` pads them instead).
        """
        values, indices, active_rows = condense(weight, mask)
        bias = None if bias is None else bias.detach().clone()
        return cls(values, indices, active_rows, bias, weight.shape[1], weight.shape[0], backend)

    @classmethod
    def from_masked(cls, linear: nn.Linear, mask: Tensor | None = None, backend: str = "auto") -> CondensedLinear:
        """The condensed form of ``linear`` with ``weight * mask``.

        ``mask (out, in)`` bool; ``None``: the layer's own mask (`own_mask`: the installed mask, else
        ``weight != 0``). Rows with fewer inputs than the largest fan-in (folding removes inputs) are
        padded with inactive, zero-weight columns up to it, so the layer stays exact for any mask; an
        unstructured mask is better served by ``CSRLinear``.
        """
        mask = own_mask(linear, mask)
        return cls.from_dense_weight(linear.weight.detach() * mask, pad_fan_in(mask), linear.bias, backend)

    from_weight_mask = renamed_constructor("from_weight_mask", "from_dense_weight")
    from_linear = renamed_constructor("from_linear", "from_masked")

    def spec_args(self) -> dict[str, int | str | bool]:
        """Plain constructor facts for [`save_condensed`][lightning_srigl.condensed.serialization.save_condensed]."""
        return {
            "in_features": self.in_features, "out_features": self.out_features, "backend": self.backend,
            "bias": self.bias is not None,
        }  # fmt: skip

    @classmethod
    def from_spec(cls, args: dict[str, object], tensors: dict[str, Tensor]) -> CondensedLinear:
        """Rebuild (validated) from [`spec_args`][lightning_srigl.condensed.layers.linear.CondensedLinear.spec_args] and
        the layer's ``state_dict`` tensors."""
        return cls(
            tensors["values"], tensors["indices"], tensors["active_rows"], tensors.get("bias"),
            args["in_features"], args["out_features"], args.get("backend", "auto"),
        )  # fmt: skip

    @property
    def weight(self) -> WeightFacts:
        """Shape ``(out, in)``, dtype and device of the dense weight this layer replaced, for code that reads
        them (no values: see `dense_weight`)."""
        return WeightFacts((self.out_features, self.in_features), self.values, type(self).__name__)

    @property
    def fan_in(self) -> int:
        """Inputs kept per active neuron (``k``)."""
        return self.values.shape[1]

    @property
    def n_active(self) -> int:
        """Number of active (non-ablated) output neurons ``A``."""
        return self.values.shape[0]

    def forward(self, x: Tensor) -> Tensor:
        """``(..., in) -> (..., out)``; ablated outputs equal their bias."""
        if x.dim() >= 2 and x.numel() == x.shape[-1]:  # one row: (1, in), a decoded token's (1, 1, in), ...
            row = x if x.dim() == 2 else x.view(1, -1)
            layout = self._batch1_layout(row)
            if layout is not None:  # fp32 eager CPU inference at batch 1: one C++ call
                y = batch1_forward(row, layout, self.bias)
                return y if x.dim() == 2 else y.view(*x.shape[:-1], self.out_features)
            if self._frozen_batch1(row):  # the same kernel in a compiled graph, on the layout frozen before it
                bias = self.bias if self.bias is not None else self.frozen_batch1_zeros  # the op's fake needs a bias
                y = batch1_forward(row, self.frozen_batch1_layout, bias)
                return y if x.dim() == 2 else y.view(*x.shape[:-1], self.out_features)
        values = self.values
        if x.shape[-1] != self.in_features or x.dtype != values.dtype:
            x = self._autocast_input(x)
        x2d = x if x.dim() == 2 else x.reshape(-1, self.in_features)
        if not x2d.is_contiguous():
            x2d = x2d.contiguous()
        ablated = values.shape[0] < self.out_features
        if ablated and self.backend == "auto" and x2d.is_cpu:
            # The product stored at the active columns, the ablated ones set to their bias: no scatter pass.
            eager = _eager_cpu_inference(x2d, values, self.bias)
            product = condensed_linear_rows_cpu if eager else condensed_linear_rows
            y = product(x2d, values, self.indices, self.active_rows, self.bias, self.out_features)
        else:
            y = self._product(x2d, values, None if ablated else self.bias)
            if ablated:
                y = scatter_columns(y, self.active_rows, self.bias, self.out_features)
        return y if x.dim() == 2 else y.view(*x.shape[:-1], self.out_features)

    def freeze_for_compile(self, freeze: bool = True) -> None:
        """Keep the batch-1 layout as the non-persistent buffer ``frozen_batch1_layout`` (and for a layer without
        bias, zeros as ``frozen_batch1_zeros``: the op's output width comes from its bias), so that a graph
        compiled afterwards sends one-row inputs to the batch-1 kernel: inductor's freezing makes both
        constants. ``freeze=False`` drops them.

        Called by [`compile_lazily`][lightning_srigl.kernels.compiled.compile_lazily] before it traces, and after
        ``load_state_dict`` (with False); ``torch.export`` does not use them (the layout and the op belong to
        this CPU's kernel variant, a package may run on another). Only the compiled graph reads them (eager
        calls use the cached layout that follows the weights), so values edited afterwards need that compile
        again, as freezing does anyway. Nothing is kept where the batch-1 kernel does not apply (see `_batch1_layout`).
        """
        layout = None
        if freeze and self.backend == "auto" and self.values.is_cpu and self.values.dtype == torch.float32:
            layout = self._build_batch1_layout(self.values, self.indices, self.active_rows)
        zeros = self.values.new_zeros(self.out_features) if layout is not None and self.bias is None else None
        self.register_buffer("frozen_batch1_layout", layout, persistent=False)
        self.register_buffer("frozen_batch1_zeros", zeros, persistent=False)

    def _frozen_batch1(self, row: Tensor) -> bool:
        """Whether a traced call on ``row (1, in)`` may use the frozen batch-1 layout (`freeze_for_compile`): not
        once ``.to()`` has moved or cast the layer (the layout holds the fp32 CPU weights it was frozen from), nor
        under ``torch.export`` (see `freeze_for_compile`)."""
        return (
            self._buffers.get("frozen_batch1_layout") is not None
            and torch.compiler.is_compiling()
            and not torch.compiler.is_exporting()
            and self.values.is_cpu
            and self.values.dtype == torch.float32
            and not torch.is_grad_enabled()
            and row.is_cpu
            and row.dtype == torch.float32
            and row.shape[1] == self.in_features
        )

    def _autocast_input(self, x: Tensor) -> Tensor:
        """``x`` cast to the layer's dtype under autocast on its device; otherwise a ValueError that says why."""
        dtype = self.values.dtype
        if x.shape[-1] == self.in_features and x.is_floating_point() and torch.is_autocast_enabled(x.device.type):
            return x.to(dtype)
        raise ValueError(
            f"expected input (..., {self.in_features}) of dtype {dtype}, got {tuple(x.shape)} "
            f"of dtype {x.dtype}; reshape or cast the input (or call module.to(dtype))"
        )

    def _product(self, x2d: Tensor, values: Tensor, bias_active: Tensor | None) -> Tensor:
        """``(B, in) -> (B, A)`` through the selected backend."""
        backend = self.backend
        if backend == "torch":
            return condensed_linear_torch(x2d, values, self.indices, bias_active)
        if backend == "auto" and _eager_cpu_inference(x2d, values, bias_active):
            # Same kernel as the custom op's CPU implementation, minus the dispatcher's ~15 us per call.
            return condensed_linear_cpu(x2d, values, self.indices, bias_active)
        if (backend == "triton" or x2d.is_cuda) and eager_inference(x2d, values, bias_active):
            kernels = triton_kernels()
            if kernels is not None:  # a direct launch on the (k, A) storage, minus the dispatcher
                values, indices = self._derived_layout("triton", _triton_layout) or (values, self.indices)
                return kernels.condensed_linear_triton(x2d, values, indices, bias_active)
        return condensed_linear(x2d, values, self.indices, bias_active)

    def _batch1_layout(self, x: Tensor) -> Tensor | None:
        """The gather-free batch-1 kernel's layout when ``x (1, in)`` may use it, else None.

        It may when the backend is ``"auto"``, ``x`` is a contiguous fp32 CPU tensor of the right width,
        no gradient is tracked and nothing traces the call.
        """
        if (
            self.backend != "auto"
            or x.dtype != torch.float32
            or x.shape[1] != self.in_features
            or not x.is_contiguous()
            or not _eager_cpu_inference(x, self.values, self.bias)
        ):
            return None
        return self._derived_layout("cpu_batch1", self._build_batch1_layout)

    def _build_batch1_layout(self, values: Tensor, indices: Tensor, rows: Tensor) -> Tensor | None:
        return batch1_layout(values, indices, rows, self.in_features, self.out_features)

    def _derived_layout(self, kind: str, build: Callable[[Tensor, Tensor, Tensor], Any]) -> Any:
        """``build(values, indices, active_rows)``, cached under ``kind`` while those buffers stay the same.

        Rebuilt when a buffer is replaced (``load_state_dict(assign=True)``), changed in place
        (``load_state_dict``, ``copy_``: its version counter moves) or its values are edited past the
        counter wholesale (``layer.values.data.mul_(2)``, a numpy view: the checksum of
        ``LAYOUT_CHECK_WORDS`` strided words changes; see `lightning_srigl.derived_cache`); ``.to()`` and other
        ``_apply`` calls drop every layout. Returns None for buffers created under ``torch.inference_mode``
        (they have no version counter): callers then use the buffers.
        """
        buffers = self._buffers
        values, indices, rows = buffers["values"], buffers["indices"], buffers["active_rows"]
        return self._layouts.get(
            kind, (values, indices, rows), lambda: build(values, indices, rows), (values,), words=LAYOUT_CHECK_WORDS
        )

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> CondensedLinear:
        """Drop the derived layouts (they belong to the old buffers), then move or cast as ``nn.Module`` does."""
        self._layouts = DerivedCache()
        return super()._apply(fn, recurse)

    def _scatter(self, values: Tensor) -> Tensor:
        """``values (A, k)`` (or a tensor of their shape) at their ``(out, in)`` positions, zero elsewhere."""
        rows = values.new_zeros(self.n_active, self.in_features).scatter_(1, self.indices.long(), values)
        weight = values.new_zeros(self.out_features, self.in_features)
        weight[self.active_rows] = rows
        return weight

    def dense_weight(self) -> Tensor:
        """The equivalent masked dense weight ``(out, in)``."""
        return self._scatter(self.values)

    def dense_masks(self) -> dict[str, Tensor]:
        """``{"weight": (out, in) bool}``: the positions the layer keeps."""
        return {"weight": self._scatter(torch.ones_like(self.values, dtype=torch.bool))}

    def to_dense(self) -> nn.Linear:
        """An ``nn.Linear`` with the masked dense weight and the full bias."""
        return dense_linear(self.dense_weight(), self.bias, frozen=False)

    def extra_repr(self) -> str:
        index = str(self.indices.dtype).removeprefix("torch.")
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, fan_in={self.fan_in}, "
            f"active_rows={self.n_active}, index_dtype={index}, bias={self.bias is not None}, backend={self.backend}"
        )
