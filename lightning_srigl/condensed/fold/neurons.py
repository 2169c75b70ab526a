"""Fold ablated neurons into the next layer, so that they cost nothing at inference.

An ablated neuron of a ``Linear`` (all-zero weight row) outputs the constant ``bias_i``; after an
elementwise activation it is the constant ``act(bias_i)``. Where that value feeds only the next
``Linear``, the next layer's pre-activation gets ``W_next[:, i] * act(bias_i)`` for every input,
so it can go into ``bias_next`` and column ``i`` can go away. The producer then keeps only its
active rows (``out`` shrinks) and the consumer only the matching input columns: exact up to float
rounding.

:func:`fold_ablated_neurons` finds such chains in the ``torch.fx`` graphs of the model's forward, or of
its largest traceable parts where the whole model does not trace
(:func:`~lightning_srigl.condensed.fold.local_trace.traced_graphs`: ``nn.Sequential`` chains, MLP and ResNet
blocks), and folds only what is provably exact:

* producer: an ``nn.Linear`` or ``nn.Conv{1,2,3}d`` (exact type; conv with ``groups == 1``) whose
  weight has all-zero rows. A zero conv filter outputs its bias at *every* position (padding
  included), so the constant channel is exact for any kernel size, stride or padding;
* between producer and consumer, each intermediate value has exactly one user, and every step is
  an elementwise op from the allow-list (``ReLU, ReLU6, GELU, SiLU, Tanh, Sigmoid, LeakyReLU, ELU,
  Hardswish, Identity`` modules and their functional / ``torch.*`` / method forms, dropout in eval
  mode). After a conv producer also: ``BatchNorm`` in eval mode (sliced to the active channels), a
  global average pool (``AdaptiveAvgPool`` with output size 1) and then ``flatten(x, 1)``;
* consumer: an ``nn.Linear`` (after a Linear producer, or after conv → global pool → flatten), or
  a pointwise conv of the same dimensionality with ``padding == 0`` and ``groups == 1``.

Not folded, with the reason in the report: residual adds or any second user, normalisation over
features (LayerNorm, softmax), ``BatchNorm1d`` after a ``Linear`` (which axis it normalises
depends on the input rank, unknown to tracing), and a consumer conv with a kernel larger than 1×1
or with padding: with zero padding a constant channel is *not* constant at the borders after such
a conv, so its contribution cannot become a bias. Modules called more than once in ``forward`` or
with parameters tied to another module are left alone too.

Folds cascade in graph order: a consumer row whose remaining weights are all zero after the
columns are dropped is itself ablated and folded into the layer after it. The result is meant for
inference (``eval()`` mode): calling ``train()`` on it re-enables dropout and BatchNorm updates,
which the fold assumed away.

This module rewrites the modules; which paths are provably exact is the analysis of
``lightning_srigl.condensed.fold.chain``.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import Tensor, fx, nn
from torch.nn.modules.batchnorm import _BatchNorm

from lightning_srigl.condensed.fold.chain import (
    CONVS,
    LINEAR,
    Chain,
    constant_output,
    find_chain,
    fold_blocker,
)
from lightning_srigl.condensed.fold.local_trace import traced_graphs
from lightning_srigl.masking import mask_of, parameter_owners, register_mask_

__all__ = ["FoldReport", "FoldedNeurons", "KeptNeurons", "fold_ablated_neurons"]


@dataclass(frozen=True)
class FoldedNeurons:
    """Ablated neurons of ``producer`` removed and folded into ``consumer``'s bias."""

    producer: str
    consumer: str
    through: tuple[str, ...]  # the ops in between: module names, or fx node names for functions
    removed: int
    kept: int


@dataclass(frozen=True)
class KeptNeurons:
    """Ablated neurons of ``producer`` left in place (they still output their constant), and why."""

    producer: str
    ablated: int
    reason: str


