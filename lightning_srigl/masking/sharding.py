"""Weights sharded by rows across processes (FSDP2's ``DTensor`` with ``Shard(0)``): each process's part.

Under ``fully_shard`` every parameter is a ``DTensor`` whose rows are split into consecutive ranges,
one per process of the data-parallel mesh dimension (``torch.chunk``'s split, the last ranges possibly
short or empty); on an HSDP mesh the other dimension replicates. A process then owns whole neurons,
so masks, gradient masking and most of a topology update stay local. This module says which rows a
process holds (`row_sharding`), lays a mask out like its weight (`shard_like`), reads a
tensor's local part (`local_part`) and builds the
[`ShardReducer`][lightning_srigl.sparsity.ShardReducer] whose collectives run over the sharding processes
(`reducer_for`). Anything else (tensor parallelism splits a neuron's fan-in across processes) is
refused with a message.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from lightning_srigl.masking.layer_types import is_hf_conv1d
from lightning_srigl.masking.masked_weight import MaskedWeight
from lightning_srigl.sparsity import LocalReducer, Reducer, ShardReducer

try:
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor
except ImportError:  # a torch build without distributed support: nothing can be sharded
    DTensor = FSDPModule = None  # type: ignore[assignment,misc]

__all__ = [
    "RowSharding",
    "gather_rows",
    "is_sharded",
    "local_part",
    "plain_class",
    "reducer_for",
    "row_sharding",
    "shard_like",
    "unshard_modules_",
    "whole_tensor",
]


def is_sharded(tensor: Tensor) -> bool:
    """Whether ``tensor`` is a ``DTensor`` (a part of a tensor spread over processes)."""
    return DTensor is not None and isinstance(tensor, DTensor)


def local_part(tensor: Tensor) -> Tensor:
    """This process's part of ``tensor`` (its local shard for a ``DTensor``, else ``tensor`` itself).

    Writes into the result write into ``tensor``. They do not move a ``DTensor``'s own ``_version``, only
    the local part's, so a cache of something derived from a sharded tensor keys on the local part.
    """
    if is_sharded(tensor):
        with torch.no_grad():
            local: Tensor = tensor.to_local()  # type: ignore[attr-defined]  # a DTensor
            return local
    return tensor


@dataclass(frozen=True)
class RowSharding:
    """Which rows of a weight this process holds, and over which processes the rows are split.

    Attributes:
        start, stop: this process's rows of the whole weight, ``[start, stop)``.
        shards: how many processes split the rows; ``index`` is this one's position among them (row order).
        group: their process group (the mesh dimension that shards the rows).
    """

    start: int
    stop: int
    shards: int
    index: int
    group: Any


def row_sharding(weight: Tensor, name: str = "weight") -> RowSharding | None:
    """How ``weight``'s rows are split, ``None`` for a whole (plain) tensor.

    Raises:
        ValueError: a ``DTensor`` sharded other than by rows on exactly one mesh dimension (e.g. tensor
            parallelism, which splits each neuron's fan-in).
    """
    if not is_sharded(weight):
        return None
    placements = weight.placements  # type: ignore[attr-defined]
    split = [dim for dim, placement in enumerate(placements) if not placement.is_replicate()]
    if len(split) != 1 or not placements[split[0]].is_shard(dim=0) or type(placements[split[0]]).__name__ != "Shard":
        raise ValueError(
            f"{name} is a DTensor placed {tuple(placements)}: sparse training needs each neuron (row) whole on "
            "one process, i.e. Shard(0) on one data-parallel mesh dimension (FSDP2's fully_shard, or HSDP) and "
            "Replicate elsewhere. Tensor parallelism splits a neuron's fan-in: use "
            "ModelParallelStrategy(tensor_parallel_size=1), or exclude this layer from sparsification."
        )
    mesh = weight.device_mesh  # type: ignore[attr-defined]
    dim = split[0]
    shards, index = mesh.size(dim), mesh.get_local_rank(dim)
    rows = weight.shape[0]
    chunk = math.ceil(rows / shards)
    start = min(index * chunk, rows)
    stop = min(start + chunk, rows)
    if local_part(weight).shape[0] != stop - start:
        raise ValueError(
            f"{name}'s local shard holds {local_part(weight).shape[0]} rows where an even Shard(0) split of "
            f"{rows} rows over {shards} processes gives {stop - start}; shard weights with fully_shard's default"
        )
    return RowSharding(start, stop, shards, index, mesh.get_group(dim))


def shard_like(tensor: Tensor, weight: Tensor) -> Tensor:
    """``tensor`` laid out like ``weight``: its local rows as a ``DTensor`` of the same placement when
    ``weight`` is sharded (no communication: ``tensor`` holds the whole weight's shape, or is a ``DTensor``
    already), else ``tensor`` itself."""
    sharding = row_sharding(weight)
    if sharding is None or is_sharded(tensor):
        return tensor
    if tuple(tensor.shape) != tuple(weight.shape):
        raise ValueError(
            f"expected a tensor shaped like the whole weight {tuple(weight.shape)}, got {tuple(tensor.shape)}"
        )
    local = tensor[sharding.start : sharding.stop].to(local_part(weight).device).contiguous()
    stride = torch.empty(weight.shape, device="meta").stride()  # contiguous: the mask's own stride
    return DTensor.from_local(
        local,
        weight.device_mesh,  # type: ignore[attr-defined]
        weight.placements,  # type: ignore[attr-defined]
        run_check=False,
        shape=weight.shape,
        stride=stride,
    )


def gather_rows(rows: Tensor, weight: Tensor) -> Tensor:
    """The whole tensor of which ``rows`` is this process's part, laid out like ``weight``'s rows (an
    all-gather over the processes that shard ``weight``, which must all call it); ``rows`` itself when
    ``weight`` is whole."""
    if row_sharding(weight) is None:
        return rows
    stride = torch.empty(weight.shape, device="meta").stride()
    spread = DTensor.from_local(
        rows.to(local_part(weight).device), weight.device_mesh, weight.placements,  # type: ignore[attr-defined]
        run_check=False, shape=weight.shape, stride=stride,
    )  # fmt: skip
    return spread.full_tensor()


def plain_class(module: nn.Module) -> type[nn.Module]:
    """The class ``fully_shard`` derived ``type(module)`` from (``FSDPLinear`` -> ``Linear``), else ``type(module)``."""
    cls = type(module)
    if FSDPModule is None or not isinstance(module, FSDPModule):
        return cls
    return next(c for c in cls.__mro__ if issubclass(c, nn.Module) and not issubclass(c, FSDPModule))


def unshard_modules_(model: nn.Module, names: Sequence[str]) -> list[str]:
    """Replace each module ``names`` lists whose own tensors are sharded by a plain copy holding whole tensors.

    For inference after an FSDP2 fit: the copy has the class ``fully_shard`` started from, the module's
    own attributes (mask records included), children and whole parameters and buffers (each gathered: a
    collective, for every rank to call), and none of its hooks (``fully_shard``'s among them; inference
    code adds its own afterwards). Its FSDP state stays with the replaced module, which nothing calls any
    more; modules whose tensors are whole are left as they are.

    Returns:
        The names of the modules replaced.
    """
    replaced = []
    for name in names:
        module = model.get_submodule(name)
        own = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
        if not any(is_sharded(t) for _, t in own):
            continue
        plain_cls = plain_class(module)
        plain = plain_cls.__new__(plain_cls)
        nn.Module.__init__(plain)  # its own (empty) hook dicts, parameters, buffers and children
        fresh = set(plain.__dict__)
        plain.__dict__.update({key: value for key, value in module.__dict__.items() if _own_attribute(key, fresh)})
        plain.training = module.training
        plain._modules = dict(module._modules)
        plain._non_persistent_buffers_set = set(module._non_persistent_buffers_set)
        with torch.no_grad():
            plain._parameters = {
                key: None if p is None else nn.Parameter(whole_tensor(p), requires_grad=p.requires_grad)
                for key, p in module._parameters.items()
            }
            plain._buffers = {key: None if b is None else whole_tensor(b) for key, b in module._buffers.items()}
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, plain)
        replaced.append(name)
    return replaced


def _own_attribute(key: str, module_internals: set[str]) -> bool:
    """Whether ``key`` of a module's ``__dict__`` is its own (``in_features``, mask records), not ``nn.Module``'s
    or ``fully_shard``'s (its composable-API state and flags)."""
    return key not in module_internals and not key.startswith(("__composable_api_state_key", "_fsdp", "_is_fsdp"))


def whole_tensor(tensor: Tensor) -> Tensor:
    """``tensor`` whole: a ``DTensor`` gathered from its parts (a collective, for every process that holds a
    part to call), a plain tensor as it is."""
    return tensor.full_tensor() if is_sharded(tensor) else tensor  # type: ignore[attr-defined]


def _all_reduce_sum(tensor: Tensor, group: Any, device: torch.device) -> Tensor:
    summed = tensor.to(device, copy=True)
    dist.all_reduce(summed, group=group)
    return summed.cpu()


def _all_gather(tensor: Tensor, group: Any, device: torch.device) -> Tensor:
    mine = tensor.to(device)
    parts = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, mine, group=group)
    return torch.stack(parts).cpu()


