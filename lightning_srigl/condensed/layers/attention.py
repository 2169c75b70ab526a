"""``ProjectedAttention``: ``nn.MultiheadAttention``'s forward with its projections as replaceable modules.

``nn.MultiheadAttention`` keeps its input projection as a packed ``in_proj_weight (3E, E)`` (or separate
``q/k/v_proj_weight`` when the key/value widths differ) and its output projection as ``out_proj``, and
runs them inside one fused function, so swapping a layer cannot reach them. `ProjectedAttention`
computes the same thing from modules: ``in_proj`` (``(..., E) -> (..., 3E)``) or ``q_proj``/``k_proj``/
``v_proj``, then ``F.scaled_dot_product_attention`` over the heads (or, with ``fast_attention`` set, which
``accelerate()`` does where it times faster, the ``lightning_srigl::attention`` op:
`lightning_srigl.kernels.attention`), then ``out_proj``. With condensed projections
(`ProjectedAttention.from_masked`) the attention output equals the masked dense module's up to float
rounding (int8 projections: docs/int8.md).

Supported as ``nn.MultiheadAttention`` supports them: ``batch_first`` or not, unbatched inputs,
self- and cross-attention, ``key_padding_mask`` and ``attn_mask`` (bool, True = not allowed, or float,
added), ``need_weights`` with ``average_attn_weights``, dropout in training mode. Not supported (the
dense module is kept, see `ProjectedAttention.from_masked`): ``bias_k``/``bias_v`` and
``add_zero_attn``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_srigl.condensed.layers.contract import dense_linear
from lightning_srigl.condensed.layers.int8_linear import Int8CondensedLinear
from lightning_srigl.condensed.layers.linear import CondensedLinear
from lightning_srigl.condensed.layers.weight_facts import WeightFacts
from lightning_srigl.kernels.attention import scaled_dot_product_attention

__all__ = ["ProjectedAttention"]

_SEPARATE = ("q_proj_weight", "k_proj_weight", "v_proj_weight")
_SPARSE_PROJECTIONS = (CondensedLinear, Int8CondensedLinear)


def _weight(projection: nn.Module | None) -> Tensor | WeightFacts | None:
    """A projection's weight (an int8 layer's ``weight`` buffer holds int8 values: its `WeightFacts` instead)."""
    if isinstance(projection, Int8CondensedLinear):
        shape = (projection.out_features, projection.in_features)
        return WeightFacts(shape, projection.weight_scale, type(projection).__name__)
    return None if projection is None else projection.weight


def _projection(weight: Tensor, mask: Tensor | None, bias: Tensor | None) -> nn.Module:
    """The condensed layer of ``weight * mask``, or a dense copy when the weight has no mask."""
    weight = weight.detach()
    bias = None if bias is None else bias.detach()
    if mask is None:
        return dense_linear(weight, bias)
    return CondensedLinear.from_dense_weight(weight * mask, mask, bias)


def _float_mask(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """A boolean mask (True = not allowed) as ``-inf``/``0``; a float mask as it is."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))
    return mask.to(dtype)


