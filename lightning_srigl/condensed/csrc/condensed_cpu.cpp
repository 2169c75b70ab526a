// Condensed constant-fan-in linear layer on the CPU:
//   y[b, a] = bias[a] + sum_j values[a, j] * x[b, indices[a, j]]
// x (B, in), values (A, k), indices (A, k) int16 or int32, bias (A,) or none -> y (B, A).
// Values/activations are fp32, bf16 or fp16; accumulation is always fp32.
//
// Two regimes (see shared/research/kernels.md sections 6 and 9):
//  * small batch: "gather-dot", several rows at once with independent accumulators,
//    explicit AVX-512 gathers when available, a portable loop otherwise;
//  * larger batch: "panel" kernel, x packed into (ceil(B/BT), in, BT) fp32 panels (BT = 16, 32 or 64)
//    so every (row, j) pair multiplies one contiguous run of BT activations; threads split the panels
//    (each packs its own) when they divide evenly, else the output rows.
// Threads come from at::parallel_for, i.e. torch.get_num_threads(). fp32 layers at batch 1 can also use
// the gather-free kernel of permute_b1.cpp, which needs a precomputed layout (CondensedLinear caches it).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>
#define LSR_AVX512 1
#endif

namespace {

using bf16 = c10::BFloat16;
using fp16 = c10::Half;

// Rows processed together by the gather-dot kernel (independent accumulators hide gather latency;
// 2 measured faster than 1, 4 or 8 on this Sapphire-Rapids-class VM).
constexpr int64_t kRowBlock = 2;
// Output rows per tile of the panel kernel.
constexpr int64_t kNeuronTile = 16;
// Batches below this size use the gather-dot kernel.
constexpr int64_t kSmallBatch = 3;
// Batches above 16 use 32-wide panels, or 64-wide ones from this input width on: each (row, j) weight
// is then loaded once per 64 samples. Measured at batch 256, 90 % sparsity: 64-wide is 5-9 % faster
// for in = 3072 and 8-15 % slower for in = 768 (16 accumulators per 4 rows vs 8).
constexpr int64_t kWidePanelInFeatures = 2048;

inline float to_float(float v) { return v; }
inline float to_float(bf16 v) { return static_cast<float>(v); }
inline float to_float(fp16 v) { return static_cast<float>(v); }

template <typename IT>
inline int64_t index_at(const IT* p, int64_t j) {
  // Indices are non-negative (< 32768 for int16), so the unsigned view is exact.
  return static_cast<int64_t>(static_cast<typename std::make_unsigned<IT>::type>(p[j]));
}

// ---------------------------------------------------------------- gather-dot (small batch)
#ifdef LSR_AVX512
inline __m512i load_idx(const int16_t* p) {
  return _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
inline __m512i load_idx(const int32_t* p) { return _mm512_loadu_si512(p); }
inline __m512i load_idx_tail(const int16_t* p, __mmask16 m) {
  return _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p));
}
inline __m512i load_idx_tail(const int32_t* p, __mmask16 m) { return _mm512_maskz_loadu_epi32(m, p); }

inline __m512 load_val(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load_val(const bf16* p) {
  __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}
inline __m512 load_val(const fp16* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
inline __m512 load_val_tail(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
inline __m512 load_val_tail(const bf16* p, __mmask16 m) {
  __m512i w = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}
inline __m512 load_val_tail(const fp16* p, __mmask16 m) {
  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
}

// R rows starting at w/idx (row stride k) dotted with one fp32 sample x; results to out[0..R).
template <int R, typename T, typename IT>
inline void dot_rows(const float* x, const T* w, const IT* idx, int64_t k, float* out) {
  __m512 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  int64_t j = 0;
  for (; j + 16 <= k; j += 16) {
    for (int r = 0; r < R; ++r) {
      __m512 xv = _mm512_i32gather_ps(load_idx(idx + r * k + j), x, 4);
      acc[r] = _mm512_fmadd_ps(load_val(w + r * k + j), xv, acc[r]);
    }
  }
  if (j < k) {
    const __mmask16 m = static_cast<__mmask16>((1u << (k - j)) - 1u);
    for (int r = 0; r < R; ++r) {
      __m512 xv = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, load_idx_tail(idx + r * k + j, m), x, 4);
      acc[r] = _mm512_fmadd_ps(load_val_tail(w + r * k + j, m), xv, acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) out[r] = _mm512_reduce_add_ps(acc[r]);
}
#else
template <int R, typename T, typename IT>
inline void dot_rows(const float* x, const T* w, const IT* idx, int64_t k, float* out) {
  for (int r = 0; r < R; ++r) {
    const T* wr = w + r * k;
    const IT* ir = idx + r * k;
    float s = 0.f;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < k; ++j) s += to_float(wr[j]) * x[index_at(ir, j)];
    out[r] = s;
  }
}
#endif

// y (B, A) for small B; xf is x as fp32 (B, in).
template <typename T, typename IT>
void gather_dot(const float* xf, int64_t B, int64_t in, const T* w, const IT* idx, const T* bias,
                int64_t A, int64_t k, T* y) {
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
        T* yb = y + b * A + a0;
        for (int64_t r = 0; r < rows; ++r) yb[r] = static_cast<T>(out[r] + (bias ? to_float(bias[a0 + r]) : 0.f));
      }
    }
  });
}

