"""accelerate() keeps what the user set on a layer (its mode, its hooks) and tries only the candidates of each
layer's kind."""

from __future__ import annotations

import torch
from torch import nn

from lightning_srigl.acceleration.accelerate import accelerate
from lightning_srigl.masking import bind_masks, masked_weights


def constant_fan_in(rows: int, cols: int, k: int, seed: int) -> torch.Tensor:
    keep = torch.rand(rows, cols, generator=torch.Generator().manual_seed(seed)).argsort(1)[:, :k]
    return torch.zeros(rows, cols, dtype=torch.bool).scatter_(1, keep, True)


class Block(nn.Module):
    """Attention with dropout, then an MLP: ``(B, L, 16) -> (B, L, 16)``."""

    def __init__(self) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(16, 4, dropout=0.1, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x + self.attention(x, x, x, need_weights=False)[0])


def sparse_block() -> Block:
    torch.manual_seed(0)
    block = Block()
    bind_masks(block, {
        "attention.in_proj_weight": constant_fan_in(48, 16, 4, 0),
        "mlp.0.weight": constant_fan_in(32, 16, 4, 1),
        "mlp.2.weight": constant_fan_in(16, 32, 8, 2),
    })  # fmt: skip
    with torch.no_grad():
        for m in masked_weights(block):
            m.weight.mul_(m.mask)
    return block


def test_attention_with_dropout_in_an_eval_model_is_condensed_and_exact() -> None:
    block = sparse_block().eval()
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        expected = block(x)
    report = accelerate(block, x, candidates=["dense", "condensed"], repeats=1, verbose=False)
    row = next(r for r in report.rows if r.name == "attention")
    assert "condensed" in row.times and "condensed" not in row.skipped, row.skipped
    assert not block.training and not any(m.training for m in block.modules())
    with torch.no_grad():
        torch.testing.assert_close(block(x), expected)


def test_only_the_candidates_of_each_kind_are_tried() -> None:
    block = sparse_block().eval()
    report = accelerate(block, torch.randn(2, 5, 16), repeats=1, verbose=False)
    for row in report.rows:
        assert not any("Unknown candidate" in why for why in row.skipped.values()), (row.name, row.skipped)
    attention = next(r for r in report.rows if r.name == "attention")
    assert set(attention.times) | set(attention.skipped) == {"dense", "condensed"}


def test_swapped_layers_keep_the_users_hooks_and_mode() -> None:
    block = sparse_block().eval()
    block.mlp[0].train()  # a mode the user chose for this layer
    seen: list[str] = []
    pre = block.mlp[0].register_forward_pre_hook(lambda module, args: seen.append("pre"))
    post = block.attention.register_forward_hook(lambda module, args, out: seen.append("post"))
    x = torch.randn(2, 5, 16)
    accelerate(block, x, candidates=["dense", "condensed"], repeats=1, verbose=False)
    seen.clear()
    with torch.no_grad():
        block(x)
    assert seen == ["post", "pre"]
    assert block.mlp[0].training and not block.attention.training
    pre.remove()
    post.remove()
    seen.clear()
    with torch.no_grad():
        block(x)
    assert seen == []
