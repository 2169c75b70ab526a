// int8 condensed linear layer: int8 weights, u8 activations, int32 dot products, fp32 output.
//
//   y[b, rows[a]] = float(sum_j w[a, j] * q[b, idx[a, j]] - zero[b] * wsum[a]) * (scale[b] * wscale[a])
//                   + bias[rows[a]]
//
// w (A, kp) int8 in [-127, 127] (kp: the fan-in padded with zero weights to a multiple of kInt8Pad),
// idx (A, kp) int16/int32 input columns (padding columns are 0), wsum[a] = sum_j w[a, j] (int32),
// wscale (A,) fp32. The activations x (B, in) fp32 are quantized per row (token) to u8 with a zero point,
//   q = clamp(nearbyint(x / scale) + zero, 0, 255),
// dynamically (scale = (max(x, 0) - min(x, 0)) / 255, or 1 for an all-zero row, zero =
// clamp(nearbyint(-min(x, 0) / scale), 0, 255)) or with one calibrated (scale, zero) for every row.
// A row whose scale is not finite (a NaN or infinite input) outputs NaN. Every step is exact integer
// arithmetic or one IEEE fp32 operation in a fixed order, so the pure-torch reference
// (lightning_srigl/condensed/int8_ops.py: int8_linear_reference) gives bit-equal outputs.
//
// The dot products sum_j w[a, j] * q[b, idx[a, j]] gather the row's activation bytes:
//   AVX-512 VNNI: 4 x 16 dword gathers at byte offsets, truncated to bytes (vpmovdb), one vpdpbusd per 64;
//   AVX-512 without VNNI, AVX2: dword gathers masked to the byte, weights widened to int32, vpmaddwd
//     (an int16 pair (q, 0) times (w, sign) is q * w exactly; pmaddubsw is not used: its u8 x s8 pairs
//     saturate at int16, 2 * 255 * 127 > 32767);
//   AVX-VNNI (AVX2 build): 4 x 8 dword gathers packed to 32 bytes, one vpdpbusd (VEX) per 32;
//   NEON dotprod: bytes gathered 16 at a time, shifted to s8 (q - 128), sdot, plus 128 * wsum;
//   scalar: one multiply-add per weight.
// With AVX-512 VBMI and VNNI, and on AVX2, int8_window.h replaces the gathers (modes 0 and 3 with a layout).
// VNNI and dotprod are used when the CPU reports them (checked at run time: the variants' compiler flags
// stay those of their ISA); mode 1 forces the gathers without them, mode 2 the gathers with them (where
// present), mode 3 the best path without them (AVX2's window with vpmaddwd), so tests cover every path on one host.
// Sums stay below 2^31 for k <= kInt8MaxFanIn (|w * (q - zero)| <= 127 * 255).
#pragma once

#include "common.h"

#include <cmath>

#if defined(__aarch64__)
#include <arm_neon.h>
#include <sys/auxv.h>
#endif

