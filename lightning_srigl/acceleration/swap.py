"""Putting layers into a model and taking them out again: the swap keeps what the model set on the module
it replaces (forward hooks and pre-hooks, train/eval mode), and `restore_dense` is its inverse."""

from __future__ import annotations

import torch
from torch import nn

from lightning_srigl.acceleration.attention import restore_attention
from lightning_srigl.condensed.kinds.candidates import MASKED_PARAMS
from lightning_srigl.condensed.kinds.registry import (
    ACCELERATED_MARK,
    accelerated_layers,
)
from lightning_srigl.condensed.layers.contract import InferenceLayer
from lightning_srigl.condensed.layers.packed_linear import PackedLinear
from lightning_srigl.masking import register_mask_

__all__ = ["replace_module", "restore_dense"]


# A module's forward hooks and pre-hooks, as torch keeps them (a handle removes its hook from these dicts).
_FORWARD_HOOKS = (
    "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs",
    "_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
)  # fmt: skip


def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` at ``name`` in ``model`` with the replaced module's forward hooks, forward pre-hooks
    and ``training`` flag; returns ``new``.

    ``new`` takes over the old module's hook dicts themselves (in place of its own, which for a deep copy
    of the old module hold copies of the same hooks), so the handles returned when the hooks were
    registered still remove them.
    """
    old = model.get_submodule(name)
    new.train(old.training)
    for hooks in _FORWARD_HOOKS:
        new.__dict__[hooks] = old.__dict__[hooks]
    model.set_submodule(name, new)
    return new


def _dense_copy_masks(module: nn.Module) -> dict[str, torch.Tensor]:
    """The masks of a layer acceleration kept dense (a masked copy, which carries no mask): the non-zeros
    of the weights that had masks, so a kept weight that is exactly zero reads as inactive there."""
    return {name: module.get_parameter(name).detach() != 0 for name in module.__dict__.pop(MASKED_PARAMS, ())}


def restore_dense(model: nn.Module) -> nn.Module:
    """Replace every inference layer of ``model`` (installed by ``accelerate`` or loaded) by the masked
    dense module it stands for, in place, and return ``model``: the inverse of the swap.

    Each layer becomes its ``to_dense()`` module with its masks registered (``dense_masks()``), trainable,
    with the layer's hooks and train/eval mode, so training can resume from the result. A layer that
    acceleration kept dense gets back the masks of its masked weights as their non-zeros. After ``accelerate(model,
    x, fold=False)`` the result equals the masked dense model exactly (parameters, masks, outputs);
    folding changed the model itself (BatchNorms and ablated neurons moved into other layers), so after
    folding the result equals the folded model. Dense ``nn.Linear`` layers ``accelerate`` packed for
    oneDNN (``PackedLinear``) become plain ``nn.Linear`` again, holding the same parameters, and attention that
    ``accelerate`` put on the ``lightning_srigl::attention`` op is torch's again (`restore_attention`).
    """
    restored: list[str] = []
    for name in accelerated_layers(model):
        if not name:
            raise ValueError("the model is itself an inference layer: call its to_dense() and dense_masks()")
        if any(name.startswith(f"{done}.") for done in restored):
            continue  # inside a layer already restored (the projections of an attention)
        layer = model.get_submodule(name)
        if isinstance(layer, InferenceLayer):
            dense, masks = layer.to_dense(), layer.dense_masks()
        else:
            dense, masks = layer, _dense_copy_masks(layer)
            dense.__dict__.pop(ACCELERATED_MARK, None)
        dense.requires_grad_(True)
        for path, mask in masks.items():
            owner, _, param = path.rpartition(".")
            register_mask_(dense.get_submodule(owner), param, mask)
        replace_module(model, name, dense)
        restored.append(name)
    for name, module in list(model.named_modules()):
        if type(module) is PackedLinear:  # a dense layer moved to oneDNN's GEMM (pack_dense): torch's again
            replace_module(model, name, module.to_linear())
    restore_attention(model)
    return model
