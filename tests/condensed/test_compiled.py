"""``accelerate(compile=True)``: one graph without breaks, equal to eager; the AOTInductor package."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters

from example_projects.imagenet_vit_b16.model import VisionTransformer
from lightning_srigl.acceleration.accelerate import accelerate
from lightning_srigl.benchmark.whole_model import srigl_masks
from lightning_srigl.condensed.kinds.registry import accelerated_layers
from lightning_srigl.condensed.layers.conv import CondensedConv2d
from lightning_srigl.condensed.layers.csr import CSRLinear
from lightning_srigl.condensed.layers.int8_linear import Int8CondensedLinear
from lightning_srigl.condensed.layers.linear import CondensedLinear
from lightning_srigl.kernels.attention import scaled_dot_product_attention
from lightning_srigl.kernels.compiled import (
    COMPILE_OPTIONS,
    compile_in_place,
    compile_lazily,
    eager_forward,
    export_package,
    graph_breaks,
    load_package,
)
from lightning_srigl.kernels.cpu.loader import host_variants
from lightning_srigl.kernels.direct_calls import call_kernel_directly
from lightning_srigl.kernels.graph_passes import PostGradPasses
from lightning_srigl.kernels.residual_fusion import fuse_residuals
from lightning_srigl.masking import bind_masks


class ConvNet(nn.Module):
    """Conv-BN-ReLU, a residual block (its addition and ReLU fuse into ``block`` when compiled), a strided conv
    and two linear layers: (N, 3, 16, 16) -> (N, 10)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.block = nn.Conv2d(16, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, stride=2)
        self.fc = nn.Linear(32 * 8 * 8, 64)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        x = torch.relu(self.conv2(torch.relu(self.block(x) + x)))
        return self.head(torch.relu(self.fc(x.flatten(1))))


def masked(model: nn.Module, distribution: str) -> nn.Module:
    torch.manual_seed(0)
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bind_masks(
            model,
            srigl_masks(model, 0.9, distribution, 0.1, torch.Generator().manual_seed(0)),
        )
    return model


def tiny_vit() -> nn.Module:
    return VisionTransformer(
        image_size=16,
        patch_size=8,
        num_classes=10,
        dim=32,
        depth=1,
        heads=4,
        mlp_dim=64,
    )


def condensed_everywhere(calls: dict) -> dict:
    """A fake timer under which every candidate but dense is fastest, so the compiled graph holds custom ops."""
    from lightning_srigl.timing import Timing

    return {name: Timing(2.0, 2.0) if name == "dense" else Timing(1.0, 1.0) for name in calls}


