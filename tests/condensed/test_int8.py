"""int8 condensed linear layers: kernels bit-equal to the int32 reference on every variant, the layer's
error against fp32, validation, save/load in a fresh process, torch.compile and torch.export."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_srigl.condensed import CondensedLinear, load_condensed, save_condensed
from lightning_srigl.condensed.layers.int8_linear import Int8CondensedLinear
from lightning_srigl.kernels.cpu.isa import host_variants
from lightning_srigl.kernels.int8 import int8_linear_reference
from lightning_srigl.kernels.int8_layout import calibration_range, quantize_weights
from tests.condensed.conftest import load_or_skip

REPO = Path(__file__).resolve().parents[2]


def condensed(out: int, inp: int, fan_in: int, seed: int, bias: bool = True, ablate: bool = True) -> CondensedLinear:
    g = torch.Generator().manual_seed(seed)
    order = torch.argsort(torch.rand(out, inp, generator=g), dim=1)[:, :fan_in]
    mask = torch.zeros(out, inp, dtype=torch.bool).scatter_(1, order, True)
    if ablate:
        mask[1::4] = False
    b = torch.randn(out, generator=g) if bias else None
    return CondensedLinear.from_dense_weight(torch.randn(out, inp, generator=g), mask, b)


def run_kernel(kernel, layer: Int8CondensedLinear, x: torch.Tensor, mode: int) -> torch.Tensor:
    """Modes 0 and 3 with the variant's own window layout (empty where it has none), 1 and 2 the gathers."""
    layout = kernel.int8_window_layout(layer.weight, layer.indices, layer.in_features)
    return kernel.int8_condensed_linear(
        x, layer.weight, layer.indices, layer.weight_sum, layer.weight_scale, layer.active_rows, layer.bias,
        layout, layer.out_features, layer.input_scale, layer.input_zero, mode,
    )  # fmt: skip


def reference(layer: Int8CondensedLinear, x: torch.Tensor) -> torch.Tensor:
    return int8_linear_reference(
        x, layer.weight, layer.indices, layer.weight_sum, layer.weight_scale, layer.active_rows, layer.bias,
        layer.out_features, layer.input_scale, layer.input_zero,
    )  # fmt: skip


