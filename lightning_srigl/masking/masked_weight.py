"""`MaskedWeight`, the one record of a sparse weight, and `mask_of`, the way to read its mask.

Selection returns these records for the weights it chooses (before any mask exists),
[`MaskedParameters`][lightning_srigl.masking.MaskedParameters] holds them, and
[`masked_weights`][lightning_srigl.masking.registry.masked_weights] lists a model's masked weights as them.
The masks themselves are buffers that [`registry`][lightning_srigl.masking.registry] installs and records
in the module's `MASK_RECORD` attribute (``{param name: buffer name}``); this module only reads it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_srigl.masking.layer_types import neuron_major

MASK_RECORD = "_lightning_srigl_masks"


def qualified_name(module_name: str, local_name: str) -> str:
    """``"encoder.0"``, ``"weight"`` -> ``"encoder.0.weight"`` (the root module's name is ``""``)."""
    return f"{module_name}.{local_name}" if module_name else local_name


def mask_record(module: nn.Module) -> dict[str, str]:
    """``{param name: mask buffer name}`` of the masked weights of ``module`` (empty when it has none)."""
    record: dict[str, str] = module.__dict__.get(MASK_RECORD, {})
    return record


def mask_of(module: nn.Module, param_name: str = "weight") -> Tensor | None:
    """The mask of ``module.<param_name>`` (``BoolTensor(weight.shape)``), or ``None`` when it has none."""
    buffer_name = mask_record(module).get(param_name)
    return None if buffer_name is None else module._buffers.get(buffer_name)


@dataclass(frozen=True)
class MaskedWeight:
    """One sparse weight of a model: the module that owns it and the weight's local name.

    Selection makes one for every weight it chooses, before its mask is installed; `mask` is the live
    mask once it is.
    """

    module_name: str
    module: nn.Module
    param_name: str

    @property
    def fqn(self) -> str:
        """Fully-qualified parameter name, e.g. ``"encoder.0.weight"``."""
        return qualified_name(self.module_name, self.param_name)

    @property
    def weight(self) -> Tensor:
        """The weight, shape ``(out, *fan_in_dims)`` (``(in, out)`` for a Hugging Face ``Conv1D``)."""
        weight: Tensor = getattr(self.module, self.param_name)
        return weight

    @property
    def param(self) -> Tensor:
        """Deprecated since 0.2 (removed in 0.3): `weight`."""
        warnings.warn("MaskedWeight.param is deprecated: use .weight", DeprecationWarning, stacklevel=2)
        return self.weight

    @property
    def shape(self) -> torch.Size:
        """Shape of the weight, ``(out, *fan_in_dims)`` (``(in, out)`` for a Hugging Face ``Conv1D``)."""
        return self.weight.shape

    def rows(self, tensor: Tensor) -> Tensor:
        """``tensor`` (shaped like the weight) as ``(out, *fan_in_dims)``: the view sparsity math takes."""
        return neuron_major(self.module, tensor)

    @property
    def mask(self) -> Tensor:
        """The live mask buffer, ``BoolTensor(weight.shape)``."""
        mask = mask_of(self.module, self.param_name)
        if mask is None:
            raise RuntimeError(f"{self.fqn} has no mask (none was installed yet, or it was removed since)")
        return mask

    @property
    def mask_key(self) -> str:
        """The mask's key in the model's ``state_dict``, e.g. ``"encoder.0.weight_sparsity_mask"``."""
        return qualified_name(self.module_name, mask_record(self.module)[self.param_name])
