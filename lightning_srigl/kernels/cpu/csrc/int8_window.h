// Gather-free int8 dot products: the int8 analogue of batch1.h, for AVX-512 (VBMI + VNNI) and AVX2.
//
// The active rows are taken kWindowRows at a time (a group; one int32 lane of a vector register per row).
// A group's kept weights are cut into steps; in one step each row takes up to 4 of its next weights whose
// inputs lie in one window [start, start + kWindowBytes) of the quantized activations. The step stores
// `start`, 4 * kWindowRows window offsets (row l's 4 slots at bytes 4l..4l+3) and as many weights (0 in
// unused slots). The kernel loads the window, moves each slot's activation into place with byte shuffles
// and adds the 4-way products into the row's lane; the sums equal those of int8.h exactly (integer sums in
// another order). Zero weights (the layout's padding, weights quantized to 0) are left out. Steps are chosen
// greedily: start = the smallest next input of the group's rows, rounded down to a multiple of kWindowAlign.
//   AVX-512 (VBMI + VNNI): 16 rows, 128-byte windows starting on 64-byte boundaries (two aligned 64-byte loads
//     from the 64-byte-aligned quantized rows: no load crosses a cache line), one vpermi2b and one vpdpbusd per
//     step and sample; at 90 % sparsity a window holds about 13 kept inputs per row, so a step fills about 82 %
//     of its 64 slots (89 % with unaligned windows, whose split loads cost more than the extra steps).
//   AVX2: 8 rows, 32-byte windows: each 16-byte half broadcast to both lanes of a ymm register, one vpshufb
//     per half (an offset byte is o for o < 16, 0x80 | (o - 16) above, so the low half's shuffle zeroes the
//     high half's slots and the high half's shuffle, on the offsets xor 0x80, the low half's), then one
//     vpdpbusd (AVX-VNNI, VEX) where the CPU has it, else the bytes and weights widened to int16 and two
//     vpmaddwd (u8 x s8 products summed in int32 cannot saturate, unlike vpmaddubsw's int16 pairs).
//
// Many rows (window_product): a step's offsets and weights are loaded once for a block of kWindowSamples rows,
// the groups are walked in tiles whose steps stay in L1 while every block passes, and the epilogue runs one
// vector of outputs per instruction (dequantize_group).
//
// Layout (uint8 tensor): header int64[8] = {magic, A, kp, in, G, S, 0, format}, then int64 group[G + 1]
// (first step of each group), int32 start[S], then S records of kWindowRecord bytes (offsets, weights),
// 64-byte aligned. The format names the variant's geometry, so one variant refuses another's layout.
#pragma once

#include "int8.h"

#include <utility>