namespace lightning_srigl {
inline namespace CPU_CAPABILITY {

constexpr int64_t kInt8Pad = 64;
constexpr int64_t kInt8MaxFanIn = 65536;
// Zero bytes after each quantized row: a dword gather at the last column, and a 128-byte window starting
// at most at the row's end (int8_window.h), stay inside the buffer.
constexpr int64_t kInt8RowSlack = 128;

struct RowQuant {
  float scale;
  int32_t zero;
};

// (scale, zero) of a row from its range [lo, hi] (lo <= 0 <= hi), or NaN when it holds a NaN.
inline RowQuant quant_of_range(float lo, float hi, bool nan) {
  if (nan) return {std::numeric_limits<float>::quiet_NaN(), 0};
  float scale = (hi - lo) / 255.f;  // inf when the row is infinite or its range overflows fp32
  if (scale == 0.f) scale = 1.f;
  if (!std::isfinite(scale)) return {scale, 0};
  const float zero = std::nearbyint(-lo / scale);
  return {scale, static_cast<int32_t>(std::min(255.f, std::max(0.f, zero)))};
}

// dynamic_quant with NaN-propagating min / max (for rows holding a NaN or inf).
inline RowQuant dynamic_quant_checked(const float* x, int64_t n) {
  Vec lo_v(0.f), hi_v(0.f);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const Vec v = Vec::loadu(x + i);
    lo_v = at::vec::minimum(lo_v, v);  // NaN-propagating, as torch.amin / amax
    hi_v = at::vec::maximum(hi_v, v);
  }
  alignas(64) float lo_l[kLanes], hi_l[kLanes];
  lo_v.store(lo_l);
  hi_v.store(hi_l);
  float lo = 0.f, hi = 0.f;
  bool nan = false;
  for (int l = 0; l < kLanes; ++l) {
    nan |= std::isnan(lo_l[l]) || std::isnan(hi_l[l]);
    lo = std::min(lo, lo_l[l]);
    hi = std::max(hi, hi_l[l]);
  }
  for (; i < n; ++i) {
    nan |= std::isnan(x[i]);
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
  }
  return quant_of_range(lo, hi, nan);
}

// Dynamic scale and zero point of one row of n floats; the scale is NaN or inf (and the row's outputs NaN,
// with a calibrated scale too) when the row holds a NaN or inf or its range exceeds fp32. Plain min / max
// (2 instructions per vector instead of NaN-propagating ones), and a running sum that is not finite when a
// NaN or inf is present (or the sum overflows): such rows are redone by dynamic_quant_checked.
inline RowQuant dynamic_quant(const float* x, int64_t n) {
  Vec lo_v(0.f), hi_v(0.f), sum_v(0.f);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const Vec v = Vec::loadu(x + i);
    lo_v = at::vec::clamp_max(v, lo_v);
    hi_v = at::vec::clamp_min(v, hi_v);
    sum_v = sum_v + v;
  }
  alignas(64) float lo_l[kLanes], hi_l[kLanes], sum_l[kLanes];
  lo_v.store(lo_l);
  hi_v.store(hi_l);
  sum_v.store(sum_l);
  float lo = 0.f, hi = 0.f;
  bool finite = true;
  for (int l = 0; l < kLanes; ++l) {
    finite &= std::isfinite(sum_l[l]);
    lo = std::min(lo, lo_l[l]);
    hi = std::max(hi, hi_l[l]);
  }
  for (; i < n; ++i) {
    finite &= std::isfinite(x[i]);
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
  }
  return finite ? quant_of_range(lo, hi, false) : dynamic_quant_checked(x, n);
}

// The kLanes whole numbers in [0, 255] of v as bytes at q (exact conversions).
inline void store_bytes(const Vec& v, uint8_t* q) {
#if defined(CPU_CAPABILITY_AVX512)
  _mm_storeu_si128(reinterpret_cast<__m128i*>(q), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(v)));
#elif defined(CPU_CAPABILITY_AVX2)
  const __m256i ints = _mm256_cvtps_epi32(v);
  const __m128i words = _mm_packus_epi32(_mm256_castsi256_si128(ints), _mm256_extracti128_si256(ints, 1));
  _mm_storel_epi64(reinterpret_cast<__m128i*>(q), _mm_packus_epi16(words, words));
#else
  alignas(64) float block[kLanes];
  v.store(block);
  for (int l = 0; l < kLanes; ++l) q[l] = static_cast<uint8_t>(block[l]);
#endif
}

// q[i] = clamp(nearbyint(x[i] / scale) + zero, 0, 255) for i < n; q[n, n + kInt8RowSlack) = 0.
inline void quantize_row(const float* x, int64_t n, RowQuant quant, uint8_t* q) {
  const Vec scale(quant.scale), zero(static_cast<float>(quant.zero)), low(0.f), high(255.f);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    // round() is nearbyint (half to even); |x / scale| <= 256 here, so + zero is exact in fp32.
    const Vec v = at::vec::clamp((Vec::loadu(x + i) / scale).round() + zero, low, high);
    store_bytes(v, q + i);
  }
  for (; i < n; ++i) {
    const float v = std::nearbyint(x[i] / quant.scale) + static_cast<float>(quant.zero);
    q[i] = static_cast<uint8_t>(std::min(255.f, std::max(0.f, v)));
  }
  std::memset(q + n, 0, kInt8RowSlack);
}

// Scalar dot product: the reference loop, and the fallback of every variant.
template <typename IT>
inline int32_t dot_scalar(const uint8_t* q, const int8_t* w, const IT* idx, int64_t kp) {
  int32_t acc = 0;
  for (int64_t j = 0; j < kp; ++j) acc += static_cast<int32_t>(q[index_at(idx, j)]) * static_cast<int32_t>(w[j]);
  return acc;
}

