"""The accelerated model as one optimised graph: ``torch.compile`` with freezing, or an AOTInductor package.

After `accelerate` has swapped the sparse layers, the rest of
the model (its dense layers, normalisations, activations, attention) still runs op by op in eager
PyTorch. `compile_in_place` hands the whole model to PyTorch's own compiler instead:

* ``torch.compile(fullgraph=True)`` with inductor's ``freezing`` option: parameters and buffers
  become constants, so inductor prepacks the remaining dense convolution weights for oneDNN (fp32 linear ones for MKL)
  and fuses BatchNorm, bias, activations and pointwise work around them; a residual addition (and its ReLU)
  after a condensed convolution goes into that convolution's epilogue (`residual_fusion`), and the tanh GELU's
  ``1 + tanh(u)`` is computed as ``2 sigmoid(2u)`` (`pointwise_rewrites`; the passes: `graph_passes`);
* the condensed layers reach the graph as the opaque custom ops ``lightning_srigl::condensed_linear``
  and ``lightning_srigl::condensed_conv2d`` (`linear`,
  `conv`), whose fake implementations give inductor their output
  shapes: no graph break (``fullgraph=True`` raises if there is one); so do the dense linear layers that
  ``accelerate`` moved to oneDNN's prepacked GEMM (``lightning_srigl::packed_linear``, `dense`), since
  inductor's freezing packs fp32 linear weights for MKL, the slower GEMM on AMD CPUs; and so does the attention
  ``accelerate`` moved to ``lightning_srigl::attention`` (`attention`).

`export_package` writes the same graph ahead of time as an AOTInductor package (``.pt2``) and
`load_package` runs it without the model's Python code. The package calls our ops through the
PyTorch dispatcher, and they are registered from Python: the loading process must import
``lightning_srigl.kernels`` (which registers every op of the package, and which `load_package` does) before the
package is loaded, else AOTInductor reports ``Could not find schema for lightning_srigl::condensed_conv2d``.

Freezing takes the weights as they are when the graph is compiled: changing them afterwards needs a new
compile (``torch.compiler.reset()`` and a new call). It applies to calls without gradient tracking
(``torch.no_grad()`` / ``torch.inference_mode()``), the inference calls it is meant for.
"""

from __future__ import annotations

import difflib
import functools
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from lightning_srigl.kernels import PYTHON_OPS
from lightning_srigl.kernels.cpu.loader import load_extension
from lightning_srigl.kernels.graph_passes import PostGradPasses

__all__ = [
    "COMPILE_OPTIONS",
    "PACKAGE_OPTIONS",
    "CUSTOM_OPS",
    "GUARD_SETTINGS",
    "check_compile_options",
    "compile_in_place",
    "compile_lazily",
    "eager_forward",
    "export_package",
    "freeze_layouts",
    "graph_breaks",
    "holder_of",
    "load_package",
]

# Inductor options of the compiled graph (torch._inductor.config names): freezing, and our post-grad passes
# (graph_passes: a ResNet block's residual addition and ReLU fused into the condensed convolution before them, the
# tanh GELU's 1 + tanh(u) as 2 sigmoid(2u), and in-process our ops' calls pointed at the loaded C++ variant;
# PACKAGE_OPTIONS, for other CPUs, keep the Python ops).
# The Python wrapper's size, stride and alignment asserts of every input and op output are left out: one Python
# call each per call of the graph, hundreds in a decode step of the Llama-style decoder (docs/int8.md, Decoding;
# the ops' fakes are checked against their kernels by tests/kernels/test_op_schemas.py).
COMPILE_OPTIONS: dict[str, Any] = {
    "freezing": True,
    "post_grad_custom_post_pass": PostGradPasses(direct=True),
    "size_asserts": False,
    "alignment_asserts": False,
}
PACKAGE_OPTIONS: dict[str, Any] = {"freezing": True, "post_grad_custom_post_pass": PostGradPasses()}
# Dynamo settings (torch._dynamo.config names) while a compiled forward runs, so while dynamo traces it and
# builds its guards: the symbolic shape guards (the stride relations of a dynamic cache length: 48 of them in a
# decode step of the Llama-style decoder) compiled to C++ instead of Python lambdas, and the no-aliasing guard
# over the inputs in C++ too (a lambda by default, for dict-tag matching of module guards, which
# ``module_guards=False`` leaves out). The same guards, checked without calling Python (docs/int8.md, Decoding).
GUARD_SETTINGS: dict[str, Any] = {
    "enable_cpp_symbolic_shape_guards": True,
    "use_lamba_guard_for_object_aliasing": False,
}
# The custom ops a compiled or packaged model may call: every Python op, which the import of
# ``lightning_srigl.kernels`` registered (so also in a process that loads a package and builds no layer).
CUSTOM_OPS = PYTHON_OPS


