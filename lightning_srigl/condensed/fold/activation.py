"""Fuse a ReLU into the condensed convolution it follows, so the kernel's epilogue applies it.

`relu_pairs` reads the [`traced_graphs`][lightning_srigl.condensed.fold.local_trace.traced_graphs] of the
model before the swap: an ``nn.Conv2d`` whose output reaches an ``nn.ReLU`` module through ``nn.Identity``
modules only (a BatchNorm that folding replaced), each node on the way with one user and each module called
once in ``forward``, feeds nothing but that ReLU. After the swap, `fuse_relus` sets ``relu=True`` on each such
convolution that became a [`CondensedConv2d`][lightning_srigl.condensed.layers.conv.CondensedConv2d] and puts
an ``nn.Identity`` in the ReLU's place: the same outputs, one pass over the activations fewer per pair.
"""

from __future__ import annotations

from collections import Counter

from torch import fx, nn

from lightning_srigl.condensed.fold.local_trace import traced_graphs
from lightning_srigl.condensed.layers.conv import CondensedConv2d

__all__ = ["fuse_relus", "relu_pairs"]


def relu_pairs(model: nn.Module) -> dict[str, str]:
    """``{convolution name: ReLU name}`` for every ``nn.Conv2d`` of ``model`` that feeds only an ``nn.ReLU``
    (see the module docstring)."""
    graphs = traced_graphs(model)
    modules = dict(model.named_modules())
    calls = Counter(node.target for graph in graphs for node in graph.nodes if node.op == "call_module")
    pairs: dict[str, str] = {}
    for node in (node for graph in graphs for node in graph.nodes):
        if node.op == "call_module" and type(modules.get(node.target)) is nn.Conv2d and calls[node.target] == 1:
            relu = _only_relu_after(node, modules, calls)
            if relu is not None:
                pairs[str(node.target)] = relu
    return pairs


def _only_relu_after(node: fx.Node, modules: dict[str, nn.Module], calls: Counter) -> str | None:
    """The name of the ``nn.ReLU`` that alone consumes ``node``'s output through ``nn.Identity`` modules, or None."""
    current = node
    while len(current.users) == 1:
        user = next(iter(current.users))
        module = modules.get(user.target) if user.op == "call_module" else None
        if module is None or list(user.args) != [current] or user.kwargs or calls[user.target] != 1:
            return None
        if type(module) is nn.ReLU:
            return str(user.target)
        if type(module) is not nn.Identity:
            return None
        current = user
    return None


def _hooked(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


def fuse_relus(model: nn.Module, pairs: dict[str, str]) -> list[str]:
    """Fuse each pair of `relu_pairs` (taken before the swap) whose convolution is now a `CondensedConv2d`,
    in place; a module with forward hooks (which would see the other output) is left alone.

    Returns:
        The names of the fused convolutions.
    """
    fused = []
    for conv_name, relu_name in pairs.items():
        layer, relu = model.get_submodule(conv_name), model.get_submodule(relu_name)
        if type(layer) is not CondensedConv2d or type(relu) is not nn.ReLU or _hooked(layer) or _hooked(relu):
            continue
        layer.relu = True
        model.set_submodule(relu_name, nn.Identity())
        fused.append(conv_name)
    return fused
