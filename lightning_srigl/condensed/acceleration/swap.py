"""Putting layers into a model and taking them out again: the swap keeps what the model set on the module
it replaces (forward hooks and pre-hooks, train/eval mode), and :func:`restore_dense` is its inverse."""

from __future__ import annotations

import torch
from torch import nn

from lightning_srigl.condensed.kinds.candidates import MASKED_PARAMS
from lightning_srigl.condensed.kinds.registry import (
    ACCELERATED_MARK,
    accelerated_layers,
)
from lightning_srigl.condensed.layers.contract import InferenceLayer
from lightning_srigl.masking import register_mask_

__all__ = ["replace_module", "restore_dense"]


def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` at ``name`` in ``model`` with the replaced module's forward hooks, forward pre-hooks
    and ``training`` flag (as ``torch.ao``'s ``swap_module`` keeps hooks); returns ``new``.

    The hooks are registered anew on ``new`` (but for those it has already, a deep copy of the old module
    say): handles returned for the old module do not remove them.
    """
    old = model.get_submodule(name)
    new.train(old.training)
    pre_hooks, hooks = list(new._forward_pre_hooks.values()), list(new._forward_hooks.values())
    for hook_id, hook in old._forward_pre_hooks.items():
        if hook not in pre_hooks:
            new.register_forward_pre_hook(hook, with_kwargs=hook_id in old._forward_pre_hooks_with_kwargs)
    for hook_id, hook in old._forward_hooks.items():
        if hook in hooks:
            continue
        new.register_forward_hook(
            hook,
            with_kwargs=hook_id in old._forward_hooks_with_kwargs,
            always_call=hook_id in old._forward_hooks_always_called,
        )
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
    folding the result equals the folded model.
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
    return model
