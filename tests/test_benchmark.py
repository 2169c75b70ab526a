"""The benchmark package: masks, built methods, memory, sweep expansion, report maths, smoke run."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from lightning_srigl.benchmark import BenchmarkModule, SweepConfig, run_benchmark
from lightning_srigl.benchmark.layers import (
    Method,
    SparseLayerSpec,
    build_method,
    make_masked_linear,
    parse_method,
    weight_bytes,
)
from lightning_srigl.benchmark.report import summarize
from lightning_srigl.benchmark.timing import cold_copies, hot_times
from lightning_srigl.benchmark.wrappers import TF32Matmul
from lightning_srigl.condensed.cpu_isa import cpu_model, host_variants
from lightning_srigl.condensed.cpu_kernel import load_extension
from lightning_srigl.sparsity.nm import is_nm

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "benchmark_smoke.yaml"


@pytest.mark.parametrize(("sparsity", "ablation"), [(0.9, 0.0), (0.8, 0.25), (0.99, 0.5)])
def test_srigl_layer_has_constant_fan_in_and_ablated_rows(sparsity: float, ablation: float) -> None:
    spec = SparseLayerSpec(96, 40, sparsity, ablation=ablation)
    linear, mask = make_masked_linear(spec, seed=3)
    fan_in = mask.sum(dim=1)
    assert int((fan_in > 0).sum()) == spec.active_neurons
    assert set(fan_in[fan_in > 0].tolist()) == {spec.fan_in}
    assert torch.equal(linear.weight != 0, mask)


def test_ablation_keeps_the_layer_budget() -> None:
    plain = SparseLayerSpec(768, 3072, 0.9)
    ablated = SparseLayerSpec(768, 3072, 0.9, ablation=0.5)
    assert ablated.active_neurons * ablated.fan_in == pytest.approx(plain.active_neurons * plain.fan_in, rel=0.01)


def test_nm_layer_is_two_of_four() -> None:
    _, mask = make_masked_linear(SparseLayerSpec(64, 16, 0.5, structure="2:4"))
    assert is_nm(mask, 2, 4)


def test_invalid_specs_raise() -> None:
    with pytest.raises(ValueError, match="2:4 layer is 50% sparse"):
        SparseLayerSpec(64, 16, 0.9, structure="2:4")
    with pytest.raises(ValueError, match="structure"):
        SparseLayerSpec(64, 16, 0.9, structure="block")
    with pytest.raises(ValueError, match="Unknown method"):
        SweepConfig(methods=["dense_fp32", "condensed_int3"])


@pytest.mark.parametrize("method", ["dense_fp32", "csr_fp32", "condensed_fp32", "dense_bf16", "condensed_bf16"])
def test_every_method_equals_the_masked_dense_layer(method: str) -> None:
    linear, mask = make_masked_linear(SparseLayerSpec(48, 20, 0.75, ablation=0.2), seed=1)
    module = build_method(method, linear, mask, torch.device("cpu"))
    x = torch.randn(5, 48)
    expected = torch.nn.functional.linear(x, linear.weight, linear.bias)
    dtype = torch.bfloat16 if method.endswith("bf16") else torch.float32
    tol = 5e-2 if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(module(x.to(dtype)).float(), expected, rtol=tol, atol=tol)


def test_condensed_memory_at_90_percent_is_at_most_016_of_dense() -> None:
    linear, mask = make_masked_linear(SparseLayerSpec(3072, 768, 0.9))
    dense = build_method("dense_fp32", linear, mask, torch.device("cpu"))
    condensed = build_method("condensed_fp32", linear, mask, torch.device("cpu"))
    ratio = weight_bytes(condensed) / weight_bytes(dense)
    assert ratio <= 0.16
    assert ratio == pytest.approx(0.1 * (4 + 2) / 4, rel=0.01)  # fp32 values + int16 indices


def test_cold_copies_are_independent_and_exceed_the_byte_target() -> None:
    copies = cold_copies(lambda: torch.nn.Linear(32, 8), dense_bytes=32 * 8 * 4, cold_bytes=10_000)
    assert len(copies) * 32 * 8 * 4 >= 10_000
    assert len({c.weight.data_ptr() for c in copies}) == len(copies)


def test_hot_times_interleaves_the_methods_in_rounds() -> None:
    calls: list[str] = []
    fns = {name: (lambda name=name: calls.append(name)) for name in ("dense", "condensed")}
    timings = hot_times(fns, threads=1, min_run_time=0.0, device=torch.device("cpu"), sample_time=0.0)
    assert set(timings) == {"dense", "condensed"}
    assert all(0 < t.min <= t.median for t in timings.values())
    # after the warm-up: 7 rounds; in each, every function is called once to re-warm, then timed once
    assert calls[-28:] == ["dense", "dense", "condensed", "condensed"] * 7


def test_sweep_expands_to_hot_nm_and_cold_cases() -> None:
    config = SweepConfig(
        shapes=[[8, 4], [4, 8]],
        sparsities=[0.5, 0.9],
        batch_sizes=[1, 2],
        threads=[1, 2],
        cold_sparsities=[0.9],
        cold_batch_sizes=[1],
    )
    cases = config.cases()
    hot = [c for c in cases if c["cache"] == "hot" and c["structure"] == "srigl"]
    assert len(hot) == 2 * 2 * 2 * 2
    assert len([c for c in cases if c["structure"] == "2:4"]) == 2 * 2 * 2
    assert len([c for c in cases if c["cache"] == "cold"]) == 2 * 1 * 2


def test_yaml_with_unknown_key_names_the_valid_ones(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("sparsity: [0.9]\n")
    with pytest.raises(ValueError, match="Unknown keys \\['sparsity'\\].*sparsities"):
        SweepConfig.from_yaml(path)


def test_summary_ratios_are_reference_time_over_method_time() -> None:
    case = dict(
        structure="srigl",
        in_features=8,
        out_features=4,
        sparsity=0.9,
        ablation=0.0,
        fan_in=1,
        active_neurons=4,
        batch=1,
        threads=1,
        cache="hot",
        max_abs_err=0.0,
    )
    rows = [
        {**case, "method": "dense_fp32", "time_us": 60.0, "weight_bytes": 128},
        {**case, "method": "csr_fp32", "time_us": 30.0, "weight_bytes": 100},
        {**case, "method": "condensed_fp32", "time_us": 10.0, "weight_bytes": 24},
    ]
    (summary,) = summarize(rows)
    assert summary["cond_vs_dense"] == 6.0
    assert summary["cond_vs_csr"] == 3.0
    assert summary["csr_vs_dense"] == 2.0
    assert summary["memory_ratio"] == 0.1875
    assert summary["byte_ceiling"] == pytest.approx(5.33)


def test_smoke_sweep_runs_through_trainer_test_and_writes_outputs(tmp_path: Path) -> None:
    module = run_benchmark(SMOKE, output_dir=str(tmp_path))
    assert isinstance(module, BenchmarkModule)
    config = SweepConfig.from_yaml(SMOKE)
    assert len(module.results) == sum(len(case["methods"]) for case in config.cases())
    variant = load_extension().variant
    for row in module.results:
        assert row["time_us"] > 0
        assert row["max_abs_err"] < (0.1 if row["method"].endswith("bf16") else 1e-4), row
        assert row["cpu_model"] == cpu_model() and row["kernel_variant"] == variant, row
    with module.outputs["summary_csv"].open() as handle:
        summary = list(csv.DictReader(handle))
    assert {row["cache"] for row in summary} == {"hot", "cold"}
    assert {row["structure"] for row in summary} == {"srigl", "2:4"}
    assert all(float(row["cond_vs_dense"]) > 0 for row in summary)
    assert module.outputs["plot_t1"].stat().st_size > 10_000  # every layer in one figure
    assert module.outputs["t1_64x32"] == tmp_path / "benchmark_smoke_t1_64x32.png"  # one figure per threads × layer
    assert module.outputs["t1_64x32"].stat().st_size > 10_000


@pytest.mark.parametrize(
    ("method", "parsed"),
    [
        ("dense_tf32", Method("dense", torch.float32, tf32=True)),
        ("condensed_graph_bf16", Method("condensed", torch.bfloat16, graph=True)),
        ("semi_structured_fp16", Method("semi_structured", torch.float16)),
    ],
)
def test_method_names_parse(method: str, parsed: Method) -> None:
    assert parse_method(method) == parsed


@pytest.mark.parametrize("method", ["condensed_tf32", "csr_graph_int8", "dense_graph"])
def test_bad_method_names_say_what_is_valid(method: str) -> None:
    with pytest.raises(ValueError, match="'tf32' for dense only"):
        parse_method(method)


def test_condensed_backend_reaches_the_built_layer_and_tf32_wraps_dense() -> None:
    linear, mask = make_masked_linear(SparseLayerSpec(48, 20, 0.75), seed=1)
    condensed = build_method("condensed_fp16", linear, mask, torch.device("cpu"), condensed_backend="triton")
    assert condensed.backend == "triton" and condensed.values.dtype == torch.float16
    tf32 = build_method("dense_tf32", linear, mask, torch.device("cpu"))
    assert isinstance(tf32, TF32Matmul) and weight_bytes(tf32) == 48 * 20 * 4
    with pytest.raises(NotImplementedError, match="CUDA graphs need a module on a CUDA device"):
        build_method("condensed_graph_fp32", linear, mask, torch.device("cpu"))
    with pytest.raises(ValueError, match="condensed_backend"):
        SweepConfig(condensed_backend="cuda")


def test_emulated_sweep_limits_dense_and_condensed_kernels_alike(tmp_path: Path) -> None:
    """``cpu_isa: avx2`` runs in a subprocess where MKL, oneDNN, ATen and the condensed kernel are AVX2."""
    if "avx2" not in host_variants():
        pytest.skip("this CPU cannot run AVX2 kernels")
    module = run_benchmark(
        SMOKE,
        output_dir=str(tmp_path),
        cpu_isa="avx2",
        sparsities=[0.9],
        batch_sizes=[1],
        nm_methods=[],
        cold_sparsities=[],
    )
    assert module.results and module.outputs["raw_csv"].exists()
    for row in module.results:
        assert row["kernel_variant"] == "avx2" and row["aten_capability"] == "AVX2", row
        assert "MKL_ENABLE_INSTRUCTIONS=AVX2" in row["isa_limits"] and "ONEDNN_MAX_CPU_ISA=AVX2" in row["isa_limits"]


def test_unknown_emulated_isa_is_rejected() -> None:
    with pytest.raises(ValueError, match="cpu_isa must be one of"):
        SweepConfig(cpu_isa="avx9000")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"batch_sizes": [0]}, r"each of batch_sizes must be an integer >= 1, got 0"),
        ({"cold_batch_sizes": [1.5]}, r"each of cold_batch_sizes must be an integer"),
        ({"threads": [-1]}, r"each of threads must be an integer >= 1"),
        ({"sparsities": [1.5]}, r"each of sparsities must be a number in \[0, 1\)"),
        ({"cold_sparsities": [-0.1]}, r"each of cold_sparsities must be a number in \[0, 1\)"),
        ({"sparsities": []}, r"sparsities is empty"),
        ({"ablation": 1.0}, r"ablation is the fraction of neurons removed, in \[0, 1\)"),
        ({"min_run_time": 0}, r"min_run_time and cold_bytes must be > 0"),
    ],
)
def test_a_sweep_with_impossible_numbers_is_refused_before_it_runs(overrides: dict, message: str) -> None:
    with pytest.raises((TypeError, ValueError), match=message):
        SweepConfig(**overrides)


def test_the_progress_bar_says_it_times_cases() -> None:
    from lightning_srigl.benchmark.module import BenchmarkProgressBar

    assert BenchmarkProgressBar().test_description == "Timing cases"
