"""A 1-D convolutional network for MNIST-1D (signals of length 40, 10 classes)."""

from __future__ import annotations

from torch import Tensor, nn

from example_projects.common.classification import ClassificationModule, Recipe
from example_projects.digits_mlp.model import DIGITS_RECIPE


class Conv1DNet(nn.Module):
    """``depth`` x (``Conv1d`` "same" padding -> ReLU), global average pool over length, ``Linear`` head.

    Input ``(B, length)`` or ``(B, 1, length)``; output logits ``(B, num_classes)``. The convolutions
    are ``convs[0]`` (``1 -> channels``) and ``convs[1:]`` (``channels -> channels``), each with a dense
    fan-in of ``in_channels * kernel_size`` (704 for 64 channels and kernel 11), the regime of the
    paper's CNNs; the head (``channels -> num_classes``) is the output layer.

    Args:
        channels: output channels of every convolution.
        depth: number of convolutions (>= 1).
        kernel_size: odd kernel length (odd so that "same" padding keeps the length).
        num_classes: classes of the head.
    """

    def __init__(self, channels: int = 64, depth: int = 4, kernel_size: int = 11, num_classes: int = 10) -> None:
        super().__init__()
        if depth < 1 or channels < 1 or num_classes < 1:
            raise ValueError(f"channels, depth and num_classes must be >= 1, got {channels}, {depth}, {num_classes}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 1 (same padding), got {kernel_size}")
        widths = [1] + [channels] * depth
        self.convs = nn.ModuleList(
            nn.Conv1d(c_in, c_out, kernel_size, padding=kernel_size // 2) for c_in, c_out in zip(widths, widths[1:])
        )
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` for signals ``(B, length)`` or ``(B, 1, length)``."""
        h = x.unsqueeze(1) if x.dim() == 2 else x
        for conv in self.convs:
            h = conv(h).relu()
        return self.head(h.mean(dim=-1))


class MNIST1DCNN(ClassificationModule):
    """1-D CNN classifier for MNIST-1D: 4 convolutions of 64 channels, kernel 11, global pool, the digits recipe.

    At 95 % and 99 % sparsity (ERK) the three ``64 -> 64`` convolutions keep about 28 and 5 weights
    per output channel (of 704), the fan-in regime of the paper's WRN-22-2 on CIFAR-10
    (``docs/findings.md``), unlike the MLP's 40-input first layer.

    Args:
        channels: channels of every convolution.
        depth: number of convolutions.
        kernel_size: odd kernel length.
        recipe: optimiser and schedule (default: SGD Nesterov 0.05, cosine, wd 5e-4).
    """

    def __init__(
        self, channels: int = 64, depth: int = 4, kernel_size: int = 11, recipe: Recipe = DIGITS_RECIPE
    ) -> None:
        super().__init__(Conv1DNet(channels, depth, kernel_size, num_classes=10), recipe)
        self.save_hyperparameters()
