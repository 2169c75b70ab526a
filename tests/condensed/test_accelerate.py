"""``accelerate``: sparse layers from the masking record, exact candidates, swapping, folding, report."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_srigl.acceleration.report import AccelerationReport, LayerAcceleration
from lightning_srigl.condensed import accelerate as accelerate_module
from lightning_srigl.condensed.accelerate import (
    accelerate,
    capture_layer_inputs,
    plan_acceleration,
    rebuild_plan,
    swap_layers,
)
from lightning_srigl.condensed.csr import CSRLinear
from lightning_srigl.condensed.linear import CondensedLinear, pad_fan_in
from lightning_srigl.condensed.registry import accelerated_layers, build_candidate, sparse_layers
from lightning_srigl.masking import bind_masks, mask_of, register_mask_


def constant_fan_in_mask(out: int, inp: int, k: int, ablated: list[int], seed: int) -> Tensor:
    """``(out, inp)`` bool: ``k`` random inputs per row, the ``ablated`` rows empty."""
    generator = torch.Generator().manual_seed(seed)
    columns = torch.rand(out, inp, generator=generator).argsort(dim=1)[:, :k]
    mask = torch.zeros(out, inp, dtype=torch.bool).scatter_(1, columns, True)
    mask[ablated] = False
    return mask


def sparsify_(layer: nn.Linear, k: int, ablated: list[int], seed: int) -> None:
    mask = constant_fan_in_mask(layer.out_features, layer.in_features, k, ablated, seed)
    register_mask_(layer, "weight", mask)
    with torch.no_grad():
        layer.weight.mul_(mask)


def sparse_mlp() -> nn.Sequential:
    """64 -> 48 -> 32 -> 10 with two SRigL-like layers (ablated neurons) and a dense head."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 32), nn.GELU(), nn.Linear(32, 10))
    sparsify_(model[0], k=8, ablated=[1, 5, 7], seed=1)
    sparsify_(model[2], k=6, ablated=[0, 3], seed=2)
    return model.eval()


@pytest.mark.parametrize("fold", [True, False])
@pytest.mark.parametrize("shape", [(16, 64), (1, 64), (2, 3, 64)])
def test_accelerated_model_equals_the_masked_model(fold: bool, shape: tuple[int, ...]) -> None:
    model = sparse_mlp()
    x = torch.randn(*shape)
    with torch.no_grad():
        expected = model(x)
    report = accelerate(model, x, fold=fold, warmup=1, repeats=2, verbose=False)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    assert [row.name for row in report.rows] == ["0", "2"]
    assert not any(key.endswith("weight_sparsity_mask") for key in model.state_dict())
    assert accelerated_layers(model).keys() == {"0", "2"} and not sparse_layers(model)
    for row in report.rows:
        assert row.chosen in row.times and "dense" in row.times
        assert row.speedup == pytest.approx(row.times["dense"] / row.times[row.chosen])
    if fold:  # ablated neurons of layer 0 and 2 are gone from the model
        assert report.rows[0].out_features == 45 and report.rows[1].in_features == 45
        assert model[4].in_features == 30


@pytest.mark.parametrize("kind", ["dense", "condensed", "csr"])
def test_every_swapped_kernel_is_exact_and_drops_the_mask(kind: str) -> None:
    model = sparse_mlp()
    x = torch.randn(7, 64)
    with torch.no_grad():
        expected = model(x)
    rows = [
        LayerAcceleration(name, 0, 0, 7, 0.1, 0, kind, {"dense": 1.0, kind: 1.0}, {}) for name in sparse_layers(model)
    ]
    swap_layers(model, rebuild_plan(model, AccelerationReport(rows)))
    expected_type = {"dense": nn.Linear, "condensed": CondensedLinear, "csr": CSRLinear}[kind]
    assert type(model[0]) is expected_type and type(model[2]) is expected_type
    assert not hasattr(model[0], "weight_sparsity_mask") and mask_of(model[0]) is None
    assert accelerated_layers(model) == {"0": kind, "2": kind}
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="already accelerated"):
        rebuild_plan(model, AccelerationReport(rows))


@pytest.mark.parametrize("batch", [1, 4])
def test_csr_layer_runs_under_inference_mode(batch: int) -> None:
    """Regression: batch 1 used torch's sparse F.linear, which raises under torch.inference_mode()."""
    linear = nn.Linear(64, 32)
    mask = torch.rand(32, 64, generator=torch.Generator().manual_seed(0)) < 0.1
    layer = CSRLinear.from_masked(linear, mask)
    x = torch.randn(batch, 64)
    with torch.no_grad():
        expected = F.linear(x, linear.weight * mask, linear.bias)
    with torch.inference_mode():
        out = layer(x)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_the_installed_layer_is_the_one_that_was_timed(monkeypatch: pytest.MonkeyPatch) -> None:
    model = sparse_mlp()
    x = torch.randn(4, 64)
    inputs = capture_layer_inputs(model, x, list(sparse_layers(model)))
    plan = plan_acceleration(model, inputs, warmup=0, repeats=1)
    builds: list[str] = []
    monkeypatch.setattr(accelerate_module, "build_candidate", lambda *a: builds.append(a[0]) or build_candidate(*a))
    swap_layers(model, plan)
    assert builds == []  # nothing is rebuilt after timing
    assert model[0] is plan.layers["0"] and model[2] is plan.layers["2"]


