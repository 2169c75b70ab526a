"""``accelerate(quantize="int8-condensed", compile=True)``: the example ViT (``nn.MultiheadAttention``, MLP, patch
convolution) with int8 layers compiles into one graph without breaks, its int8 ops opaque, equal to eager."""

from __future__ import annotations

import warnings

import torch

from lightning_srigl.acceleration.accelerate import accelerate
from lightning_srigl.condensed.kinds.registry import accelerated_layers
from lightning_srigl.kernels.compiled import eager_forward, graph_breaks
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
