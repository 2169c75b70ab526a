"""``PackedLinear``: a dense ``nn.Linear`` whose inference product runs on oneDNN's prepacked weight; `accelerate`
installs it for dense layers no mask covers (GPT-2's tied ``lm_head``) where it times faster than ``F.linear``."""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_srigl.condensed.layers.contract import dense_linear
from lightning_srigl.kernels.dense import packed_linear, packed_linear_cpu

__all__ = ["PackedLinear"]


class PackedLinear(nn.Linear):
    """``(..., in) -> (..., out)``, ``F.linear`` computed through oneDNN's prepacked fp32 GEMM.

    Without gradient tracking, an fp32 CPU call runs ``lightning_srigl::packed_linear`` (the weight reordered
    once for oneDNN and rebuilt when it changes: `lightning_srigl.kernels.dense`); a call that tracks a
    gradient, or in another dtype or on another device, is ``F.linear``. It holds the replaced layer's own
    parameters, so ties (``lm_head.weight is wte.weight``) and ``state_dict`` keys stay as they were.
    """

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> PackedLinear:
        """The layer computing ``linear``, sharing its ``weight`` and ``bias`` parameters (ties hold)."""
        return cast(PackedLinear, _sharing(cls, linear))

    def spec_args(self) -> dict[str, int | bool]:
        """Plain constructor facts for `save_condensed` (the layer is saved as itself, so a loaded model runs
        the same GEMM and gives bit-identical outputs)."""
        return {"in_features": self.in_features, "out_features": self.out_features, "bias": self.bias is not None}

    @classmethod
    def from_spec(cls, args: dict[str, object], tensors: dict[str, Tensor]) -> PackedLinear:
        """Rebuild from `spec_args` and the layer's ``weight (out, in)`` and optional ``bias (out,)``.

        Raises:
            ValueError: a tensor missing or of another shape or dtype than ``args`` give.
        """
        shape = (args["out_features"], args["in_features"])
        weight, bias = tensors.get("weight"), tensors.get("bias")
        if weight is None or tuple(weight.shape) != shape or not weight.is_floating_point():
            raise ValueError(f"expected a floating-point weight of shape {shape}")
        if bias is not None and (tuple(bias.shape) != shape[:1] or bias.dtype != weight.dtype):
            raise ValueError(f"expected a bias of shape {shape[:1]} and dtype {weight.dtype}")
        return cls.from_linear(dense_linear(weight, bias).eval())

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` sharing this layer's parameters (what ``from_linear`` was given)."""
        return _sharing(nn.Linear, self)

    def forward(self, x: Tensor) -> Tensor:
        weight, bias = self.weight, self.bias
        if torch.is_grad_enabled() and (
            x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
        ):
            return F.linear(x, weight, bias)
        if torch.compiler.is_compiling():  # one opaque node in the graph (compile, export)
            return packed_linear(x, weight, bias)
        return packed_linear_cpu(x, weight, bias)  # eager: the same kernel, minus the dispatcher


def _sharing(cls: type[nn.Linear], source: nn.Linear) -> nn.Linear:
    """An instance of ``cls`` (``nn.Linear`` or a subclass) holding ``source``'s parameters and mode."""
    linear = cls.__new__(cls)
    nn.Module.__init__(linear)
    linear.in_features, linear.out_features = source.in_features, source.out_features
    linear.weight, linear.bias = source.weight, source.bias
    return linear.train(source.training)
