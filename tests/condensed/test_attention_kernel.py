"""``lightning_srigl::attention`` against its float64 reference and torch's ``scaled_dot_product_attention``:
random shapes, masks, causal, strided inputs, every CPU variant this host runs, non-finite inputs, the fake."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_srigl.kernels.attention import (
    FEW_QUERIES,
    MAX_KEYS,
    attention,
    attention_reference,
    kernel_applies,
    scaled_dot_product_attention,
)


def _strided(shape: tuple[int, int, int, int], layout: str, generator: torch.Generator) -> torch.Tensor:
    """A ``(B, H, L, D)`` tensor: contiguous, a transposed view of ``(B, L, H, D)`` (Hugging Face), or with
    every other element of a wider last dimension (a last stride of 2)."""
    batch, heads, length, dim = shape
    if layout == "contiguous":
        return torch.randn(shape, generator=generator)
    if layout == "transposed":
        return torch.randn(batch, length, heads, dim, generator=generator).transpose(1, 2)
    return torch.randn(batch, heads, length, 2 * dim, generator=generator)[..., ::2]


def _mask(kind: str, batch: int, heads: int, queries: int, keys: int, generator: torch.Generator):
    if kind == "none":
        return None
    if kind == "float":  # per batch, broadcast over heads
        return torch.randn(batch, 1, queries, keys, generator=generator)
    if kind == "float2d":
        return torch.randn(queries, keys, generator=generator)
    padding = torch.rand(batch, 1, 1, keys, generator=generator) < 0.7  # bool, True = attend (BERT's padding)
    padding[..., 0] = True
    return padding


def _random_case(seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    pick = lambda options: options[int(torch.randint(len(options), (1,), generator=generator))]  # noqa: E731
    batch, heads = pick([0, 1, 2, 3]), pick([1, 2, 3])
    dim = pick([32, 64, 80])
    causal = pick([False, True])
    queries = int(torch.randint(1, 301, (1,), generator=generator))
    keys = queries if causal else pick([queries, int(torch.randint(1, 301, (1,), generator=generator))])
    mask = "none" if causal else pick(["none", "float", "float2d", "bool"])
    layout = pick(["contiguous", "transposed", "strided"])
    q = _strided((batch, heads, queries, dim), layout, generator)
    k = _strided((batch, heads, keys, dim), layout, generator)
    v = _strided((batch, heads, keys, dim), pick(["contiguous", "transposed", "strided"]), generator)
    return {"q": q, "k": k, "v": v, "mask": _mask(mask, batch, heads, queries, keys, generator),
            "scale": 1 / math.sqrt(dim) * pick([1.0, 0.5]), "causal": causal}  # fmt: skip


def _reference(case: dict) -> torch.Tensor:
    mask = case["mask"]
    mask = mask.double() if mask is not None and mask.is_floating_point() else mask
    return attention_reference(
        case["q"].double(), case["k"].double(), case["v"].double(), mask, case["scale"], case["causal"]
    )


def _assert_exact(out: torch.Tensor, reference: torch.Tensor, value: torch.Tensor) -> None:
    """fp32 within 1e-5 of the float64 reference, relative to the output and to the values' scale (each output
    is a convex combination of value rows)."""
    scale = float(value.abs().max()) if value.numel() else 1.0
    torch.testing.assert_close(out.double(), reference, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("seed", range(16))
def test_every_variant_matches_the_float64_reference(kernel, seed: int) -> None:
    case = _random_case(seed)
    out = kernel.attention(case["q"], case["k"], case["v"], case["mask"], case["scale"], case["causal"])
    assert out.shape == case["q"].shape
    _assert_exact(out, _reference(case), case["v"])


def _decoding_case(seed: int) -> dict:
    """A case of the kernel's few-query path: 1 to FEW_QUERIES - 1 query rows (decoding), up to 1500 keys (past
    MAX_KEYS), widths that are and are not whole vectors, every mask kind and layout."""
    generator = torch.Generator().manual_seed(1000 + seed)
    pick = lambda options: options[int(torch.randint(len(options), (1,), generator=generator))]  # noqa: E731
    batch, heads, dim = pick([1, 2, 3]), pick([1, 2, 4]), pick([32, 64, 72, 80, 8])
    queries = int(torch.randint(1, FEW_QUERIES, (1,), generator=generator))
    causal = pick([False, True])
    keys = queries if causal else pick([1, 7, 129, 1500])
    mask = "none" if causal else pick(["none", "float", "float2d", "bool"])
    layout = pick(["contiguous", "transposed", "strided"])
    q = _strided((batch, heads, queries, dim), layout, generator)
    k = _strided((batch, heads, keys, dim), pick(["contiguous", "transposed", "strided"]), generator)
    v = _strided((batch, heads, keys, dim), pick(["contiguous", "transposed", "strided"]), generator)
    return {"q": q, "k": k, "v": v, "mask": _mask(mask, batch, heads, queries, keys, generator),
            "scale": 1 / math.sqrt(dim), "causal": causal}  # fmt: skip


@pytest.mark.parametrize("seed", range(16))
def test_every_variant_decodes_like_the_float64_reference(kernel, seed: int) -> None:
    case = _decoding_case(seed)
    out = kernel.attention(case["q"], case["k"], case["v"], case["mask"], case["scale"], case["causal"])
    assert out.shape == case["q"].shape and out.transpose(1, 2).is_contiguous()
    _assert_exact(out, _reference(case), case["v"])


def test_a_decoding_row_masks_and_propagates_like_torch(kernel) -> None:
    """One query row (the few-query path): every key masked gives 0, a NaN key gives NaN, as torch's math path."""
    q, k, v = torch.randn(2, 3, 1, 64), torch.randn(2, 3, 40, 64), torch.randn(2, 3, 40, 64)
    mask = torch.ones(2, 1, 1, 40, dtype=torch.bool)
    mask[1] = False
    out = kernel.attention(q, k, v, mask, 0.125, False)
    assert torch.equal(out[1], torch.zeros(3, 1, 64))
    torch.testing.assert_close(out[0], F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.125)[0])
    k[0, 2, 17, 5] = float("nan")
    out = kernel.attention(q, k, v, None, 0.125, False)
    assert out[0, 2].isnan().all() and not out[0, :2].isnan().any() and not out[1].isnan().any()