def _arguments(example_input: object) -> tuple[object, ...]:
    """``example_input`` as positional arguments (a tuple is unpacked, as ``accelerate`` does)."""
    return example_input if isinstance(example_input, tuple) else (example_input,)


def graph_breaks(model: nn.Module, example_input: object) -> int:
    """How many graph breaks ``torch._dynamo`` finds in ``model``'s eager forward on ``example_input`` (0: one
    graph; a model already compiled in place is explained too)."""
    with torch.no_grad():
        explanation = torch._dynamo.explain(eager_forward(model))(*_arguments(example_input))
    return int(explanation.graph_break_count)


def compile_in_place(
    model: nn.Module,
    example_input: object,
    *,
    fullgraph: bool = True,
    module_guards: bool = True,
    options: dict[str, Any] | None = None,
) -> float:
    """Compile ``model``'s calls in place (``model.compile``) with freezing and compile them now.

    The first call on ``example_input`` (under ``no_grad``) runs the compiler, so the returned seconds
    are the compile time; later calls of ``model`` run the compiled graph (another input shape compiles
    once more, a dimension marked with ``torch._dynamo.mark_dynamic`` on ``example_input`` never). The eager
    forward stays reachable through `eager_forward`. ``module_guards``, ``options``: see `compile_lazily`.

    Raises:
        torch._dynamo.exc.Unsupported: with ``fullgraph=True``, when part of the model cannot be
            captured in one graph (``fullgraph=False`` compiles the pieces between the breaks).
    """
    compile_lazily(model, fullgraph=fullgraph, module_guards=module_guards, options=options)
    start = time.perf_counter()
    with torch.no_grad():
        model(*_arguments(example_input))
    return time.perf_counter() - start


