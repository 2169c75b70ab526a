"""A residual addition (and the ReLU after it) fused into the condensed convolution before it, in the compiled graph.

A ResNet block ends with ``relu(conv(x) + shortcut)``: compiled as is, inductor runs the convolution, then a
pointwise kernel that reads its output and the shortcut and writes the sum, one more pass over the block's
output. `fuse_residuals`, one of the inductor post-grad passes (`graph_passes.PostGradPasses`), rewrites

    y = condensed_conv2d(..., relu=False)      # y read only by the addition
    z = aten.add.Tensor(y, r)                   # or (r, y); r of y's shape and dtype
    z = aten.relu(z)                            # optional; the addition read only by it

into ``condensed_conv2d(..., relu=<ReLU found>, residual=r)``, whose epilogue adds ``r`` (then applies the
ReLU) as it writes the output. Exact: the sum is the same fp32 addition of the same two values, once per
element. The model itself is unchanged; only its compiled graph (and an AOTInductor package) differs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx
from torch.fx.operator_schemas import normalize_function

from lightning_srigl.kernels.direct_calls import record_input_layouts

__all__ = ["fuse_residuals"]


def _conv_op() -> Any:
    return torch.ops.lightning_srigl.condensed_conv2d.default  # registered by the import of lightning_srigl.kernels


def _only_user(node: fx.Node) -> fx.Node | None:
    """The one node that reads ``node``, or None when several or none do."""
    return next(iter(node.users)) if len(node.users) == 1 else None


def _same_tensor_type(a: object, b: object) -> bool:
    """Both fake tensors of one shape and dtype (so the addition does not broadcast or promote)."""
    return (
        isinstance(a, torch.Tensor)
        and isinstance(b, torch.Tensor)
        and a.dtype == b.dtype
        and tuple(a.shape) == tuple(b.shape)
    )


def fuse_residuals(graph: fx.Graph) -> int:
    """Rewrite every ``condensed_conv2d -> add [-> relu]`` chain of ``graph`` (post-grad aten ops) in place, as
    the module docstring describes; returns how many were fused."""
    op, fused = _conv_op(), 0
    for conv in list(graph.nodes):
        if conv.op != "call_function" or conv.target is not op:
            continue
        add = _only_user(conv)
        if add is None or add.target is not torch.ops.aten.add.Tensor or len(add.args) != 2 or add.kwargs:
            continue
        residual = add.args[1] if add.args[0] is conv else add.args[0]
        if not isinstance(residual, fx.Node) or residual is conv:
            continue
        if not _same_tensor_type(conv.meta.get("val"), residual.meta.get("val")):
            continue
        bound = normalize_function(op, tuple(conv.args), dict(conv.kwargs), normalize_to_only_use_kwargs=True)
        if bound is None:
            continue
        kwargs = dict(bound.kwargs)
        if kwargs.get("relu") or kwargs.get("residual") is not None:
            continue
        relu = _only_user(add)
        last = relu if relu is not None and relu.target is torch.ops.aten.relu.default else add
        kwargs.update(relu=last is not add, residual=residual)
        with graph.inserting_before(add):
            node = graph.call_function(op, kwargs=kwargs)
        node.meta = dict(last.meta)
        record_input_layouts(node)
        last.replace_all_uses_with(node)
        for dead in (last, add, conv) if last is not add else (add, conv):
            graph.erase_node(dead)
        fused += 1
    return fused
