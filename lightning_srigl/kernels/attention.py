"""The torch custom op ``lightning_srigl::attention``: exact fp32 attention for short sequences on the CPU.

``attention(query, key, value, attn_mask, scale, is_causal) -> out (B, H, Lq, D)`` equals
``F.scaled_dot_product_attention(query, key, value, attn_mask, is_causal=is_causal, scale=scale)`` (fp32, up
to the order of the sums; ``exp`` within 20 ulp): ``softmax(query key^T * scale + mask) value`` per batch and
head, with ``query (B, H, Lq, D)``, ``key`` and ``value (B, H, Lk, D)`` of any strides (Hugging Face's
transposed views are read in place), ``attn_mask`` fp32 (added) or bool (True = attend) broadcastable to
``(B, H, Lq, Lk)``, ``is_causal`` (query ``i`` sees keys ``0..i``). The output has the strides of a ``(B, Lq,
H, D)`` tensor, as torch's CPU flash attention returns it, so ``out.transpose(1, 2)`` is contiguous.

On the CPU the C++ kernel of the loaded variant (``csrc/attention.h``: register-tiled ``q k^T`` and ``p v``
with the scores of a block of query rows in L1; one query row at a time, unpacked, below `FEW_QUERIES` rows) runs
where it applies (`kernel_applies`: fp32, equal head counts and widths, at most `MAX_KEYS` keys unless fewer than
`FEW_QUERIES` queries, ``is_causal`` only with ``Lq == Lk`` and no mask); elsewhere, and without the C++ kernels,
torch's ``scaled_dot_product_attention`` does. Registered with
`torch.library.custom_op` (with a fake kernel), so ``torch.compile(fullgraph=True)`` and ``torch.export`` see
one node. Inference only: `scaled_dot_product_attention` calls torch's where a gradient is tracked.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.fx.experimental.symbolic_shapes import statically_known_true

from lightning_srigl.kernels import fakes
from lightning_srigl.kernels.cpu.loader import load_extension

OP_NAME = "lightning_srigl::attention"
# Longest key sequence the kernel takes: a head's packed keys and values (2 * Lk * D floats) and a block of query
# rows' scores then still fit in L2; longer sequences run torch's flash attention.
MAX_KEYS = 1024
# Fewer query rows than this (decoding) take the kernel's path without packing (``kFewQueries`` in
# csrc/attention.h), at any key length: its scratch is one row of scores.
FEW_QUERIES = 4

__all__ = [
    "FEW_QUERIES",
    "MAX_KEYS",
    "OP_NAME",
    "attention",
    "attention_reference",
    "kernel_applies",
    "scaled_dot_product_attention",
]


def attention_reference(
    query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None, scale: float, is_causal: bool
) -> Tensor:
    """``softmax(query key^T * scale + mask) value`` in plain torch, in the inputs' dtype (float64 in the tests):
    ``(B, H, Lq, D)``. A row with every key masked gives 0, as torch's ``scaled_dot_product_attention`` does."""
    scores = query @ key.transpose(-2, -1) * scale
    allowed = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device)
    if is_causal:
        allowed = allowed.tril()
    scores = scores.masked_fill(~allowed, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask.to(scores.dtype)
    masked = (scores == float("-inf")).all(-1, keepdim=True)
    weights = scores.masked_fill(masked, 0).softmax(-1).masked_fill(masked, 0)
    return weights @ value


def kernel_applies(query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None, is_causal: bool) -> bool:
    """Whether the C++ kernel computes this call (else torch's attention runs): fp32 CPU ``(B, H, L, D)`` tensors,
    key and value of the query's batch, heads and width, at most `MAX_KEYS` keys (any number with fewer than
    `FEW_QUERIES` queries), an fp32 or bool mask of at most 4 dimensions, ``is_causal`` only with as many queries
    as keys and no mask. Symbolic sizes (a compiled graph's, `direct_calls`) count only where the condition holds
    provably, without a guard."""
    tensors = (query, key, value) + (() if attn_mask is None else (attn_mask,))
    if not all(t.device.type == "cpu" for t in tensors) or not query.dim() == key.dim() == value.dim() == 4:
        return False
    if not query.dtype == key.dtype == value.dtype == torch.float32:
        return False
    # batch, heads and width (the key and value lengths, which a valid call has equal, the kernel checks: in a
    # compiled graph each cache tensor's marked-dynamic length is a symbol of its own)
    same_shapes = [(t.shape[i], query.shape[i]) for t in (key, value) for i in (0, 1, 3)]
    if not all(statically_known_true(a == b) for a, b in same_shapes):
        return False
    queries, keys = query.shape[2], key.shape[2]
    if not (statically_known_true(queries < FEW_QUERIES) or statically_known_true(keys <= MAX_KEYS)):
        return False
    if is_causal and (attn_mask is not None or not statically_known_true(queries == keys)):
        return False
    return attn_mask is None or (attn_mask.dtype in (torch.float32, torch.bool) and attn_mask.dim() <= 4)


def _torch_attention(
    query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None, scale: float, is_causal: bool
) -> Tensor:
    """torch's ``scaled_dot_product_attention``, laid out as the op's output (see the module docstring)."""
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, is_causal=is_causal, scale=scale)
    return out.transpose(1, 2).contiguous().transpose(1, 2)


def _cpu_kernel_or_torch(
    query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None, scale: float, is_causal: bool
) -> Tensor:
    """The C++ kernel where it applies (`kernel_applies`), else torch's attention: the `attention` op's body."""
    kernel = load_extension() if kernel_applies(query, key, value, attn_mask, is_causal) else None
    if kernel is None:
        return _torch_attention(query, key, value, attn_mask, scale, is_causal)
    return kernel.attention(query, key, value, attn_mask, scale, is_causal)


@torch.library.custom_op(OP_NAME, mutates_args=())
def attention(
    query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None, scale: float, is_causal: bool
) -> Tensor:
    """``(B, H, Lq, D)`` attention output; see the module docstring. CPU: the C++ kernel where it applies."""
    return _cpu_kernel_or_torch(query, key, value, attn_mask, scale, is_causal)


@attention.register_fake
def _attention_fake(
    query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None, scale: float, is_causal: bool
) -> Tensor:
    return fakes.attention(query, key, value, attn_mask, scale, is_causal)


def scaled_dot_product_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
) -> Tensor:
    """``F.scaled_dot_product_attention`` without dropout through the `attention` op (``scale`` default
    ``1 / sqrt(D)``); torch's own where a gradient is tracked (the op has no backward). Run eagerly, it is the op's
    body without the Python op around it (the loaded variant's op where the kernel applies, as a compiled graph calls
    it, `direct_calls`), so timing it eagerly times what the compiled graph runs."""
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    if torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value)):
        return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, is_causal=is_causal, scale=scale)
    run = attention if torch.compiler.is_compiling() else _cpu_kernel_or_torch  # compiled: one opaque node
    out: Tensor = run(query, key, value, attn_mask, scale, is_causal)
    return out
