"""How DDP and FSDP2 average the ranks' gradients over gloo, element by element (3 CPU processes).

For each rank's gradient ``g_r`` (random, different per rank), the script compares

* the gradient a real ``DistributedDataParallel`` module ends with, and
* the reduce-scatter FSDP2 runs for fp32 gradients (``ReduceOp.AVG``, see ``_get_gradient_divide_factors`` in
  ``torch.distributed.fsdp._fully_shard._fsdp_collectives``),

with the exact float32 results of every summation order: ``(g_a·fl(1/3) + g_b·fl(1/3)) + g_c·fl(1/3)`` (scaled
first, as DDP scales while filling its bucket) and ``((g_a + g_b) + g_c) / 3`` (divided last), for each of the
three ways to pair the ranks. It prints, per formula, the fraction of elements it reproduces bit for bit in each
third of the buffer. docs/distributed.md ("Why FSDP2 equals DDP bit for bit on 2 ranks, and to rounding on 3")
reads the result.

Usage (from the repository root): ``python scripts/gloo_average_order.py``
"""

from __future__ import annotations

import os
import socket
from itertools import permutations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn

RANKS, LENGTH = 3, 3 * 4096


def local_gradients() -> list[Tensor]:
    """Each rank's gradient of ``Linear(LENGTH, 1)``'s weight for its input: the input itself."""
    return [torch.randn(1, LENGTH, generator=torch.Generator().manual_seed(rank)) for rank in range(RANKS)]


def formulas(grads: list[Tensor]) -> dict[str, Tensor]:
    """Every float32 summation order of the three gradients, scaled first or divided last."""
    third = torch.tensor(1 / RANKS, dtype=torch.float32)
    result = {}
    for a, b, c in {tuple(sorted(p[:2])) + (p[2],) for p in permutations(range(RANKS))}:
        scaled = [g * third for g in grads]
        result[f"(g{a}/3 + g{b}/3) + g{c}/3"] = (scaled[a] + scaled[b]) + scaled[c]
        result[f"((g{a} + g{b}) + g{c}) / 3"] = ((grads[a] + grads[b]) + grads[c]) / RANKS
    return result


def run(rank: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=RANKS)
    torch.set_num_threads(1)
    grads = local_gradients()
    layer = nn.Linear(LENGTH, 1, bias=False)
    ddp = nn.parallel.DistributedDataParallel(layer)
    ddp(grads[rank]).sum().backward()  # d(sum(w x))/dw = x
    ddp_grad = layer.weight.grad.reshape(-1)
    reduced = torch.empty(LENGTH // RANKS)
    dist.reduce_scatter_tensor(reduced, grads[rank].reshape(-1).clone(), op=dist.ReduceOp.AVG)
    fsdp_parts = [torch.empty_like(reduced) for _ in range(RANKS)]
    dist.all_gather(fsdp_parts, reduced)
    if rank == 0:
        fsdp_grad = torch.cat(fsdp_parts)
        print(f"{'formula':28s} {'DDP (thirds of the bucket)':>30s} {'FSDP2 AVG (thirds = ranks)':>30s}")
        for name, value in formulas([g.reshape(-1) for g in grads]).items():
            shares = [
                " ".join(f"{float((got.view(RANKS, -1)[i] == value.view(RANKS, -1)[i]).float().mean()):.2f}"
                         for i in range(RANKS))
                for got in (ddp_grad, fsdp_grad)
            ]  # fmt: skip
            print(f"{name:28s} {shares[0]:>30s} {shares[1]:>30s}")
    dist.destroy_process_group()


if __name__ == "__main__":
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    mp.spawn(run, args=(free,), nprocs=RANKS)
