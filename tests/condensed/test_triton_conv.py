"""The Triton condensed convolution, run on CPU tensors by the Triton interpreter (TRITON_INTERPRET=1)."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first import of triton

import pytest
import torch

pytest.importorskip("triton")
from lightning_srigl.condensed import triton_conv
from lightning_srigl.condensed.conv import CondensedConv2d
from tests.condensed.conv_cases import GEOMETRIES, assert_close_to_scale, masked_conv, reference

# A silent PyTorch fallback would make these tests vacuous: its warning is an error here.
pytestmark = pytest.mark.filterwarnings("error::UserWarning")


@pytest.fixture(autouse=True)
def _require_interpreter() -> None:
    if not triton_conv._INTERPRET and not torch.cuda.is_available():
        pytest.skip("Triton interpreter not active and no GPU; run with TRITON_INTERPRET=1")


def device() -> str:
    return "cpu" if triton_conv._INTERPRET else "cuda"


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "x".join(map(str, g[:5])) + f"-k{g[5]}s{g[6]}g{g[9]}")
def test_triton_backend_equals_masked_dense_conv(geometry):
    conv, mask, x = masked_conv(geometry, ablated=0.3)
    layer = CondensedConv2d.from_masked(conv, mask).to(device())
    layer.backend = "triton"
    with torch.no_grad():
        y = layer(x.to(device()))
    assert_close_to_scale(y.cpu(), reference(conv, x))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_accumulates_in_fp32(dtype):
    conv, mask, x = masked_conv(GEOMETRIES[1])
    layer = CondensedConv2d.from_masked(conv, mask).to(device(), dtype)
    layer.backend = "triton"
    with torch.no_grad():
        y = layer(x.to(device(), dtype))
    assert y.dtype == dtype
    assert_close_to_scale(y.float().cpu(), reference(conv, x), tolerance=2e-2)


def test_phase_planes_hold_every_tap_at_its_offset():
    x = torch.randn(2, 3, 7, 6)
    kernel, stride, padding, dilation = [3, 2], [2, 3], [1, 2], [1, 2]
    planes, shape = triton_conv.phase_planes(x, kernel, stride, padding, dilation, slack=0)
    offsets = triton_conv.tap_offsets(3, kernel, stride, dilation, shape, "cpu").view(3, 3, 2)
    padded = torch.nn.functional.pad(x, [2, 2, 1, 1])
    wq = shape[1]
    for c in range(3):
        for ky in range(3):
            for kx in range(2):
                for oy, ox in [(0, 0), (1, 1), (3, 0)]:
                    q = oy * wq + ox
                    expected = padded[:, c, oy * 2 + ky, ox * 3 + kx * 2]
                    torch.testing.assert_close(planes[:, offsets[c, ky, kx] + q], expected)
