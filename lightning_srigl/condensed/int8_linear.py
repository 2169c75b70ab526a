"""``Int8CondensedLinear``: a condensed linear layer with int8 weights and u8 activations (inference only).

It quantizes a :class:`~lightning_srigl.condensed.linear.CondensedLinear` (``values (A, k)`` fp32): each
active neuron's kept weights become int8 in ``[-127, 127]`` with one symmetric fp32 scale
(``max |w| / 127``); the input is quantized to u8 per row (token) when it arrives, or with one scale and
zero point fixed from calibration inputs (:meth:`Int8CondensedLinear.calibrate`). Products accumulate in
int32; the output is fp32 with the bias added once (the arithmetic:
:mod:`lightning_srigl.condensed.int8_ops`). Unlike ``CondensedLinear`` it is not exact: the error
against the fp32 layer is that of int8 quantization (``accelerate(..., quantize="int8")`` measures it).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_srigl.condensed.int8_ops import INT8_MAX_FAN_IN, INT8_PAD, int8_condensed_linear, window_layout
from lightning_srigl.condensed.cpu_kernel import load_extension
from lightning_srigl.condensed.linear import CondensedLinear, _eager_cpu_inference
from lightning_srigl.condensed.validation import INDEX_DTYPES, INT16_MAX, check_bias, check_sorted_in_range, check_width

__all__ = ["Int8CondensedLinear", "calibration_range", "quantize_weights"]


def quantize_weights(values: Tensor) -> tuple[Tensor, Tensor]:
    """``values (A, k)`` float -> ``(int8 (A, k) in [-127, 127], scale (A,) fp32)``, symmetric per row.

    ``scale = max |values[a]| / 127`` (1 for an all-zero row); ``int8 = clamp(round(values / scale))``.
    """
    values = values.detach().float()
    scale = values.abs().amax(dim=1) / 127.0 if values.shape[1] else values.new_ones(values.shape[0])
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    return torch.round(values / scale[:, None]).clamp(-127, 127).to(torch.int8), scale


def calibration_range(inputs: Tensor) -> tuple[float, int]:
    """One u8 ``(scale, zero)`` covering every value of the calibration ``inputs (..., in)`` (and 0).

    Raises:
        ValueError: ``inputs`` is empty or not finite.
    """
    if inputs.numel() == 0 or not bool(torch.isfinite(inputs).all()):
        raise ValueError("calibration inputs must be a non-empty finite tensor (run real batches through the model)")
    lo, hi = min(float(inputs.min()), 0.0), max(float(inputs.max()), 0.0)
    scale = float(torch.tensor((hi - lo) / 255.0, dtype=torch.float32)) or 1.0
    return scale, int(min(255, max(0, round(-lo / scale))))


def _padded(tensor: Tensor, width: int) -> Tensor:
    """``tensor (A, k)`` with zero columns appended up to ``width``."""
    return torch.cat([tensor, tensor.new_zeros(tensor.shape[0], width - tensor.shape[1])], dim=1).contiguous()


def _check_int8_buffers(module: Int8CondensedLinear, incompatible: object = None) -> None:
    """Constructor and ``load_state_dict`` check of the buffers, so the kernels may trust them; a load
    rebuilds the window layout from the loaded weights."""
    weight, indices = module.weight, module.indices
    if weight.dtype != torch.int8 or weight.dim() != 2 or weight.shape[1] % INT8_PAD:
        raise ValueError(f"weight must be int8 (A, kp) with kp a multiple of {INT8_PAD}; got {weight.dtype} "
                         f"{tuple(weight.shape)}")  # fmt: skip
    if weight.shape[1] > INT8_MAX_FAN_IN or bool((weight == -128).any()):
        raise ValueError(f"weight must lie in [-127, 127] with a fan-in of at most {INT8_MAX_FAN_IN}")
    rows = weight.shape[0]
    if indices.shape != weight.shape or indices.dtype not in INDEX_DTYPES or (
        indices.dtype == torch.int16 and module.in_features > INT16_MAX
    ):
        raise ValueError(f"indices must be int16 (in_features <= {INT16_MAX}) or int32 of weight's shape "
                         f"{tuple(weight.shape)}; got {indices.dtype} {tuple(indices.shape)}")  # fmt: skip
    # Padding columns repeat index 0, so the rows are checked for range only (not order).
    check_sorted_in_range(indices.reshape(-1, 1), "indices", module.in_features, "")
    if module.active_rows.shape != (rows,) or rows > module.out_features:
        raise ValueError(f"active_rows must be ({rows},) with at most out_features={module.out_features} rows")
    check_sorted_in_range(module.active_rows, "active_rows", module.out_features, "(sorted, each output row once)")
    if len({weight.device, indices.device, module.active_rows.device, module.weight_scale.device}) != 1:
        raise ValueError("the int8 layer's buffers must be on one device; move it with module.to(...)")
    sums = weight.sum(dim=1, dtype=torch.int32)
    if module.weight_sum.dtype != torch.int32 or not torch.equal(module.weight_sum, sums):
        raise ValueError("weight_sum must be the int32 row sums of weight")
    scale = module.weight_scale
    finite_positive = bool(torch.isfinite(scale).all() and (scale > 0).all())
    if scale.dtype != torch.float32 or scale.shape != (rows,) or not finite_positive:
        raise ValueError(f"weight_scale must be finite positive fp32 ({rows},)")
    check_bias(module.bias, module.out_features, scale)
    if incompatible is not None:
        module.layout = window_layout(weight, indices, module.in_features)


class Int8CondensedLinear(nn.Module):
    """int8 condensed constant-fan-in linear layer, ``(..., in) -> (..., out)`` fp32 (see the module docstring).

    Buffers: ``weight (A, kp)`` int8 (the fan-in ``k`` padded with zero weights to ``kp``, a multiple of
    64), ``indices (A, kp)`` (int16 when ``in_features <= 32767``, else int32; 0 in the padding),
    ``weight_sum (A,)`` int32 (row sums, for the activations' zero point), ``weight_scale (A,)`` fp32,
    ``active_rows (A,)`` int64 and ``bias (out,)`` fp32 or None; ``layout``, not saved, is the gather-free
    kernel's layout, rebuilt from them (:func:`~lightning_srigl.condensed.int8_ops.window_layout`).
    ``input_scale``/``input_zero``: the calibrated activation quantization, or None for dynamic per-row
    quantization.
    """

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

    @classmethod
    def from_condensed(
        cls, layer: CondensedLinear, input_range: tuple[float, int] | None = None
    ) -> Int8CondensedLinear:
        """Quantize a ``CondensedLinear``; ``input_range`` (``(scale, zero)``, e.g. :func:`calibration_range`
        of real inputs) fixes the activation quantization (static), None keeps it dynamic (per row).

        Raises:
            ValueError: the fan-in exceeds 65536 (int32 sums could overflow) or the range is invalid.
        """
        if layer.fan_in > INT8_MAX_FAN_IN:
            raise ValueError(f"int8 layers take a fan-in of at most {INT8_MAX_FAN_IN}, got {layer.fan_in}")
        weight, scale = quantize_weights(layer.values)
        width = -(-max(layer.fan_in, 1) // INT8_PAD) * INT8_PAD
        weight, indices = _padded(weight, width), _padded(layer.indices, width)
        bias = None if layer.bias is None else layer.bias.detach().float().clone()
        input_scale, input_zero = (None, None) if input_range is None else input_range
        return cls(
            weight, indices, weight.sum(dim=1, dtype=torch.int32), scale, layer.active_rows.clone(), bias,
            layer.in_features, layer.out_features, input_scale, input_zero,
        )  # fmt: skip

    @classmethod
    def calibrate(self, inputs: Tensor) -> Int8CondensedLinear:
        """Fix the activation quantization to the range of ``inputs (..., in)`` (static); returns self."""
        self.input_scale, self.input_zero = calibration_range(inputs)
        return self

    def spec_args(self) -> dict[str, int | float | None]:
        """Plain constructor facts for ``save_condensed``."""
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "input_scale": self.input_scale,
            "input_zero": self.input_zero,
        }

    @classmethod
    def from_spec(cls, args: dict[str, object], tensors: dict[str, Tensor]) -> Int8CondensedLinear:
        """Rebuild (validated) from :meth:`spec_args` and the layer's ``state_dict`` tensors."""
        return cls(
            tensors["weight"], tensors["indices"], tensors["weight_sum"], tensors["weight_scale"],
            tensors["active_rows"], tensors.get("bias"), args["in_features"], args["out_features"],
            args.get("input_scale"), args.get("input_zero"),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        """``(..., in) -> (..., out)`` fp32."""
        if x.shape[-1] != self.in_features or x.dtype != torch.float32:
            raise ValueError(
                f"expected fp32 input (..., {self.in_features}), got {x.dtype} {tuple(x.shape)}; "
                "reshape or cast it (int8 layers take fp32 activations)"
            )
        x2d = x if x.dim() == 2 else x.reshape(-1, self.in_features)
        buffers = self._buffers  # plain dict reads: this runs on every call
        kernel = load_extension() if _eager_cpu_inference(x2d, buffers["weight_scale"], buffers["bias"]) else None
        op = int8_condensed_linear if kernel is None else kernel.int8_condensed_linear
        args = (
            x2d if kernel is None else x2d.contiguous(), buffers["weight"], buffers["indices"], buffers["weight_sum"],
            buffers["weight_scale"], buffers["active_rows"], buffers["bias"], buffers["layout"], self.out_features,
            self.input_scale, self.input_zero,
        )  # fmt: skip
        # Eager CPU inference calls the op's CPU kernel directly, minus the dispatcher's ~15 us per call.
        y = op(*args) if kernel is None else op(*args, 0)
        return y if x.dim() == 2 else y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        mode = "dynamic" if self.input_scale is None else f"static scale={self.input_scale:.4g} zero={self.input_zero}"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"active_rows={self.weight.shape[0]}, padded_fan_in={self.weight.shape[1]}, activations={mode}"
        )
