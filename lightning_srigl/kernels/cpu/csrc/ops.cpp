// Condensed constant-fan-in linear layer on the CPU, registered as torch ops:
//   y[b, a] = bias[a] + sum_j values[a, j] * x[b, indices[a, j]]
// x (B, in), values (A, k), indices (A, k) int16 or int32, bias (A,) or none -> y (B, A).
// Values/activations are fp32, bf16 or fp16; accumulation is always fp32.
//
// This file is compiled once per instruction set into its own shared library, which registers
//   torch.ops.<LSR_OPS_NAMESPACE>.condensed_linear(x, values, indices, bias) -> y
//   torch.ops.<LSR_OPS_NAMESPACE>.condensed_linear_rows(x, values, indices, rows, bias, out_features) -> y (B, out)
//   torch.ops.<LSR_OPS_NAMESPACE>.batch1_layout(values, indices, rows, in_features, out_features) -> layout
//   torch.ops.<LSR_OPS_NAMESPACE>.batch1_forward(x, layout, bias) -> y (1, out)
//   torch.ops.<LSR_OPS_NAMESPACE>.batch1_supported() -> bool
//   torch.ops.<LSR_OPS_NAMESPACE>.condensed_conv2d(x, values, indices, rows, bias, out_channels, groups,
//                                                  kernel_size, stride, padding, dilation, block, relu, residual)
//                                                  -> y (N, out, Ho, Wo)
//   torch.ops.<LSR_OPS_NAMESPACE>.sampled_product(go, x, row_ptr, cols) -> grad (out, in)
//   torch.ops.<LSR_OPS_NAMESPACE>.int8_condensed_linear(x2d, weight, indices, weight_sum, weight_scale, rows,
//                                         bias, layout, out_features, input_scale, input_zero, mode) -> y (B, out)
//   torch.ops.<LSR_OPS_NAMESPACE>.int8_window_layout(weight, indices, in_features) -> layout (int8_window.h)
//   torch.ops.<LSR_OPS_NAMESPACE>.int8_path(mode) -> str (which int8 dot-product path runs: int8.h)
// Regimes: B < 3 gather-dot (gather_dot.h), B >= 3 panels (panel.h), fp32 batch 1 with a layout
// gather-free (batch1.h). sampled.h: go^T x at a mask's positions only (a masked weight's gradient
// in training). Threads come from at::parallel_for, i.e. torch.get_num_threads().
// To add a kernel: follow the checklist in docs/design.md ("Adding an op"); the schemas below must equal
// their Python ops' (tests/kernels/test_op_schemas.py compares them).
#include <torch/library.h>

#include "batch1.h"
#include "conv.h"
#include "gather_dot.h"
#include "int8.h"
#include "int8_window.h"
#include "panel.h"
#include "sampled.h"

#ifndef LSR_OPS_NAMESPACE
#error "build with -DLSR_OPS_NAMESPACE=lightning_srigl_<variant> (see lightning_srigl/kernels/cpu/variants.py)"
#endif
#if !defined(LSR_SOURCE_HASH) || !defined(LSR_TORCH_BUILD)
#error "build with -DLSR_SOURCE_HASH=<sources hash> -DLSR_TORCH_BUILD=x<hex> (Variant.build_flags, variants.py)"
#endif
#define LSR_STRINGIFY_(x) #x
#define LSR_STRINGIFY(x) LSR_STRINGIFY_(x)

// The hash of the sources this library was built from, and the torch version and C++11 ABI flag it was
// compiled against; variants.library_record() reads them from the file, so a library older than the
// sources, or built for another torch, is rebuilt (or refused) instead of loaded.
extern "C" __attribute__((used)) const char lsr_source_marker[] = "lightning_srigl-sources:" LSR_STRINGIFY(LSR_SOURCE_HASH);
extern "C" __attribute__((used)) const char lsr_torch_marker[] =
    "lightning_srigl-torch:" LSR_STRINGIFY(LSR_TORCH_BUILD);

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

