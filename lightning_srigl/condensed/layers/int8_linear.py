"""``Int8CondensedLinear`` (and `Int8Condensed`, its base, shared with the int8 convolutions): int8 weights, u8
activations, int32 sums, fp32 output; inference only, its error that of int8 quantization (docs/int8.md; the
arithmetic: [`lightning_srigl.kernels.int8`][lightning_srigl.kernels.int8])."""

from __future__ import annotations

from typing import Self

import torch
from torch import Tensor, nn

from lightning_srigl.condensed.layers.contract import dense_linear
from lightning_srigl.condensed.layers.linear import CondensedLinear, _eager_cpu_inference
from lightning_srigl.kernels.cpu.loader import load_extension
from lightning_srigl.kernels.int8 import int8_condensed_linear, window_layout
from lightning_srigl.kernels.int8_layout import calibration_range, check_int8, int8_layout
from lightning_srigl.kernels.validation import check_width

__all__ = ["Int8Condensed", "Int8CondensedLinear"]


def _check_int8_buffers(module: Int8Condensed, incompatible: object = None) -> None:
    """Constructor and ``load_state_dict`` check of the buffers (a load rebuilds the window layout)."""
    check_int8(
        module.weight, module.indices, module.weight_sum, module.weight_scale, module.active_rows, module.bias,
        module.in_features, module.out_features,
    )  # fmt: skip
    if incompatible is not None:
        module.layout = window_layout(module.weight, module.indices, module.in_features)


class Int8Condensed(nn.Module):
    """Rows ``(B, in_features)`` times the active neurons in int8, ``-> (B, out_features)`` fp32 (the linear and conv
    layers' shared part). Buffers: ``weight (A, kp)`` int8 (fan-in padded with zero weights to a multiple of 64),
    ``indices (A, kp)`` (int16 when ``in_features <= 32767``, else int32; 0 in the padding), ``weight_sum (A,)``
    int32 (row sums, for the zero point), ``weight_scale (A,)`` fp32, ``active_rows (A,)`` int64, ``bias (out,)``
    fp32 or None; ``layout`` (not saved) is rebuilt from them (`window_layout`). ``input_scale``/``input_zero``:
    the calibrated activation quantization, or None (dynamic, per row)."""

    def __init__(
        self,
        weight: Tensor,
        indices: Tensor,
        weight_sum: Tensor,
        weight_scale: Tensor,
        active_rows: Tensor,
        bias: Tensor | None,
        in_features: int,
        out_features: int,
        input_scale: float | None = None,
        input_zero: int | None = None,
    ) -> None:
        super().__init__()
        self.in_features = check_width(in_features, "in_features")
        self.out_features = check_width(out_features, "out_features")
        if (input_scale is None) != (input_zero is None) or (
            input_scale is not None and not (input_scale > 0 and 0 <= input_zero <= 255)
        ):
            raise ValueError("input_scale (> 0) and input_zero (in [0, 255]) go together: both, or neither (dynamic)")
        self.input_scale = None if input_scale is None else float(input_scale)
        self.input_zero = None if input_zero is None else int(input_zero)
        self.register_buffer("weight", weight)
        self.register_buffer("indices", indices)
        self.register_buffer("weight_sum", weight_sum)
        self.register_buffer("weight_scale", weight_scale)
        self.register_buffer("active_rows", active_rows.long())
        self.register_buffer("bias", bias)
        _check_int8_buffers(self)
        self.register_buffer("layout", window_layout(weight, indices, self.in_features), persistent=False)
        self.register_load_state_dict_post_hook(_check_int8_buffers)

    def _positions(self) -> Tensor:
        """``(A, kp)`` bool: the real weights (padding repeats index 0 after the row's increasing indices)."""
        real = torch.ones_like(self.indices, dtype=torch.bool)
        real[:, 1:] = self.indices[:, 1:] != 0
        return real

    def _scatter(self, values: Tensor) -> Tensor:
        """``values (A, kp)`` at their ``(out, in)`` positions (padding adds nothing), zero elsewhere."""
        rows = values.new_zeros(self.weight.shape[0], self.in_features)
        rows.scatter_add_(1, self.indices.long(), values * self._positions().to(values.dtype))
        dense = values.new_zeros(self.out_features, self.in_features)
        dense[self.active_rows] = rows
        return dense

    def _dense_rows(self, values: Tensor | None = None) -> Tensor:
        """``(out, in_features)``: ``values (A, kp)`` at their positions, by default the weights (``int8 * scale``)."""
        return self._scatter(self.weight.float() * self.weight_scale[:, None] if values is None else values)

    def _kept(self) -> Tensor:
        return self._dense_rows(torch.ones(self.weight.shape, device=self.weight.device)) != 0  # (out, in) bool

    @classmethod
    def from_spec(cls, args: dict[str, object], tensors: dict[str, Tensor]) -> Self:
        """Rebuild (validated) from ``spec_args()`` and the layer's ``state_dict`` tensors."""
        names = ("weight", "indices", "weight_sum", "weight_scale", "active_rows")
        return cls(*(tensors[name] for name in names), tensors.get("bias"), **args)

    def calibrate(self, inputs: Tensor) -> Self:
        """Fix the activation quantization to the range of ``inputs (..., in)`` (static); returns self."""
        self.input_scale, self.input_zero = calibration_range(inputs)
        return self

    def _rows_forward(self, x2d: Tensor) -> Tensor:
        """Rows ``(B, in_features)`` fp32 -> ``(B, out_features)`` fp32 through the int8 op."""
        buffers = self._buffers  # plain dict reads: this runs on every call
        kernel = load_extension() if _eager_cpu_inference(x2d, buffers["weight_scale"], buffers["bias"]) else None
        op = int8_condensed_linear if kernel is None else kernel.int8_condensed_linear
        args = (
            x2d if kernel is None else x2d.contiguous(), buffers["weight"], buffers["indices"], buffers["weight_sum"],
            buffers["weight_scale"], buffers["active_rows"], buffers["bias"], buffers["layout"], self.out_features,
            self.input_scale, self.input_zero,
        )  # fmt: skip
        # Eager CPU inference calls the op's CPU kernel directly, minus the Python op's ~15 us per call; a graph
        # compiled in this process traces the Python op, which its post-grad pass points at the same C++ op
        # (kernels/direct_calls.py).
        return op(*args) if kernel is None else op(*args, 0)

    def extra_repr(self) -> str:
        mode = "dynamic" if self.input_scale is None else f"static scale={self.input_scale:.4g} zero={self.input_zero}"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"active_rows={self.weight.shape[0]}, padded_fan_in={self.weight.shape[1]}, activations={mode}"
        )


