// Small batches (and every batch-1 case the gather-free kernel of batch1.h does not take):
// "gather-dot", y[b, a] = bias[a] + sum_j w[a, j] * x[b, idx[a, j]], R rows at a time with independent
// accumulators, kLanes entries per step through at::vec::gather (vgatherdps on AVX2 and AVX-512, a
// scalar loop elsewhere).
#pragma once

#include "common.h"

namespace lightning_srigl {
inline namespace CPU_CAPABILITY {

using IVec = at::vec::Vectorized<int32_t>;

// kLanes indices as int32.
inline IVec load_indices(const int32_t* p) { return IVec::loadu(p); }
inline IVec load_indices(const int16_t* p) {
#if defined(CPU_CAPABILITY_AVX512)
  return _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
#elif defined(CPU_CAPABILITY_AVX2)
  return _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
#else
  alignas(64) int32_t buffer[kLanes];
  for (int i = 0; i < kLanes; ++i) buffer[i] = static_cast<int32_t>(index_at(p, i));
  return IVec::loadu(buffer);
#endif
}

// R rows starting at w/idx (row stride k) dotted with one fp32 sample x; results to out[0..R).
template <int R, typename T, typename IT>
inline void dot_rows(const float* x, const T* w, const IT* idx, int64_t k, float* out) {
  Vec acc[R];
  for (int r = 0; r < R; ++r) acc[r] = Vec(0.f);
  int64_t j = 0;
  for (; j + kLanes <= k; j += kLanes) {
    for (int r = 0; r < R; ++r) {
      const Vec xv = at::vec::gather<sizeof(float)>(x, load_indices(idx + r * k + j));
      acc[r] = at::vec::fmadd(load_float(w + r * k + j), xv, acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    float s = at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, acc[r]);
    for (int64_t t = j; t < k; ++t) s += to_float(w[r * k + t]) * x[index_at(idx + r * k, t)];
    out[r] = s;
  }
}

// Rows processed together (independent accumulators hide gather latency; 2 measured faster than 1, 4
// or 8 with AVX-512 on a Sapphire-Rapids-class VM).
constexpr int64_t kRowBlock = 2;

// The (B, A) product into y (rows ldy apart; row a to column cols[a], or a where cols is null) for small B;
// xf is x as fp32 (B, in).
template <typename T, typename IT>
void gather_dot(const float* xf, int64_t B, int64_t in, const T* w, const IT* idx, const T* bias, int64_t A,
                int64_t k, T* y, int64_t ldy, const int64_t* cols) {
  const int64_t n_blocks = (A + kRowBlock - 1) / kRowBlock;
  const int64_t grain = std::max<int64_t>(1, 8192 / std::max<int64_t>(1, k * B * kRowBlock));
  at::parallel_for(0, n_blocks, grain, [&](int64_t blk0, int64_t blk1) {
    float out[kRowBlock];
    for (int64_t blk = blk0; blk < blk1; ++blk) {
      const int64_t a0 = blk * kRowBlock;
      const int64_t rows = std::min(kRowBlock, A - a0);
      for (int64_t b = 0; b < B; ++b) {
        const float* xb = xf + b * in;
        if (rows == kRowBlock) {
          dot_rows<kRowBlock>(xb, w + a0 * k, idx + a0 * k, k, out);
        } else {
          for (int64_t r = 0; r < rows; ++r) dot_rows<1>(xb, w + (a0 + r) * k, idx + (a0 + r) * k, k, out + r);
        }
        T* yb = y + b * ldy;
        for (int64_t r = 0; r < rows; ++r) {
          yb[cols ? cols[a0 + r] : a0 + r] = static_cast<T>(out[r] + (bias ? to_float(bias[a0 + r]) : 0.f));
        }
      }
    }
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace lightning_srigl
