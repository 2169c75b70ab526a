"""Which dataflow paths carry an ablated neuron's constant output exactly into the next layer.

The analysis half of folding (``lightning_srigl.condensed.fold.neurons`` does the rewriting): given the
``torch.fx`` node of a producer layer with all-zero weight rows, ``find_chain`` follows its single-user
path through the allow-listed pass-through ops to a consumer layer and returns the ``Chain``, or the
reason the path is not provably exact; ``fold_blocker`` adds the module-level reasons (grouped
producer, modules called twice, tied parameters); ``constant_output`` computes what each ablated
channel becomes at the consumer's input. The rules themselves are listed in the docstring of
``lightning_srigl.condensed.fold.neurons``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["CONVS", "LINEAR", "Chain", "constant_output", "find_chain", "fold_blocker"]

LINEAR = (nn.Linear,)
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.Hardswish, nn.Identity,
)  # fmt: skip
_DROPOUT_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
_ELEMENTWISE_FUNCTIONS = {
    F.relu, torch.relu, F.relu6, F.gelu, F.silu, torch.tanh, F.tanh, torch.sigmoid, F.sigmoid,
    F.leaky_relu, F.elu, F.hardswish,
}  # fmt: skip
_ELEMENTWISE_METHODS = {"relu", "sigmoid", "tanh"}
_DROPOUT_FUNCTIONS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout}
_POOL_MODULES = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
_POOL_FUNCTIONS = {F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d}


@dataclass(frozen=True)
class Chain:
    """A provably exact path from a producer's node to the consumer layer that absorbs its constants."""

    ops: tuple[fx.Node, ...]  # nodes between producer and consumer, in order
    consumer: fx.Node


def find_chain(node: fx.Node, producer: nn.Module, modules: dict[str, nn.Module]) -> Chain | str:
    """Follow the single-user path from the producer to a consumer layer, or say why it stops.

    Stages: ``features`` (Linear output), ``spatial`` (conv output), ``pooled`` (after a global
    average pool), ``flat`` (after flattening a pooled map).
    """
    stage = "spatial" if type(producer) in CONVS else "features"
    ops: list[fx.Node] = []
    current = node
    while True:
        if len(current.users) != 1:
            return f"{current.name} has {len(current.users)} users (residual or reuse); only single-use chains fold"
        user = next(iter(current.users))
        if _tensor_inputs(user) != [current]:
            return f"{user.name} combines the constant with other tensors"
        module = modules.get(user.target) if user.op == "call_module" else None
        if type(module) in LINEAR + CONVS:
            reason = _consumer_problem(module, producer, stage)
            return Chain(tuple(ops), user) if reason is None else f"{user.name}: {reason}"
        step = _step_kind(user, module)
        if step == "training-dropout":
            return f"{user.name}: dropout in training mode is random, not constant (call model.eval())"
        if step == "batchnorm" and stage == "spatial":
            if module.training or module.running_mean is None:
                return f"{user.name}: BatchNorm must be in eval mode with running statistics (call model.eval())"
        elif step == "pool" and stage == "spatial":
            stage = "pooled"
        elif step == "flatten" and stage == "pooled":
            stage = "flat"
        elif step != "elementwise":
            return f"{user.name} ({_describe(user, module)}) is not an exact pass-through for a constant here"
        ops.append(user)
        current = user


def fold_blocker(
    node: fx.Node, producer: nn.Module, chain: Chain, modules: dict[str, nn.Module], calls: Counter, shared: set[str]
) -> str | None:
    """Module-level reasons not to fold: grouped producer, modules reused in forward, tied parameters.

    ``calls`` counts the ``call_module`` nodes per module name; ``shared`` names the modules that hold a
    parameter another module holds too.
    """
    if type(producer) in CONVS and producer.groups != 1:
        return "grouped convolution producer"
    stateful = [node] + [op for op in chain.ops if isinstance(modules.get(op.target), _BatchNorm)] + [chain.consumer]
    for n in stateful:
        if calls[n.target] != 1:
            return f"module {n.target} is called {calls[n.target]} times in forward"
        if n.target in shared:
            return f"module {n.target} shares parameters with another module"
    return None


