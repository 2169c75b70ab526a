// Batch-1 condensed product without gathers (fp32; AVX-512 and AVX2 builds):
//   y[rows[a]] = bias[rows[a]] + sum_j values[a, j] * x[indices[a, j]],  y[r] = bias[r] for ablated r.
//
// Active rows are taken kGroup at a time, one per vector lane. A "step" loads a kWindow-feature window
// of x and gives every lane at most one of its entries inside it: a register permute picks the lanes'
// activations (one shuffle instead of a kGroup-load gather) and the lanes' weights, stored compactly in
// step order, are expanded into their lanes. Each step's window starts at the smallest feature any lane
// still needs (a sliding window, not fixed blocks), so the lagging lane always advances. Steps per entry
// of a lane, simulated on random rows at 90 % sparsity: 1.41 for 16 lanes x 32-wide windows, 2.03 / 1.57 /
// 1.30 for 8 lanes x 8 / 16 / 32-wide windows.
//  * AVX-512: 16 lanes, 32-wide windows (`vpermt2ps` over two registers), masked expand-load of the
//    weights, masked FMA (idle lanes keep their sum). Step record: uint32 lane mask | window start << 16,
//    then one byte per lane (its feature within the window).
//  * AVX2: 8 lanes, 16-wide windows: two `vpermps` (one per 8-float half, lane indices packed 4 bits
//    per lane and spread by variable shifts of one broadcast load) and a blend on the half bit; the
//    compact weights are expanded by a third `vpermps` from a 256-entry table indexed by the lane mask,
//    and a step with idle lanes ends its weights with a 0 that the idle lanes read. Measured on a
//    Sapphire-Rapids-class VM at 90 % sparsity (1 thread): 8-wide windows with compact weights 69 us,
//    16-wide with compact weights 64 us, 16-wide with weights stored per lane (0 where idle) 55 us, AVX2
//    gathers 52-60 us; the per-lane variant needs 8.0 bytes per entry against 6.4 here and 6 for the
//    gathers' layout, and weights streamed from memory (a whole network) are where batch 1 is bound.
//    Step record (8 bytes): lane nibbles (bits 0-2 position in the half, bit 3 upper half), uint16
//    window start, uint8 weights to advance, uint8 lane mask.
//
// The layout is built once per layer (batch1_layout) and passed to every call (batch1_forward) as one
// uint8 tensor (so it deep-copies and pickles like any tensor):
//   header    int64[8]: kMagic, A, in, out, G (= ceil(A / kGroup)), S (steps), P (packed floats), kFormat
//   group     int64[G + 1]: first step of group g
//   values_at int64[G + 1]: first packed weight of group g
//   rows      int64[A]: output row of each active neuron
//   steps     S records of kStepBytes (above)
//   packed    float[P]: the weights in step order (AVX2: and each idle step's 0; P >= nnz)
// Every section starts on a 64-byte boundary. kFormat names the lanes and window, so a layout built by
// one variant is refused by another.
#pragma once

#include "common.h"

