"""int8 projections of ``nn.MultiheadAttention`` and Hugging Face ``Conv1D`` under ``accelerate(quantize=...)``: the
int32 reference arithmetic through the attention, the layers installed, the error reported, the dynamic candidate
left dynamic, dense forms, save/load in a fresh process, torch.compile and torch.export."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from torch import Tensor, nn

from lightning_srigl.acceleration.accelerate import accelerate
from lightning_srigl.acceleration.swap import restore_dense
from lightning_srigl.condensed import load_condensed, save_condensed
from lightning_srigl.condensed.attention import ProjectedAttention
from lightning_srigl.condensed.kinds.quantized import DEFAULT_ERROR_BUDGET
from lightning_srigl.condensed.kinds.registry import build_candidate, sparse_layers
from lightning_srigl.condensed.layers.int8_linear import Int8CondensedLinear
from lightning_srigl.condensed.layers.weight_facts import WeightFacts
from lightning_srigl.kernels.int8 import int8_linear_reference
from lightning_srigl.kernels.int8_layout import calibration_range
from lightning_srigl.masking import masked_weights
from lightning_srigl.timing import Timing
from tests.condensed.test_accelerate_kinds import Conv1D, TinyEncoder, sparsify

REPO = Path(__file__).resolve().parents[2]
QUANTIZED = ("int8_condensed", "int8_condensed_static")


class ReferenceProjection(nn.Module):
    """An `Int8CondensedLinear`'s arithmetic in plain torch (`int8_linear_reference`), ``(..., in) -> (..., out)``."""

    def __init__(self, layer: Int8CondensedLinear) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: Tensor) -> Tensor:
        q = self.layer
        rows = int8_linear_reference(
            x.reshape(-1, q.in_features), q.weight, q.indices, q.weight_sum, q.weight_scale, q.active_rows, q.bias,
            q.out_features, q.input_scale, q.input_zero,
        )  # fmt: skip
        return rows.view(*x.shape[:-1], q.out_features)


def int8_fastest(calls: dict) -> dict[str, Timing]:
    """A fake timer under which the dynamic int8 candidate is fastest, then the static one, then the rest."""
    order = {"int8_condensed": 1.0, "int8_condensed_static": 2.0}
    return {name: Timing(order.get(name, 4.0), order.get(name, 4.0)) for name in calls}


def static_fastest(calls: dict) -> dict[str, Timing]:
    return {name: Timing(1.0, 1.0) if name == "int8_condensed_static" else Timing(4.0, 4.0) for name in calls}


def encoder(seed: int = 0) -> TinyEncoder:
    torch.manual_seed(seed)
    return sparsify(TinyEncoder(batch_first=True), seed=seed)


def test_int8_attention_is_the_int32_reference_arithmetic_of_its_projections() -> None:
    model = encoder()
    masked = sparse_layers(model)["attention"]
    x = torch.randn(3, 9, 32)
    for name in QUANTIZED:
        attention = build_candidate(name, masked.module, masked.mask, calibration_range(x))
        assert isinstance(attention, ProjectedAttention)
        assert all(isinstance(proj, Int8CondensedLinear) for proj in (attention.in_proj, attention.out_proj))
        assert (attention.in_proj.input_scale is None) == (name == "int8_condensed")
        assert attention.out_proj.input_scale is None  # its input (the attended values) is not captured: dynamic
        reference = ProjectedAttention(
            32, 4, ReferenceProjection(attention.out_proj), in_proj=ReferenceProjection(attention.in_proj),
            batch_first=True,
        )  # fmt: skip
        with torch.no_grad():
            out, _ = attention(x, x, x, need_weights=False)
            assert torch.equal(out, reference(x, x, x, need_weights=False)[0])
            fp32, _ = build_candidate("dense", masked.module, masked.mask)(x, x, x, need_weights=False)
        assert (out - fp32).norm() / fp32.norm() < DEFAULT_ERROR_BUDGET
        # what code around an attention reads of its weights: the dense shapes, no int8 values
        assert isinstance(attention.in_proj_weight, WeightFacts) and attention.in_proj_weight.shape == (96, 32)


def test_an_int8_attention_is_built_in_the_mode_of_the_module_it_replaces() -> None:
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(32, 4, dropout=0.5, batch_first=True)
    model = sparsify(nn.ModuleDict({"attention": attention}))  # eval mode: dropout off
    masked = sparse_layers(model)["attention"]
    candidate = build_candidate("int8_condensed", masked.module, masked.mask)
    x = torch.randn(2, 9, 32)
    with torch.no_grad():
        assert not candidate.training and torch.equal(candidate(x, x, x)[0], candidate(x, x, x)[0])


