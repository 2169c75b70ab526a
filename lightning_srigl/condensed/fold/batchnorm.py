"""Fold an eval-mode BatchNorm into the sparse convolution it follows.

In eval mode ``BN(y) = (y - mean) / sqrt(var + eps) * gamma + beta`` is per channel affine, so after a
convolution ``y = W * x + b`` it equals a convolution with ``W' = W * s`` (row ``c`` scaled by
``s_c = gamma_c / sqrt(var_c + eps)``) and ``b' = (b - mean) * s + beta``: exact up to rounding, and
``W'`` is zero exactly where ``W`` is, so the mask (and an ablated filter, now outputting ``BN(b_c)``)
carries over. The BatchNorm becomes ``nn.Identity``.

`fold_batchnorms` does this where the ``torch.fx`` graphs of the model or of its traceable parts
([`traced_graphs`][lightning_srigl.condensed.fold.local_trace.traced_graphs]) prove it: a masked ``nn.Conv1d/2d/3d``
whose output's only user is a ``BatchNorm`` module in eval mode with running statistics, both called
once in ``forward`` and holding no parameter another module holds.
"""

from __future__ import annotations

import copy
from collections import Counter

import torch
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm

from lightning_srigl.condensed.fold.chain import CONVS
from lightning_srigl.condensed.fold.local_trace import traced_graphs
from lightning_srigl.masking import mask_of, parameter_owners

__all__ = ["fold_batchnorms"]


def fold_batchnorms(model: nn.Module) -> dict[str, nn.Module]:
    """Fold every provable (masked conv, BatchNorm) pair of ``model`` in place (see the module docstring).

    Folded modules are replaced by new objects, never mutated.

    Returns:
        The replaced originals by name (the convolutions and the BatchNorms): setting them back undoes it.
    """
    graphs = traced_graphs(model)
    modules = dict(model.named_modules())
    calls = Counter(node.target for graph in graphs for node in graph.nodes if node.op == "call_module")
    owners = parameter_owners(model)
    replaced: dict[str, nn.Module] = {}
    for node in (node for graph in graphs for node in graph.nodes):
        pair = _foldable_pair(node, modules, calls, owners)
        if pair is not None:
            conv_name, bn_name = pair
            replaced[conv_name], replaced[bn_name] = modules[conv_name], modules[bn_name]
            model.set_submodule(conv_name, _folded_conv(modules[conv_name], modules[bn_name]))
            model.set_submodule(bn_name, nn.Identity())
    return replaced


def _foldable_pair(
    node: fx.Node, modules: dict[str, nn.Module], calls: Counter, owners: dict[int, list[str]]
) -> tuple[str, str] | None:
    """``(conv name, BatchNorm name)`` when ``node`` calls a masked conv that feeds only an eval BatchNorm."""
    conv = modules.get(node.target) if node.op == "call_module" else None
    if type(conv) not in CONVS or mask_of(conv, "weight") is None or len(node.users) != 1:
        return None
    user = next(iter(node.users))
    bn = modules.get(user.target) if user.op == "call_module" else None
    if not isinstance(bn, _BatchNorm) or bn.training or bn.running_mean is None or bn.num_features != conv.out_channels:
        return None
    if list(user.args) != [node] or user.kwargs or calls[node.target] != 1 or calls[user.target] != 1:
        return None
    if any(len(owners[id(p)]) > 1 for module in (conv, bn) for p in module.parameters(recurse=False)):
        return None
    return str(node.target), str(user.target)


@torch.no_grad()
def _folded_conv(conv: nn.Module, bn: _BatchNorm) -> nn.Module:
    """A copy of ``conv`` (mask included) computing ``bn(conv(x))``."""
    scale = bn.running_var.double().add(bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    if conv.bias is not None:
        shift = shift + conv.bias.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    folded = copy.deepcopy(conv)
    weight = conv.weight.double() * scale.view(-1, *[1] * (conv.weight.dim() - 1))
    folded.weight = nn.Parameter(weight.to(conv.weight.dtype), requires_grad=conv.weight.requires_grad)
    folded.bias = nn.Parameter(shift.to(conv.weight.dtype), requires_grad=conv.weight.requires_grad)
    return folded
