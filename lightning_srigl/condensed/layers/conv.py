"""Condensed convolutions: exact, smaller and faster stand-ins for constant-fan-in masked ``nn.Conv1d/2d``.

A conv weight ``(out, in / groups, kh, kw)`` is viewed as ``(out, in / groups * kh * kw)``: a neuron is
an output channel, its fan-in the taps it keeps. When every non-empty row keeps the same number ``k``
(SRigL's constant fan-in), the layer is stored as ``values (A, k)`` and ``indices (A, k)`` for its ``A``
active filters; ablated filters (all-zero rows) are dropped and output their bias. An index is a tap
``(c, ky, kx)`` over *all* ``in`` channels, ``c * kh * kw + ky * kw + kx`` (a grouped filter's taps lie in
its group's channels), so the kernels need no notion of groups.

Kernels (``forward``), ``algorithm="direct"``: on CPU the ``condensed_conv2d`` op of the C++ variant
(``csrc/conv.h``: output pixels are the batch of a panel read straight from the zero-padded input, no
im2col), on CUDA the Triton kernel of [`conv`][lightning_srigl.kernels.triton.conv].
``algorithm="im2col"`` materialises the im2col matrix (``F.unfold``) and runs the condensed linear
kernels on it: slower except on tiny images (a 4x4 map), where the direct kernel computes many padding
columns; ``accelerate`` times both (``scripts/bench_conv_layouts.py`` compares them per layer).
``backend="torch"`` (and any call that tracks a gradient) scatters the values into the dense weight and
calls ``F.conv2d``, the exact reference. ``CondensedConv1d`` runs the same kernels on ``(N, C, 1, L)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_srigl.condensed.layers.contract import (
    BACKENDS,
    check_choice,
    eager_inference,
    renamed_constructor,
    validate_after_load,
)
from lightning_srigl.condensed.layers.weight_facts import WeightFacts
from lightning_srigl.kernels import conv as conv_ops
from lightning_srigl.kernels.conv import condensed_conv2d, conv2d_reference, triton_conv
from lightning_srigl.kernels.cpu.loader import condensed_linear_cpu, load_extension
from lightning_srigl.kernels.layout import condense_conv, pad_fan_in
from lightning_srigl.kernels.linear import condensed_linear
from lightning_srigl.kernels.validation import check_contiguous

__all__ = ["CondensedConv1d", "CondensedConv2d", "condense_conv"]

ALGORITHMS = ("direct", "im2col")


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[-1]))


class CondensedConv2d(nn.Module):
    """Condensed constant-fan-in 2-D convolution, ``(N, in, H, W) -> (N, out, Ho, Wo)`` (or unbatched).

    Buffers: ``values (A, k)`` in the weight's dtype, ``indices (A, k)`` taps (int16 when
    ``in * kh * kw <= 32767``, else int32), ``active_rows (A,)`` int64 and ``bias (out,)`` (or None).
    ``stride``, ``padding`` (ints, ``"valid"`` or ``"same"``), ``dilation``, ``groups`` and
    ``padding_mode`` mean what they mean for ``nn.Conv2d``; ``relu`` appends a ReLU to the output.
    """

    def __init__(
        self,
        values: Tensor,
        indices: Tensor,
        active_rows: Tensor,
        bias: Tensor | None,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        padding_mode: str = "zeros",
        backend: str = "auto",
        algorithm: str = "direct",
        relu: bool = False,
    ) -> None:
        super().__init__()
        check_choice(backend, BACKENDS, "backend")
        check_choice(algorithm, ALGORITHMS, "algorithm")
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels={in_channels} and out_channels={out_channels} must divide by groups={groups}"
            )
        if bias is not None and bias.shape != (out_channels,):
            raise ValueError(f"bias must be ({out_channels},), got {tuple(bias.shape)}")
        conv_ops.check_padding(padding, padding_mode)
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride, self.dilation = _pair(kernel_size), _pair(stride), _pair(dilation)
        self.padding = padding if isinstance(padding, str) else _pair(padding)
        self.padding_mode, self.backend, self.algorithm, self.relu = padding_mode, backend, algorithm, bool(relu)
        self._check_buffers(values, indices, active_rows)
        self.register_buffer("values", values)
        self.register_buffer("indices", indices)
        self.register_buffer("active_rows", active_rows.long())
        self.register_buffer("bias", bias)
        self.register_load_state_dict_post_hook(validate_after_load)

    def check_buffers(self) -> None:
        """Validate the buffers as the constructor does; run after loading.

        Raises:
            ValueError: naming the tensor that does not fit.
        """
        if self.bias is not None and self.bias.shape != (self.out_channels,):
            raise ValueError(f"bias must be ({self.out_channels},), got {tuple(self.bias.shape)}")
        if self.active_rows.dtype != torch.int64:  # the constructor converts them; a loaded state dict must not
            raise ValueError(f"active_rows must be int64, got {self.active_rows.dtype}; load active_rows.long()")
        self._check_buffers(self.values, self.indices, self.active_rows)

    def _check_buffers(self, values: Tensor, indices: Tensor, rows: Tensor) -> None:
        """Validate once what the kernels assume: shapes, index ranges, and each row's taps in its group."""
        if values.dim() != 2 or indices.shape != values.shape or rows.shape != values.shape[:1]:
            raise ValueError(
                f"values (A, k), indices (A, k) and active_rows (A,) must agree; got {tuple(values.shape)}, "
                f"{tuple(indices.shape)}, {tuple(rows.shape)}"
            )
        if indices.dtype not in (torch.int16, torch.int32):
            raise ValueError(f"indices must be int16 or int32, got {indices.dtype}")
        check_contiguous(values=values, indices=indices)
        if rows.numel() and (
            int(rows.min()) < 0 or int(rows.max()) >= self.out_channels or rows.unique().numel() != rows.numel()
        ):
            raise ValueError(f"active_rows must be distinct output channels in [0, {self.out_channels})")
        if indices.numel():
            per_group = self.in_channels // self.groups * self.kernel_size[0] * self.kernel_size[1]
            group = (rows.long() // (self.out_channels // self.groups))[:, None]
            taps = indices.long()
            if bool(((taps < group * per_group) | (taps >= (group + 1) * per_group)).any()):
                raise ValueError("indices must be taps of the row's own group, c * kh * kw + ky * kw + kx")

    @classmethod
    def from_dense_weight(
        cls,
        weight: Tensor,
        mask: Tensor,
        bias: Tensor | None = None,
        *,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        padding_mode: str = "zeros",
        backend: str = "auto",
    ) -> CondensedConv2d:
        """Build from tensors: a ``(out, in / groups, kh, kw)`` weight, its bool mask and an optional ``(out,)`` bias.

        The weight is read at the mask's positions only. Raises ``ValueError`` unless every non-empty
        filter keeps the same number of taps (`from_masked` pads them instead).
        """
        if weight.dim() != 4:
            raise ValueError(f"weight must be (out, in / groups, kh, kw), got {tuple(weight.shape)}")
        values, indices, rows = condense_conv(weight, mask.to(weight.device, torch.bool), groups)
        out, per_group, kh, kw = weight.shape
        bias = None if bias is None else bias.detach().clone()
        return cls(
            values, indices, rows, bias, per_group * groups, out, (kh, kw),
            stride, padding, dilation, groups, padding_mode, backend,
        )  # fmt: skip

    @classmethod
    def from_masked(cls, conv: nn.Conv2d, mask: Tensor) -> CondensedConv2d:
        """The condensed form of ``conv`` with its weight times ``mask`` (the registry's constructor).

        Filters with fewer taps than the largest fan-in (folding removes inputs) are padded with inactive,
        zero-weight taps up to it, so the layer stays exact for any mask.
        """
        mask = mask.to(device=conv.weight.device, dtype=torch.bool)
        padded = pad_fan_in(mask.flatten(1)).view_as(mask)
        return cls.from_dense_weight(
            conv.weight.detach() * mask, padded, conv.bias, stride=conv.stride, padding=conv.padding,
            dilation=conv.dilation, groups=conv.groups, padding_mode=conv.padding_mode,
        )  # fmt: skip

    from_weight_mask = renamed_constructor("from_weight_mask", "from_dense_weight")

    @classmethod
    def im2col_from_masked(cls, conv: nn.Conv2d, mask: Tensor) -> CondensedConv2d:
        """`from_masked` with ``algorithm="im2col"`` (the registry's ``"im2col"`` candidate)."""
        layer = cls.from_masked(conv, mask)
        layer.algorithm = "im2col"
        return layer

    def spec_args(self) -> dict[str, object]:
        """Plain constructor facts for [`save_condensed`][lightning_srigl.condensed.serialization.save_condensed]."""
        return {
            "in_channels": self.in_channels, "out_channels": self.out_channels, "kernel_size": self.kernel_size,
            "stride": self.stride, "padding": self.padding, "dilation": self.dilation, "groups": self.groups,
            "padding_mode": self.padding_mode, "backend": self.backend, "algorithm": self.algorithm,
            "relu": self.relu, "bias": self.bias is not None,
        }  # fmt: skip

    @classmethod
    def from_spec(cls, args: dict[str, object], tensors: dict[str, Tensor]) -> CondensedConv2d:
        """Rebuild (validated) from `spec_args` and the layer's ``state_dict`` tensors."""
        return cls(tensors["values"], tensors["indices"], tensors["active_rows"], tensors.get("bias"), **args)

    @property
    def weight(self) -> WeightFacts:
        """Shape (``nn.Conv2d``'s ``(out, in / groups, kh, kw)``, ``nn.Conv1d``'s ``(out, in / groups, k)``),
        dtype and device of the dense weight this layer replaced, for code that reads them (no values: see
        `dense_weight`)."""
        shape = (self.out_channels, self.in_channels // self.groups, *self.kernel_size)
        return WeightFacts(self._dense_shape(torch.empty(shape, device="meta")).shape, self.values, type(self).__name__)

    @property
    def fan_in(self) -> int:
        """Taps kept per active filter (``k``)."""
        return self.values.shape[1]

    @property
    def n_active(self) -> int:
        """Number of active (non-ablated) filters ``A``."""
        return self.values.shape[0]

    def forward(self, x: Tensor) -> Tensor:
        """``(N, in, H, W) -> (N, out, Ho, Wo)``, or ``(in, H, W) -> (out, Ho, Wo)``."""
        if x.dim() == 3:
            return self.forward(x.unsqueeze(0)).squeeze(0)
        if x.dim() != 4 or x.shape[1] != self.in_channels or x.dtype != self.values.dtype:
            raise ValueError(
                f"expected input (N, {self.in_channels}, H, W) of dtype {self.values.dtype}, got {tuple(x.shape)} "
                f"of dtype {x.dtype}; reshape or cast the input (or call module.to(dtype))"
            )
        x, padding = conv_ops.pad_input(x, self.padding, self.padding_mode, self.kernel_size, self.dilation)
        geometry = (self.kernel_size, self.stride, padding, self.dilation)
        values, backend = self.values, self.backend
        tracks_gradient = torch.is_grad_enabled() and (x.requires_grad or values.requires_grad)
        if self.algorithm == "im2col" and backend != "torch" and not tracks_gradient:
            return self._im2col_forward(x, padding)
        if backend != "torch" and eager_inference(x, values):
            if x.is_cpu and backend == "auto" and x.dtype == torch.float32:
                kernel = load_extension()
                if kernel is not None:  # the C++ op itself, minus the dispatcher (~15 us per call)
                    return kernel.condensed_conv2d(
                        x.contiguous(),
                        values,
                        self.indices,
                        self.active_rows,
                        self.bias,
                        self.out_channels,
                        self.groups,
                        *geometry,
                        0,
                        self.relu,
                    )
            if (backend == "triton" or x.is_cuda) and not self.relu:  # with relu: the op's CUDA kernel below
                kernels = triton_conv()
                if kernels is not None:
                    return kernels.condensed_conv2d_triton(
                        x, values, self.indices, self.active_rows, self.bias, self.out_channels, self.groups, *geometry
                    )
        args = (x, values, self.indices, self.active_rows, self.bias, self.out_channels, self.groups, *geometry)
        if backend == "torch" or tracks_gradient:  # differentiable in x and values
            return conv2d_reference(*args, self.relu)
        return condensed_conv2d(*args, self.relu)  # the custom op: compile and export see one node

    def _im2col_forward(self, x: Tensor, padding: tuple[int, int]) -> Tensor:
        """``(N, C, H, W) -> (N, out, Ho, Wo)`` through a materialised im2col and the condensed linear kernels
        (the taps are ``F.unfold``'s rows, so the values and indices serve unchanged)."""
        n = x.shape[0]
        x2d, sizes = conv_ops.im2col_rows(x, self.kernel_size, self.stride, padding, self.dilation)
        eager_cpu = x2d.is_cpu and self.backend == "auto" and eager_inference(x2d, self.values)
        y = (condensed_linear_cpu if eager_cpu else condensed_linear)(x2d, self.values, self.indices, None)
        y = y.view(n, -1, self.n_active).transpose(1, 2)  # (N, A, L)
        if self.bias is None:
            full = y.new_zeros(n, self.out_channels, y.shape[2])
        else:
            full = self.bias.view(1, -1, 1).expand(n, -1, y.shape[2]).contiguous()
        full = full.index_add_(1, self.active_rows, y).view(n, self.out_channels, *sizes)
        return full.relu_() if self.relu else full

    def _scatter(self, values: Tensor) -> Tensor:
        """``values (A, k)`` (or a tensor of their shape) at their taps, ``(out, in / groups, kh, kw)``."""
        per_group = self.in_channels // self.groups * self.kernel_size[0] * self.kernel_size[1]
        group = self.active_rows // (self.out_channels // self.groups)
        local = self.indices.long() - (group * per_group)[:, None]
        rows = values.new_zeros(self.n_active, per_group).scatter_(1, local, values)
        weight = values.new_zeros(self.out_channels, per_group)
        weight[self.active_rows] = rows
        return self._dense_shape(weight.view(self.out_channels, self.in_channels // self.groups, *self.kernel_size))

    def _dense_shape(self, weight: Tensor) -> Tensor:
        """A ``(out, in / groups, kh, kw)`` weight in the shape of `to_dense`'s weight."""
        return weight

    def dense_weight(self) -> Tensor:
        """The equivalent masked dense weight ``(out, in / groups, kh, kw)``."""
        return self._scatter(self.values)

    def dense_masks(self) -> dict[str, Tensor]:
        """``{"weight": bool mask of to_dense()'s weight}`` (``"0.weight"`` with ``relu``): the taps kept."""
        return {"0.weight" if self.relu else "weight": self._scatter(torch.ones_like(self.values, dtype=torch.bool))}

    def to_dense(self) -> nn.Module:
        """An ``nn.Conv2d`` with the masked dense weight and the full bias (then ``nn.ReLU`` with ``relu``)."""
        conv = nn.Conv2d(
            self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding, self.dilation,
            self.groups, self.bias is not None, self.padding_mode, device=self.values.device, dtype=self.values.dtype,
        )  # fmt: skip
        with torch.no_grad():
            conv.weight.copy_(self.dense_weight())
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return nn.Sequential(conv, nn.ReLU()) if self.relu else conv

    def extra_repr(self) -> str:
        index = str(self.indices.dtype).removeprefix("torch.")
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, fan_in={self.fan_in}, "
            f"active_rows={self.n_active}, index_dtype={index}, bias={self.bias is not None}, backend={self.backend}"
            + (", relu=True" if self.relu else "")
        )


class CondensedConv1d(CondensedConv2d):
    """Condensed constant-fan-in 1-D convolution, ``(N, in, L) -> (N, out, Lo)``: the 2-D kernels on
    ``(N, in, 1, L)`` with a ``(1, kernel)`` filter (its geometry attributes are the 2-D ones)."""

    @classmethod
    def from_masked(cls, conv: nn.Conv1d, mask: Tensor) -> CondensedConv1d:
        """The condensed form of ``conv`` with its weight times ``mask`` (the registry's constructor)."""
        weight = (conv.weight.detach() * mask).unsqueeze(2)
        bias = None if conv.bias is None else conv.bias.detach().clone()
        padding = conv.padding if isinstance(conv.padding, str) else (0, conv.padding[0])
        values, indices, rows = condense_conv(
            weight, pad_fan_in(mask.flatten(1).bool()).view_as(mask).unsqueeze(2), conv.groups
        )
        return cls(
            values, indices, rows, bias, conv.in_channels, conv.out_channels, (1, conv.kernel_size[0]),
            (1, conv.stride[0]), padding, (1, conv.dilation[0]), conv.groups, conv.padding_mode,
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        """``(N, in, L) -> (N, out, Lo)``, or ``(in, L) -> (out, Lo)``."""
        if x.dim() == 2:
            return self.forward(x.unsqueeze(0)).squeeze(0)
        if x.dim() != 3:
            raise ValueError(f"expected input (N, {self.in_channels}, L), got {tuple(x.shape)}")
        return super().forward(x.unsqueeze(2)).squeeze(2)

    def _dense_shape(self, weight: Tensor) -> Tensor:
        """``(out, in / groups, 1, k) -> (out, in / groups, k)``, ``nn.Conv1d``'s weight."""
        return weight.squeeze(2)

    def to_dense(self) -> nn.Module:
        """An ``nn.Conv1d`` with the masked dense weight and the full bias (then ``nn.ReLU`` with ``relu``)."""
        conv = nn.Conv1d(
            self.in_channels, self.out_channels, self.kernel_size[1], self.stride[1],
            self.padding if isinstance(self.padding, str) else self.padding[1], self.dilation[1], self.groups,
            self.bias is not None, self.padding_mode, device=self.values.device, dtype=self.values.dtype,
        )  # fmt: skip
        with torch.no_grad():
            conv.weight.copy_(self.dense_weight())
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return nn.Sequential(conv, nn.ReLU()) if self.relu else conv