namespace lightning_srigl {
inline namespace CPU_CAPABILITY {

#if defined(CPU_CAPABILITY_AVX512)
constexpr bool kBatch1Kernel = true;
constexpr int64_t kGroup = 16, kWindow = 32, kStepBytes = 4 + 16;
#elif defined(CPU_CAPABILITY_AVX2)
constexpr bool kBatch1Kernel = true;
constexpr int64_t kGroup = 8, kWindow = 16, kStepBytes = 8;
#else
constexpr bool kBatch1Kernel = false;  // no vector permute here: batch 1 takes the gather-dot kernel
constexpr int64_t kGroup = 8, kWindow = 8, kStepBytes = 8;
#endif

constexpr int64_t kMagic = 0x4c53524932;  // "LSRI2": layout format 2
constexpr int64_t kFormat = kGroup | kWindow << 8 | kStepBytes << 16;
constexpr int64_t kHeader = 8;
// Window starts are stored in 16 bits (AVX-512).
constexpr int64_t kMaxInFeatures = 65535 - 32;

inline int64_t aligned64(int64_t bytes) { return (bytes + 63) / 64 * 64; }

// Byte offsets of the sections of a layout with G groups, S steps, A rows and nnz packed floats.
struct Sections {
  int64_t group, values_at, rows, steps, packed, total;
  Sections(int64_t G, int64_t S, int64_t A, int64_t nnz) {
    group = aligned64(kHeader * 8);
    values_at = group + aligned64((G + 1) * 8);
    rows = values_at + aligned64((G + 1) * 8);
    steps = rows + aligned64(A * 8);
    packed = steps + aligned64(S * kStepBytes);
    total = packed + aligned64(nnz * 4 + 32);  // + 32: the last 8-float load may run past the end
  }
};

// One step: its record (lane mask, window start, each lane's feature within the window) and the active
// lanes' weights (AVX2: then a 0 for the idle lanes, if any).
inline void encode_step(uint32_t mask, int64_t start, const uint8_t* local, const float* weights,
                        std::vector<uint8_t>& records, std::vector<float>& packed) {
  uint8_t record[kStepBytes] = {};
#if defined(CPU_CAPABILITY_AVX512)
  const uint32_t meta = mask | static_cast<uint32_t>(start) << 16;
  std::memcpy(record, &meta, 4);
  std::memcpy(record + 4, local, kGroup);
  for (int64_t l = 0; l < kGroup; ++l) {
    if (mask >> l & 1) packed.push_back(weights[l]);
  }
#else
  uint32_t lanes = 0;
  for (int64_t l = 0; l < kGroup; ++l) lanes |= static_cast<uint32_t>(local[l]) << (4 * l);
  const uint16_t start16 = static_cast<uint16_t>(start);
  const int count = __builtin_popcount(mask);
  std::memcpy(record, &lanes, 4);
  std::memcpy(record + 4, &start16, 2);
  record[6] = static_cast<uint8_t>(count + (count < kGroup));
  record[7] = static_cast<uint8_t>(mask);
  for (int64_t l = 0; l < kGroup; ++l) {
    if (mask >> l & 1) packed.push_back(weights[l]);
  }
  if (count < kGroup) packed.push_back(0.f);
#endif
  records.insert(records.end(), record, record + kStepBytes);
}

template <typename IT>
at::Tensor build_layout(const float* w, const IT* idx, const int64_t* rows, int64_t A, int64_t k, int64_t in,
                        int64_t out) {
  const int64_t G = (A + kGroup - 1) / kGroup;
  std::vector<int64_t> group(G + 1, 0), values_at(G + 1, 0);
  std::vector<uint8_t> steps;
  std::vector<float> packed;
  packed.reserve(A * k);
  std::vector<int64_t> order(kGroup * k);  // per lane: its entries sorted by feature
  int64_t S = 0;
  for (int64_t g = 0; g < G; ++g) {
    const int64_t n = std::min(kGroup, A - g * kGroup);
    for (int64_t l = 0; l < n; ++l) {
      const IT* ir = idx + (g * kGroup + l) * k;
      int64_t* o = order.data() + l * k;
      for (int64_t j = 0; j < k; ++j) o[j] = j;
      std::sort(o, o + k, [ir](int64_t a, int64_t b) { return index_at(ir, a) < index_at(ir, b); });
    }
    std::vector<int64_t> next(kGroup, 0);  // per lane: entries consumed
    while (true) {
      int64_t start = in;
      for (int64_t l = 0; l < n; ++l) {
        if (next[l] < k) start = std::min(start, index_at(idx + (g * kGroup + l) * k, order[l * k + next[l]]));
      }
      if (start == in) break;
      uint32_t mask = 0;
      uint8_t local[kGroup] = {};
      float weights[kGroup] = {};
      for (int64_t l = 0; l < n; ++l) {
        if (next[l] == k) continue;
        const int64_t row = g * kGroup + l, j = order[l * k + next[l]], f = index_at(idx + row * k, j);
        if (f < start + kWindow) {
          local[l] = static_cast<uint8_t>(f - start);
          weights[l] = w[row * k + j];
          mask |= uint32_t{1} << l;
          ++next[l];
        }
      }
      encode_step(mask, start, local, weights, steps, packed);
      ++S;
    }
    group[g + 1] = S;
    values_at[g + 1] = static_cast<int64_t>(packed.size());
  }
  const int64_t nnz = static_cast<int64_t>(packed.size());
  const Sections s(G, S, A, nnz);
  at::Tensor blob = at::zeros({s.total}, at::TensorOptions().dtype(at::kByte));
  uint8_t* base = blob.data_ptr<uint8_t>();
  const int64_t header[kHeader] = {kMagic, A, in, out, G, S, nnz, kFormat};
  std::memcpy(base, header, sizeof(header));
  std::memcpy(base + s.group, group.data(), group.size() * 8);
  std::memcpy(base + s.values_at, values_at.data(), values_at.size() * 8);
  std::memcpy(base + s.rows, rows, A * 8);
  if (S) std::memcpy(base + s.steps, steps.data(), steps.size());
  if (nnz) std::memcpy(base + s.packed, packed.data(), nnz * 4);
  return blob;
}

#if defined(CPU_CAPABILITY_AVX512)
// acc + (the step's weights, expanded into their lanes) * (each lane's activation from its window).
template <bool kFinite>
inline __m512 step(__m512 acc, const float* xs, const uint8_t* record, const float*& packed) {
  uint32_t meta;
  std::memcpy(&meta, record, 4);
  const __mmask16 mask = static_cast<__mmask16>(meta);
  const float* window = xs + (meta >> 16);
  const __m512i local = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(record + 4)));
  const __m512 x = _mm512_permutex2var_ps(_mm512_loadu_ps(window), local, _mm512_loadu_ps(window + 16));
  const __m512 w = _mm512_maskz_expandloadu_ps(mask, packed);
  packed += _mm_popcnt_u32(meta & 0xffffu);
  return _mm512_mask3_fmadd_ps(w, x, acc, mask);  // idle lanes keep acc (no 0 * inf)
}
#elif defined(CPU_CAPABILITY_AVX2)
// For each 8-bit lane mask, where each lane's weight is among the step's weights: active lanes count
// the active lanes before them (and have bit 31 set), idle lanes read the step's trailing 0.
struct ExpandTable {
  alignas(32) int32_t perm[256][8];
  ExpandTable() {
    for (int m = 0; m < 256; ++m) {
      const int count = __builtin_popcount(m);
      int c = 0;
      for (int l = 0; l < 8; ++l) perm[m][l] = (m >> l & 1) ? static_cast<int32_t>(0x80000000u | c++) : count;
    }
  }
};
static const ExpandTable kExpand;