def constant_output(producer: nn.Module, ops: tuple[fx.Node, ...], modules: dict[str, nn.Module]) -> Tensor:
    """``(C,)``: what each ablated channel becomes at the consumer's input (bias through the chain)."""
    channels = producer.weight.shape[0]
    bias = producer.bias if producer.bias is not None else producer.weight.new_zeros(channels)
    value = bias.detach().view(1, channels, *[1] * (producer.weight.dim() - 2))  # (1, C[, 1, ...])
    for op in ops:
        value = _run(op, value, modules)
    return value.reshape(channels)


def _step_kind(node: fx.Node, module: nn.Module | None) -> str | None:
    """Classify an op on the chain: elementwise, training-dropout, batchnorm, pool, flatten, or None."""
    if node.op == "call_module":
        if isinstance(module, _DROPOUT_MODULES):
            return "training-dropout" if module.training else "elementwise"
        if isinstance(module, _ELEMENTWISE_MODULES):
            return "elementwise"
        if isinstance(module, _BatchNorm):
            return "batchnorm"
        if isinstance(module, _POOL_MODULES) and _all_ones(module.output_size):
            return "pool"
        if isinstance(module, nn.Flatten) and module.start_dim == 1 and module.end_dim == -1:
            return "flatten"
    elif node.op == "call_function":
        if node.target in _ELEMENTWISE_FUNCTIONS:
            return "elementwise"
        if node.target in _DROPOUT_FUNCTIONS:
            return "elementwise" if _arg(node, 2, "training", True) is False else "training-dropout"
        if node.target in _POOL_FUNCTIONS and _all_ones(_arg(node, 1, "output_size", None)):
            return "pool"
        if node.target is torch.flatten and _is_flatten_from_1(node):
            return "flatten"
    elif node.op == "call_method":
        if node.target in _ELEMENTWISE_METHODS:
            return "elementwise"
        if node.target == "flatten" and _is_flatten_from_1(node):
            return "flatten"
    return None


def _consumer_problem(consumer: nn.Module, producer: nn.Module, stage: str) -> str | None:
    """Why ``consumer`` cannot absorb the constant channels, or None if it can."""
    width = producer.weight.shape[0]
    if type(consumer) in LINEAR:
        if stage not in ("features", "flat"):
            return "a Linear on a spatial map mixes the last spatial axis, not the channels"
        return None if consumer.in_features == width else f"in_features {consumer.in_features} != {width}"
    if type(consumer) is not type(producer):
        return f"consumer {type(consumer).__name__} does not match producer {type(producer).__name__}"
    if not _all_ones(consumer.kernel_size):
        return (
            f"kernel {tuple(consumer.kernel_size)} is not pointwise: a constant channel is not spatially constant "
            "at the zero-padded borders after it, so it cannot become a bias"
        )
    if consumer.padding == "same" or (consumer.padding != "valid" and any(consumer.padding)):
        return "padding > 0: border outputs see zeros instead of the constant channel"
    if consumer.groups != 1:
        return "grouped convolution"
    return None if consumer.in_channels == width else f"in_channels {consumer.in_channels} != {width}"


def _run(node: fx.Node, value: Tensor, modules: dict[str, nn.Module]) -> Tensor:
    """Apply one chain op to ``value`` (its single tensor input), with the op's other arguments."""
    args = (value, *node.args[1:])
    if node.op == "call_module":
        return modules[node.target](*args, **node.kwargs)
    if node.op == "call_method":
        return getattr(value, node.target)(*args[1:], **node.kwargs)
    return node.target(*args, **node.kwargs)


def _tensor_inputs(node: fx.Node) -> list[fx.Node]:
    inputs: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), inputs.append)
    return inputs


def _arg(node: fx.Node, position: int, name: str, default: object) -> object:
    if len(node.args) > position:
        return node.args[position]
    return node.kwargs.get(name, default)


def _is_flatten_from_1(node: fx.Node) -> bool:
    return _arg(node, 1, "start_dim", 0) == 1 and _arg(node, 2, "end_dim", -1) == -1


def _all_ones(size: object) -> bool:
    return all(s == 1 for s in size) if isinstance(size, (tuple, list)) else size == 1


def _describe(node: fx.Node, module: nn.Module | None) -> str:
    if module is not None:
        return type(module).__name__
    return node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