@dataclass
class FoldReport:
    """What :func:`fold_ablated_neurons` did.

    Attributes:
        model: the folded model (same class as the input; see ``inplace``).
        folded / kept: one entry per layer that had ablated neurons.
        masks: ``weight`` masks of the layers that had one (argument or the layer's own mask),
            keyed by module name and sliced to the folded shapes, e.g. for ``CondensedLinear``.
        replaced: the original modules, by name, that the fold swapped for smaller copies (with
            ``inplace=True`` they are the input model's own modules: setting them back undoes the fold).
    """

    model: nn.Module
    folded: list[FoldedNeurons] = field(default_factory=list)
    kept: list[KeptNeurons] = field(default_factory=list)
    masks: dict[str, Tensor] = field(default_factory=dict)
    replaced: dict[str, nn.Module] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"folded {sum(f.removed for f in self.folded)} ablated neurons in {len(self.folded)} layers"]
        lines += [f"  {f.producer} -> {f.consumer}: removed {f.removed}, kept {f.kept}" for f in self.folded]
        lines += [f"  kept {k.ablated} ablated in {k.producer}: {k.reason}" for k in self.kept]
        return "\n".join(lines)


def fold_ablated_neurons(
    model: nn.Module, masks: dict[str, Tensor] | None = None, *, inplace: bool = False
) -> FoldReport:
    """Remove ablated neurons whose constant output can be folded exactly into the next layer.

    Args:
        model: a module whose ``forward`` is traceable by ``torch.fx.symbolic_trace``, in eval mode
            where it has dropout or BatchNorm on a folding path.
        masks: optional ``{module name (or "name.weight"): bool mask shaped like its weight}``.
            Without it a layer's own mask (:func:`lightning_srigl.masking.mask_of`) is used if it has one. A neuron is ablated when
            its weight row is all zero; the masks are checked to agree (weights zero outside them)
            and are sliced along with the weights (see :attr:`FoldReport.masks`).
        inplace: fold into ``model`` itself instead of into a deep copy. Folded modules are replaced
            by new module objects (the originals are kept in :attr:`FoldReport.replaced`), never
            mutated, so references held elsewhere keep seeing the unfolded layers.

    Returns:
        The report, whose ``model`` computes the same outputs as ``model`` (float tolerance), with
        producers' ``out_features``/``out_channels`` and consumers' inputs reduced.

    Raises:
        ValueError: a mask does not match a layer, weights are non-zero where a mask is False
            (apply the masks to the weights first), or ``forward`` cannot be traced.
    """
    work = model if inplace else copy.deepcopy(model)
    current_masks = _collect_masks(work, masks or {})
    graphs = _trace(work)
    modules = dict(work.named_modules())
    calls = Counter(n.target for graph in graphs for n in graph.nodes if n.op == "call_module")
    shared = _modules_with_shared_parameters(work)
    report = FoldReport(model=work, masks=current_masks)
    for node in (node for graph in graphs for node in graph.nodes):
        producer = modules.get(node.target) if node.op == "call_module" else None
        if type(producer) not in LINEAR + CONVS:
            continue
        ablated = ~producer.weight.detach().flatten(1).any(dim=1)
        n_ablated = int(ablated.sum())
        if n_ablated == 0:
            continue
        chain = find_chain(node, producer, modules)
        reason = chain if isinstance(chain, str) else fold_blocker(node, producer, chain, modules, calls, shared)
        if reason is None and n_ablated == len(ablated):
            reason = "all neurons are ablated; a layer with no outputs is left unchanged"
        if reason is not None:
            report.kept.append(KeptNeurons(str(node.target), n_ablated, reason))
            continue
        report.folded.append(_fold(work, node, chain, ablated, report))
        modules = dict(work.named_modules())  # the fold installed new module objects
    return report


def _trace(model: nn.Module) -> list[fx.Graph]:
    graphs = traced_graphs(model)
    if not graphs:
        raise ValueError(
            f"fold_ablated_neurons needs torch.fx-traceable code, but neither {type(model).__name__} nor any of its "
            "submodules traces; nothing was folded"
        )
    return graphs