// acc + (the step's weights, expanded into their lanes) * (each lane's activation from its window).
// Idle lanes get weight 0; with kFinite false their activation is zeroed too (no 0 * inf).
template <bool kFinite>
inline __m256 step(__m256 acc, const float* xs, const uint8_t* record, const float*& packed) {
  int32_t lanes;
  uint16_t start;
  std::memcpy(&lanes, record, 4);
  std::memcpy(&start, record + 4, 2);
  const __m256i nibbles = _mm256_set1_epi32(lanes);
  const __m256i position = _mm256_srlv_epi32(nibbles, _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28));
  const __m256i upper = _mm256_sllv_epi32(nibbles, _mm256_setr_epi32(28, 24, 20, 16, 12, 8, 4, 0));  // bit 3 -> 31
  const float* window = xs + start;
  __m256 x = _mm256_blendv_ps(_mm256_permutevar8x32_ps(_mm256_loadu_ps(window), position),
                              _mm256_permutevar8x32_ps(_mm256_loadu_ps(window + 8), position),
                              _mm256_castsi256_ps(upper));
  const __m256i perm = _mm256_load_si256(reinterpret_cast<const __m256i*>(kExpand.perm[record[7]]));
  if (!kFinite) x = _mm256_and_ps(x, _mm256_castsi256_ps(_mm256_srai_epi32(perm, 31)));
  const __m256 w = _mm256_permutevar8x32_ps(_mm256_loadu_ps(packed), perm);
  packed += record[6];
  return _mm256_fmadd_ps(w, x, acc);
}
#endif

