"""The Triton condensed kernels against the masked dense product (interpreter on CPU, or compiled on CUDA)."""

import os
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.condensed.triton_device import DTYPES, TOLERANCE, constant_fan_in_layer, triton_device, triton_kernel

ROOT = Path(__file__).resolve().parents[2]
SMALL_BATCH = triton_kernel.SMALL_BATCH
condensed_linear_triton = triton_kernel.condensed_linear_triton
prepare_triton_layout = triton_kernel.prepare_triton_layout

# A silent PyTorch fallback would make these tests vacuous: the fallback's warning is an error here.
pytestmark = pytest.mark.filterwarnings("error::UserWarning")


@pytest.fixture
def device() -> torch.device:
    return triton_device()


def _condense(weight: torch.Tensor, mask: torch.Tensor, index_dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """(values (A, k), indices (A, k), active_rows (A,)) of a constant fan-in masked weight."""
    active_rows = mask.any(dim=1).nonzero().squeeze(1)
    fan_in = int(mask[active_rows[0]].sum()) if len(active_rows) else 0
    indices = mask[active_rows].nonzero()[:, 1].view(len(active_rows), fan_in)
    values = weight[active_rows].gather(1, indices)
    return values, indices.to(index_dtype), active_rows


def _check_against_masked_dense(
    batch: int, out_f: int, in_f: int, fan_in: int, n_ablated: int, dtype: torch.dtype, *, bias: bool,
    prepared: bool, index_dtype: torch.dtype = torch.int16, seed: int = 0,
) -> None:  # fmt: skip
    device = triton_device()
    weight, mask, b = constant_fan_in_layer(out_f, in_f, fan_in, n_ablated, seed)
    values, indices, active = _condense(weight, mask, index_dtype)
    x = torch.randn(batch, in_f, generator=torch.Generator().manual_seed(seed + 1))
    x, values, b = x.to(dtype), values.to(dtype), b.to(dtype)
    if prepared:
        values, indices = prepare_triton_layout(values, indices)
    on = {"device": device}
    y = condensed_linear_triton(x.to(**on), values.to(**on), indices.to(**on), b[active].to(**on) if bias else None)
    y = y.cpu()

    masked = weight.to(dtype).float() * mask
    expected = torch.nn.functional.linear(x.float(), masked, b.float() if bias else None)[:, active]
    assert y.shape == (batch, len(active)) and y.dtype == dtype
    rtol, atol = TOLERANCE[dtype]
    torch.testing.assert_close(y.float(), expected, rtol=rtol, atol=atol)


@settings(max_examples=16, deadline=None, derandomize=True)
@given(
    shape=st.tuples(st.integers(1, 20), st.integers(1, 40)).flatmap(
        lambda s: st.tuples(st.just(s[0]), st.just(s[1]), st.integers(1, min(s[1], 8)), st.integers(0, s[0] - 1))
    ),
    batch=st.sampled_from([1, 3, SMALL_BATCH, SMALL_BATCH + 1, 2 * SMALL_BATCH + 3]),
    dtype=st.sampled_from(DTYPES),
    bias=st.booleans(),
    prepared=st.booleans(),
)
def test_matches_masked_dense(shape: tuple[int, int, int, int], batch: int, dtype, bias: bool, prepared: bool) -> None:
    out_f, in_f, fan_in, n_ablated = shape
    _check_against_masked_dense(batch, out_f, in_f, fan_in, n_ablated, dtype, bias=bias, prepared=prepared)


@pytest.mark.parametrize("batch", [1, 7, 37])  # gather-dot, odd, tiled with a partial batch block
def test_int32_indices_several_neuron_blocks_and_fan_in_tiles(batch: int) -> None:
    """40 neurons and fan-in 21 span several BLOCK_N blocks and BLOCK_K steps, both with tails."""
    _check_against_masked_dense(
        batch, 40, 70, 21, 3, torch.float32, bias=True, prepared=True, index_dtype=torch.int32, seed=3
    )


def test_strided_input_rows(device: torch.device) -> None:
    """A non-contiguous x (every other row of a bigger tensor) is read through its strides."""
    weight, mask, b = constant_fan_in_layer(12, 30, 4, 2, seed=5)
    values, indices, active = _condense(weight, mask, torch.int16)
    x = torch.randn(6, 30)[::2]
    expected = torch.nn.functional.linear(x, weight, b)[:, active]
    y = condensed_linear_triton(x.to(device), values.to(device), indices.to(device), b[active].to(device))
    torch.testing.assert_close(y.cpu(), expected)


@pytest.mark.parametrize("batch", [3, 40])  # both kernels
def test_kernels_write_any_output_strides_and_read_any_xt_operand(device: torch.device, batch: int) -> None:
    """gather_gemv/gather_tiled into a transposed (A, B)-storage output; gather_tiled from a strided (in, B) view."""
    weight, mask, b = constant_fan_in_layer(20, 30, 5, 2, seed=9)
    values, indices, active = _condense(weight, mask, torch.int16)
    values, indices = (t.to(device) for t in prepare_triton_layout(values, indices))
    x = torch.randn(batch, 30)
    expected = torch.nn.functional.linear(x, weight, b)[:, active]
    y = torch.full((len(active), batch), float("nan"), device=device).t()  # (B, A) view, stride (1, B)
    bias = b[active].to(device)
    if batch <= SMALL_BATCH:
        triton_kernel.gather_gemv(x.to(device), values, indices, bias, y)
    else:
        xt = torch.randn(30, 2 * batch, device=device)[:, ::2]  # (in, B) with stride (2B, 2)
        xt.copy_(x.t())
        triton_kernel.gather_tiled(xt, values, indices, bias, y)
    torch.testing.assert_close(y.cpu(), expected)


def test_prepared_layout_is_a_transposed_view_with_equal_contents() -> None:
    values = torch.randn(5, 3)
    indices = torch.randint(0, 9, (5, 3), dtype=torch.int16)
    v, i = prepare_triton_layout(values, indices)
    assert v.shape == (5, 3) and v.stride() == (1, 5) and i.stride() == (1, 5)
    assert torch.equal(v, values) and torch.equal(i, indices) and i.dtype == torch.int16


def test_unsupported_dtype_warns_and_falls_back_exactly(device: torch.device) -> None:
    weight, mask, b = constant_fan_in_layer(6, 10, 3, 1, seed=7)
    values, indices, active = _condense(weight, mask, torch.int32)
    x = torch.randn(4, 10, dtype=torch.float64)
    on = {"device": device}
    with pytest.warns(UserWarning, match="float64.*exact PyTorch fallback"):
        y = condensed_linear_triton(x.to(**on), values.double().to(**on), indices.to(**on), b[active].double().to(**on))
    expected = torch.nn.functional.linear(x, weight.double(), b.double())[:, active]
    torch.testing.assert_close(y.cpu(), expected)


def test_empty_batch_gives_empty_output(device: torch.device) -> None:
    values, indices = torch.randn(4, 2, device=device), torch.zeros(4, 2, dtype=torch.int16, device=device)
    assert condensed_linear_triton(torch.randn(0, 8, device=device), values, indices, None).shape == (0, 4)


@pytest.mark.parametrize(
    ("values", "indices", "match"),
    [
        (torch.randn(4, 2), torch.zeros(4, 3, dtype=torch.int16), "both be"),
        (torch.randn(4, 2), torch.zeros(4, 2, dtype=torch.int64), "int16 or int32"),
    ],
)
def test_bad_condensed_tensors_raise(values: torch.Tensor, indices: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        condensed_linear_triton(torch.randn(2, 8), values, indices, None)


def test_bias_of_wrong_shape_raises() -> None:
    values, indices = torch.randn(4, 2), torch.zeros(4, 2, dtype=torch.int16)
    with pytest.raises(ValueError, match=r"bias_active must have shape \(4,\)"):
        condensed_linear_triton(torch.randn(2, 8), values, indices, torch.zeros(5))


def test_input_on_another_device_raises() -> None:
    values, indices = torch.randn(4, 2), torch.zeros(4, 2, dtype=torch.int16)
    with pytest.raises(ValueError, match="move the input or the layer"):
        condensed_linear_triton(torch.empty(2, 8, device="meta"), values, indices, None)


def test_autotuning_skips_tiles_larger_than_the_problem() -> None:
    """Small layers are tuned (and compiled) over the fitting configs only; large ones over all."""
    fitting = triton_kernel._fitting_configs
    gemv, tiled = triton_kernel._GEMV_CONFIGS, triton_kernel._TILED_CONFIGS
    assert [c.kwargs["BLOCK_N"] for c in fitting(gemv, {"A": 40})] == [64]
    assert fitting(gemv, {"A": 768}) == gemv
    assert {(c.kwargs["BLOCK_N"], c.kwargs["BLOCK_B"]) for c in fitting(tiled, {"A": 40, "B": 17})} == {
        (32, 32),
        (64, 32),
    }
    assert fitting(tiled, {"A": 768, "B": 256}) == tiled


def test_kernels_compile_ahead_of_time_for_hopper(tmp_path) -> None:
    """The interpreter never runs Triton's compiler; this does (fresh cache, so nothing is skipped)."""
    import subprocess
    import sys

    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_CACHE_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "tests.condensed.triton_aot"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    expected = len(triton_kernel._GEMV_CONFIGS) + len(triton_kernel._TILED_CONFIGS) + 2 * 3
    assert done.stdout.count("sm_90") == expected
