"""Where the Triton tests run: CPU tensors in Triton's interpreter, or a CUDA GPU with compiled kernels.

``make test`` sets ``TRITON_INTERPRET=1`` (and each Triton test module sets it when it is unset), so the
suite runs the kernels on CPU tensors everywhere. ``scripts/gpu_check.sh`` runs the same tests with
``TRITON_INTERPRET=0`` on a GPU: then the kernels are compiled and autotuned on CUDA tensors.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first import of triton

import pytest
import torch

triton_kernel = pytest.importorskip("lightning_srigl.condensed.triton_kernel", reason="Triton is not installed")

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Accumulation is fp32 in kernel and reference alike; what differs is the final rounding to the dtype.
TOLERANCE = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 1e-3), torch.bfloat16: (1e-2, 1e-2)}


def triton_device() -> torch.device:
    """``cpu`` under the interpreter, ``cuda`` with compiled kernels; skips the test when neither applies."""
    if triton_kernel.INTERPRETER:
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    pytest.skip("Triton kernels need a CUDA GPU, or TRITON_INTERPRET=1 set before Triton is imported")


def constant_fan_in_layer(
    out_features: int, in_features: int, fan_in: int, n_ablated: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random masked dense weight (out, in) with constant fan-in, n_ablated all-zero rows, and bias (CPU)."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(out_features, in_features, dtype=torch.bool)
    for row in range(out_features):
        mask[row, torch.randperm(in_features, generator=g)[:fan_in]] = True
    mask[torch.randperm(out_features, generator=g)[:n_ablated]] = False
    weight = torch.randn(out_features, in_features, generator=g) * mask
    return weight, mask, torch.randn(out_features, generator=g)
