// The library definition of one variant: the schemas of every CPU op, and the build record.
//
// The sources of variants.SOURCES are compiled once per instruction set into one shared library, which
// registers its ops in torch.ops.<LSR_OPS_NAMESPACE>. This file defines the namespace (TORCH_LIBRARY) with
// every op's schema; each op family's source holds its C++ entry points (input checks, then the kernel of
// its header) and registers them with TORCH_LIBRARY_IMPL:
//   linear.cpp     condensed_linear, condensed_linear_rows, batch1_layout, batch1_forward, batch1_supported
//                  (gather_dot.h, panel.h, batch1.h)
//   conv.cpp       condensed_conv2d (conv.h)
//   sampled.cpp    sampled_product (sampled.h)
//   int8.cpp       int8_condensed_linear, int8_window_layout, int8_path (int8.h, int8_window.h)
//   attention.cpp  attention (attention.h)
// Threads come from at::parallel_for, i.e. torch.get_num_threads().
// To add a kernel: follow the checklist in docs/design.md ("Adding an op"); the schemas below must equal
// their Python ops' (tests/kernels/test_op_schemas.py compares them).
#include "registration.h"

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

TORCH_LIBRARY(LSR_OPS_NAMESPACE, m) {
  m.def("condensed_linear(Tensor x2d, Tensor values, Tensor indices, Tensor? bias_active) -> Tensor");
  m.def("condensed_linear_rows(Tensor x2d, Tensor values, Tensor indices, Tensor rows, Tensor? bias, "
        "int out_features) -> Tensor");
  m.def("batch1_layout(Tensor values, Tensor indices, Tensor rows, int in_features, int out_features) -> Tensor");
  m.def("batch1_forward(Tensor x, Tensor layout, Tensor? bias) -> Tensor");
  m.def("batch1_supported() -> bool");
  m.def("condensed_conv2d(Tensor x, Tensor values, Tensor indices, Tensor rows, Tensor? bias, int out_channels, "
        "int groups, int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, int block=0, bool relu=False, "
        "Tensor? residual=None) -> Tensor");
  m.def("sampled_product(Tensor go, Tensor x, Tensor row_ptr, Tensor cols) -> Tensor");
  m.def("int8_condensed_linear(Tensor x2d, Tensor weight, Tensor indices, Tensor weight_sum, Tensor weight_scale, "
        "Tensor rows, Tensor? bias, Tensor? layout, int out_features, float? input_scale, int? input_zero, "
        "int mode=0) -> Tensor");
  m.def("int8_window_layout(Tensor weight, Tensor indices, int in_features) -> Tensor");
  m.def("int8_path(int mode=0) -> str");
  m.def("attention(Tensor query, Tensor key, Tensor value, Tensor? attn_mask, float scale, bool is_causal) -> Tensor");
}
