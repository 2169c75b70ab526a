// Batch-1 condensed product without gathers (fp32, AVX-512 only):
//   y[a] = bias[a] + sum_j values[a, j] * x[indices[a, j]]
//
// Rows are taken 16 at a time, one per vector lane, and the input is cut into blocks of 32 features
// that sit in two registers. A "step" gives every lane at most one of its entries in the current block;
// `vpermt2ps` picks the 16 activations from the two registers (1 shuffle instead of a 16-load gather)
// and a masked expand-load places the lanes' weights, stored compactly in step order. A block takes
// as many steps as its fullest lane, so about half of the lanes idle at 90 % sparsity, but a step
// costs a few cycles where a 16-lane gather costs ~16 loads.
//
// The layout is built once per layer (permute_layout) and passed to every call (permute_forward):
//   group_start (G + 1,) int64: first step of row group g;  block_steps (G * NB,) uint8;
//   lane_index (S * 16,) uint8: feature within the block per step and lane;
//   step_meta (S,) int64: (offset of the step's first weight in packed_values) << 16 | lane mask;
//   packed_values (A * k,) fp32.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>
#define LSR_PERMUTE 1
#endif

namespace {

constexpr int64_t kLanes = 16;
constexpr int64_t kBlock = 32;

template <typename IT>
int64_t feature(const IT* p, int64_t j) {
  return static_cast<int64_t>(static_cast<typename std::make_unsigned<IT>::type>(p[j]));
}

template <typename IT>
std::vector<at::Tensor> build_layout(const float* w, const IT* idx, int64_t A, int64_t k, int64_t in) {
  const int64_t G = (A + kLanes - 1) / kLanes, NB = (in + kBlock - 1) / kBlock;
  std::vector<int64_t> group_start(G + 1, 0), meta;
  std::vector<uint8_t> block_steps(G * NB, 0), lane_index;
  std::vector<float> packed;
  packed.reserve(A * k);
  // Per lane: its entries ordered by block (counting sort), and where each block's entries start.
  std::vector<int64_t> order(kLanes * k), start(kLanes * (NB + 1));
  for (int64_t g = 0; g < G; ++g) {
    const int64_t lanes = std::min(kLanes, A - g * kLanes);
    for (int64_t l = 0; l < lanes; ++l) {
      const IT* ir = idx + (g * kLanes + l) * k;
      int64_t* s = start.data() + l * (NB + 1);
      std::fill(s, s + NB + 1, 0);
      for (int64_t j = 0; j < k; ++j) ++s[feature(ir, j) / kBlock + 1];
      for (int64_t b = 0; b < NB; ++b) s[b + 1] += s[b];
      std::vector<int64_t> fill(s, s + NB);
      for (int64_t j = 0; j < k; ++j) order[l * k + fill[feature(ir, j) / kBlock]++] = j;
    }
    for (int64_t b = 0; b < NB; ++b) {
      int64_t steps = 0;
      for (int64_t l = 0; l < lanes; ++l) {
        const int64_t* s = start.data() + l * (NB + 1);
        steps = std::max(steps, s[b + 1] - s[b]);
      }
      block_steps[g * NB + b] = static_cast<uint8_t>(steps);  // <= kBlock
      for (int64_t t = 0; t < steps; ++t) {
        int64_t mask = 0;
        const int64_t offset = static_cast<int64_t>(packed.size());
        for (int64_t l = 0; l < kLanes; ++l) {
          uint8_t local = 0;
          if (l < lanes) {
            const int64_t* s = start.data() + l * (NB + 1);
            if (s[b] + t < s[b + 1]) {
              const int64_t row = g * kLanes + l, j = order[l * k + s[b] + t];
              local = static_cast<uint8_t>(feature(idx + row * k, j) - b * kBlock);
              packed.push_back(w[row * k + j]);
              mask |= int64_t{1} << l;
            }
          }
          lane_index.push_back(local);
        }
        meta.push_back(offset << 16 | mask);
      }
    }
    group_start[g + 1] = static_cast<int64_t>(meta.size());
  }
  auto to_tensor = [](const auto& v, at::ScalarType type) {
    at::Tensor t = at::empty({static_cast<int64_t>(v.size())}, at::TensorOptions().dtype(type));
    if (!v.empty()) std::memcpy(t.data_ptr(), v.data(), v.size() * sizeof(v[0]));
    return t;
  };
  return {to_tensor(group_start, at::kLong), to_tensor(block_steps, at::kByte), to_tensor(lane_index, at::kByte),
          to_tensor(meta, at::kLong), to_tensor(packed, at::kFloat)};
}

#ifdef LSR_PERMUTE
// acc + (the step's weights, expanded into their lanes) * (each lane's activation from block [lo, hi]).
inline __m512 step(__m512 acc, __m512 lo, __m512 hi, const uint8_t* lanes, int64_t meta, const float* packed) {
  const __m512i local = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(lanes)));
  const __m512 w = _mm512_maskz_expandloadu_ps(static_cast<__mmask16>(meta), packed + (meta >> 16));
  return _mm512_fmadd_ps(w, _mm512_permutex2var_ps(lo, local, hi), acc);
}
#endif

}  // namespace

