"""Mask buffers: installation, application, state_dict round trips and misfit checkpoints."""

import pytest
import torch
from torch import nn

from lightning_srigl.masking import MaskedParameters, masked_weights, select_parameters


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Conv1d(1, 2, 3))


def _random_masks(mp: MaskedParameters, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {p.fqn: torch.rand(p.shape, generator=g) < 0.5 for p in mp.params}


def _installed() -> tuple[nn.Sequential, MaskedParameters, dict[str, torch.Tensor]]:
    model = _model()
    mp = MaskedParameters(select_parameters(model))
    masks = _random_masks(mp)
    mp.install_(masks)
    return model, mp, masks


def test_masks_are_persistent_bool_buffers_in_the_state_dict() -> None:
    model, mp, masks = _installed()
    sd = model.state_dict()
    assert set(k for k in sd if k.endswith("_mask")) == {"0.weight_sparsity_mask", "2.weight_sparsity_mask"}
    assert sd["0.weight_sparsity_mask"].dtype == torch.bool
    assert torch.equal(sd["0.weight_sparsity_mask"], masks["0.weight"])
    assert [m.fqn for m in masked_weights(model)] == mp.fqns == ["0.weight", "2.weight"]
    assert model.half().get_buffer("0.weight_sparsity_mask").dtype == torch.bool


def test_apply_to_weights_and_gradients_zero_inactive_positions() -> None:
    model, mp, masks = _installed()
    model(torch.randn(4, 1, 6)).sum().backward()
    before = {fqn: (mp.param(fqn).detach().clone(), mp.param(fqn).grad.clone()) for fqn in masks}
    mp.apply_to_weights_()
    mp.apply_to_gradients_()
    for fqn, mask in masks.items():
        param, (weight, grad) = mp.param(fqn), before[fqn]
        assert torch.all(param[~mask] == 0) and torch.all(param.grad[~mask] == 0)
        assert torch.equal(param[mask], weight[mask]) and torch.equal(param.grad[mask], grad[mask])


def test_non_finite_values_at_inactive_positions_become_zero() -> None:
    model, mp, masks = _installed()
    weight = mp.param("0.weight")
    weight.grad = torch.full_like(weight, float("inf"))
    with torch.no_grad():
        weight.fill_(float("nan"))
    mp.apply_to_weights_()
    mp.apply_to_gradients_()
    inactive = ~masks["0.weight"]
    assert torch.all(weight[inactive] == 0) and torch.all(weight.grad[inactive] == 0)


def test_set_mask_updates_the_buffer_in_place() -> None:
    model, mp, _ = _installed()
    buffer = mp.mask("0.weight")
    new = torch.zeros(5, 6, dtype=torch.bool)
    new[:, 0] = True
    mp.set_mask_("0.weight", new)
    assert mp.mask("0.weight") is buffer and torch.equal(buffer, new)
    with pytest.raises(ValueError, match="expected \\(5, 6\\)"):
        mp.set_mask_("0.weight", torch.ones(6, 5, dtype=torch.bool))
    with pytest.raises(KeyError, match="not a sparse parameter"):
        mp.mask("1.weight")


def test_state_dict_round_trip_restores_masks() -> None:
    model, _, masks = _installed()
    fresh = _model()
    fresh_mp = MaskedParameters(select_parameters(fresh))
    fresh_mp.install_({fqn: torch.ones_like(m) for fqn, m in masks.items()})
    fresh.load_state_dict(model.state_dict())
    assert all(torch.equal(fresh_mp.mask(fqn), m) for fqn, m in masks.items())


def test_loading_a_mask_of_the_wrong_shape_names_it() -> None:
    model, _, _ = _installed()
    sd = model.state_dict()
    sd["0.weight_sparsity_mask"] = torch.ones(5, 7, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"'0\.weight_sparsity_mask' has shape \(5, 7\).*\(5, 6\)"):
        model.load_state_dict(sd)


def test_loading_a_non_bool_mask_is_rejected() -> None:
    model, _, _ = _installed()
    sd = model.state_dict()
    sd["2.weight_sparsity_mask"] = sd["2.weight_sparsity_mask"].float()
    with pytest.raises(ValueError, match="bool"):
        model.load_state_dict(sd)


def test_check_compatible_reports_missing_and_misfit_masks() -> None:
    model, mp, _ = _installed()
    sd = model.state_dict()
    mp.check_compatible(sd)
    del sd["0.weight_sparsity_mask"]
    sd["2.weight_sparsity_mask"] = torch.ones(1, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"'0\.weight_sparsity_mask' is missing; '2\.weight_sparsity_mask' has shape"):
        mp.check_compatible(sd)


def _keep_bits(mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, -1, 0).to(torch.int32)


def test_step_mask_is_made_once_and_follows_in_place_changes_and_state_dict_loads() -> None:
    model, mp, masks = _installed()
    weight = mp.param("0.weight")
    first = mp.step_mask("0.weight", weight)
    assert torch.equal(first, _keep_bits(masks["0.weight"]))
    assert mp.step_mask("0.weight", weight) is first  # cached: nothing is converted per step
    mp.set_mask_("0.weight", torch.ones(5, 6, dtype=torch.bool))
    assert torch.equal(mp.step_mask("0.weight", weight), _keep_bits(torch.ones(5, 6, dtype=torch.bool)))
    sd = model.state_dict()
    sd["0.weight_sparsity_mask"] = masks["0.weight"]
    model.load_state_dict(sd)
    assert torch.equal(mp.step_mask("0.weight", weight), _keep_bits(masks["0.weight"]))
    mp.install_({fqn: ~m for fqn, m in masks.items()})  # new buffer objects
    assert torch.equal(mp.step_mask("2.weight", mp.param("2.weight")), _keep_bits(~masks["2.weight"]))
    half = weight.detach().half()
    assert mp.step_mask("0.weight", half).dtype == torch.int16  # as wide as the tensor it zeroes


def test_reinstalling_does_not_stack_load_hooks() -> None:
    model, mp, masks = _installed()
    mp.install_(masks)
    assert len(model[0]._load_state_dict_pre_hooks) == 1