// fp32 x (N, C, H, W), values (A, k), indices (A, k) into C * kh * kw, rows (A,) output channels,
// bias (out,) or none -> y (N, out, Ho, Wo); see conv.h. The indices are taps over all C channels, so groups
// is only checked. block > 0 forces the block width (tests); a residual (N, out, Ho, Wo) is added and relu
// applies max(0, .) after it, both in the epilogue.
at::Tensor condensed_conv2d(const at::Tensor& x, const at::Tensor& values, const at::Tensor& indices,
                            const at::Tensor& rows, const c10::optional<at::Tensor>& bias, int64_t out_channels,
                            int64_t groups, at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                            at::IntArrayRef dilation, int64_t block, bool relu,
                            const c10::optional<at::Tensor>& residual) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == at::kFloat && x.is_contiguous(),
              "condensed_conv2d: x must be a contiguous fp32 (N, C, H, W) tensor");
  TORCH_CHECK(groups >= 1 && out_channels % groups == 0 && x.size(1) % groups == 0,
              "condensed_conv2d: groups must divide out_channels and the input channels");
  TORCH_CHECK(values.dim() == 2 && values.scalar_type() == at::kFloat && values.is_contiguous() &&
                  indices.sizes() == values.sizes() && indices.is_contiguous(),
              "condensed_conv2d: needs contiguous fp32 values (A, k) and indices of the same shape");
  TORCH_CHECK(indices.scalar_type() == at::kShort || indices.scalar_type() == at::kInt,
              "condensed_conv2d: indices must be int16 or int32");
  TORCH_CHECK(kernel_size.size() == 2 && stride.size() == 2 && padding.size() == 2 && dilation.size() == 2,
              "condensed_conv2d: kernel_size, stride, padding and dilation take two values each");
  TORCH_CHECK(stride[0] >= 1 && stride[1] >= 1 && dilation[0] >= 1 && dilation[1] >= 1 && padding[0] >= 0 &&
                  padding[1] >= 0 && kernel_size[0] >= 1 && kernel_size[1] >= 1,
              "condensed_conv2d: stride, dilation and kernel_size must be positive, padding non-negative");
  TORCH_CHECK(block == 0 || (block % kLanes == 0 && block > 0 && block <= kMaxBlock),
              "condensed_conv2d: block must be 0 (automatic) or a multiple of ", kLanes, " up to ", kMaxBlock);
  const int64_t A = values.size(0), k = values.size(1);
  TORCH_CHECK(rows.scalar_type() == at::kLong && rows.is_contiguous() && rows.numel() == A,
              "condensed_conv2d: rows must be a contiguous int64 (A,) tensor of output channels");
  const int64_t* r = rows.data_ptr<int64_t>();
  TORCH_CHECK(std::all_of(r, r + A, [&](int64_t v) { return v >= 0 && v < out_channels; }),
              "condensed_conv2d: rows must lie in [0, ", out_channels, ")");
  TORCH_CHECK(!bias.has_value() || (bias->scalar_type() == at::kFloat && bias->is_contiguous() && bias->numel() == out_channels),
              "condensed_conv2d: bias must be a contiguous fp32 (", out_channels, ",) tensor");
  const ConvGeometry g = conv_geometry(x, kernel_size[0], kernel_size[1], stride, padding, dilation, block);
  at::Tensor y = at::empty({g.N, out_channels, g.Ho, g.Wo}, x.options());
  TORCH_CHECK(!residual.has_value() || (residual->scalar_type() == at::kFloat && residual->is_contiguous() &&
                                        residual->sizes() == y.sizes()),
              "condensed_conv2d: residual must be a contiguous fp32 tensor of the output's shape ", y.sizes());
  if (y.numel() == 0) return y;
  const float* b = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  const float* res = residual.has_value() ? residual->data_ptr<float>() : nullptr;
  if (indices.scalar_type() == at::kShort) {
    condensed_conv2d_forward(x.data_ptr<float>(), g, values.data_ptr<float>(), indices.data_ptr<int16_t>(), r, b,
                             A, k, out_channels, relu, res, y.data_ptr<float>());
  } else {
    condensed_conv2d_forward(x.data_ptr<float>(), g, values.data_ptr<float>(), indices.data_ptr<int32_t>(), r, b,
                             A, k, out_channels, relu, res, y.data_ptr<float>());
  }
  return y;
}

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