def test_few_queries_take_the_kernel_at_any_key_length() -> None:
    k = v = torch.randn(1, 2, MAX_KEYS + 500, 32)
    for queries in range(1, FEW_QUERIES + 1):
        q = torch.randn(1, 2, queries, 32)
        assert kernel_applies(q, k, v, None, False) == (queries < FEW_QUERIES)
        _assert_exact(attention(q, k, v, None, 0.2, False), attention_reference(q.double(), k.double(),
                      v.double(), None, 0.2, False), v)  # fmt: skip


@pytest.mark.parametrize("planes", ["shared", "per_batch"])
def test_a_causal_bool_mask_runs_as_causal(kernel, planes: str) -> None:
    """A bool mask that allows exactly keys 0..i to query i (what a compiled Hugging Face decoder passes) gives the
    causal path's outputs, bit for bit; a mask one entry away from it is applied as a mask."""
    q, k, v = (torch.randn(2, 3, 9, 32) for _ in range(3))
    causal = torch.ones(9, 9, dtype=torch.bool).tril()
    mask = causal.expand(1, 1, 9, 9) if planes == "shared" else causal.repeat(2, 1, 1, 1)
    k[0, 1, 7] = float("nan")  # a key only queries 7 and 8 see
    out = kernel.attention(q, k, v, mask, 0.2, False)
    torch.testing.assert_close(out, kernel.attention(q, k, v, None, 0.2, True), rtol=0, atol=0, equal_nan=True)
    assert out[0, 1, :7].isfinite().all() and out[0, 1, 7:].isnan().all()
    near = mask.clone()
    near[-1, 0, 8, 3] = False  # one more key hidden from the last query
    k[0, 1, 7] = 1.0
    expected = attention_reference(q.double(), k.double(), v.double(), near, 0.2, False)
    _assert_exact(kernel.attention(q, k, v, near, 0.2, False), expected, v)


def test_a_bool_mask_allowing_every_key_runs_as_no_mask(kernel) -> None:
    q, k, v = torch.randn(2, 3, 1, 32), torch.randn(2, 3, 11, 32), torch.randn(2, 3, 11, 32)
    k[1, 2, 4] = float("nan")
    everything = torch.ones(2, 1, 1, 11, dtype=torch.bool)
    expected = kernel.attention(q, k, v, None, 0.2, False)
    torch.testing.assert_close(kernel.attention(q, k, v, everything, 0.2, False), expected, rtol=0, atol=0,
                               equal_nan=True)  # fmt: skip
    everything[1, 0, 0, 4] = False  # the NaN key masked: that row is finite again
    assert kernel.attention(q, k, v, everything, 0.2, False)[1, 2].isfinite().all()


def test_the_output_has_the_strides_of_a_batch_length_heads_tensor(kernel) -> None:
    q, k, v = (torch.randn(2, 3, 5, 32) for _ in range(3))
    out = kernel.attention(q, k, v, None, 0.2, False)
    assert out.transpose(1, 2).is_contiguous() and out.shape == (2, 3, 5, 32)


