"""CondensedLinear equals the masked dense layer it replaces: property tests over shapes, masks, dtypes, paths."""

import os
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from lightning_srigl.condensed import CondensedLinear
from lightning_srigl.condensed.cpu_kernel import DISABLE_ENV, load_extension
from lightning_srigl.masking import register_mask_

TOLERANCES = {
    torch.float32: {"atol": 1e-4, "rtol": 1e-4},
    torch.bfloat16: {"atol": 5e-2, "rtol": 2e-2},
    torch.float16: {"atol": 1e-2, "rtol": 2e-3},
}


@pytest.fixture(scope="module", autouse=True)
def extension():
    """Build (or load the cached) C++ extension once for this module."""
    return load_extension()


def constant_fan_in_mask(out: int, inp: int, fan_in: int, ablated: list[bool], seed: int) -> torch.Tensor:
    """``(out, inp)`` bool mask: ``fan_in`` random inputs per row, rows flagged in ``ablated`` empty."""
    g = torch.Generator().manual_seed(seed)
    order = torch.argsort(torch.rand(out, inp, generator=g), dim=1)[:, :fan_in]
    mask = torch.zeros(out, inp, dtype=torch.bool).scatter_(1, order, True)
    mask[torch.tensor(ablated, dtype=torch.bool)] = False
    return mask


def masked_linear(out: int, inp: int, mask: torch.Tensor, bias: bool, seed: int) -> nn.Linear:
    torch.manual_seed(seed)
    linear = nn.Linear(inp, out, bias=bias)
    with torch.no_grad():
        linear.weight.mul_(mask)
        if bias:
            linear.bias.normal_()
    return linear


