"""A multi-layer perceptron for MNIST-1D (40 inputs, 10 classes)."""

from __future__ import annotations

from example_projects.common.classification import ClassificationModule, Recipe
from example_projects.digits_mlp.model import DIGITS_RECIPE, mlp


class MNIST1DMLP(ClassificationModule):
    """MLP classifier for MNIST-1D: ``40 -> hidden... -> 10`` with ReLU, the digits MLP's recipe.

    The default width, 1024, leaves the sparse layers room to ablate even at 99 % sparsity: with
    ERK every layer keeps at least two weights per neuron there, and the 1024x1024 layer has a
    sparse fan-in of 5 (``docs/findings.md`` explains the choice).

    Args:
        hidden: widths of the hidden layers.
        recipe: optimiser and schedule (default: SGD Nesterov 0.05, cosine, wd 5e-4).
    """

    def __init__(self, hidden: tuple[int, ...] = (1024, 1024), recipe: Recipe = DIGITS_RECIPE) -> None:
        super().__init__(mlp(40, hidden, 10), recipe)
        self.save_hyperparameters()
