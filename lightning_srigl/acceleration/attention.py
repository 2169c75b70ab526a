"""Attention on ``lightning_srigl::attention`` where it times faster than torch's ``scaled_dot_product_attention``.

Attention has no weight and no mask, so it is no sparse layer: like the dense linear layers (`dense_layers`), each
attention site of the model is timed on its real calls, torch's attention against the op
(`lightning_srigl.kernels.attention`), and switched only where the op's outputs match torch's (1e-4) and it is
faster by the margin the noise supports (`choose`). The sites (`attention_sites`):

* a Hugging Face model (a ``transformers.PreTrainedModel`` whose attention implementation is ``"sdpa"``; the
  outermost one of nested models): the calls of its attention function during one forward are captured and
  timed together; where the op wins, the model's implementation becomes `HF_IMPLEMENTATION`
  (``model.set_attn_implementation``): `hf_attention_forward`, registered with ``transformers.AttentionInterface``
  (masks as for ``"sdpa"``), and the model holds a `_Registration` that registers it again wherever the model is
  unpickled. ``transformers`` is optional: without it no model has such a site;
* a [`ProjectedAttention`][lightning_srigl.condensed.layers.attention.ProjectedAttention]: its forward on its
  captured call, with ``fast_attention`` off and on.

Each site is timed on a real call of its own (`switch_attention`): ``accelerate()`` captures them on its example
input, ``AccelerateCallback`` records them during fit. `install_attention` puts a recorded choice back without timing.

`restore_attention` (called by ``restore_dense``) switches every site back to torch's attention.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from lightning_srigl.acceleration.planning import Timer, choose, default_timer
from lightning_srigl.condensed.layers.attention import ProjectedAttention
from lightning_srigl.kernels.attention import scaled_dot_product_attention
from lightning_srigl.layer_call import LayerCall, outputs_close

__all__ = [
    "ATTENTION_CANDIDATES",
    "HF_IMPLEMENTATION",
    "attention_sites",
    "hf_attention_forward",
    "install_attention",
    "projected_sites",
    "register_hf_attention",
    "restore_attention",
    "switch_attention",
]

# The choice per attention site: torch's scaled_dot_product_attention (the reference), or the op.
ATTENTION_CANDIDATES = ("sdpa", "lightning_srigl")
# The name of the op's attention function in transformers' AttentionInterface, and of the function that captures
# a model's attention calls while acceleration times them.
HF_IMPLEMENTATION = "lightning_srigl"
_HF_CAPTURE = "lightning_srigl_capture"
_SDPA = "sdpa"
_captured: list[LayerCall] = []  # the calls _capture_hf_call saw (filled while a model runs on it)


def _sdpa_forward() -> Callable[..., tuple[Tensor, None]]:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward  # type: ignore[no-any-return]


def hf_attention_forward(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """transformers' ``sdpa_attention_forward`` on the `scaled_dot_product_attention` op: ``query (B, H, Lq, D)``,
    ``key``, ``value (B, H, Lk, D)`` -> ``((B, Lq, H, D), None)``. Calls the op cannot take as ``sdpa`` does
    (dropout, grouped key/value heads, a position bias, a causal prefill against a longer cache) go to
    ``sdpa_attention_forward`` itself."""
    length = query.shape[2]
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    # sdpa_attention_forward's rule (shape test first, so compiling with static shapes gives a plain bool)
    causal = length > 1 and attention_mask is None and causal
    plain = dropout == 0.0 and kwargs.get("position_bias") is None and kwargs.get("softcap") is None
    if not plain or getattr(module, "num_key_value_groups", 1) > 1 or (causal and key.shape[2] != length):
        return _sdpa_forward()(module, query, key, value, attention_mask, dropout, scaling, is_causal, **kwargs)
    out = scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, is_causal=causal, scale=scaling)
    return out.transpose(1, 2), None


def _capture_hf_call(module: nn.Module, *args: Any, **kwargs: Any) -> tuple[Tensor, None]:
    """``sdpa_attention_forward``, keeping its call in ``_captured``."""
    _captured.append(LayerCall((module, *args), dict(kwargs)).map(Tensor.detach))
    return _sdpa_forward()(module, *args, **kwargs)


@functools.cache
def register_hf_attention() -> bool:
    """Register `hf_attention_forward` (and the capturing function) with ``transformers.AttentionInterface``, masks as
    for ``"sdpa"``; False where ``transformers`` is not installed."""
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError:
        return False
    for name, function in ((HF_IMPLEMENTATION, hf_attention_forward), (_HF_CAPTURE, _capture_hf_call)):
        AttentionInterface.register(name, function)
        AttentionMaskInterface.register(name, sdpa_mask)
    return True


class _Registration:
    """Held by each Hugging Face model on `HF_IMPLEMENTATION` (its attribute `_REGISTRATION`). The model names its
    attention function by a string that transformers looks up in a registry of the running process, so a process
    that unpickles the model (``torch.load`` of a saved model, a spawned worker) must register the function before
    the model's first call; unpickling this object does (`_registered`)."""

    def __reduce__(self) -> tuple[Callable[[], _Registration], tuple[()]]:
        return _registered, ()


