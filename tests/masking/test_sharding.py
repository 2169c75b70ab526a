"""Masks of weights sharded by rows (DTensor ``Shard(0)``), in one process (a 1-rank gloo group).

One rank holds every row, so the layout logic runs without other processes: masks laid out like their
weights, caches that notice writes into a local shard, masking on the local part, and the refusals.
"""

from __future__ import annotations

import copy
import socket
from collections.abc import Iterator
from unittest import mock

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor

from lightning_srigl.kernels.sampled import sampled_product
from lightning_srigl.masking import (
    MaskedParameters,
    MaskedWeight,
    gather_rows,
    is_sharded,
    local_part,
    mask_buffer_name,
    mask_of,
    masked_weights,
    reducer_for,
    register_mask_,
    row_sharding,
    unshard_modules_,
    zero_optimizer_state_,
)
from lightning_srigl.sparsity import LocalReducer, ShardReducer
from lightning_srigl.training import SparseBackward, supports_sparse_backward
from lightning_srigl.training import sparse_backward as sparse_backward_module


@pytest.fixture(scope="module")
def mesh() -> Iterator[DeviceMesh]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()


def sharded_linear(mesh: DeviceMesh, placement: Shard | Replicate = Shard(0)) -> nn.Linear:  # noqa: B008
    layer = nn.Linear(6, 5)
    layer.weight = nn.Parameter(distribute_tensor(layer.weight.detach(), mesh, [placement]))
    return layer


def test_a_mask_is_laid_out_like_its_sharded_weight(mesh: DeviceMesh) -> None:
    layer = sharded_linear(mesh)
    mask = torch.rand(5, 6, generator=torch.Generator().manual_seed(0)) < 0.5
    buffer = register_mask_(layer, "weight", mask)
    assert isinstance(buffer, DTensor) and buffer.placements == layer.weight.placements
    assert torch.equal(local_part(buffer), mask)
    assert row_sharding(layer.weight) == row_sharding(buffer) and row_sharding(layer.weight).stop == 5
    assert torch.equal(gather_rows(local_part(buffer), layer.weight), mask)
    assert isinstance(layer.state_dict()[mask_buffer_name("weight")], DTensor)  # a sharded checkpoint holds it sharded


def test_masking_acts_on_the_local_part_and_the_cache_sees_local_writes(mesh: DeviceMesh) -> None:
    layer = sharded_linear(mesh)
    masked = MaskedParameters([MaskedWeight("", layer, "weight")])
    mask = torch.ones(5, 6, dtype=torch.bool)
    mask[:, 0] = False
    masked.install_({"weight": mask})
    masked.apply_to_weights_()
    assert (local_part(layer.weight)[:, 0] == 0).all() and (local_part(layer.weight)[:, 1:] != 0).all()
    first = masked.step_mask("weight", local_part(layer.weight))
    assert masked.step_mask("weight", local_part(layer.weight)) is first  # cached
    local_part(masked.mask("weight"))[:, 1] = False  # a write into the local shard, not through the DTensor
    masked.apply_to_weights_()
    assert (local_part(layer.weight)[:, :2] == 0).all()
    masked.set_mask_("weight", torch.ones(5, 6, dtype=torch.bool))  # this process's rows
    layer.weight.grad = distribute_tensor(torch.ones(5, 6), mesh, [Shard(0)])
    masked.apply_to_gradients_()
    assert (local_part(layer.weight.grad) == 1).all()


def test_optimizer_state_is_zeroed_on_the_local_part(mesh: DeviceMesh) -> None:
    layer = sharded_linear(mesh)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9)
    layer.weight.grad = distribute_tensor(torch.ones(5, 6), mesh, [Shard(0)])
    layer.bias.grad = torch.ones(5)
    optimizer.step()
    positions = torch.zeros(5, 6, dtype=torch.bool)
    positions[2] = True
    assert zero_optimizer_state_(optimizer, layer.weight, positions) == 1
    momentum = local_part(optimizer.state[layer.weight]["momentum_buffer"])
    assert (momentum[2] == 0).all() and (momentum[[0, 1, 3, 4]] != 0).all()