@pytest.mark.parametrize(("build", "distribution"), [(ConvNet, "erk"), (tiny_vit, "uniform")])
def test_compiled_model_is_one_graph_equal_to_eager(build, distribution: str) -> None:
    model = masked(build(), distribution)
    x = torch.randn(2, 3, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = accelerate(
            model,
            x,
            verbose=False,
            timer=condensed_everywhere,
            model_repeats=1,
            compile=True,
        )
    assert "condensed" in accelerated_layers(model).values()
    with torch.no_grad():
        eager, compiled = eager_forward(model)(x), model(x)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    assert graph_breaks(model, x) == 0
    assert report.compile_seconds is not None and report.compile_seconds > 0
    assert set(report.model_times) == {"dense", "accelerated", "compiled"}
    assert "compile" in report.summary()


def test_the_aoti_package_runs_the_accelerated_model(tmp_path: Path) -> None:
    model = masked(ConvNet(), "erk")
    x = torch.randn(2, 3, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        accelerate(model, x, verbose=False, timer=condensed_everywhere, model_repeats=0)
    path = export_package(model, x, tmp_path / "model.pt2")
    runner = load_package(path)
    with torch.no_grad():
        torch.testing.assert_close(runner(x), model(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"\.pt2"):
        export_package(model, x, tmp_path / "model.zip")
    with pytest.raises(FileNotFoundError, match="export_package"):
        load_package(tmp_path / "missing.pt2")


class ResidualBlocks(nn.Module):
    """Two condensed residual blocks, ``relu(conv(x) + x)`` and ``conv(x) + shortcut(x)``:
    (N, 8, 9, 9) -> (N, 16, 5, 5)."""

    def __init__(self) -> None:
        super().__init__()
        self.first = condensed_conv(nn.Conv2d(8, 8, 3, padding=1))
        self.body = condensed_conv(nn.Conv2d(8, 16, 3, stride=2, padding=1))
        self.shortcut = condensed_conv(nn.Conv2d(8, 16, 1, stride=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.first(x) + x)
        return self.shortcut(x) + self.body(x)


def condensed_conv(conv: nn.Conv2d) -> CondensedConv2d:
    mask = torch.rand(conv.weight.shape[0], conv.weight[0].numel()).argsort(dim=1) < conv.weight[0].numel() // 3
    return CondensedConv2d.from_masked(conv, mask.view_as(conv.weight))


class CountingFusion(PostGradPasses):
    """`PostGradPasses` with ``direct`` that counts what it rewrote (a fresh ``uuid``: inductor's cache must not
    skip it)."""

    def __init__(self) -> None:
        super().__init__(direct=True)
        self.fused = self.direct_calls = 0

    def __call__(self, graph: torch.fx.Graph) -> None:
        self.fused += fuse_residuals(graph)
        self.direct_calls += call_kernel_directly(graph)

    def uuid(self) -> str:
        return f"counting-{id(self)}-{time.time_ns()}"


def test_residual_additions_and_relus_fuse_into_the_convolution_epilogue() -> None:
    torch.manual_seed(0)
    model, x = ResidualBlocks().eval(), torch.randn(2, 8, 9, 9)
    fusion = CountingFusion()
    compiled = torch.compile(model, fullgraph=True, options=COMPILE_OPTIONS | {"post_grad_custom_post_pass": fusion})
    with torch.no_grad():
        expected = model(x)
        dense = torch.relu(model.first.to_dense()(x) + x)
        dense = model.shortcut.to_dense()(dense) + model.body.to_dense()(dense)
        torch.testing.assert_close(compiled(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(expected, dense, rtol=1e-5, atol=1e-5)
    assert fusion.fused == 2  # relu(first + x); shortcut + body (one of the two convolutions takes the other)
    assert fusion.direct_calls == 3


class DecodingAttention(nn.Module):
    """``(x (B, 1, 64), keys, values (B, 4, P, 16)) -> (B, 1, 64)``: a condensed query projection (10 of its 64
    neurons ablated: the rows op) attending over a cache of ``P`` positions, then a condensed output projection."""

    def __init__(self) -> None:
        super().__init__()
        query_mask, out_mask = (torch.rand(64, 64).argsort(dim=1) < 16 for _ in range(2))
        query_mask[:10] = False  # ablated neurons
        self.query = CondensedLinear.from_masked(nn.Linear(64, 64), query_mask)
        self.out = CondensedLinear.from_masked(nn.Linear(64, 64), out_mask)

    def forward(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        q = self.query(x).view(x.shape[0], 1, 4, 16).transpose(1, 2)
        attended = scaled_dot_product_attention(q, keys, values)
        return self.out(attended.transpose(1, 2).reshape(x.shape[0], 1, 64))


def test_compiled_graphs_call_the_variant_ops_directly_also_over_a_dynamic_cache() -> None:
    """The linear, rows and attention calls of a compiled decoding step point at the loaded C++ op (one graph for
    every cache length: the key length is symbolic, which the one-query kernel takes) with outputs as eager's."""
    torch.manual_seed(0)
    model, fusion = DecodingAttention().eval(), CountingFusion()
    compiled = torch.compile(model, fullgraph=True, options=COMPILE_OPTIONS | {"post_grad_custom_post_pass": fusion})
    x = torch.randn(2, 1, 64)
    with torch.no_grad():
        for length in (5, 9, 130):
            keys, values = torch.randn(2, 4, length, 16), torch.randn(2, 4, length, 16)
            torch._dynamo.mark_dynamic(keys, 2)
            torch._dynamo.mark_dynamic(values, 2)
            torch.testing.assert_close(compiled(x, keys, values), model(x, keys, values), rtol=1e-5, atol=1e-5)
    assert fusion.direct_calls == 3  # query (rows), attention, out: one graph, compiled once


def test_the_fused_compiled_blocks_run_on_the_avx2_variant() -> None:
    """Under ``LIGHTNING_SRIGL_CPU_ISA=avx2`` the compiled graph's convolutions (with residuals) call the AVX2 op."""
    if "avx2" not in host_variants():
        pytest.skip("this CPU runs no AVX2 kernels")
    script = (
        "import torch\n"
        "from tests.condensed.test_compiled import CountingFusion, ResidualBlocks\n"
        "from lightning_srigl.kernels.compiled import COMPILE_OPTIONS\n"
        "from lightning_srigl.kernels.cpu.loader import load_extension\n"
        "torch.manual_seed(0)\n"
        "model, x, fusion = ResidualBlocks().eval(), torch.randn(8, 8, 9, 9), CountingFusion()\n"
        "options = COMPILE_OPTIONS | {'post_grad_custom_post_pass': fusion}\n"
        "compiled = torch.compile(model, fullgraph=True, options=options)\n"
        "with torch.no_grad():\n"
        "    torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)\n"
        "print(load_extension().variant, fusion.fused, fusion.direct_calls)\n"
    )
    env = {**os.environ, "LIGHTNING_SRIGL_CPU_ISA": "avx2"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env,
                          timeout=600)  # fmt: skip
    assert done.stdout.strip().splitlines()[-1] == "avx2 2 3"


@pytest.mark.slow
def test_the_compiled_graph_cached_by_inductor_is_not_reused_by_another_kernel_variant(tmp_path: Path) -> None:
    """Inductor's on-disk graph cache keys the pass by its ``uuid``: a graph compiled with the default options under
    one variant (its convolutions call that variant's op) must not be loaded under another."""
    if "avx2" not in host_variants()[1:]:
        pytest.skip("this CPU runs no AVX2 kernels besides its own variant")
    script = (
        "import torch\n"
        "from tests.condensed.test_compiled import ResidualBlocks\n"
        "from lightning_srigl.kernels.compiled import COMPILE_OPTIONS\n"
        "from lightning_srigl.kernels.cpu.loader import load_extension\n"
        "torch.manual_seed(0)\n"
        "model, x = ResidualBlocks().eval(), torch.randn(2, 8, 9, 9)\n"
        "compiled = torch.compile(model, fullgraph=True, options=dict(COMPILE_OPTIONS))\n"
        "with torch.no_grad():\n"
        "    torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)\n"
        "print(load_extension().variant)\n"
    )
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path)}
    env.pop("LIGHTNING_SRIGL_CPU_ISA", None)
    for variant in (host_variants()[0], "avx2"):
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                              env=env | {"LIGHTNING_SRIGL_CPU_ISA": variant})  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip().splitlines()[-1] == variant


class Scaled(nn.Module):
    """``(N, 4) -> (N, width)``: a linear layer, doubled (dropout after it, active in training mode only)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(4, width)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.linear(x)) * 2


def test_without_module_guards_each_model_of_a_class_runs_its_own_graph_and_changes_are_not_checked() -> None:
    narrow, wide = Scaled(3).eval(), Scaled(5).eval()
    compile_lazily(narrow, module_guards=False)
    compile_lazily(wide, module_guards=False)  # the same class: its graph must not serve the other model
    x = torch.randn(2, 4)
    with torch.no_grad():
        for model in (narrow, wide, narrow):
            torch.testing.assert_close(model(x), model.linear(x) * 2)
        graphs = counters["stats"]["unique_graphs"]
        narrow.train()  # not checked any more: the eval graph runs (the documented contract)
        torch.testing.assert_close(narrow(x), narrow.linear(x) * 2)
        assert counters["stats"]["unique_graphs"] == graphs
        guarded = Scaled(3).eval()
        compile_lazily(guarded)
        guarded(x)
        guarded.train()
        guarded(x)  # with the module guards, training mode recompiles
        assert counters["stats"]["unique_graphs"] == graphs + 2


class Appended(nn.Module):
    """``(N, P, 3), (N, 1, 3) -> (N, P + 1, 3)``: a cache with one entry appended, doubled."""

    def forward(self, cache: torch.Tensor, entry: torch.Tensor) -> torch.Tensor:
        return torch.cat([cache, entry], dim=1) * 2


def _guards(compiled_forward: object) -> str:
    """The printed guard tree of the one graph dynamo compiled for a forward made by `compile_lazily`."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    compiled = getattr(compiled_forward, "__wrapped__", compiled_forward)
    function = compiled._torchdynamo_orig_callable.__func__  # type: ignore[attr-defined]
    (entry,) = _debug_get_cache_entry_list(function.__code__)
    return str(entry.guard_manager)


def test_the_guards_of_a_dynamic_input_are_checked_in_cpp_not_python_lambdas() -> None:
    """`GUARD_SETTINGS`: the size and stride relations of a dimension marked dynamic and the inputs' no-aliasing
    check are C++ guards (dynamo's defaults make them Python lambdas); the graph serves every length."""
    model = Appended()
    cache = torch.randn(2, 5, 3)
    torch._dynamo.mark_dynamic(cache, 1)
    compile_in_place(model, (cache, torch.randn(2, 1, 3)), module_guards=False)
    guards = _guards(model.forward)
    assert "SYMBOLIC_SHAPE_GUARD: L['cache'].stride()[0] == 3*L['cache'].size()[1]" in guards
    assert "NO_TENSOR_ALIASING" in guards
    assert "LAMBDA_GUARD" not in guards.replace("LAMBDA_GUARD: torch._functorch", "")  # dynamo's ambient guard
    graphs = counters["stats"]["unique_graphs"]
    with torch.no_grad():
        for length in (7, 40):
            cache, entry = torch.randn(2, length, 3), torch.randn(2, 1, 3)
            torch.testing.assert_close(model(cache, entry), torch.cat([cache, entry], 1) * 2)
    assert counters["stats"]["unique_graphs"] == graphs


def test_a_process_that_imported_only_the_compiler_compiles_a_model() -> None:
    """The post-grad pass names every op it redirects, also ones no module of the process has imported yet."""
    script = (
        "import torch\n"
        "from lightning_srigl.kernels.compiled import compile_in_place\n"
        "model, x = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()), torch.randn(2, 4)\n"
        "compile_in_place(model, x)\n"
        "with torch.no_grad():\n"
        "    torch.testing.assert_close(model(x), model[1](model[0](x)))\n"
        "print('compiled')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("compiled")


def test_a_process_that_imported_only_the_loader_runs_a_package_of_int8_and_csr_layers(tmp_path: Path) -> None:
    """`load_package` in a fresh process registers every op a package may call, not only the fp32 condensed ones
    (an int8 or CSR package failed there with "Could not find schema for lightning_srigl::int8_condensed_linear")."""
    torch.manual_seed(0)
    first, second = nn.Linear(16, 12), nn.Linear(12, 5)
    model = nn.Sequential(
        Int8CondensedLinear.from_masked(first, torch.rand(12, 16).argsort(dim=1) < 4),
        nn.ReLU(),
        CSRLinear.from_masked(second, torch.rand(5, 12) < 0.3),
    ).eval()
    x = torch.randn(3, 16)
    path = export_package(model, x, tmp_path / "model.pt2")
    with torch.no_grad():
        torch.save({"x": x, "y": model(x)}, tmp_path / "expected.pt")
    script = (
        "import sys, torch\n"
        "from lightning_srigl.kernels.compiled import load_package\n"
        "expected = torch.load(sys.argv[2])\n"
        "with torch.no_grad():\n"
        "    torch.testing.assert_close(load_package(sys.argv[1])(expected['x']), expected['y'])\n"
        "print('loaded')\n"
    )
    command = [sys.executable, "-c", script, str(path), str(tmp_path / "expected.pt")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("loaded")


@pytest.mark.parametrize(
    ("options", "compile", "error", "message"),
    [
        ("cpp_wrapper", True, TypeError, "compile_options must be a dict"),
        ({"cpp_wraper": True}, True, ValueError, "did you mean 'cpp_wrapper'"),
        ({"cpp_wrapper": "yes"}, True, TypeError, "'cpp_wrapper' takes a bool"),
        ({"cpp_wrapper": True}, False, ValueError, "pass compile=True"),
    ],
)
def test_bad_compile_options_are_refused_before_the_model_changes(options, compile, error, message) -> None:
    model = masked(ConvNet(), "erk")
    before = {name: type(module) for name, module in model.named_modules()}
    with pytest.raises(error, match=message):
        accelerate(model, torch.randn(2, 3, 16, 16), verbose=False, compile=compile, compile_options=options)
    assert {name: type(module) for name, module in model.named_modules()} == before
    assert "forward" not in vars(model)
