"""Save and load condensed models without the training code.

Two formats, both one ``torch.save`` file read with ``weights_only=True`` (no arbitrary pickles):

* ``"spec"`` — for models built only from standard ``torch.nn`` modules and the package's inference
  layers (``CondensedLinear``, ...): an architecture tree (module type + constructor arguments read
  back from the module) plus the state dict. An inference layer is named by its stable name
  ``lightning_srigl.<class name>`` (``layer_name``), not by the module that holds it, so files load after
  the class moves (files written before 0.2, which named the module path, still load). Loading resolves
  each ``type`` in an exact allowlist (the classes ``torch.nn`` exports, and ``INFERENCE_LAYERS``
  that can be rebuilt), builds the modules — an inference layer from its own tensors, validated by
  its constructor — and assigns the tensors. A malformed or tampered file raises ``ValueError``.
* ``"exported"`` — for any other model (custom ``forward`` code, Hugging Face models): pass
  ``example_input`` and the model is captured with ``torch.export``, by default with every input
  dimension free to vary where the model allows it (batch size, sequence length, image size); the
  program is stored as bytes. ``torch.export.load`` unpickles, so loading one needs
  ``trust_exported=True``: only for files from a source you trust.

Every inference layer ``accelerate`` can choose saves either way: condensed linear layers and
convolutions, attention with condensed projections and CSR layers (kept as their three dense parts).
"""

from __future__ import annotations

import inspect
import io
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lightning_srigl.condensed.kinds.registry import INFERENCE_LAYERS
from lightning_srigl.condensed.layers.packed_linear import PackedLinear
from lightning_srigl.exported import ExportedModel, export_program

FORMAT = "lightning_srigl.condensed/1"
_SKIPPED_ARGS = {"self", "device", "dtype", "args", "kwargs"}
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_PLAIN = (bool, int, float, str, type(None))


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


# The exact classes a spec may name: torch.nn's exported modules and the rebuildable inference layers.
_TORCH_MODULES: dict[str, type[nn.Module]] = {
    _qualified(cls): cls
    for cls in vars(nn).values()
    if isinstance(cls, type) and issubclass(cls, nn.Module) and cls.__module__.startswith("torch.nn.modules")
}


def layer_name(cls: type) -> str:
    """The stable name a file gives an inference layer class, ``lightning_srigl.<class name>``: it does not
    change when the class moves between modules."""
    return f"lightning_srigl.{cls.__name__}"


_PACKAGE_LAYERS: dict[str, type[nn.Module]] = {
    layer_name(cls): cls
    for cls in (*INFERENCE_LAYERS, PackedLinear)
    if hasattr(cls, "from_spec") and hasattr(cls, "spec_args")
}
# Files written before 0.2 named a layer by its module path then; they still load.
_OLD_MODULES = {
    "CondensedLinear": "linear", "CSRLinear": "csr", "SemiStructuredLinear": "semi_structured",
    "CondensedConv2d": "conv", "CondensedConv1d": "conv", "ProjectedAttention": "attention",
}  # fmt: skip
_OLD_LAYER_NAMES: dict[str, str] = {
    f"lightning_srigl.condensed.{module}.{class_name}": f"lightning_srigl.{class_name}"
    for class_name, module in _OLD_MODULES.items()
}


def _plain(value: Any) -> bool:
    """True for values that survive ``weights_only`` loading unchanged."""
    if isinstance(value, (tuple, list)):
        return all(_plain(v) for v in value)
    return isinstance(value, _PLAIN)


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
    name = _qualified(cls)
    if _PACKAGE_LAYERS.get(layer_name(cls)) is cls:
        name, args = layer_name(cls), module.spec_args()
    elif isinstance(module, _CONTAINERS):
        args = {}
    elif _TORCH_MODULES.get(name) is cls and not list(module.children()):
        args = _torch_args(module)
    else:
        raise TypeError(f"cannot describe {name} from its attributes")
    children = {child_name: module_spec(child) for child_name, child in module.named_children()}
    return {"type": name, "args": args, "children": children}


