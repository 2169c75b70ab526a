"""One path to add an op: every C++ op has the schema of its Python op, every op has a fake kernel that
gives the real kernel's output shape, and the checklist in docs/design.md names files that exist."""

from __future__ import annotations

import importlib
import pkgutil
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.symbolic_shapes import ShapeEnv

import lightning_srigl.kernels
from lightning_srigl.kernels.cpu.isa import all_variants
from lightning_srigl.kernels.cpu.loader import host_variants, load_variant_by_name
from lightning_srigl.kernels.csr import to_csr
from lightning_srigl.kernels.fakes import CPP_FAKES
from lightning_srigl.kernels.int8 import INT8_PAD
from lightning_srigl.kernels.layout import condense
from lightning_srigl.kernels.sampled import SampledLayout

ROOT = Path(__file__).resolve().parents[2]
# Importing a module registers its Python ops: every module of kernels/ is imported, so the tests below see an op
# as soon as its module exists (docs/design.md's checklist puts each Python op in a module of its own there).
OP_MODULES = [info.name for info in pkgutil.iter_modules(lightning_srigl.kernels.__path__) if not info.ispkg]
for _name in OP_MODULES:
    importlib.import_module(f"lightning_srigl.kernels.{_name}")
PYTHON_NAMESPACE = "lightning_srigl"
# Arguments a C++ op has beyond its Python op's (each with a default): the conv's forced block width and the
# int8 op's dot-product path (tests).
CPP_ONLY_ARGUMENTS = {"condensed_conv2d": ("block",), "int8_condensed_linear": ("mode",)}
# Ops that take no tensor (nothing to fake).
NO_TENSORS = {"batch1_supported", "int8_path"}


def _condensed() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    mask = torch.zeros(6, 20, dtype=torch.bool)
    mask[[0, 2, 3, 5], :4] = True
    return condense(torch.randn(6, 20), mask)


def _conv_args() -> tuple:
    values, indices, rows = condense(torch.randn(8, 18), torch.arange(18).expand(8, 18) % 3 == 0)
    return (torch.randn(2, 2, 7, 6), values, indices, rows, torch.randn(8), 8, 1, [3, 3], [1, 2], [1, 0], [1, 1])


def _csr_args() -> tuple:
    csr = to_csr(torch.randn(5, 7).relu())
    parts = (csr.crow_indices().clone(), csr.col_indices().clone(), csr.values().clone())  # plain tensors
    return (torch.randn(3, 7), *parts, torch.randn(5), 7)


def _linear_args() -> tuple:
    values, indices, rows = _condensed()
    return (torch.randn(3, 20), values, indices, torch.randn(rows.numel()))


def _sampled_args() -> tuple:
    layout = SampledLayout.from_mask(torch.rand(6, 9) < 0.5)
    return (torch.randn(4, 6), torch.randn(4, 9), layout.row_ptr, layout.cols)


def _batch1_layout_args() -> tuple:
    values, indices, rows = _condensed()
    return (values, indices, rows, 20, 6)


def _int8_weights() -> tuple[torch.Tensor, torch.Tensor]:
    weight = torch.zeros(4, INT8_PAD, dtype=torch.int8)
    weight[:, :4] = torch.randint(-127, 128, (4, 4), dtype=torch.int8)
    indices = torch.zeros(4, INT8_PAD, dtype=torch.int16)
    indices[:, :4] = torch.arange(4, dtype=torch.int16)
    return weight, indices


def _int8_linear_args(ops: object) -> tuple:
    weight, indices = _int8_weights()
    layout = ops.int8_window_layout(weight, indices, 20) if ops is not None else None
    sums, rows = weight.sum(1, dtype=torch.int32), torch.tensor([0, 2, 3, 5])
    return (torch.randn(3, 20), weight, indices, sums, torch.rand(4) + 0.1, rows, torch.randn(6), layout, 6, None, None)


def _batch1_forward_args(ops: object) -> tuple:
    return (torch.randn(1, 20), ops.batch1_layout(*_batch1_layout_args()), torch.randn(6))


# Example inputs of every op, by name: adding an op means adding it here (the tests below fail until then).
EXAMPLES: dict[str, Callable[[object], tuple]] = {
    "condensed_linear": lambda ops: _linear_args(),
    "condensed_linear_rows": lambda ops: (*_linear_args()[:3], _condensed()[2], torch.randn(6), 6),
    "condensed_conv2d": lambda ops: _conv_args(),
    "csr_linear": lambda ops: _csr_args(),
    "sampled_product": lambda ops: _sampled_args(),
    "batch1_layout": lambda ops: _batch1_layout_args(),
    "batch1_forward": _batch1_forward_args,
    "int8_condensed_linear": _int8_linear_args,
    "int8_window_layout": lambda ops: (*_int8_weights(), 20),
    "packed_linear": lambda ops: (torch.randn(2, 3, 20), torch.randn(6, 20), torch.randn(6)),
    "attention": lambda ops: (
        torch.randn(2, 5, 3, 32).transpose(1, 2),
        torch.randn(2, 3, 4, 32),
        torch.randn(2, 3, 4, 32),
        torch.rand(2, 1, 5, 4) < 0.7,
        0.25,
        False,
    ),
}