def test_sparse_layers_are_the_masked_ones_the_masking_layer_records() -> None:
    named_like_a_mask = nn.Linear(8, 4)
    named_like_a_mask.register_buffer("weight_sparsity_mask", torch.ones(4, 8, dtype=torch.bool))  # not a recorded mask
    zeros_only = nn.Linear(8, 4)
    with torch.no_grad():
        zeros_only.weight.mul_(constant_fan_in_mask(4, 8, 3, [2], seed=1))  # zeros alone make no sparse layer
    bound = nn.Linear(8, 4)
    attention = nn.MultiheadAttention(8, 2)  # its out_proj is a Linear subclass with its own forward
    model = nn.ModuleDict({"buffer": named_like_a_mask, "zeros": zeros_only, "bound": bound, "attn": attention})
    mask = constant_fan_in_mask(4, 8, 2, [], seed=0)
    bind_masks(model, {"bound.weight": mask, "attn.out_proj.weight": torch.ones(8, 8, dtype=torch.bool)})
    assert list(sparse_layers(model)) == ["bound"]
    assert torch.equal(sparse_layers(model)["bound"].mask, mask)
    with pytest.raises(ValueError, match="No sparse layer found.*bind_masks"):
        accelerate(nn.Sequential(named_like_a_mask, zeros_only), torch.randn(2, 8))


def test_pad_fan_in_adds_inactive_columns_up_to_the_largest_fan_in() -> None:
    mask = torch.tensor([[1, 1, 0, 0, 1], [0, 1, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 1, 1, 0]], dtype=torch.bool)
    padded = pad_fan_in(mask)
    assert padded.sum(dim=1).tolist() == [3, 3, 0, 3]
    assert bool((padded | ~mask).all()) and bool((padded & mask).eq(mask).all())  # only adds positions
    assert padded[1].tolist() == [True, True, True, False, False]


def test_condensed_candidate_after_uneven_column_removal_is_exact() -> None:
    layer = nn.Linear(12, 6)
    sparsify_(layer, k=4, ablated=[2], seed=3)
    mask = mask_of(layer).clone()
    mask[0, mask[0].nonzero()[0]] = False  # row 0 lost an input, as after folding
    with torch.no_grad():
        layer.weight.mul_(mask)
    candidate = build_candidate("condensed", layer, mask)
    x = torch.randn(5, 12)
    torch.testing.assert_close(candidate(x), nn.functional.linear(x, layer.weight, layer.bias))


def test_no_sparse_layer_and_bad_candidates_raise() -> None:
    with pytest.raises(ValueError, match="No sparse layer"):
        accelerate(nn.Sequential(nn.Linear(4, 4)), torch.randn(2, 4))
    with pytest.raises(ValueError, match="must include 'dense'"):
        accelerate(sparse_mlp(), torch.randn(2, 64), candidates=("condensed",))
    with pytest.raises(TypeError, match="list of candidate names"):
        accelerate(sparse_mlp(), torch.randn(2, 64), candidates="dense")
    with pytest.raises(ValueError, match="Unknown candidate"):
        build_candidate("bsr", nn.Linear(4, 4), torch.ones(4, 4, dtype=torch.bool))


def test_semi_structured_is_skipped_with_a_reason_on_cpu() -> None:
    model = sparse_mlp()
    report = accelerate(model, torch.randn(4, 64), warmup=0, repeats=1, verbose=False)
    assert all("CUDA" in row.skipped["semi_structured"] for row in report.rows)


def test_report_writes_csv_metrics_and_a_table(tmp_path: Path) -> None:
    model = sparse_mlp()
    report = accelerate(model, torch.randn(4, 64), fold=False, warmup=0, repeats=1, verbose=False)
    path = report.to_csv(tmp_path / "sub" / "acc.csv")
    with path.open() as handle:
        records = list(csv.DictReader(handle))
    assert [r["layer"] for r in records] == ["0", "2"]
    assert records[0]["shape"] == "64->48" and records[0]["active_neurons"] == "45/48"
    assert float(records[0]["density"]) == pytest.approx(45 * 8 / (48 * 64), abs=1e-4)
    layer_metrics = {"accelerate/0/speedup", "accelerate/2/speedup"}
    assert set(report.metrics()) == layer_metrics | {"accelerate/model/dense_ms", "accelerate/model/accelerated_ms"}
    assert report.table().row_count == 2