#if defined(CPU_CAPABILITY_AVX512)
inline __m512i load_index16(const int32_t* p) { return _mm512_loadu_si512(p); }
inline __m512i load_index16(const int16_t* p) {
  return _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

template <typename IT>
__attribute__((target("avx512vnni"))) int32_t dot_vnni(const uint8_t* q, const int8_t* w, const IT* idx, int64_t kp) {
  __m512i acc = _mm512_setzero_si512();
  for (int64_t j = 0; j < kp; j += 64) {
    // 16 dwords gathered at byte offsets, truncated to their low bytes (vpmovdb): 16 activations.
    auto gather16 = [&](int64_t at) { return _mm512_cvtepi32_epi8(_mm512_i32gather_epi32(load_index16(idx + at), q, 1)); };
    __m512i bytes = _mm512_castsi128_si512(gather16(j));
    bytes = _mm512_inserti32x4(bytes, gather16(j + 16), 1);
    bytes = _mm512_inserti32x4(bytes, gather16(j + 32), 2);
    bytes = _mm512_inserti32x4(bytes, gather16(j + 48), 3);
    acc = _mm512_dpbusd_epi32(acc, bytes, _mm512_loadu_si512(w + j));
  }
  return _mm512_reduce_add_epi32(acc);
}

template <typename IT>
int32_t dot_plain(const uint8_t* q, const int8_t* w, const IT* idx, int64_t kp) {
  const __m512i low_byte = _mm512_set1_epi32(0xff);
  __m512i acc = _mm512_setzero_si512();
  for (int64_t j = 0; j < kp; j += 16) {
    const __m512i qv = _mm512_and_si512(_mm512_i32gather_epi32(load_index16(idx + j), q, 1), low_byte);
    const __m512i wv = _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + j)));
    acc = _mm512_add_epi32(acc, _mm512_madd_epi16(qv, wv));
  }
  return _mm512_reduce_add_epi32(acc);
}

inline bool cpu_has_vnni() { return __builtin_cpu_supports("avx512vnni"); }
constexpr const char* kVnniPath = "avx512_vnni";
constexpr const char* kPlainPath = "avx512";

#elif defined(CPU_CAPABILITY_AVX2)
inline __m256i load_index8(const int32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
inline __m256i load_index8(const int16_t* p) {
  return _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

inline __m256i gather_bytes8(const uint8_t* q, __m256i index) {
  return _mm256_and_si256(_mm256_i32gather_epi32(reinterpret_cast<const int*>(q), index, 1), _mm256_set1_epi32(0xff));
}

template <typename IT>
__attribute__((target("avxvnni"))) int32_t dot_vnni(const uint8_t* q, const int8_t* w, const IT* idx, int64_t kp) {
  __m256i acc = _mm256_setzero_si256();
  // packus_epi32 then packus_epi16 interleave the four gathers per 128-bit lane; this puts the dwords
  // (4 bytes each) back in column order.
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int64_t j = 0; j < kp; j += 32) {
    auto gather8 = [&](int64_t at) { return gather_bytes8(q, load_index8(idx + at)); };
    const __m256i g01 = _mm256_packus_epi32(gather8(j), gather8(j + 8));
    const __m256i g23 = _mm256_packus_epi32(gather8(j + 16), gather8(j + 24));
    const __m256i bytes = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(g01, g23), order);
    acc = _mm256_dpbusd_avx_epi32(acc, bytes, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + j)));
  }
  alignas(32) int32_t lanes[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), acc);
  return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
}

template <typename IT>
int32_t dot_plain(const uint8_t* q, const int8_t* w, const IT* idx, int64_t kp) {
  __m256i acc = _mm256_setzero_si256();
  for (int64_t j = 0; j < kp; j += 8) {
    const __m256i wv = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(w + j)));
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(gather_bytes8(q, load_index8(idx + j)), wv));
  }
  alignas(32) int32_t lanes[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), acc);
  return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
}

inline bool cpu_has_vnni() { return __builtin_cpu_supports("avxvnni"); }
constexpr const char* kVnniPath = "avx_vnni";
constexpr const char* kPlainPath = "avx2";

#elif defined(__aarch64__)
// The NEON build: cross-compiled on x86 (tests/kernels/test_int8_neon_build.py), not yet run on an ARM CPU.
template <typename IT>
__attribute__((target("arch=armv8.2-a+dotprod"))) int32_t dot_vnni(const uint8_t* q, const int8_t* w, const IT* idx,
                                                                   int64_t kp) {
  int32x4_t acc = vdupq_n_s32(0), wsum = vdupq_n_s32(0);
  const int8x16_t ones = vdupq_n_s8(1);
  alignas(16) uint8_t bytes[16];
  for (int64_t j = 0; j < kp; j += 16) {
    for (int l = 0; l < 16; ++l) bytes[l] = q[index_at(idx, j + l)];
    const int8x16_t shifted = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(bytes), vdupq_n_u8(0x80)));  // q - 128
    const int8x16_t wv = vld1q_s8(w + j);
    acc = vdotq_s32(acc, shifted, wv);
    wsum = vdotq_s32(wsum, ones, wv);
  }
  return vaddvq_s32(acc) + 128 * vaddvq_s32(wsum);
}

