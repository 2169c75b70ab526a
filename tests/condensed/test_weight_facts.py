"""Condensed layers answer what code around the replaced layer reads of its weight (shape, dtype, device), and
refuse to be computed with as a dense weight."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_srigl.condensed import CondensedConv1d, CondensedConv2d, CondensedLinear
from lightning_srigl.condensed.kinds.candidates import projected_attention


def constant_fan_in(shape: tuple[int, ...], k: int, seed: int = 0) -> torch.Tensor:
    """A bool mask of ``shape`` keeping ``k`` entries in each row of its ``(out, -1)`` view."""
    fan = math.prod(shape[1:])
    keep = torch.rand(shape[0], fan, generator=torch.Generator().manual_seed(seed)).argsort(1)[:, :k]
    return torch.zeros(shape[0], fan, dtype=torch.bool).scatter_(1, keep, True).view(shape)


def masked(module: nn.Module, mask: torch.Tensor, name: str = "weight") -> nn.Module:
    with torch.no_grad():
        getattr(module, name).mul_(mask)
    return module


@pytest.mark.parametrize(
    "dense, build",
    [
        (nn.Linear(16, 8), CondensedLinear.from_masked),
        (nn.Conv2d(4, 6, 3, groups=2), CondensedConv2d.from_masked),
        (nn.Conv1d(4, 6, 5), CondensedConv1d.from_masked),
    ],
)
def test_weight_reports_the_dense_shape_dtype_and_device_and_refuses_arithmetic(dense, build) -> None:
    mask = constant_fan_in(dense.weight.shape, 3)
    layer = build(masked(dense, mask), mask).double()
    facts = layer.weight
    assert facts.shape == dense.weight.shape and facts.size() == dense.weight.size()
    assert facts.size(1) == dense.weight.size(1)
    assert facts.dim() == facts.ndim == dense.weight.dim() and facts.numel() == dense.weight.numel()
    assert facts.dtype == torch.float64 and facts.device == torch.device("cpu") and facts.is_floating_point()
    assert not facts.requires_grad and facts.layout == torch.strided
    with pytest.raises(TypeError, match="dense_weight"):
        F.linear(torch.randn(2, 16, dtype=torch.float64), facts)
    with pytest.raises(AttributeError, match="dense_weight"):
        facts.sum()
    torch.testing.assert_close(layer.dense_weight(), dense.weight.detach().double())


def test_transformer_encoder_layer_in_eval_runs_with_condensed_layers_and_attention() -> None:
    """nn.TransformerEncoderLayer (batch_first, eval) reads self_attn.in_proj_bias and linear1.weight before
    choosing its fused path; with condensed layers it takes the module path and equals the dense layer."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, 32, batch_first=True).eval()
    linear1, in_proj = constant_fan_in((32, 16), 4), constant_fan_in((48, 16), 4, seed=1)
    masked(layer.linear1, linear1)
    masked(layer.self_attn, in_proj, "in_proj_weight")
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        expected = layer(x)
        layer.linear1 = CondensedLinear.from_masked(layer.linear1, linear1)
        layer.self_attn = projected_attention(layer.self_attn, in_proj).eval()
        assert layer.self_attn.in_proj_weight.shape == (48, 16) and layer.self_attn._qkv_same_embed_dim
        torch.testing.assert_close(layer(x), expected)
