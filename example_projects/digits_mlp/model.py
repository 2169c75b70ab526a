"""A multi-layer perceptron for the 8x8 digits (64 inputs, 10 classes)."""

from __future__ import annotations

from torch import nn

from example_projects.common.classification import ClassificationModule, Recipe

DIGITS_RECIPE = Recipe(
    optimizer="sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4, schedule="cosine"
)


def mlp(in_features: int, hidden: tuple[int, ...], num_classes: int) -> nn.Sequential:
    """``Linear -> ReLU`` for each width in ``hidden``, then a ``Linear`` classifier named ``head``.

    Input ``(B, in_features)``, output logits ``(B, num_classes)``.
    """
    layers: list[nn.Module] = []
    width = in_features
    for out in hidden:
        layers += [nn.Linear(width, out), nn.ReLU()]
        width = out
    body = nn.Sequential(*layers)
    return nn.Sequential(body, nn.Linear(width, num_classes))


class DigitsMLP(ClassificationModule):
    """MLP classifier for scikit-learn's digits.

    Args:
        hidden: widths of the hidden layers.
        recipe: optimiser and schedule (default: SGD Nesterov 0.05, cosine, wd 5e-4).
    """

    def __init__(self, hidden: tuple[int, ...] = (512, 512), recipe: Recipe = DIGITS_RECIPE) -> None:
        super().__init__(mlp(64, hidden, 10), recipe)
        self.save_hyperparameters()
