"""``CondensedLinear`` on the Triton path: the ``(k, A)`` layout is built once and reaches both kernels.

On CUDA these tests use the default ``backend="auto"``; on CPU tensors (Triton's interpreter) they use
``backend="triton"``, because ``"auto"`` runs the C++ kernels on CPU (tests/condensed/test_linear.py).
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from lightning_srigl.condensed.linear import CondensedLinear
from lightning_srigl.condensed.serialization import load_condensed, save_condensed
from tests.condensed.triton_device import DTYPES, TOLERANCE, constant_fan_in_layer, triton_device, triton_kernel

SMALL_BATCH = triton_kernel.SMALL_BATCH
pytestmark = pytest.mark.filterwarnings("error::UserWarning")  # no silent PyTorch fallback


@pytest.fixture
def device() -> torch.device:
    return triton_device()


@pytest.fixture
def launches(monkeypatch: pytest.MonkeyPatch) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Records the strides of ``values`` and ``indices`` of every Triton launch through the module path."""
    seen: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    launch = triton_kernel.condensed_linear_triton

    def spy(x2d, values, indices, bias):
        seen.append((values.stride(), indices.stride()))
        return launch(x2d, values, indices, bias)

    monkeypatch.setattr(triton_kernel, "condensed_linear_triton", spy)
    return seen


def _layer(device: torch.device, n_ablated: int = 3, bias: bool = True) -> tuple[CondensedLinear, nn.Linear]:
    """A 40-neuron, fan-in-9 condensed layer on ``device`` and its masked dense twin (CPU, fp32)."""
    weight, mask, b = constant_fan_in_layer(40, 70, 9, n_ablated, seed=11)
    dense = nn.Linear(70, 40, bias=bias).requires_grad_(False)
    dense.weight.copy_(weight)
    if bias:
        dense.bias.copy_(b)
    backend = "auto" if device.type == "cuda" else "triton"
    return CondensedLinear.from_masked(dense, mask, backend=backend).to(device), dense


def _assert_matches(layer: CondensedLinear, dense: nn.Linear, batch: int, dtype: torch.dtype = torch.float32) -> None:
    x = torch.randn(batch, layer.in_features, generator=torch.Generator().manual_seed(batch)).to(dtype)
    expected = nn.functional.linear(x.float(), dense.weight.to(dtype).float(), dense.bias)
    y = layer(x.to(layer.values.device))
    assert y.dtype == dtype and y.shape == (batch, layer.out_features)
    rtol, atol = TOLERANCE[dtype]
    torch.testing.assert_close(y.float().cpu(), expected, rtol=rtol, atol=atol)


def _transposed(layer: CondensedLinear) -> tuple[tuple[int, int], tuple[int, int]]:
    """The strides the Triton kernels were designed for: ``(A, k)`` views over ``(k, A)`` storage."""
    return (1, layer.n_active), (1, layer.n_active)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("n_ablated", "bias"), [(0, True), (3, True), (3, False)])
def test_both_regimes_match_masked_dense_and_read_the_transposed_layout(
    device: torch.device, launches: list, dtype: torch.dtype, n_ablated: int, bias: bool
) -> None:
    layer, dense = _layer(device, n_ablated, bias)
    layer = layer.to(dtype)
    with torch.no_grad():
        for batch in (1, SMALL_BATCH, SMALL_BATCH + 1, 3 * SMALL_BATCH + 5):  # gather-dot, then tiled
            _assert_matches(layer, dense, batch, dtype)
    assert launches == [_transposed(layer)] * 4


def test_layout_is_built_once_for_many_calls(device: torch.device, monkeypatch: pytest.MonkeyPatch) -> None:
    layer, dense = _layer(device)
    builds = []
    prepare = triton_kernel.prepare_triton_layout
    monkeypatch.setattr(triton_kernel, "prepare_triton_layout", lambda v, i: builds.append(1) or prepare(v, i))
    with torch.no_grad():
        for batch in (1, 2, 40, 1):
            _assert_matches(layer, dense, batch)
    assert len(builds) == 1


