"""ViT-B/16 (torchvision layout: ``conv_proj`` patch embedding, pre-norm encoder blocks built on
``nn.MultiheadAttention`` so SRigL sparsifies ``in_proj_weight`` and ``out_proj``, classifier ``head``)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from example_projects.common.classification import ClassificationModule, Recipe

VIT_RECIPE = Recipe(
    optimizer="adamw",
    lr=3e-3,
    betas=(0.9, 0.999),
    weight_decay=0.3,
    schedule="cosine",
    warmup_epochs=16.0,
    warmup_start_factor=0.033,
    label_smoothing=0.11,
)


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: tokens ``(B, T, D)`` -> ``(B, T, D)``."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp_dim, dim), nn.Dropout(dropout)
        )

    def forward(self, x: Tensor) -> Tensor:
        h = self.ln_1(x)
        x = x + self.self_attention(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class VisionTransformer(nn.Module):
    """ViT: images ``(B, 3, S, S)`` -> logits ``(B, num_classes)`` from the class token.

    Args:
        image_size: input side ``S`` (divisible by ``patch_size``).
        patch_size: patch side (16 for ViT-B/16).
        dim: token width (768 for ViT-B).
        depth: encoder blocks (12).
        heads: attention heads (12).
        mlp_dim: MLP hidden width (3072).
        num_classes: output classes.
        dropout: dropout in attention and MLP.
    """

    def __init__(
        self,
        image_size: int = 224,
        patch_size: int = 16,
        dim: int = 768,
        depth: int = 12,
        heads: int = 12,
        mlp_dim: int = 3072,
        num_classes: int = 1000,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size={image_size} must be divisible by patch_size={patch_size}.")
        n_tokens = (image_size // patch_size) ** 2 + 1
        self.conv_proj = nn.Conv2d(3, dim, patch_size, patch_size)
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embedding = nn.Parameter(torch.empty(1, n_tokens, dim).normal_(std=0.02))
        self.encoder = nn.Sequential(*(EncoderBlock(dim, heads, mlp_dim, dropout) for _ in range(depth)))
        self.ln = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        patches = self.conv_proj(x).flatten(2).transpose(1, 2)  # (B, T-1, D)
        tokens = torch.cat([self.class_token.expand(len(x), -1, -1), patches], dim=1) + self.pos_embedding
        return self.head(self.ln(self.encoder(tokens))[:, 0])


class ImageNetViTB16(ClassificationModule):
    """ViT-B/16 from scratch with the paper's recipe (AdamW 3e-3, wd 0.3, 16-epoch warm-up + cosine,
    label smoothing 0.11; clip gradients at 1.0 in the trainer).

    Args:
        image_size, patch_size, dim, depth, heads, mlp_dim, num_classes, dropout: see
            `VisionTransformer`.
        recipe: optimiser and schedule.
    """

    def __init__(
        self,
        image_size: int = 224,
        patch_size: int = 16,
        dim: int = 768,
        depth: int = 12,
        heads: int = 12,
        mlp_dim: int = 3072,
        num_classes: int = 1000,
        dropout: float = 0.0,
        recipe: Recipe = VIT_RECIPE,
    ) -> None:
        net = VisionTransformer(image_size, patch_size, dim, depth, heads, mlp_dim, num_classes, dropout)
        super().__init__(net, recipe)
        self.save_hyperparameters()