def _registered() -> _Registration:
    """A `_Registration`, `hf_attention_forward` registered in this process."""
    register_hf_attention()
    return _Registration()


_REGISTRATION = "_lightning_srigl_attention"


def _set_hf_implementation(site: nn.Module, fast: bool) -> None:
    """Put Hugging Face model ``site`` on `HF_IMPLEMENTATION` (with its `_Registration`) or back on torch's."""
    site.set_attn_implementation(HF_IMPLEMENTATION if fast else _SDPA)
    if fast:
        setattr(site, _REGISTRATION, _Registration())
    else:
        site.__dict__.pop(_REGISTRATION, None)


def _implementation(module: nn.Module) -> str | None:
    """A Hugging Face model's attention implementation (None for any other module)."""
    config = getattr(module, "config", None)
    if not callable(getattr(module, "set_attn_implementation", None)) or config is None:
        return None
    return getattr(config, "_attn_implementation", None)


def attention_sites(model: nn.Module) -> dict[str, nn.Module]:
    """Name -> module of each attention site of ``model`` (module docstring): the outermost Hugging Face models on
    ``"sdpa"`` and the `ProjectedAttention` modules."""
    sites: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if any(name.startswith(f"{site}.") or not site for site in sites):
            continue
        if isinstance(module, ProjectedAttention) or (_implementation(module) == _SDPA and register_hf_attention()):
            sites[name] = module
    return sites


def projected_sites(model: nn.Module) -> list[str]:
    """The names of the `ProjectedAttention` sites of ``model``: the calls `switch_attention` needs captured."""
    return [name for name, module in attention_sites(model).items() if isinstance(module, ProjectedAttention)]


def _hf_calls(site: nn.Module, run: Callable[[], object]) -> list[LayerCall]:
    """The attention function calls of Hugging Face model ``site`` while ``run()`` runs (the model holding it)."""
    _captured.clear()
    site.set_attn_implementation(_HF_CAPTURE)
    try:
        with torch.no_grad():
            run()
    finally:
        site.set_attn_implementation(_SDPA)
    calls, _captured[:] = list(_captured), []
    return calls


def _signature(call: LayerCall) -> str:
    """What a call's attention time depends on: its tensors' shapes, strides and dtypes, its other arguments (a
    module by its type), the intra-op threads."""
    described = [
        (tuple(v.shape), v.stride(), v.dtype) if isinstance(v, Tensor) else v if not isinstance(v, nn.Module)
        else type(v).__name__
        for v in (*call.args, *call.kwargs.values())
    ]  # fmt: skip
    return repr((described, sorted(call.kwargs), torch.get_num_threads()))


def _distinct(calls: list[LayerCall]) -> list[LayerCall]:
    """One call per distinct `_signature`."""
    return list({_signature(call): call for call in reversed(calls)}.values())


def _hf_forms(calls: list[LayerCall]) -> dict[str, Callable[[], list[object]]] | None:
    """The captured calls run by each candidate, or None where a query is not on the CPU (the op's kernel is the
    CPU's) or the op's outputs differ from torch's."""
    if any(call.args[1].device.type != "cpu" for call in calls):  # (module, query, key, value, mask, ...)
        return None
    sdpa = lambda: [_sdpa_forward()(*call.args, **call.kwargs) for call in calls]  # noqa: E731
    ours = lambda: [hf_attention_forward(*call.args, **call.kwargs) for call in calls]  # noqa: E731
    return {"sdpa": sdpa, "lightning_srigl": ours} if outputs_close(ours(), sdpa(), 1e-4) else None