def test_in_place_change_and_state_dict_load_rebuild_the_layout(device: torch.device, launches: list) -> None:
    layer, dense = _layer(device)
    with torch.no_grad():
        _assert_matches(layer, dense, 2)
        layer.values.mul_(2.0)
        dense.weight.mul_(2.0)
        _assert_matches(layer, dense, 2)  # in place: the version counter moved
        other, other_dense = _layer(device)
        other.values.normal_()
        other_dense.weight.copy_(other.dense_weight().cpu())
        layer.load_state_dict(other.state_dict())  # copy_ into the same buffers
        _assert_matches(layer, other_dense, 20)
        other.values.normal_()
        other_dense.weight.copy_(other.dense_weight().cpu())
        layer.load_state_dict(other.state_dict(), assign=True)  # new buffer objects
        _assert_matches(layer, other_dense, 1)
    assert launches == [_transposed(layer)] * 4
    assert not any("layout" in key for key in layer.state_dict())


def test_deepcopy_keeps_its_own_layout(device: torch.device, launches: list) -> None:
    layer, dense = _layer(device)
    with torch.no_grad():
        _assert_matches(layer, dense, 1)  # the original has built its layout
        twin = copy.deepcopy(layer)
        layer.values.zero_()  # must not reach the copy
        _assert_matches(twin, dense, 1)
        _assert_matches(twin, dense, 30)
    assert launches == [_transposed(layer)] * 3


def test_saved_and_loaded_layer_uses_the_layout(device: torch.device, launches: list) -> None:
    layer, dense = _layer(device)
    buffer = io.BytesIO()
    save_condensed(nn.Sequential(layer), buffer)
    buffer.seek(0)
    loaded = load_condensed(buffer).to(device)
    with torch.no_grad():
        _assert_matches(loaded[0], dense, 1)
        _assert_matches(loaded[0], dense, 25)
    assert launches == [_transposed(layer)] * 2


def test_dtype_change_drops_the_old_layout(device: torch.device) -> None:
    layer, dense = _layer(device)
    with torch.no_grad():
        _assert_matches(layer, dense, 4)
        layer.half()
        assert len(layer._layouts) == 0  # the fp32 layout went with the fp32 buffers
        _assert_matches(layer, dense, 4, torch.float16)
    assert layer._layouts.cached("triton")[0].dtype == torch.float16


def test_gradients_flow_through_the_differentiable_op(device: torch.device, launches: list) -> None:
    layer, dense = _layer(device)
    layer.values.requires_grad_(True)
    x = torch.randn(5, 70, requires_grad=True)
    x_dev = x.detach().to(device).requires_grad_(True)
    layer(x_dev).square().sum().backward()
    masked = dense.weight.clone().requires_grad_(True)
    nn.functional.linear(x, masked, dense.bias).square().sum().backward()
    torch.testing.assert_close(x_dev.grad.cpu(), x.grad)
    expected = masked.grad[layer.active_rows.cpu()].gather(1, layer.indices.long().cpu())
    torch.testing.assert_close(layer.values.grad.cpu(), expected)
    # A tracked gradient takes the differentiable custom op (C++ on CPU, the Triton kernel on CUDA) on the
    # buffers themselves, never the direct launch on the cached layout (whose gradient would not reach them).
    assert _transposed(layer) not in launches


def test_autocast_fp16_input_is_cast_to_the_layer_dtype(device: torch.device) -> None:
    """Under 16-mixed autocast a layer receives fp16 activations; the fp32 layer computes in fp32."""
    layer, dense = _layer(device)
    x = torch.randn(3, 70).half()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.float16):
        y = layer(x.to(device))
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.cpu(), dense(x.float()))
    with pytest.raises(ValueError, match="reshape or cast the input"):
        layer(x.to(device))  # outside autocast a dtype mismatch stays an error