namespace lightning_srigl {
inline namespace CPU_CAPABILITY {

constexpr int64_t kWindowMagic = 0x384e495753524cLL;  // "LSRSWIN8"
constexpr int64_t kWindowHeader = 8;

#if defined(CPU_CAPABILITY_AVX512)
constexpr bool kWindowKernel = true;
constexpr int64_t kWindowFormat = 1;
constexpr int64_t kWindowBytes = 128;
constexpr int64_t kWindowRows = 16;
constexpr int64_t kWindowAlign = 64;
inline bool cpu_has_window() { return cpu_has_vnni() && __builtin_cpu_supports("avx512vbmi"); }
inline uint8_t encode_offset(int64_t offset) { return static_cast<uint8_t>(offset); }  // vpermi2b's index
constexpr bool kWindowWithoutVnni = false;
inline const char* window_path(bool) { return "avx512_vbmi_vnni_window"; }
#elif defined(CPU_CAPABILITY_AVX2)
constexpr bool kWindowKernel = true;
constexpr int64_t kWindowFormat = 2;
constexpr int64_t kWindowBytes = 32;
constexpr int64_t kWindowRows = 8;
constexpr int64_t kWindowAlign = 1;
inline bool cpu_has_window() { return true; }  // the AVX2 variant loads on AVX2 CPUs only
// vpshufb's index into the low half (o < 16) or, with bit 7 set, the high half (see the top of this file).
inline uint8_t encode_offset(int64_t offset) {
  return static_cast<uint8_t>(offset < 16 ? offset : 0x80 | (offset - 16));
}
constexpr bool kWindowWithoutVnni = true;  // vpmaddwd where the CPU has no AVX-VNNI
inline const char* window_path(bool vnni) { return vnni ? "avx_vnni_window" : "avx2_window"; }
#else
constexpr bool kWindowKernel = false;
constexpr int64_t kWindowFormat = 0;
constexpr int64_t kWindowBytes = 128;
constexpr int64_t kWindowRows = 16;
constexpr int64_t kWindowAlign = 1;
inline bool cpu_has_window() { return false; }
inline uint8_t encode_offset(int64_t offset) { return static_cast<uint8_t>(offset); }
constexpr bool kWindowWithoutVnni = false;
inline const char* window_path(bool) { return "none"; }
#endif
constexpr int64_t kWindowSlots = 4 * kWindowRows;      // 4 kept inputs per row and step
constexpr int64_t kWindowRecord = 2 * kWindowSlots;    // offsets, then weights

struct WindowSections {
  int64_t group, start, records, total;
  WindowSections(int64_t G, int64_t S) {
    group = kWindowHeader * 8;
    start = group + (G + 1) * 8;
    records = (start + S * 4 + 63) / 64 * 64;
    total = records + S * kWindowRecord;
  }
};

// The window layout of weight (A, kp) int8 and indices (A, kp) for inputs of width `in` (an empty tensor
// where this variant or CPU has no window kernel).
template <typename IT>
at::Tensor build_window_layout(const int8_t* w, const IT* idx, int64_t A, int64_t kp, int64_t in) {
  if (!kWindowKernel || !cpu_has_window()) return at::empty({0}, at::TensorOptions().dtype(at::kByte));
  const int64_t G = (A + kWindowRows - 1) / kWindowRows;
  std::vector<int64_t> group(G + 1, 0);
  std::vector<int32_t> starts;
  std::vector<uint8_t> records;
  for (int64_t g = 0; g < G; ++g) {
    const int64_t rows = std::min(kWindowRows, A - g * kWindowRows);
    int64_t next[kWindowRows];
    auto skip_zeros = [&](int64_t l) {
      const int8_t* wr = w + (g * kWindowRows + l) * kp;
      while (next[l] < kp && wr[next[l]] == 0) ++next[l];
    };
    for (int64_t l = 0; l < rows; ++l) {
      next[l] = 0;
      skip_zeros(l);
    }
    while (true) {
      int64_t start = in;
      for (int64_t l = 0; l < rows; ++l) {
        if (next[l] < kp) start = std::min(start, index_at(idx + (g * kWindowRows + l) * kp, next[l]));
      }
      if (start == in) break;
      start -= start % kWindowAlign;
      starts.push_back(static_cast<int32_t>(start));
      const size_t at = records.size();
      records.resize(at + kWindowRecord, 0);
      for (int64_t l = 0; l < rows; ++l) {
        const int8_t* wr = w + (g * kWindowRows + l) * kp;
        const IT* ir = idx + (g * kWindowRows + l) * kp;
        for (int slot = 0; slot < 4 && next[l] < kp && index_at(ir, next[l]) < start + kWindowBytes; ++slot) {
          records[at + 4 * l + slot] = encode_offset(index_at(ir, next[l]) - start);
          records[at + kWindowSlots + 4 * l + slot] = static_cast<uint8_t>(wr[next[l]]);
          ++next[l];
          skip_zeros(l);
        }
      }
    }
    group[g + 1] = static_cast<int64_t>(starts.size());
  }
  const int64_t S = static_cast<int64_t>(starts.size());
  const WindowSections s(G, S);
  at::Tensor blob = at::zeros({s.total}, at::TensorOptions().dtype(at::kByte));
  uint8_t* base = blob.data_ptr<uint8_t>();
  const int64_t header[kWindowHeader] = {kWindowMagic, A, kp, in, G, S, 0, kWindowFormat};
  std::memcpy(base, header, sizeof(header));
  std::memcpy(base + s.group, group.data(), (G + 1) * 8);
  if (S) std::memcpy(base + s.start, starts.data(), S * 4);
  if (S) std::memcpy(base + s.records, records.data(), records.size());
  return blob;
}

// A checked layout's sections.
struct WindowLayout {
  int64_t A = 0, kp = 0, in = 0, G = 0, S = 0;
  const int64_t* group = nullptr;
  const int32_t* start = nullptr;
  const uint8_t* records = nullptr;
};

inline WindowLayout parse_window_layout(const at::Tensor& layout, int64_t A, int64_t kp, int64_t in) {
  TORCH_CHECK(layout.scalar_type() == at::kByte && layout.dim() == 1 && layout.is_contiguous() &&
                  layout.numel() >= kWindowHeader * 8,
              "int8_condensed_linear: layout must come from int8_window_layout()");
  const uint8_t* base = layout.data_ptr<uint8_t>();
  int64_t header[kWindowHeader];
  std::memcpy(header, base, sizeof(header));
  WindowLayout v;
  v.A = header[1], v.kp = header[2], v.in = header[3], v.G = header[4], v.S = header[5];
  TORCH_CHECK(header[0] == kWindowMagic && header[7] == kWindowFormat && v.A == A && v.kp == kp && v.in == in &&
                  v.G == (A + kWindowRows - 1) / kWindowRows && v.S >= 0 &&
                  layout.numel() == WindowSections(v.G, v.S).total,
              "int8_condensed_linear: the layout does not belong to these weights and inputs (or another kernel "
              "variant built it); rebuild it with int8_window_layout()");
  const WindowSections s(v.G, v.S);
  v.group = reinterpret_cast<const int64_t*>(base + s.group);
  v.start = reinterpret_cast<const int32_t*>(base + s.start);
  v.records = base + s.records;
  TORCH_CHECK(v.group[0] == 0 && v.group[v.G] == v.S && std::is_sorted(v.group, v.group + v.G + 1),
              "int8_condensed_linear: corrupt layout (group offsets)");
  return v;
}

#if defined(CPU_CAPABILITY_AVX512)
// Independent accumulators per sample: vpdpbusd's latency, not its throughput, bounds a chain of dependent
// steps, so steps go round-robin to U accumulators (about 16 chains in flight), summed at the end (integer
// sums: any order gives the same result).
template <int NB>
constexpr int kChains = NB >= 12 ? 1 : NB >= 6 ? 2 : NB >= 3 ? 4 : 8;

// One step for NB samples into accumulator set acc[.][u].
template <int NB, int U>
__attribute__((target("avx512vbmi,avx512vnni"), always_inline)) inline void window_step512(
    const WindowLayout& v, int64_t t, const uint8_t* const* q, __m512i (&acc)[NB][U], int u) {
  const uint8_t* record = v.records + t * kWindowRecord;
  const __m512i offsets = _mm512_loadu_si512(record);
  const __m512i weights = _mm512_loadu_si512(record + kWindowSlots);
  // A window starts at most at the row's end (kInt8RowSlack bytes follow it); the clamp keeps a corrupt layout
  // inside the buffer.
  const int64_t start = std::min<int64_t>(std::max<int32_t>(v.start[t], 0), v.in);
  for (int b = 0; b < NB; ++b) {
    const uint8_t* window = q[b] + start;
    const __m512i bytes =
        _mm512_permutex2var_epi8(_mm512_loadu_si512(window), offsets, _mm512_loadu_si512(window + 64));
    acc[b][u] = _mm512_dpbusd_epi32(acc[b][u], bytes, weights);
  }
}

// Sums of rows [16 g, 16 g + 16) for NB samples: out[b][l]. (`vnni` is always true here: cpu_has_window.)
template <int NB>
__attribute__((target("avx512vbmi,avx512vnni"))) void window_group(const WindowLayout& v, int64_t g,
                                                                    const uint8_t* const* q, bool /*vnni*/,
                                                                    int32_t out[][kWindowRows]) {
  constexpr int U = kChains<NB>;
  __m512i acc[NB][U];
  for (int b = 0; b < NB; ++b) {
    for (int u = 0; u < U; ++u) acc[b][u] = _mm512_setzero_si512();
  }
  int64_t t = v.group[g];
  const int64_t end = v.group[g + 1];
  for (; t + U <= end; t += U) {
    for (int u = 0; u < U; ++u) window_step512<NB, U>(v, t + u, q, acc, u);
  }
  for (int u = 0; t < end; ++t, ++u) window_step512<NB, U>(v, t, q, acc, u);
  for (int b = 0; b < NB; ++b) {
    __m512i sum = acc[b][0];
    for (int u = 1; u < U; ++u) sum = _mm512_add_epi32(sum, acc[b][u]);
    _mm512_storeu_si512(out[b], sum);
  }
}
#elif defined(CPU_CAPABILITY_AVX2)
// A step's 32 activation bytes of one sample (the window at `window`), in slot order.
inline __m256i window_bytes(const uint8_t* window, __m256i offsets, __m256i offsets_high) {
  const __m256i low = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(window)));
  const __m256i high = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(window + 16)));
  return _mm256_or_si256(_mm256_shuffle_epi8(low, offsets), _mm256_shuffle_epi8(high, offsets_high));
}

