"""``accelerate(quantize="int8-condensed", compile=True)``: the example ViT (``nn.MultiheadAttention``, MLP, patch
convolution) with int8 layers compiles into one graph without breaks, its int8 ops opaque, equal to eager; a
compiled int8 layer calls the loaded variant's C++ op (bit-equal to the int32 reference), an exported one the
portable Python op."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from lightning_srigl.acceleration.accelerate import accelerate
from lightning_srigl.condensed.kinds.registry import accelerated_layers
from lightning_srigl.condensed.layers.int8_linear import Int8CondensedLinear
from lightning_srigl.kernels.compiled import compile_lazily, eager_forward, graph_breaks
from lightning_srigl.kernels.cpu.loader import load_extension
from lightning_srigl.kernels.int8 import int8_linear_reference
from tests.condensed.test_compiled import masked, tiny_vit
from tests.condensed.test_int8_attention import int8_fastest


def test_an_int8_model_compiles_into_one_graph_equal_to_eager() -> None:
    model = masked(tiny_vit(), "uniform")
    x = torch.randn(2, 3, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = accelerate(
            model, x, quantize="int8-condensed", error_budget=1.0, timer=int8_fastest, verbose=False, model_repeats=1,
            compile=True,
        )  # fmt: skip
    chosen = set(accelerated_layers(model).values())
    assert "int8_condensed" in chosen, chosen
    assert graph_breaks(model, x) == 0
    with torch.no_grad():
        eager, compiled = eager_forward(model)(x), model(x)
    # The int8 ops run outside inductor's fusions, so the compiled graph's int8 layers see the eager inputs up to
    # the fp32 rounding of the fused LayerNorm / GELU / adds around them.
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)
    assert set(report.model_times) == {"dense", "accelerated", "compiled"}


@pytest.mark.parametrize("static", [False, True])
def test_a_compiled_int8_layer_calls_the_loaded_variant_bit_equal_to_the_reference(static: bool) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(96, 40)
    mask = torch.zeros(40, 96, dtype=torch.bool)
    for row in range(0, 40, 2):  # odd neurons ablated
        mask[row, torch.randperm(96)[:10]] = True
    layer = Int8CondensedLinear.from_masked(linear, mask).eval()
    if static:
        layer.calibrate(torch.randn(8, 96))
    kernel = load_extension()
    compile_lazily(layer)
    for x in (torch.randn(1, 96), torch.randn(5, 96)):  # one decoded token's row, and a few rows
        with torch.no_grad():
            layer(x)  # compiles (tracing dispatches the Python op to its fake)
            with torch.profiler.profile() as profile:
                y = layer(x)
        ran = {event.name for event in profile.events()}
        # one C++ call, not the Python op (the graph's post-grad pass, kernels/direct_calls.py)
        assert kernel is None or f"lightning_srigl_{kernel.variant}::int8_condensed_linear" in ran, ran
        assert "lightning_srigl::int8_condensed_linear" not in ran, ran
        buffers = layer._buffers
        reference = int8_linear_reference(
            x, buffers["weight"], buffers["indices"], buffers["weight_sum"], buffers["weight_scale"],
            buffers["active_rows"], buffers["bias"], 40, layer.input_scale, layer.input_zero,
        )  # fmt: skip
        assert torch.equal(y, reference)


def test_an_exported_int8_layer_keeps_the_portable_op() -> None:
    layer = Int8CondensedLinear.from_masked(nn.Linear(64, 8), torch.rand(8, 64) < 0.25).eval()
    with torch.no_grad():
        program = torch.export.export(layer, (torch.randn(1, 64),))
    targets = {node.target for node in program.graph.nodes if node.op == "call_function"}
    assert torch.ops.lightning_srigl.int8_condensed_linear.default in targets, targets


def test_an_int8_layer_compiled_with_the_cpp_wrapper_and_no_module_guards_equals_the_reference() -> None:
    torch.manual_seed(1)
    layer = Int8CondensedLinear.from_masked(nn.Linear(64, 24), torch.rand(24, 64) < 0.25).eval()
    compile_lazily(layer, module_guards=False, options={"cpp_wrapper": True})  # what int8_decode.py --cpp-wrapper runs
    x = torch.randn(1, 64)
    buffers = layer._buffers
    reference = int8_linear_reference(
        x, buffers["weight"], buffers["indices"], buffers["weight_sum"], buffers["weight_scale"],
        buffers["active_rows"], buffers["bias"], 24,
    )  # fmt: skip
    with torch.no_grad():
        assert torch.equal(layer(x), reference)
