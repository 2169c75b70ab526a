"""``PackedLinear``: a dense ``nn.Linear`` whose inference product runs on oneDNN's prepacked weight.

`accelerate` swaps it in for the dense linear layers it does not sparsify (GPT-2's tied ``lm_head``,
a third of the model's FLOPs) where it times faster than ``F.linear``. It holds the replaced layer's own
``weight`` and ``bias`` parameters, so a tie (``lm_head.weight is wte.weight``) and the ``state_dict``
keys stay as they were, and it *is* an ``nn.Linear`` (a subclass without a constructor of its own): code
that trains, loads or inspects an ``nn.Linear`` works unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_srigl.kernels.dense import packed_linear, packed_linear_cpu

__all__ = ["PackedLinear"]


class PackedLinear(nn.Linear):
    """``(..., in) -> (..., out)``, ``F.linear`` computed through oneDNN's prepacked fp32 GEMM.

    Without gradient tracking, an fp32 CPU call runs ``lightning_srigl::packed_linear`` (the weight reordered
    once for oneDNN and rebuilt when it changes: `lightning_srigl.kernels.dense`); a call that tracks a
    gradient, or in another dtype or on another device, is ``F.linear``.
    """

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> PackedLinear:
        """The layer computing ``linear``, sharing its ``weight`` and ``bias`` parameters (ties hold)."""
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.in_features, layer.out_features = linear.in_features, linear.out_features
        layer.weight, layer.bias = linear.weight, linear.bias
        return layer.train(linear.training)

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` sharing this layer's parameters (what ``from_linear`` was given)."""
        linear = nn.Linear.__new__(nn.Linear)
        nn.Module.__init__(linear)
        linear.in_features, linear.out_features = self.in_features, self.out_features
        linear.weight, linear.bias = self.weight, self.bias
        return linear.train(self.training)

    def forward(self, x: Tensor) -> Tensor:
        weight, bias = self.weight, self.bias
        if torch.is_grad_enabled() and (
            x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
        ):
            return F.linear(x, weight, bias)
        if torch.compiler.is_compiling():  # one opaque node in the graph (compile, export)
            return packed_linear(x, weight, bias)
        return packed_linear_cpu(x, weight, bias)  # eager: the same kernel, minus the dispatcher
