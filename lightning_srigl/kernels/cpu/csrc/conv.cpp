// The condensed conv2d op of one variant (the entry point: input checks, then conv.h's kernel). Schema: ops.cpp.
#include "conv.h"
#include "registration.h"

namespace lightning_srigl {
inline namespace CPU_CAPABILITY {

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

}  // namespace CPU_CAPABILITY
}  // namespace lightning_srigl

TORCH_LIBRARY_IMPL(LSR_OPS_NAMESPACE, CPU, m) { m.impl("condensed_conv2d", &lightning_srigl::condensed_conv2d); }
