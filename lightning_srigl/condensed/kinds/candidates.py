"""Candidate constructors of the sparse kinds beyond ``nn.Linear``: convolutions, attention, Hugging Face ``Conv1D``.

Each ``from_masked``-style function takes the masked module and the mask of the kind's weight and
returns an inference module that computes what the module computes with its weights times their
masks ([`lightning_srigl.condensed.kinds.registry`][lightning_srigl.condensed.kinds.registry] lists them per kind):

* `masked_copy` — the ``"dense"`` reference of every kind: a copy with the masks applied;
* `projected_attention` — ``nn.MultiheadAttention`` with condensed ``in_proj``/``out_proj``;
* `hf_conv1d_condensed`, `hf_conv1d_csr` — Hugging Face ``Conv1D`` (``y = x @ W + b``,
  ``W (in, out)``) as the `CondensedLinear` / `CSRLinear` of ``Wᵀ``.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from lightning_srigl.condensed.layers.attention import ProjectedAttention
from lightning_srigl.condensed.layers.csr import CSRLinear, to_csr
from lightning_srigl.condensed.layers.linear import CondensedLinear, pad_fan_in
from lightning_srigl.masking import mask_of, masked_weights, remove_masks_

__all__ = [
    "MASKED_PARAMS",
    "attention_batch_dims",
    "channels_input",
    "features_input",
    "hf_conv1d_condensed",
    "hf_conv1d_csr",
    "masked_copy",
    "projected_attention",
]


# The attribute where a masked copy names the weights that had masks (restore_dense masks them again).
MASKED_PARAMS = "_lightning_srigl_masked_params"


def masked_copy(module: nn.Module, mask: Tensor | None) -> nn.Module:
    """A copy of ``module`` with every masked weight times its mask, no masks and no gradients (the names of
    the weights that had masks are kept in ``module.__dict__[MASKED_PARAMS]``).

    ``mask`` is the mask of the kind's weight, which is the module's own (as registered), or None; the
    copy applies every mask the module and its submodules carry (an attention's ``out_proj`` too).
    """
    dense = copy.deepcopy(module)
    with torch.no_grad():
        for masked in masked_weights(dense):
            masked.weight.mul_(masked.mask)
    dense.__dict__[MASKED_PARAMS] = tuple(masked.fqn for masked in masked_weights(dense))
    remove_masks_(dense)
    return dense.requires_grad_(False)


def projected_attention(attention: nn.MultiheadAttention, mask: Tensor) -> ProjectedAttention:
    """`ProjectedAttention` with condensed projections (``mask``: ``in_proj_weight``'s; the others
    are the module's own masks, and a projection without one stays dense)."""
    if attention.in_proj_weight is None:
        masks = {name: mask_of(attention, name) for name in ("q_proj_weight", "k_proj_weight", "v_proj_weight")}
    else:
        masks = {"in_proj_weight": mask}
    return ProjectedAttention.from_masked(attention, masks, mask_of(attention.out_proj, "weight"))


def _transposed_weight(conv1d: nn.Module, mask: Tensor) -> tuple[Tensor, Tensor]:
    """``(Wᵀ * maskᵀ, maskᵀ)``, both ``(out, in)``, for a Hugging Face ``Conv1D``."""
    rows = mask.t().to(torch.bool)
    return conv1d.weight.detach().t() * rows, rows


def hf_conv1d_condensed(conv1d: nn.Module, mask: Tensor) -> CondensedLinear:
    """The `CondensedLinear` equal to a Hugging Face ``Conv1D`` with ``weight * mask`` (``(in, out)``)."""
    weight, rows = _transposed_weight(conv1d, mask)
    return CondensedLinear.from_dense_weight(weight, pad_fan_in(rows), conv1d.bias)


def hf_conv1d_csr(conv1d: nn.Module, mask: Tensor) -> CSRLinear:
    """The `CSRLinear` equal to a Hugging Face ``Conv1D`` with ``weight * mask``."""
    weight, _ = _transposed_weight(conv1d, mask)
    bias = None if conv1d.bias is None else conv1d.bias.detach().clone()
    return CSRLinear(to_csr(weight), bias)


def features_input(module: nn.Module, x: Tensor) -> Tensor:
    """The first ``in`` features of ``x (..., in')`` for a linear-like module whose inputs folding reduced
    (timing depends on shapes and dtypes only)."""
    width = module.in_features if hasattr(module, "in_features") else module.weight.shape[0]  # Conv1D: (in, out)
    return x[..., :width].contiguous()


def channels_input(conv: nn.Module, x: Tensor) -> Tensor:
    """The first ``in_channels`` channels of ``x (N, C', ...)`` for a convolution whose inputs folding reduced."""
    return x[:, : conv.in_channels].contiguous()


def attention_batch_dims(attention: nn.MultiheadAttention) -> dict[int | str, int]:
    """Where the batch is in an attention call: query/key/value along dim 0 (``batch_first``) or 1, and
    ``key_padding_mask`` along dim 0."""
    dim = 0 if attention.batch_first else 1
    return {0: dim, 1: dim, 2: dim, "query": dim, "key": dim, "value": dim, "key_padding_mask": 0}