def reducer_for(params: Sequence[MaskedWeight]) -> Reducer:
    """The reducer of the layer-wide update steps of ``params``: local when their weights are whole, else over
    the processes that shard their rows.

    Raises:
        ValueError: a weight sharded other than by rows (see `row_sharding`), a Hugging Face ``Conv1D``
            weight sharded (stored ``(in, out)``, so ``Shard(0)`` splits its inputs), or weights sharded over
            different processes, or some sharded and some whole.
    """
    shardings = [row_sharding(p.weight, p.fqn) for p in params]
    names = [p.fqn for p in params]
    sharded = [name for name, s in zip(names, shardings) if s is not None]
    if not sharded:
        return LocalReducer()
    conv1d = [p.fqn for p in params if is_hf_conv1d(p.module)]
    if conv1d:
        raise ValueError(
            f"{conv1d[:3]} are Hugging Face Conv1D weights, stored (in, out): Shard(0) splits their inputs, not "
            f"their neurons. Exclude them (exclude={conv1d[:3]!r}) or train with DDP."
        )
    whole = [name for name, s in zip(names, shardings) if s is None]
    groups = {id(s.group) for s in shardings if s is not None}
    if whole or len(groups) > 1:
        raise ValueError(
            f"the sparse weights must all be sharded over the same processes or all be whole; {sharded[:3]} are "
            f"sharded, {whole[:3]} whole ({len(groups)} process groups): apply fully_shard with one mesh to every "
            "module holding a sparse weight (or to the root module, which shards the rest)"
        )
    first = next(s for s in shardings if s is not None)
    device = local_part(params[0].weight).device
    if dist.get_backend(first.group) == "gloo":
        device = torch.device("cpu")
    return ShardReducer(
        lambda t: _all_reduce_sum(t, first.group, device), lambda t: _all_gather(t, first.group, device), first.index
    )