// fp32 x (B, in), int8 weight (A, kp), indices (A, kp), int32 weight_sum (A,), fp32 weight_scale (A,),
// int64 rows (A,), bias (out,) or none -> fp32 y (B, out); see int8.h. layout: int8_window_layout()'s
// (empty or none: the gathers). input_scale/input_zero: the calibrated quantization of x (both or
// neither; neither: dynamic per row). mode 0: best, 1: gathers without VNNI/dotprod, 2: gathers, 3: best
// without VNNI/dotprod (the AVX2 window with vpmaddwd; elsewhere mode 1).
// The indices are trusted (< in): the layer validates them once (Int8CondensedLinear).
at::Tensor int8_condensed_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& indices,
                       const at::Tensor& weight_sum, const at::Tensor& weight_scale, const at::Tensor& rows,
                       const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& layout,
                       int64_t out_features, c10::optional<double> input_scale,
                       c10::optional<int64_t> input_zero, int64_t mode) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(),
              "int8_condensed_linear: x must be a contiguous fp32 (B, in) tensor");
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == at::kChar && weight.is_contiguous() &&
                  weight.size(1) % kInt8Pad == 0 && weight.size(1) <= kInt8MaxFanIn,
              "int8_condensed_linear: weight must be a contiguous int8 (A, kp) tensor, kp a multiple of ", kInt8Pad,
              " and at most ", kInt8MaxFanIn);
  TORCH_CHECK(indices.sizes() == weight.sizes() && indices.is_contiguous() &&
                  (indices.scalar_type() == at::kShort || indices.scalar_type() == at::kInt),
              "int8_condensed_linear: indices must be contiguous int16/int32 of the weight's shape");
  const int64_t B = x.size(0), in = x.size(1), A = weight.size(0), kp = weight.size(1);
  TORCH_CHECK(weight_sum.scalar_type() == at::kInt && weight_sum.is_contiguous() && weight_sum.numel() == A &&
                  weight_scale.scalar_type() == at::kFloat && weight_scale.is_contiguous() && weight_scale.numel() == A,
              "int8_condensed_linear: weight_sum must be int32 (A,) and weight_scale fp32 (A,), both contiguous");
  TORCH_CHECK(rows.scalar_type() == at::kLong && rows.is_contiguous() && rows.numel() == A && A <= out_features,
              "int8_condensed_linear: rows must be a contiguous int64 (A,) tensor, A <= out_features");
  const int64_t* r = rows.data_ptr<int64_t>();
  TORCH_CHECK(std::all_of(r, r + A, [&](int64_t v) { return v >= 0 && v < out_features; }),
              "int8_condensed_linear: rows must lie in [0, ", out_features, ")");
  TORCH_CHECK(!bias.has_value() || (bias->scalar_type() == at::kFloat && bias->is_contiguous() &&
                                    bias->numel() == out_features),
              "int8_condensed_linear: bias must be a contiguous fp32 (", out_features, ",) tensor");
  TORCH_CHECK(input_scale.has_value() == input_zero.has_value(),
              "int8_condensed_linear: give input_scale and input_zero together (calibrated) or neither (dynamic)");
  TORCH_CHECK(!input_scale.has_value() || (std::isfinite(static_cast<float>(*input_scale)) &&
                                           static_cast<float>(*input_scale) > 0.f && *input_zero >= 0 &&
                                           *input_zero <= 255),
              "int8_condensed_linear: input_scale must be finite and > 0, input_zero in [0, 255]");
  TORCH_CHECK(mode >= 0 && mode <= 3,
              "int8_condensed_linear: mode must be 0 (best), 1 (gathers, no VNNI / dotprod), 2 (gathers) or 3 "
              "(best without VNNI / dotprod)");
  const bool has_layout = layout.has_value() && layout->numel() > 0;
  const bool window = has_layout && (mode == 0 || (mode == 3 && kWindowWithoutVnni));
  TORCH_CHECK(!window || (kWindowKernel && cpu_has_window()),
              "int8_condensed_linear: this variant or CPU has no window kernel; pass the layout its "
              "int8_window_layout() built");
  const WindowLayout parsed = window ? parse_window_layout(*layout, A, kp, in) : WindowLayout();
  const float* b = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  at::Tensor y = at::empty({B, out_features}, x.options());
  if (y.numel() == 0) return y;
  float* yp = y.data_ptr<float>();
  if (A < out_features) {  // ablated rows output their bias (or 0)
    for (int64_t s = 0; s < B; ++s) {
      if (b) std::memcpy(yp + s * out_features, b, out_features * sizeof(float));
      else std::fill(yp + s * out_features, yp + (s + 1) * out_features, 0.f);
    }
  }
  if (A == 0) return y;
  const int64_t stride = (in + kInt8RowSlack + 63) / 64 * 64;
  thread_local std::vector<uint8_t> q;
  thread_local std::vector<RowQuant> quant;
  q.resize(B * stride + 64);
  quant.resize(B);
  // Pointers, not the thread_local buffers themselves: inside the lambda those would be another thread's.
  // Rows start on 64-byte boundaries (the stride is a multiple of 64), so aligned windows load whole lines.
  uint8_t* qp = q.data() + (64 - reinterpret_cast<uintptr_t>(q.data()) % 64) % 64;
  RowQuant* quant_p = quant.data();
  const float* xp = x.data_ptr<float>();
  at::parallel_for(0, B, 8, [&](int64_t s0, int64_t s1) {
    for (int64_t s = s0; s < s1; ++s) {
      RowQuant rq = dynamic_quant(xp + s * in, in);
      if (input_scale.has_value() && std::isfinite(rq.scale)) {
        rq = {static_cast<float>(*input_scale), static_cast<int32_t>(*input_zero)};
      }
      quant_p[s] = rq;
      if (std::isfinite(rq.scale)) {
        quantize_row(xp + s * in, in, rq, qp + s * stride);
      } else {
        std::memset(qp + s * stride, 0, stride);
      }
    }
  });
  if (window) {
    window_product(parsed, qp, stride, quant_p, B, weight_sum.data_ptr<int32_t>(), weight_scale.data_ptr<float>(), r, b,
                   out_features, use_vnni(mode), yp);
    return y;
  }
  const bool vnni = use_vnni(mode);
  if (indices.scalar_type() == at::kShort) {
    int8_product(qp, stride, quant_p, B, weight.data_ptr<int8_t>(), indices.data_ptr<int16_t>(),
                 weight_sum.data_ptr<int32_t>(), weight_scale.data_ptr<float>(), r, b, A, kp, out_features, vnni, yp);
  } else {
    int8_product(qp, stride, quant_p, B, weight.data_ptr<int8_t>(), indices.data_ptr<int32_t>(),
                 weight_sum.data_ptr<int32_t>(), weight_scale.data_ptr<float>(), r, b, A, kp, out_features, vnni, yp);
  }
  return y;
}