// ---------------------------------------------------------------- panel kernel (larger batch)
typedef float v16 __attribute__((vector_size(64), aligned(4)));

#ifdef LSR_AVX512
// In-register transpose of a 16 x 16 fp32 block: r[i][j] -> r[j][i].
inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {  // pairs of rows interleaved within 128-bit lanes
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int g = 0; g < 16; g += 4) {  // u[g + c], lane L: column 4L + c of rows g .. g + 3
    r[g] = _mm512_shuffle_ps(t[g], t[g + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[g + 1] = _mm512_shuffle_ps(t[g], t[g + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[g + 2] = _mm512_shuffle_ps(t[g + 1], t[g + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[g + 3] = _mm512_shuffle_ps(t[g + 1], t[g + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int c = 0; c < 4; ++c) {  // 4 x 4 transpose of 128-bit lanes: column 4L + c gathers lane L
    const __m512 v0 = _mm512_shuffle_f32x4(r[c], r[4 + c], _MM_SHUFFLE(1, 0, 1, 0));
    const __m512 v1 = _mm512_shuffle_f32x4(r[c], r[4 + c], _MM_SHUFFLE(3, 2, 3, 2));
    const __m512 v2 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], _MM_SHUFFLE(1, 0, 1, 0));
    const __m512 v3 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], _MM_SHUFFLE(3, 2, 3, 2));
    t[c] = _mm512_shuffle_f32x4(v0, v2, _MM_SHUFFLE(2, 0, 2, 0));
    t[4 + c] = _mm512_shuffle_f32x4(v0, v2, _MM_SHUFFLE(3, 1, 3, 1));
    t[8 + c] = _mm512_shuffle_f32x4(v1, v3, _MM_SHUFFLE(2, 0, 2, 0));
    t[12 + c] = _mm512_shuffle_f32x4(v1, v3, _MM_SHUFFLE(3, 1, 3, 1));
  }
  for (int i = 0; i < 16; ++i) r[i] = t[i];
}

// panel[i * BT + b] = x[(b0 + b) * in + i] for b < nb (16 samples from b0), i < in; fp32 panel.
template <typename T, int BT>
void pack_block16(const T* x, int64_t in, int64_t nb, float* panel) {
  __m512 r[16];
  for (int64_t i0 = 0; i0 < in; i0 += 16) {
    const int64_t ni = std::min<int64_t>(16, in - i0);
    const __mmask16 m = static_cast<__mmask16>((1u << ni) - 1u);
    for (int64_t b = 0; b < 16; ++b) {
      r[b] = b >= nb ? _mm512_setzero_ps() : ni == 16 ? load_val(x + b * in + i0) : load_val_tail(x + b * in + i0, m);
    }
    transpose16(r);
    for (int64_t i = 0; i < ni; ++i) _mm512_storeu_ps(panel + (i0 + i) * BT, r[i]);
  }
}
#endif

// Pack nb <= 16 samples from x (row stride in) into columns [0, 16) of a (in, BT) fp32 panel; missing
// samples are zero. With AVX-512, 16 x 16 blocks are transposed in registers; otherwise 16 x 16 blocks
// keep the strided reads in L1.
template <typename T, int BT>
void pack_slice(const T* x, int64_t in, int64_t nb, float* panel) {
#ifdef LSR_AVX512
  pack_block16<T, BT>(x, in, nb, panel);
#else
  for (int64_t i0 = 0; i0 < in; i0 += 16) {
    const int64_t i1 = std::min<int64_t>(in, i0 + 16);
    for (int64_t i = i0; i < i1; ++i) {
      for (int64_t b = 0; b < 16; ++b) panel[i * BT + b] = b < nb ? to_float(x[b * in + i]) : 0.f;
    }
  }
#endif
}

// Pack nb <= BT samples from x (row stride in) into one (in, BT) fp32 panel, on the calling thread.
template <typename T, int BT>
void pack_panel(const T* x, int64_t in, int64_t nb, float* panel) {
  for (int64_t s = 0; s < BT / 16; ++s) {
    pack_slice<T, BT>(x + s * 16 * in, in, std::max<int64_t>(0, std::min<int64_t>(16, nb - s * 16)), panel + s * 16);
  }
}

// Pack x (B, in) into fp32 panels (P, in, BT), 16-sample slices in parallel; samples past B are zero.
template <typename T, int BT>
void pack_panels(const T* x, int64_t B, int64_t in, float* xp) {
  const int64_t P = (B + BT - 1) / BT;
  constexpr int64_t kSub = BT / 16;  // 16-sample slices per panel
  at::parallel_for(0, P * kSub, 1, [&](int64_t s0, int64_t s1) {
    for (int64_t s = s0; s < s1; ++s) {
      const int64_t p = s / kSub, b0 = p * BT + (s % kSub) * 16;
      const int64_t nb = std::max<int64_t>(0, std::min<int64_t>(16, B - b0));
      pack_slice<T, BT>(x + b0 * in, in, nb, xp + p * in * BT + (s % kSub) * 16);
    }
  });
}

// Accumulate NN consecutive output rows over one panel:
// dst[n][16v : 16v+16] = init[n] + sum_j w[n, j] * panel[idx[n, j], 16v : 16v+16].
// The NN rows' independent index streams give the core several loads in flight.
template <int BT, int NN, typename T, typename IT>
inline void panel_rows(const float* panel, const T* w, const IT* idx, int64_t k, const float* init, float* dst) {
  constexpr int V = BT / 16;
  v16 acc[NN][V];
  for (int n = 0; n < NN; ++n) {
    for (int v = 0; v < V; ++v) acc[n][v] = v16{} + init[n];
  }
  for (int64_t j = 0; j < k; ++j) {
    for (int n = 0; n < NN; ++n) {
      const float wj = to_float(w[n * k + j]);
      const v16* xr = reinterpret_cast<const v16*>(panel + index_at(idx + n * k, j) * BT);
      for (int v = 0; v < V; ++v) acc[n][v] += wj * xr[v];
    }
  }
  for (int n = 0; n < NN; ++n) std::memcpy(dst + n * BT, acc[n], sizeof(acc[n]));
}

// tile (rows, BT) -> y[b, q] (row stride A) for b < nb, q < rows; fp32 through 16 x 16 transposes.
template <int BT, typename T>
void store_tile(const float (&tile)[kNeuronTile][BT], int64_t rows, int64_t nb, T* y, int64_t A) {
  for (int64_t b = 0; b < nb; ++b) {
    for (int64_t q = 0; q < rows; ++q) y[b * A + q] = static_cast<T>(tile[q][b]);
  }
}

#ifdef LSR_AVX512
template <int BT>
void store_tile(const float (&tile)[kNeuronTile][BT], int64_t rows, int64_t nb, float* y, int64_t A) {
  static_assert(kNeuronTile == 16, "the transpose handles 16 rows");
  const __mmask16 m = static_cast<__mmask16>((1u << rows) - 1u);
  __m512 r[16];
  for (int64_t b0 = 0; b0 < nb; b0 += 16) {
    for (int64_t q = 0; q < 16; ++q) r[q] = q < rows ? _mm512_loadu_ps(&tile[q][b0]) : _mm512_setzero_ps();
    transpose16(r);
    for (int64_t b = 0; b < std::min<int64_t>(16, nb - b0); ++b) _mm512_mask_storeu_ps(y + (b0 + b) * A, m, r[b]);
  }
}
#endif

// The calling thread's panel buffer, 64-byte aligned (panel rows must not straddle cache lines), grown
// to `n` floats and kept: a fresh multi-megabyte allocation per call is served by new pages from the
// OS, and faulting them in costs about as much as packing.
float* panel_buffer(int64_t n) {
  thread_local std::vector<float> buffer;
  constexpr int64_t kAlignFloats = 16;
  if (static_cast<int64_t>(buffer.size()) < n + kAlignFloats) buffer.resize(n + kAlignFloats);
  const auto address = reinterpret_cast<std::uintptr_t>(buffer.data());
  return buffer.data() + (kAlignFloats - static_cast<int64_t>(address / sizeof(float)) % kAlignFloats) % kAlignFloats;
}

// Output tiles [t0, t1) of one panel holding nb samples: y (nb, A) rows of the panel's samples.
// Rows are accumulated NN at a time: 4 for 16- and 64-wide panels (4 and 16 accumulators), 2 for
// 32-wide ones (measured 8-15 % faster than 4 rows there, at batch 256).
template <int BT, typename T, typename IT>
void panel_tiles(const float* panel, int64_t nb, const T* w, const IT* idx, const T* bias, int64_t A, int64_t k,
                 int64_t t0, int64_t t1, T* y) {
  constexpr int NN = BT == 32 ? 2 : 4;
  alignas(64) float tile[kNeuronTile][BT];
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t a0 = t * kNeuronTile;
    const int64_t rows = std::min(kNeuronTile, A - a0);
    float init[kNeuronTile];
    for (int64_t r = 0; r < rows; ++r) init[r] = bias ? to_float(bias[a0 + r]) : 0.f;
    int64_t r = 0;
    for (; r + NN <= rows; r += NN) panel_rows<BT, NN>(panel, w + (a0 + r) * k, idx + (a0 + r) * k, k, init + r, tile[r]);
    for (; r < rows; ++r) panel_rows<BT, 1>(panel, w + (a0 + r) * k, idx + (a0 + r) * k, k, init + r, tile[r]);
    store_tile<BT>(tile, rows, nb, y + a0, A);
  }
}

// Threads split the panels when that balances (one thread, or panels a multiple of the threads, or
// many panels): each thread packs its own panel into its own buffer and computes every row over it, so
// the panel never leaves that core's L2. Measured at batch 256, 90 % sparsity: 10-40 % faster than
// splitting the rows over threads that share panels packed in advance, which the few-panel case keeps.
template <int BT, typename T, typename IT>
void panel_matmul(const T* x, int64_t B, int64_t in, const T* w, const IT* idx, const T* bias, int64_t A,
                  int64_t k, T* y) {
  const int64_t P = (B + BT - 1) / BT;
  const int64_t n_tiles = (A + kNeuronTile - 1) / kNeuronTile;
  const int64_t threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  if (P % threads == 0 || P >= 4 * threads) {
    at::parallel_for(0, P, 1, [&](int64_t p0, int64_t p1) {
      float* panel = panel_buffer(in * BT);
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t nb = std::min<int64_t>(BT, B - p * BT);
        pack_panel<T, BT>(x + p * BT * in, in, nb, panel);
        panel_tiles<BT>(panel, nb, w, idx, bias, A, k, 0, n_tiles, y + p * BT * A);
      }
    });
    return;
  }
  float* xp = panel_buffer(P * in * BT);
  pack_panels<T, BT>(x, B, in, xp);
  at::parallel_for(0, n_tiles, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t p = 0; p < P; ++p) {
      panel_tiles<BT>(xp + p * in * BT, std::min<int64_t>(BT, B - p * BT), w, idx, bias, A, k, t0, t1, y + p * BT * A);
    }
  });
}