def test_the_reducer_follows_the_weights_layout(mesh: DeviceMesh) -> None:
    whole = MaskedWeight("", nn.Linear(6, 5), "weight")
    assert isinstance(reducer_for([whole]), LocalReducer)
    sharded = MaskedWeight("", sharded_linear(mesh), "weight")
    reducer = reducer_for([sharded])
    assert isinstance(reducer, ShardReducer) and reducer.sum([3, 4]) == [3, 4]
    with pytest.raises(ValueError, match="all be sharded over the same processes or all be whole"):
        reducer_for([sharded, whole])


def test_weights_not_sharded_by_rows_are_refused_with_what_works(mesh: DeviceMesh) -> None:
    by_columns = MaskedWeight("", sharded_linear(mesh, Shard(1)), "weight")
    with pytest.raises(ValueError, match=r"Tensor parallelism splits a neuron's fan-in.*tensor_parallel_size=1"):
        reducer_for([by_columns])
    with pytest.raises(ValueError, match="Shard\\(0\\) on one data-parallel mesh dimension"):
        register_mask_(by_columns.module, "weight", torch.ones(5, 6, dtype=torch.bool))
    transformers = pytest.importorskip("transformers")
    conv1d = transformers.pytorch_utils.Conv1D(5, 6)  # weight (in, out) = (6, 5)
    conv1d.weight = nn.Parameter(distribute_tensor(conv1d.weight.detach(), mesh, [Shard(0)]))
    with pytest.raises(ValueError, match="Hugging Face Conv1D.*Exclude them"):
        reducer_for([MaskedWeight("h.0.attn.c_attn", conv1d, "weight")])


def test_sharded_layers_become_plain_layers_with_whole_weights_and_masks(mesh: DeviceMesh) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    for layer in (model[0], model[2]):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    mask = torch.rand(5, 6, generator=torch.Generator().manual_seed(1)) < 0.5
    register_mask_(model[0], "weight", mask)
    assert unshard_modules_(model, ["0", "2"]) == ["0", "2"]
    for name in ("0", "2"):
        layer = model.get_submodule(name)
        assert type(layer) is nn.Linear and not layer._forward_pre_hooks
        assert not any(is_sharded(t) for t in [*layer.parameters(), *layer.buffers()])
    assert torch.equal(mask_of(model[0]), mask) and [m.fqn for m in masked_weights(model)] == ["0.weight"]
    for key, value in expected.items():
        assert torch.equal(model.state_dict()[key], value), key
    copy.deepcopy(model[0])  # inference code snapshots layers; an FSDP module refuses deepcopy
    assert unshard_modules_(model, ["0", "2"]) == []  # whole already


def test_the_sampled_backward_of_an_fsdp2_layer_gives_the_gradient_of_the_whole_layer(mesh: DeviceMesh) -> None:
    """Under ``fully_shard`` the patched forward sees the gathered weight: the gradient equals that of the same
    layer whole (bit for bit: the same kernel on the same operands), and follows the mask after ``masks_changed``."""
    torch.manual_seed(0)
    whole, x = nn.Linear(6, 5), torch.randn(7, 6)
    sharded = copy.deepcopy(whole)
    fully_shard(sharded, mesh=mesh)
    assert supports_sparse_backward(sharded, "weight") and is_sharded(sharded.weight)
    masks = [torch.rand(5, 6, generator=torch.Generator().manual_seed(seed)) < 0.5 for seed in (1, 2)]
    grads = []
    for layer in (whole, sharded):
        masked = MaskedParameters([MaskedWeight("", layer, "weight")])
        masked.install_({"weight": masks[0]})
        backward = SparseBackward(masked)
        assert backward.install() == ["weight"]
        for mask in masks:
            masked.set_mask_("weight", mask)
            backward.masks_changed()
            layer.zero_grad()
            with mock.patch.object(sparse_backward_module, "sampled_product", wraps=sampled_product) as sampled:
                layer(x).square().sum().backward()
            assert sampled.call_count == 1
            grads.append(local_part(layer.weight.grad).clone())
        backward.remove()
    for got, expected, mask in zip(grads[2:], grads[:2], masks):
        assert torch.equal(got, expected) and not got[~mask].any() and got[mask].all()
