"""accelerate() on the kinds beyond nn.Linear: convolutions, attention, Hugging Face Conv1D, tied weights."""

import pytest
import torch
from torch import nn

from lightning_srigl.condensed.accelerate import accelerate
from lightning_srigl.condensed.attention import ProjectedAttention
from lightning_srigl.condensed.conv import CondensedConv1d, CondensedConv2d
from lightning_srigl.condensed.layer_call import LayerCall, record_calls
from lightning_srigl.condensed.linear import CondensedLinear
from lightning_srigl.condensed.registry import accelerated_layers, sparse_layers
from lightning_srigl.masking import bind_masks, masked_weights, neuron_major
from tests.condensed.conv_cases import assert_close_to_scale
from tests.condensed.test_compiled import condensed_everywhere

CANDIDATES = ("dense", "condensed")


class Conv1D(nn.Module):
    """Stand-in for transformers.pytorch_utils.Conv1D (same name, attributes and forward)."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf, self.nx = nf, nx
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.2)
        self.bias = nn.Parameter(torch.randn(nf))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).reshape(*x.shape[:-1], self.nf)


def sparsify(model: nn.Module, density: float = 0.3, ablated: float = 0.25, seed: int = 0) -> nn.Module:
    """Constant-fan-in masks with ablated neurons on every sparsifiable weight (the last layer keeps its
    neurons), bound to the model and applied to its weights."""
    from lightning_srigl.masking import select_parameters

    g = torch.Generator().manual_seed(seed)
    params = select_parameters(model)
    masks = {}
    for i, p in enumerate(params):
        rows = p.rows(p.weight).detach().flatten(1)
        out, fan_in = rows.shape
        keep = max(1, round(density * fan_in))
        order = torch.argsort(torch.rand(out, fan_in, generator=g), dim=1)[:, :keep]
        mask = torch.zeros(out, fan_in, dtype=torch.bool).scatter_(1, order, True)
        if i < len(params) - 1:
            mask[torch.rand(out, generator=g) < ablated] = False
        masks[p.fqn] = p.rows(mask.view(p.rows(p.weight).shape))
    bind_masks(model, masks)
    with torch.no_grad():
        for masked in masked_weights(model):
            masked.weight.mul_(masked.mask)
    return model.eval()


def accelerate_and_compare(model: nn.Module, *inputs: torch.Tensor) -> object:
    with torch.no_grad():
        expected = model(*inputs)
    report = accelerate(
        model, inputs if len(inputs) > 1 else inputs[0], candidates=CANDIDATES, warmup=0, repeats=1, verbose=False
    )
    with torch.no_grad():
        out = model(*inputs)
    assert_close_to_scale(out, expected)
    for row in report.rows:
        assert "condensed" in row.times, f"{row.name}: condensed skipped ({row.skipped})"
    return report


def test_convolutions_are_candidates_and_the_accelerated_cnn_is_exact():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1, groups=2), nn.ReLU(),
        nn.Conv2d(32, 32, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )  # fmt: skip
    sparsify(model)
    report = accelerate_and_compare(model, torch.randn(2, 3, 12, 12))
    assert {row.name for row in report.rows} == {"0", "3", "5", "9"}
    assert {report.rows[0].in_features, report.rows[0].out_features} == {27, 16}
    assert all(
        type(model.get_submodule(row.name)) in (CondensedConv2d, CondensedLinear, nn.Conv2d, nn.Linear)
        for row in report.rows
    )


def test_conv1d_is_a_candidate():
    torch.manual_seed(0)
    model = sparsify(nn.Sequential(nn.Conv1d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv1d(8, 8, 5, stride=2)))
    report = accelerate_and_compare(model, torch.randn(3, 4, 20))
    for row in report.rows:
        expected = CondensedConv1d if row.chosen == "condensed" else nn.Conv1d
        assert type(model.get_submodule(row.name)) is expected


class TinyEncoder(nn.Module):
    def __init__(self, batch_first: bool = True) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(32, 4, batch_first=batch_first)
        self.mlp = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(x, x, x, need_weights=False)[0]
        return x + self.mlp(x)


@pytest.mark.parametrize("batch_first", [True, False])
def test_attention_projections_are_accelerated_exactly(batch_first):
    torch.manual_seed(0)
    model = sparsify(TinyEncoder(batch_first))
    assert "attention" in sparse_layers(model)
    report = accelerate_and_compare(model, torch.randn(2, 9, 32))
    assert "attention" in {row.name for row in report.rows}
    attention_row = next(row for row in report.rows if row.name == "attention")
    assert (attention_row.in_features, attention_row.out_features) == (32, 96)
    if attention_row.chosen == "condensed":
        projected = model.attention
        assert isinstance(projected, ProjectedAttention) and isinstance(projected.in_proj, CondensedLinear)
        assert isinstance(projected.out_proj, CondensedLinear)


def test_hugging_face_conv1d_is_a_sparse_kind_by_duck_typing():
    torch.manual_seed(0)
    model = sparsify(nn.Sequential(Conv1D(24, 8), nn.GELU(), Conv1D(8, 24)))
    masked = masked_weights(model)[0]
    assert masked.mask.shape == (8, 24)  # the Conv1D weight's own (in, out) shape
    assert bool((neuron_major(model[0], masked.mask).sum(1) > 0).any())
    report = accelerate_and_compare(model, torch.randn(2, 5, 8))
    assert [(row.in_features, row.out_features) for row in report.rows] == [(8, 24), (24, 8)]


def test_tied_layers_are_left_as_they_are():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 4))
    model[2].weight = model[0].weight
    with pytest.warns(UserWarning, match="tied"):
        sparsify(model)
    bind_masks(model, {"0.weight": torch.ones(8, 8, dtype=torch.bool)})  # opted in by hand
    with pytest.warns(UserWarning, match=r"0 \(tied to 2.weight\).*break the tie"):
        accelerate(model, torch.randn(2, 8), candidates=CANDIDATES, warmup=0, repeats=1, verbose=False)
    assert model[2].weight is model[0].weight
    assert set(accelerated_layers(model)) == {"3"}


def test_an_attention_call_is_resized_along_its_batch_dimension():
    q = torch.randn(5, 2, 8)  # (L, B, E): batch_first=False
    padding = torch.zeros(2, 5, dtype=torch.bool)
    call = LayerCall((q, q, q), {"key_padding_mask": padding, "need_weights": False})
    resized = call.resized(3, {0: 1, 1: 1, 2: 1, "key_padding_mask": 0})
    assert resized.args[0].shape == (5, 3, 8) and resized.kwargs["key_padding_mask"].shape == (3, 5)
    assert resized.kwargs["need_weights"] is False
    assert call.resized(None, {}) is call
    assert resized.args[0] is resized.args[1] is resized.args[2]  # still a self-attention call


def test_a_recorded_self_attention_call_keeps_one_tensor_and_its_candidate_projects_once():
    torch.manual_seed(0)
    model = sparsify(TinyEncoder(True))
    calls: dict[str, LayerCall] = {}
    handles = record_calls({"attention": model.attention}, calls)
    with torch.no_grad():
        model(torch.randn(2, 9, 32))
    for handle in handles:
        handle.remove()
    call = calls["attention"]
    assert call.args[0] is call.args[1] is call.args[2]  # detached once: the planner times self-attention
    moved = call.to("cpu").map(lambda t: t.to(torch.float32))
    assert moved.args[0] is moved.args[1] is moved.args[2]
    projections = []
    accelerate(model, torch.randn(2, 9, 32), verbose=False, model_repeats=0, timer=condensed_everywhere)
    model.attention.in_proj.register_forward_hook(lambda *_: projections.append(1))
    with torch.no_grad():
        call(model.attention)
    assert isinstance(model.attention, ProjectedAttention) and len(projections) == 1
