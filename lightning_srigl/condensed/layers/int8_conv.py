"""int8 condensed convolutions (``groups=1``): `Int8CondensedLinear`'s int8 op on the im2col rows of the input.

A condensed convolution's index, the tap ``c * kh * kw + ky * kw + kx``, is its position in an ``F.unfold`` row,
so each output position's patch is one row: quantized on its own (dynamic; one calibrated range when static),
the weights per filter. Inference only, not exact (docs/int8.md).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_srigl.condensed.layers.conv import CondensedConv1d, CondensedConv2d, _pair
from lightning_srigl.condensed.layers.int8_linear import Int8Condensed
from lightning_srigl.kernels.conv import check_padding, im2col_rows, pad_input
from lightning_srigl.kernels.int8_layout import int8_layout

__all__ = ["Int8CondensedConv1d", "Int8CondensedConv2d"]


class Int8CondensedConv2d(Int8Condensed):
    """int8 condensed 2-D convolution, ``(N, in, H, W) -> (N, out, Ho, Wo)`` fp32 (or unbatched): `Int8Condensed`
    with ``in_features = in_channels * kh * kw`` (taps), ``out_features = out_channels``, and ``nn.Conv2d``'s
    ``stride``, ``padding`` (pairs, ``"valid"``, ``"same"``), ``dilation``, ``padding_mode`` (``groups`` is 1)."""

    condensed_class: type[CondensedConv2d] = CondensedConv2d  # what `from_masked` condenses first

    def __init__(
        self,
        weight: Tensor,
        indices: Tensor,
        weight_sum: Tensor,
        weight_scale: Tensor,
        active_rows: Tensor,
        bias: Tensor | None,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        padding_mode: str = "zeros",
        input_scale: float | None = None,
        input_zero: int | None = None,
    ) -> None:
        check_padding(padding, padding_mode)
        kh, kw = _pair(kernel_size)
        super().__init__(
            weight, indices, weight_sum, weight_scale, active_rows, bias, in_channels * kh * kw, out_channels,
            input_scale, input_zero,
        )  # fmt: skip
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.dilation = (kh, kw), _pair(stride), _pair(dilation)
        self.padding, self.padding_mode = padding if isinstance(padding, str) else _pair(padding), padding_mode

    @classmethod
    def from_condensed(cls, conv: CondensedConv2d, input_range: tuple[float, int] | None = None) -> Int8CondensedConv2d:
        """Quantize a ``CondensedConv2d`` (``CondensedConv1d``), ``input_range`` as in
        ``Int8CondensedLinear.from_condensed``. Raises ``ValueError`` for groups != 1 or a fan-in over 65536."""
        if conv.groups != 1:
            raise ValueError(f"int8 condensed convolutions take groups=1, got groups={conv.groups}")
        bias = None if conv.bias is None else conv.bias.detach().float().clone()
        input_scale, input_zero = (None, None) if input_range is None else input_range
        return cls(
            *int8_layout(conv.values, conv.indices), conv.active_rows.clone(), bias, conv.in_channels,
            conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.padding_mode,
            input_scale, input_zero,
        )  # fmt: skip

    @classmethod
    def from_masked(cls, conv: nn.Conv2d | nn.Conv1d, mask: Tensor) -> Int8CondensedConv2d:
        """``conv`` with ``weight * mask`` (constant fan-in), quantized with dynamic activations."""
        return cls.from_condensed(cls.condensed_class.from_masked(conv, mask))

    def spec_args(self) -> dict[str, object]:
        """Plain constructor facts for ``save_condensed``."""
        return {
            "in_channels": self.in_channels, "out_channels": self.out_channels, "kernel_size": self.kernel_size,
            "stride": self.stride, "padding": self.padding, "dilation": self.dilation,
            "padding_mode": self.padding_mode, "input_scale": self.input_scale, "input_zero": self.input_zero,
        }  # fmt: skip

    def _dequantized(self) -> CondensedConv2d:
        """The fp32 `condensed_class` of the dequantized weights (``int8 * scale``) at the kept taps, and the bias."""
        shape = (self.out_channels, self.in_channels, *self.kernel_size)
        return self.condensed_class.from_weight_mask(
            self._dense_rows().view(shape), self._kept().view(shape), self.bias, stride=self.stride,
            padding=self.padding, dilation=self.dilation, padding_mode=self.padding_mode,
        )  # fmt: skip

    def dense_masks(self) -> dict[str, Tensor]:
        """``{"weight": bool mask of to_dense()'s weight}``: the taps the layer keeps."""
        return self._dequantized().dense_masks()

    def to_dense(self) -> nn.Module:
        """An ``nn.Conv2d`` (``nn.Conv1d``) with the dequantized weight and the bias."""
        return self._dequantized().to_dense()

    def forward(self, x: Tensor) -> Tensor:
        """``(N, in, H, W) -> (N, out, Ho, Wo)`` fp32, or ``(in, H, W) -> (out, Ho, Wo)``."""
        if x.dim() == 3:  # unbatched (also for Int8CondensedConv1d's (in, 1, L))
            return Int8CondensedConv2d.forward(self, x.unsqueeze(0)).squeeze(0)
        if x.dim() != 4 or x.shape[1] != self.in_channels or x.dtype != torch.float32:
            raise ValueError(
                f"expected fp32 input (N, {self.in_channels}, H, W), got {x.dtype} {tuple(x.shape)}; reshape or "
                "cast it (int8 layers take fp32 activations)"
            )
        x, padding = pad_input(x, self.padding, self.padding_mode, self.kernel_size, self.dilation)
        rows, sizes = im2col_rows(x, self.kernel_size, self.stride, padding, self.dilation)
        y = self._rows_forward(rows).view(x.shape[0], -1, self.out_channels)  # (N, Ho * Wo, out)
        return y.transpose(1, 2).reshape(x.shape[0], self.out_channels, *sizes)

    def extra_repr(self) -> str:
        geometry = (
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, dilation={self.dilation}"
        )
        return f"{self.in_channels}, {self.out_channels}, {geometry}, {super().extra_repr()}"


class Int8CondensedConv1d(Int8CondensedConv2d):
    """int8 condensed 1-D convolution, ``(N, in, L) -> (N, out, Lo)``: the 2-D layer on ``(N, in, 1, L)`` with a
    ``(1, kernel)`` filter (its geometry attributes are the 2-D ones, as ``CondensedConv1d``'s)."""

    condensed_class = CondensedConv1d

    def forward(self, x: Tensor) -> Tensor:
        """``(N, in, L) -> (N, out, Lo)`` fp32, or ``(in, L) -> (out, Lo)`` (the 2-D layer rejects other shapes)."""
        return super().forward(x.unsqueeze(-2)).squeeze(-2)