def check_compile_options(options: object, *, compile: bool = True) -> dict[str, Any]:
    """``options`` (inductor options, ``torch._inductor.config`` names, for ``torch.compile(options=...)``) as a
    dict, ``{}`` for None; checked as ``torch.compile`` checks them (a known name, a value of its type), but before
    anything is compiled or changed, with the name meant where one is misspelt. ``compile``: whether the caller
    compiles at all (``accelerate``'s and ``AccelerateCallback``'s switch); options without it are an error.

    Raises:
        TypeError: ``options`` is not a dict of names, or a value has the wrong type.
        ValueError: a name that is no inductor option, or options given without ``compile``.
    """
    if options is None:
        return {}
    if options and not compile:
        raise ValueError("compile_options are options of the compiled graph: pass compile=True with them")
    if not isinstance(options, dict) or not all(isinstance(name, str) for name in options):
        raise TypeError(
            "compile_options must be a dict of torch._inductor.config names and values (e.g. {'cpp_wrapper': True}), "
            f"got {type(options).__name__} {options!r}"
        )
    config = torch._inductor.config
    known = config.get_config_copy()
    for name, value in options.items():
        if name == "guard_filter_fn":  # taken by torch.compile itself
            continue
        if name not in known:
            close = difflib.get_close_matches(name, list(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"compile_options: {name!r} is no torch._inductor.config option{hint}")
        expected = config.get_type(name)  # type: ignore[attr-defined]
        if isinstance(expected, type) and not isinstance(value, expected):
            raise TypeError(
                f"compile_options: {name!r} takes a {expected.__name__}, got {type(value).__name__} {value!r}"
            )
    return dict(options)


def compile_lazily(
    model: nn.Module, *, fullgraph: bool = True, module_guards: bool = True, options: dict[str, Any] | None = None
) -> None:
    """Make ``model``'s forward compile (with `COMPILE_OPTIONS`) at its next call, in place.

    The compiled forward is an instance attribute (``del model.forward`` returns to eager;
    `eager_forward` calls the eager one meanwhile). ``nn.Module.compile`` is not used: it
    compiles ``_call_impl``, which dynamo skips as library code when the forward is torch's own
    (an ``nn.Sequential``), and ``fullgraph=True`` then fails with "found no compiled frames".

    ``module_guards=False`` leaves out dynamo's guards on the modules of ``model`` (their attributes, and the
    shape, dtype and device of every weight and buffer; ``torch.compiler.skip_guard_on_all_nn_modules_unsafe``),
    which every call of the compiled graph checks otherwise: the 500 and more weights and buffers of the Llama-style
    decoder (docs/int8.md, Decoding) and their modules. The guards on the inputs and on grad mode stay. The model
    must then stay as compiled: a layer swapped, cast or moved, or ``train()``, is not noticed (no recompile);
    to change it, ``del model.forward``, ``torch.compiler.reset()`` and compile again. Dynamo keeps its graphs
    per code object, and without these guards another model of the same class would pass the guards of this
    one's graph: so the compiled forward gets a copy of the class forward's code of its own.

    ``options``: inductor options (``torch._inductor.config`` names) over `COMPILE_OPTIONS`, e.g.
    ``{"cpp_wrapper": True}``: the graph's wrapper in C++ instead of Python (less time per call, for graphs of many
    small steps such as decoding; a longer compile).
    """
    merged = COMPILE_OPTIONS | check_compile_options(options)
    freeze_layouts(model)
    forward = eager_forward(model)
    if not module_guards:
        merged["guard_filter_fn"] = torch.compiler.skip_guard_on_all_nn_modules_unsafe
        forward = _own_code(forward)
    model.forward = _with_guard_settings(torch.compile(forward, fullgraph=fullgraph, options=merged))


def _with_guard_settings(compiled: Callable[..., object]) -> Callable[..., object]:
    """``compiled`` called with `GUARD_SETTINGS` in force (dynamo reads its settings when it traces, which happens
    inside a call)."""

    @functools.wraps(compiled)
    def call(*args: object, **kwargs: object) -> object:
        with torch._dynamo.config.patch(**GUARD_SETTINGS):
            return compiled(*args, **kwargs)

    return call


def _own_code(method: Callable[..., object]) -> Callable[..., object]:
    """The bound ``method`` with a copy of its function's code object (same behaviour; dynamo's cache of
    compiled graphs hangs on the code object, so the copy's cache holds only the graphs compiled through it).
    A forward that is not a plain Python function bound to the model is returned as it is."""
    if not isinstance(method, types.MethodType) or not isinstance(method.__func__, types.FunctionType):
        return method
    function = method.__func__
    copy = types.FunctionType(
        function.__code__.replace(), function.__globals__, function.__name__, function.__defaults__,
        function.__closure__,
    )  # fmt: skip
    copy.__kwdefaults__, copy.__qualname__ = function.__kwdefaults__, function.__qualname__
    return cast(Callable[..., object], copy.__get__(method.__self__))


def freeze_layouts(model: nn.Module) -> None:
    """Let each submodule with a ``freeze_for_compile()`` method (``CondensedLinear``: its batch-1 layout) keep
    the kernel layouts a traced graph needs as buffers, which freezing turns into constants."""
    for module in model.modules():
        freeze = getattr(module, "freeze_for_compile", None)
        if callable(freeze):
            freeze()


def eager_forward(model: nn.Module) -> Callable[..., object]:
    """``model``'s class forward bound to it: the eager forward even after `compile_lazily`."""
    return cast(Callable[..., object], type(model).forward.__get__(model))


def holder_of(model: nn.Module, names: list[str]) -> nn.Module:
    """The innermost submodule of ``model`` that contains every module in ``names`` (``model`` itself when
    they share no prefix): what to compile so that the calls that reach those modules are compiled."""
    parts = [name.split(".") for name in names]
    common: list[str] = []
    for level in zip(*parts):
        if len(set(level)) > 1:
            break
        common.append(level[0])
    if parts and len(common) == min(map(len, parts)):
        common = common[:-1]  # a single layer (or one that contains the others): compile around it
    return model.get_submodule(".".join(common))


def export_package(model: nn.Module, example_input: object, path: str | Path) -> Path:
    """Export ``model`` (``torch.export``) and compile it ahead of time into the AOTInductor package ``path``
    (``.pt2``) with `PACKAGE_OPTIONS` (`compile_in_place`'s, but the convolutions call the Python op, which
    picks the C++ variant of the CPU the package runs on); returns the path.

    The package holds the graph and its (frozen) weights; `load_package` runs it. One-row calls of a
    ``CondensedLinear`` call the Python op too, not the variant's ``batch1_forward`` on a frozen batch-1 layout
    (`freeze_layouts`): the layout and that op belong to the exporting CPU's variant, so such a package would
    not load on another CPU ("Could not find schema for lightning_srigl_avx512::batch1_forward").
    """
    path = Path(path)
    if path.suffix != ".pt2":
        raise ValueError(f"path must end in .pt2 (an AOTInductor package), got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        program = torch.export.export(model, _arguments(example_input))
        written = torch._inductor.aoti_compile_and_package(
            program, package_path=str(path), inductor_configs=dict(PACKAGE_OPTIONS)
        )
    return Path(written)


def load_package(path: str | Path) -> Callable[..., Any]:
    """The callable model of an AOTInductor package written by `export_package` (this module's import
    has registered every op of the package, `CUSTOM_OPS`; the CPU kernel variant is loaded before the package)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no AOTInductor package at {str(path)!r}; write one with export_package")
    load_extension()
    return torch._inductor.aoti_load_package(str(path))
