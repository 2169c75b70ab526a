"""Which weights of a model are sparse, with which mask: the record every other layer reads.

A mask is a persistent bool buffer ``<param>_sparsity_mask`` on the module that owns the weight (so
every ``state_dict`` and Lightning checkpoint carries it), and the module records which of its buffers
are masks in one attribute, `MASK_RECORD` (``{param name: buffer name}``). The name is our own:
``<param>_mask``, which older checkpoints use (lightning_srigl 0.1.0), is also ``torch.nn.utils.prune``'s
(and so Lightning's ``ModelPruning``'s); such checkpoints still load, their keys renamed on the way in
(`LEGACY_MASK_SUFFIX`). The record travels with
the module through ``copy.deepcopy``, pickling and ``to_empty``; code that needs the sparse layers
calls `masked_weights` or `mask_of` and never looks buffers up by name.

Loading a sparse checkpoint into a model that has no masks yet::

    handle = accept_masks_on_load(model)     # masks named in the state dict are installed, then filled
    model.load_state_dict(state_dict)
    handle.remove()

Loading it into a plain model instead (no masks; the weights are already zero outside them)::

    model.load_state_dict(without_masks(state_dict))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.prune import BasePruningMethod
from torch.utils.hooks import RemovableHandle

from lightning_srigl.masking.masked_weight import MASK_RECORD, MaskedWeight, mask_of, mask_record, qualified_name
from lightning_srigl.masking.selection import DEFAULT_LAYER_TYPES, sparsifiable_weights
from lightning_srigl.masking.sharding import shard_like

MASK_SUFFIX = "_sparsity_mask"
LEGACY_MASK_SUFFIX = "_mask"  # older checkpoints' name; also torch.nn.utils.prune's

__all__ = [
    "LEGACY_MASK_SUFFIX",
    "MASK_RECORD",
    "MASK_SUFFIX",
    "MaskedWeight",
    "accept_masks_on_load",
    "bind_masks",
    "check_not_pruned",
    "mask_buffer_name",
    "mask_of",
    "masked_weights",
    "register_mask_",
    "remove_mask_",
    "remove_masks_",
    "without_masks",
]


def mask_buffer_name(param_name: str) -> str:
    """Name of the mask buffer that belongs to the parameter ``param_name`` (``weight`` -> ``weight_sparsity_mask``)."""
    return f"{param_name}{MASK_SUFFIX}"


def without_masks(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """``state_dict`` without its mask entries (either name): what a plain model of the same
    architecture loads, e.g. ``model.load_state_dict(without_masks(checkpoint["state_dict"]))``."""
    return {k: v for k, v in state_dict.items() if not k.endswith((MASK_SUFFIX, LEGACY_MASK_SUFFIX))}


def _rename_legacy_mask(module: nn.Module, state_dict: dict[str, Any], prefix: str, param_name: str) -> str:
    """Move an older checkpoint's ``<param>_mask`` entry of ``module`` to its current key (unless it is the mask of
    ``torch.nn.utils.prune``, whose ``<param>_orig`` goes with it); returns the current key."""
    key = prefix + mask_buffer_name(param_name)
    legacy = prefix + param_name + LEGACY_MASK_SUFFIX
    if key not in state_dict and legacy in state_dict and prefix + param_name + "_orig" not in state_dict:
        state_dict[key] = state_dict.pop(legacy)
    return key


def check_not_pruned(model: nn.Module, owner: str) -> None:
    """``ValueError`` when ``torch.nn.utils.prune`` (e.g. Lightning's ``ModelPruning``) prunes a module of
    ``model``: it replaces the weight by ``<param>_orig * <param>_mask`` computed before every forward,
    so a sparsity callback would train and mask a copy, and both masks would fight silently."""
    pruned = [
        name or type(model).__name__
        for name, module in model.named_modules()
        if any(isinstance(hook, BasePruningMethod) for hook in module._forward_pre_hooks.values())
    ]
    if pruned:
        raise ValueError(
            f"{owner}: {', '.join(pruned[:4])}{' ...' if len(pruned) > 4 else ''} are pruned by torch.nn.utils.prune "
            "(Lightning's ModelPruning), which replaces the weights this callback masks and trains. Use one of "
            "them: drop ModelPruning, or make its pruning permanent (torch.nn.utils.prune.remove) before fit."
        )


def _check_loaded_masks(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """``load_state_dict`` pre-hook: take an older checkpoint's mask name; reject a mask entry that does not
    fit its parameter."""
    for param_name in mask_record(module):
        key = _rename_legacy_mask(module, state_dict, prefix, param_name)
        if key not in state_dict:
            continue
        loaded = state_dict[key]
        expected = getattr(module, param_name).shape
        if tuple(loaded.shape) != tuple(expected):
            raise ValueError(
                f"Checkpoint mask {key!r} has shape {tuple(loaded.shape)} but the model's "
                f"{prefix + param_name!r} has shape {tuple(expected)}: the checkpoint was written for a "
                "different architecture. Load it into the model it was trained with, or drop the "
                f"'*{MASK_SUFFIX}' entries to start a new sparse run from its weights."
            )
        if loaded.dtype != torch.bool:
            raise ValueError(
                f"Checkpoint mask {key!r} has dtype {loaded.dtype}; masks are bool tensors. "
                "Convert it with `.bool()` before loading."
            )


def register_mask_(module: nn.Module, param_name: str, mask: Tensor) -> Tensor:
    """Make ``mask`` the mask of ``module.<param_name>`` (a persistent buffer, recorded as a mask).

    Args:
        module: the module that owns the weight.
        param_name: the weight's local name, e.g. ``"weight"`` or ``"in_proj_weight"``.
        mask: ``BoolTensor(weight.shape)`` (any dtype is converted; it is copied to the weight's device). For
            a weight sharded by rows (a ``DTensor``), the mask becomes a ``DTensor`` of the same layout, this
            process holding the rows of its part of the weight.

    Returns:
        The installed buffer. An existing mask of the weight is replaced.
    """
    weight = getattr(module, param_name)
    if tuple(mask.shape) != tuple(weight.shape):
        raise ValueError(
            f"mask for {param_name!r} of {type(module).__name__} has shape {tuple(mask.shape)}, "
            f"expected {tuple(weight.shape)}"
        )
    if MASK_RECORD not in module.__dict__:
        module.__dict__[MASK_RECORD] = {}
        module.register_load_state_dict_pre_hook(_check_loaded_masks)  # type: ignore[no-untyped-call]
    name = mask_buffer_name(param_name)
    mask = shard_like(mask.to(device=weight.device, dtype=torch.bool).clone(), weight)  # a sharded weight's rows
    module.register_buffer(name, mask, persistent=True)
    module.__dict__[MASK_RECORD][param_name] = name
    installed: Tensor = module._buffers[name]  # type: ignore[assignment]  # just registered, not None
    return installed


def remove_mask_(module: nn.Module, param_name: str = "weight") -> None:
    """Remove the mask of ``module.<param_name>`` (no-op when it has none); the weight is untouched."""
    record = mask_record(module)
    name = record.pop(param_name, None)
    if name is not None:
        del module._buffers[name]


def remove_masks_(model: nn.Module) -> None:
    """Remove every mask of ``model``, leaving a plain model with the same (zero-filled) weights."""
    for masked in masked_weights(model):
        remove_mask_(masked.module, masked.param_name)


def masked_weights(model: nn.Module) -> list[MaskedWeight]:
    """Every masked weight of ``model``, in module registration order (a tied weight appears once)."""
    found, seen = [], set()
    for module_name, module in model.named_modules():
        for param_name in mask_record(module):
            weight = getattr(module, param_name)
            if id(weight) not in seen:
                seen.add(id(weight))
                found.append(MaskedWeight(module_name, module, param_name))
    return found


def bind_masks(model: nn.Module, masks: Mapping[str, Tensor]) -> list[MaskedWeight]:
    """Install ``masks`` (``{fully-qualified weight name: BoolTensor(weight.shape)}``) on ``model``.

    For a model made sparse elsewhere (e.g. loaded from another library's checkpoint), before
    [`accelerate`][lightning_srigl.acceleration.accelerate.accelerate] or folding. The weights are not
    changed.

    Returns:
        The masked weights, in the order of ``masks``.
    """
    bound = []
    for fqn, mask in masks.items():
        module_name, _, param_name = fqn.rpartition(".")
        try:
            module = model.get_submodule(module_name)
        except AttributeError:
            raise KeyError(f"{fqn!r} names no module of the model") from None
        if not isinstance(getattr(module, param_name, None), Tensor):
            raise KeyError(f"{fqn!r}: {type(module).__name__} has no tensor {param_name!r}")
        register_mask_(module, param_name, mask)
        bound.append(MaskedWeight(module_name, module, param_name))
    return bound


def _install_from_state_dict(
    model: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any, layer_types: Sequence[type | str]
) -> None:
    for sparse in sparsifiable_weights(model, layer_types):
        module_prefix = prefix + qualified_name(sparse.module_name, "")
        key = _rename_legacy_mask(sparse.module, state_dict, module_prefix, sparse.param_name)
        if key in state_dict and mask_of(sparse.module, sparse.param_name) is None:
            register_mask_(sparse.module, sparse.param_name, torch.zeros(sparse.shape, dtype=torch.bool))


def accept_masks_on_load(model: nn.Module, layer_types: Sequence[type | str] = DEFAULT_LAYER_TYPES) -> RemovableHandle:
    """Let ``model.load_state_dict`` install the masks that a state dict carries for its weights.

    Nothing is installed until a state dict with ``<weight>_sparsity_mask`` entries (or an older
    checkpoint's ``<weight>_mask``) is loaded; then each such
    weight (of a module of ``layer_types``) gets a mask, which the load fills. Weights that already
    have a mask keep it (the load overwrites its values).

    Returns:
        The hook's handle; ``handle.remove()`` stops accepting masks.
    """
    hook = partial(_install_from_state_dict, layer_types=tuple(layer_types))
    handle: RemovableHandle = model.register_load_state_dict_pre_hook(hook)  # type: ignore[no-untyped-call]
    return handle
