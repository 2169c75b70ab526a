"""The inductor post-grad passes of the compiled graph (``post_grad_custom_post_pass`` in `compiled`'s options).

In order: `residual_fusion.fuse_residuals` (a ResNet block's residual addition and ReLU into the condensed
convolution's epilogue), `pointwise_rewrites.rewrite_one_plus_tanh` (the tanh GELU's ``1 + tanh(u)`` as ``2
sigmoid(2u)``) and, with ``direct`` (``torch.compile`` in this process; not an AOTInductor package, which must run on
other CPUs), `direct_calls.call_kernel_directly` (our ops' calls pointed at the loaded C++ variant's ops).
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any

from torch import fx
from torch._inductor.custom_graph_pass import CustomGraphPass

from lightning_srigl.kernels import direct_calls, pointwise_rewrites, residual_fusion

__all__ = ["PostGradPasses"]


class PostGradPasses(CustomGraphPass):
    """The passes the module docstring lists, as one inductor custom graph pass (its ``uuid`` keys inductor's
    cache)."""

    def __init__(self, direct: bool = False) -> None:
        self.direct = direct

    def __call__(self, graph: fx.Graph) -> None:
        residual_fusion.fuse_residuals(graph)
        pointwise_rewrites.rewrite_one_plus_tanh(graph)
        if self.direct:
            direct_calls.call_kernel_directly(graph)

    def uuid(self) -> Any:
        """The key of the graphs these passes rewrote in inductor's on-disk cache: the passes' own code (the sources
        of this module and the three it runs: a changed rewrite must not load graphs the old one made) and, with
        ``direct``, the loaded variant and its kernel sources, whose ops those graphs name (another variant, a
        disabled extension or a rebuilt one must not load them)."""
        key = f"lightning_srigl.post_grad_passes={_passes_hash()}.direct="
        if not self.direct:
            return key + "False"
        from lightning_srigl.kernels.cpu.loader import load_extension
        from lightning_srigl.kernels.cpu.variants import source_hash

        kernel = load_extension()
        return f"{key}{kernel and kernel.variant}.sources={source_hash()}"


@functools.cache
def _passes_hash() -> str:
    """A digest of the source files of this module and the passes it runs."""
    digest = hashlib.sha256()
    for path in (residual_fusion.__file__, pointwise_rewrites.__file__, direct_calls.__file__, __file__):
        digest.update(Path(str(path)).read_bytes())
    return digest.hexdigest()[:16]
