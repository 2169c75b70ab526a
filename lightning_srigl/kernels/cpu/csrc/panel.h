// Batches of 3 and more: the "panel" kernel.
//
// x (B, in) is packed into fp32 panels (ceil(B / BT), in, BT), so every (row a, entry j) multiplies one
// contiguous run of BT activations panel[idx[a, j], 0:BT] by the broadcast weight w[a, j]: NN rows at
// a time, BT / kLanes vector accumulators per row. Panels are packed and outputs stored through
// kLanes x kLanes in-register transposes (at::vec::transpose_mxn). Threads split the panels (each packs
// its own) when that balances, else the output rows.
#pragma once

#include "common.h"

namespace lightning_srigl {
inline namespace CPU_CAPABILITY {

// Output rows per tile.
constexpr int64_t kNeuronTile = 16;

// Pack nb <= kLanes samples x (row stride `stride`, `columns` features each) into columns [0, kLanes)
// of the (columns_pad, BT) panel, in kLanes x kLanes blocks; missing samples are zero; rows up to
// `columns` rounded up to kLanes are written.
template <typename T, int BT>
void pack_block(const T* x, int64_t stride, int64_t columns, int64_t nb, float* panel) {
  alignas(64) float block[kLanes * kLanes];
  for (int64_t i0 = 0; i0 < columns; i0 += kLanes) {
    const int64_t ni = std::min<int64_t>(kLanes, columns - i0);
    if (std::is_same<T, float>::value && ni == kLanes && nb == kLanes) {
      at::vec::transpose_mxn<float, kLanes, kLanes>(reinterpret_cast<const float*>(x) + i0, stride, panel + i0 * BT, BT);
      continue;
    }
    for (int64_t b = 0; b < kLanes; ++b) {
      const T* row_start = x + b * stride + i0;
      const Vec row = b >= nb ? Vec(0.f) : ni == kLanes ? load_float(row_start) : load_float_partial(row_start, ni);
      row.store(block + b * kLanes);
    }
    at::vec::transpose_mxn<float, kLanes, kLanes>(block, kLanes, panel + i0 * BT, BT);
  }
}

// Pack nb <= BT samples from x (row stride in) into one (in_pad, BT) fp32 panel.
template <typename T, int BT>
void pack_panel(const T* x, int64_t in, int64_t nb, float* panel) {
  for (int64_t s = 0; s < BT / kLanes; ++s) {
    const int64_t n = std::max<int64_t>(0, std::min<int64_t>(kLanes, nb - s * kLanes));
    pack_block<T, BT>(x + s * kLanes * in, in, in, n, panel + s * kLanes);
  }
}

// Accumulate NN consecutive output rows over one panel:
// dst[n][0:BT] = init[n] + sum_j w[n, j] * panel[idx[n, j], 0:BT].
// The NN rows' independent index streams give the core several loads in flight.
template <int BT, int NN, typename T, typename IT>
inline void panel_rows(const float* panel, const T* w, const IT* idx, int64_t k, const float* init, float* dst) {
  constexpr int V = BT / kLanes;
  Vec acc[NN][V];
  for (int n = 0; n < NN; ++n) {
    for (int v = 0; v < V; ++v) acc[n][v] = Vec(init[n]);
  }
  for (int64_t j = 0; j < k; ++j) {
    for (int n = 0; n < NN; ++n) {
      const Vec wj(to_float(w[n * k + j]));
      const float* xr = panel + index_at(idx + n * k, j) * BT;
      for (int v = 0; v < V; ++v) acc[n][v] = at::vec::fmadd(wj, Vec::loadu(xr + v * kLanes), acc[n][v]);
    }
  }
  for (int n = 0; n < NN; ++n) {
    for (int v = 0; v < V; ++v) acc[n][v].store(dst + n * BT + v * kLanes);
  }
}

// Where a product's outputs go: row a of sample b to y[b * ldy + a], or with `cols`, to y[b * ldy + cols[a]]
// (condensed_linear_rows: the active rows among all out_features; ablated columns are written elsewhere).
template <typename T>
struct Output {
  T* y;
  int64_t ldy;
  const int64_t* cols;
  Output<T> samples_from(int64_t b) const { return {y + b * ldy, ldy, cols}; }
};

// n <= kLanes values v[0..n) to out[cols[0..n)] (cols null: out[0..n)). Ascending columns spanning at
// most kLanes (AVX-512) take one masked store of the values expanded into their lanes.
template <typename T>
inline void store_columns(const float* v, int64_t n, T* out, const int64_t* cols) {
  if (std::is_same<T, float>::value && n == kLanes && (cols == nullptr || cols[n - 1] - cols[0] == n - 1)) {
    Vec::loadu(v).store(reinterpret_cast<float*>(out + (cols ? cols[0] : 0)));
    return;
  }
#if defined(CPU_CAPABILITY_AVX512)
  if (std::is_same<T, float>::value && cols != nullptr && cols[n - 1] - cols[0] < kLanes) {
    uint32_t mask = 0;
    for (int64_t q = 0; q < n; ++q) mask |= uint32_t{1} << (cols[q] - cols[0]);
    const __m512 expanded = _mm512_maskz_expandloadu_ps(static_cast<__mmask16>(mask), v);
    _mm512_mask_storeu_ps(reinterpret_cast<float*>(out + cols[0]), static_cast<__mmask16>(mask), expanded);
    return;
  }
#endif
  for (int64_t q = 0; q < n; ++q) out[cols ? cols[q] : q] = static_cast<T>(v[q]);
}

// tile (rows, BT) -> outputs a0 + q of samples b < nb, q < rows, through kLanes x kLanes transposes.
template <int BT, typename T>
void store_tile(const float* tile, int64_t rows, int64_t nb, const Output<T>& out, int64_t a0) {
  alignas(64) float block[kLanes * kLanes];
  for (int64_t q0 = 0; q0 < rows; q0 += kLanes) {
    const int64_t nq = std::min<int64_t>(kLanes, rows - q0);
    const int64_t* cols = out.cols ? out.cols + a0 + q0 : nullptr;
    T* base = out.cols ? out.y : out.y + a0 + q0;
    for (int64_t b0 = 0; b0 < nb; b0 += kLanes) {
      at::vec::transpose_mxn<float, kLanes, kLanes>(tile + q0 * BT + b0, BT, block, kLanes);
      for (int64_t b = 0; b < std::min<int64_t>(kLanes, nb - b0); ++b) {
        store_columns(block + b * kLanes, nq, base + (b0 + b) * out.ldy, cols);
      }
    }
  }
}

// Rows accumulated together for a BT-wide panel. AVX-512 (32 zmm), measured at batch 256: 4 rows for
// 16- and 64-wide panels, 2 for 32-wide ones (8-15 % faster than 4 there). Elsewhere (16 ymm on AVX2)
// at most 8 accumulators, leaving registers for the broadcast weight and the loads.
template <int BT>
constexpr int rows_per_step() {
  constexpr int V = BT / kLanes;
  if (kLanes >= 16) return BT == 32 ? 2 : 4;
  return V >= 8 ? 1 : std::min(4, 8 / V);
}

// Rows whose weights and indices are prefetched (into L2) while the rows this far before them compute: in a
// whole network a layer's weights are no longer cached when its first panel reads them. Measured on an AMD
// EPYC (Zen 5 class, AVX-512, 1 thread) with the weights evicted before each call, batch 128, 90 %: 4-7 %
// faster for 768 -> 768 and 768 -> 3072, nothing measurable at batch 1024 (later panels find them in cache).
constexpr int64_t kPrefetchRows = 16;

// Prefetches the weights and indices of rows [a, a + n) (if they exist; rows of stride k).
template <typename T, typename IT>
inline void prefetch_rows(const T* w, const IT* idx, int64_t k, int64_t a, int64_t n, int64_t A) {
  if (a + n > A) return;
  const char* wp = reinterpret_cast<const char*>(w + a * k);
  const char* ip = reinterpret_cast<const char*>(idx + a * k);
  for (int64_t o = 0; o < n * k * static_cast<int64_t>(sizeof(T)); o += 64) __builtin_prefetch(wp + o, 0, 2);
  for (int64_t o = 0; o < n * k * static_cast<int64_t>(sizeof(IT)); o += 64) __builtin_prefetch(ip + o, 0, 2);
}

// Output tiles [t0, t1) of one panel holding nb samples: y (nb, A) rows of the panel's samples.
template <int BT, typename T, typename IT>
void panel_tiles(const float* panel, int64_t nb, const T* w, const IT* idx, const T* bias, int64_t A, int64_t k,
                 int64_t t0, int64_t t1, const Output<T>& out) {
  constexpr int NN = rows_per_step<BT>();
  alignas(64) float tile[kNeuronTile * BT];
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t a0 = t * kNeuronTile;
    const int64_t rows = std::min(kNeuronTile, A - a0);
    float init[kNeuronTile] = {};
    for (int64_t r = 0; r < rows; ++r) init[r] = bias ? to_float(bias[a0 + r]) : 0.f;
    int64_t r = 0;
    for (; r + NN <= rows; r += NN) {
      prefetch_rows(w, idx, k, a0 + r + kPrefetchRows, NN, A);
      panel_rows<BT, NN>(panel, w + (a0 + r) * k, idx + (a0 + r) * k, k, init + r, tile + r * BT);
    }
    for (; r < rows; ++r) panel_rows<BT, 1>(panel, w + (a0 + r) * k, idx + (a0 + r) * k, k, init + r, tile + r * BT);
    store_tile<BT>(tile, rows, nb, out, a0);
  }
}

// Threads split the panels when that balances (one thread, or panels a multiple of the threads, or
// many panels): each thread packs its own panel into its own buffer and computes every row over it, so
// the panel never leaves that core's L2 (measured 10-40 % faster at batch 256 than splitting the rows
// over threads that share panels packed in advance, which the few-panel case keeps).
template <int BT, typename T, typename IT>
void panel_matmul(const T* x, int64_t B, int64_t in, const T* w, const IT* idx, const T* bias, int64_t A,
                  int64_t k, const Output<T>& out) {
  const int64_t P = (B + BT - 1) / BT;
  const int64_t panel_floats = (in + kLanes - 1) / kLanes * kLanes * BT;
  const int64_t n_tiles = (A + kNeuronTile - 1) / kNeuronTile;
  const int64_t threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  if (P % threads == 0 || P >= 4 * threads) {
    at::parallel_for(0, P, 1, [&](int64_t p0, int64_t p1) {
      float* panel = scratch_buffer(panel_floats);
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t nb = std::min<int64_t>(BT, B - p * BT);
        pack_panel<T, BT>(x + p * BT * in, in, nb, panel);
        panel_tiles<BT>(panel, nb, w, idx, bias, A, k, 0, n_tiles, out.samples_from(p * BT));
      }
    });
    return;
  }
  float* panels = scratch_buffer(P * panel_floats);
  at::parallel_for(0, P * (BT / kLanes), 1, [&](int64_t s0, int64_t s1) {
    for (int64_t s = s0; s < s1; ++s) {
      const int64_t p = s / (BT / kLanes), b0 = p * BT + (s % (BT / kLanes)) * kLanes;
      const int64_t nb = std::max<int64_t>(0, std::min<int64_t>(kLanes, B - b0));
      pack_block<T, BT>(x + b0 * in, in, in, nb, panels + p * panel_floats + (s % (BT / kLanes)) * kLanes);
    }
  });
  at::parallel_for(0, n_tiles, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t p = 0; p < P; ++p) {
      const int64_t nb = std::min<int64_t>(BT, B - p * BT);
      panel_tiles<BT>(panels + p * panel_floats, nb, w, idx, bias, A, k, t0, t1, out.samples_from(p * BT));
    }
  });
}

