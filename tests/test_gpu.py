"""What only a CUDA GPU can run: 2:4 tensor cores, cuSPARSE CSR, compiled condensed layers, the GPU sweep's
CUDA-graph and TF32 methods, and ``accelerate`` on CUDA. ``scripts/gpu_check.sh`` runs this file on a GPU.

The Triton kernels and ``CondensedLinear``'s Triton path have their own tests
(tests/condensed/test_triton_kernel.py, tests/condensed/test_triton_linear.py), which run everywhere
(in Triton's interpreter without a GPU); 16-mixed training is tested in
tests/callbacks/test_accelerate_callback.py.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_srigl.benchmark.layers import SparseLayerSpec, build_method, make_masked_linear
from lightning_srigl.benchmark.wrappers import CUDAGraphReplay, TF32Matmul
from lightning_srigl.condensed.accelerate import accelerate
from lightning_srigl.condensed.csr import CSRLinear
from lightning_srigl.condensed.linear import CondensedLinear
from lightning_srigl.condensed.semi_structured import SemiStructuredLinear, semi_structured_supported
from lightning_srigl.masking import register_mask_

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU; scripts/gpu_check.sh runs these on one"
)
CUDA = torch.device("cuda")
TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}


def _layer(spec: SparseLayerSpec) -> tuple[nn.Linear, torch.Tensor]:
    linear, mask = make_masked_linear(spec, seed=2)
    return linear.to(CUDA), mask.to(CUDA)


def _close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(actual.float(), expected.float(), rtol=tol, atol=tol)


def test_default_condensed_layer_on_cuda_runs_triton_on_the_transposed_layout() -> None:
    linear, mask = _layer(SparseLayerSpec(256, 128, 0.9, ablation=0.25))
    layer = CondensedLinear.from_masked(linear, mask)
    x = torch.randn(64, 256, device=CUDA)
    with torch.no_grad():
        _close(layer(x), linear(x), torch.float32)
    values, indices = layer._layouts.cached("triton")
    assert values.stride() == (1, layer.n_active) and indices.stride() == (1, layer.n_active)


@pytest.mark.parametrize("batch", [1, 256])
def test_compiled_condensed_layer_matches_eager(batch: int) -> None:
    linear, mask = _layer(SparseLayerSpec(512, 256, 0.9))
    layer = CondensedLinear.from_masked(linear, mask)
    compiled = torch.compile(layer, fullgraph=True, dynamic=False)
    x = torch.randn(batch, 512, device=CUDA)
    with torch.no_grad():
        _close(compiled(x), layer(x), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_semi_structured_layer_matches_the_masked_dense_layer(dtype: torch.dtype) -> None:
    linear, mask = _layer(SparseLayerSpec(256, 128, 0.5, structure="2:4"))
    linear = linear.to(dtype)
    ok, reason = semi_structured_supported(linear.weight)
    if not ok:
        pytest.skip(f"2:4 kernels unavailable on this GPU: {reason}")
    layer = SemiStructuredLinear.from_masked(linear, mask)
    x = torch.randn(64, 256, device=CUDA, dtype=dtype)
    with torch.no_grad():
        _close(layer(x), linear(x), dtype)


@pytest.mark.parametrize("batch", [1, 64])
def test_csr_layer_matches_the_masked_dense_layer(batch: int) -> None:
    linear, mask = _layer(SparseLayerSpec(256, 128, 0.9))
    layer = CSRLinear.from_masked(linear, mask)
    x = torch.randn(batch, 256, device=CUDA)
    with torch.no_grad():
        _close(layer(x), linear(x), torch.float32)


@pytest.mark.parametrize("method", ["dense_graph_fp32", "condensed_graph_fp32", "condensed_graph_bf16"])
def test_cuda_graph_replay_equals_the_eager_layer(method: str) -> None:
    linear, mask = make_masked_linear(SparseLayerSpec(512, 256, 0.9), seed=4)
    graphed = build_method(method, linear, mask, CUDA)
    eager = graphed.inner
    assert isinstance(graphed, CUDAGraphReplay)
    dtype = eager.values.dtype if isinstance(eager, CondensedLinear) else eager.weight.dtype
    with torch.no_grad():
        for batch in (1, 16, 300):  # each shape captures its own graph; both Triton regimes
            x = torch.randn(batch, 512, device=CUDA, dtype=dtype)
            first = graphed(x).clone()  # captures
            x.normal_()  # the same tensor, new values: a replay must read them
            _close(graphed(x), eager(x), dtype)
            assert not torch.equal(first, graphed(x))
            _close(graphed(x.clone()), eager(x), dtype)  # another tensor is copied into the captured one
    assert len(graphed._graphs) == 3


def test_tf32_method_uses_tf32_only_inside_the_call() -> None:
    linear, mask = make_masked_linear(SparseLayerSpec(1024, 512, 0.8), seed=5)
    layer = build_method("dense_tf32", linear, mask, CUDA)
    assert isinstance(layer, TF32Matmul)
    before = torch.get_float32_matmul_precision()
    x = torch.randn(256, 1024, device=CUDA)
    with torch.no_grad():
        y = layer(x)
        exact = layer.inner(x)
    assert torch.get_float32_matmul_precision() == before
    torch.testing.assert_close(y, exact, rtol=2e-2, atol=2e-2)
    assert not torch.equal(y, exact)  # TF32 rounds the inputs: a bit-equal result means it was not used


def test_accelerate_on_cuda_keeps_the_model_output() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 64)).to(CUDA)
    for index, spec in ((0, SparseLayerSpec(256, 512, 0.9)), (2, SparseLayerSpec(512, 64, 0.9))):
        _, mask = make_masked_linear(spec, seed=index)
        register_mask_(model[index], "weight", mask.to(CUDA))
        with torch.no_grad():
            model[index].weight.mul_(mask.to(CUDA))
    x = torch.randn(32, 256, device=CUDA)
    with torch.no_grad():
        expected = model(x)
        report = accelerate(model, x)
        _close(model(x), expected, torch.float32)
    assert len(report.rows) == 2 and all(row.chosen in row.times for row in report.rows)
