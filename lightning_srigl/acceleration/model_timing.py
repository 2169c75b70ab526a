"""The whole model's time before and after acceleration, for the report.

`dense_reference` is the model as it computes before acceleration, as a plain dense module (the
masked weights, no masks); `whole_model_times` times several forms of a model on one input in
interleaved rounds (`hot_times`, fastest sample), so the
before/after ratio shares the machine's drifts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from lightning_srigl.condensed.kinds.candidates import masked_copy
from lightning_srigl.layer_call import LayerCall
from lightning_srigl.timing import hot_times

__all__ = ["as_call", "dense_reference", "whole_model_times"]


def as_call(example_input: object) -> LayerCall:
    """``example_input`` as a call: a `LayerCall` as is, a tuple as positional arguments, else one
    argument (as ``accelerate()`` reads its example input)."""
    if isinstance(example_input, LayerCall):
        return example_input
    return LayerCall(example_input if isinstance(example_input, tuple) else (example_input,))


def dense_reference(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every masked weight times its mask and no masks: what it computes, run dense."""
    return masked_copy(model, mask=None)


@torch.no_grad()
def whole_model_times(
    forms: Mapping[str, Callable[..., object]],
    example_input: object,
    *,
    repeats: int = 3,
) -> dict[str, float]:
    """Seconds per call of each of ``forms`` (name -> callable model) on ``example_input``: the fastest of
    at least ``repeats`` samples, in interleaved rounds after one warm-up call each."""
    call = as_call(example_input)
    calls = {name: (lambda form=form: call(form)) for name, form in forms.items()}
    device = call.x.device if isinstance(call.x, torch.Tensor) else torch.device("cpu")
    timings = hot_times(
        calls,
        threads=torch.get_num_threads(),
        min_run_time=0.0,
        device=device,
        warmup=1,
        min_samples=repeats,
    )
    return {name: timing.min for name, timing in timings.items()}
