"""The sparse module kinds that can be accelerated, and the inference layers each kind can become.

One table, :data:`SPARSE_KINDS`, is read by acceleration (:mod:`~lightning_srigl.condensed.accelerate`),
the benchmark (``lightning_srigl.benchmark.layers``) and serialization (its allowlist,
:data:`INFERENCE_LAYERS`). A kind is an exact module type (so a subclass with its own forward, such as
``nn.MultiheadAttention``'s ``out_proj``, is not taken for ``nn.Linear``) and says:

* which of its weights carries the mask (``param_name``);
* its candidate inference layers, ``{name: from_masked(module, mask) -> nn.Module}``; the first,
  ``"dense"``, is a plain copy of the masked module and the exact reference for the others;
* how an input captured before folding reaches the module after folding shrank it (``fit_input``).

Adding a kind (a condensed convolution, say) is one more entry here; nothing else changes.
Which modules of a model *are* sparse, and with which mask, is the masking layer's record
(:func:`lightning_srigl.masking.masked_weights`); :func:`sparse_layers` joins the two.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_srigl.condensed.csr import CSRLinear
from lightning_srigl.condensed.linear import CondensedLinear
from lightning_srigl.condensed.semi_structured import SemiStructuredLinear
from lightning_srigl.masking import MaskedWeight, masked_weights

FromMasked = Callable[[nn.Module, Tensor], nn.Module]

__all__ = [
    "CANDIDATES",
    "INFERENCE_LAYERS",
    "SPARSE_KINDS",
    "FromMasked",
    "SparseKind",
    "accelerated_layers",
    "build_candidate",
    "mark_accelerated",
    "sparse_kind",
    "sparse_layers",
]

ACCELERATED_MARK = "_lightning_srigl_accelerated"


@dataclass(frozen=True)
class SparseKind:
    """What acceleration needs to know about one sparse module type (see the module docstring)."""

    param_name: str
    candidates: Mapping[str, FromMasked]
    fit_input: Callable[[nn.Module, Tensor], Tensor]


def dense_linear(linear: nn.Linear, mask: Tensor) -> nn.Linear:
    """A plain inference ``nn.Linear`` (no mask, no gradients) with ``weight * mask``."""
    dense = nn.Linear(linear.in_features, linear.out_features, linear.bias is not None)
    dense = dense.to(device=linear.weight.device, dtype=linear.weight.dtype)
    with torch.no_grad():
        dense.weight.copy_(linear.weight * mask)
        if linear.bias is not None:
            dense.bias.copy_(linear.bias)
    return dense.requires_grad_(False)


def _semi_structured_linear(linear: nn.Linear, mask: Tensor) -> SemiStructuredLinear:
    if linear.weight.device.type != "cuda":
        raise NotImplementedError("2:4 semi-structured kernels need a CUDA GPU")
    return SemiStructuredLinear.from_masked(linear, mask)


def _linear_input(linear: nn.Linear, x: Tensor) -> Tensor:
    """The first ``in_features`` columns of ``x (..., in)``: timing depends on shapes and dtypes only."""
    return x[..., : linear.in_features].contiguous()


SPARSE_KINDS: dict[type[nn.Module], SparseKind] = {
    nn.Linear: SparseKind(
        param_name="weight",
        candidates={
            "dense": dense_linear,
            "condensed": CondensedLinear.from_masked,
            "csr": CSRLinear.from_masked,
            "semi_structured": _semi_structured_linear,
        },
        fit_input=_linear_input,
    ),
}

# Every candidate name, in display order.
CANDIDATES: tuple[str, ...] = tuple(dict.fromkeys(name for kind in SPARSE_KINDS.values() for name in kind.candidates))

# The package's inference layer classes (the exact allowlist of the loader, with standard torch.nn modules).
INFERENCE_LAYERS: tuple[type[nn.Module], ...] = (CondensedLinear, CSRLinear, SemiStructuredLinear)


def sparse_kind(module: nn.Module) -> SparseKind | None:
    """The kind of ``module`` (by exact type), or ``None`` when it cannot be accelerated."""
    return SPARSE_KINDS.get(type(module))


def sparse_layers(model: nn.Module) -> dict[str, MaskedWeight]:
    """Module name -> masked weight, for every masked module of a kind in :data:`SPARSE_KINDS`."""
    found = {}
    for masked in masked_weights(model):
        kind = sparse_kind(masked.module)
        if kind is not None and masked.param_name == kind.param_name:
            found[masked.module_name] = masked
    return found


def build_candidate(name: str, module: nn.Module, mask: Tensor) -> nn.Module:
    """Build candidate ``name`` of ``module``'s kind, equal to ``module`` with its weight times ``mask``.

    Raises:
        ValueError: ``module`` is of no known kind or its kind has no candidate ``name``; also (like
            ``RuntimeError``/``NotImplementedError``) when the candidate cannot represent this layer
            on this device or dtype (condensed without constant fan-in, 2:4 on CPU, ...).
    """
    kind = sparse_kind(module)
    if kind is None:
        raise ValueError(f"{type(module).__name__} is not a sparse kind that can be accelerated; known: {_kind_names()}")
    if name not in kind.candidates:
        raise ValueError(f"Unknown candidate {name!r} for {type(module).__name__}; choose from {tuple(kind.candidates)}.")
    return kind.candidates[name](module, mask)


def mark_accelerated(module: nn.Module, candidate: str) -> nn.Module:
    """Record that ``module`` was installed by acceleration as ``candidate`` (it is not trainable)."""
    module.__dict__[ACCELERATED_MARK] = candidate
    return module


def accelerated_layers(model: nn.Module) -> dict[str, str]:
    """Module name -> candidate, for every inference layer of ``model`` (installed by acceleration or a
    package inference layer such as a loaded :class:`CondensedLinear`)."""
    return {
        name: module.__dict__.get(ACCELERATED_MARK, type(module).__name__)
        for name, module in model.named_modules()
        if ACCELERATED_MARK in module.__dict__ or isinstance(module, INFERENCE_LAYERS)
    }


def _kind_names() -> list[str]:
    return [kind.__name__ for kind in SPARSE_KINDS]
