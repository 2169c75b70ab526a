"""``accelerate(..., quantize="int8")``: quantized candidates calibrated on the example batch, kept within
the error budget, rebuilt from the report, and the callback's arguments."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_srigl.acceleration.accelerate import (
    accelerate,
    capture_layer_inputs,
    plan_acceleration,
    rebuild_plan,
)
from lightning_srigl.acceleration.planning import MAX_MARGIN
from lightning_srigl.callbacks.accelerate import AccelerateCallback
from lightning_srigl.condensed import load_condensed, save_condensed
from lightning_srigl.condensed.kinds.registry import build_candidate, sparse_layers
from lightning_srigl.condensed.layers.int8_linear import Int8CondensedLinear
from tests.condensed.test_accelerate import sparse_mlp

INT8 = ("int8_condensed", "int8_condensed_static", "int8_dense")


def test_quantized_candidates_are_timed_within_the_budget_and_installed() -> None:
    model, x = sparse_mlp(), torch.randn(32, 64)
    with torch.no_grad():
        expected = model(x)
    report = accelerate(model, x, quantize="int8", error_budget=0.05, warmup=0, repeats=1, verbose=False)
    for row in report.rows:
        assert set(INT8) <= set(row.errors)
        for name in INT8:
            assert (name in row.times) == (row.errors[name] <= 0.05), row.skipped
        # the fastest, or one the planner's noise margin cannot tell from it (dense kept: planning.choose)
        assert row.times[row.chosen] <= min(row.times.values()) * (1 + MAX_MARGIN)
        assert row.errors.get(row.chosen, 0.0) <= 0.05
        assert (row.input_range is not None) == (row.chosen == "int8_condensed_static")
    with torch.no_grad():
        error = (model(x) - expected).norm() / expected.norm()
    assert error < 0.1
    assert report.records()[0]["relative_error"] == report.rows[0].errors.get(report.rows[0].chosen, 0.0)


def test_int8_condensed_mode_leaves_torch_int8_out_and_the_model_saves(tmp_path) -> None:
    model, x = sparse_mlp(), torch.randn(8, 64)
    report = accelerate(model, x, quantize="int8-condensed", error_budget=1.0, candidates=["dense"], repeats=1,
                        verbose=False)  # fmt: skip
    assert all(set(row.errors) == {"int8_condensed", "int8_condensed_static"} for row in report.rows)
    save_condensed(model, tmp_path / "model.pt")
    with torch.no_grad():
        assert torch.equal(load_condensed(tmp_path / "model.pt")(x), model(x))


def test_a_zero_budget_keeps_every_layer_exact() -> None:
    model, x = sparse_mlp(), torch.randn(8, 64)
    report = accelerate(model, x, quantize="int8", error_budget=0.0, warmup=0, repeats=1, verbose=False)
    for row in report.rows:
        assert row.chosen in ("dense", "condensed", "csr")
        assert all("above the budget" in row.skipped[name] for name in INT8)


def test_a_static_choice_is_rebuilt_with_its_calibrated_range() -> None:
    model, x = sparse_mlp(), torch.randn(8, 64)
    inputs = capture_layer_inputs(model, x, list(sparse_layers(model)))
    plan = plan_acceleration(model, inputs, candidates=["dense"], quantize="int8", error_budget=1.0, repeats=1)
    rows = [
        row if row.chosen == "int8_condensed_static" else type(row)(**{**vars(row), "chosen": "int8_condensed_static",
                                                                      "input_range": (0.05, 100)})
        for row in plan.report.rows
    ]  # fmt: skip
    rebuilt = rebuild_plan(model, type(plan.report)(rows))
    for row in rows:
        layer = rebuilt.layers[row.name]
        assert isinstance(layer, Int8CondensedLinear)
        assert (layer.input_scale, layer.input_zero) == (pytest.approx(row.input_range[0]), row.input_range[1])


def test_bad_quantize_arguments_raise() -> None:
    model, x = sparse_mlp(), torch.randn(4, 64)
    with pytest.raises(ValueError, match="quantize must be None or one of"):
        accelerate(model, x, quantize="int4", verbose=False)
    with pytest.raises(ValueError, match="error_budget"):
        accelerate(model, x, quantize="int8", error_budget=-1, verbose=False)
    with pytest.raises(ValueError, match="quantize must be None"):
        AccelerateCallback(quantize="fp8")
    assert AccelerateCallback(quantize="int8", error_budget=0.01).quantize == "int8"


def test_torch_dynamic_int8_candidate_quantizes_the_masked_weight() -> None:
    model = sparse_mlp()
    layer = sparse_layers(model)["0"]
    quantized = build_candidate("int8_dense", layer.module, layer.mask)
    x = torch.randn(4, 64)
    with torch.no_grad():
        expected = nn.functional.linear(x, layer.module.weight * layer.mask, layer.module.bias)
        assert ((quantized(x) - expected).norm() / expected.norm()) < 0.05
