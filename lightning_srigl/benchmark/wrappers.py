"""Ways of running a built layer that the GPU sweep compares: TF32 matmuls and CUDA-graph replay.

Both wrap an inference module and keep it as ``.inner``. They are benchmark methods, not library
defaults: whether CUDA graphs pay for condensed layers at small batch is what the GPU sweep measures
(``condensed_graph_fp32`` against ``condensed_fp32``, with ``dense_graph_fp32`` as its fair reference).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class TF32Matmul(nn.Module):
    """Runs ``inner`` with fp32 matmuls on TF32 tensor cores (``torch.set_float32_matmul_precision("high")``).

    The previous precision is restored after every call, so other methods keep exact fp32 matmuls.
    """

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        previous = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("high")
        try:
            return self.inner(x)
        finally:
            torch.set_float32_matmul_precision(previous)


class CUDAGraphReplay(nn.Module):
    """Replays ``inner`` from a CUDA graph captured on the first call with each input shape and dtype.

    The graph reads the tensor it was captured with: calls with that same tensor replay at once (a
    deployment that writes its inputs into one static buffer), any other tensor is first copied into
    it. The returned tensor is the graph's static output, overwritten by the next call.

    Raises:
        NotImplementedError: when ``inner`` is not on a CUDA device.
    """

    def __init__(self, inner: nn.Module, warmup: int = 3) -> None:
        super().__init__()
        device = next(iter([*inner.parameters(), *inner.buffers()]), torch.empty(0)).device
        if device.type != "cuda":
            raise NotImplementedError(f"CUDA graphs need a module on a CUDA device, this one is on {device}")
        self.inner = inner
        self.warmup = warmup
        self._graphs: dict[tuple[torch.Size, torch.dtype], tuple[torch.cuda.CUDAGraph, Tensor, Tensor]] = {}

    def forward(self, x: Tensor) -> Tensor:
        entry = self._graphs.get((x.shape, x.dtype))
        if entry is None:
            entry = self._graphs[(x.shape, x.dtype)] = self._capture(x)
        graph, static_input, static_output = entry
        if x is not static_input:
            static_input.copy_(x)
        graph.replay()
        return static_output

    def _capture(self, x: Tensor) -> tuple[torch.cuda.CUDAGraph, Tensor, Tensor]:
        """Warm up on a side stream (Triton compiles and autotunes here, outside the graph), then capture."""
        stream = torch.cuda.Stream(x.device)
        stream.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(stream):
            for _ in range(self.warmup):
                self.inner(x)
        torch.cuda.current_stream(x.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            output = self.inner(x)
        return graph, x, output
