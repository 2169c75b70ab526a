// Gather-free int8 dot products (AVX-512 VBMI + VNNI): the int8 analogue of batch1.h.
//
// The active rows are taken 16 at a time (a group; one int32 lane of a zmm register per row). A group's
// kept weights are cut into steps; in one step each row takes up to 4 of its next weights whose inputs lie
// in one 128-byte window [start, start + 128) of the quantized activations. The step stores `start`, 64
// window offsets (row l's 4 slots at bytes 4l..4l+3) and the 64 weights (0 in unused slots). The kernel
// loads the window (two 64-byte loads), moves each slot's activation into place with one vpermi2b and
// adds the 4-way products into the row's lane with one vpdpbusd; the sums equal those of int8.h exactly
// (integer sums in another order). Zero weights (the layout's padding, weights quantized to 0) are left out.
// Steps are chosen greedily: start = the smallest next input of the group's rows. At 90 % sparsity a
// window holds about 13 kept inputs per row, so a step fills most of its 64 slots.
//
// Layout (uint8 tensor): header int64[8] = {magic, A, kp, in, G, S, 0, format}, then int64 group[G + 1]
// (first step of each group), int32 start[S], then S records of 128 bytes (64 offsets, 64 weights),
// 64-byte aligned.
#pragma once

#include "int8.h"

namespace lightning_srigl {
inline namespace CPU_CAPABILITY {

constexpr int64_t kWindowMagic = 0x384e495753524cLL;  // "LSRSWIN8"
constexpr int64_t kWindowFormat = 1;
constexpr int64_t kWindowHeader = 8;
constexpr int64_t kWindowBytes = 128;
constexpr int64_t kWindowRows = 16;
constexpr int64_t kWindowRecord = 128;

struct WindowSections {
  int64_t group, start, records, total;
  WindowSections(int64_t G, int64_t S) {
    group = kWindowHeader * 8;
    start = group + (G + 1) * 8;
    records = (start + S * 4 + 63) / 64 * 64;
    total = records + S * kWindowRecord;
  }
};

#if defined(CPU_CAPABILITY_AVX512)
constexpr bool kWindowKernel = true;
inline bool cpu_has_window() { return cpu_has_vnni() && __builtin_cpu_supports("avx512vbmi"); }
#else
constexpr bool kWindowKernel = false;
inline bool cpu_has_window() { return false; }
#endif

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
      starts.push_back(static_cast<int32_t>(start));
      const size_t at = records.size();
      records.resize(at + kWindowRecord, 0);
      for (int64_t l = 0; l < rows; ++l) {
        const int8_t* wr = w + (g * kWindowRows + l) * kp;
        const IT* ir = idx + (g * kWindowRows + l) * kp;
        for (int slot = 0; slot < 4 && next[l] < kp && index_at(ir, next[l]) < start + kWindowBytes; ++slot) {
          records[at + 4 * l + slot] = static_cast<uint8_t>(index_at(ir, next[l]) - start);
          records[at + 64 + 4 * l + slot] = static_cast<uint8_t>(wr[next[l]]);
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
// Sums of rows [16 g, 16 g + 16) for NB samples: out[b][l].
template <int NB>
__attribute__((target("avx512vbmi,avx512vnni"))) void window_group(const WindowLayout& v, int64_t g,
                                                                    const uint8_t* const* q, int32_t out[][16]) {
  __m512i acc[NB];
  for (int b = 0; b < NB; ++b) acc[b] = _mm512_setzero_si512();
  const int64_t last = v.in;  // no window starts later (a row holds kInt8RowSlack bytes after its inputs)
  for (int64_t t = v.group[g]; t < v.group[g + 1]; ++t) {
    const int64_t start = std::min<int64_t>(v.start[t], last);
    const uint8_t* record = v.records + t * kWindowRecord;
    const __m512i offsets = _mm512_loadu_si512(record);
    const __m512i weights = _mm512_loadu_si512(record + 64);
    for (int b = 0; b < NB; ++b) {
      const uint8_t* window = q[b] + start;
      const __m512i bytes =
          _mm512_permutex2var_epi8(_mm512_loadu_si512(window), offsets, _mm512_loadu_si512(window + 64));
      acc[b] = _mm512_dpbusd_epi32(acc[b], bytes, weights);
    }
  }
  for (int b = 0; b < NB; ++b) _mm512_storeu_si512(out[b], acc[b]);
}

// Dot products of every active row with every quantized sample through the window layout, then the
// same epilogue as int8_product.
inline void window_product(const WindowLayout& v, const uint8_t* q, int64_t stride, const RowQuant* quant, int64_t B,
                           const int32_t* wsum, const float* wscale, const int64_t* rows, const float* bias,
                           int64_t out, float* y) {
  // Samples per pass over a group's steps: each step's offsets and weights are loaded once per pass.
  constexpr int kSamples = 8;
  at::parallel_for(0, v.G, 1, [&](int64_t g0, int64_t g1) {
    int32_t sums[kSamples][16];
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t n = std::min(kWindowRows, v.A - g * kWindowRows);
      for (int64_t b0 = 0; b0 < B; b0 += kSamples) {
        const int64_t nb = std::min<int64_t>(kSamples, B - b0);
        const uint8_t* samples[kSamples];
        for (int64_t b = 0; b < kSamples; ++b) samples[b] = q + std::min(b0 + b, B - 1) * stride;
        switch (nb) {
          case 1: window_group<1>(v, g, samples, sums); break;
          case 2: window_group<2>(v, g, samples, sums); break;
          case 3: window_group<3>(v, g, samples, sums); break;
          case 4: window_group<4>(v, g, samples, sums); break;
          case 5: window_group<5>(v, g, samples, sums); break;
          case 6: window_group<6>(v, g, samples, sums); break;
          case 7: window_group<7>(v, g, samples, sums); break;
          default: window_group<8>(v, g, samples, sums); break;
        }
        for (int64_t b = 0; b < nb; ++b) {
          for (int64_t l = 0; l < n; ++l) {
            const int64_t a = g * kWindowRows + l;
            y[(b0 + b) * out + rows[a]] =
                output_of(sums[b][l], quant[b0 + b], wsum[a], wscale[a], bias ? bias[rows[a]] : 0.f);
          }
        }
      }
    }
  });
}
#else
inline void window_product(const WindowLayout&, const uint8_t*, int64_t, const RowQuant*, int64_t, const int32_t*,
                           const float*, const int64_t*, const float*, int64_t, float*) {
  TORCH_CHECK(false, "int8_condensed_linear: this kernel variant has no window kernel");
}
#endif

}  // namespace CPU_CAPABILITY
}  // namespace lightning_srigl
