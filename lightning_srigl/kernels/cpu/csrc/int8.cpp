// The int8 ops of one variant (the entry points: input checks, the activations' quantization, then the kernel):
// int8_condensed_linear (the gathers of int8.h, or the gather-free window of int8_window.h with a layout),
// int8_window_layout and int8_path. Schemas: ops.cpp.
#include "int8.h"
#include "int8_window.h"
#include "registration.h"

namespace lightning_srigl {
inline namespace CPU_CAPABILITY {

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

TORCH_LIBRARY_IMPL(LSR_OPS_NAMESPACE, CPU, m) {
  m.impl("int8_condensed_linear", &lightning_srigl::int8_condensed_linear);
  m.impl("int8_window_layout", &lightning_srigl::int8_window_layout);
}

// No tensor argument to dispatch on: the key m.def(schema, fn) would register it under.
TORCH_LIBRARY_IMPL(LSR_OPS_NAMESPACE, CompositeImplicitAutograd, m) {
  m.impl("int8_path", &lightning_srigl::int8_path_op);
}