// Batches above 16 use 32-wide panels; with AVX-512, 64-wide ones from this input width on (each (row, j)
// weight is then loaded once per 64 samples). Measured at batch 256, 90 % sparsity, 1 thread: with
// AVX-512 64-wide is 5-9 % faster for in = 3072 and 8-15 % slower for in = 768. With AVX2 (16 ymm: 8
// accumulators, one row of 64) 32-wide is 10-15 % faster than 64-wide for in = 3072, and below this
// width 16-wide panels (48 KB for in = 768, about L1) are 2-8 % faster than 32-wide at batch 197-256;
// the rows per step (2, 3, 4 or 6) and software prefetching of the next rows changed nothing measurable.
constexpr int64_t kWidePanelInFeatures = 2048;

// The (B, A) product into `out` for B >= 3.
template <typename T, typename IT>
void panel_product(const T* x, int64_t B, int64_t in, const T* w, const IT* idx, const T* bias, int64_t A,
                   int64_t k, const Output<T>& out) {
  if (B <= 16 || (kLanes < 16 && in < kWidePanelInFeatures)) {
    panel_matmul<16>(x, B, in, w, idx, bias, A, k, out);
  } else if (kLanes >= 16 && in >= kWidePanelInFeatures) {
    panel_matmul<64>(x, B, in, w, idx, bias, A, k, out);
  } else {
    panel_matmul<32>(x, B, in, w, idx, bias, A, k, out);
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace lightning_srigl
