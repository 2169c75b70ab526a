"""``PackedLinear`` and ``accelerate``'s dense-layer step: oneDNN's prepacked GEMM for the dense linear layers
no mask covers (a tied ``lm_head``), exact, sharing the parameters, rebuilt when the weight changes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_srigl.acceleration.accelerate import accelerate
from lightning_srigl.acceleration.swap import restore_dense
from lightning_srigl.condensed.layers.packed_linear import PackedLinear
from lightning_srigl.condensed.serialization import load_condensed, save_condensed
from lightning_srigl.kernels.compiled import compile_in_place, graph_breaks
from lightning_srigl.kernels.dense import onednn_linear_available, packed_weight
from lightning_srigl.masking import register_mask_
from lightning_srigl.timing import Timing

pytestmark = pytest.mark.skipif(not onednn_linear_available(), reason="this torch has no oneDNN linear")


class TiedLM(nn.Module):
    """Tokens (B, T) -> logits (B, T, vocab): an embedding, a sparse and a dense-kept layer, a head tied to
    the embedding."""

    def __init__(self, vocab: int = 50, width: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.sparse = nn.Linear(width, width)
        self.kept = nn.Linear(width, width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.kept(torch.relu(self.sparse(self.embed(tokens))))))


def tied_lm() -> TiedLM:
    torch.manual_seed(0)
    model = TiedLM().eval()
    for layer in (model.sparse, model.kept):
        mask = torch.rand(layer.weight.shape).argsort(dim=1) < 4  # 4 inputs per neuron
        register_mask_(layer, "weight", mask)
        with torch.no_grad():
            layer.weight.mul_(mask)
    return model


def packed_fastest(calls: dict) -> dict:
    """A fake timer: condensed and packed fastest, so the plan condenses and packs wherever it may."""
    return {name: Timing(1.0, 1.0) if name in ("condensed", "packed") else Timing(2.0, 2.0) for name in calls}


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(5, 24), (2, 3, 24), (1, 24)])
def test_packed_linear_equals_the_linear_it_shares_parameters_with(bias: bool, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(24, 40, bias=bias)
    packed = PackedLinear.from_linear(linear)
    x = torch.randn(*shape)
    with torch.no_grad():
        torch.testing.assert_close(packed(x), linear(x), rtol=1e-5, atol=1e-5)
    assert packed.weight is linear.weight and packed.bias is linear.bias
    assert packed.state_dict().keys() == linear.state_dict().keys()
    assert packed.to_linear().weight is linear.weight
    packed(x).sum().backward()  # tracking a gradient: F.linear
    assert linear.weight.grad is not None


@pytest.mark.parametrize(
    "edit",
    [
        lambda w: w.mul_(2),  # in place: the version counter moves
        lambda w: w.data.mul_(2),  # through .data: the checksum changes
        lambda w: w.detach().numpy().__imul__(2),  # through numpy
    ],
    ids=["in_place", "data", "numpy"],
)
def test_the_packed_weight_follows_every_edit_of_the_weight(edit) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(24, 40).requires_grad_(False)
    packed = PackedLinear.from_linear(linear)
    x = torch.randn(3, 24)
    before = packed_weight(linear.weight)
    assert packed_weight(linear.weight) is before  # kept while the weight is unchanged
    edit(linear.weight)
    torch.testing.assert_close(packed(x), linear(x), rtol=1e-5, atol=1e-5)
    assert packed_weight(linear.weight) is not before


def test_accelerate_packs_the_tied_head_and_keeps_the_tie() -> None:
    model = tied_lm()
    tokens = torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        expected = model(tokens)
    report = accelerate(model, tokens, verbose=False, timer=packed_fastest, model_repeats=0)
    assert report.dense_layers == {"head": "packed"}
    assert type(model.head) is PackedLinear and model.head.weight is model.embed.weight
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), expected, rtol=1e-5, atol=1e-5)
    assert "head" in report.summary()


def test_accelerate_leaves_dense_layers_alone_when_asked_or_slower() -> None:
    tokens = torch.randint(0, 50, (2, 7))
    model = tied_lm()
    report = accelerate(model, tokens, verbose=False, timer=packed_fastest, model_repeats=0, pack_dense=False)
    assert report.dense_layers == {} and type(model.head) is nn.Linear
    slower = lambda calls: {name: Timing(2.0, 2.0) if name == "packed" else Timing(1.0, 1.0) for name in calls}  # noqa: E731
    model = tied_lm()
    report = accelerate(model, tokens, verbose=False, timer=slower, model_repeats=0)
    assert report.dense_layers == {"head": "dense"} and type(model.head) is nn.Linear


def test_a_sparse_layer_the_plan_kept_dense_is_not_packed() -> None:
    model = tied_lm()
    dense_for_kept = lambda calls: {  # noqa: E731
        name: Timing(1.0, 1.0) if name in ("dense", "packed") else Timing(2.0, 2.0) for name in calls
    }
    report = accelerate(model, torch.randint(0, 50, (2, 7)), verbose=False, timer=dense_for_kept, model_repeats=0)
    assert {row.chosen for row in report.rows} == {"dense"}
    assert set(report.dense_layers) == {"head"}  # the two sparse layers stay the plan's masked copies
    assert type(model.sparse) is nn.Linear and type(model.kept) is nn.Linear


def test_compiled_packed_model_is_one_graph_equal_to_eager() -> None:
    model = tied_lm()
    tokens = torch.randint(0, 50, (2, 7))
    accelerate(model, tokens, verbose=False, timer=packed_fastest, model_repeats=0)
    with torch.no_grad():
        eager = model(tokens)
    assert graph_breaks(model, tokens) == 0
    compile_in_place(model, tokens)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), eager, rtol=1e-5, atol=1e-5)


def test_a_packed_layer_saves_as_itself_and_loads_bit_identical(tmp_path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(24, 40), nn.ReLU(), nn.Linear(40, 8)).eval()
    model[2] = PackedLinear.from_linear(model[2])
    x = torch.randn(3, 24)
    save_condensed(model, tmp_path / "model.pt")
    loaded = load_condensed(tmp_path / "model.pt")
    assert type(loaded[2]) is PackedLinear
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_a_packed_layer_with_a_tampered_weight_is_refused(tmp_path) -> None:
    model = nn.Sequential(PackedLinear.from_linear(nn.Linear(6, 4))).eval()
    save_condensed(model, tmp_path / "model.pt")
    payload = torch.load(tmp_path / "model.pt", weights_only=True)
    payload["state_dict"]["0.weight"] = torch.zeros(4, 5)
    torch.save(payload, tmp_path / "tampered.pt")
    with pytest.raises(ValueError, match="cannot build lightning_srigl.PackedLinear.*weight of shape"):
        load_condensed(tmp_path / "tampered.pt")


def test_restore_dense_gives_back_torch_linear_holding_the_same_parameters() -> None:
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    head = model[2]
    model[2] = PackedLinear.from_linear(head)
    restore_dense(model)
    assert type(model[2]) is nn.Linear
    assert model[2].weight is head.weight and model[2].bias is head.bias
    x = torch.randn(3, 8)
    assert torch.equal(model(x), torch.nn.functional.linear(model[1](model[0](x)), head.weight, head.bias))
