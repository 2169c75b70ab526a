"""The mask record: which weights of a model are sparse, with which mask, through copies and loads."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from lightning_srigl.masking import (
    accept_masks_on_load,
    bind_masks,
    mask_of,
    masked_weights,
    register_mask_,
    remove_mask_,
    remove_masks_,
)


def model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3), nn.MultiheadAttention(4, 2))


def test_masked_weights_list_module_name_module_param_and_mask_in_order() -> None:
    net = model()
    mask0 = torch.rand(6, 4) > 0.5
    register_mask_(net[3], "in_proj_weight", torch.ones(12, 4, dtype=torch.bool))
    register_mask_(net[0], "weight", mask0)
    listed = masked_weights(net)
    assert [(m.module_name, m.param_name, m.fqn) for m in listed] == [
        ("0", "weight", "0.weight"),
        ("3", "in_proj_weight", "3.in_proj_weight"),
    ]
    assert listed[0].module is net[0] and listed[0].weight is net[0].weight
    assert torch.equal(listed[0].mask, mask0) and listed[0].mask.dtype == torch.bool
    assert listed[1].mask_key == "3.in_proj_weight_sparsity_mask" and listed[1].mask_key in net.state_dict()


def test_a_buffer_that_merely_looks_like_a_mask_is_not_one() -> None:
    net = model()
    net[2].register_buffer("weight_sparsity_mask", torch.ones(3, 6, dtype=torch.bool))
    assert masked_weights(net) == [] and mask_of(net[2]) is None


def test_the_record_survives_deepcopy_pickling_and_to_empty() -> None:
    net = model()
    register_mask_(net[2], "weight", torch.rand(3, 6) > 0.5)
    buffer = io.BytesIO()
    torch.save(net, buffer)
    buffer.seek(0)
    copies = [
        copy.deepcopy(net),
        torch.load(buffer, weights_only=False),
        copy.deepcopy(net).to("meta").to_empty(device="cpu"),
    ]
    for other in copies:
        assert [m.fqn for m in masked_weights(other)] == ["2.weight"]
        assert mask_of(other[2]) is not mask_of(net[2])
    assert torch.equal(mask_of(copies[0][2]), mask_of(net[2]))


def test_tied_weights_are_listed_once_and_removal_leaves_weights_alone() -> None:
    net = model()
    tied = nn.Linear(4, 6)
    tied.weight = net[0].weight
    holder = nn.ModuleDict({"a": net[0], "b": tied})
    register_mask_(net[0], "weight", torch.ones(6, 4, dtype=torch.bool))
    register_mask_(tied, "weight", torch.ones(6, 4, dtype=torch.bool))
    assert [m.fqn for m in masked_weights(holder)] == ["a.weight"]
    weight = net[0].weight.detach().clone()
    remove_mask_(net[0])
    assert mask_of(net[0]) is None and "weight_sparsity_mask" not in net[0].state_dict()
    assert torch.equal(net[0].weight, weight)
    remove_masks_(holder)
    assert masked_weights(holder) == []


def test_bind_masks_names_weights_by_fully_qualified_name() -> None:
    net = model()
    mask = torch.rand(3, 6) > 0.5
    (bound,) = bind_masks(net, {"2.weight": mask})
    assert bound.fqn == "2.weight" and torch.equal(mask_of(net[2]), mask)
    with pytest.raises(KeyError, match="names no module"):
        bind_masks(net, {"9.weight": mask})
    with pytest.raises(ValueError, match=r"shape \(6, 3\), expected \(3, 6\)"):
        bind_masks(net, {"2.weight": mask.T})


def test_accept_masks_on_load_installs_only_the_masks_a_state_dict_carries() -> None:
    trained = model()
    mask = torch.rand(3, 6) > 0.5
    register_mask_(trained[2], "weight", mask)
    fresh = model()
    with pytest.raises(RuntimeError, match="Unexpected key"):
        fresh.load_state_dict(trained.state_dict())
    handle = accept_masks_on_load(fresh)
    assert masked_weights(fresh) == []  # nothing is made up before a load
    fresh.load_state_dict(trained.state_dict())
    assert [m.fqn for m in masked_weights(fresh)] == ["2.weight"] and torch.equal(mask_of(fresh[2]), mask)
    handle.remove()
    plain = model()
    handle = accept_masks_on_load(plain)
    plain.load_state_dict(model().state_dict())  # a dense state dict installs no mask
    assert masked_weights(plain) == []


def test_a_loaded_mask_of_the_wrong_shape_or_dtype_is_rejected() -> None:
    net = model()
    register_mask_(net[2], "weight", torch.ones(3, 6, dtype=torch.bool))
    state = net.state_dict()
    with pytest.raises(ValueError, match="different architecture"):
        net.load_state_dict({**state, "2.weight_sparsity_mask": torch.ones(6, 3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="bool tensors"):
        net.load_state_dict({**state, "2.weight_sparsity_mask": torch.ones(3, 6)})