// One step of a group: where its window starts, its shuffle indices for both halves, its 32 weights.
struct WindowStep {
  int64_t start;  // the window's first byte in a sample's quantized row
  __m256i offsets, offsets_high, weights;
};

inline WindowStep window_step(const WindowLayout& v, int64_t t) {
  const uint8_t* record = v.records + t * kWindowRecord;
  const __m256i offsets = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(record));
  // No window starts after the inputs' end: a row holds kInt8RowSlack zero bytes after its inputs.
  return {std::min<int64_t>(v.start[t], v.in), offsets,
          _mm256_xor_si256(offsets, _mm256_set1_epi8(static_cast<char>(0x80))),
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(record + kWindowSlots))};
}

template <int NB>
__attribute__((target("avxvnni"))) void window_group_vnni(const WindowLayout& v, int64_t g, const uint8_t* const* q,
                                                         int32_t out[][kWindowRows]) {
  __m256i acc[NB];
  for (int b = 0; b < NB; ++b) acc[b] = _mm256_setzero_si256();
  for (int64_t t = v.group[g]; t < v.group[g + 1]; ++t) {
    const WindowStep step = window_step(v, t);
    for (int b = 0; b < NB; ++b) {
      const __m256i bytes = window_bytes(q[b] + step.start, step.offsets, step.offsets_high);
      acc[b] = _mm256_dpbusd_avx_epi32(acc[b], bytes, step.weights);
    }
  }
  for (int b = 0; b < NB; ++b) _mm256_storeu_si256(reinterpret_cast<__m256i*>(out[b]), acc[b]);
}