// The window layout of int8 weight (A, kp) and its indices for inputs of width in_features; an empty
// tensor where this variant or CPU has no window kernel (AVX-512 VBMI + VNNI).
at::Tensor int8_window_layout(const at::Tensor& weight, const at::Tensor& indices, int64_t in_features) {
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == at::kChar && weight.is_contiguous() &&
                  indices.sizes() == weight.sizes() && indices.is_contiguous(),
              "int8_window_layout: needs contiguous int8 weight (A, kp) and indices of the same shape");
  const int64_t A = weight.size(0), kp = weight.size(1);
  const int8_t* w = weight.data_ptr<int8_t>();
  if (indices.scalar_type() == at::kShort) {
    const int16_t* idx = indices.data_ptr<int16_t>();
    TORCH_CHECK(std::all_of(idx, idx + A * kp, [&](int16_t i) { return i >= 0 && i < in_features; }),
                "int8_window_layout: indices must lie in [0, ", in_features, ")");
    return build_window_layout(w, idx, A, kp, in_features);
  }
  TORCH_CHECK(indices.scalar_type() == at::kInt, "int8_window_layout: indices must be int16 or int32");
  const int32_t* idx = indices.data_ptr<int32_t>();
  TORCH_CHECK(std::all_of(idx, idx + A * kp, [&](int32_t i) { return i >= 0 && i < in_features; }),
              "int8_window_layout: indices must lie in [0, ", in_features, ")");
  return build_window_layout(w, idx, A, kp, in_features);
}

