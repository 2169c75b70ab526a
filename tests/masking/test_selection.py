"""Parameter selection by layer type and fully-qualified name patterns."""

import pytest
import torch
from torch import nn

from lightning_srigl.masking import (
    MaskedWeight,
    SparseParameter,
    mask_of,
    masked_weights,
    matches,
    register_mask_,
    select_parameters,
)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(2, 4, 3)
        self.conv2 = nn.Conv2d(4, 4, 3)
        self.conv3 = nn.Conv3d(4, 4, 1)
        self.norm = nn.LayerNorm(8)
        self.attn = nn.MultiheadAttention(8, 2)
        self.head = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))


def _fqns(model: nn.Module, **kwargs) -> list[str]:
    return [p.fqn for p in select_parameters(model, **kwargs)]


def test_default_selects_weights_of_supported_layers_in_order() -> None:
    assert _fqns(_Net()) == [
        "conv1.weight",
        "conv2.weight",
        "conv3.weight",
        "attn.in_proj_weight",
        "attn.out_proj.weight",
        "head.0.weight",
        "head.2.weight",
    ]


def test_mha_with_separate_kv_dims_selects_q_k_v_projections() -> None:
    mha = nn.MultiheadAttention(8, 2, kdim=4, vdim=6)
    assert _fqns(mha) == ["q_proj_weight", "k_proj_weight", "v_proj_weight", "out_proj.weight"]
    assert [tuple(p.shape) for p in select_parameters(mha)][:3] == [(8, 8), (8, 4), (8, 6)]


def test_sparse_parameter_exposes_the_live_parameter() -> None:
    net = _Net()
    param = select_parameters(net, include=["head.2.weight"])[0]
    assert param.param is net.head[2].weight
    assert param.shape == torch.Size([3, 8])
    assert param.module is net.head[2]


def test_include_and_exclude_patterns() -> None:
    net = _Net()
    assert _fqns(net, include=["head.*"]) == ["head.0.weight", "head.2.weight"]
    assert _fqns(net, include=["head.*", "attn.*"], exclude=["*out_proj*"]) == [
        "attn.in_proj_weight",
        "head.0.weight",
        "head.2.weight",
    ]


def test_include_pattern_matching_nothing_lists_available_names() -> None:
    with pytest.raises(ValueError, match=r"\['fc\.\*'\].*available names: conv1\.weight"):
        select_parameters(_Net(), include=["fc.*"])


def test_exclude_pattern_matching_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="exclude pattern"):
        select_parameters(_Net(), exclude=["classifier.weight"])


def test_include_naming_an_unsupported_layer_says_so() -> None:
    with pytest.raises(ValueError, match=r"norm\.weight \(LayerNorm\).*Supported layers"):
        select_parameters(_Net(), include=["norm.weight"])


def test_biases_are_never_selected() -> None:
    with pytest.raises(ValueError, match="cannot be sparse"):
        select_parameters(_Net(), include=["head.0.bias"])


def test_excluding_everything_is_an_error() -> None:
    with pytest.raises(ValueError, match="No parameter is left"):
        select_parameters(nn.Linear(2, 2), exclude=["*"])


def test_tied_weights_stay_dense_with_one_warning_unless_named_exactly() -> None:
    a, b = nn.Linear(4, 4), nn.Linear(4, 4)
    b.weight = a.weight
    model = nn.Sequential(a, b, nn.Linear(4, 2))
    with pytest.warns(
        UserWarning, match=r"\['0.weight'\] are tied weights \(0.weight = 1.weight\).*include=\[..., '0.weight'\]"
    ):
        assert _fqns(model) == ["2.weight"]
    assert _fqns(model, include=["0.weight", "2.*"]) == ["0.weight", "2.weight"]  # opted in: selected once


def test_a_language_model_head_tied_to_its_embedding_is_left_dense() -> None:
    class LM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.body = nn.Linear(4, 4)
            self.head = nn.Linear(4, 10, bias=False)
            self.head.weight = self.embed.weight

    with pytest.warns(UserWarning, match="embed.weight = head.weight"):
        assert _fqns(LM()) == ["body.weight"]


def test_layers_the_selection_cannot_handle_are_named_in_one_warning() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ConvTranspose2d(4, 4, 3), nn.Bilinear(4, 4, 4), nn.Embedding(3, 4))
    with pytest.warns(UserWarning, match=r"cannot handle stay dense \(ConvTranspose2d: 1; Bilinear: 2\)") as record:
        assert _fqns(model) == ["0.weight"]
    assert len([w for w in record if "cannot handle" in str(w.message)]) == 1


def test_recurrent_layers_are_named_among_the_unsupported_ones() -> None:
    """An RNN's weights are ``weight_ih_l0``/``weight_hh_l0``: the warning used to leave them out."""
    model = nn.ModuleDict({"lstm": nn.LSTM(4, 4), "gru": nn.GRU(4, 4), "rnn": nn.RNN(4, 4), "head": nn.Linear(4, 2)})
    with pytest.warns(UserWarning, match=r"cannot handle stay dense \(LSTM: lstm; GRU: gru; RNN: rnn\)"):
        assert _fqns(model) == ["head.weight"]


def test_layer_types_restrict_the_candidates() -> None:
    assert _fqns(_Net(), layer_types=(nn.Linear,)) == ["attn.out_proj.weight", "head.0.weight", "head.2.weight"]


def test_matches_uses_fnmatch_on_full_names() -> None:
    assert matches("encoder.0.weight", ["encoder.*"])
    assert not matches("encoder.0.weight", ["0.weight"])  # no substring matching on local names
    assert not matches("x", [])


def test_selection_and_the_registry_return_one_record_type() -> None:
    """What selection chooses and what ``masked_weights`` lists are the same ``MaskedWeight`` records."""
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    selected = select_parameters(model)
    for chosen in selected:
        register_mask_(chosen.module, chosen.param_name, torch.ones_like(chosen.weight, dtype=torch.bool))
    assert all(type(record) is MaskedWeight for record in selected)
    assert masked_weights(model) == selected
    first = selected[0]
    assert first.weight is model[0].weight and first.shape == (3, 4) and first.mask is mask_of(model[0])
    assert first.rows(first.weight) is first.weight  # an nn.Linear weight is neuron-major already


def test_the_0_1_name_and_field_order_still_work_for_a_release_with_a_warning() -> None:
    layer = nn.Linear(4, 3)
    with pytest.warns(DeprecationWarning, match=r"use MaskedWeight\(module_name, module, param_name\)"):
        old = SparseParameter("", "weight", layer)
    assert isinstance(old, MaskedWeight) and (old.module, old.param_name, old.fqn) == (layer, "weight", "weight")
    with pytest.warns(DeprecationWarning, match=r"use \.weight"):
        assert MaskedWeight("", layer, "weight").param is layer.weight