// Software prefetch. When the layout is not in cache (a whole network at batch 1 streams every layer's
// weights from memory) the hardware prefetchers alone left the kernel at about 60 % of the bandwidth
// dense layers reach: they follow each stream within a 4 KiB page and restart at the next one. Every
// four steps the kernel therefore asks for kPrefetchLines lines at a fixed distance ahead of both
// streams (enough lines to cover what four steps consume on average: AVX-512 80 B of records and about
// 180 B of weights, AVX2 32 B and about 100 B), into L1 (__builtin_prefetch locality 3, prefetcht0 on
// x86). Measured on a Sapphire-Rapids-class VM at 90 % sparsity, 1 thread, 768->3072 and 3072->768, in
// one interleaved run: cold calls took 72-75 % of the time they took without prefetching with AVX2 and
// 84-85 % with AVX-512, calls in cache (the layout in L2) 90-96 %. Prefetching each line exactly once
// (a cursor per stream) or into L2 only (locality 1) was slower, hot and cold.
constexpr int64_t kPrefetchRecords = 2048, kPrefetchWeights = 4096;
#if defined(CPU_CAPABILITY_AVX512)
constexpr int kPrefetchLines[2] = {2, 3};  // records, weights
#else
constexpr int kPrefetchLines[2] = {1, 2};
#endif

// Prefetches `lines` cache lines from `distance` bytes past p (addresses past the layout's end are
// harmless: a prefetch never faults).
inline void prefetch_ahead(const void* p, int64_t distance, int lines) {
  const std::uintptr_t at = reinterpret_cast<std::uintptr_t>(p) + distance;
  for (int i = 0; i < lines; ++i) __builtin_prefetch(reinterpret_cast<const void*>(at + 64 * i), 0, 3);
}

// y[rows[g * kGroup + l]] for the groups [g0, g1), x already padded (xp) and the layout's sections.
template <bool kFinite>
void batch1_groups(const float* xp, const uint8_t* base, const Sections& s, int64_t A, const float* bias,
                   int64_t g0, int64_t g1, float* y) {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  const int64_t* group = reinterpret_cast<const int64_t*>(base + s.group);
  const int64_t* values_at = reinterpret_cast<const int64_t*>(base + s.values_at);
  const int64_t* rows = reinterpret_cast<const int64_t*>(base + s.rows);
  const uint8_t* records = base + s.steps;
  const float* packed = reinterpret_cast<const float*>(base + s.packed);
  for (int64_t g = g0; g < g1; ++g) {
    // Four steps at a time into four accumulators (9 % faster than two with AVX-512 at 90 % sparsity).
    Vec acc[4] = {Vec(0.f), Vec(0.f), Vec(0.f), Vec(0.f)};
    const float* weights = packed + values_at[g];
    int64_t t = group[g];
    const int64_t end = group[g + 1];
    for (; t + 4 <= end; t += 4) {
      prefetch_ahead(records + t * kStepBytes, kPrefetchRecords, kPrefetchLines[0]);
      prefetch_ahead(weights, kPrefetchWeights, kPrefetchLines[1]);
      for (int q = 0; q < 4; ++q) acc[q] = step<kFinite>(acc[q], xp, records + (t + q) * kStepBytes, weights);
    }
    for (; t < end; ++t) acc[0] = step<kFinite>(acc[0], xp, records + t * kStepBytes, weights);
    alignas(64) float sums[kLanes];
    ((acc[0] + acc[1]) + (acc[2] + acc[3])).store(sums);
    const int64_t n = std::min(kGroup, A - g * kGroup);
    for (int64_t l = 0; l < n; ++l) {
      const int64_t row = rows[g * kGroup + l];
      y[row] = sums[l] + (bias ? bias[row] : 0.f);
    }
  }
#endif
}

}  // namespace CPU_CAPABILITY
}  // namespace lightning_srigl