// The dot-product path int8_condensed_linear takes in `mode` (with a layout for modes 0 and 3, where one can
// be built).
std::string int8_path_op(int64_t mode) {
  if (mode == 0 && kWindowKernel && cpu_has_window()) return window_path(use_vnni(0));
  if (mode == 3 && kWindowWithoutVnni && cpu_has_window()) return window_path(false);
  return use_vnni(mode) ? kVnniPath : kPlainPath;
}

}  // namespace CPU_CAPABILITY
}  // namespace lightning_srigl

TORCH_LIBRARY(LSR_OPS_NAMESPACE, m) {
  m.def("condensed_linear(Tensor x2d, Tensor values, Tensor indices, Tensor? bias_active) -> Tensor");
  m.def("condensed_linear_rows(Tensor x2d, Tensor values, Tensor indices, Tensor rows, Tensor? bias, "
        "int out_features) -> Tensor");
  m.def("batch1_layout(Tensor values, Tensor indices, Tensor rows, int in_features, int out_features) -> Tensor");
  m.def("batch1_forward(Tensor x, Tensor layout, Tensor? bias) -> Tensor");
  m.def("batch1_supported() -> bool", &lightning_srigl::batch1_supported);
  m.def("condensed_conv2d(Tensor x, Tensor values, Tensor indices, Tensor rows, Tensor? bias, int out_channels, "
        "int groups, int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, int block=0, bool relu=False, "
        "Tensor? residual=None) -> Tensor");
  m.def("sampled_product(Tensor go, Tensor x, Tensor row_ptr, Tensor cols) -> Tensor");
  m.def("int8_condensed_linear(Tensor x2d, Tensor weight, Tensor indices, Tensor weight_sum, Tensor weight_scale, "
        "Tensor rows, Tensor? bias, Tensor? layout, int out_features, float? input_scale, int? input_zero, "
        "int mode=0) -> Tensor");
  m.def("int8_window_layout(Tensor weight, Tensor indices, int in_features) -> Tensor");
  m.def("int8_path(int mode=0) -> str", &lightning_srigl::int8_path_op);
}

TORCH_LIBRARY_IMPL(LSR_OPS_NAMESPACE, CPU, m) {
  m.impl("condensed_linear", &lightning_srigl::condensed_linear);
  m.impl("condensed_linear_rows", &lightning_srigl::condensed_linear_rows);
  m.impl("batch1_layout", &lightning_srigl::batch1_layout);
  m.impl("batch1_forward", &lightning_srigl::batch1_forward);
  m.impl("condensed_conv2d", &lightning_srigl::condensed_conv2d);
  m.impl("sampled_product", &lightning_srigl::sampled_product_op);
  m.impl("int8_condensed_linear", &lightning_srigl::int8_condensed_linear);
  m.impl("int8_window_layout", &lightning_srigl::int8_window_layout);
}