def ops_in(namespace: str) -> list[str]:
    """The names of the ops registered in ``torch.ops.<namespace>``."""
    prefix = f"{namespace}::"
    return sorted(
        {name[len(prefix) :].split(".")[0] for name in torch._C._dispatch_get_all_op_names() if name.startswith(prefix)}
    )


@pytest.fixture(params=host_variants())
def variant(request: pytest.FixtureRequest) -> str:
    try:
        load_variant_by_name(request.param)
    except (RuntimeError, OSError) as error:
        pytest.skip(f"the {request.param} kernel could not be loaded or built here ({error})")
    return request.param


def _signature(schema: torch.FunctionSchema, drop: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    return [(arg.name, str(arg.type)) for arg in schema.arguments if arg.name not in drop]


def test_every_cpp_op_with_a_python_op_has_its_schema(variant: str) -> None:
    namespace = all_variants()[variant].namespace
    shared = set(ops_in(namespace)) & set(ops_in(PYTHON_NAMESPACE))
    assert {"condensed_linear", "condensed_conv2d"} <= shared
    for name in sorted(shared):
        python = getattr(torch.ops.lightning_srigl, name).default._schema
        cpp = getattr(getattr(torch.ops, namespace), name).default._schema
        extra = CPP_ONLY_ARGUMENTS.get(name, ())
        assert _signature(cpp, extra) == _signature(python), (
            f"{namespace}::{name} and {PYTHON_NAMESPACE}::{name} differ"
        )
        assert all(arg.default_value is not None for arg in cpp.arguments if arg.name in extra), name
        assert [str(r.type) for r in cpp.returns] == [str(r.type) for r in python.returns], name


def _check_fake_matches_real(op: object, args: tuple) -> None:
    real = op(*args)
    mode = FakeTensorMode(shape_env=ShapeEnv())
    fake_args = tuple(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args)
    with mode:
        fake = op(*fake_args)
    assert fake.dtype == real.dtype and fake.dim() == real.dim()
    for fake_size, real_size in zip(fake.shape, real.shape):
        assert not isinstance(fake_size, int) or fake_size == real_size, (fake.shape, real.shape)


def test_every_python_op_has_a_fake_with_the_real_shapes() -> None:
    names = ops_in(PYTHON_NAMESPACE)
    assert set(names) <= EXAMPLES.keys(), f"add example inputs for {set(names) - EXAMPLES.keys()} to EXAMPLES"
    for name in names:
        _check_fake_matches_real(getattr(torch.ops.lightning_srigl, name).default, EXAMPLES[name](None))


def test_importing_the_kernels_package_registers_every_python_op() -> None:
    """A fresh process that imports only ``lightning_srigl.kernels`` has every Python op some module of kernels/
    registers (a compiled graph, ``torch.export`` program or AOTInductor package naming one finds it, whatever
    else the process imported), and `PYTHON_OPS` lists them."""
    script = (
        "import torch, lightning_srigl.kernels\n"
        "names = torch._C._dispatch_get_all_op_names()\n"
        "print(*sorted({n.split('::')[1].split('.')[0] for n in names if n.startswith('lightning_srigl::')}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    every = ops_in(PYTHON_NAMESPACE)  # this module imported every module of kernels/
    assert done.stdout.split() == every, "import the op's module in lightning_srigl/kernels/__init__.py"
    listed = sorted(op._qualname.removeprefix(f"{PYTHON_NAMESPACE}::") for op in lightning_srigl.kernels.PYTHON_OPS)
    assert listed == every, "add the op to PYTHON_OPS in lightning_srigl/kernels/__init__.py"


def test_every_cpp_op_has_a_fake_with_the_real_shapes(variant: str) -> None:
    namespace = all_variants()[variant].namespace
    names = [name for name in ops_in(namespace) if name not in NO_TENSORS]
    assert set(names) == CPP_FAKES.keys(), "every C++ op needs its fake in lightning_srigl/kernels/fakes.py"
    ops = load_variant_by_name(variant)
    for name in names:
        if name.startswith("batch1") and not ops.batch1_supported:
            continue  # the variant returns an empty layout and rejects batch1_forward
        _check_fake_matches_real(getattr(getattr(torch.ops, namespace), name).default, EXAMPLES[name](ops))


def test_the_add_an_op_checklist_names_files_that_exist() -> None:
    text = (ROOT / "docs" / "design.md").read_text()
    checklist = text.split("#### Adding an op", 1)[1].split("\n#", 1)[0]
    paths = re.findall(r"`((?:lightning_srigl|tests)/[^`<>]+?)`", checklist)
    assert len(paths) >= 6, paths
    missing = [path for path in paths if not (ROOT / path).exists()]
    assert not missing, f"docs/design.md's checklist names files that do not exist: {missing}"