// ---------------------------------------------------------------- dispatch
template <typename T, typename IT>
void run(const at::Tensor& x, const at::Tensor& values, const at::Tensor& indices, const T* bias, at::Tensor& y) {
  const int64_t B = x.size(0), in = x.size(1), A = values.size(0), k = values.size(1);
  const T* w = values.data_ptr<T>();
  const IT* idx = indices.data_ptr<IT>();
  T* yp = y.data_ptr<T>();
  if (B < kSmallBatch) {
    at::Tensor xf = x.scalar_type() == at::kFloat ? x : x.to(at::kFloat);
    gather_dot<T, IT>(xf.data_ptr<float>(), B, in, w, idx, bias, A, k, yp);
  } else if (B <= 16) {
    panel_matmul<16, T, IT>(x.data_ptr<T>(), B, in, w, idx, bias, A, k, yp);
  } else if (in >= kWidePanelInFeatures) {
    panel_matmul<64, T, IT>(x.data_ptr<T>(), B, in, w, idx, bias, A, k, yp);
  } else {
    panel_matmul<32, T, IT>(x.data_ptr<T>(), B, in, w, idx, bias, A, k, yp);
  }
}

template <typename T>
void run_typed(const at::Tensor& x, const at::Tensor& values, const at::Tensor& indices,
               const c10::optional<at::Tensor>& bias, at::Tensor& y) {
  const T* b = bias.has_value() ? bias->data_ptr<T>() : nullptr;
  if (indices.scalar_type() == at::kShort) {
    run<T, int16_t>(x, values, indices, b, y);
  } else {
    run<T, int32_t>(x, values, indices, b, y);
  }
}

