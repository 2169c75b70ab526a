"""Compiled graphs call the loaded C++ variant's ops directly, without the Python custom op in between.

The custom ops ``lightning_srigl::condensed_conv2d``, ``condensed_linear``, ``condensed_linear_rows``,
``int8_condensed_linear`` and ``attention`` are Python functions that check their inputs and pick a kernel, then
call the loaded variant's C++ op (``torch.ops.lightning_srigl_<variant>.*``). In a compiled graph that Python layer
costs more than a small call's own work: 10-25 us per call (a ResNet-50 forward makes 52 convolution calls, a
decoded token of a 12-layer transformer 84 linear and 12 attention calls). `call_kernel_directly` is part of the
inductor post-grad passes (`graph_passes.PostGradPasses` with ``direct``): it points each call whose traced inputs
are what the C++ op takes without the Python layer's choices at the C++ op itself, with the same arguments:

* ``condensed_conv2d``: ``x`` (and ``residual``) contiguous fp32 CPU tensors (``block=0``: the kernel's own
  choice, as the Python op passes it);
* ``condensed_linear``, ``condensed_linear_rows``: ``x2d`` and ``values`` contiguous fp32 CPU tensors (the
  Python ops' ``.contiguous()`` and dtype choice are then no-ops);
* ``int8_condensed_linear``: ``x2d`` a contiguous fp32 CPU tensor (the int8 buffers are the layer's, which the
  C++ op checks);
* ``attention``: where `kernels.attention.kernel_applies` holds for the traced shapes (provably, without a
  guard: a symbolic key length, as in decoding with a dynamic cache, only with fewer queries than
  ``FEW_QUERIES``, which the kernel takes at any length).

Only for ``torch.compile`` in this process: an AOTInductor package must run on other CPUs, so its graph keeps the
Python ops (`compiled.PACKAGE_OPTIONS`). The C++ ops check ``indices``, ``rows`` and ``bias`` themselves
(contiguous, their dtypes): frozen buffers pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import fx
from torch.fx.operator_schemas import normalize_function

__all__ = ["call_kernel_directly", "record_input_layouts"]


def record_input_layouts(node: fx.Node) -> None:
    """Give ``node`` the fake inputs inductor constrains a custom op's input strides to (``eager_input_vals``): the
    strides its inputs had when traced (the kernels assume contiguous inputs where the pass checked them)."""

    def fake(value: object) -> object:
        return value.meta["val"] if isinstance(value, fx.Node) else value

    node.meta["eager_input_vals"] = (
        tuple(fake(arg) for arg in node.args),
        {name: fake(value) for name, value in node.kwargs.items()},
    )


def _value(node: object) -> object:
    """The traced value of a graph node (a fake tensor), else ``node`` itself (a constant argument)."""
    return node.meta.get("val") if isinstance(node, fx.Node) else node


def _contiguous_cpu_fp32(node: object) -> bool:
    """Whether ``node`` is a graph node whose traced value is a contiguous fp32 CPU tensor."""
    value = _value(node)
    return (
        isinstance(value, torch.Tensor)
        and value.device.type == "cpu"
        and value.dtype == torch.float32
        and value.is_contiguous()
    )


def _conv_direct(kwargs: dict[str, Any]) -> dict[str, Any] | None:
    if not all(_contiguous_cpu_fp32(kwargs.get(name)) for name in ("x", "values")):
        return None
    if kwargs.get("residual") is not None and not _contiguous_cpu_fp32(kwargs["residual"]):
        return None
    return kwargs | {"block": 0}


def _linear_direct(kwargs: dict[str, Any]) -> dict[str, Any] | None:
    return kwargs if all(_contiguous_cpu_fp32(kwargs.get(name)) for name in ("x2d", "values")) else None


def _int8_direct(kwargs: dict[str, Any]) -> dict[str, Any] | None:
    return kwargs if _contiguous_cpu_fp32(kwargs.get("x2d")) else None  # the C++ op's mode: its default, 0 (auto)


def _attention_direct(kwargs: dict[str, Any]) -> dict[str, Any] | None:
    from lightning_srigl.kernels.attention import kernel_applies

    query, key, value, mask = (_value(kwargs.get(name)) for name in ("query", "key", "value", "attn_mask"))
    if not (isinstance(query, torch.Tensor) and isinstance(key, torch.Tensor) and isinstance(value, torch.Tensor)):
        return None
    if not isinstance(mask, torch.Tensor | None):
        return None
    return kwargs if kernel_applies(query, key, value, mask, bool(kwargs.get("is_causal", False))) else None


def _direct_ops() -> dict[Any, tuple[str, Callable[[dict[str, Any]], dict[str, Any] | None]]]:
    """Python op -> (the C++ op's name, ``kwargs -> the C++ op's kwargs, or None where it does not apply``)."""
    ops = torch.ops.lightning_srigl  # every one registered by the import of lightning_srigl.kernels
    return {
        ops.condensed_conv2d.default: ("condensed_conv2d", _conv_direct),
        ops.condensed_linear.default: ("condensed_linear", _linear_direct),
        ops.condensed_linear_rows.default: ("condensed_linear_rows", _linear_direct),
        ops.attention.default: ("attention", _attention_direct),
        ops.int8_condensed_linear.default: ("int8_condensed_linear", _int8_direct),
    }


def call_kernel_directly(graph: fx.Graph) -> int:
    """Point the calls of ``graph`` that the module docstring lists at the loaded C++ variant's ops (same
    arguments); returns how many (0 without a loaded variant)."""
    from lightning_srigl.kernels.cpu.loader import load_extension

    kernel, ops, count = load_extension(), _direct_ops(), 0
    if kernel is None:
        return 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in ops:
            continue
        name, direct = ops[node.target]
        bound = normalize_function(node.target, tuple(node.args), dict(node.kwargs), normalize_to_only_use_kwargs=True)
        kwargs = direct(dict(bound.kwargs)) if bound is not None else None
        if kwargs is None:
            continue
        node.target, node.args, node.kwargs = getattr(kernel, name), (), kwargs
        record_input_layouts(node)
        count += 1
    return count
