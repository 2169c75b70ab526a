"""ResNet-50 (torchvision layout: bottleneck blocks, stride on the 3x3 conv, classifier ``fc``)."""

from __future__ import annotations

from torch import Tensor, nn

from example_projects.common.classification import ClassificationModule, Recipe

RESNET50_RECIPE = Recipe(
    optimizer="sgd",
    lr=0.2,
    momentum=0.9,
    nesterov=True,
    weight_decay=1e-4,
    schedule="step",
    milestones=(30, 70, 90),
    gamma=0.1,
    warmup_epochs=5.0,
    warmup_start_factor=5e-6,
    label_smoothing=0.1,
)


def conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Sequential:
    """Conv (no bias) + BatchNorm, ``(B, c_in, H, W)`` -> ``(B, c_out, H/stride, W/stride)``."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(c_out))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4, plus a projection shortcut when shapes change."""

    def __init__(self, c_in: int, width: int, stride: int) -> None:
        super().__init__()
        c_out = width * 4
        self.body = nn.Sequential(
            conv_bn(c_in, width, 1),
            nn.ReLU(inplace=True),
            conv_bn(width, width, 3, stride),
            nn.ReLU(inplace=True),
            conv_bn(width, c_out, 1),
        )
        self.shortcut = conv_bn(c_in, c_out, 1, stride) if stride != 1 or c_in != c_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return (self.body(x) + self.shortcut(x)).relu()


class ResNet50(nn.Module):
    """ResNet-50: images ``(B, 3, H, W)`` -> logits ``(B, num_classes)``.

    Args:
        num_classes: output classes.
        width: bottleneck width of the first stage (64 for ResNet-50).
        blocks: blocks per stage ((3, 4, 6, 3) for ResNet-50).
    """

    def __init__(self, num_classes: int = 1000, width: int = 64, blocks: tuple[int, ...] = (3, 4, 6, 3)) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, width, 7, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        stages, c_in = [], width
        for i, n in enumerate(blocks):
            stage_width = width * 2**i
            stride = 1 if i == 0 else 2
            stage = [
                Bottleneck(c_in if j == 0 else stage_width * 4, stage_width, stride if j == 0 else 1) for j in range(n)
            ]
            stages.append(nn.Sequential(*stage))
            c_in = stage_width * 4
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        features = self.stages(self.stem(x)).mean(dim=(2, 3))
        return self.fc(features)


class ImageNetResNet50(ClassificationModule):
    """ResNet-50 on ImageNet with the paper's recipe (SGD Nesterov 0.2 at batch 512, 5-epoch warm-up,
    x0.1 at epochs 30/70/90, wd 1e-4, label smoothing 0.1).

    Args:
        num_classes: output classes.
        width: first-stage bottleneck width.
        blocks: blocks per stage.
        recipe: optimiser and schedule.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        width: int = 64,
        blocks: tuple[int, ...] = (3, 4, 6, 3),
        recipe: Recipe = RESNET50_RECIPE,
    ) -> None:
        super().__init__(ResNet50(num_classes, width, blocks), recipe)
        self.save_hyperparameters()
