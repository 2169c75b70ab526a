// Shared pieces of the condensed CPU kernels: the vector type, element conversions, index reads.
//
// Every kernel header is compiled once per instruction set (one shared library per variant, see
// setup.py and lightning_srigl/kernels/cpu/variants.py). The build defines CPU_CAPABILITY (DEFAULT,
// AVX2 or AVX512) and CPU_CAPABILITY_<ISA>, so ATen's at::vec::Vectorized picks its back end, and
// LSR_OPS_NAMESPACE, the torch.ops namespace the variant registers its ops in. Like ATen, all kernel
// code lives in `inline namespace CPU_CAPABILITY`, so the variants' symbols never collide.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>
#endif

namespace lightning_srigl {
inline namespace CPU_CAPABILITY {

using Vec = at::vec::Vectorized<float>;
using bf16 = c10::BFloat16;
using fp16 = c10::Half;

// Lanes of one vector register: 16 (AVX-512), 8 (AVX2 and the generic build), 4 (NEON).
constexpr int kLanes = Vec::size();

inline float to_float(float v) { return v; }
inline float to_float(bf16 v) { return static_cast<float>(v); }
inline float to_float(fp16 v) { return static_cast<float>(v); }

// kLanes consecutive elements as fp32.
inline Vec load_float(const float* p) { return Vec::loadu(p); }
template <typename T>
inline Vec load_float(const T* p) {
  Vec out;
  at::vec::load_to_float<T>(p, out);
  return out;
}

// The first n < kLanes elements as fp32, the other lanes zero.
template <typename T>
inline Vec load_float_partial(const T* p, int64_t n) {
  alignas(64) float buffer[kLanes] = {};
  for (int64_t i = 0; i < n; ++i) buffer[i] = to_float(p[i]);
  return Vec::loadu(buffer);
}

// Indices are non-negative (< 32768 for int16), so the unsigned view is exact.
template <typename IT>
inline int64_t index_at(const IT* p, int64_t j) {
  return static_cast<int64_t>(static_cast<typename std::make_unsigned<IT>::type>(p[j]));
}

// The calling thread's scratch buffer of `n` floats, 64-byte aligned (rows of a panel must not straddle
// cache lines), grown and kept: a fresh multi-megabyte allocation per call is served by new pages from
// the OS, and faulting them in costs about as much as the work it holds.
inline float* scratch_buffer(int64_t n) {
  thread_local std::vector<float> buffer;
  constexpr int64_t kAlignFloats = 16;
  if (static_cast<int64_t>(buffer.size()) < n + kAlignFloats) buffer.resize(n + kAlignFloats);
  const auto address = reinterpret_cast<std::uintptr_t>(buffer.data());
  return buffer.data() + (kAlignFloats - static_cast<int64_t>(address / sizeof(float)) % kAlignFloats) % kAlignFloats;
}

}  // namespace CPU_CAPABILITY
}  // namespace lightning_srigl
