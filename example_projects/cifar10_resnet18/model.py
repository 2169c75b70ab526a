"""The CIFAR variant of ResNet-18 (3x3 stem, no max-pool; the classifier is named ``linear`` as in
the reference code) and its LightningModule."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from example_projects.common.classification import ClassificationModule, Recipe

CIFAR_RECIPE = Recipe(
    optimizer="sgd",
    lr=0.1,
    momentum=0.9,
    nesterov=True,
    weight_decay=5e-4,
    schedule="step",
    milestones=(77, 154, 231),
    gamma=0.2,
)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual; input ``(B, c_in, H, W)`` -> ``(B, c_out, H/s, W/s)``."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR ResNet-18: images ``(B, 3, H, W)`` -> logits ``(B, num_classes)``.

    Args:
        num_classes: output classes.
        width: channels of the first stage (64 in the paper; the stages use 1x, 2x, 4x, 8x).
    """

    def __init__(self, num_classes: int = 10, width: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        stages, c_in = [], width
        for i, mult in enumerate((1, 2, 4, 8)):
            c_out = width * mult
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1)))
            c_in = c_out
        self.layers = nn.Sequential(*stages)
        self.linear = nn.Linear(c_in, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


class CIFARResNet18(ClassificationModule):
    """ResNet-18 on CIFAR-10 with the paper's recipe (SGD Nesterov 0.1, x0.2 every 77 epochs, wd 5e-4).

    Args:
        num_classes: output classes.
        width: first-stage width (64 = the paper's ResNet-18).
        recipe: optimiser and schedule.
    """

    def __init__(self, num_classes: int = 10, width: int = 64, recipe: Recipe = CIFAR_RECIPE) -> None:
        super().__init__(ResNet18(num_classes, width), recipe)
        self.save_hyperparameters()
