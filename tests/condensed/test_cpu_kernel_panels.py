"""The C++ kernel's 64-wide panel path (batches above 16 with in_features >= 2048) equals the reference."""

import pytest
import torch

from lightning_srigl.condensed.cpu_kernel import condensed_linear_torch, load_extension


@pytest.mark.parametrize("batch", [17, 64, 70])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_wide_panels_match_reference(batch, dtype):
    extension = load_extension()
    if extension is None:
        pytest.skip("the C++ extension could not be built here (no compiler); see test_cpu_kernel.py")
    g = torch.Generator().manual_seed(batch)
    inp, rows, k = 2100, 21, 37  # >= 2048 inputs selects 64-wide panels; 70 = one full + one partial panel
    indices = torch.argsort(torch.rand(rows, inp, generator=g), dim=1)[:, :k].sort(dim=1).values.short()
    values = torch.randn(rows, k, generator=g).to(dtype)
    x = torch.randn(batch, inp, generator=g).to(dtype)
    bias = torch.randn(rows, generator=g).to(dtype)
    expected = condensed_linear_torch(x.double(), values.double(), indices, bias.double())
    got = extension.forward(x, values, indices, bias)
    tol = {"atol": 1e-4, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 5e-2, "rtol": 1e-2}
    torch.testing.assert_close(got.double(), expected, **tol)