def _malformed(where: str, problem: str) -> ValueError:
    return ValueError(f"malformed condensed file at {where or 'the root module'}: {problem}")


def build_from_spec(spec: dict[str, Any], state_dict: dict[str, Tensor], prefix: str = "") -> nn.Module:
    """Rebuild the module tree described by ``module_spec``.

    Inference layers are built from their tensors in ``state_dict`` (keys under ``prefix``) and so
    validated; standard modules are built on the ``meta`` device (no memory, whatever sizes the file
    claims) and get their tensors from ``load_state_dict(..., assign=True)``.

    Raises:
        ValueError: the spec is not a tree of ``{"type", "args", "children"}`` dicts, names a type
            outside the allowlist, or gives arguments or tensors its class rejects.
    """
    where = prefix.rstrip(".")
    if not isinstance(spec, dict) or not {"type", "args", "children"} <= spec.keys():
        raise _malformed(where, "expected a dict with 'type', 'args' and 'children'")
    type_name, args, children = spec["type"], spec["args"], spec["children"]
    if not isinstance(args, dict) or not isinstance(children, dict) or not all(isinstance(k, str) for k in children):
        raise _malformed(where, "'args' and 'children' must be dicts keyed by name")
    if isinstance(type_name, str):  # a name written before 0.2 -> its stable name
        type_name = _OLD_LAYER_NAMES.get(type_name, type_name)
    if not isinstance(type_name, str) or type_name not in _TORCH_MODULES.keys() | _PACKAGE_LAYERS.keys():
        raise ValueError(
            f"refusing to build {type_name!r} at {where or 'the root module'}: only torch.nn modules and "
            f"lightning_srigl's inference layers ({', '.join(sorted(_PACKAGE_LAYERS))}) may be loaded"
        )
    if type_name in _PACKAGE_LAYERS:
        own = ((k[len(prefix) :], v) for k, v in state_dict.items() if k.startswith(prefix))
        tensors = {name: v for name, v in own if "." not in name}
        args = dict(args)
        has_bias = args.pop("bias", None)  # recorded by spec_args (files from before it lack it)
        if has_bias is not None and has_bias is not ("bias" in tensors):
            found = "missing" if has_bias else "present"
            raise _malformed(where, f"the layer was saved with bias={has_bias} but {prefix}bias is {found}")
    try:
        if type_name in _PACKAGE_LAYERS:
            module = _PACKAGE_LAYERS[type_name].from_spec(args, tensors)
        else:
            with torch.device("meta"):
                module = _TORCH_MODULES[type_name](**args)
    except (TypeError, ValueError, KeyError, RuntimeError) as error:
        raise _malformed(where, f"cannot build {type_name}: {type(error).__name__}: {error}") from error
    for child_name, child_spec in children.items():
        child = build_from_spec(child_spec, state_dict, f"{prefix}{child_name}.")
        try:
            module.add_module(child_name, child)
        except (KeyError, TypeError) as error:
            raise _malformed(where, f"bad child name {child_name!r}: {error}") from error
    return module