def test_accelerate_installs_int8_attention_projections_and_reports_their_error() -> None:
    model, x = encoder(), torch.randn(2, 9, 32)
    with torch.no_grad():
        expected = model(x)
    report = accelerate(model, x, quantize="int8-condensed", timer=int8_fastest, verbose=False, model_repeats=0)
    row = next(row for row in report.rows if row.name == "attention")
    assert set(row.errors) == set(QUANTIZED)  # torch's int8 dense Linear is no candidate of an attention
    assert all(0 < error <= DEFAULT_ERROR_BUDGET for error in row.errors.values())
    assert row.chosen == "int8_condensed"
    assert isinstance(model.attention, ProjectedAttention)
    assert all(type(proj) is Int8CondensedLinear for proj in (model.attention.in_proj, model.attention.out_proj))
    assert model.attention.in_proj.input_scale is None  # the dynamic candidate, though a range was calibrated
    with torch.no_grad():
        assert (model(x) - expected).norm() / expected.norm() < 0.05
    restored = restore_dense(model)
    assert isinstance(restored.attention, nn.MultiheadAttention)
    masks = {m.fqn: m.mask for m in masked_weights(restored)}
    assert masks["attention.in_proj_weight"].shape == (96, 32) and "attention.out_proj.weight" in masks


def test_a_static_attention_choice_and_a_zero_budget() -> None:
    model, x = encoder(), torch.randn(2, 9, 32)
    report = accelerate(model, x, quantize="int8", timer=static_fastest, verbose=False, model_repeats=0)
    row = next(row for row in report.rows if row.name == "attention")
    assert row.chosen == "int8_condensed_static" and row.input_range == calibration_range(x)
    assert model.attention.in_proj.input_scale is not None and model.attention.out_proj.input_scale is None
    exact = encoder()
    report = accelerate(exact, x, quantize="int8", error_budget=0.0, timer=int8_fastest, verbose=False,
                        model_repeats=0)  # fmt: skip
    row = next(row for row in report.rows if row.name == "attention")
    assert row.chosen not in QUANTIZED and all("above the budget" in row.skipped[name] for name in QUANTIZED)


def test_hugging_face_conv1d_gets_int8_candidates() -> None:
    torch.manual_seed(0)
    model = sparsify(nn.Sequential(Conv1D(24, 8), nn.GELU(), Conv1D(8, 24)))
    x = torch.randn(2, 5, 8)
    report = accelerate(model, x, quantize="int8-condensed", timer=int8_fastest, verbose=False, model_repeats=0)
    assert [row.chosen for row in report.rows] == ["int8_condensed", "int8_condensed"]
    first = model[0]
    assert type(first) is Int8CondensedLinear and (first.in_features, first.out_features) == (8, 24)
    with torch.no_grad():
        assert torch.equal(first(x), ReferenceProjection(first)(x))


def test_saved_int8_attention_loads_in_a_fresh_process_and_compiles(tmp_path) -> None:
    model, x = encoder(seed=3), torch.randn(2, 9, 32)
    accelerate(model, x, quantize="int8-condensed", timer=static_fastest, verbose=False, model_repeats=0)
    assert isinstance(model.attention.in_proj, Int8CondensedLinear)
    save_condensed(model.attention, tmp_path / "attention.pt")  # saved by its spec: the int8 projections as children
    with torch.no_grad():
        expected = model.attention(x, x, x, need_weights=False)[0]
        torch.save({"x": x, "y": expected}, tmp_path / "expected.pt")
        whole = model(x)
        compiled = torch.compile(model, fullgraph=True, dynamic=False)
        assert torch.equal(compiled(x), whole)
        program = torch.export.export(model, (x,))
    ops = [node for node in program.graph.nodes if "int8_condensed_linear" in str(node.target)]
    assert len(ops) == sum(isinstance(m, Int8CondensedLinear) for m in model.modules()) >= 2  # one node per layer
    with torch.no_grad():
        assert torch.equal(program.module()(x), whole)
    script = (
        "import sys, torch\n"
        "from lightning_srigl.condensed import load_condensed\n"
        "from lightning_srigl.condensed.layers.int8_linear import Int8CondensedLinear\n"
        "e = torch.load(sys.argv[1] + '/expected.pt')\n"
        "model = load_condensed(sys.argv[1] + '/attention.pt')\n"
        "assert type(model.in_proj) is Int8CondensedLinear, model\n"
        "assert model.in_proj.input_scale is not None and model.out_proj.input_scale is None\n"
        "with torch.no_grad():\n"
        "    y = model(e['x'], e['x'], e['x'], need_weights=False)[0]\n"
        "assert torch.equal(y.view(torch.int32), e['y'].view(torch.int32)), (y - e['y']).abs().max()\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")
    with torch.no_grad():
        assert torch.equal(load_condensed(tmp_path / "attention.pt")(x, x, x, need_weights=False)[0], expected)
