"""Save and load condensed models without the training code.

Two formats, both one ``torch.save`` file loaded with ``weights_only=True`` (no arbitrary pickles):

* ``"spec"`` — for models built only from standard ``torch.nn`` modules and [`CondensedLinear`][lightning_srigl.condensed.linear.CondensedLinear]
  (``nn.Sequential`` MLPs, ...): an architecture tree (module type + constructor arguments read back
  from the module) plus the state dict. Loading rebuilds the modules and assigns the tensors.
* ``"exported"`` — for any other model (custom ``forward`` code): pass ``example_input`` and the
  model is captured with ``torch.export``; the program is stored as bytes. Loading returns the
  exported program's module; it needs only torch and lightning_srigl (for the custom op).
"""

from __future__ import annotations

import importlib
import inspect
import io
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lightning_srigl.condensed.linear import CondensedLinear

FORMAT = "lightning_srigl.condensed/1"
_SKIPPED_ARGS = {"self", "device", "dtype", "args", "kwargs"}
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_PLAIN = (bool, int, float, str, type(None))


def _plain(value: Any) -> bool:
    """True for values that survive ``weights_only`` loading unchanged."""
    if isinstance(value, (tuple, list)):
        return all(_plain(v) for v in value)
    return isinstance(value, _PLAIN)


def _condensed_args(module: CondensedLinear) -> dict[str, Any]:
    return {
        "in_features": module.in_features,
        "out_features": module.out_features,
        "n_active": module.n_active,
        "fan_in": module.fan_in,
        "index_dtype": str(module.indices.dtype).removeprefix("torch."),
        "bias": module.bias is not None,
        "backend": module.backend,
    }


def _torch_args(module: nn.Module) -> dict[str, Any]:
    """Constructor arguments of a standard ``torch.nn`` leaf, read from its same-named attributes."""
    args = {}
    for name in inspect.signature(type(module).__init__).parameters:
        if name in _SKIPPED_ARGS or name.startswith("_") or not hasattr(module, name):
            continue
        value = getattr(module, name)
        if name == "bias" and (value is None or isinstance(value, Tensor)):
            value = value is not None
        if not _plain(value):
            raise TypeError(f"{type(module).__name__}.{name} is not a plain value")
        args[name] = value
    return args


def module_spec(module: nn.Module) -> dict[str, Any]:
    """Architecture tree ``{"type", "args", "children"}`` of a model built from standard modules.

    Raises:
        TypeError: for a module whose constructor cannot be rebuilt (custom classes).
    """
    cls = type(module)
    if isinstance(module, CondensedLinear):
        args = _condensed_args(module)
    elif isinstance(module, _CONTAINERS):
        args = {}
    elif cls.__module__.startswith("torch.nn.modules") and not list(module.children()):
        args = _torch_args(module)
    else:
        raise TypeError(f"cannot describe {cls.__module__}.{cls.__qualname__} from its attributes")
    children = {name: module_spec(child) for name, child in module.named_children()}
    return {"type": f"{cls.__module__}.{cls.__qualname__}", "args": args, "children": children}


def _empty_condensed(args: dict[str, Any]) -> CondensedLinear:
    """A CondensedLinear with placeholder buffers of the saved shapes (filled by ``load_state_dict``)."""
    n_active, fan_in = args["n_active"], args["fan_in"]
    index = getattr(torch, args["index_dtype"])
    bias = torch.empty(args["out_features"]) if args["bias"] else None
    return CondensedLinear(
        torch.empty(n_active, fan_in),
        torch.empty(n_active, fan_in, dtype=index),
        torch.empty(n_active, dtype=torch.long),
        bias,
        args["in_features"],
        args["out_features"],
        args["backend"],
    )


def build_from_spec(spec: dict[str, Any]) -> nn.Module:
    """Rebuild the module tree described by ``module_spec`` (tensors uninitialised)."""
    module_path, _, name = spec["type"].rpartition(".")
    if not (module_path.startswith("torch.nn.modules") or module_path.startswith("lightning_srigl.condensed")):
        raise ValueError(f"refusing to build {spec['type']!r}: only torch.nn and lightning_srigl modules are allowed")
    cls = getattr(importlib.import_module(module_path), name)
    module = _empty_condensed(spec["args"]) if cls is CondensedLinear else cls(**spec["args"])
    for child_name, child_spec in spec["children"].items():
        module.add_module(child_name, build_from_spec(child_spec))
    return module


def save_condensed(model: nn.Module, path: str | Path, example_input: Tensor | tuple[Tensor, ...] | None = None) -> str:
    """Save ``model`` so [`load_condensed`][lightning_srigl.condensed.serialization.load_condensed] can rebuild it without the training code.

    Args:
        model: a model (typically with [`CondensedLinear`][lightning_srigl.condensed.linear.CondensedLinear] layers).
        path: destination file.
        example_input: needed only for models with custom modules; they are captured with
            ``torch.export`` on this input (one tensor or a tuple of positional tensors).

    Returns:
        The format used: ``"spec"`` or ``"exported"``.
    """
    try:
        payload = {"format": FORMAT, "kind": "spec", "spec": module_spec(model), "state_dict": model.state_dict()}
    except TypeError as error:
        if example_input is None:
            raise ValueError(
                f"{error}; pass example_input=... so the model can be saved as a torch.export program"
            ) from error
        inputs = example_input if isinstance(example_input, tuple) else (example_input,)
        buffer = io.BytesIO()
        torch.export.save(torch.export.export(model.eval(), inputs), buffer)
        program = torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)
        payload = {"format": FORMAT, "kind": "exported", "program": program}
    torch.save(payload, path)
    return payload["kind"]


def load_condensed(path: str | Path, map_location: str | torch.device | None = "cpu") -> nn.Module:
    """Load a model saved by [`save_condensed`][lightning_srigl.condensed.serialization.save_condensed] (safe ``weights_only`` load), in eval mode."""
    payload = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} was not written by lightning_srigl.condensed.save_condensed")
    if payload["kind"] == "exported":
        program = torch.export.load(io.BytesIO(payload["program"].numpy().tobytes()))
        return program.module()
    model = build_from_spec(payload["spec"])
    model.load_state_dict(payload["state_dict"], assign=True)
    return model.eval()
