"""A multi-layer perceptron for the 8x8 digits (64 inputs, 10 classes)."""

from __future__ import annotations

from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed.fsdp import FSDPModule, fully_shard

from example_projects.common.classification import ClassificationModule, Recipe

DIGITS_RECIPE = Recipe(optimizer="sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4, schedule="cosine")


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


class ShardedDigitsMLP(DigitsMLP):
    """`DigitsMLP` for ``ModelParallelStrategy`` (FSDP2): ``configure_model`` applies ``fully_shard`` to
    every ``Linear`` and then to the whole module, over the data-parallel mesh dimension, so each rank holds
    whole neurons (rows) of every layer (docs/distributed.md). Under any other strategy it is ``DigitsMLP``."""

    def configure_model(self) -> None:
        if not isinstance(self.trainer.strategy, ModelParallelStrategy) or isinstance(self, FSDPModule):
            return  # not sharded, or sharded already (configure_model runs again for test/predict)
        mesh = self.device_mesh["data_parallel"]
        for layer in self.net.modules():
            if isinstance(layer, nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(self, mesh=mesh)
