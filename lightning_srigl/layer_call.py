"""``LayerCall``: one real call of a layer (positional and keyword arguments), as acceleration times it.

A linear or convolution layer is called with one tensor; an ``nn.MultiheadAttention`` with query, key,
value and keyword arguments (``need_weights``, masks). Candidates are built, checked and timed on the
call the layer received, so each is timed as the model uses it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

__all__ = ["LayerCall", "outputs_close", "record_calls", "relative_error", "resize_batch"]


def resize_batch(x: Tensor, batch_size: int | None, dim: int = 0) -> Tensor:
    """Cut or tile ``x`` along ``dim`` to ``batch_size``; ``None`` returns ``x``."""
    if batch_size is None or x.shape[dim] == batch_size:
        return x
    reps = [1] * x.dim()
    reps[dim] = math.ceil(batch_size / x.shape[dim])
    return x.repeat(*reps).narrow(dim, 0, batch_size)


@dataclass(frozen=True)
class LayerCall:
    """The arguments of one call of a layer; ``call(module)`` runs ``module`` on them."""

    args: tuple[object, ...]
    kwargs: Mapping[str, object] = field(default_factory=dict)

    @classmethod
    def of(cls, value: Tensor | LayerCall) -> LayerCall:
        """``value`` as a call (a tensor is the call with that one argument)."""
        return value if isinstance(value, LayerCall) else cls((value,))

    @property
    def x(self) -> Tensor:
        """The first argument (the input of a linear or convolution layer, an attention's query)."""
        return self.args[0]

    def __call__(self, module: nn.Module) -> object:
        return module(*self.args, **self.kwargs)

    def map(self, fn) -> LayerCall:
        """The call with ``fn`` applied to every tensor argument. A tensor passed in several places stays one
        tensor (``fn`` runs once on it): self-attention's ``(x, x, x)`` must stay a self-attention call, which
        projects ``x`` once, or its candidates are timed projecting it three times."""
        return self._mapped(lambda _, t: fn(t))

    def _mapped(self, fn: Callable[[int | str, Tensor], Tensor]) -> LayerCall:
        """The call with ``fn(position or keyword, tensor)`` applied to every tensor argument, once per distinct
        tensor and result (the first place a tensor appears decides its result)."""
        done: dict[int, Tensor] = {}

        def apply(where: int | str, v: object) -> object:
            if not isinstance(v, Tensor):
                return v
            if id(v) not in done:
                done[id(v)] = fn(where, v)
            return done[id(v)]

        return LayerCall(
            tuple(apply(i, a) for i, a in enumerate(self.args)), {k: apply(k, v) for k, v in self.kwargs.items()}
        )

    def to(self, device: torch.device | str) -> LayerCall:
        """The call with every tensor on ``device``."""
        return self.map(lambda t: t.to(device))

    def with_x(self, x: Tensor) -> LayerCall:
        """The call with its first argument replaced (e.g. cut to a folded layer's inputs)."""
        return LayerCall((x, *self.args[1:]), self.kwargs)

    def resized(self, batch_size: int | None, batch_dims: Mapping[int | str, int]) -> LayerCall:
        """The call with the tensors at ``batch_dims`` (position or keyword -> batch dim) cut or tiled to
        ``batch_size``; ``None`` returns the call itself. A keyword tensor whose batch is folded with other
        dims (an attention's ``(B * heads, L, S)`` mask) cannot be resized: the call is returned as is."""
        if batch_size is None:
            return self
        attn_mask = self.kwargs.get("attn_mask")
        if isinstance(attn_mask, Tensor) and attn_mask.dim() == 3:
            return self
        return self._mapped(
            lambda where, t: resize_batch(t, batch_size, batch_dims[where]) if where in batch_dims else t
        )


def record_calls(
    modules: Mapping[str, nn.Module], into: dict[str, LayerCall], *, tensor_first: bool = True
) -> list[RemovableHandle]:
    """Keep each named module's latest call in ``into`` (name -> `LayerCall`, tensors detached, not copied) through
    forward pre-hooks, until the returned handles are removed.

    With ``tensor_first`` only calls whose first positional argument is a tensor are kept (a layer's input);
    without, every call (a Hugging Face model called with keyword arguments only).
    """

    def recorder(name: str) -> Callable[[nn.Module, tuple[object, ...], dict[str, object]], None]:
        def record(_: nn.Module, args: tuple[object, ...], kwargs: dict[str, object]) -> None:
            if not tensor_first or (args and isinstance(args[0], Tensor)):
                into[name] = LayerCall(args, dict(kwargs)).map(Tensor.detach)

        return record

    return [module.register_forward_pre_hook(recorder(name), with_kwargs=True) for name, module in modules.items()]


def outputs_close(out: object, reference: object, tol: float) -> bool:
    """Whether two layer outputs agree: tensors within ``tol``, tuples element by element (None = None)."""
    if isinstance(reference, Tensor):
        return (
            isinstance(out, Tensor)
            and out.shape == reference.shape
            and torch.allclose(out.float(), reference.float(), rtol=tol, atol=tol)
        )
    if isinstance(reference, (tuple, list)):
        return (
            isinstance(out, (tuple, list))
            and len(out) == len(reference)
            and all(outputs_close(o, r, tol) for o, r in zip(out, reference))
        )
    return out is None and reference is None


def relative_error(out: object, reference: object) -> float:
    """``||out - reference|| / ||reference||`` (L2 over every element; inf for other shapes, NaN or inf); for
    tuples (an attention's ``(output, weights)``) the largest over their elements (``None`` = ``None``: 0)."""
    if isinstance(reference, (tuple, list)):
        if not isinstance(out, (tuple, list)) or len(out) != len(reference):
            return math.inf
        return max((relative_error(o, r) for o, r in zip(out, reference)), default=0.0)
    if reference is None:
        return 0.0 if out is None else math.inf
    if not isinstance(out, Tensor) or not isinstance(reference, Tensor) or out.shape != reference.shape:
        return math.inf
    norm = float(reference.float().norm())
    error = float((out.float() - reference.float()).norm())
    ratio = error / norm if norm > 0 else (0.0 if error == 0 else math.inf)
    return ratio if math.isfinite(ratio) else math.inf
