"""One-shot conversion to N:M / constant fan-in, with AdaPrune-style reconstruction."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_srigl.convert import (
    convert_and_evaluate,
    convert_to_structured,
    evaluate_accuracy,
)
from lightning_srigl.masking import MaskedParameters, masked_weights, select_parameters
from lightning_srigl.sparsity.metrics import is_constant_fan_in
from lightning_srigl.sparsity.nm import is_nm, nm_group_view


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)
    )


def _convnet() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 6, 1), nn.ReLU(), nn.Conv2d(6, 8, 1), nn.Flatten(), nn.Linear(8 * 4 * 4, 4),
    )  # fmt: skip


def _blobs(n: int = 512, seed: int = 0) -> TensorDataset:
    """Four Gaussian blobs in 8-D, labels = blob index."""
    generator = torch.Generator().manual_seed(seed)
    centers = torch.randn(4, 8, generator=torch.Generator().manual_seed(123)) * 2.0
    y = torch.randint(0, 4, (n,), generator=generator)
    return TensorDataset(centers[y] + torch.randn(n, 8, generator=generator), y)


def _trained_mlp() -> nn.Sequential:
    model = _mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for x, y in DataLoader(_blobs(), batch_size=64):
        for _ in range(20):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    return model


def _weight_and_mask(model: nn.Module, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    module = model.get_submodule(name.rpartition(".")[0])
    return module.weight, module.weight_sparsity_mask


def test_nm_conversion_is_exact_and_skips_unfit_layers() -> None:
    model = _convnet()
    report = convert_to_structured(model, n=2, m=4)
    assert [layer.name for layer in report.layers] == ["2.weight", "4.weight"]
    assert set(report.skipped) == {"0.weight", "6.weight", "8.weight"}
    assert "not divisible by m=4" in report.skipped["6.weight"]
    for layer in report.layers:
        weight, mask = _weight_and_mask(model, layer.name)
        assert is_nm(mask, 2, 4) and is_nm(weight, 2, 4) and not weight[~mask].any()
        assert layer.density == 0.5 and 0.5 < layer.kept_magnitude_fraction < 1.0
        assert layer.mse_before is None  # no calibration data: magnitude pruning only
    assert not hasattr(model[6], "weight_sparsity_mask") and (model[6].weight != 0).all()


def test_constant_fan_in_conversion_keeps_the_same_count_per_row() -> None:
    model = _mlp()
    report = convert_to_structured(model, structure="constant_fan_in", sparsity=0.75)
    for layer in report.layers:
        weight, mask = _weight_and_mask(model, layer.name)
        assert is_constant_fan_in(mask) and (mask.sum(dim=1) == 8).all() and not weight[~mask].any()
        assert layer.structure == "fan-in 8"


def test_unstructured_sparse_model_is_converted_over_its_existing_masks() -> None:
    model = _mlp()
    sparse = select_parameters(model, include=["2.weight"])
    random_mask = torch.rand(32, 32, generator=torch.Generator().manual_seed(0)) < 0.3
    MaskedParameters(sparse).install_({"2.weight": random_mask})
    with torch.no_grad():
        model[2].weight.mul_(random_mask)
    convert_to_structured(model, include=["2.weight"])
    weight, mask = _weight_and_mask(model, "2.weight")
    assert is_nm(mask, 2, 4) and not weight[~mask].any()


def test_absorb_mean_preserves_each_group_sum() -> None:
    model = _mlp()
    group_sums = nm_group_view(model[2].weight.detach().clone(), 4).sum(dim=1)
    convert_to_structured(model, include=["2.weight"], absorb_mean=True)
    torch.testing.assert_close(nm_group_view(model[2].weight.detach(), 4).sum(dim=1), group_sums)


def test_reconstruction_lowers_every_layer_mse() -> None:
    model = _trained_mlp()
    calibration = [x for x, _ in DataLoader(_blobs(seed=1), batch_size=64)][:4]
    report = convert_to_structured(model, calibration_batches=calibration, reconstruction_steps=100)
    assert len(report.layers) == 2
    for layer in report.layers:
        assert layer.mse_after < 0.7 * layer.mse_before, layer
        weight, mask = _weight_and_mask(model, layer.name)
        assert is_nm(weight, 2, 4) and not weight[~mask].any()


def test_accuracy_is_reported_before_and_after_on_a_synthetic_task() -> None:
    trained = _trained_mlp()
    magnitude_only = copy.deepcopy(trained)
    test_loader = DataLoader(_blobs(seed=2), batch_size=128)
    calibration = DataLoader(_blobs(seed=1), batch_size=64)
    report = convert_and_evaluate(
        trained, test_loader, calibration, calibration_batches=4, n=1, m=4, reconstruction_steps=100
    )
    convert_to_structured(magnitude_only, n=1, m=4)
    assert report.accuracy_before == evaluate_accuracy(copy.deepcopy(_trained_mlp()), test_loader) > 0.9
    assert report.accuracy_after == evaluate_accuracy(trained, test_loader)
    assert report.accuracy_after > evaluate_accuracy(magnitude_only, test_loader)  # 0.955 vs 0.904
    assert "accuracy:" in report.format_table()


def test_explicitly_included_layer_that_cannot_be_nm_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"6\.weight is selected by include=.*not divisible by m=4"):
        convert_to_structured(_convnet(), include=["2.weight", "6.weight"])


def test_every_spelling_of_a_structure_converts_alike() -> None:
    """``structure="2:4"``, ``structure="n:m", n=2, m=4`` and ``n=2, m=4`` are one structure."""
    masks = []
    for kwargs in ({"structure": "2:4"}, {"structure": "n:m", "n": 2, "m": 4}, {"n": 2, "m": 4}, {}):
        model = _mlp()
        convert_to_structured(model, **kwargs)
        masks.append([m.mask for m in masked_weights(model)])
    assert all(len(a) == len(masks[0]) and all(torch.equal(x, y) for x, y in zip(a, masks[0])) for a in masks)


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="Unknown structure"):
        convert_to_structured(_mlp(), structure="2-4")
    with pytest.raises(ValueError, match=r"contradicts n=1, m=4"):
        convert_to_structured(_mlp(), structure="2:4", n=1, m=4)
    with pytest.raises(ValueError, match="needs sparsity"):
        convert_to_structured(_mlp(), structure="constant_fan_in")
