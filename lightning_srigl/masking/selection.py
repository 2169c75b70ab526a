"""Choose which parameters of a model are sparse.

A *sparse parameter* is a weight tensor whose neurons are output rows: the ``weight`` of
``nn.Linear`` and ``nn.Conv1d/2d/3d`` (shape ``(out, in, *kernel)``), the input projections of
``nn.MultiheadAttention`` (``in_proj_weight`` ``(3*embed, embed)``, or ``q/k/v_proj_weight`` when
the key/value dims differ), and the ``weight`` of Hugging Face's ``Conv1D``, stored ``(in, out)``
(`layer_types`; sparsity math sees it transposed). The attention output
projection ``out_proj`` is an ``nn.Linear`` and is selected as such. Biases, normalisation layers and
embeddings are never sparse.

Two cases are left dense by default, each with one warning: a weight *tied* to another module (a
language model's ``lm_head`` and its input embedding: masking one would zero and re-initialise the
other), unless an ``include`` pattern names it exactly; and layers of types the selection cannot
handle (the warning names them).

Names are fully-qualified parameter names as in ``model.named_parameters()`` (``encoder.0.weight``,
``attn.in_proj_weight``) and patterns are ``fnmatch`` patterns on those names.
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Callable, Iterable, Sequence

from torch import nn

from lightning_srigl.masking.layer_types import (
    HF_CONV1D,
    is_hf_conv1d,
    is_layer_type,
    layer_type_name,
    parameter_owners,
    unsupported_weight_layers,
)
from lightning_srigl.masking.masked_weight import MaskedWeight
from lightning_srigl.masking.masked_weight import qualified_name as qualified_name  # its 0.1 path, for a release

DEFAULT_LAYER_TYPES: tuple[type[nn.Module] | str, ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.MultiheadAttention,
    HF_CONV1D,
)

_MHA_SEPARATE_PROJECTIONS = ("q_proj_weight", "k_proj_weight", "v_proj_weight")


def matches(fqn: str, patterns: Iterable[str]) -> bool:
    """Whether ``fqn`` matches any of the fnmatch ``patterns`` (case-sensitive)."""
    return any(fnmatch.fnmatchcase(fqn, pattern) for pattern in patterns)


def sparsifiable_param_names(module: nn.Module) -> list[str]:
    """Local names of the weights of ``module`` that can be sparse (empty for other modules)."""
    if isinstance(module, nn.MultiheadAttention):
        if module.in_proj_weight is not None:
            return ["in_proj_weight"]
        return list(_MHA_SEPARATE_PROJECTIONS)
    if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) or is_hf_conv1d(module):
        return ["weight"]
    return []


def sparsifiable_weights(
    model: nn.Module, layer_types: Sequence[type | str] = DEFAULT_LAYER_TYPES
) -> list[MaskedWeight]:
    """Every sparsifiable weight of a module of one of ``layer_types``, in registration order (a tied
    weight once, through its first owner)."""
    seen: set[int] = set()
    found: list[MaskedWeight] = []
    for module_name, module in model.named_modules():
        if not is_layer_type(module, layer_types):
            continue
        for param_name in sparsifiable_param_names(module):
            param = getattr(module, param_name, None)
            if not isinstance(param, nn.Parameter) or id(param) in seen:
                continue  # tied weights are masked once, through their first owner
            seen.add(id(param))
            found.append(MaskedWeight(module_name, module, param_name))
    return found


def check_patterns_match(patterns: Sequence[str], names: Sequence[str], argument: str) -> None:
    """Raise ``ValueError`` naming every pattern in ``patterns`` that matches none of ``names``."""
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    if unmatched:
        available = ", ".join(names) if names else "(none)"
        raise ValueError(
            f"{argument} pattern(s) {unmatched} match no sparsifiable parameter. Patterns are fnmatch "
            f"patterns on fully-qualified parameter names; available names: {available}"
        )


def _check_include_targets(model: nn.Module, include: Sequence[str], candidates: list[str]) -> None:
    """Raise a clear error when an include pattern names only parameters of unsupported layers."""
    all_names = [name for name, _ in model.named_parameters()]
    for pattern in include:
        if any(fnmatch.fnmatchcase(n, pattern) for n in candidates):
            continue
        unsupported = [n for n in all_names if fnmatch.fnmatchcase(n, pattern)]
        if unsupported:
            owners = {n: type(model.get_submodule(n.rpartition(".")[0])).__name__ for n in unsupported}
            described = ", ".join(f"{n} ({kind})" for n, kind in owners.items())
            supported = ", ".join(layer_type_name(t) for t in DEFAULT_LAYER_TYPES)
            raise ValueError(
                f"include pattern {pattern!r} matches only parameters that cannot be sparse: {described}. "
                f"Supported layers: {supported} (weights only, never biases or norms); remove the "
                "pattern or point it at the weight of a supported layer."
            )
    check_patterns_match(include, candidates, "include")


def select_parameters(
    model: nn.Module,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    layer_types: Sequence[type | str] = DEFAULT_LAYER_TYPES,
) -> list[MaskedWeight]:
    """Select the sparse weights of ``model``.

    Args:
        model: the network.
        include: fnmatch patterns on fully-qualified parameter names; ``None`` selects every
            weight of a supported layer except tied ones (see the module docstring).
        exclude: patterns removed from the selection.
        layer_types: module types whose weights may be selected (`HF_CONV1D` for Hugging Face's
            ``Conv1D``).

    Returns:
        The selected parameters in module registration order.

    Raises:
        ValueError: a pattern matches nothing (the message lists the available names), an include
            pattern names a parameter of an unsupported layer, or nothing is left to sparsify.
    """
    candidates = sparsifiable_weights(model, layer_types)
    names = [c.fqn for c in candidates]
    if include is not None:
        _check_include_targets(model, include, names)
        candidates = [c for c in candidates if matches(c.fqn, include)]
    else:
        _warn_unsupported_layers(model, layer_types)
    candidates = _without_tied_weights(model, candidates, include)
    check_patterns_match(exclude, [c.fqn for c in candidates], "exclude")
    selected = [c for c in candidates if not matches(c.fqn, exclude)]
    if not selected:
        raise ValueError(
            "No parameter is left to sparsify after include/exclude. Available names: "
            f"{', '.join(names) or '(the model has no Linear, Conv or MultiheadAttention layer)'}"
        )
    return selected


def _without_tied_weights(
    model: nn.Module, candidates: list[MaskedWeight], include: Sequence[str] | None
) -> list[MaskedWeight]:
    """``candidates`` less the weights other modules hold too, unless ``include`` names them exactly."""
    owners = parameter_owners(model)
    named = set(include or ())
    tied = {c.fqn: owners[id(c.weight)] for c in candidates if len(owners[id(c.weight)]) > 1 and c.fqn not in named}
    if tied:
        described = "; ".join(" = ".join(names) for names in tied.values())
        warnings.warn(
            f"lightning_srigl: {sorted(tied)} are tied weights ({described}) and stay dense: a mask on one "
            "owner would zero and re-initialise the other (e.g. the input embedding), and swapping the layer "
            "for inference would break the tie. To sparsify one anyway, name it exactly in include "
            f"(include=[..., {next(iter(tied))!r}]).",
            UserWarning,
            stacklevel=3,
        )
    return [c for c in candidates if c.fqn not in tied]


def _warn_unsupported_layers(model: nn.Module, layer_types: Sequence[type | str]) -> None:
    """One warning naming the layers with weight matrices that no supported type covers (they stay dense)."""
    unsupported = unsupported_weight_layers(model, layer_types)
    if unsupported:
        described = "; ".join(
            f"{kind}: {', '.join(names[:4])}{' ...' if len(names) > 4 else ''}" for kind, names in unsupported.items()
        )
        supported = ", ".join(layer_type_name(t) for t in layer_types)
        warnings.warn(
            f"lightning_srigl: layers of types the sparsity selection cannot handle stay dense ({described}); "
            f"supported: {supported}.",
            UserWarning,
            stacklevel=3,
        )


def split_frozen(params: Sequence[MaskedWeight]) -> tuple[list[MaskedWeight], list[MaskedWeight]]:
    """``(trainable, frozen)``: a frozen weight (``requires_grad=False``) cannot regrow, so it stays dense."""
    trainable = [p for p in params if p.weight.requires_grad]
    return trainable, [p for p in params if not p.weight.requires_grad]


def select_structured_parameters(
    model: nn.Module,
    check_shape: Callable[[tuple[int, ...]], None],
    include: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    keep_first_dense: bool = True,
    keep_last_dense: bool = True,
) -> tuple[list[MaskedWeight], dict[str, str]]:
    """Select the weights to structure, leaving the first/last layer and unfit layers dense.

    Args:
        model: the network.
        check_shape: ``f(shape)`` raising ``ValueError`` when a weight cannot carry the structure,
            e.g. ``lambda s: check_nm(s, 2, 4)``.
        include, exclude: fnmatch patterns on parameter names (see
            [`select_parameters`][lightning_srigl.masking.selection.select_parameters]).
        keep_first_dense, keep_last_dense: leave the model's first / last sparsifiable weight (in
            registration order) dense, e.g. a 3-channel stem conv and the classifier head.

    Returns:
        ``(selected, skipped)`` where ``skipped`` maps a parameter name to why it stays dense.

    Raises:
        ValueError: a weight matched by an explicit ``include`` pattern cannot carry the structure.
    """
    every = [p.fqn for p in select_parameters(model)]
    pinned = {every[0]: "first layer"} if keep_first_dense else {}
    if keep_last_dense:
        pinned[every[-1]] = "last layer"
    selected, skipped = [], {}
    for param in select_parameters(model, include=include, exclude=exclude):
        if param.fqn in pinned:
            skipped[param.fqn] = f"{pinned[param.fqn]} kept dense"
            continue
        if is_hf_conv1d(param.module):
            skipped[param.fqn] = "N:M structure on Hugging Face Conv1D (transposed) weights is not supported"
            continue
        try:
            check_shape(tuple(param.shape))
        except ValueError as err:
            if include is not None:  # the user asked for this layer by name: do not skip it silently
                raise ValueError(f"{param.fqn} is selected by include={list(include)}, but: {err}") from err
            skipped[param.fqn] = str(err)
            continue
        selected.append(param)
    return selected, skipped


class SparseParameter(MaskedWeight):
    """Deprecated since 0.2 (removed in 0.3): `MaskedWeight`, which takes the same three fields in the order
    ``(module_name, module, param_name)``; this name keeps 0.1's order ``(module_name, param_name, module)``."""

    def __init__(self, module_name: str, param_name: str, module: nn.Module) -> None:
        warnings.warn(
            "SparseParameter is deprecated: use MaskedWeight(module_name, module, param_name)",
            DeprecationWarning,
            stacklevel=2,
        )
        super().__init__(module_name, module, param_name)
