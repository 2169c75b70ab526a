"""``condensed_linear_rows``: the condensed product stored at its output columns, ablated columns set to their bias,
in every kernel variant and through ``CondensedLinear`` (eager, compiled, and one-row calls in a compiled graph)."""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
import zipfile

import pytest
import torch

from lightning_srigl.condensed import CondensedLinear
from lightning_srigl.kernels.compiled import compile_lazily, eager_forward, export_package, load_package
from lightning_srigl.kernels.cpu.loader import condensed_linear_rows_torch, host_variants, load_extension
from lightning_srigl.kernels.linear_rows import condensed_linear_rows


def random_rows(
    batch: int, inp: int, out: int, active: int, k: int, dtype: torch.dtype, seed: int, contiguous: bool = False
) -> tuple[torch.Tensor, ...]:
    """x (batch, inp), values / indices (active, k), strictly increasing rows (active,) in [0, out), bias (out,)."""
    g = torch.Generator().manual_seed(seed)
    indices = torch.argsort(torch.rand(active, inp, generator=g), dim=1)[:, :k].sort(dim=1).values.short()
    rows = torch.arange(active) if contiguous else torch.randperm(out, generator=g)[:active].sort().values
    values = torch.randn(active, k, generator=g).to(dtype)
    x, bias = torch.randn(batch, inp, generator=g).to(dtype), torch.randn(out, generator=g).to(dtype)
    return x, values, indices, rows, bias


def check_rows(kernel, batch: int, inp: int, out: int, active: int, k: int, dtype: torch.dtype, seed: int,
               contiguous: bool = False) -> None:  # fmt: skip
    x, values, indices, rows, bias = random_rows(batch, inp, out, active, k, dtype, seed, contiguous)
    tol = {"atol": 1e-4, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 5e-2, "rtol": 1e-2}
    for b in (bias, None):
        expected = condensed_linear_rows_torch(
            x.double(), values.double(), indices, rows, None if b is None else b.double(), out
        )
        got = kernel.condensed_linear_rows(x, values, indices, rows, b, out)
        assert got.shape == (batch, out) and got.dtype == dtype
        torch.testing.assert_close(got.double(), expected, **tol)


# Batches 0-2 take gather-dot, 3-16 16-wide panels, more 32- or (in >= 2048, AVX-512) 64-wide ones, with partial
# panels and tiles; 90 % of the columns active (spans of 16 active rows with gaps), all, none, or the first ones.
@pytest.mark.parametrize("batch", [0, 1, 2, 3, 16, 17, 70, 300])
@pytest.mark.parametrize(("inp", "out", "active", "k"), [(100, 50, 45, 11), (2100, 40, 33, 37), (37, 33, 33, 9)])
def test_rows_equal_the_reference(kernel, batch, inp, out, active, k):
    check_rows(kernel, batch, inp, out, active, k, torch.float32, seed=batch + inp)


@pytest.mark.parametrize(
    ("batch", "active", "contiguous"), [(20, 0, False), (20, 30, True), (1, 30, True), (65, 3, False)]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rows_with_no_active_contiguous_or_sparse_columns(kernel, batch, active, contiguous, dtype):
    check_rows(kernel, batch, 60, 48, active, 7, dtype, seed=active, contiguous=contiguous)


@pytest.mark.parametrize("threads", [1, 2])
def test_rows_split_over_threads(kernel, threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for batch in (40, 90, 250):
            check_rows(kernel, batch, 100, 64, 50, 11, torch.float32, seed=batch)
    finally:
        torch.set_num_threads(before)


def test_rows_that_do_not_increase_are_refused(kernel):
    x, values, indices, rows, bias = random_rows(4, 30, 20, 6, 5, torch.float32, seed=1)
    with pytest.raises(RuntimeError, match="strictly increasing"):
        kernel.condensed_linear_rows(x, values, indices, rows.flip(0), bias, 20)
    with pytest.raises(RuntimeError, match="lie in"):
        kernel.condensed_linear_rows(x, values, indices, rows + 20, bias, 20)


def test_python_op_is_differentiable_like_the_reference():
    x, values, indices, rows, bias = random_rows(5, 30, 20, 12, 6, torch.float64, seed=2)
    inputs = [t.clone().requires_grad_() for t in (x, values, bias)]
    reference = [t.clone().requires_grad_() for t in (x, values, bias)]
    condensed_linear_rows(inputs[0], inputs[1], indices, rows, inputs[2], 20).square().sum().backward()
    condensed_linear_rows_torch(reference[0], reference[1], indices, rows, reference[2], 20).square().sum().backward()
    for got, expected in zip(inputs, reference):
        torch.testing.assert_close(got.grad, expected.grad)


def ablated_layer(inp: int = 96, out: int = 80, bias: bool = True) -> CondensedLinear:
    """A 90 %-sparse layer whose every fourth output row is ablated."""
    g = torch.Generator().manual_seed(0)
    mask = torch.argsort(torch.rand(out, inp, generator=g), dim=1) < inp // 10
    mask[::4] = False
    return CondensedLinear.from_dense_weight(torch.randn(out, inp, generator=g), mask,
                                             torch.randn(out, generator=g) if bias else None)  # fmt: skip


@pytest.mark.parametrize("batch", [1, 2, 5, 40])
def test_layer_with_ablated_rows_equals_its_dense_weight(batch):
    layer = ablated_layer()
    x = torch.randn(batch, 3, 96)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.dense_weight(), layer.bias),
                                   atol=1e-4, rtol=1e-4)  # fmt: skip