def _collect_masks(model: nn.Module, masks: dict[str, Tensor]) -> dict[str, Tensor]:
    """Masks by module name (argument first, else the layers' own masks), checked against the weights."""
    layers = {name: m for name, m in model.named_modules() if type(m) in LINEAR + CONVS}
    found = {name: mask_of(m, "weight") for name, m in layers.items() if mask_of(m, "weight") is not None}
    for key, mask in masks.items():
        name = key.removesuffix(".weight")
        if name not in layers:
            raise ValueError(f"masks key {key!r} is not a Linear/Conv layer of the model; layers: {sorted(layers)}")
        found[name] = mask
    for name, mask in found.items():
        weight = layers[name].weight.detach()
        if mask.shape != weight.shape:
            raise ValueError(f"mask for {name!r} has shape {tuple(mask.shape)}, weight has {tuple(weight.shape)}")
        if bool((weight.ne(0) & ~mask.to(weight.device, torch.bool)).any()):
            raise ValueError(
                f"weights of {name!r} are non-zero where its mask is False; apply the masks first "
                "(e.g. MaskedParameters.apply_to_weights_()) so that the folded model equals the masked one"
            )
    return {name: mask.to(torch.bool) for name, mask in found.items()}


def _modules_with_shared_parameters(model: nn.Module) -> set[str]:
    """Names of the modules that hold a parameter some other module holds too."""
    holders = [{fqn.rpartition(".")[0] for fqn in fqns} for fqns in parameter_owners(model).values()]
    return {name for modules in holders if len(modules) > 1 for name in modules}


@torch.no_grad()
def _fold(model: nn.Module, node: fx.Node, chain: Chain, ablated: Tensor, report: FoldReport) -> FoldedNeurons:
    """Swap in copies of producer / BatchNorms / consumer with ablated channels removed, constants in the bias."""
    modules = dict(model.named_modules())
    constant = constant_output(modules[node.target], chain.ops, modules)  # (C,), from the unsliced chain
    active = (~ablated).nonzero().squeeze(1)
    dropped = ablated.nonzero().squeeze(1)

    consumer = _replace(model, str(chain.consumer.target), report)
    weight = consumer.weight.detach()
    delta = weight[:, dropped].flatten(1).double() @ constant[dropped].double()  # (O_next,)
    if consumer.bias is not None or bool(delta.any()):
        base = consumer.bias.detach().double() if consumer.bias is not None else torch.zeros_like(delta)
        consumer.bias = _parameter(base + delta, consumer.weight)
    consumer.weight = _parameter(weight[:, active], consumer.weight)
    _set_width(consumer, "in", len(active))
    _slice_mask(str(chain.consumer.target), consumer, report.masks, (slice(None), active))

    producer = _replace(model, str(node.target), report)
    producer.weight = _parameter(producer.weight.detach()[active], producer.weight)
    if producer.bias is not None:
        producer.bias = _parameter(producer.bias.detach()[active], producer.bias)
    _set_width(producer, "out", len(active))
    _slice_mask(str(node.target), producer, report.masks, (active,))
    for op in chain.ops:
        if isinstance(modules.get(op.target), _BatchNorm):
            _slice_batchnorm(_replace(model, str(op.target), report), active)
    through = tuple(str(op.target) if op.op == "call_module" else op.name for op in chain.ops)
    return FoldedNeurons(str(node.target), str(chain.consumer.target), through, len(dropped), len(active))


def _replace(model: nn.Module, name: str, report: FoldReport) -> nn.Module:
    """Install a deep copy of submodule ``name`` in its place (the first original goes to the report)."""
    original = model.get_submodule(name)
    report.replaced.setdefault(name, original)
    fresh = copy.deepcopy(original)
    model.set_submodule(name, fresh)
    return fresh


def _slice_batchnorm(bn: _BatchNorm, active: Tensor) -> None:
    for name in ("weight", "bias"):
        if getattr(bn, name) is not None:
            setattr(bn, name, _parameter(getattr(bn, name).detach()[active], getattr(bn, name)))
    bn.running_mean = bn.running_mean[active]
    bn.running_var = bn.running_var[active]
    bn.num_features = len(active)


def _slice_mask(name: str, module: nn.Module, masks: dict[str, Tensor], index: tuple) -> None:
    if name in masks:
        masks[name] = masks[name][index]
    own = mask_of(module, "weight")
    if own is not None:
        register_mask_(module, "weight", own[index])


def _set_width(module: nn.Module, side: str, width: int) -> None:
    linear = type(module) in LINEAR
    attribute = {"in": "in_features" if linear else "in_channels", "out": "out_features" if linear else "out_channels"}
    setattr(module, attribute[side], width)


def _parameter(value: Tensor, like: Tensor) -> nn.Parameter:
    return nn.Parameter(value.to(like.dtype).contiguous(), requires_grad=like.requires_grad)
