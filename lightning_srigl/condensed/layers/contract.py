"""The contract every inference layer keeps, and the code the condensed layers share.

An inference layer is built from a masked module and turns back into one:

* ``from_masked(module, mask)`` (a classmethod): the layer that computes ``module`` with ``weight * mask``
  (the linear layers also take ``mask=None``: the module's own mask, `own_mask`). Layers whose kernels need
  a weight's raw tensors have a second constructor that says so, ``from_dense_weight(weight, mask, bias)``;
* ``to_dense()``: the plain dense module with the masked weight (no masks, like the module it came from);
* ``dense_masks()``: ``{parameter path in to_dense()'s module: bool mask}``, the positions the layer keeps,
  so ``to_dense()`` with these masks is again the masked module (``restore_dense`` installs them);
* ``spec_args()`` / ``from_spec(args, tensors)`` (a classmethod): plain constructor facts and the layer
  rebuilt, validated, from them and its ``state_dict`` tensors (what ``save_condensed`` writes), for every
  layer a ``weights_only`` file can hold (all but ``SemiStructuredLinear``, whose weight is a tensor subclass).
  A layer with an optional bias also records ``"bias": bool`` in ``spec_args()``: the loader checks the file
  holds the bias tensor exactly then, and passes ``from_spec`` the other facts;
* ``weight`` (a property) where the replaced module had one: its shape, dtype and device as a
  [`WeightFacts`][lightning_srigl.condensed.layers.weight_facts.WeightFacts], for code that reads them.

``tests/condensed/test_contract.py`` checks every class of ``INFERENCE_LAYERS`` against it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from lightning_srigl.masking import mask_of

__all__ = [
    "BACKENDS",
    "InferenceLayer",
    "SavableLayer",
    "check_choice",
    "dense_linear",
    "eager_inference",
    "own_mask",
    "renamed_constructor",
    "validate_after_load",
]

# Where a condensed layer computes: "auto" (C++ on CPU, Triton on CUDA), "torch" (the reference), "triton".
BACKENDS = ("auto", "torch", "triton")


@runtime_checkable
class InferenceLayer(Protocol):
    """A layer made from a masked module that can give it back (see the module docstring)."""

    @classmethod
    def from_masked(cls, module: nn.Module, mask: Any) -> nn.Module: ...

    def to_dense(self) -> nn.Module: ...

    def dense_masks(self) -> dict[str, Tensor]: ...


@runtime_checkable
class SavableLayer(InferenceLayer, Protocol):
    """An inference layer that ``save_condensed`` writes as constructor facts and tensors."""

    def spec_args(self) -> dict[str, Any]: ...

    @classmethod
    def from_spec(cls, args: dict[str, Any], tensors: dict[str, Tensor]) -> nn.Module: ...


def check_choice(value: str, allowed: Sequence[str], name: str) -> str:
    """``value`` if it is one of ``allowed``, else a ``ValueError`` naming ``name`` and the choices."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")
    return value


def eager_inference(x: Tensor, values: Tensor, bias: Tensor | None = None) -> bool:
    """True for plain eager tensors with no gradient to track (not traced, compiled or exported): the
    calls a layer may send straight to a kernel, skipping the dispatcher."""
    # Ordered cheapest first: this runs on every call, and each tensor attribute costs ~0.1-0.3 us.
    if type(x) is not Tensor or type(values) is not Tensor:
        return False
    if torch.is_grad_enabled() and (
        x.requires_grad or values.requires_grad or (bias is not None and bias.requires_grad)
    ):
        return False
    return not torch.compiler.is_compiling()


def validate_after_load(module: nn.Module, incompatible: object) -> None:
    """A ``load_state_dict`` post-hook: the loaded buffers pass the constructor's checks
    (``module.check_buffers()``), so no kernel ever sees a tampered layer."""
    module.check_buffers()


def dense_linear(weight: Tensor, bias: Tensor | None, *, frozen: bool = True) -> nn.Linear:
    """An ``nn.Linear`` holding copies of ``weight (out, in)`` and ``bias (out,)`` on their device and dtype;
    ``frozen``: without gradients (an inference layer)."""
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
    return linear.requires_grad_(not frozen)


def own_mask(module: nn.Module, mask: Tensor | None = None) -> Tensor:
    """``mask`` if given, else the mask installed on ``module.weight`` (`mask_of`), else its non-zeros
    (``weight != 0``): the mask a layer built from an already sparse module keeps; bool, the weight's shape."""
    if mask is None:
        mask = mask_of(module, "weight")
    if mask is None:
        mask = module.weight.detach() != 0
    return mask.to(device=module.weight.device, dtype=torch.bool)


def renamed_constructor(old: str, new: str) -> Any:
    """A classmethod named ``old`` that calls ``cls.<new>`` with the same arguments after a
    ``DeprecationWarning`` naming ``new``: a constructor's 0.1 name, kept for one release."""

    def constructor(cls: type, *args: Any, **kwargs: Any) -> Any:
        warnings.warn(f"{cls.__name__}.{old} is deprecated: use {cls.__name__}.{new}", DeprecationWarning, stacklevel=2)
        build: Callable[..., Any] = getattr(cls, new)
        return build(*args, **kwargs)

    constructor.__name__ = constructor.__qualname__ = old
    constructor.__doc__ = f"Deprecated since 0.2 (removed in 0.3): `{new}`, which takes the same arguments."
    return classmethod(constructor)