class Int8CondensedLinear(Int8Condensed):
    """int8 condensed constant-fan-in linear layer, ``(..., in) -> (..., out)`` fp32 (buffers: `Int8Condensed`)."""

    @classmethod
    def from_condensed(
        cls, layer: CondensedLinear, input_range: tuple[float, int] | None = None
    ) -> Int8CondensedLinear:
        """Quantize a ``CondensedLinear`` (`int8_layout`); ``input_range`` (``(scale, zero)``, e.g. `calibration_range`
        of real inputs) fixes the activation quantization, None keeps it dynamic. ``ValueError``: fan-in over 65536."""
        bias = None if layer.bias is None else layer.bias.detach().float().clone()
        input_scale, input_zero = (None, None) if input_range is None else input_range
        return cls(
            *int8_layout(layer.values, layer.indices), layer.active_rows.clone(), bias, layer.in_features,
            layer.out_features, input_scale, input_zero,
        )  # fmt: skip

    @classmethod
    def from_masked(cls, linear: nn.Linear, mask: Tensor) -> Int8CondensedLinear:
        """``linear`` with ``weight * mask`` (``mask (out, in)`` bool, constant fan-in), activations dynamic."""
        return cls.from_condensed(CondensedLinear.from_masked(linear, mask))

    def dense_masks(self) -> dict[str, Tensor]:
        """``{"weight": (out, in) bool}``: the positions the layer keeps."""
        return {"weight": self._kept()}

    def to_dense(self) -> nn.Linear:
        """An ``nn.Linear`` with the dequantized weight (``int8 * scale`` per neuron) and the bias."""
        return dense_linear(self._dense_rows(), self.bias, frozen=False)

    def spec_args(self) -> dict[str, int | float | None]:
        """Plain constructor facts for ``save_condensed``."""
        return {"in_features": self.in_features, "out_features": self.out_features, "input_scale": self.input_scale,
                "input_zero": self.input_zero}  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        """``(..., in) -> (..., out)`` fp32."""
        if x.shape[-1] != self.in_features or x.dtype != torch.float32:
            raise ValueError(
                f"expected fp32 input (..., {self.in_features}), got {x.dtype} {tuple(x.shape)}; "
                "reshape or cast it (int8 layers take fp32 activations)"
            )
        y = self._rows_forward(x if x.dim() == 2 else x.reshape(-1, self.in_features))
        return y if x.dim() == 2 else y.view(*x.shape[:-1], self.out_features)