def save_condensed(
    model: nn.Module,
    path: str | Path,
    example_input: Tensor | tuple[Tensor, ...] | None = None,
    dynamic_shapes: str | object | None = "auto",
) -> str:
    """Save ``model`` so [`load_condensed`][lightning_srigl.condensed.serialization.load_condensed] can rebuild it
    without the training code.

    Args:
        model: a model (typically with [`CondensedLinear`][lightning_srigl.condensed.layers.linear.CondensedLinear]
            layers).
        path: destination file.
        example_input: needed only for models with custom modules; they are captured with
            ``torch.export`` on this input (one tensor or a tuple of positional tensors).
        dynamic_shapes: for the exported format: ``"auto"`` lets every dimension of the example
            input vary where the model allows it (``torch.export.Dim.AUTO``), so the loaded model runs
            at other batch sizes and sequence lengths (a batch-1 example too: it is widened to 2 for
            the capture); ``None`` fixes the example's shapes; anything else is passed to
            ``torch.export.export`` as its ``dynamic_shapes``.

    Returns:
        The format used: ``"spec"`` or ``"exported"``. An exported model returns plain ``dict``s and
        ``tuple``s where the model returned other containers (a Hugging Face ``CausalLMOutput``
        becomes ``{"logits": ...}``), so loading it needs torch only; it takes its inputs by position
        or by their names in ``model.forward`` (``input_ids=``). A Hugging Face model is captured
        with its cache off (`exported`).

    Raises:
        ValueError: a custom model without ``example_input``, or one whose outputs are not tensors.
    """
    try:
        payload = {"format": FORMAT, "kind": "spec", "spec": module_spec(model), "state_dict": model.state_dict()}
    except TypeError as error:
        if example_input is None:
            raise ValueError(
                f"{error}; pass example_input=... so the model can be saved as a torch.export program"
            ) from error
        program, names = export_program(model, example_input, dynamic_shapes)
        payload = {"format": FORMAT, "kind": "exported", "program": program, "input_names": list(names)}
    torch.save(payload, path)
    return payload["kind"]


def _read(path: str | Path, map_location: str | torch.device | None) -> object:
    """``torch.load(path, weights_only=True)``; a file that is not a readable torch file raises ``ValueError``."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (FileNotFoundError, IsADirectoryError, PermissionError, MemoryError):
        raise
    except Exception as error:
        # torch's own message may advise weights_only=False: wrong advice for a file of unknown origin.
        raise ValueError(
            f"{path} is not a condensed model file: it is empty, truncated or not written by save_condensed "
            f"({type(error).__name__} while reading it)"
        ) from None


def load_condensed(
    path: str | Path, map_location: str | torch.device | None = "cpu", *, trust_exported: bool = False
) -> nn.Module:
    """Load a model saved by [`save_condensed`][lightning_srigl.condensed.serialization.save_condensed], in eval mode.

    Args:
        path: the file.
        map_location: where tensors go (as for ``torch.load``).
        trust_exported: allow an ``"exported"`` file; ``torch.export.load`` unpickles and can run code,
            so set it only for files from a source you trust. ``"spec"`` files never need it.

    Raises:
        ValueError: the file was not written by
            [`save_condensed`][lightning_srigl.condensed.serialization.save_condensed], is malformed or tampered with
            (unknown types, bad arguments, shapes, dtypes or indices), or is an exported program
            without ``trust_exported=True``.
    """
    payload = _read(path, map_location)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} was not written by lightning_srigl.condensed.save_condensed")
    if payload.get("kind") == "exported":
        if not trust_exported:
            raise ValueError(
                f"{path} holds a torch.export program; torch.export.load unpickles it, which can run code. "
                "Pass trust_exported=True only if you trust where the file comes from."
            )
        program = torch.export.load(io.BytesIO(payload["program"].numpy().tobytes()))
        names = payload.get("input_names", [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"{path}: input_names must be a list of strings")
        return ExportedModel(program.module(), names)
    state_dict = payload.get("state_dict")
    if payload.get("kind") != "spec" or not isinstance(state_dict, dict):
        raise ValueError(f"{path}: unknown kind {payload.get('kind')!r} or missing state_dict")
    if not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state_dict.items()):
        raise ValueError(f"{path}: the state_dict must map names to tensors")
    try:
        model = build_from_spec(payload["spec"], state_dict)
        # The inference layers were built from their tensors (validated, index dtypes normalised): keep those.
        built = {name: t for name, t in model.state_dict(keep_vars=True).items() if not t.is_meta}
        model.load_state_dict({**state_dict, **built}, assign=True)
    except RecursionError:
        raise ValueError(f"{path}: the architecture tree is nested too deeply") from None
    except RuntimeError as error:
        raise ValueError(f"{path}: the tensors do not fit the architecture: {error}") from error
    unfilled = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if unfilled:
        raise ValueError(f"{path}: no tensors for {unfilled}; the file is incomplete")
    return model.eval()
