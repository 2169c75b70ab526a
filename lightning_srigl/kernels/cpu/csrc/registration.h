// What every source that registers ops includes: torch's registration macros and the check that the build named
// the variant's namespace. The schemas are defined once, in ops.cpp (TORCH_LIBRARY); each op family's source
// registers its kernels with TORCH_LIBRARY_IMPL of the same namespace (see variants.SOURCES).
#pragma once

#include <torch/library.h>

#ifndef LSR_OPS_NAMESPACE
#error "build with -DLSR_OPS_NAMESPACE=lightning_srigl_<variant> (see lightning_srigl/kernels/cpu/variants.py)"
#endif