def assert_bit_equal(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape
    assert torch.equal(actual.view(torch.int32), expected.view(torch.int32)), (actual - expected).abs().max()


# (out, in, fan-in, bias, ablated rows, int32 indices, static activations)
SHAPES = [
    (40, 100, 13, True, True, False, False),
    (17, 300, 64, False, False, False, True),
    (33, 40000, 130, True, True, True, False),
    (9, 7, 7, True, False, False, True),
]


@pytest.mark.parametrize("mode", [0, 1, 2, 3], ids=["best", "gather", "gather-vnni-if-present", "best-without-vnni"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}k{s[2]}")
def test_kernels_are_bit_equal_to_the_int32_reference(kernel, mode, shape):
    out, inp, fan_in, bias, ablate, _, static = shape
    layer = Int8CondensedLinear.from_condensed(condensed(out, inp, fan_in, seed=out, bias=bias, ablate=ablate))
    assert (layer.indices.dtype == torch.int32) == (inp > 32767)
    g = torch.Generator().manual_seed(inp)
    if static:
        assert layer.calibrate(torch.randn(16, inp, generator=g) * 0.8).input_scale is not None
    for batch in (0, 1, 2, 3, 8, 65, 300 if inp < 1000 else 5):
        x = torch.randn(batch, inp, generator=g) * 2 + 0.3
        assert_bit_equal(run_kernel(kernel, layer, x, mode), reference(layer, x))


# Many rows per call (the window kernels' sample blocks of 8 and tiles of groups): random shapes with partial
# groups, ablated (non-consecutive) and consecutive output rows, several L1 tiles, and row counts around and
# between the blocks. (out, in, fan-in, seed)
MANY_ROWS_SHAPES = [(256, 768, 77, 0), (100, 3072, 307, 1), (19, 130, 20, 2), (64, 64, 64, 3), (48, 1000, 3, 4)]


@pytest.mark.parametrize("mode", [0, 1, 2, 3], ids=["best", "gather", "gather-vnni-if-present", "best-without-vnni"])
@pytest.mark.parametrize("shape", MANY_ROWS_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}k{s[2]}")
def test_many_rows_are_bit_equal_to_the_int32_reference(kernel, mode, shape):
    out, inp, fan_in, seed = shape
    g = torch.Generator().manual_seed(seed)
    layer = Int8CondensedLinear.from_condensed(condensed(out, inp, fan_in, seed, bias=seed % 2 == 0, ablate=seed < 2))
    for batch in (0, 7, 9, 16, 23, 128, 197, 300):
        x = torch.randn(batch, inp, generator=g) * torch.rand(batch, 1, generator=g) * 4
        if batch > 100:
            x[batch // 2, inp // 3] = float("nan")  # a non-finite row inside a block
            x[batch // 3] = 0.0
            x[batch // 4, :2] = torch.tensor([3e38, -3e38])  # finite, but its range (and sum) overflow fp32
        if seed == 3:
            layer.calibrate(torch.randn(4, inp, generator=g))
        assert_bit_equal(run_kernel(kernel, layer, x, mode), reference(layer, x))


def test_avx2_runs_the_window_kernel_and_refuses_another_variants_layout():
    if "avx2" not in host_variants():
        pytest.skip("this CPU runs no AVX2 code")
    avx2 = load_or_skip("avx2")
    vnni = "avx_vnni_window" if torch.cpu.get_capabilities().get("avx_vnni", False) else "avx2_window"
    assert [avx2.int8_path(mode) for mode in (0, 1, 3)] == [vnni, "avx2", "avx2_window"]
    layer = Int8CondensedLinear.from_condensed(condensed(24, 300, 30, seed=4))
    layout = avx2.int8_window_layout(layer.weight, layer.indices, layer.in_features)
    assert layout.numel() > 0
    others = [load_or_skip(name) for name in host_variants() if name not in ("avx2", "scalar")]
    for other in others:  # AVX-512: 16 rows and 128-byte windows per step, a layout of another format
        x = torch.randn(3, 300)
        with pytest.raises(RuntimeError, match="layout"):
            other.int8_condensed_linear(
                x, layer.weight, layer.indices, layer.weight_sum, layer.weight_scale, layer.active_rows, layer.bias,
                layout, layer.out_features, None, None, 0,
            )  # fmt: skip


def test_non_finite_and_zero_rows(kernel):
    layer = Int8CondensedLinear.from_condensed(condensed(12, 50, 9, seed=3))
    x = torch.randn(5, 50)
    x[1, 4], x[2, 0], x[3] = float("nan"), float("inf"), 0.0
    for static in (False, True):
        if static:
            layer.calibrate(torch.randn(4, 50))
        y = run_kernel(kernel, layer, x, 0)
        for mode in (0, 1, 2, 3):
            assert_bit_equal(run_kernel(kernel, layer, x, mode), reference(layer, x))
        active = layer.active_rows
        assert y[1:3, active].isnan().all() and not y[[0, 3, 4]].isnan().any()
        torch.testing.assert_close(y[3], layer.bias)  # an all-zero row outputs the bias


def test_layer_error_against_fp32_is_that_of_int8_quantization():
    fp32 = condensed(64, 256, 32, seed=5)
    x = torch.randn(16, 256)
    for input_range in (None, calibration_range(x)):
        int8 = Int8CondensedLinear.from_condensed(fp32, input_range)
        with torch.no_grad():
            expected = fp32(x)
            error = ((int8(x) - expected).norm() / expected.norm()).item()
            assert_bit_equal(int8(x), reference(int8, x))
        assert 0 < error < 0.02
    assert Int8CondensedLinear.from_condensed(fp32)(x.view(4, 4, 256)).shape == (4, 4, 64)


def test_weight_quantization_is_symmetric_per_row():
    values = torch.tensor([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0]])
    q, scale = quantize_weights(values)
    assert q.tolist() == [[64, -127, 32], [0, 0, 0]]
    torch.testing.assert_close(scale, torch.tensor([1.0 / 127, 1.0]))


def test_rejects_bad_inputs_and_corrupt_buffers():
    layer = Int8CondensedLinear.from_condensed(condensed(8, 20, 5, seed=1))
    with pytest.raises(ValueError, match="fp32 input"):
        layer(torch.randn(2, 20, dtype=torch.float64))
    with pytest.raises(ValueError, match="fp32 input"):
        layer(torch.randn(2, 19))
    state = {name: tensor.clone() for name, tensor in layer.state_dict().items()}
    bad = dict(state, indices=state["indices"].clone().fill_(20))
    with pytest.raises(ValueError, match="indices must lie in"):
        layer.load_state_dict(bad)
    bad = dict(state, weight_sum=state["weight_sum"] + 1)
    with pytest.raises(ValueError, match="weight_sum"):
        Int8CondensedLinear.from_spec(layer.spec_args(), bad)
    with pytest.raises(ValueError, match="input_scale"):
        Int8CondensedLinear.from_spec({**layer.spec_args(), "input_scale": 0.1}, state)


def test_saved_int8_model_gives_identical_outputs_in_a_fresh_process(tmp_path):
    x = torch.randn(3, 32)
    first = Int8CondensedLinear.from_condensed(condensed(24, 32, 8, seed=7))
    second = Int8CondensedLinear.from_condensed(condensed(5, 24, 6, seed=8), calibration_range(torch.randn(8, 24)))
    model = torch.nn.Sequential(first, torch.nn.ReLU(), second).eval()
    save_condensed(model, tmp_path / "int8.pt")
    with torch.no_grad():
        torch.save({"x": x, "y": model(x)}, tmp_path / "expected.pt")
        assert torch.equal(load_condensed(tmp_path / "int8.pt")(x), model(x))
    script = (
        "import sys, torch\n"
        "from lightning_srigl.condensed import load_condensed\n"
        "e = torch.load(sys.argv[1] + '/expected.pt')\n"
        "with torch.no_grad():\n"
        "    y = load_condensed(sys.argv[1] + '/int8.pt')(e['x'])\n"
        "assert torch.equal(y.view(torch.int32), e['y'].view(torch.int32)), (y - e['y']).abs().max()\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")


def test_torch_compile_and_export_see_the_custom_op():
    model = torch.nn.Sequential(Int8CondensedLinear.from_condensed(condensed(16, 24, 6, seed=2)), torch.nn.ReLU())
    x = torch.randn(4, 24)
    with torch.no_grad():
        expected = model(x)
        compiled = torch.compile(model, fullgraph=True, dynamic=False)
        assert torch.equal(compiled(x), expected)
        program = torch.export.export(model, (x,))
    assert "int8_condensed_linear" in str(program.graph)
    assert torch.equal(program.module()(x), expected)
