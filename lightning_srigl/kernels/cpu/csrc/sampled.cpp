// The sampled product op of one variant: go^T x at a mask's positions only (a masked weight's gradient in
// training; the entry point: input checks, then sampled.h's kernel). Schema: ops.cpp.
#include "registration.h"
#include "sampled.h"

namespace lightning_srigl {
inline namespace CPU_CAPABILITY {

// fp32 go (N, out), x (N, in), row_ptr (out + 1) int64, cols (nnz) int32 -> (out, in): go^T x at the
// positions (i, cols[p]) for p in [row_ptr[i], row_ptr[i + 1]), +0 elsewhere (sampled.h).
at::Tensor sampled_product_op(const at::Tensor& go, const at::Tensor& x, const at::Tensor& row_ptr,
                              const at::Tensor& cols) {
  TORCH_CHECK(go.dim() == 2 && x.dim() == 2 && go.size(0) == x.size(0),
              "sampled_product: go must be (N, out) and x (N, in) with the same N");
  TORCH_CHECK(go.scalar_type() == at::kFloat && x.scalar_type() == at::kFloat && go.is_contiguous() &&
                  x.is_contiguous(),
              "sampled_product: go and x must be contiguous fp32 tensors");
  const int64_t out = go.size(1), in = x.size(1);
  TORCH_CHECK(row_ptr.scalar_type() == at::kLong && row_ptr.dim() == 1 && row_ptr.numel() == out + 1 &&
                  row_ptr.is_contiguous(),
              "sampled_product: row_ptr must be a contiguous int64 (out + 1,) tensor");
  TORCH_CHECK(cols.scalar_type() == at::kInt && cols.dim() == 1 && cols.is_contiguous(),
              "sampled_product: cols must be a contiguous int32 (nnz,) tensor");
  const int64_t* rp = row_ptr.data_ptr<int64_t>();
  TORCH_CHECK(rp[0] == 0 && rp[out] == cols.numel(), "sampled_product: row_ptr must run from 0 to nnz = ",
              cols.numel());
  // The kernel writes grad[i, cols[p]] unchecked: one pass over the layout keeps a bad one from
  // reaching it (a few hundred microseconds against milliseconds of products).
  TORCH_CHECK(std::is_sorted(rp, rp + out + 1), "sampled_product: row_ptr must not decrease");
  const int32_t* cp = cols.data_ptr<int32_t>();
  const auto [low, high] = std::minmax_element(cp, cp + cols.numel());
  TORCH_CHECK(cols.numel() == 0 || (*low >= 0 && *high < in), "sampled_product: every column must lie in [0, ", in, ")");
  at::Tensor grad = at::empty({out, in}, x.options());
  if (grad.numel() == 0) return grad;
  sampled_product(go.data_ptr<float>(), x.data_ptr<float>(), x.size(0), out, in, rp, cols.data_ptr<int32_t>(),
                  grad.data_ptr<float>());
  return grad;
}

}  // namespace CPU_CAPABILITY
}  // namespace lightning_srigl

TORCH_LIBRARY_IMPL(LSR_OPS_NAMESPACE, CPU, m) { m.impl("sampled_product", &lightning_srigl::sampled_product_op); }