bool permute_supported() {
#ifdef LSR_PERMUTE
  return true;
#else
  return false;
#endif
}

std::vector<at::Tensor> permute_layout(const at::Tensor& values, const at::Tensor& indices, int64_t in_features) {
  TORCH_CHECK(values.scalar_type() == at::kFloat && values.dim() == 2 && values.is_contiguous() &&
                  indices.sizes() == values.sizes() && indices.is_contiguous(),
              "permute_layout: needs contiguous fp32 values (A, k) and indices of the same shape");
  const int64_t A = values.size(0), k = values.size(1);
  if (indices.scalar_type() == at::kShort) {
    return build_layout(values.data_ptr<float>(), indices.data_ptr<int16_t>(), A, k, in_features);
  }
  TORCH_CHECK(indices.scalar_type() == at::kInt, "permute_layout: indices must be int16 or int32");
  return build_layout(values.data_ptr<float>(), indices.data_ptr<int32_t>(), A, k, in_features);
}

at::Tensor permute_forward(const at::Tensor& x, const std::vector<at::Tensor>& layout,
                           const c10::optional<at::Tensor>& bias, int64_t A) {
  TORCH_CHECK(permute_supported(), "permute_forward: this build has no AVX-512; use forward()");
  TORCH_CHECK(x.dim() == 2 && x.size(0) == 1 && x.scalar_type() == at::kFloat && x.is_contiguous(),
              "permute_forward: x must be a contiguous fp32 (1, in) tensor");
  TORCH_CHECK(layout.size() == 5, "permute_forward: layout must come from permute_layout()");
  const int64_t in = x.size(1), NB = (in + kBlock - 1) / kBlock, G = (A + kLanes - 1) / kLanes;
  TORCH_CHECK(layout[0].numel() == G + 1 && layout[1].numel() == G * NB,
              "permute_forward: layout does not match x (", in, " features) and ", A, " rows");
  TORCH_CHECK(layout[2].numel() == kLanes * layout[3].numel() &&
                  layout[0].data_ptr<int64_t>()[G] == layout[3].numel(),
              "permute_forward: inconsistent layout; rebuild it with permute_layout()");
  TORCH_CHECK(!bias.has_value() || (bias->scalar_type() == at::kFloat && bias->is_contiguous() && bias->numel() == A),
              "permute_forward: bias must be a contiguous fp32 (A,) tensor");
  at::Tensor y = at::empty({1, A}, x.options());
#ifdef LSR_PERMUTE
  // x padded with zeros to whole blocks (padding lanes read feature 0 of a block with weight 0).
  std::vector<float> xs(NB * kBlock, 0.f);
  std::memcpy(xs.data(), x.data_ptr<float>(), in * sizeof(float));
  const int64_t* group_start = layout[0].data_ptr<int64_t>();
  const uint8_t* block_steps = layout[1].data_ptr<uint8_t>();
  const uint8_t* lane_index = layout[2].data_ptr<uint8_t>();
  const int64_t* meta = layout[3].data_ptr<int64_t>();
  const float* packed = layout[4].data_ptr<float>();
  const float* b = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, G, 4, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
      int64_t t = group_start[g];
      for (int64_t blk = 0; blk < NB; ++blk) {
        const float* xb = xs.data() + blk * kBlock;
        const __m512 lo = _mm512_loadu_ps(xb), hi = _mm512_loadu_ps(xb + 16);
        const int64_t end = t + block_steps[g * NB + blk];
        for (; t + 2 <= end; t += 2) {  // two steps, two accumulators
          acc0 = step(acc0, lo, hi, lane_index + t * kLanes, meta[t], packed);
          acc1 = step(acc1, lo, hi, lane_index + (t + 1) * kLanes, meta[t + 1], packed);
        }
        if (t < end) {
          acc0 = step(acc0, lo, hi, lane_index + t * kLanes, meta[t], packed);
          ++t;
        }
      }
      alignas(64) float out[kLanes];
      _mm512_store_ps(out, _mm512_add_ps(acc0, acc1));
      const int64_t lanes = std::min(kLanes, A - g * kLanes);
      for (int64_t l = 0; l < lanes; ++l) yp[g * kLanes + l] = out[l] + (b ? b[g * kLanes + l] : 0.f);
    }
  });
#endif
  return y;
}
