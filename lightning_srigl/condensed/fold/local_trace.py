"""Dataflow graphs of a model without tracing the whole model: its largest ``torch.fx``-traceable parts.

Folding needs to know which module feeds which, and whether a value has other users. ``torch.fx``
tells exactly that, but tracing a whole model fails on much real code (Hugging Face models: "Proxy
object cannot be iterated", data-dependent control flow, ``len(x)`` on an input). Such failures are
usually local, so :func:`traced_graphs` traces the model, and where that fails each child (and so on
down), keeping the graphs of the parts that trace: an ``nn.Sequential`` chain, an MLP block, a ResNet
block. A value that leaves its part (the part's output) counts as used elsewhere, so whatever a fold
proves on a part's graph holds in the whole model.
"""

from __future__ import annotations

from torch import fx, nn

__all__ = ["traced_graphs"]


def traced_graphs(model: nn.Module) -> list[fx.Graph]:
    """Graphs of ``model``'s forward, or of its largest traceable submodules where the whole model does not
    trace (modules without children are not traced on their own). Node targets (``call_module``,
    ``get_attr``) are qualified names in ``model``, e.g. ``"encoder.3.mlp.0"``."""
    return _visit(model, "")


def _visit(module: nn.Module, prefix: str) -> list[fx.Graph]:
    try:
        graph = fx.Tracer().trace(module)
    except Exception:  # tracing runs arbitrary user code on proxies; any failure means "trace the parts"
        graphs: list[fx.Graph] = []
        for name, child in module.named_children():
            if next(child.children(), None) is not None:
                graphs += _visit(child, f"{prefix}.{name}" if prefix else name)
        return graphs
    if prefix:
        for node in graph.nodes:
            if node.op in ("call_module", "get_attr"):
                node.target = f"{prefix}.{node.target}"
    return [graph]