// Without VNNI: the even and the odd bytes of each 16-bit word widened to int16 (activations with zeros,
// weights with their sign); vpmaddwd on the even ones adds slots 0 and 2 of a row, on the odd ones slots 1
// and 3, both into the row's own dword.
template <int NB>
void window_group_madd(const WindowLayout& v, int64_t g, const uint8_t* const* q, int32_t out[][kWindowRows]) {
  __m256i acc[NB];
  for (int b = 0; b < NB; ++b) acc[b] = _mm256_setzero_si256();
  const __m256i low_byte = _mm256_set1_epi16(0xff);
  for (int64_t t = v.group[g]; t < v.group[g + 1]; ++t) {
    const WindowStep step = window_step(v, t);
    const __m256i w_even = _mm256_srai_epi16(_mm256_slli_epi16(step.weights, 8), 8);
    const __m256i w_odd = _mm256_srai_epi16(step.weights, 8);
    for (int b = 0; b < NB; ++b) {
      const __m256i bytes = window_bytes(q[b] + step.start, step.offsets, step.offsets_high);
      const __m256i even = _mm256_madd_epi16(_mm256_and_si256(bytes, low_byte), w_even);
      acc[b] = _mm256_add_epi32(acc[b], _mm256_add_epi32(even, _mm256_madd_epi16(_mm256_srli_epi16(bytes, 8), w_odd)));
    }
  }
  for (int b = 0; b < NB; ++b) _mm256_storeu_si256(reinterpret_cast<__m256i*>(out[b]), acc[b]);
}

// Sums of rows [8 g, 8 g + 8) for NB samples: out[b][l].
template <int NB>
void window_group(const WindowLayout& v, int64_t g, const uint8_t* const* q, bool vnni, int32_t out[][kWindowRows]) {
  if (vnni) {
    window_group_vnni<NB>(v, g, q, out);
  } else {
    window_group_madd<NB>(v, g, q, out);
  }
}
#endif

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
// dequantize_rows for one group of one sample, kWindowRows (= one vector of fp32) outputs at a time: the same
// integer and fp32 operations (corrected = sum - zero * wsum cannot overflow int32 for fan-ins up to
// kInt8MaxFanIn, and int32 -> fp32 rounds as int64 -> fp32 does), so the outputs are bit-equal. A partial
// group, a non-finite row and non-consecutive output rows take dequantize_rows or a scalar store.
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
inline void dequantize_group(const int32_t* sums, int64_t n, RowQuant rq, const int32_t* wsum, const float* wscale,
                             const int64_t* rows, const float* bias, float* y) {
  if (n != kWindowRows || !std::isfinite(rq.scale)) {
    dequantize_rows(sums, n, rq, wsum, wscale, rows, bias, y);
    return;
  }
  const bool consecutive = rows[n - 1] - rows[0] == n - 1;  // rows increase strictly
#if defined(CPU_CAPABILITY_AVX512)
  const __m512i corrected = _mm512_sub_epi32(_mm512_loadu_si512(sums),
                                             _mm512_mullo_epi32(_mm512_set1_epi32(rq.zero), _mm512_loadu_si512(wsum)));
  __m512 product = _mm512_mul_ps(_mm512_cvtepi32_ps(corrected), _mm512_mul_ps(_mm512_set1_ps(rq.scale),
                                                                              _mm512_loadu_ps(wscale)));
  if (consecutive) {
    if (bias) product = _mm512_add_ps(product, _mm512_loadu_ps(bias + rows[0]));
    _mm512_storeu_ps(y + rows[0], product);
    return;
  }
  alignas(64) float lanes[kWindowRows];
  _mm512_store_ps(lanes, product);
#else
  const __m256i corrected = _mm256_sub_epi32(
      _mm256_loadu_si256(reinterpret_cast<const __m256i*>(sums)),
      _mm256_mullo_epi32(_mm256_set1_epi32(rq.zero), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wsum))));
  __m256 product = _mm256_mul_ps(_mm256_cvtepi32_ps(corrected), _mm256_mul_ps(_mm256_set1_ps(rq.scale),
                                                                              _mm256_loadu_ps(wscale)));
  if (consecutive) {
    if (bias) product = _mm256_add_ps(product, _mm256_loadu_ps(bias + rows[0]));
    _mm256_storeu_ps(y + rows[0], product);
    return;
  }
  alignas(32) float lanes[kWindowRows];
  _mm256_store_ps(lanes, product);
