"""ProjectedAttention with condensed projections equals the masked dense nn.MultiheadAttention."""

import pytest
import torch
from torch import nn

from lightning_srigl.condensed import CondensedLinear
from lightning_srigl.condensed.attention import ProjectedAttention
from tests.condensed.conv_cases import assert_close_to_scale


def constant_fan_in(out: int, inp: int, fan_in: int, ablated: int, generator: torch.Generator) -> torch.Tensor:
    order = torch.argsort(torch.rand(out, inp, generator=generator), dim=1)[:, :fan_in]
    mask = torch.zeros(out, inp, dtype=torch.bool).scatter_(1, order, True)
    mask[torch.randperm(out, generator=generator)[:ablated]] = False
    return mask


def masked_attention(embed: int = 16, heads: int = 4, kdim=None, vdim=None, batch_first=True, bias=True, seed=0):
    """A sparse nn.MultiheadAttention (weights zero outside constant-fan-in masks) and its masks."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    attention = nn.MultiheadAttention(embed, heads, batch_first=batch_first, bias=bias, kdim=kdim, vdim=vdim).eval()
    masks = {}
    with torch.no_grad():
        if attention.in_proj_weight is not None:
            masks["in"] = constant_fan_in(3 * embed, embed, embed // 4, 3, g)
            attention.in_proj_weight.mul_(masks["in"])
        else:
            for name in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
                weight = getattr(attention, name)
                mask = constant_fan_in(*weight.shape, max(1, weight.shape[1] // 3), 1, g)
                weight.mul_(mask)
                masks[name] = mask
        masks["out"] = constant_fan_in(embed, embed, embed // 2, 2, g)
        attention.out_proj.weight.mul_(masks["out"])
        if bias:
            attention.in_proj_bias.normal_()
            attention.out_proj.bias.normal_()
    return attention, masks


def both(attention, projected, *args, **kwargs):
    with torch.no_grad():
        return attention(*args, **kwargs), projected(*args, **kwargs)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("average", [True, False])
def test_self_attention_equals_masked_dense(batch_first, need_weights, average):
    attention, masks = masked_attention(batch_first=batch_first)
    projected = ProjectedAttention.from_masked(attention, {"in_proj_weight": masks["in"]}, masks["out"])
    assert isinstance(projected.in_proj, CondensedLinear) and isinstance(projected.out_proj, CondensedLinear)
    x = torch.randn(3, 7, 16) if batch_first else torch.randn(7, 3, 16)
    (expected, expected_w), (out, w) = both(
        attention, projected, x, x, x, need_weights=need_weights, average_attn_weights=average
    )
    assert_close_to_scale(out, expected)
    if need_weights:
        assert_close_to_scale(w, expected_w)
    else:
        assert w is None and expected_w is None


def test_the_vit_call_takes_the_fused_fast_path_and_still_matches():
    attention, masks = masked_attention(embed=32, heads=4)
    projected = ProjectedAttention.from_masked(attention, {"in_proj_weight": masks["in"]}, masks["out"])
    x = torch.randn(2, 11, 32)
    with torch.inference_mode():
        (expected, _), (out, _) = attention(x, x, x, need_weights=False), projected(x, x, x, need_weights=False)
    assert_close_to_scale(out, expected)


@pytest.mark.parametrize("mask_kind", ["bool", "float"])
def test_attention_and_key_padding_masks(mask_kind):
    attention, masks = masked_attention()
    projected = ProjectedAttention.from_masked(attention, {"in_proj_weight": masks["in"]}, masks["out"])
    x = torch.randn(2, 5, 16)
    causal = torch.triu(torch.ones(5, 5, dtype=torch.bool), diagonal=1)
    attn_mask = causal if mask_kind == "bool" else torch.zeros(5, 5).masked_fill(causal, -1e4)
    padding = torch.tensor([[False] * 4 + [True], [False] * 5])
    per_head = attn_mask.expand(2 * 4, 5, 5)
    padding = padding if mask_kind == "bool" else torch.zeros(2, 5).masked_fill(padding, -1e4)
    for kwargs in ({"attn_mask": attn_mask}, {"key_padding_mask": padding},
                   {"attn_mask": per_head, "key_padding_mask": padding},
                   {"attn_mask": attn_mask, "is_causal": True, "need_weights": False}):  # fmt: skip
        (expected, expected_w), (out, w) = both(attention, projected, x, x, x, **kwargs)
        assert_close_to_scale(out, expected)
        if w is not None:
            assert_close_to_scale(w, expected_w)


def test_cross_attention_and_unbatched_inputs():
    attention, masks = masked_attention(batch_first=False)
    projected = ProjectedAttention.from_masked(attention, {"in_proj_weight": masks["in"]}, masks["out"])
    query, memory = torch.randn(4, 2, 16), torch.randn(6, 2, 16)
    (expected, _), (out, _) = both(attention, projected, query, memory, memory)
    assert_close_to_scale(out, expected)
    (expected, _), (out, _) = both(attention, projected, query, memory, torch.randn(6, 2, 16))
    assert_close_to_scale(out, expected)
    (expected, expected_w), (out, w) = both(attention, projected, query[:, 0], memory[:, 0], memory[:, 0])
    assert out.shape == (4, 16) and w.shape == (4, 6)
    assert_close_to_scale(out, expected)
    assert_close_to_scale(w, expected_w)


def test_separate_key_and_value_widths():
    attention, masks = masked_attention(kdim=12, vdim=8, bias=True)
    projected = ProjectedAttention.from_masked(attention, masks, masks["out"])
    assert all(isinstance(p, CondensedLinear) for p in (projected.q_proj, projected.k_proj, projected.v_proj))
    q, k, v = torch.randn(2, 5, 16), torch.randn(2, 6, 12), torch.randn(2, 6, 8)
    (expected, _), (out, _) = both(attention, projected, q, k, v)
    assert_close_to_scale(out, expected)


def test_unmasked_projections_stay_dense_and_unsupported_options_are_refused():
    attention, _ = masked_attention()
    projected = ProjectedAttention.from_masked(attention, {}, None)
    assert type(projected.in_proj) is nn.Linear and type(projected.out_proj) is nn.Linear
    x = torch.randn(1, 3, 16)
    (expected, _), (out, _) = both(attention, projected, x, x, x)
    assert_close_to_scale(out, expected)
    with pytest.raises(NotImplementedError, match="add_zero_attn"):
        ProjectedAttention.from_masked(nn.MultiheadAttention(16, 4, add_zero_attn=True), {})
