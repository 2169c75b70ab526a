"""Every CPU kernel variant the host runs equals the pure-torch reference on every code path; fallback behaviour."""

import warnings

import pytest
import torch

from lightning_srigl.condensed import cpu_kernel
from lightning_srigl.condensed.cpu_kernel import (
    DISABLE_ENV,
    condensed_linear_cpu,
    condensed_linear_torch,
    load_extension,
)


def random_case(batch: int, inp: int, rows: int, k: int, dtype: torch.dtype, index_dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    indices = torch.argsort(torch.rand(rows, inp, generator=g), dim=1)[:, :k].sort(dim=1).values
    values = torch.randn(rows, k, generator=g).to(dtype)
    x = torch.randn(batch, inp, generator=g).to(dtype)
    bias = torch.randn(rows, generator=g).to(dtype)
    return x, values, indices.to(index_dtype), bias


# Batches cover the gather-dot path (B <= 2), each panel width (16/32) and partial last panels.
@pytest.mark.parametrize("batch", [1, 2, 3, 4, 15, 16, 17, 31, 33, 64, 65, 130])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_kernel_matches_reference_on_all_paths(kernel, batch, dtype):
    # k = 37 exercises full 16-wide steps, an odd pair and a masked tail; 21 rows a partial row block/tile.
    x, values, indices, bias = random_case(batch, 300, 21, 37, dtype, torch.int16, seed=batch)
    expected = condensed_linear_torch(x.double(), values.double(), indices, bias.double())
    got = kernel.condensed_linear(x, values, indices, bias)
    assert got.dtype == dtype and got.shape == (batch, 21)
    tol = {"atol": 1e-4, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 5e-2, "rtol": 1e-2}
    torch.testing.assert_close(got.double(), expected, **tol)


@pytest.mark.parametrize("batch", [1, 40])
def test_int32_indices_and_missing_bias(kernel, batch):
    x, values, indices, _ = random_case(batch, 200, 9, 64, torch.float32, torch.int32, seed=7)
    expected = condensed_linear_torch(x, values, indices, None)
    torch.testing.assert_close(kernel.condensed_linear(x, values, indices, None), expected, atol=1e-4, rtol=1e-4)


def test_kernel_rejects_bad_inputs_with_clear_messages(kernel):
    x, values, indices, bias = random_case(2, 50, 4, 5, torch.float32, torch.int16)
    with pytest.raises(RuntimeError, match="dtype"):
        kernel.condensed_linear(x.double(), values, indices, bias)
    with pytest.raises(RuntimeError, match="int16 or int32"):
        kernel.condensed_linear(x, values, indices.long(), bias)
    with pytest.raises(RuntimeError, match="contiguous"):
        kernel.condensed_linear(x.t().contiguous().t(), values, indices, bias)


def test_disable_env_forces_identical_fallback(monkeypatch):
    x, values, indices, bias = random_case(5, 120, 11, 12, torch.float32, torch.int16)
    with_cpp = condensed_linear_cpu(x, values, indices, bias)
    monkeypatch.setenv(DISABLE_ENV, "1")
    assert load_extension() is None
    torch.testing.assert_close(condensed_linear_cpu(x, values, indices, bias), with_cpp, atol=1e-5, rtol=1e-5)


def test_failed_build_falls_back_with_exactly_one_warning(monkeypatch):
    def broken_build():
        raise OSError("no C++ compiler found")

    monkeypatch.delenv(DISABLE_ENV, raising=False)
    monkeypatch.setattr(cpu_kernel, "_extension", None)
    monkeypatch.setattr(cpu_kernel, "_build_failed", False)
    monkeypatch.setattr(cpu_kernel, "_build", broken_build)
    x, values, indices, bias = random_case(3, 40, 6, 4, torch.float32, torch.int16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = condensed_linear_cpu(x, values, indices, bias)
        second = condensed_linear_cpu(x, values, indices, bias)
    messages = [str(w.message) for w in caught if "C++ CPU kernel" in str(w.message)]
    assert len(messages) == 1 and "no C++ compiler found" in messages[0] and "SLOWER than a dense" in messages[0]
    torch.testing.assert_close(first, condensed_linear_torch(x, values, indices, bias))
    torch.testing.assert_close(second, first)


def test_fallback_chunking_does_not_change_the_result():
    x, values, indices, bias = random_case(6, 90, 50, 8, torch.float32, torch.int16)
    whole = condensed_linear_torch(x, values, indices, bias)
    chunked = condensed_linear_torch(x, values, indices, bias, chunk_elements=100)
    torch.testing.assert_close(chunked, whole)
