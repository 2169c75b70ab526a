"""The sampled product ``go^T x`` at a mask's positions: every variant the host runs against a float64 reference."""

from __future__ import annotations

import pytest
import torch

from lightning_srigl.condensed.sampled import SampledLayout, sampled_product, sampled_product_available

pytestmark = pytest.mark.skipif(not sampled_product_available(), reason="the C++ CPU kernels are not built")

NS = [1, 5, 127, 128, 129, 300]  # one sample, a partial chunk, the 128-sample chunk edges, several chunks
# (out, in): odd, even, lane multiples; 2100 inputs cross the kernel's 1024-feature blocks (csrc/sampled.h)
SHAPES = [(1, 1), (1, 17), (7, 1), (16, 16), (5, 33), (33, 8), (21, 300), (9, 2100)]
DENSITIES = [0.0, 0.1, 0.5, 1.0]


def unstructured_mask(out: int, inp: int, density: float, g: torch.Generator) -> torch.Tensor:
    mask = torch.rand(out, inp, generator=g) < density
    if density == 1.0:
        mask[:] = True
    if 0.0 < density < 1.0 and out > 2:
        mask[out // 2] = False  # a row with no positions
    return mask


def constant_fan_in_mask(out: int, inp: int, density: float, g: torch.Generator) -> torch.Tensor:
    k = round(density * inp)
    mask = torch.zeros(out, inp, dtype=torch.bool)
    columns = torch.argsort(torch.rand(out, inp, generator=g), dim=1)[:, :k]
    mask.scatter_(1, columns, True)
    if 0 < k < inp and out > 2:
        mask[0] = False  # an ablated neuron
    return mask


MASKS = {"unstructured": unstructured_mask, "constant-fan-in": constant_fan_in_mask}


def reference(go: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """float64 ``go^T x`` where the mask is True, 0 elsewhere (``where``: non-finite values elsewhere stay out)."""
    return torch.where(mask, go.double().T @ x.double(), torch.zeros((), dtype=torch.float64))


def assert_positive_zero_where_inactive(got: torch.Tensor, mask: torch.Tensor) -> None:
    inactive = got[~mask]
    assert bool((inactive == 0).all()), "nonzero value at an inactive position"
    assert not bool(torch.signbit(inactive).any()), "-0.0 at an inactive position"


def assert_matches(got: torch.Tensor, go: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> None:
    assert got.dtype == torch.float32 and got.shape == mask.shape and got.is_contiguous()
    expected = reference(go, x, mask)
    scale = max(1.0, float(go.shape[0]) ** 0.5)
    torch.testing.assert_close(got.double(), expected, atol=1e-5 * scale, rtol=1e-4)
    assert_positive_zero_where_inactive(got, mask)


def case(n: int, out: int, inp: int, density: float, kind: str, seed: int):
    g = torch.Generator().manual_seed(seed)
    mask = MASKS[kind](out, inp, density, g)
    return torch.randn(n, out, generator=g), torch.randn(n, inp, generator=g), mask


@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("kind", sorted(MASKS))
def test_every_variant_matches_the_float64_reference(kernel, n, shape, kind):
    for i, density in enumerate(DENSITIES):
        go, x, mask = case(n, *shape, density, kind, seed=1000 * n + 10 * shape[0] + shape[1] + i)
        layout = SampledLayout.from_mask(mask)
        got = kernel.sampled_product(go, x, layout.row_ptr, layout.cols)
        assert_matches(got, go, x, mask)
        if density == 0.0:
            assert torch.equal(got, torch.zeros(shape))


def test_the_python_wrapper_uses_the_chosen_variant():
    go, x, mask = case(129, 21, 300, 0.3, "unstructured", seed=3)
    assert_matches(sampled_product(go, x, SampledLayout.from_mask(mask)), go, x, mask)


@pytest.mark.parametrize("n", [5, 129])
def test_non_finite_values_outside_the_positions_leave_inactive_entries_positive_zero(kernel, n):
    """NaN/inf in columns of x no position uses and in outputs with no position never reach the result."""
    out, inp = 19, 37
    g = torch.Generator().manual_seed(n)
    mask = torch.rand(out, inp, generator=g) < 0.4
    unused_columns, empty_rows = [0, 5, 16, 17, 36], [2, 11]
    mask[:, unused_columns] = False
    mask[empty_rows] = False
    assert mask.any()
    go, x = torch.randn(n, out, generator=g), torch.randn(n, inp, generator=g)
    x[:, 0] = float("nan")
    x[:, 5] = float("inf")
    x[n // 2, 16] = float("-inf")
    x[0, 17] = float("nan")
    x[-1, 36] = float("nan")
    go[:, 2] = float("nan")
    go[0, 11] = float("inf")
    layout = SampledLayout.from_mask(mask)
    got = kernel.sampled_product(go, x, layout.row_ptr, layout.cols)
    assert bool(torch.isfinite(got).all())
    assert_matches(got, go, x, mask)


def test_non_finite_input_at_an_active_column_reaches_exactly_that_column(kernel):
    """The control for the test above: the kernel does read x at active columns, and only there."""
    g = torch.Generator().manual_seed(4)
    mask = torch.rand(9, 20, generator=g) < 0.5
    mask[:, 3] = False
    mask[::2, 3] = True
    go, x = torch.randn(40, 9, generator=g), torch.randn(40, 20, generator=g)
    x[7, 3] = float("nan")
    layout = SampledLayout.from_mask(mask)
    got = kernel.sampled_product(go, x, layout.row_ptr, layout.cols)
    assert bool(torch.isnan(got[mask[:, 3], 3]).all())
    finite = mask.clone()
    finite[:, 3] = False
    torch.testing.assert_close(got[finite].double(), reference(go, x, mask)[finite], atol=1e-5, rtol=1e-4)
    assert_positive_zero_where_inactive(got, mask)


def test_no_samples_give_positive_zeros(kernel):
    mask = torch.rand(6, 10, generator=torch.Generator().manual_seed(0)) < 0.5
    layout = SampledLayout.from_mask(mask)
    got = kernel.sampled_product(torch.empty(0, 6), torch.empty(0, 10), layout.row_ptr, layout.cols)
    assert got.shape == (6, 10) and bool((got == 0).all()) and not bool(torch.signbit(got).any())
    assert torch.equal(sampled_product(torch.empty(0, 6), torch.empty(0, 10), layout), torch.zeros(6, 10))


def test_empty_shapes(kernel):
    for out, inp in [(0, 5), (4, 0)]:
        layout = SampledLayout.from_mask(torch.zeros(out, inp, dtype=torch.bool))
        assert layout.row_ptr.shape == (out + 1,) and layout.cols.numel() == 0
        got = kernel.sampled_product(torch.randn(3, out), torch.randn(3, inp), layout.row_ptr, layout.cols)
        assert got.shape == (out, inp)


def test_non_contiguous_inputs_through_the_wrapper():
    g = torch.Generator().manual_seed(5)
    mask = torch.rand(13, 24, generator=g) < 0.3
    go = torch.randn(13, 70, generator=g).T  # (70, 13), transposed
    x = torch.randn(70, 48, generator=g)[:, ::2]  # (70, 24), strided columns
    assert not go.is_contiguous() and not x.is_contiguous()
    assert_matches(sampled_product(go, x, SampledLayout.from_mask(mask)), go, x, mask)
    expanded = torch.ones(1, 13).expand(70, 13)  # what the backward of .sum() hands a layer
    assert_matches(sampled_product(expanded, x, SampledLayout.from_mask(mask)), expanded, x, mask)


def test_layout_of_a_known_mask():
    mask = torch.tensor([[True, False, True, False], [False, False, False, False], [False, True, True, True]])
    layout = SampledLayout.from_mask(mask)
    assert layout.row_ptr.dtype == torch.int64 and layout.cols.dtype == torch.int32
    assert layout.row_ptr.tolist() == [0, 2, 2, 5]
    assert layout.cols.tolist() == [0, 2, 1, 2, 3]
    assert layout.shape == (3, 4) and isinstance(layout.shape[0], int)


@pytest.mark.parametrize(
    "bad",
    [
        torch.ones(3, 4, dtype=torch.uint8),
        torch.ones(3, 4),
        torch.ones(12, dtype=torch.bool),
        torch.ones(2, 3, 4, dtype=torch.bool),
        torch.tensor(True),
    ],
    ids=["uint8", "float", "1-D", "3-D", "0-D"],
)
def test_layout_rejects_a_mask_that_is_not_2d_bool(bad):
    with pytest.raises(ValueError, match="2-D bool mask"):
        SampledLayout.from_mask(bad)


def test_wrapper_rejects_shapes_that_do_not_fit_the_layout():
    layout = SampledLayout.from_mask(torch.ones(4, 6, dtype=torch.bool))
    go, x = torch.randn(8, 4), torch.randn(8, 6)
    for bad_go, bad_x in [
        (go[:7], x),  # different N
        (torch.randn(8, 5), x),  # out does not fit
        (go, torch.randn(8, 7)),  # in does not fit
        (go.unsqueeze(0), x),  # 3-D
        (go, x.flatten()),  # 1-D
        (torch.randn(8, 6), torch.randn(8, 4)),  # swapped
    ]:
        with pytest.raises(ValueError, match="do not fit"):
            sampled_product(bad_go, bad_x, layout)


def test_op_rejects_bad_dtypes_and_layouts(kernel):
    mask = torch.rand(4, 6, generator=torch.Generator().manual_seed(0)) < 0.5
    layout = SampledLayout.from_mask(mask)
    go, x, row_ptr, cols = torch.randn(8, 4), torch.randn(8, 6), layout.row_ptr, layout.cols
    op = kernel.sampled_product
    bad_calls = {
        "fp64 go": (go.double(), x, row_ptr, cols),
        "fp16 x": (go, x.half(), row_ptr, cols),
        "bf16 both": (go.bfloat16(), x.bfloat16(), row_ptr, cols),
        "non-contiguous go": (go.T.contiguous().T, x, row_ptr, cols),
        "different N": (go, x[:5], row_ptr, cols),
        "int32 row_ptr": (go, x, row_ptr.int(), cols),
        "short row_ptr": (go, x, row_ptr[:-1], cols),
        "long row_ptr": (go, x, torch.cat([row_ptr, row_ptr[-1:]]), cols),
        "2-D row_ptr": (go, x, row_ptr.unsqueeze(0), cols),
        "row_ptr not ending at nnz": (go, x, torch.cat([row_ptr[:-1], row_ptr[-1:] + 1]), cols),
        "row_ptr not starting at 0": (go, x, row_ptr + 1, cols),
        "int64 cols": (go, x, row_ptr, cols.long()),
        "2-D cols": (go, x, row_ptr, cols.unsqueeze(0)),
        "cols shorter than nnz": (go, x, row_ptr, cols[:-1]),
    }
    for name, args in bad_calls.items():
        with pytest.raises(RuntimeError, match="sampled_product"):
            op(*args)
            pytest.fail(f"{name} was accepted")
    with pytest.raises(RuntimeError, match="fp32"):
        sampled_product(go.double(), x, layout)  # the wrapper passes dtypes on to the op's check


@pytest.mark.parametrize(
    "row_ptr, cols, match",
    [
        ([0, 2, 1, 3], [0, 1, 2], "rise from 0 to nnz"),  # a row ends before it starts
        ([1, 2, 2, 3], [0, 1, 2], "rise from 0 to nnz"),  # does not start at 0
        ([0, 1, 2, 2], [0, 1, 2], "rise from 0 to nnz"),  # does not end at nnz
        ([0, 1, 2, 3], [0, 4, 2], r"lie in \[0, 4\)"),  # a column past the layer's inputs
        ([0, 1, 2, 3], [0, -1, 2], r"lie in \[0, 4\)"),  # a negative column
    ],
)
def test_a_hand_made_layout_the_kernel_cannot_trust_is_refused(row_ptr, cols, match):
    with pytest.raises(ValueError, match=match):
        SampledLayout(torch.tensor(row_ptr), torch.tensor(cols, dtype=torch.int32), (3, 4))


def test_a_hand_made_layout_of_the_wrong_dtypes_is_refused():
    with pytest.raises(ValueError, match="int64"):
        SampledLayout(torch.tensor([0, 1], dtype=torch.int32), torch.tensor([0], dtype=torch.int32), (1, 4))
    with pytest.raises(ValueError, match="int32"):
        SampledLayout(torch.tensor([0, 1]), torch.tensor([0]), (1, 4))
