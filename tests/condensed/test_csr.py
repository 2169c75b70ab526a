"""``CSRLinear`` equals the masked dense layer in every grad mode, inference mode included."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

from lightning_srigl.condensed.csr import CSRLinear


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("mode", ["grad", "no_grad", "inference_mode"])
def test_csr_linear_matches_masked_dense(batch: int, mode: str) -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(16, 8)
    mask = torch.rand(8, 16) < 0.3
    layer = CSRLinear.from_masked(linear, mask)
    x = torch.randn(batch, 16)
    context = {"grad": contextlib.nullcontext(), "no_grad": torch.no_grad(), "inference_mode": torch.inference_mode()}
    with context[mode]:
        out = layer(x)
    expected = F.linear(x, linear.weight.detach() * mask, linear.bias.detach())
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
