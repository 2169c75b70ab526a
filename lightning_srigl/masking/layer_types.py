"""The module types whose weights can be sparse, how their neurons are laid out, and what is shared.

Besides ``torch.nn`` types, :data:`HF_CONV1D` names Hugging Face's ``transformers.pytorch_utils.Conv1D``
(GPT-2's projections): a linear layer whose weight is stored transposed, ``(in, out)``. It is matched
by duck typing (its class name and the ``nx``/``nf`` attributes that fix its weight's shape), so
``transformers`` is never imported. Everything that applies sparsity math views a weight neuron-major,
``(out, ...)`` (:func:`neuron_major`): for a ``Conv1D`` that is the transposed weight.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

__all__ = [
    "HF_CONV1D",
    "is_hf_conv1d",
    "is_layer_type",
    "layer_type_name",
    "neuron_major",
    "parameter_owners",
    "unsupported_weight_layers",
]

HF_CONV1D = "Conv1D"
"""Stands in ``layer_types`` for Hugging Face's ``Conv1D`` (``y = x @ weight + bias``, weight ``(in, out)``)."""

# Modules with >= 2-D weights that are dense by design (lookup tables): not reported as unsupported.
_DENSE_BY_DESIGN = (nn.Embedding, nn.EmbeddingBag)


def is_hf_conv1d(module: nn.Module) -> bool:
    """Whether ``module`` is a Hugging Face ``Conv1D``: that class name, ``nx``/``nf`` and an ``(nx, nf)`` weight."""
    if type(module).__name__ != HF_CONV1D:
        return False
    weight = getattr(module, "weight", None)
    nx, nf = getattr(module, "nx", None), getattr(module, "nf", None)
    return isinstance(weight, nn.Parameter) and isinstance(nx, int) and isinstance(nf, int) and weight.shape == (nx, nf)


def is_layer_type(module: nn.Module, layer_types: Sequence[type | str]) -> bool:
    """Whether ``module`` is one of ``layer_types`` (types by ``isinstance``, :data:`HF_CONV1D` by duck typing)."""
    types = tuple(t for t in layer_types if isinstance(t, type))
    return isinstance(module, types) or (HF_CONV1D in layer_types and is_hf_conv1d(module))


def layer_type_name(layer_type: type | str) -> str:
    """A layer type as the docs and messages name it."""
    return f"transformers {layer_type}" if layer_type == HF_CONV1D else layer_type.__name__


def neuron_major(module: nn.Module, tensor: Tensor) -> Tensor:
    """``tensor`` (shaped like ``module``'s weight) viewed as ``(out, ...)``: transposed for a Hugging Face
    ``Conv1D``, as it is otherwise. A view: writing to it writes the tensor."""
    return tensor.t() if is_hf_conv1d(module) else tensor


def parameter_owners(model: nn.Module) -> dict[int, list[str]]:
    """``id(parameter)`` -> the qualified names under which modules of ``model`` hold it (two or more:
    the parameter is tied, e.g. a language model's ``lm_head.weight`` and its input embedding)."""
    owners: dict[int, list[str]] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        for name, param in module.named_parameters(recurse=False):
            qualified = f"{module_name}.{name}" if module_name else name
            if qualified not in owners.setdefault(id(param), []):
                owners[id(param)].append(qualified)
    return owners


def unsupported_weight_layers(model: nn.Module, layer_types: Sequence[type | str]) -> dict[str, list[str]]:
    """Type name -> module names, for modules with a ``weight`` (or ``*_weight``, or an RNN's ``weight_ih_l0``
    and the like) of two or more dimensions that are none of ``layer_types``, nor one of the containers of a
    supported layer, nor an embedding."""
    found: dict[str, list[str]] = {}
    for name, module in model.named_modules():
        if is_layer_type(module, layer_types) or isinstance(module, _DENSE_BY_DESIGN):
            continue
        weights = [
            p
            for n, p in module.named_parameters(recurse=False)
            if (n == "weight" or n.endswith("_weight") or n.startswith("weight_")) and p.dim() >= 2
        ]
        if weights:
            found.setdefault(type(module).__name__, []).append(name)
    return found
