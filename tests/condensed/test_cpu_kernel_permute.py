"""The gather-free batch-1 kernel (csrc/batch1.h) of every variant that has one, and CondensedLinear's cached layout."""

import pytest
import torch

from lightning_srigl.condensed import CondensedLinear
from lightning_srigl.condensed.cpu_kernel import (
    batch1_layout,
    condensed_linear_torch,
    host_variants,
    load_extension,
    load_variant_by_name,
)


@pytest.fixture
def extension():
    """The variant CondensedLinear uses, when it has the batch-1 kernel."""
    ext = load_extension()
    if ext is None or not ext.batch1_supported:
        pytest.skip("the chosen variant has no batch-1 kernel here; CondensedLinear uses the gather kernel instead")
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
def test_batch1_kernel_matches_reference(batch1_kernel, inp, rows, k, index_dtype, out, with_bias):
    values, indices, x = sorted_case(inp, rows, k, index_dtype, seed=rows)
    indices = indices[:, torch.randperm(k, generator=torch.Generator().manual_seed(1))].contiguous()
    active = torch.randperm(out, generator=torch.Generator().manual_seed(2))[:rows].sort().values
    bias = torch.randn(out) if with_bias else None
    layout = batch1_layout(values, indices, active, inp, out, kernel=batch1_kernel)
    got = batch1_kernel.batch1_forward(x, layout, bias)
    expected = torch.zeros(1, out, dtype=torch.float64) if bias is None else bias.double().clone()[None]
    expected[:, active] += condensed_linear_torch(x.double(), values.double(), indices, None)
    assert got.shape == (1, out)
    torch.testing.assert_close(got.double(), expected, atol=1e-4, rtol=1e-4)


def test_batch1_kernel_splits_groups_over_threads_exactly(batch1_kernel):
    """Two threads each take a range of lane groups (and prefetch from the middle of the layout): the
    result is the one-thread result, bit for bit, and the reference's."""
    values, indices, x = sorted_case(3072, 300, 77, torch.int16, seed=5)
    bias = torch.randn(300)
    layout = batch1_layout(values, indices, torch.arange(300), 3072, 300, kernel=batch1_kernel)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = batch1_kernel.batch1_forward(x, layout, bias)
        torch.set_num_threads(2)
        two = batch1_kernel.batch1_forward(x, layout, bias)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)
    expected = condensed_linear_torch(x.double(), values.double(), indices, bias.double())
    torch.testing.assert_close(two.double(), expected, atol=1e-4, rtol=1e-4)


def test_batch1_kernel_ignores_inf_in_unused_features(batch1_kernel):
    """Idle lanes must not turn an infinite activation that no kept weight reads into NaN."""
    values, indices, x = sorted_case(64, 16, 1, torch.int16, seed=3)
    x[:, [i for i in range(64) if i not in set(indices.flatten().tolist())]] = float("inf")
    layout = batch1_layout(values, indices, torch.arange(16), 64, 16, kernel=batch1_kernel)
    got = batch1_kernel.batch1_forward(x, layout, None)
    torch.testing.assert_close(got, condensed_linear_torch(x, values, indices, None))


def test_batch1_rejects_mismatched_inputs(batch1_kernel):
    values, indices, x = sorted_case(64, 4, 8, torch.int16, seed=0)
    layout = batch1_layout(values, indices, torch.arange(4), 64, 4, kernel=batch1_kernel)
    with pytest.raises(RuntimeError, match=r"\(1, 64\)"):
        batch1_kernel.batch1_forward(torch.randn(1, 65), layout, None)
    with pytest.raises(RuntimeError, match="bias"):
        batch1_kernel.batch1_forward(x, layout, torch.randn(5))
    with pytest.raises(RuntimeError, match="inconsistent layout"):
        batch1_kernel.batch1_forward(x, layout[:-64], None)
    with pytest.raises(RuntimeError, match="rows"):
        batch1_layout(values, indices, torch.tensor([0, 1, 2, 4]), 64, 4, kernel=batch1_kernel)


def test_batch1_layout_of_one_variant_is_refused_by_another(batch1_kernel):
    """A layout names the lanes and window it was built for; another variant's kernel must not misread it."""
    values, indices, x = sorted_case(64, 4, 8, torch.int16, seed=0)
    layout = batch1_layout(values, indices, torch.arange(4), 64, 4, kernel=batch1_kernel)
    others = [load_variant_by_name(name) for name in host_variants() if name != batch1_kernel.variant]
    for other in [kernel for kernel in others if kernel.batch1_supported]:
        with pytest.raises(RuntimeError, match="another kernel variant"):
            other.batch1_forward(x, layout, None)


def test_batch1_layout_only_for_fp32(batch1_kernel):
    values, indices, _ = sorted_case(64, 4, 8, torch.int16, seed=0)
    rows = torch.arange(4)
    assert batch1_layout(values.bfloat16(), indices, rows, 64, 4, kernel=batch1_kernel) is None
    assert batch1_layout(values[:0], indices[:0], rows[:0], 64, 4, kernel=batch1_kernel) is None


def test_condensed_linear_batch1_follows_weight_changes(extension):
    torch.manual_seed(0)
    linear = torch.nn.Linear(200, 40)
    mask = torch.zeros(40, 200, dtype=torch.bool).scatter_(1, torch.argsort(torch.rand(40, 200), 1)[:, :20], True)
    layer = CondensedLinear.from_masked(linear, mask)
    x = torch.randn(1, 200)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, linear.weight * mask, linear.bias))
        assert layer._layouts.cached("cpu_batch1") is not None
        layer.values.mul_(2.0)  # in place: the cached layout must be rebuilt
        torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, 2 * linear.weight * mask, linear.bias))
        other = CondensedLinear.from_masked(torch.nn.Linear(200, 40), mask)
        layer.load_state_dict(other.state_dict(), assign=True)  # replaced buffers
        torch.testing.assert_close(layer(x), other(x.clone()))
        torch.testing.assert_close(layer(x), condensed_linear_torch(x, other.values, other.indices, other.bias))


def test_layers_built_in_inference_mode_keep_the_gather_kernel(extension):
    with torch.inference_mode():
        linear = torch.nn.Linear(64, 8)
        layer = CondensedLinear.from_masked(linear, torch.ones(8, 64, dtype=torch.bool))
        x = torch.randn(1, 64)
        torch.testing.assert_close(layer(x), linear(x))
    assert "cpu_batch1" not in layer._layouts