def dense_reference(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """The masked dense output computed in float64 from the (already rounded) low-precision tensors."""
    bias = None if linear.bias is None else linear.bias.double()
    return F.linear(x.double(), linear.weight.double(), bias)


@st.composite
def layer_cases(draw):
    inp = draw(st.integers(1, 80))
    out = draw(st.integers(1, 40))
    fan_in = draw(st.integers(1, inp))
    ablated = draw(st.lists(st.booleans(), min_size=out, max_size=out))
    batch_shape = draw(st.sampled_from([(0,), (1,), (2,), (3,), (5,), (17,), (33,), (70,), (2, 3), (3, 1, 5), (4, 0)]))
    dtype = draw(st.sampled_from(list(TOLERANCES)))
    bias = draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    return inp, out, fan_in, ablated, batch_shape, dtype, bias, seed


@pytest.mark.parametrize("path", ["cpp", "fallback"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=layer_cases())
def test_condensed_equals_masked_dense(path, case):
    inp, out, fan_in, ablated, batch_shape, dtype, bias, seed = case
    mask = constant_fan_in_mask(out, inp, fan_in, ablated, seed)
    linear = masked_linear(out, inp, mask, bias, seed).to(dtype)
    condensed = CondensedLinear.from_masked(linear, mask)
    x = torch.randn(*batch_shape, inp, generator=torch.Generator().manual_seed(seed)).to(dtype)
    with mock.patch.dict(os.environ, {DISABLE_ENV: "1" if path == "fallback" else "0"}), torch.no_grad():
        y = condensed(x)
    assert y.shape == (*batch_shape, out) and y.dtype == dtype
    torch.testing.assert_close(y.double(), dense_reference(linear, x), **TOLERANCES[dtype])


def test_buffers_layout_and_ablated_rows_output_bias():
    mask = constant_fan_in_mask(6, 10, 3, [False, True, False, False, True, False], seed=0)
    linear = masked_linear(6, 10, mask, bias=True, seed=0)
    condensed = CondensedLinear.from_masked(linear, mask)
    assert condensed.values.shape == (4, 3) and condensed.values.dtype == torch.float32
    assert condensed.indices.dtype == torch.int16
    assert torch.equal(condensed.indices, condensed.indices.sort(dim=1).values)
    assert condensed.active_rows.tolist() == [0, 2, 3, 5]
    y = condensed(torch.randn(7, 10))
    torch.testing.assert_close(y[:, [1, 4]], linear.bias[[1, 4]].expand(7, 2).detach())


def test_int32_indices_for_wide_inputs():
    mask = constant_fan_in_mask(2, 32768, 5, [False, False], seed=1)
    linear = masked_linear(2, 32768, mask, bias=True, seed=1)
    condensed = CondensedLinear.from_masked(linear, mask)
    assert condensed.indices.dtype == torch.int32
    x = torch.randn(3, 32768)
    torch.testing.assert_close(condensed(x).double(), dense_reference(linear, x), atol=1e-4, rtol=1e-4)


def test_rejects_rows_with_different_fan_ins():
    mask = torch.zeros(3, 8, dtype=torch.bool)
    mask[0, :2] = True
    mask[1, :3] = True
    with pytest.raises(ValueError, match="same number of inputs.*CSR"):
        CondensedLinear.from_dense_weight(torch.randn(3, 8), mask)


def test_nm_mask_and_the_layers_own_mask_are_used():
    linear = nn.Linear(16, 8)
    scores = torch.rand(8, 4, 4).argsort(dim=-1)
    mask = (scores < 2).reshape(8, 16)  # 2:4 along the input dimension
    register_mask_(linear, "weight", mask)
    with torch.no_grad():
        linear.weight.mul_(mask)
        linear.weight[0, mask[0]] = 0.0  # explicit zeros inside the mask stay part of the layer
    condensed = CondensedLinear.from_masked(linear)
    assert condensed.fan_in == 8 and condensed.n_active == 8
    x = torch.randn(5, 16)
    torch.testing.assert_close(condensed(x), linear(x), atol=1e-5, rtol=1e-5)


def test_to_dense_and_from_dense_weight_round_trip():
    mask = constant_fan_in_mask(12, 20, 4, [i % 5 == 0 for i in range(12)], seed=2)
    linear = masked_linear(12, 20, mask, bias=False, seed=2)
    condensed = CondensedLinear.from_dense_weight(linear.weight, mask)
    dense = condensed.to_dense()
    assert dense.bias is None
    torch.testing.assert_close(dense.weight, linear.weight)
    x = torch.randn(4, 20)
    torch.testing.assert_close(condensed(x), linear(x), atol=1e-5, rtol=1e-5)


def test_memory_of_90_percent_sparse_layer_is_at_most_016_of_dense():
    for inp, out in [(3072, 768), (768, 3072)]:
        fan_in = round(0.1 * inp)
        mask = constant_fan_in_mask(out, inp, fan_in, [False] * out, seed=3)
        condensed = CondensedLinear.from_dense_weight(torch.randn(out, inp), mask)
        condensed_bytes = condensed.values.nbytes + condensed.indices.nbytes
        assert condensed_bytes <= 0.16 * out * inp * 4


def test_input_gradient_matches_masked_dense():
    mask = constant_fan_in_mask(9, 13, 4, [i == 3 for i in range(9)], seed=4)
    linear = masked_linear(9, 13, mask, bias=True, seed=4)
    condensed = CondensedLinear.from_masked(linear, mask)
    x = torch.randn(2, 3, 13, requires_grad=True)
    (grad_condensed,) = torch.autograd.grad(condensed(x).square().sum(), x)
    (grad_dense,) = torch.autograd.grad(linear(x).square().sum(), x)
    torch.testing.assert_close(grad_condensed, grad_dense, atol=1e-5, rtol=1e-5)


def test_values_gradient_flows_when_values_require_grad():
    mask = constant_fan_in_mask(5, 7, 2, [False] * 5, seed=5)
    linear = masked_linear(5, 7, mask, bias=True, seed=5)
    condensed = CondensedLinear.from_masked(linear, mask)
    condensed.values.requires_grad_(True)
    x = torch.randn(4, 7)
    condensed(x).sum().backward()
    expected = x.sum(0)[condensed.indices.long()]  # d(sum y)/d values[a, j] = sum_b x[b, indices[a, j]]
    torch.testing.assert_close(condensed.values.grad, expected)


def test_errors_and_repr():
    condensed = CondensedLinear.from_dense_weight(torch.randn(4, 6), torch.ones(4, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(\.\.\., 6\)"):
        condensed(torch.randn(2, 5))
    with pytest.raises(ValueError, match="dtype"):
        condensed(torch.randn(2, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match="backend"):
        CondensedLinear.from_dense_weight(torch.randn(4, 6), torch.ones(4, 6, dtype=torch.bool), backend="cuda")
    text = repr(condensed)
    for part in ["in_features=6", "out_features=4", "fan_in=6", "active_rows=4", "index_dtype=int16", "backend=auto"]:
        assert part in text


def test_torch_backend_matches_auto_backend():
    mask = constant_fan_in_mask(10, 30, 6, [i % 4 == 0 for i in range(10)], seed=6)
    linear = masked_linear(10, 30, mask, bias=True, seed=6)
    auto = CondensedLinear.from_masked(linear, mask)
    reference = CondensedLinear.from_masked(linear, mask, backend="torch")
    x = torch.randn(19, 30)
    torch.testing.assert_close(auto(x), reference(x), atol=1e-5, rtol=1e-5)


def test_one_row_of_any_rank_takes_the_batch1_kernel():
    """A decoded token's ``(1, 1, in)`` is one row: the batch-1 kernel serves it, with the input's leading dims."""
    mask = constant_fan_in_mask(24, 40, 5, [i % 6 == 0 for i in range(24)], seed=3)
    linear = masked_linear(24, 40, mask, bias=True, seed=3)
    layer = CondensedLinear.from_masked(linear, mask)
    x = torch.randn(1, 1, 40)
    with torch.no_grad():
        out = layer(x)
    assert out.shape == (1, 1, 24) and "cpu_batch1" in layer._layouts
    torch.testing.assert_close(out.double(), dense_reference(linear, x), rtol=1e-5, atol=1e-5)
