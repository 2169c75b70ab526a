"""``WeightFacts``: what code around a layer reads of the dense weight an inference layer replaced.

Models check their layers' weights without computing with them: Hugging Face's ViT casts its input to
``patch_embeddings.projection.weight.dtype``, ``nn.TransformerEncoderLayer`` looks at
``linear1.weight`` before choosing its fused path. A condensed layer holds no dense weight, so its
``weight`` (and an attention's ``in_proj_weight``) is a `WeightFacts`: the shape, dtype and
device of the weight it stands for, and nothing else. It costs nothing (no tensor is built), and any
use of it as a tensor (``F.linear(x, layer.weight)``, ``layer.weight.sum()``) raises an error that
points to ``dense_weight()``, never a silently wrong value. Because it defines ``__torch_function__``,
torch's fused paths that test their arguments with ``torch.overrides.has_torch_function`` (the
transformer layers' fast path) step aside and call the layers instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import torch

__all__ = ["WeightFacts"]


class WeightFacts:
    """Shape, dtype and device of a replaced dense weight (read-only; no values).

    Args:
        shape: the dense weight's shape (``(out, in)`` for a linear layer).
        like: a tensor of the layer whose dtype and device the weight has (its condensed values).
        owner: the layer's class name, for messages.
    """

    __slots__ = ("device", "dtype", "owner", "shape")

    def __init__(self, shape: Sequence[int], like: torch.Tensor, owner: str) -> None:
        self.shape = torch.Size(shape)
        self.dtype = like.dtype
        self.device = like.device
        self.owner = owner

    requires_grad = False
    is_sparse = False
    layout = torch.strided

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def is_cpu(self) -> bool:
        return self.device.type == "cpu"

    def dim(self) -> int:
        return len(self.shape)

    def size(self, dim: int | None = None) -> torch.Size | int:
        return self.shape if dim is None else self.shape[dim]

    def numel(self) -> int:
        return self.shape.numel()

    def is_floating_point(self) -> bool:
        return self.dtype.is_floating_point

    def __getattr__(self, name: str) -> NoReturn:
        raise AttributeError(
            f"{self.owner}.weight describes the dense weight it replaced (shape, dtype, device) but holds no "
            f"values, so it has no {name!r}; use the layer's dense_weight() for the values"
        )

    @classmethod
    def __torch_function__(
        cls, func: Callable[..., Any], types: tuple[type, ...], args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> NoReturn:
        raise TypeError(
            f"{getattr(func, '__name__', func)} got a layer's WeightFacts (the shape, dtype and device of the dense "
            "weight a condensed layer replaced) instead of a tensor; use the layer's dense_weight() for the values"
        )

    def __repr__(self) -> str:
        return f"WeightFacts(shape={tuple(self.shape)}, dtype={self.dtype}, device={self.device}, owner={self.owner})"
