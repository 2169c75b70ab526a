"""The sparse module kinds that can be accelerated, and the inference layers each kind can become.

One table, `SPARSE_KINDS`, is read by acceleration (`accelerate`),
the benchmark (``lightning_srigl.benchmark.layers``) and serialization (its allowlist,
`INFERENCE_LAYERS`). A kind is an exact module type (so a subclass with its own forward, such as
``nn.MultiheadAttention``'s ``out_proj``, is not taken for ``nn.Linear``) and says:

* which of its weights carries the mask (``param_names``: the first the module has a mask for);
* its candidate inference layers, ``{name: from_masked(module, mask) -> nn.Module}``; the first,
  ``"dense"``, is a plain copy of the masked module and the exact reference for the others;
* how an input captured before folding reaches the module after folding shrank it (``fit_input``);
* its quantized (inexact) candidates, ``{name: quantize(module, mask, input_range) -> nn.Module}``
  ([`lightning_srigl.condensed.kinds.quantized`][lightning_srigl.condensed.kinds.quantized]), tried only when
  acceleration is asked to quantize.

Adding a kind is one more entry here, plus the candidate layers it names (each keeping the contract of
``condensed/layers/contract.py``, and listed in ``INFERENCE_LAYERS`` to be saved and loaded).
Which modules of a model *are* sparse, and with which mask, is the masking layer's record
([`lightning_srigl.masking.masked_weights`][lightning_srigl.masking.masked_weights]); `sparse_layers` joins the two.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from torch import Tensor, nn

from lightning_srigl.condensed.kinds.candidates import (
    MASKED_PARAMS,
    attention_batch_dims,
    channels_input,
    features_input,
    hf_conv1d_condensed,
    hf_conv1d_csr,
    masked_copy,
    projected_attention,
)
from lightning_srigl.condensed.kinds.quantized import QUANTIZED_CONDENSED, QUANTIZED_LINEAR, InputRange, Quantizer
from lightning_srigl.condensed.layers.attention import ProjectedAttention
from lightning_srigl.condensed.layers.contract import dense_linear
from lightning_srigl.condensed.layers.conv import CondensedConv1d, CondensedConv2d
from lightning_srigl.condensed.layers.csr import CSRLinear
from lightning_srigl.condensed.layers.int8_conv import Int8CondensedConv1d, Int8CondensedConv2d
from lightning_srigl.condensed.layers.int8_linear import Int8CondensedLinear
from lightning_srigl.condensed.layers.linear import CondensedLinear
from lightning_srigl.condensed.layers.semi_structured import SemiStructuredLinear
from lightning_srigl.masking import (
    MaskedWeight,
    is_hf_conv1d,
    masked_weights,
    parameter_owners,
    plain_class,
)

FromMasked = Callable[[nn.Module, Tensor], nn.Module]

__all__ = [
    "CANDIDATES",
    "INFERENCE_LAYERS",
    "QUANTIZED_CANDIDATES",
    "SPARSE_KINDS",
    "FromMasked",
    "SparseKind",
    "accelerated_layers",
    "build_candidate",
    "mark_accelerated",
    "sparse_kind",
    "sparse_layers",
    "tied_layers",
]

ACCELERATED_MARK = "_lightning_srigl_accelerated"


@dataclass(frozen=True)
class SparseKind:
    """What acceleration needs to know about one sparse module type (see the module docstring)."""

    param_names: tuple[str, ...]
    candidates: Mapping[str, FromMasked]
    fit_input: Callable[[nn.Module, Tensor], Tensor]
    # Where the batch is in a call of the module: argument position or keyword -> dim (see LayerCall.resized).
    batch_dims: Callable[[nn.Module], dict[int | str, int]] = lambda module: {0: 0}
    quantized: Mapping[str, Quantizer] = field(default_factory=dict)


def masked_dense_linear(linear: nn.Linear, mask: Tensor) -> nn.Linear:
    """A plain inference ``nn.Linear`` (no mask, no gradients) with ``weight * mask``."""
    dense = dense_linear(linear.weight.detach() * mask, None if linear.bias is None else linear.bias.detach())
    dense.__dict__[MASKED_PARAMS] = ("weight",)
    return dense


def _semi_structured_linear(linear: nn.Linear, mask: Tensor) -> SemiStructuredLinear:
    if linear.weight.device.type != "cuda":
        raise NotImplementedError("2:4 semi-structured kernels need a CUDA GPU")
    return SemiStructuredLinear.from_masked(linear, mask)


SPARSE_KINDS: dict[type[nn.Module], SparseKind] = {
    nn.Linear: SparseKind(
        param_names=("weight",),
        candidates={
            "dense": masked_dense_linear,
            "condensed": CondensedLinear.from_masked,
            "csr": CSRLinear.from_masked,
            "semi_structured": _semi_structured_linear,
        },
        fit_input=features_input,
        quantized=QUANTIZED_LINEAR,
    ),
    nn.Conv2d: SparseKind(
        param_names=("weight",),
        candidates={
            "dense": masked_copy,
            "condensed": CondensedConv2d.from_masked,
            "im2col": CondensedConv2d.im2col_from_masked,
        },
        fit_input=channels_input,
        quantized=QUANTIZED_CONDENSED,
    ),
    nn.Conv1d: SparseKind(
        param_names=("weight",),
        candidates={"dense": masked_copy, "condensed": CondensedConv1d.from_masked},
        fit_input=channels_input,
        quantized=QUANTIZED_CONDENSED,
    ),
    nn.MultiheadAttention: SparseKind(
        param_names=("in_proj_weight", "q_proj_weight"),
        candidates={"dense": masked_copy, "condensed": projected_attention},
        fit_input=lambda attention, x: x,
        batch_dims=attention_batch_dims,
        quantized=QUANTIZED_CONDENSED,
    ),
}

# Hugging Face's Conv1D (GPT-2's projections), matched by duck typing so transformers is never imported.
HF_CONV1D_KIND = SparseKind(
    param_names=("weight",),
    candidates={"dense": masked_copy, "condensed": hf_conv1d_condensed, "csr": hf_conv1d_csr},
    fit_input=features_input,
    quantized=QUANTIZED_CONDENSED,
)

# Every exact candidate name, in display order, then the quantized ones.
CANDIDATES: tuple[str, ...] = tuple(dict.fromkeys(name for kind in SPARSE_KINDS.values() for name in kind.candidates))
QUANTIZED_CANDIDATES: tuple[str, ...] = tuple(
    dict.fromkeys(name for kind in SPARSE_KINDS.values() for name in kind.quantized)
)

# The package's inference layer classes (the exact allowlist of the loader, with standard torch.nn modules).
INFERENCE_LAYERS: tuple[type[nn.Module], ...] = (
    CondensedLinear, CSRLinear, SemiStructuredLinear, CondensedConv2d, CondensedConv1d, ProjectedAttention,
    Int8CondensedLinear, Int8CondensedConv2d, Int8CondensedConv1d,
)  # fmt: skip


def sparse_kind(module: nn.Module) -> SparseKind | None:
    """The kind of ``module`` (by exact type, the type ``fully_shard`` started from, or a Hugging Face
    ``Conv1D``), or ``None`` when it cannot be accelerated."""
    kind = SPARSE_KINDS.get(plain_class(module))
    if kind is None and is_hf_conv1d(module):
        return HF_CONV1D_KIND
    return kind


def sparse_layers(model: nn.Module) -> dict[str, MaskedWeight]:
    """Module name -> masked weight, for every masked module of a known kind (`sparse_kind`) whose
    weight no other module holds: swapping a tied layer would break the tie (see `tied_layers`)."""
    found = {}
    tied = set(tied_layers(model))
    for masked in masked_weights(model):
        if masked.module_name in tied:
            continue
        kind = sparse_kind(masked.module)
        if kind is not None and masked.param_name in kind.param_names and masked.module_name not in found:
            found[masked.module_name] = masked
    return found


def tied_layers(model: nn.Module) -> dict[str, list[str]]:
    """Module name -> the other holders of its weight, for masked modules whose weight is tied."""
    owners = parameter_owners(model)
    tied = {}
    for masked in masked_weights(model):
        others = [name for name in owners[id(masked.weight)] if name != masked.fqn]
        if others:
            tied[masked.module_name] = others
    return tied


def build_candidate(name: str, module: nn.Module, mask: Tensor, input_range: InputRange | None = None) -> nn.Module:
    """Build candidate ``name`` of ``module``'s kind, equal to ``module`` with its weight times ``mask``, in
    ``module``'s mode (``training`` or not); a quantized candidate is close to it instead, with activations
    in ``input_range`` where it is static.

    Raises:
        ValueError: ``module`` is of no known kind or its kind has no candidate ``name``; also (like
            ``RuntimeError``/``NotImplementedError``) when the candidate cannot represent this layer
            on this device or dtype (condensed without constant fan-in, 2:4 on CPU, ...).
    """
    kind = sparse_kind(module)
    if kind is None:
        raise ValueError(
            f"{type(module).__name__} is not a sparse kind that can be accelerated; known: {_kind_names()}"
        )
    if name in kind.quantized:
        return kind.quantized[name](module, mask, input_range).train(module.training)  # an attention's dropout
    if name not in kind.candidates:
        known = (*kind.candidates, *kind.quantized)
        raise ValueError(f"Unknown candidate {name!r} for {type(module).__name__}; choose from {known}.")
    return kind.candidates[name](module, mask).train(module.training)  # dropout on or off as the module has it


def mark_accelerated(module: nn.Module, candidate: str) -> nn.Module:
    """Record that ``module`` was installed by acceleration as ``candidate`` (it is not trainable)."""
    module.__dict__[ACCELERATED_MARK] = candidate
    return module


def accelerated_layers(model: nn.Module) -> dict[str, str]:
    """Module name -> candidate, for every inference layer of ``model`` (installed by acceleration or a
    package inference layer such as a loaded `CondensedLinear`)."""
    return {
        name: module.__dict__.get(ACCELERATED_MARK, type(module).__name__)
        for name, module in model.named_modules()
        if ACCELERATED_MARK in module.__dict__ or isinstance(module, INFERENCE_LAYERS)
    }


def _kind_names() -> list[str]:
    return [kind.__name__ for kind in SPARSE_KINDS]
