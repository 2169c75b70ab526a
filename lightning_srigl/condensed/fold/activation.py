"""ReLUs into condensed convolutions: `relu_pairs` before the swap (``nn.Conv2d`` -> folded BatchNorms' ``nn.Identity``
-> ``nn.ReLU``, one user each, modules called once), then `fuse_relus` (``relu=True``, the ReLU -> ``nn.Identity``)."""

from collections import Counter

from torch import fx, nn

from lightning_srigl.condensed.fold.local_trace import traced_graphs
from lightning_srigl.condensed.layers.conv import CondensedConv2d


def relu_pairs(model: nn.Module) -> dict[str, str]:
    """``{convolution name: ReLU name}`` for each ``nn.Conv2d`` of ``model`` whose output only an ``nn.ReLU`` reads."""
    graphs, modules = traced_graphs(model), dict(model.named_modules())
    calls = Counter(node.target for graph in graphs for node in graph.nodes if node.op == "call_module")
    pairs, kinds = {}, (nn.ReLU, nn.Identity)
    for node in (node for graph in graphs for node in graph.nodes):
        current = node if node.op == "call_module" and type(modules.get(node.target)) is nn.Conv2d else None
        while current is not None and calls[current.target] == 1 and len(current.users) == 1:
            user: fx.Node = next(iter(current.users))
            module = modules.get(user.target) if user.op == "call_module" else None
            if type(module) not in kinds or list(user.args) != [current] or user.kwargs:
                break
            if type(module) is nn.ReLU and calls[user.target] == 1:
                pairs[str(node.target)] = str(user.target)
            current = user if type(module) is nn.Identity else None
    return pairs


def fuse_relus(model: nn.Module, pairs: dict[str, str]) -> list[str]:
    """Fuse the `relu_pairs` whose convolution is now a `CondensedConv2d` and neither has hooks; their names."""
    fused = []
    for conv_name, relu_name in pairs.items():
        layer, relu = model.get_submodule(conv_name), model.get_submodule(relu_name)
        hooked = any(m._forward_hooks or m._forward_pre_hooks for m in (layer, relu))
        if type(layer) is CondensedConv2d and type(relu) is nn.ReLU and not hooked:
            layer.relu = True
            model.set_submodule(relu_name, nn.Identity())
            fused.append(conv_name)
    return fused
