// The attention op of one variant (the entry point: input checks, then attention.h's kernel per head):
//   torch.ops.<LSR_OPS_NAMESPACE>.attention(query, key, value, attn_mask, scale, is_causal) -> out
// fp32 query (B, H, Lq, D), key and value (B, H, Lk, D), any strides; attn_mask fp32 (added) or bool (True =
// attend) broadcastable to (B, H, Lq, Lk), or none; is_causal needs Lq == Lk and no mask. out is
// (B, H, Lq, D) with the strides of a (B, Lq, H, D) tensor. A bool mask that allows every key, or exactly the causal
// ones, runs as no mask or as is_causal (`allows_every_key`, `is_causal_mask`). See attention.h; the schema
// (ops.cpp) equals the Python op's (lightning_srigl/kernels/attention.py, tests/kernels/test_op_schemas.py).
#include <ATen/ATen.h>

#include "attention.h"
#include "registration.h"

namespace lightning_srigl {
inline namespace CPU_CAPABILITY {

namespace {

HeadStrides head_strides(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2)}; }

// The tensor with its last stride 1 (a copy only where it is not).
at::Tensor last_dim_dense(const at::Tensor& t) { return t.stride(-1) == 1 ? t : t.contiguous(); }

// attn_mask expanded to (B, H, Lq, Lk) (a view; a copy where the key stride is not 1).
at::Tensor expanded_mask(const at::Tensor& mask, const AttentionShape& s) {
  TORCH_CHECK(mask.scalar_type() == at::kFloat || mask.scalar_type() == at::kBool,
              "attention: attn_mask must be float32 (added to the scores) or bool (True = attend), got ",
              mask.scalar_type());
  TORCH_CHECK(mask.dim() <= 4, "attention: attn_mask must broadcast to (B, H, Lq, Lk), got ", mask.sizes());
  at::Tensor expanded = mask.expand({s.B, s.H, s.Lq, s.Lk});
  return s.Lk > 1 && expanded.stride(3) != 1 ? expanded.contiguous() : expanded;
}

// Whether every distinct (Lq, Lk) plane of the expanded bool mask (B, H, Lq, Lk) allows exactly `allowed(i, j)`.
template <typename Allowed>
bool mask_is(const at::Tensor& mask, const AttentionShape& s, Allowed allowed) {
  const bool* data = mask.data_ptr<bool>();
  const int64_t planes_b = mask.stride(0) == 0 ? 1 : s.B, planes_h = mask.stride(1) == 0 ? 1 : s.H;
  for (int64_t b = 0; b < planes_b; ++b) {
    for (int64_t h = 0; h < planes_h; ++h) {
      const bool* plane = data + b * mask.stride(0) + h * mask.stride(1);
      for (int64_t i = 0; i < s.Lq; ++i) {
        const bool* row = plane + i * mask.stride(2);
        for (int64_t j = 0; j < s.Lk; ++j) {
          if (row[j * mask.stride(3)] != allowed(i, j)) return false;
        }
      }
    }
  }
  return true;
}

// The bool masks a compiled Hugging Face model materialises where its eager masking passes none (it skips them
// only when not compiling): one that allows every key (no mask) or, with Lq == Lk, exactly keys 0..i to query i
// (causal). They run as what they are, without reading the mask: the same outputs (a masked score is never used
// either way), and the causal path skips the keys no query of a block sees. The checks read the planes once.
bool allows_every_key(const at::Tensor& mask, const AttentionShape& s) {
  return mask.scalar_type() == at::kBool && mask_is(mask, s, [](int64_t, int64_t) { return true; });
}
bool is_causal_mask(const at::Tensor& mask, const AttentionShape& s) {
  return mask.scalar_type() == at::kBool && s.Lq == s.Lk &&
         mask_is(mask, s, [](int64_t i, int64_t j) { return j <= i; });
}

}  // namespace

at::Tensor attention(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                     const c10::optional<at::Tensor>& attn_mask, double scale, bool is_causal) {
  TORCH_CHECK(query.dim() == 4 && key.dim() == 4 && value.dim() == 4,
              "attention: query, key and value must be (B, H, L, D)");
  TORCH_CHECK(query.scalar_type() == at::kFloat && key.scalar_type() == at::kFloat &&
                  value.scalar_type() == at::kFloat,
              "attention: query, key and value must be float32");
  const AttentionShape s{query.size(0), query.size(1), query.size(2), key.size(2), query.size(3)};
  TORCH_CHECK(key.size(0) == s.B && value.size(0) == s.B && key.size(1) == s.H && value.size(1) == s.H &&
                  value.size(2) == s.Lk && key.size(3) == s.D && value.size(3) == s.D,
              "attention: key and value must be (B, H, Lk, D) with query's B, H and D; got query ", query.sizes(),
              ", key ", key.sizes(), ", value ", value.sizes());
  TORCH_CHECK(!is_causal || (s.Lq == s.Lk && !attn_mask.has_value()),
              "attention: is_causal needs as many queries as keys and no attn_mask");
  at::Tensor out = at::empty({s.B, s.Lq, s.H, s.D}, query.options()).transpose(1, 2);
  if (out.numel() == 0) return out;
  if (s.Lk == 0) return out.zero_();
  const at::Tensor q = last_dim_dense(query), k = last_dim_dense(key), v = last_dim_dense(value);
  at::Tensor mask = attn_mask.has_value() ? expanded_mask(*attn_mask, s) : at::Tensor();
  if (mask.defined() && allows_every_key(mask, s)) {
    mask = at::Tensor();
  } else if (mask.defined() && is_causal_mask(mask, s)) {
    mask = at::Tensor();
    is_causal = true;
  }
  const bool has_mask = mask.defined(), bool_mask = has_mask && mask.scalar_type() == at::kBool;
  // Values rows not whole vectors, or apart (Hugging Face's (B, L, H, D) views: rows H * D floats apart, which
  // the P V product would read from a few L1 sets and many pages) are packed per head.
  const AttentionScratch layout(s, s.D % kLanes != 0 || v.stride(2) != s.D);
  const HeadStrides sq = head_strides(q), sk = head_strides(k), sv = head_strides(v);
  const float *qp = q.data_ptr<float>(), *kp = k.data_ptr<float>(), *vp = v.data_ptr<float>();
  const float* add = has_mask && !bool_mask ? mask.data_ptr<float>() : nullptr;
  const bool* allowed = bool_mask ? mask.data_ptr<bool>() : nullptr;
  float* op = out.data_ptr<float>();
  const float scale_f = static_cast<float>(scale);
  at::parallel_for(0, s.B * s.H, 1, [&](int64_t t0, int64_t t1) {
    float* scratch = scratch_buffer(layout.total);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / s.H, h = t % s.H;
      const int64_t at = has_mask ? b * mask.stride(0) + h * mask.stride(1) : 0;
      const HeadMask head_mask{add ? add + at : nullptr, allowed ? allowed + at : nullptr,
                               has_mask ? mask.stride(2) : 0};
      attention_head(qp + b * sq.batch + h * sq.head, kp + b * sk.batch + h * sk.head,
                     vp + b * sv.batch + h * sv.head, sq, sk, sv, head_mask, s, scale_f, is_causal, layout, scratch,
                     op + b * out.stride(0) + h * out.stride(1), out.stride(2));
    }
  });
  return out;
}

}  // namespace CPU_CAPABILITY
}  // namespace lightning_srigl

TORCH_LIBRARY_IMPL(LSR_OPS_NAMESPACE, CPU, m) { m.impl("attention", &lightning_srigl::attention); }
