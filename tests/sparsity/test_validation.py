"""``all_finite``: one reduction when the tensor is finite, the exact answer always."""

import pytest
import torch

from lightning_srigl.sparsity import all_finite


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_all_finite_matches_the_elementwise_check(dtype: torch.dtype) -> None:
    finite = torch.randn(64, 32).to(dtype)
    assert all_finite(finite)
    for bad in (float("nan"), float("inf"), -float("inf")):
        t = finite.clone()
        t[17, 5] = bad
        assert not all_finite(t)
    t = finite.clone()
    t[0, 0], t[0, 1] = float("inf"), -float("inf")  # their sum is NaN, still non-finite
    assert not all_finite(t)


def test_a_finite_tensor_whose_sum_overflows_is_finite() -> None:
    big = torch.full((4, 4), torch.finfo(torch.float16).max, dtype=torch.float16)
    assert not torch.isfinite(big.sum()) and all_finite(big)