def test_a_row_with_every_key_masked_gives_zero_like_torch(kernel) -> None:
    q, k, v = (torch.randn(2, 2, 6, 32) for _ in range(3))
    mask = torch.ones(2, 1, 6, 6, dtype=torch.bool)
    mask[1, :, 3] = False
    out = kernel.attention(q, k, v, mask, 0.2, False)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.2)
    assert torch.equal(out[1, :, 3], torch.zeros(2, 32))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("operand", "where", "value"), [
    ("q", (0, 1, 4, 3), float("nan")), ("k", (1, 0, 2, 0), float("nan")), ("v", (0, 0, 7, 5), float("nan")),
    ("q", (1, 1, 0, 0), float("inf")), ("v", (1, 1, 3, 2), float("-inf")),
])  # fmt: skip
def test_non_finite_inputs_propagate_like_torch_math(kernel, operand: str, where: tuple, value: float) -> None:
    """As torch's math attention and the reference (torch's CPU flash kernel alone returns finite values for a
    query row holding a NaN)."""
    tensors = {name: torch.randn(2, 2, 9, 32) for name in "qkv"}
    tensors[operand][where] = value
    out = kernel.attention(tensors["q"], tensors["k"], tensors["v"], None, 0.2, False)
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        expected = F.scaled_dot_product_attention(tensors["q"], tensors["k"], tensors["v"], scale=0.2)
    reference = attention_reference(*(tensors[name].double() for name in "qkv"), None, 0.2, False)
    assert torch.equal(out.isnan(), expected.isnan()) and torch.equal(out.isnan(), reference.isnan())
    assert not out.isfinite().all()
    torch.testing.assert_close(out.double(), reference, rtol=1e-5, atol=1e-5, equal_nan=True)


def test_causal_rows_see_a_non_finite_key_from_its_position_on(kernel) -> None:
    q, k, v = (torch.randn(1, 2, 12, 32) for _ in range(3))
    k[0, 0, 5, 1] = float("nan")
    out = kernel.attention(q, k, v, None, 0.2, True)
    assert not out[0, 0, :5].isnan().any() and out[0, 0, 5:].isnan().all() and not out[0, 1].isnan().any()
    reference = attention_reference(q.double(), k.double(), v.double(), None, 0.2, True)
    torch.testing.assert_close(out[0, 0, :5].double(), reference[0, 0, :5], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("batch", "queries", "keys"), [(0, 4, 4), (2, 0, 4), (2, 4, 0)])
def test_empty_inputs_give_what_torch_gives(kernel, batch: int, queries: int, keys: int) -> None:
    q, k, v = torch.randn(batch, 2, queries, 32), torch.randn(batch, 2, keys, 32), torch.randn(batch, 2, keys, 32)
    assert torch.equal(kernel.attention(q, k, v, None, 0.2, False), F.scaled_dot_product_attention(q, k, v))


def test_bad_inputs_raise_errors_that_name_them(kernel) -> None:
    q = torch.randn(1, 2, 4, 32)
    with pytest.raises(RuntimeError, match="attn_mask must be float32"):
        kernel.attention(q, q, q, torch.zeros(4, 4, dtype=torch.int32), 0.2, False)
    with pytest.raises(RuntimeError, match="is_causal needs as many queries as keys"):
        kernel.attention(q, torch.randn(1, 2, 5, 32), torch.randn(1, 2, 5, 32), None, 0.2, True)
    with pytest.raises(RuntimeError, match="must be float32"):
        kernel.attention(q.double(), q.double(), q.double(), None, 0.2, False)


@pytest.mark.parametrize(("queries", "keys", "heads_kv", "causal", "dtype"), [
    (6, 9, 2, True, torch.float32),  # causal with Lq != Lk: torch's top-left alignment
    (5, MAX_KEYS + 3, 2, False, torch.float32),  # longer than the kernel takes
    (4, 4, 2, False, torch.float64),
])  # fmt: skip
def test_the_op_runs_torch_attention_where_the_kernel_does_not_apply(queries, keys, heads_kv, causal, dtype) -> None:
    q = torch.randn(1, 2, queries, 32, dtype=dtype)
    k, v = torch.randn(1, heads_kv, keys, 32, dtype=dtype), torch.randn(1, heads_kv, keys, 32, dtype=dtype)
    assert not kernel_applies(q, k, v, None, causal)
    out = attention(q, k, v, None, 0.3, causal)
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=0.3))
    assert out.transpose(1, 2).is_contiguous()


@pytest.mark.parametrize("seed", range(4))
def test_the_op_matches_the_reference(seed: int) -> None:
    case = _random_case(100 + seed)
    out = attention(case["q"], case["k"], case["v"], case["mask"], case["scale"], case["causal"])
    _assert_exact(out, _reference(case), case["v"])


def test_opcheck_passes_for_the_op() -> None:
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(2, 10, 3, 32, generator=generator).transpose(1, 2)
    k, v = torch.randn(2, 3, 7, 32, generator=generator), torch.randn(2, 3, 7, 32, generator=generator)
    mask = torch.rand(2, 1, 1, 7, generator=generator) < 0.8
    for args in [(q, k, v, None, 0.2, False), (q, k, v, mask, 0.2, False), (q, q, q, None, 0.2, True)]:
        torch.library.opcheck(attention, args)


def test_sdpa_entry_uses_torch_where_a_gradient_is_tracked() -> None:
    q, k, v = (torch.randn(1, 2, 5, 32, requires_grad=True) for _ in range(3))
    scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()
    assert q.grad is not None and k.grad is not None and v.grad is not None
    with torch.no_grad():
        ours = scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, is_causal=True), rtol=1e-5, atol=1e-6)
