"""Every variant's panel paths (batches of 3 and more; 64-wide panels for in_features >= 2048) equal the reference."""

import pytest
import torch

from lightning_srigl.condensed.cpu_kernel import condensed_linear_torch


def check_against_reference(kernel, batch: int, inp: int, rows: int, k: int, dtype: torch.dtype, seed: int):
    g = torch.Generator().manual_seed(seed)
    indices = torch.argsort(torch.rand(rows, inp, generator=g), dim=1)[:, :k].sort(dim=1).values.short()
    values = torch.randn(rows, k, generator=g).to(dtype)
    x = torch.randn(batch, inp, generator=g).to(dtype)
    bias = torch.randn(rows, generator=g).to(dtype)
    expected = condensed_linear_torch(x.double(), values.double(), indices, bias.double())
    tol = {"atol": 1e-4, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 5e-2, "rtol": 1e-2}
    torch.testing.assert_close(kernel.condensed_linear(x, values, indices, bias).double(), expected, **tol)


@pytest.mark.parametrize("batch", [17, 64, 70])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_wide_panels_match_reference(kernel, batch, dtype):
    # >= 2048 inputs selects 64-wide panels; 70 = one full + one partial panel
    check_against_reference(kernel, batch, 2100, 21, 37, dtype, seed=batch)


# The packing and the output tiles use 16 x 16 in-register transposes: inputs that are not multiples of
# 16, exactly 16 output rows (one full tile) and 17 or 33 (partial tiles), narrow and wide panels.
@pytest.mark.parametrize(("batch", "inp", "rows"), [(20, 5, 16), (33, 37, 17), (70, 2100, 16), (130, 2051, 33)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_panel_packing_and_tiles_on_uneven_shapes(kernel, batch, inp, rows, dtype):
    check_against_reference(kernel, batch, inp, rows, min(inp, 9), dtype, seed=inp)


# With 2 threads, 2 or 8 panels are split between the threads (each packs its own), 1 or 3 panels are
# packed in advance and the output rows are split instead; 1 thread always takes the first path.
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(("batch", "inp"), [(40, 100), (64, 100), (90, 100), (250, 100), (100, 2100)])
def test_panel_work_split_matches_reference(kernel, threads, batch, inp):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        check_against_reference(kernel, batch, inp, 50, 11, torch.float32, seed=batch + threads)
    finally:
        torch.set_num_threads(before)
