// The condensed linear ops of one variant (the entry points: input checks, then the kernel of the regime):
//   y[b, a] = bias[a] + sum_j values[a, j] * x[b, indices[a, j]]
// x (B, in), values (A, k), indices (A, k) int16 or int32, bias (A,) or none -> y (B, A).
// Values/activations are fp32, bf16 or fp16; accumulation is always fp32.
// Regimes: B < 3 gather-dot (gather_dot.h), B >= 3 panels (panel.h), fp32 batch 1 with a layout gather-free
// (batch1.h: batch1_layout, batch1_forward, batch1_supported). Schemas: ops.cpp.
#include "batch1.h"
#include "gather_dot.h"
#include "panel.h"
#include "registration.h"

namespace lightning_srigl {
inline namespace CPU_CAPABILITY {

// Batches below this size use the gather-dot kernel.
constexpr int64_t kSmallBatch = 3;

// y (B, A), or with cols (A,) the active columns of y (B, ldy): the kernel of the batch size.
template <typename T, typename IT>
void run(const at::Tensor& x, const at::Tensor& values, const at::Tensor& indices, const T* bias, at::Tensor& y,
         const int64_t* cols = nullptr) {
  const int64_t B = x.size(0), in = x.size(1), A = values.size(0), k = values.size(1), ldy = y.size(1);
  const T* w = values.data_ptr<T>();
  const IT* idx = indices.data_ptr<IT>();
  T* yp = y.data_ptr<T>();
  if (B < kSmallBatch) {
    const at::Tensor xf = x.scalar_type() == at::kFloat ? x : x.to(at::kFloat);
    gather_dot<T, IT>(xf.data_ptr<float>(), B, in, w, idx, bias, A, k, yp, ldy, cols);
  } else {
    panel_product<T, IT>(x.data_ptr<T>(), B, in, w, idx, bias, A, k, Output<T>{yp, ldy, cols});
  }
}

template <typename T>
void run_typed(const at::Tensor& x, const at::Tensor& values, const at::Tensor& indices,
               const c10::optional<at::Tensor>& bias, at::Tensor& y, const int64_t* cols = nullptr) {
  const T* b = bias.has_value() ? bias->data_ptr<T>() : nullptr;
  if (indices.scalar_type() == at::kShort) {
    run<T, int16_t>(x, values, indices, b, y, cols);
  } else {
    run<T, int32_t>(x, values, indices, b, y, cols);
  }
}

void check_inputs(const at::Tensor& x, const at::Tensor& values, const at::Tensor& indices,
                  const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2 && values.dim() == 2, "condensed_linear: x must be (B, in) and values (A, k)");
  TORCH_CHECK(x.is_contiguous() && values.is_contiguous() && indices.is_contiguous(),
              "condensed_linear: x, values and indices must be contiguous (call .contiguous())");
  TORCH_CHECK(indices.sizes() == values.sizes(), "condensed_linear: indices ", indices.sizes(),
              " must have the shape of values ", values.sizes());
  TORCH_CHECK(indices.scalar_type() == at::kShort || indices.scalar_type() == at::kInt,
              "condensed_linear: indices must be int16 or int32, got ", indices.scalar_type());
  TORCH_CHECK(x.scalar_type() == values.scalar_type(), "condensed_linear: x dtype ", x.scalar_type(),
              " differs from values dtype ", values.scalar_type(), "; cast the input or the module");
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == values.size(0) && bias->is_contiguous() &&
                    bias->scalar_type() == values.scalar_type(),
                "condensed_linear: bias must be a contiguous (A,) tensor of the values' dtype");
  }
}

at::Tensor condensed_linear(const at::Tensor& x, const at::Tensor& values, const at::Tensor& indices,
                            const c10::optional<at::Tensor>& bias) {
  check_inputs(x, values, indices, bias);
  at::Tensor y = at::empty({x.size(0), values.size(0)}, x.options());
  if (y.numel() == 0) return y;
  switch (x.scalar_type()) {
    case at::kFloat: run_typed<float>(x, values, indices, bias, y); break;
    case at::kBFloat16: run_typed<bf16>(x, values, indices, bias, y); break;
    case at::kHalf: run_typed<fp16>(x, values, indices, bias, y); break;
    default: TORCH_CHECK(false, "condensed_linear: unsupported dtype ", x.scalar_type(),
                         " (use float32, bfloat16 or float16)");
  }
  return y;
}