class ProjectedAttention(nn.Module):
    """Multi-head attention with module projections; ``forward`` takes ``nn.MultiheadAttention``'s arguments.

    Args:
        embed_dim, num_heads, batch_first, dropout: as for ``nn.MultiheadAttention``.
        out_proj: ``(..., E) -> (..., E)``.
        in_proj: packed ``(..., E) -> (..., 3E)`` (queries, keys, values), or None with
        q_proj, k_proj, v_proj: ``(..., E | kdim | vdim) -> (..., E)`` each.

    Attributes:
        fast_attention: run the attention itself (without weights or dropout) on the ``lightning_srigl::attention``
            op instead of torch's ``scaled_dot_product_attention`` (default False; ``accelerate()`` sets it where
            it times faster: `lightning_srigl.acceleration.attention`).
    """

    fast_attention: bool = False

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        out_proj: nn.Module,
        in_proj: nn.Module | None = None,
        q_proj: nn.Module | None = None,
        k_proj: nn.Module | None = None,
        v_proj: nn.Module | None = None,
        batch_first: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} must be divisible by num_heads={num_heads}")
        if (in_proj is None) == (q_proj is None or k_proj is None or v_proj is None):
            raise ValueError("give either in_proj or all of q_proj, k_proj and v_proj")
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.batch_first, self.dropout = batch_first, dropout
        self.in_proj, self.q_proj, self.k_proj, self.v_proj = in_proj, q_proj, k_proj, v_proj
        self.out_proj = out_proj

    @classmethod
    def from_masked(
        cls, attention: nn.MultiheadAttention, masks: Mapping[str, Tensor | None], out_mask: Tensor | None = None
    ) -> ProjectedAttention:
        """Condensed projections of ``attention`` with its weights times their masks.

        Args:
            attention: the sparse module.
            masks: ``{"in_proj_weight": (3E, E) mask}``, or for a module with separate projections
                (key/value widths other than ``E``) ``{"q_proj_weight": ..., "k_proj_weight": ...,
                "v_proj_weight": ...}``; a projection whose mask is missing or None stays dense.
            out_mask: the ``(E, E)`` mask of ``out_proj.weight`` (None: kept dense).

        Raises:
            NotImplementedError: ``bias_k``/``bias_v`` or ``add_zero_attn`` (keep the dense module).
            ValueError: a mask without constant fan-in.
        """
        if attention.bias_k is not None or attention.add_zero_attn:
            raise NotImplementedError("bias_k/bias_v and add_zero_attn are not supported; the dense module is kept")
        out = attention.out_proj
        out_proj = _projection(out.weight, out_mask, out.bias)
        common = {"batch_first": attention.batch_first, "dropout": attention.dropout}
        if attention.in_proj_weight is not None:
            in_proj = _projection(attention.in_proj_weight, masks.get("in_proj_weight"), attention.in_proj_bias)
            return cls(attention.embed_dim, attention.num_heads, out_proj, in_proj=in_proj, **common)
        biases = (None,) * 3 if attention.in_proj_bias is None else attention.in_proj_bias.chunk(3)
        q, k, v = (
            _projection(getattr(attention, name), masks.get(name), bias) for name, bias in zip(_SEPARATE, biases)
        )
        return cls(attention.embed_dim, attention.num_heads, out_proj, q_proj=q, k_proj=k, v_proj=v, **common)

    def _projections(self) -> dict[str, nn.Module]:
        """The projection modules by their ``nn.MultiheadAttention`` weight name."""
        if self.in_proj is not None:
            return {"in_proj_weight": self.in_proj, "out_proj.weight": self.out_proj}
        names = (*_SEPARATE, "out_proj.weight")
        return dict(zip(names, (self.q_proj, self.k_proj, self.v_proj, self.out_proj)))

    def to_dense(self) -> nn.MultiheadAttention:
        """The equivalent ``nn.MultiheadAttention`` with the masked dense projection weights."""
        dense = {
            name: proj.to_dense() if isinstance(proj, _SPARSE_PROJECTIONS) else proj
            for name, proj in self._projections().items()
        }
        out = dense["out_proj.weight"]
        first = dense.get("in_proj_weight", dense.get("q_proj_weight"))
        kdim = vdim = None
        if self.in_proj is None:
            kdim, vdim = dense["k_proj_weight"].in_features, dense["v_proj_weight"].in_features
        attention = nn.MultiheadAttention(
            self.embed_dim, self.num_heads, self.dropout, bias=first.bias is not None, kdim=kdim, vdim=vdim,
            batch_first=self.batch_first, device=out.weight.device, dtype=out.weight.dtype,
        )  # fmt: skip
        with torch.no_grad():
            for name, linear in dense.items():
                attention.get_parameter(name).copy_(linear.weight)
            biases = [dense[name].bias for name in dense if name != "out_proj.weight"]
            if attention.in_proj_bias is not None:
                attention.in_proj_bias.copy_(torch.cat(biases))
            if attention.out_proj.bias is not None:
                attention.out_proj.bias.copy_(out.bias)
        return attention

    def dense_masks(self) -> dict[str, Tensor]:
        """The masks of the condensed projections, by ``nn.MultiheadAttention`` weight name (a dense
        projection has none)."""
        return {
            name: proj.dense_masks()["weight"]
            for name, proj in self._projections().items()
            if isinstance(proj, _SPARSE_PROJECTIONS)
        }

    def spec_args(self) -> dict[str, object]:
        """Plain constructor facts for [`save_condensed`][lightning_srigl.condensed.serialization.save_condensed]
        (the projections are saved as children)."""
        return {
            "embed_dim": self.embed_dim, "num_heads": self.num_heads, "batch_first": self.batch_first,
            "dropout": self.dropout, "packed": self.in_proj is not None,
        }  # fmt: skip

    @classmethod
    def from_spec(cls, args: dict[str, object], tensors: dict[str, Tensor]) -> ProjectedAttention:
        """An attention whose projections are placeholders, replaced by the saved children."""
        args = dict(args)
        if args.pop("packed"):
            return cls(out_proj=nn.Identity(), in_proj=nn.Identity(), **args)
        return cls(out_proj=nn.Identity(), q_proj=nn.Identity(), k_proj=nn.Identity(), v_proj=nn.Identity(), **args)

    # What code around an nn.MultiheadAttention reads of it (nn.TransformerEncoderLayer's fast-path checks):
    # the projections' weights (a condensed projection's is a WeightFacts: shape, dtype, device) and biases.
    @property
    def _qkv_same_embed_dim(self) -> bool:
        return self.in_proj is not None

    @property
    def in_proj_weight(self) -> Tensor | WeightFacts | None:
        """``(3E, E)`` packed input projection weight (None with separate projections)."""
        return _weight(self.in_proj)

    @property
    def in_proj_bias(self) -> Tensor | None:
        """``(3E,)`` input projection bias, or None."""
        if self.in_proj is not None:
            return self.in_proj.bias
        biases = [self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]
        return None if any(b is None for b in biases) else torch.cat(biases)

    @property
    def q_proj_weight(self) -> Tensor | WeightFacts | None:
        return _weight(self.q_proj)

    @property
    def k_proj_weight(self) -> Tensor | WeightFacts | None:
        return _weight(self.k_proj)

    @property
    def v_proj_weight(self) -> Tensor | WeightFacts | None:
        return _weight(self.v_proj)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """``(L, B, E)`` (``(B, L, E)`` if ``batch_first``, ``(L, E)`` unbatched) -> the same shape, and the
        attention weights ``(B, L, S)`` (per head ``(B, H, L, S)``) when ``need_weights``."""
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint (as nn.MultiheadAttention does)")
        unbatched = query.dim() == 2
        q, k, v = self._project(query, key, value)
        if unbatched:
            q, k, v = q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0)
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
        batch, length, source = q.shape[0], q.shape[1], k.shape[1]
        heads = [t.reshape(batch, t.shape[1], self.num_heads, self.head_dim).transpose(1, 2) for t in (q, k, v)]
        mask = self._merged_mask(attn_mask, key_padding_mask, batch, length, source, q.dtype)
        dropout = self.dropout if self.training else 0.0
        if need_weights:
            out, weights = self._explicit_attention(*heads, mask, dropout)
            weights = weights.mean(dim=1) if average_attn_weights else weights
        elif self.fast_attention and dropout == 0.0:
            out, weights = scaled_dot_product_attention(*heads, attn_mask=mask), None
        else:
            out, weights = F.scaled_dot_product_attention(*heads, attn_mask=mask, dropout_p=dropout), None
        out = self.out_proj(out.transpose(1, 2).reshape(batch, length, self.embed_dim))
        if unbatched:
            return out.squeeze(0), None if weights is None else weights.squeeze(0)
        return (out if self.batch_first else out.transpose(0, 1)), weights

    def _project(self, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys and values ``(..., E)``. A packed projection runs once per distinct input tensor
        (self-attention: once) and each part takes its third of the outputs."""
        if self.in_proj is None:
            return self.q_proj(query), self.k_proj(key), self.v_proj(value)
        e = self.embed_dim
        if query is key and key is value:
            return self.in_proj(query).split(e, dim=-1)
        keys = self.in_proj(key)
        values = keys if value is key else self.in_proj(value)
        return self.in_proj(query)[..., :e], keys[..., e : 2 * e], values[..., 2 * e :]

    def _merged_mask(
        self, attn_mask: Tensor | None, key_padding_mask: Tensor | None, batch: int, length: int, source: int, dtype
    ) -> Tensor | None:
        """One additive mask broadcastable to ``(B, H, L, S)``, or None."""
        mask = None
        if attn_mask is not None:
            mask = _float_mask(attn_mask, dtype)
            mask = (
                mask.view(1, 1, length, source) if mask.dim() == 2 else mask.view(batch, self.num_heads, length, source)
            )
        if key_padding_mask is not None:
            padding = _float_mask(key_padding_mask, dtype).view(batch, 1, 1, source)
            mask = padding if mask is None else mask + padding
        return mask

    def _explicit_attention(
        self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout: float
    ) -> tuple[Tensor, Tensor]:
        """``softmax(q kᵀ / sqrt(d) + mask) v`` and the weights ``(B, H, L, S)`` (what ``need_weights`` returns)."""
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
        if mask is not None:
            scores = scores + mask
        weights = scores.softmax(dim=-1)
        attended = F.dropout(weights, dropout) if dropout > 0 else weights
        return attended @ v, weights

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, batch_first={self.batch_first}"