#endif
  for (int64_t l = 0; l < n; ++l) y[rows[l]] = bias ? lanes[l] + bias[rows[l]] : lanes[l];
}
#pragma GCC pop_options

// Samples per pass over a group's steps (each step's offsets and weights are loaded once per pass): AVX2's 16
// ymm registers hold 8 accumulators beside a step's operands; on AVX-512 (8 samples x 2 accumulators), 16
// samples measured no faster.
constexpr int kWindowSamples = 8;
using WindowGroupFn = void (*)(const WindowLayout&, int64_t, const uint8_t* const*, bool, int32_t (*)[kWindowRows]);

template <size_t... NB>
WindowGroupFn window_group_for(int64_t nb, std::index_sequence<NB...>) {
  static constexpr WindowGroupFn table[] = {&window_group<static_cast<int>(NB) + 1>...};
  return table[nb - 1];
}

// window_group for nb in [1, kWindowSamples] samples (the remainder of a call's rows takes its own size).
inline WindowGroupFn window_group_fn(int64_t nb) {
  return window_group_for(nb, std::make_index_sequence<kWindowSamples>());
}

// Dot products of every active row with every quantized sample through the window layout, then the
// same epilogue as int8_product. `vnni`: the AVX-VNNI dot products (AVX2; AVX-512's window always has them).
inline void window_product(const WindowLayout& v, const uint8_t* q, int64_t stride, const RowQuant* quant, int64_t B,
                           const int32_t* wsum, const float* wscale, const int64_t* rows, const float* bias,
                           int64_t out, bool vnni, float* y) {
  // Groups per tile: a tile's steps (about kTileBytes of layout) stay in L1 while every block of samples
  // passes, and a block's rows stay in L1 across the tile's groups.
  constexpr int64_t kTileBytes = 16384;
  at::parallel_for(0, v.G, 1, [&](int64_t g0, int64_t g1) {
    int32_t sums[kWindowSamples][kWindowRows];
    for (int64_t t0 = g0; t0 < g1;) {
      int64_t t1 = t0 + 1;
      while (t1 < g1 && (v.group[t1 + 1] - v.group[t0]) * (kWindowRecord + 4) <= kTileBytes) ++t1;
      for (int64_t b0 = 0; b0 < B; b0 += kWindowSamples) {
        const int64_t nb = std::min<int64_t>(kWindowSamples, B - b0);
        const uint8_t* samples[kWindowSamples];
        for (int64_t b = 0; b < kWindowSamples; ++b) samples[b] = q + std::min(b0 + b, B - 1) * stride;
        const WindowGroupFn run = window_group_fn(nb);
        for (int64_t g = t0; g < t1; ++g) {
          const int64_t n = std::min(kWindowRows, v.A - g * kWindowRows);
          run(v, g, samples, vnni, sums);
          const int64_t a = g * kWindowRows;
          for (int64_t b = 0; b < nb; ++b) {
            dequantize_group(sums[b], n, quant[b0 + b], wsum + a, wscale + a, rows + a, bias, y + (b0 + b) * out);
          }
        }
      }
      t0 = t1;
    }
  });
}
#else
inline void window_product(const WindowLayout&, const uint8_t*, int64_t, const RowQuant*, int64_t, const int32_t*,
                           const float*, const int64_t*, const float*, int64_t, bool, float*) {
  TORCH_CHECK(false, "int8_condensed_linear: this kernel variant has no window kernel");
}
#endif

}  // namespace CPU_CAPABILITY
}  // namespace lightning_srigl