// condensed_linear_rows in dtype T: the ablated columns get their bias (or 0), then the kernel writes the rest.
template <typename T>
void rows_typed(const at::Tensor& x, const at::Tensor& values, const at::Tensor& indices,
                const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& bias_active,
                const std::vector<int64_t>& ablated, const int64_t* rows, at::Tensor& y) {
  const int64_t B = y.size(0), out = y.size(1);
  const T* b = bias.has_value() ? bias->data_ptr<T>() : nullptr;
  T* yp = y.data_ptr<T>();
  for (int64_t s = 0; s < B; ++s) {
    for (const int64_t c : ablated) yp[s * out + c] = b ? b[c] : static_cast<T>(0.f);
  }
  if (values.size(0) > 0) run_typed<T>(x, values, indices, bias_active, y, rows);
}

// y (B, out_features): column rows[a] holds active row a's product plus bias[rows[a]], every other column its
// bias (or 0): condensed_linear followed by the scatter into the full width, in one pass (the kernels store
// each output at its column). rows: strictly increasing int64 (A,) in [0, out_features); bias (out_features,).
at::Tensor condensed_linear_rows(const at::Tensor& x, const at::Tensor& values, const at::Tensor& indices,
                                 const at::Tensor& rows, const c10::optional<at::Tensor>& bias, int64_t out_features) {
  check_inputs(x, values, indices, c10::nullopt);
  const int64_t A = values.size(0), B = x.size(0);
  TORCH_CHECK(rows.scalar_type() == at::kLong && rows.dim() == 1 && rows.is_contiguous() && rows.numel() == A,
              "condensed_linear_rows: rows must be a contiguous int64 (A,) tensor, one output column per row of values");
  const int64_t* r = rows.data_ptr<int64_t>();
  for (int64_t a = 0; a < A; ++a) {
    TORCH_CHECK(r[a] >= 0 && r[a] < out_features && (a == 0 || r[a] > r[a - 1]),
                "condensed_linear_rows: rows must be strictly increasing and lie in [0, ", out_features, ")");
  }
  TORCH_CHECK(!bias.has_value() || (bias->dim() == 1 && bias->numel() == out_features && bias->is_contiguous() &&
                                    bias->scalar_type() == values.scalar_type()),
              "condensed_linear_rows: bias must be a contiguous (", out_features, ",) tensor of the values' dtype");
  at::Tensor y = at::empty({B, out_features}, x.options());
  if (y.numel() == 0) return y;
  const c10::optional<at::Tensor> bias_active =
      bias.has_value() ? c10::optional<at::Tensor>(bias->index_select(0, rows)) : c10::nullopt;
  std::vector<int64_t> ablated;  // the columns no row of values writes
  ablated.reserve(out_features - A);
  for (int64_t c = 0, a = 0; c < out_features; ++c) {
    if (a < A && r[a] == c) ++a; else ablated.push_back(c);
  }
  switch (x.scalar_type()) {
    case at::kFloat: rows_typed<float>(x, values, indices, bias, bias_active, ablated, r, y); break;
    case at::kBFloat16: rows_typed<bf16>(x, values, indices, bias, bias_active, ablated, r, y); break;
    case at::kHalf: rows_typed<fp16>(x, values, indices, bias, bias_active, ablated, r, y); break;
    default: TORCH_CHECK(false, "condensed_linear_rows: unsupported dtype ", x.scalar_type(),
                         " (use float32, bfloat16 or float16)");
  }
  return y;
}

bool batch1_supported() { return kBatch1Kernel; }

// The batch-1 layout of fp32 values (A, k), indices (A, k) and output rows (A,); an empty tensor where
// this variant has no gather-free kernel.
at::Tensor batch1_layout(const at::Tensor& values, const at::Tensor& indices, const at::Tensor& rows,
                         int64_t in_features, int64_t out_features) {
  if (!kBatch1Kernel) return at::empty({0}, at::TensorOptions().dtype(at::kByte));
  TORCH_CHECK(values.scalar_type() == at::kFloat && values.dim() == 2 && values.is_contiguous() &&
                  indices.sizes() == values.sizes() && indices.is_contiguous(),
              "batch1_layout: needs contiguous fp32 values (A, k) and indices of the same shape");
  TORCH_CHECK(rows.scalar_type() == at::kLong && rows.is_contiguous() && rows.numel() == values.size(0),
              "batch1_layout: rows must be a contiguous int64 (A,) tensor of output rows");
  TORCH_CHECK(in_features <= kMaxInFeatures, "batch1_layout: at most ", kMaxInFeatures, " input features");
  const int64_t A = values.size(0), k = values.size(1);
  const int64_t* r = rows.data_ptr<int64_t>();
  TORCH_CHECK(std::all_of(r, r + A, [&](int64_t v) { return v >= 0 && v < out_features; }),
              "batch1_layout: rows must lie in [0, ", out_features, ")");
  if (indices.scalar_type() == at::kShort) {
    return build_layout(values.data_ptr<float>(), indices.data_ptr<int16_t>(), r, A, k, in_features, out_features);
  }
  TORCH_CHECK(indices.scalar_type() == at::kInt, "batch1_layout: indices must be int16 or int32");
  return build_layout(values.data_ptr<float>(), indices.data_ptr<int32_t>(), r, A, k, in_features, out_features);
}