def ops_called(fn, *args) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        fn(*args)
    return {event.name for event in profile.events()}


@pytest.mark.parametrize("bias", [True, False])
def test_compiled_graph_writes_ablated_rows_in_the_kernel(bias):
    layer = ablated_layer(bias=bias).eval()
    x = torch.randn(2, 7, 96)
    with torch.no_grad():
        eager = layer(x)
        compile_lazily(layer)
        compiled = layer(x)
        names = ops_called(layer, x)
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)
    # the rows op (the loaded variant's, called directly: kernels/direct_calls.py), no scatter after a product
    assert any(re.fullmatch(r"lightning_srigl(_\w+)?::condensed_linear_rows", name) for name in names), names
    assert not any("index_add" in name or re.fullmatch(r"lightning_srigl(_\w+)?::condensed_linear", name)
                   for name in names), names  # fmt: skip


@pytest.mark.parametrize("shape", [(1, 96), (1, 1, 96)])
@pytest.mark.parametrize("bias", [True, False])
def test_compiled_one_row_call_takes_the_batch1_kernel(shape, bias):
    extension = load_extension()
    if extension is None or not extension.batch1_supported:
        pytest.skip("this kernel variant has no gather-free batch-1 kernel")
    layer = ablated_layer(bias=bias).eval()
    x = torch.randn(shape)
    with torch.no_grad():
        eager = layer(x)
        compile_lazily(layer)
        compiled = layer(x)
        names = ops_called(layer, x)
        assert eager_forward(layer)(x).equal(eager)
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)
    assert f"lightning_srigl_{extension.variant}::batch1_forward" in names, names
    assert not any(name.startswith("lightning_srigl::condensed_linear") for name in names), names


@pytest.mark.slow
def test_package_with_one_row_calls_equals_eager_and_names_no_kernel_variant(tmp_path):
    """A package runs on other CPUs: its one-row calls take the Python op, even after `compile_lazily` froze the
    batch-1 layout (``lightning_srigl_<variant>::batch1_forward`` did not load under another variant)."""
    layer = ablated_layer().eval()
    x = torch.randn(1, 1, 96)
    compile_lazily(layer)
    with torch.no_grad():
        path = export_package(layer, x, tmp_path / "layer.pt2")
        torch.testing.assert_close(load_package(path)(x), eager_forward(layer)(x), atol=1e-5, rtol=1e-5)
    with zipfile.ZipFile(path) as package:
        text = b"".join(package.read(name) for name in package.namelist() if not name.endswith((".so", ".o")))
    assert b"lightning_srigl::condensed_linear_rows" in text
    assert not any(f"lightning_srigl_{variant}".encode() in text for variant in host_variants())


def test_loading_weights_drops_the_frozen_layout():
    layer = ablated_layer()
    layer.freeze_for_compile()
    assert layer.frozen_batch1_layout is not None or not load_extension().batch1_supported
    layer.load_state_dict(ablated_layer().state_dict())
    assert layer.frozen_batch1_layout is None and "frozen_batch1_layout" not in layer.state_dict()


def test_a_compiled_layer_cast_to_bf16_runs_one_row_calls_under_autocast():
    """The layout frozen by `compile_lazily` holds the fp32 weights: after ``.to(bfloat16)`` the recompiled graph
    must not use it (it raised on the bf16 bias) but compute as eager does."""
    layer = ablated_layer().eval()
    compile_lazily(layer)
    layer.to(torch.bfloat16)
    x = torch.randn(1, 96)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(layer(x), eager_forward(layer)(x), atol=1e-2, rtol=1e-2)


def test_a_layer_pickles_with_its_load_hooks():
    """``torch.save(model)`` pickles the module and its ``load_state_dict`` hooks (no local functions)."""
    layer = ablated_layer()
    loaded = pickle.loads(pickle.dumps(layer))
    loaded.load_state_dict(ablated_layer().state_dict())
    assert loaded.frozen_batch1_layout is None
    x = torch.randn(3, 96)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), torch.nn.functional.linear(x, loaded.dense_weight(), loaded.bias),
                                   atol=1e-4, rtol=1e-4)  # fmt: skip


def test_avx2_variant_layer_with_ablated_rows_in_a_subprocess():
    script = (
        "import torch\n"
        "from tests.condensed.test_linear_rows import ablated_layer\n"
        "from lightning_srigl.kernels.cpu.loader import load_extension\n"
        "layer = ablated_layer()\n"
        "for batch in (1, 2, 3, 40, 130):\n"
        "    x = torch.randn(batch, 96)\n"
        "    with torch.no_grad():\n"
        "        expected = torch.nn.functional.linear(x, layer.dense_weight(), layer.bias)\n"
        "        torch.testing.assert_close(layer(x), expected, atol=1e-4, rtol=1e-4)\n"
        "print(load_extension().variant)\n"
    )
    if "avx2" not in host_variants():
        pytest.skip("this CPU runs no AVX2 kernels")
    env = {**os.environ, "LIGHTNING_SRIGL_CPU_ISA": "avx2"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env,
                          timeout=600)  # fmt: skip
    assert done.stdout.strip().splitlines()[-1] == "avx2"
