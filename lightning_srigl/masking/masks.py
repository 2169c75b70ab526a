"""Masks of a chosen set of sparse weights: install, read, update, and re-apply them.

[`MaskedParameters`][lightning_srigl.masking.masks.MaskedParameters] is what the training callbacks hold: the selected
weights and, through
``lightning_srigl.masking.registry``, their mask buffers. Weights are stored dense with zeros at
inactive positions ("mask simulation"); forward and backward are the ordinary dense ops.

A weight sharded by rows (FSDP2, [`lightning_srigl.masking.sharding`][lightning_srigl.masking.sharding]) has a mask
sharded alike; the
per-step work (`MaskedParameters.apply_to_weights_`, `MaskedParameters.apply_to_gradients_`)
and `MaskedParameters.set_mask_` act on this process's part only, without communication.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import torch
from torch import Tensor

from lightning_srigl.derived_cache import DerivedCache
from lightning_srigl.masking.masked_weight import MaskedWeight
from lightning_srigl.masking.registry import mask_of, register_mask_
from lightning_srigl.masking.sharding import local_part, row_sharding
from lightning_srigl.masking.zeroing import step_mask, zero_inactive_


class MaskedParameters:
    """The masks of a set of sparse parameters, stored as buffers on their modules.

    Args:
        params: the sparse parameters, e.g. from ``select_parameters``.
    """

    def __init__(self, params: Sequence[MaskedWeight]) -> None:
        fqns = [p.fqn for p in params]
        if len(set(fqns)) != len(fqns):
            raise ValueError(f"Each sparse parameter must appear once; got {fqns}")
        self.params: list[MaskedWeight] = list(params)
        self._by_fqn: dict[str, MaskedWeight] = {p.fqn: p for p in params}
        self._step_masks: DerivedCache[Tensor] = DerivedCache()

    @property
    def fqns(self) -> list[str]:
        """Fully-qualified names of the sparse parameters, in order."""
        return list(self._by_fqn)

    def install_(self, masks: Mapping[str, Tensor]) -> None:
        """Register (or overwrite) the bool buffer of every parameter with ``masks[fqn]``.

        Args:
            masks: ``{fqn: BoolTensor(param.shape)}`` for every parameter.
        """
        self._step_masks.clear()
        for p in self.params:
            mask = masks[p.fqn]
            self._check_shape(p, mask)
            register_mask_(p.module, p.param_name, mask)

    def mask(self, fqn: str) -> Tensor:
        """The mask buffer of ``fqn``: ``BoolTensor(param.shape)``."""
        p = self._masked_weight(fqn)
        buffer = self._buffer_or_none(p)
        if buffer is None:
            raise RuntimeError(f"No mask installed for {fqn!r}; call install_() first.")
        return buffer

    def masks(self) -> dict[str, Tensor]:
        """``{fqn: BoolTensor(param.shape)}``, the live buffers (not copies)."""
        return {fqn: self.mask(fqn) for fqn in self._by_fqn}

    def rows(self, fqn: str, tensor: Tensor) -> Tensor:
        """``tensor`` shaped like ``fqn``'s weight, as the ``(out, ...)`` view sparsity math takes (transposed
        for a Hugging Face ``Conv1D``); a view, and its own inverse (``rows(fqn, rows(fqn, t))`` is ``t``)."""
        return self._masked_weight(fqn).rows(tensor)

    def param(self, fqn: str) -> Tensor:
        """The parameter ``fqn``."""
        return self._masked_weight(fqn).weight

    def set_mask_(self, fqn: str, new_mask: Tensor) -> None:
        """Copy ``new_mask`` into this process's part of the buffer, in place.

        Args:
            new_mask: bool, shaped like `local` of the mask (``param.shape`` for a whole weight).
        """
        local = self.local(fqn, self.mask(fqn))
        if tuple(new_mask.shape) != tuple(local.shape):
            raise ValueError(f"Mask for {fqn!r} has shape {tuple(new_mask.shape)}, expected {tuple(local.shape)}")
        local.copy_(new_mask)

    def local(self, fqn: str, tensor: Tensor) -> Tensor:
        """This process's rows of ``tensor`` shaped like ``fqn``'s weight: the local part of a ``DTensor``,
        the rows of the local shard of a whole tensor (e.g. from a checkpoint) when the weight is sharded,
        else ``tensor`` itself. Writes into the result write into ``tensor``."""
        if tensor is not local_part(tensor):
            return local_part(tensor)
        sharding = row_sharding(self.param(fqn), fqn)
        if sharding is None or tuple(tensor.shape) != tuple(self._masked_weight(fqn).shape):
            return tensor
        return tensor[sharding.start : sharding.stop]

    def step_mask(self, fqn: str, like: Tensor) -> Tensor:
        """[`step_mask`][lightning_srigl.masking.zeroing.step_mask] of ``fqn``'s mask for tensors like ``like``.

        Made once per topology change: cached until the buffer is replaced or changed (the version counter
        of its local part moves on ``set_mask_``, ``load_state_dict`` and any in-place op, also one into a
        sharded mask's local shard; a write through ``mask.data``, numpy or a distributed checkpoint load
        changes its checksum, see `lightning_srigl.derived_cache`).

        Args:
            like: a tensor shaped like this process's part of the weight (its local shard when sharded).
        """
        mask = local_part(self.mask(fqn))
        form = self._step_masks.get((fqn, like.dtype, like.device), (mask,), lambda: step_mask(mask, like), (mask,))
        return step_mask(mask, like) if form is None else form

    def forget_step_masks(self) -> None:
        """Drop the cached step masks; call it after masks were written without moving their version
        counters, e.g. by ``torch.distributed.checkpoint``, which loads a sharded checkpoint into the local
        shards' storage in place."""
        self._step_masks.clear()

    @torch.no_grad()
    def apply_to_weights_(self) -> None:
        """Zero every weight at its inactive positions, in place (also non-finite values there)."""
        for p in self.params:
            weight = local_part(p.weight.detach())
            zero_inactive_(weight, self.step_mask(p.fqn, weight))

    @torch.no_grad()
    def apply_to_gradients_(self, skip: Collection[str] = ()) -> None:
        """Zero every gradient at its weight's inactive positions, in place (``None`` grads are skipped).

        One pass per gradient; the mask form is cached (see `step_mask`), so nothing is
        converted or allocated per step.

        Args:
            skip: weights whose gradient is known to be zero at inactive positions already.
        """
        for p in self.params:
            grad = p.weight.grad
            if grad is not None and p.fqn not in skip:
                grad = local_part(grad)  # FSDP2: the local shard of the reduce-scattered gradient
                zero_inactive_(grad, self.step_mask(p.fqn, grad))

    def _masked_weight(self, fqn: str) -> MaskedWeight:
        try:
            return self._by_fqn[fqn]
        except KeyError:
            raise KeyError(f"{fqn!r} is not a sparse parameter; known: {self.fqns}") from None

    @staticmethod
    def _buffer_or_none(p: MaskedWeight) -> Tensor | None:
        return mask_of(p.module, p.param_name)

    @staticmethod
    def _check_shape(p: MaskedWeight, mask: Tensor) -> None:
        if tuple(mask.shape) != tuple(p.shape):
            raise ValueError(f"Mask for {p.fqn!r} has shape {tuple(mask.shape)}, expected {tuple(p.shape)}")