template <typename IT>
int32_t dot_plain(const uint8_t* q, const int8_t* w, const IT* idx, int64_t kp) {
  return dot_scalar(q, w, idx, kp);
}

inline bool cpu_has_vnni() { return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0; }
constexpr const char* kVnniPath = "neon_dotprod";
constexpr const char* kPlainPath = "neon";

#else
template <typename IT>
int32_t dot_vnni(const uint8_t* q, const int8_t* w, const IT* idx, int64_t kp) {
  return dot_scalar(q, w, idx, kp);
}
template <typename IT>
int32_t dot_plain(const uint8_t* q, const int8_t* w, const IT* idx, int64_t kp) {
  return dot_scalar(q, w, idx, kp);
}
inline bool cpu_has_vnni() { return false; }
constexpr const char* kVnniPath = "scalar";
constexpr const char* kPlainPath = "scalar";
#endif

// Whether `mode` (0 and 2: best, 1 and 3: without VNNI / dotprod) uses the VNNI / dotprod instructions here.
inline bool use_vnni(int64_t mode) {
  static const bool has = cpu_has_vnni();
  return (mode == 0 || mode == 2) && has;
}

// The dequantizing epilogue. Contraction into an FMA is off here: the reference rounds the product and
// the sum separately (as torch does), and the outputs must be bit-equal.
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
__attribute__((noinline)) inline float dequantize(int64_t corrected, float scale, float bias) {
  const float product = static_cast<float>(corrected) * scale;
  return product + bias;
}

// The outputs of n consecutive active rows (weight sums wsum[0, n), scales wscale[0, n), output rows
// rows[0, n)) of one sample from their int32 dot products `sums`, into that sample's output row y: the
// arithmetic of output_of, one call per group of rows (the window kernels' epilogue where dequantize_group,
// in int8_window.h, has no vector path: partial groups, non-finite rows).
__attribute__((noinline)) inline void dequantize_rows(const int32_t* sums, int64_t n, RowQuant rq, const int32_t* wsum,
                                                      const float* wscale, const int64_t* rows, const float* bias,
                                                      float* y) {
  if (!std::isfinite(rq.scale)) {
    for (int64_t l = 0; l < n; ++l) y[rows[l]] = std::numeric_limits<float>::quiet_NaN();
    return;
  }
  for (int64_t l = 0; l < n; ++l) {
    const int64_t corrected = static_cast<int64_t>(sums[l]) - static_cast<int64_t>(rq.zero) * wsum[l];
    const float product = static_cast<float>(corrected) * (rq.scale * wscale[l]);
    y[rows[l]] = product + (bias ? bias[rows[l]] : 0.f);
  }
}
#pragma GCC pop_options

// One output from its int32 dot product: NaN for a non-finite row, else the dequantized corrected sum.
inline float output_of(int32_t sum, RowQuant rq, int32_t wsum, float wscale, float bias) {
  if (!std::isfinite(rq.scale)) return std::numeric_limits<float>::quiet_NaN();
  const int64_t corrected = static_cast<int64_t>(sum) - static_cast<int64_t>(rq.zero) * static_cast<int64_t>(wsum);
  return dequantize(corrected, rq.scale * wscale, bias);
}

// y (B, out) from x quantized row by row into q (B, stride) with per-row (scale, zero).
template <typename IT>
void int8_product(const uint8_t* q, int64_t stride, const RowQuant* quant, int64_t B, const int8_t* w, const IT* idx,
                  const int32_t* wsum, const float* wscale, const int64_t* rows, const float* bias, int64_t A,
                  int64_t kp, int64_t out, bool vnni, float* y) {
  auto dot = vnni ? dot_vnni<IT> : dot_plain<IT>;
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, kp * B));
  at::parallel_for(0, A, grain, [&](int64_t a0, int64_t a1) {
    for (int64_t a = a0; a < a1; ++a) {
      const int8_t* wa = w + a * kp;
      const IT* ia = idx + a * kp;
      const int64_t row = rows[a];
      const float b_row = bias ? bias[row] : 0.f;
      for (int64_t b = 0; b < B; ++b) {
        const int32_t sum = std::isfinite(quant[b].scale) ? dot(q + b * stride, wa, ia, kp) : 0;
        y[b * out + row] = output_of(sum, quant[b], wsum[a], wscale[a], b_row);
      }
    }
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace lightning_srigl
