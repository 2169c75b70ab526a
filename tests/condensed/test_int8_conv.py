"""int8 condensed convolutions: the int8 product of the im2col rows (bit-equal to the int32 reference on
``F.unfold``'s rows), error against the fp32 convolution, dense forms, save/load, and acceleration's choice."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_srigl.acceleration.accelerate import accelerate
from lightning_srigl.condensed import load_condensed, save_condensed
from lightning_srigl.condensed.layers.int8_conv import Int8CondensedConv1d, Int8CondensedConv2d
from lightning_srigl.kernels.int8 import int8_linear_reference
from lightning_srigl.masking import register_mask_
from tests.condensed.test_accelerate import constant_fan_in_mask


def masked_conv(conv: nn.Conv1d | nn.Conv2d, k: int, ablated: list[int], seed: int) -> torch.Tensor:
    """Give ``conv`` a constant fan-in mask of ``k`` taps per filter (the ``ablated`` filters empty); return it."""
    fan_in = conv.weight[0].numel()
    mask = constant_fan_in_mask(conv.out_channels, fan_in, k, ablated, seed).view_as(conv.weight)
    register_mask_(conv, "weight", mask)
    with torch.no_grad():
        conv.weight.mul_(mask)
    return mask


def unfolded_reference(layer: Int8CondensedConv2d, x4d: torch.Tensor, padding: tuple[int, int]) -> torch.Tensor:
    """The int32 reference of the int8 op on the layer's im2col rows, ``(N, out, L)``."""
    cols = F.unfold(x4d, layer.kernel_size, layer.dilation, padding, layer.stride)
    rows = cols.transpose(1, 2).reshape(-1, layer.in_features)
    y = int8_linear_reference(
        rows, layer.weight, layer.indices, layer.weight_sum, layer.weight_scale, layer.active_rows, layer.bias,
        layer.out_features, layer.input_scale, layer.input_zero,
    )  # fmt: skip
    return y.view(x4d.shape[0], -1, layer.out_features).transpose(1, 2)


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_conv2d_is_the_int8_product_of_its_im2col_rows(static: bool) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 10, 3, stride=2, padding=1).eval()
    mask = masked_conv(conv, k=7, ablated=[2], seed=1)
    layer = Int8CondensedConv2d.from_masked(conv, mask)
    x = torch.randn(3, 6, 9, 7)
    if static:
        layer.calibrate(x)
    y = layer(x)
    assert y.shape == (3, 10, 5, 4)
    expected = unfolded_reference(layer, x, (1, 1)).reshape(3, 10, 5, 4)
    assert torch.equal(y, expected)
    with torch.no_grad():
        fp32 = conv(x)
    assert (y - fp32).norm() / fp32.norm() < 0.02
    torch.testing.assert_close(y[:, 2], conv.bias[2].expand(3, 5, 4))  # an ablated filter outputs its bias


def test_conv1d_same_padding_dense_forms_and_save_load(tmp_path) -> None:
    torch.manual_seed(1)
    conv = nn.Conv1d(8, 12, 5, padding="same").eval()
    mask = masked_conv(conv, k=6, ablated=[0, 7], seed=2)
    layer = Int8CondensedConv1d.from_masked(conv, mask)
    x = torch.randn(4, 8, 30)
    y = layer(x)
    assert torch.equal(y, unfolded_reference(layer, x.unsqueeze(2), (0, 2)))
    assert torch.equal(layer(x[0]), y[0])  # unbatched
    assert torch.equal(layer.dense_masks()["weight"], mask)
    dense = layer.to_dense()
    assert isinstance(dense, nn.Conv1d) and dense.padding == "same"
    with torch.no_grad():
        torch.testing.assert_close(dense(x), y, atol=0.05, rtol=0.05)  # dequantized weights, fp32 activations
    model = nn.Sequential(layer.calibrate(x), nn.ReLU())
    save_condensed(model, tmp_path / "conv.pt")
    loaded = load_condensed(tmp_path / "conv.pt")
    assert isinstance(loaded[0], Int8CondensedConv1d) and loaded[0].input_zero == layer.input_zero
    assert torch.equal(loaded(x), model(x))


def test_rejects_grouped_convolutions_and_bad_input() -> None:
    conv = nn.Conv2d(4, 8, 3, groups=2)
    mask = masked_conv(conv, k=5, ablated=[], seed=3)
    with pytest.raises(ValueError, match="groups=1"):
        Int8CondensedConv2d.from_masked(conv, mask)
    layer = Int8CondensedConv2d.from_masked(nn.Conv2d(4, 8, 3), torch.ones(8, 4, 3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="fp32 input"):
        layer(torch.randn(1, 5, 6, 6))


def test_accelerate_times_int8_candidates_for_convolutions() -> None:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv1d(1, 16, 5, padding=2), nn.ReLU(), nn.Conv1d(16, 16, 5, padding=2)).eval()
    masked_conv(model[2], k=8, ablated=[3], seed=4)
    x = torch.randn(8, 1, 24)
    with torch.no_grad():
        expected = model(x)
    report = accelerate(model, x, quantize="int8", error_budget=1.0, candidates=["dense"], repeats=1, verbose=False)
    (row,) = report.rows
    assert set(row.errors) == {"int8_condensed", "int8_condensed_static"}  # no torch int8 conv candidate
    assert row.chosen in ("dense", "int8_condensed", "int8_condensed_static")
    with torch.no_grad():
        assert (model(x) - expected).norm() / expected.norm() <= max(row.errors.values(), default=0.0) + 1e-6
