"""The gather-free batch-1 kernel (csrc/permute_b1.cpp) and CondensedLinear's cached layout for it."""

import pytest
import torch

from lightning_srigl.condensed import CondensedLinear
from lightning_srigl.condensed.cpu_kernel import condensed_linear_torch, load_extension, permute_layout


@pytest.fixture(scope="module")
def extension():
    ext = load_extension()
    if ext is None or not ext.permute_supported():
        pytest.skip("no C++ extension with AVX-512 here; CondensedLinear uses the gather kernel instead")
    return ext


def sorted_case(inp: int, rows: int, k: int, index_dtype: torch.dtype, seed: int):
    g = torch.Generator().manual_seed(seed)
    indices = torch.argsort(torch.rand(rows, inp, generator=g), dim=1)[:, :k].sort(dim=1).values
    return torch.randn(rows, k, generator=g), indices.to(index_dtype), torch.randn(1, inp, generator=g)


# Row counts that are not multiples of 16 (partial lane groups), inputs that are not multiples of 32
# (windows running past the end), dense rows (k = inp: every window full), unsorted indices, and
# ablated rows (outputs that only get their bias).
@pytest.mark.parametrize(
    ("inp", "rows", "k", "index_dtype", "out"),
    [
        (300, 21, 37, torch.int16, 21),
        (100, 37, 50, torch.int32, 37),
        (64, 16, 64, torch.int16, 16),
        (3000, 5, 300, torch.int16, 5),
        (3072, 70, 31, torch.int16, 96),
        (40, 3, 1, torch.int16, 9),
    ],
)
@pytest.mark.parametrize("with_bias", [True, False])
def test_permute_kernel_matches_reference(extension, inp, rows, k, index_dtype, out, with_bias):
    values, indices, x = sorted_case(inp, rows, k, index_dtype, seed=rows)
    indices = indices[:, torch.randperm(k, generator=torch.Generator().manual_seed(1))].contiguous()
    active = torch.randperm(out, generator=torch.Generator().manual_seed(2))[:rows].sort().values
    bias = torch.randn(out) if with_bias else None
    layout = permute_layout(values, indices, active, inp, out)
    got = extension.permute_forward(x, layout, bias)
    expected = torch.zeros(1, out, dtype=torch.float64) if bias is None else bias.double().clone()[None]
    expected[:, active] += condensed_linear_torch(x.double(), values.double(), indices, None)
    assert got.shape == (1, out)
    torch.testing.assert_close(got.double(), expected, atol=1e-4, rtol=1e-4)


def test_permute_kernel_ignores_inf_in_unused_features(extension):
    """Idle lanes must not turn an infinite activation that no kept weight reads into NaN."""
    values, indices, x = sorted_case(64, 16, 1, torch.int16, seed=3)
    x[:, [i for i in range(64) if i not in set(indices.flatten().tolist())]] = float("inf")
    layout = permute_layout(values, indices, torch.arange(16), 64, 16)
    got = extension.permute_forward(x, layout, None)
    torch.testing.assert_close(got, condensed_linear_torch(x, values, indices, None))


def test_permute_rejects_mismatched_inputs(extension):
    values, indices, x = sorted_case(64, 4, 8, torch.int16, seed=0)
    layout = permute_layout(values, indices, torch.arange(4), 64, 4)
    with pytest.raises(RuntimeError, match=r"\(1, 64\)"):
        extension.permute_forward(torch.randn(1, 65), layout, None)
    with pytest.raises(RuntimeError, match="bias"):
        extension.permute_forward(x, layout, torch.randn(5))
    with pytest.raises(RuntimeError, match="inconsistent layout"):
        extension.permute_forward(x, layout[:-64], None)
    with pytest.raises(RuntimeError, match="rows"):
        permute_layout(values, indices, torch.tensor([0, 1, 2, 4]), 64, 4)


def test_permute_layout_only_for_fp32(extension):
    values, indices, _ = sorted_case(64, 4, 8, torch.int16, seed=0)
    rows = torch.arange(4)
    assert permute_layout(values.bfloat16(), indices, rows, 64, 4) is None
    assert permute_layout(values[:0], indices[:0], rows[:0], 64, 4) is None


def test_condensed_linear_batch1_follows_weight_changes(extension):
    torch.manual_seed(0)
    linear = torch.nn.Linear(200, 40)
    mask = torch.zeros(40, 200, dtype=torch.bool).scatter_(1, torch.argsort(torch.rand(40, 200), 1)[:, :20], True)
    layer = CondensedLinear.from_linear(linear, mask)
    x = torch.randn(1, 200)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, linear.weight * mask, linear.bias))
        assert layer._layouts["cpu_batch1"][-1] is not None
        layer.values.mul_(2.0)  # in place: the cached layout must be rebuilt
        torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, 2 * linear.weight * mask, linear.bias))
        other = CondensedLinear.from_linear(torch.nn.Linear(200, 40), mask)
        layer.load_state_dict(other.state_dict(), assign=True)  # replaced buffers
        torch.testing.assert_close(layer(x), other(x.clone()))
        torch.testing.assert_close(layer(x), condensed_linear_torch(x, other.values, other.indices, other.bias))


def test_layers_built_in_inference_mode_keep_the_gather_kernel(extension):
    with torch.inference_mode():
        linear = torch.nn.Linear(64, 8)
        layer = CondensedLinear.from_linear(linear, torch.ones(8, 64, dtype=torch.bool))
        x = torch.randn(1, 64)
        torch.testing.assert_close(layer(x), linear(x))
    assert "cpu_batch1" not in layer._layouts
