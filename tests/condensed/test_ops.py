"""The lightning_srigl::condensed_linear custom op: gradients, fake tensors, torch.compile and torch.export."""

import pytest
import torch
from torch import nn

from lightning_srigl.condensed import CondensedLinear, condensed_linear
from lightning_srigl.condensed.cpu_kernel import load_extension


@pytest.fixture(scope="module", autouse=True)
def extension():
    return load_extension()


def op_inputs(batch: int, inp: int, rows: int, k: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    indices = torch.argsort(torch.rand(rows, inp, generator=g), dim=1)[:, :k].sort(dim=1).values.to(torch.int16)
    x = torch.randn(batch, inp, generator=g, dtype=dtype)
    values = torch.randn(rows, k, generator=g, dtype=dtype)
    bias = torch.randn(rows, generator=g, dtype=dtype)
    return x, values, indices, bias


def test_gradcheck_input_values_and_bias_float64():
    x, values, indices, bias = op_inputs(3, 11, 5, 4, torch.float64)
    # Repeated indices in different rows make the input gradient a real scatter-add.
    inputs = (x.requires_grad_(), values.requires_grad_(), bias.requires_grad_())
    assert torch.autograd.gradcheck(lambda a, v, b: condensed_linear(a, v, indices, b), inputs)


def test_gradcheck_without_bias():
    x, values, indices, _ = op_inputs(2, 9, 4, 3, torch.float64, seed=1)
    inputs = (x.requires_grad_(), values.requires_grad_())
    assert torch.autograd.gradcheck(lambda a, v: condensed_linear(a, v, indices, None), inputs)


def test_gradient_in_float32_through_cpu_kernel_matches_dense():
    x, values, indices, bias = op_inputs(4, 20, 6, 5, torch.float32, seed=2)
    dense = torch.zeros(6, 20).scatter_(1, indices.long(), values).requires_grad_()
    values.requires_grad_()
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    weights = torch.randn(4, 6)
    (condensed_linear(x1, values, indices, bias) * weights).sum().backward()
    (torch.nn.functional.linear(x2, dense, bias) * weights).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad)
    torch.testing.assert_close(values.grad, dense.grad.gather(1, indices.long()))


def test_opcheck_registrations():
    x, values, indices, bias = op_inputs(3, 16, 4, 5, torch.float32, seed=3)
    torch.library.opcheck(condensed_linear, (x, values, indices, bias))
    torch.library.opcheck(condensed_linear, (x.requires_grad_(), values, indices, None))


def test_op_rejects_mismatched_dtypes():
    x, values, indices, bias = op_inputs(2, 8, 3, 2, torch.float32)
    with pytest.raises(ValueError, match="dtype"):
        condensed_linear(x.double(), values, indices, bias)


def small_model() -> nn.Sequential:
    torch.manual_seed(0)
    mask = torch.zeros(12, 16, dtype=torch.bool)
    for row in range(12):
        if row % 5:
            mask[row, torch.randperm(16)[:3]] = True
    condensed = CondensedLinear.from_dense_weight(torch.randn(12, 16), mask, torch.randn(12))
    return nn.Sequential(condensed, nn.ReLU(), nn.Linear(12, 2)).eval()


def test_torch_compile_fullgraph():
    model = small_model()
    compiled = torch.compile(model, fullgraph=True, dynamic=False)
    x = torch.randn(3, 7, 16)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))


def test_torch_export_contains_the_custom_op():
    model = small_model()
    x = torch.randn(5, 16)
    program = torch.export.export(model, (x,))
    assert "lightning_srigl.condensed_linear" in str(program.graph)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x))