void check_inputs(const at::Tensor& x, const at::Tensor& values, const at::Tensor& indices,
                  const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2 && values.dim() == 2, "condensed_linear: x must be (B, in) and values (A, k)");
  TORCH_CHECK(x.is_contiguous() && values.is_contiguous() && indices.is_contiguous(),
              "condensed_linear: x, values and indices must be contiguous (call .contiguous())");
  TORCH_CHECK(indices.sizes() == values.sizes(), "condensed_linear: indices ", indices.sizes(),
              " must have the shape of values ", values.sizes());
  TORCH_CHECK(indices.scalar_type() == at::kShort || indices.scalar_type() == at::kInt,
              "condensed_linear: indices must be int16 or int32, got ", indices.scalar_type());
  TORCH_CHECK(x.scalar_type() == values.scalar_type(), "condensed_linear: x dtype ", x.scalar_type(),
              " differs from values dtype ", values.scalar_type(), "; cast the input or the module");
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == values.size(0) && bias->is_contiguous() &&
                    bias->scalar_type() == values.scalar_type(),
                "condensed_linear: bias must be a contiguous (A,) tensor of the values' dtype");
  }
}

}  // namespace

at::Tensor condensed_linear_forward(const at::Tensor& x, const at::Tensor& values, const at::Tensor& indices,
                                    const c10::optional<at::Tensor>& bias) {
  check_inputs(x, values, indices, bias);
  at::Tensor y = at::empty({x.size(0), values.size(0)}, x.options());
  if (y.numel() == 0) return y;
  switch (x.scalar_type()) {
    case at::kFloat: run_typed<float>(x, values, indices, bias, y); break;
    case at::kBFloat16: run_typed<bf16>(x, values, indices, bias, y); break;
    case at::kHalf: run_typed<fp16>(x, values, indices, bias, y); break;
    default: TORCH_CHECK(false, "condensed_linear: unsupported dtype ", x.scalar_type(),
                         " (use float32, bfloat16 or float16)");
  }
  return y;
}

bool has_avx512_gathers() {
#ifdef LSR_AVX512
  return true;
#else
  return false;
#endif
}

// Batch-1 kernel without gathers, in permute_b1.cpp.
bool permute_supported();
at::Tensor permute_layout(const at::Tensor& values, const at::Tensor& indices, const at::Tensor& rows,
                          int64_t in_features, int64_t out_features);
at::Tensor permute_forward(const at::Tensor& x, const at::Tensor& layout, const c10::optional<at::Tensor>& bias);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &condensed_linear_forward, "y (B, A) = x (B, in) gathered by indices (A, k) times values + bias");
  m.def("has_avx512_gathers", &has_avx512_gathers, "whether the explicit AVX-512 gather path was compiled");
  m.def("permute_supported", &permute_supported, "whether the batch-1 permute kernel was compiled (AVX-512)");
  m.def("permute_layout", &permute_layout, "batch-1 permute layout (one uint8 tensor) of fp32 values, indices and output rows");
  m.def("permute_forward", &permute_forward, "y (1, out) from x (1, in), a permute_layout() and the full bias (out,)");
}
