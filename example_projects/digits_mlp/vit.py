"""A small vision transformer for the 8x8 digits: Hugging Face's ``ViTForImageClassification`` built from a
``ViTConfig`` (no weights downloaded), its linear layers (``query``/``key``/``value``, the attention output,
the MLP and the classifier) all ``nn.Linear``, so SRigL sparsifies them and int8 layers can replace them."""

from __future__ import annotations

from torch import Tensor, nn

from example_projects.common.classification import ClassificationModule, Recipe

DIGITS_VIT_RECIPE = Recipe(optimizer="adamw", lr=2e-3, weight_decay=0.05, schedule="cosine", warmup_epochs=5.0)


class DigitsViTNet(nn.Module):
    """Digits ``(B, 64)`` (8x8 images, flattened) -> logits ``(B, 10)`` through a ViT on 2x2 patches (16 tokens
    and a class token).

    Args:
        dim: token width.
        depth: encoder blocks.
        heads: attention heads.
        mlp_dim: MLP hidden width.
    """

    def __init__(self, dim: int = 128, depth: int = 4, heads: int = 4, mlp_dim: int = 256) -> None:
        super().__init__()
        try:
            from transformers import ViTConfig, ViTForImageClassification
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError("the digits ViT needs transformers: pip install transformers") from err
        config = ViTConfig(
            image_size=8, patch_size=2, num_channels=1, hidden_size=dim, num_hidden_layers=depth,
            num_attention_heads=heads, intermediate_size=mlp_dim, num_labels=10, attn_implementation="eager",
        )  # fmt: skip
        self.vit = ViTForImageClassification(config)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, 10)`` of digits ``(B, 64)``."""
        return self.vit(pixel_values=x.view(-1, 1, 8, 8)).logits


class DigitsViT(ClassificationModule):
    """`DigitsViTNet` trained with AdamW (lr 2e-3, wd 0.05, 5-epoch warm-up, cosine).

    Args:
        dim, depth, heads, mlp_dim: see `DigitsViTNet`.
        recipe: optimiser and schedule.
    """

    def __init__(
        self, dim: int = 128, depth: int = 4, heads: int = 4, mlp_dim: int = 256, recipe: Recipe = DIGITS_VIT_RECIPE
    ) -> None:
        super().__init__(DigitsViTNet(dim, depth, heads, mlp_dim), recipe)
        self.save_hyperparameters()