def _projected_forms(module: ProjectedAttention, call: LayerCall) -> dict[str, Callable[[], object]] | None:
    """``module`` on its call with ``fast_attention`` off and on, or None where the query is not on the CPU or the
    outputs differ."""
    if call.x.device.type != "cpu":
        return None
    fast = copy.copy(module)  # the same projections
    fast.fast_attention = True
    slow = copy.copy(module)
    slow.fast_attention = False
    forms = {"sdpa": lambda: call(slow), "lightning_srigl": lambda: call(fast)}
    return forms if outputs_close(forms["lightning_srigl"](), forms["sdpa"](), 1e-4) else None


@torch.no_grad()
def switch_attention(
    model: nn.Module,
    calls: Mapping[str, LayerCall],
    *,
    timer: Timer | None = None,
    warmup: int = 3,
    repeats: int = 10,
) -> dict[str, str]:
    """Put each attention site of ``model`` (`attention_sites`) on the op where it is exact and faster by the margin
    the noise supports (`choose`); returns site name -> the candidate kept (`ATTENTION_CANDIDATES`).

    ``calls`` holds a real call of each site (name -> `LayerCall`; a site not there keeps torch's): a Hugging Face
    model is timed on the attention calls its forward makes on its call, a `ProjectedAttention` on its call. The
    first of several `ProjectedAttention` layers of one configuration and call signature is timed, and the others
    (each still checked against torch's outputs) take its choice.
    """
    chosen: dict[str, str] = {}
    timed: dict[str, str] = {}  # signature -> choice: layers of one shape are timed once and choose alike
    for name, site in attention_sites(model).items():
        call = calls.get(name)
        key = None
        if call is None:
            forms = None
        elif isinstance(site, ProjectedAttention):
            forms = _projected_forms(site, call)
            key = f"{site.extra_repr()}|{_signature(call)}"
        else:
            # replayed on a copy: the call's own objects (a KV cache its forward extends in place) stay as recorded
            attention_calls = _distinct(_hf_calls(site, functools.partial(copy.deepcopy(call), site)))
            forms = _hf_forms(attention_calls) if attention_calls else None
        if forms is None:
            chosen[name] = "sdpa"
        elif key is not None and key in timed:
            chosen[name] = timed[key]
        else:
            times = (timer or default_timer(warmup, repeats, torch.device("cpu")))(forms)
            chosen[name] = choose(times, ATTENTION_CANDIDATES, "sdpa")
            if key is not None:
                timed[key] = chosen[name]
    install_attention(model, chosen)
    return chosen


def install_attention(model: nn.Module, chosen: Mapping[str, str]) -> None:
    """Switch each attention site ``chosen`` names (site name -> `ATTENTION_CANDIDATES` entry, as `switch_attention`
    returns it and a report's ``attention`` holds it) to its candidate, without timing: for the processes that did
    not time and for re-acceleration after a checkpoint load. A name that is no site of ``model`` raises."""
    sites = attention_sites(model) | {  # a site already on the op (installed before) is a site too
        name: module for name, module in model.named_modules() if _implementation(module) == HF_IMPLEMENTATION
    }
    missing = sorted(set(chosen) - set(sites))
    if missing:
        raise ValueError(f"{missing} are not attention sites of the model (Hugging Face models, ProjectedAttention)")
    for name, candidate in chosen.items():
        fast = candidate == "lightning_srigl"
        site = sites[name]
        if isinstance(site, ProjectedAttention):
            site.fast_attention = fast
        else:
            _set_hf_implementation(site, fast)


def restore_attention(model: nn.Module) -> None:
    """Every attention site `switch_attention` put on the op back on torch's attention."""
    for module in model.modules():
        if isinstance(module, ProjectedAttention):
            module.fast_attention = False
        elif _implementation(module) == HF_IMPLEMENTATION:
            _set_hf_implementation(module, fast=False)
