"""The accelerated model as one optimised graph: ``torch.compile`` with freezing, or an AOTInductor package.

After `accelerate` has swapped the sparse layers, the rest of
the model (its dense layers, normalisations, activations, attention) still runs op by op in eager
PyTorch. `compile_in_place` hands the whole model to PyTorch's own compiler instead:

* ``torch.compile(fullgraph=True)`` with inductor's ``freezing`` option: parameters and buffers
  become constants, so inductor prepacks the remaining dense convolution weights for oneDNN (fp32 linear ones for MKL)
  and fuses BatchNorm, bias, activations and pointwise work around them; a residual addition (and its ReLU)
  after a condensed convolution goes into that convolution's epilogue (`residual_fusion`);
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
``lightning_srigl.kernels`` (which `load_package` does) before the package is loaded, else
AOTInductor reports ``Could not find schema for lightning_srigl::condensed_conv2d``.

Freezing takes the weights as they are when the graph is compiled: changing them afterwards needs a new
compile (``torch.compiler.reset()`` and a new call). It applies to calls without gradient tracking
(``torch.no_grad()`` / ``torch.inference_mode()``), the inference calls it is meant for.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from lightning_srigl.kernels.attention import attention
from lightning_srigl.kernels.conv import condensed_conv2d
from lightning_srigl.kernels.cpu.loader import load_extension
from lightning_srigl.kernels.dense import packed_linear
from lightning_srigl.kernels.linear import condensed_linear
from lightning_srigl.kernels.linear_rows import condensed_linear_rows
from lightning_srigl.kernels.residual_fusion import ResidualFusion

__all__ = [
    "COMPILE_OPTIONS",
    "PACKAGE_OPTIONS",
    "CUSTOM_OPS",
    "compile_in_place",
    "compile_lazily",
    "eager_forward",
    "export_package",
    "freeze_layouts",
    "graph_breaks",
    "holder_of",
    "load_package",
]

# Inductor options of the compiled graph (torch._inductor.config names): freezing, and a ResNet block's residual
# addition and ReLU fused into the condensed convolution before them (residual_fusion); in-process, the
# convolutions call the loaded C++ variant directly (PACKAGE_OPTIONS, for other CPUs, keep the Python op).
COMPILE_OPTIONS: dict[str, Any] = {"freezing": True, "post_grad_custom_post_pass": ResidualFusion(direct=True)}
PACKAGE_OPTIONS: dict[str, Any] = {"freezing": True, "post_grad_custom_post_pass": ResidualFusion()}
# The custom ops a compiled or packaged model calls (importing them registered them).
CUSTOM_OPS = (condensed_linear, condensed_linear_rows, condensed_conv2d, packed_linear, attention)


def _arguments(example_input: object) -> tuple[object, ...]:
    """``example_input`` as positional arguments (a tuple is unpacked, as ``accelerate`` does)."""
    return example_input if isinstance(example_input, tuple) else (example_input,)


def graph_breaks(model: nn.Module, example_input: object) -> int:
    """How many graph breaks ``torch._dynamo`` finds in ``model``'s eager forward on ``example_input`` (0: one
    graph; a model already compiled in place is explained too)."""
    with torch.no_grad():
        explanation = torch._dynamo.explain(eager_forward(model))(*_arguments(example_input))
    return int(explanation.graph_break_count)


def compile_in_place(model: nn.Module, example_input: object, *, fullgraph: bool = True) -> float:
    """Compile ``model``'s calls in place (``model.compile``) with freezing and compile them now.

    The first call on ``example_input`` (under ``no_grad``) runs the compiler, so the returned seconds
    are the compile time; later calls of ``model`` run the compiled graph (another input shape compiles
    once more). The eager forward stays reachable through `eager_forward`.

    Raises:
        torch._dynamo.exc.Unsupported: with ``fullgraph=True``, when part of the model cannot be
            captured in one graph (``fullgraph=False`` compiles the pieces between the breaks).
    """
    compile_lazily(model, fullgraph=fullgraph)
    start = time.perf_counter()
    with torch.no_grad():
        model(*_arguments(example_input))
    return time.perf_counter() - start


def compile_lazily(model: nn.Module, *, fullgraph: bool = True) -> None:
    """Make ``model``'s forward compile (with `COMPILE_OPTIONS`) at its next call, in place.

    The compiled forward is an instance attribute (``del model.forward`` returns to eager;
    `eager_forward` calls the eager one meanwhile). ``nn.Module.compile`` is not used: it
    compiles ``_call_impl``, which dynamo skips as library code when the forward is torch's own
    (an ``nn.Sequential``), and ``fullgraph=True`` then fails with "found no compiled frames".
    """
    freeze_layouts(model)
    model.forward = torch.compile(eager_forward(model), fullgraph=fullgraph, options=dict(COMPILE_OPTIONS))


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
    has registered the condensed ops it calls; the CPU kernel variant is loaded before the package)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no AOTInductor package at {str(path)!r}; write one with export_package")
    load_extension()
    return torch._inductor.aoti_load_package(str(path))