at::Tensor batch1_forward(const at::Tensor& x, const at::Tensor& layout, const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(kBatch1Kernel, "batch1_forward: this variant has no gather-free batch-1 kernel; use condensed_linear");
  TORCH_CHECK(layout.scalar_type() == at::kByte && layout.is_contiguous() && layout.numel() >= kHeader * 8,
              "batch1_forward: layout must come from batch1_layout()");
  const uint8_t* base = layout.data_ptr<uint8_t>();
  int64_t header[kHeader];
  std::memcpy(header, base, sizeof(header));
  const int64_t A = header[1], in = header[2], out = header[3], G = header[4], S = header[5], nnz = header[6];
  const Sections s(G, S, A, nnz);
  TORCH_CHECK(header[0] == kMagic && header[7] == kFormat && layout.numel() == s.total,
              "batch1_forward: inconsistent layout, or one built by another kernel variant; rebuild it with "
              "this variant's batch1_layout()");
  TORCH_CHECK(x.dim() == 2 && x.size(0) == 1 && x.size(1) == in && x.scalar_type() == at::kFloat && x.is_contiguous(),
              "batch1_forward: x must be a contiguous fp32 (1, ", in, ") tensor");
  TORCH_CHECK(!bias.has_value() || (bias->scalar_type() == at::kFloat && bias->is_contiguous() && bias->numel() == out),
              "batch1_forward: bias must be a contiguous fp32 (", out, ",) tensor");
  const float* b = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  at::Tensor y = at::empty({1, out}, x.options());
  float* yp = y.data_ptr<float>();
  if (A < out) {  // ablated rows output their bias (or 0)
    if (b) std::memcpy(yp, b, out * sizeof(float)); else std::fill(yp, yp + out, 0.f);
  }
  const float* x_in = x.data_ptr<float>();
  at::parallel_for(0, G, 4, [&](int64_t g0, int64_t g1) {
    // x padded with zeros so that every window [start, start + kWindow) can be loaded; each thread pads
    // its own copy, so no thread reads lines another core has just written. The copy also tells whether
    // x is finite (x * 0 == 0), which lets idle lanes skip zeroing their activation.
    thread_local std::vector<float> padded;
    padded.assign(in + kWindow, 0.f);
    std::memcpy(padded.data(), x_in, in * sizeof(float));
    Vec probe(0.f);
    int64_t i = 0;
    for (; i + kLanes <= in; i += kLanes) probe = at::vec::fmadd(Vec::loadu(x_in + i), Vec(0.f), probe);
    float finite_probe = at::vec::vec_reduce_all<float>([](Vec& u, Vec& v) { return u + v; }, probe);
    for (; i < in; ++i) finite_probe += x_in[i] * 0.f;
    if (finite_probe == 0.f) {
      batch1_groups<true>(padded.data(), base, s, A, b, g0, g1, yp);
    } else {
      batch1_groups<false>(padded.data(), base, s, A, b, g0, g1, yp);
    }
  });
  return y;
}

}  // namespace CPU_CAPABILITY
}  // namespace lightning_srigl

TORCH_LIBRARY_IMPL(LSR_OPS_NAMESPACE, CPU, m) {
  m.impl("condensed_linear", &lightning_srigl::condensed_linear);
  m.impl("condensed_linear_rows", &lightning_srigl::condensed_linear_rows);
  m.impl("batch1_layout", &lightning_srigl::batch1_layout);
  m.impl("batch1_forward", &lightning_srigl::batch1_forward);
}

// No tensor argument to dispatch on: the key m.def(schema, fn) would register it under.
TORCH_LIBRARY_IMPL(LSR_OPS_NAMESPACE, CompositeImplicitAutograd, m) {
  m.impl("batch1_supported", &lightning_srigl::batch1_supported);
}
