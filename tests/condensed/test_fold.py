"""Folding ablated neurons into the next layer's bias: exact where allowed, untouched elsewhere."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lightning_srigl.condensed.fold import fold_ablated_neurons
from lightning_srigl.masking import mask_of, register_mask_

ACTIVATIONS = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": lambda: nn.LeakyReLU(0.1),
    "identity": nn.Identity,
    "dropout": lambda: nn.Dropout(0.5),
}


def _ablate(layer: nn.Module, rows: list[int]) -> None:
    """Zero the weight rows (filters) of ``rows`` and give them a non-trivial bias."""
    with torch.no_grad():
        layer.weight[rows] = 0
        if layer.bias is not None:
            layer.bias[rows] = torch.linspace(-2.0, 2.0, len(rows))


def _assert_same_outputs(original: nn.Module, folded: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        torch.testing.assert_close(folded(x), original(x), rtol=1e-5, atol=1e-5)


def _mlp(act: str, widths: tuple[int, ...] = (6, 10, 8, 3), bias: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b, bias=bias))
        if i < len(widths) - 2:
            layers.append(ACTIVATIONS[act]())
    return nn.Sequential(*layers).eval()


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_mlp_fold_is_exact_and_shrinks_layers(act: str) -> None:
    torch.manual_seed(0)
    model = _mlp(act)
    _ablate(model[0], [1, 4, 7])
    _ablate(model[2], [0, 5])
    report = fold_ablated_neurons(model)
    folded = report.model
    assert (folded[0].out_features, folded[2].in_features) == (7, 7)
    assert (folded[2].out_features, folded[4].in_features) == (6, 6)
    assert folded[0].weight.shape == (7, 6) and folded[4].weight.shape == (3, 6)
    assert [(f.producer, f.consumer, f.removed, f.kept) for f in report.folded] == [("0", "2", 3, 7), ("2", "4", 2, 6)]
    assert report.kept == []
    assert model[0].out_features == 10  # the input model is untouched by default
    _assert_same_outputs(model, folded, torch.randn(5, 6))


def test_functional_activations_and_3d_inputs_fold() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2, self.fc3, self.fc4 = nn.Linear(5, 9), nn.Linear(9, 7), nn.Linear(7, 6), nn.Linear(6, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = F.dropout(F.leaky_relu(self.fc1(x), 0.2), 0.3, training=self.training)
            h = torch.tanh(self.fc2(h)).sigmoid()
            return self.fc4(F.gelu(F.silu(self.fc3(h))))

    torch.manual_seed(1)
    model = Net().eval()
    for layer, rows in ((model.fc1, [0, 8]), (model.fc2, [3]), (model.fc3, [1, 2, 5])):
        _ablate(layer, rows)
    report = fold_ablated_neurons(model)
    assert [f.through for f in report.folded] == [("leaky_relu", "dropout"), ("tanh", "sigmoid"), ("silu", "gelu")]
    _assert_same_outputs(model, report.model, torch.randn(2, 4, 5))


def test_residual_and_reused_outputs_are_not_folded() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2, self.fc3, self.fc4 = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 6), nn.Linear(6, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.fc1(x)
            h = self.fc2(torch.relu(h)) + h  # fc1's output has two users
            g = torch.relu(self.fc3(h))
            return self.fc4(g) + g.sum(-1, keepdim=True)  # the activation's output has two users

    model = Net().eval()
    _ablate(model.fc1, [2])
    _ablate(model.fc3, [0, 1])
    report = fold_ablated_neurons(model)
    assert report.folded == []
    assert [(k.producer, k.ablated) for k in report.kept] == [("fc1", 1), ("fc3", 2)]
    assert all("2 users" in k.reason for k in report.kept)
    assert report.model.fc1.out_features == 4 and report.model.fc3.out_features == 6
    _assert_same_outputs(model, report.model, torch.randn(3, 4))


@pytest.mark.parametrize(
    ("between", "reason"),
    [
        (nn.LayerNorm(6), "LayerNorm"),
        (nn.Softmax(dim=-1), "Softmax"),
        (nn.BatchNorm1d(6), "BatchNorm1d"),
        (nn.Dropout(0.5).train(), "training mode"),
    ],
)
def test_non_elementwise_ops_block_the_fold(between: nn.Module, reason: str) -> None:
    model = nn.Sequential(nn.Linear(3, 6), between, nn.Linear(6, 2))
    model.eval()
    between.train(isinstance(between, nn.Dropout))
    _ablate(model[0], [4])
    report = fold_ablated_neurons(model)
    assert report.folded == [] and reason in report.kept[0].reason


def test_layer_called_twice_is_not_folded() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(torch.relu(self.fc1(self.fc1(x))))

    model = Net()
    _ablate(model.fc1, [0])
    report = fold_ablated_neurons(model)
    assert report.folded == [] and "called 2 times" in report.kept[0].reason


def test_missing_consumer_bias_is_created_only_when_needed() -> None:
    model = _mlp("relu", (4, 5, 3), bias=False)
    _ablate(model[0], [2])  # no bias: relu(0) = 0 contributes nothing
    assert fold_ablated_neurons(model).model[2].bias is None
    model = nn.Sequential(nn.Linear(4, 5), nn.Sigmoid(), nn.Linear(5, 3, bias=False))
    _ablate(model[0], [2])  # sigmoid(b) != 0 needs a bias on the consumer
    folded = fold_ablated_neurons(model).model
    assert folded[2].bias is not None
    _assert_same_outputs(model, folded, torch.randn(2, 4))


def test_masks_are_checked_and_sliced() -> None:
    torch.manual_seed(2)
    model = _mlp("relu", (4, 6, 3))
    mask0 = torch.rand(6, 4) > 0.3
    mask0[[1, 3]] = False
    mask2 = torch.ones(3, 6, dtype=torch.bool)
    with torch.no_grad():
        model[0].weight.mul_(mask0)
    register_mask_(model[2], "weight", mask2)
    report = fold_ablated_neurons(model, {"0.weight": mask0})
    assert torch.equal(report.masks["0"], mask0[[0, 2, 4, 5]])
    assert report.masks["2"].shape == (3, 4) and mask_of(report.model[2]).shape == (3, 4)
    with pytest.raises(ValueError, match="non-zero where its mask is False"):
        fold_ablated_neurons(model, {"0": torch.zeros(6, 4, dtype=torch.bool)})
    with pytest.raises(ValueError, match="not a Linear/Conv layer"):
        fold_ablated_neurons(model, {"1": mask0})


def test_cascade_folds_rows_emptied_by_an_earlier_fold() -> None:
    model = _mlp("tanh", (3, 4, 4, 2))
    _ablate(model[0], [0, 1])
    with torch.no_grad():
        model[2].weight[0] = torch.tensor([1.5, -2.0, 0.0, 0.0])  # only reads the ablated inputs
    report = fold_ablated_neurons(model)
    assert [(f.producer, f.removed) for f in report.folded] == [("0", 2), ("2", 1)]
    _assert_same_outputs(model, report.model, torch.randn(4, 3))


def test_inplace_swaps_new_modules_into_the_given_model_and_keeps_the_originals() -> None:
    model = _mlp("relu", (4, 5, 3))
    _ablate(model[0], [0])
    first, last = model[0], model[2]
    report = fold_ablated_neurons(model, inplace=True)
    assert report.model is model and model[0].out_features == 4 and model[2].in_features == 4
    assert report.replaced == {"0": first, "2": last} and first.out_features == 5 and last.in_features == 5


def test_untraceable_forward_raises_with_advice() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) if x.sum() > 0 else x

    with pytest.raises(ValueError, match="nor any of its submodules traces"):
        fold_ablated_neurons(Branchy())


def test_parts_of_an_untraceable_model_are_folded_where_they_trace() -> None:
    class Untraceable(nn.Module):  # len(x) on a proxy fails, as in the ViT example and Hugging Face models
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList([_mlp("gelu", (4, 6, 4)), _mlp("relu", (4, 5, 4))])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for block in self.blocks[: len(x)]:
                x = x + block(x)
            return x

    model = Untraceable().eval()
    _ablate(model.blocks[0][0], [1, 4])
    _ablate(model.blocks[1][0], [0])
    report = fold_ablated_neurons(model)
    assert [(f.producer, f.consumer, f.removed) for f in report.folded] == [
        ("blocks.0.0", "blocks.0.2", 2),
        ("blocks.1.0", "blocks.1.2", 1),
    ]
    assert report.model.blocks[0][0].out_features == 4 and report.model.blocks[1][2].in_features == 4
    _assert_same_outputs(model, report.model, torch.randn(3, 4))


def _conv_net(consumer: nn.Module) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), consumer)


def test_conv_bn_relu_pointwise_conv_folds_exactly() -> None:
    torch.manual_seed(3)
    model = _conv_net(nn.Conv2d(6, 4, 1))
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
        model[1].weight.uniform_(0.5, 1.5)
    model.eval()
    _ablate(model[0], [0, 3])
    report = fold_ablated_neurons(model)
    folded = report.model
    assert folded[0].out_channels == 4 and folded[1].num_features == 4 and folded[3].in_channels == 4
    assert report.folded[0].through == ("1", "2")
    _assert_same_outputs(model, folded, torch.randn(2, 3, 7, 7))


def test_conv_global_pool_flatten_linear_folds_exactly() -> None:
    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.pool, self.fc = nn.Conv2d(3, 5, 3, stride=2), nn.AdaptiveAvgPool2d(1), nn.Linear(5, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.flatten(self.pool(F.silu(self.conv(x))), 1))

    torch.manual_seed(4)
    model = Head().eval()
    _ablate(model.conv, [1, 2])
    report = fold_ablated_neurons(model)
    assert report.model.fc.in_features == 3 and report.folded[0].consumer == "fc"
    _assert_same_outputs(model, report.model, torch.randn(2, 3, 9, 9))


@pytest.mark.parametrize(
    ("consumer", "reason"),
    [
        (nn.Conv2d(6, 4, 3, padding=1), "not spatially constant"),
        (nn.Conv2d(6, 4, 1, padding=1), "padding"),
    ],
)
def test_conv_consumers_that_break_spatial_constancy_are_not_folded(consumer: nn.Module, reason: str) -> None:
    model = _conv_net(consumer).eval()
    _ablate(model[0], [2])
    report = fold_ablated_neurons(model)
    assert report.folded == [] and reason in report.kept[0].reason and report.model[0].out_channels == 6


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    widths=st.lists(st.integers(1, 9), min_size=3, max_size=5),
    act=st.sampled_from(sorted(ACTIVATIONS)),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_property_folded_mlp_equals_masked_mlp(widths: list[int], act: str, bias: bool, seed: int) -> None:
    torch.manual_seed(seed)
    model = _mlp(act, tuple(widths), bias=bias)
    for layer in model[:-1:2]:
        rows = torch.randperm(layer.out_features)[: torch.randint(0, layer.out_features + 1, ()).item()]
        _ablate(layer, rows.tolist())
    report = fold_ablated_neurons(model)
    assert all(f.kept > 0 for f in report.folded)
    _assert_same_outputs(model, report.model, torch.randn(3, widths[0]))


def test_batchnorm_after_a_masked_conv_folds_exactly_and_keeps_the_mask() -> None:
    from lightning_srigl.condensed.batchnorm_fold import fold_batchnorms
    from lightning_srigl.masking import bind_masks, mask_of

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 1, bias=False), nn.BatchNorm2d(4)
    )
    mask = torch.rand(6, 3, 3, 3) < 0.4
    mask[2] = False  # an ablated filter: outputs BN(bias) everywhere
    bind_masks(model, {"0.weight": mask})
    with torch.no_grad():
        model[0].weight.mul_(mask)
        for bn in (model[1], model[4]):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.normal_()
            bn.bias.normal_()
    model.eval()
    x = torch.randn(2, 3, 7, 7)
    with torch.no_grad():
        expected = model(x)
    originals = {"0": model[0], "1": model[1]}
    replaced = fold_batchnorms(model)
    assert replaced == originals  # the unmasked conv 3 keeps its BatchNorm
    assert isinstance(model[1], nn.Identity) and isinstance(model[4], nn.BatchNorm2d)
    assert torch.equal(mask_of(model[0], "weight"), mask) and bool((model[0].weight[~mask] == 0).all())
    _assert_same_outputs_to(expected, model, x)


def test_batchnorm_with_another_user_of_the_conv_output_is_kept() -> None:
    from lightning_srigl.condensed.batchnorm_fold import fold_batchnorms
    from lightning_srigl.masking import bind_masks

    class Both(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return self.bn(y) + y

    model = Both().eval()
    bind_masks(model, {"conv.weight": torch.ones(2, 2, 1, 1, dtype=torch.bool)})
    assert fold_batchnorms(model) == {} and isinstance(model.bn, nn.BatchNorm2d)


def _assert_same_outputs_to(expected: torch.Tensor, model: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
