"""The ``"exported"`` format of [`save_condensed`][lightning_srigl.condensed.serialization.save_condensed]: a model
captured with ``torch.export``, and the module a loaded program becomes. A leaf module (torch only), so
loading a program needs nothing else of the package.

What the capture takes care of, so that the program runs wherever the model did:

* the example is cloned into compact contiguous tensors: a sliced example (``ids[:2, :7]``) would
  otherwise fix its strides in the program and drag its parent tensor into the file;
* a size-1 batch is widened to 2 before capture: ``torch.export`` fixes dimensions of size 0 and 1, so a
  program captured from a batch-1 example would run at batch 1 only (if the model cannot run the
  widened example, the batch stays fixed, with a warning);
* a Hugging Face model's cache is switched off (``config.use_cache = False``) while it is captured, and
  any other output that is not a tensor (in dicts and tuples) is refused with a ``ValueError`` naming it;
* the loaded program takes its inputs by position or by the names of the model's ``forward``
  (``model(input_ids=ids)``), as `ExportedModel`.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import warnings
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

__all__ = ["ExportedModel", "PlainOutputs", "export_program", "plain_outputs"]

_PLAIN_LEAVES = (Tensor, bool, int, float, str)


def plain_outputs(value: object, where: str = "output") -> object:
    """``value`` with every mapping (a Hugging Face ``ModelOutput``, say) as a plain ``dict`` without
    ``None`` entries and every sequence as a ``tuple``: containers any torch can rebuild.

    Raises:
        ValueError: a leaf that is not a tensor or a plain value (a Hugging Face ``DynamicCache``, say),
            which an exported program cannot return; ``where`` names it (``output['past_key_values']``).
    """
    if isinstance(value, Mapping):
        return {str(k): plain_outputs(v, f"{where}[{k!r}]") for k, v in value.items() if v is not None}
    if isinstance(value, (tuple, list)):
        return tuple(plain_outputs(v, f"{where}[{i}]") for i, v in enumerate(value))
    if value is not None and not isinstance(value, _PLAIN_LEAVES):
        raise ValueError(
            f"save_condensed: the model returns a {type(value).__name__} at {where}; an exported program returns "
            "tensors (in dicts and tuples) only. Make the model return tensors there (for a cache, switch it off)."
        )
    return value


class PlainOutputs(nn.Module):
    """``model`` whose outputs pass through `plain_outputs` (what an exported program returns)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: object) -> object:
        return plain_outputs(self.model(*args))


def input_names(model: nn.Module, count: int) -> tuple[str, ...]:
    """The names of the first ``count`` parameters of ``model.forward`` (``("input_ids",)``), or ``()`` when
    its positional parameters cannot be named (``forward(*args)``)."""
    named = []
    for parameter in inspect.signature(model.forward).parameters.values():
        if parameter.kind not in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            break
        named.append(parameter.name)
    return tuple(named[:count]) if len(named) >= count else ()


@contextlib.contextmanager
def _hf_cache_off(model: nn.Module) -> Iterator[None]:
    """Set ``config.use_cache = False`` on every Hugging Face config in ``model`` for the block, then restore it."""
    found = (getattr(m, "config", None) for m in model.modules())
    configs = {id(c): c for c in found if getattr(c, "use_cache", False) is True}
    for config in configs.values():
        config.use_cache = False
    try:
        yield
    finally:
        for config in configs.values():
            config.use_cache = True


def _widened_batch(inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...] | None:
    """``inputs`` with a size-1 dim 0 repeated to 2, or None when no input has one."""
    if not any(x.dim() and x.shape[0] == 1 for x in inputs):
        return None
    return tuple(x.expand(2, *x.shape[1:]).clone() if x.dim() and x.shape[0] == 1 else x for x in inputs)


def export_program(
    model: nn.Module, example_input: Tensor | tuple[Tensor, ...], dynamic_shapes: str | Sequence[object] | None
) -> tuple[Tensor, tuple[str, ...]]:
    """``model`` captured with ``torch.export`` on ``example_input`` (see the module docstring).

    Args:
        model: any module; captured in eval mode.
        example_input: one tensor or a tuple of positional tensors.
        dynamic_shapes: ``"auto"`` (every dimension free where the model allows it), ``None`` (the
            example's shapes fixed) or ``torch.export``'s ``dynamic_shapes``, one entry per input.

    Returns:
        The program as a ``uint8`` tensor of ``torch.export.save`` bytes, and the names of its inputs
        (`input_names`).
    """
    raw = example_input if isinstance(example_input, tuple) else (example_input,)
    if not all(isinstance(x, Tensor) for x in raw):
        raise ValueError("example_input must be a tensor or a tuple of tensors (the model's positional inputs)")
    inputs = tuple(x.detach().clone(memory_format=torch.contiguous_format) for x in raw)
    auto = isinstance(dynamic_shapes, str) and dynamic_shapes == "auto"
    if auto:
        dynamic_shapes = tuple({d: torch.export.Dim.AUTO for d in range(x.dim())} for x in inputs)
    elif dynamic_shapes is not None and not isinstance(dynamic_shapes, (tuple, list)):
        raise ValueError("dynamic_shapes must be 'auto', None, or one entry per positional example input")
    if dynamic_shapes is not None:
        dynamic_shapes = (tuple(dynamic_shapes),)  # PlainOutputs.forward takes the inputs as *args
    wrapped = PlainOutputs(model.eval())
    with _hf_cache_off(model):
        widened = _widened_batch(inputs) if auto else None
        program = None
        if widened is not None:
            try:
                program = torch.export.export(wrapped, widened, dynamic_shapes=dynamic_shapes)
            except Exception as error:
                warnings.warn(
                    f"save_condensed: the model did not run at batch 2 ({type(error).__name__}), so the saved "
                    "program runs at batch size 1 only; pass an example with a batch of 2 or more to free it",
                    stacklevel=3,
                )
        if program is None:
            program = torch.export.export(wrapped, inputs, dynamic_shapes=dynamic_shapes)
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8), input_names(model, len(inputs))


class ExportedModel(nn.Module):
    """A loaded ``torch.export`` program that takes its inputs by position or by name.

    Args:
        program: ``torch.export.load(...).module()``; it takes the saved model's first inputs by position.
        names: their names in the saved model's ``forward`` (``("input_ids",)``), or ``()``.
    """

    def __init__(self, program: nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.program = program
        self.names = tuple(names)
        self.training = False

    def forward(self, *args: object, **kwargs: object) -> object:
        if kwargs:
            rest = self.names[len(args) :]
            if set(kwargs) != set(rest):
                raise TypeError(
                    f"the saved program takes {len(self.names) or len(args)} inputs "
                    f"({', '.join(self.names) or 'by position only'}); "
                    f"got {len(args)} by position and {sorted(kwargs)} by name"
                )
            args = (*args, *(kwargs[name] for name in rest))
        return self.program(*args)

    def train(self, mode: bool = True) -> ExportedModel:
        """Only ``mode=False``: the program was captured in eval mode (torch's exported modules refuse ``train``)."""
        if mode:
            raise NotImplementedError("a loaded torch.export program runs as it was captured, in eval mode")
        return self
