// Condensed constant-fan-in 2-D convolution, output pixels as the batch, without im2col:
//   y[n, rows[a], oy, ox] = bias[rows[a]] + sum_j values[a, j] * xp[n, c, oy * sh + ky * dh, ox * sw + kx * dw]
// where (c, ky, kx) unravels indices[a, j] over (C, kh, kw) (c is the absolute input channel, so grouped
// convolutions need nothing else), xp is x zero-padded, and output channels without an active row hold
// their bias (or 0).
//
// The input is rearranged once per call into "phase planes": plane (py, px) of channel c holds
// xp[c, py::sh, px::sw] as an (Hq, Wq) array, Hq = ceil(Hp / sh), Wq = ceil(Wp / sw), and only the planes
// some tap reads are built. Tap (c, ky, kx) of output pixel (oy, ox) then reads plane
// ((ky dh) % sh, (kx dw) % sw) of channel c at (oy + (ky dh) / sh, ox + (kx dw) / sw), so with
// q = oy * Wq + ox every tap is one offset: element off[a, j] + q. A block of BT consecutive q is one
// contiguous run of BT floats for every (a, j), the same access as the linear panel kernel (panel.h)
// without packing anything: each (row, tap) multiplies BT activations by one broadcast weight. Columns
// ox in [Wo, Wq) of the grid are computed and not stored (2 of 58 for a padded 3x3 on 56 x 56).
// A 1x1 convolution with stride 1 and no padding reads x in place (off = c * H * W).
// Where it saves blocks, the N images' planes of a channel lie side by side and the blocks run over all their
// points (ConvGeometry::batched in conv_geometry.h, which holds the geometry and the plane copy).
//
// Where all C * kh * kw taps of a block fit in L1 (the 7x7 stem: 147 taps x 64 points = 37 KB), each block
// first copies the run of every tap some row reads into an aligned "tap panel" (the i-th such tap at row i)
// and the rows read that: every load of the inner loop is then aligned and from L1 (an unaligned 64-byte
// load crosses a cache line, i.e. costs two), for one copy per tap and block (about 4 % of the stem's FMAs).
// The stem at 42 % density runs 1.3x faster so (scripts/bench_conv_layouts.py); narrower blocks with
// panels lose more to short rows than they gain, and the in-place 1x1 reads are aligned already.
// Epilogue: each output is written once, as bias + sum, or max(0, bias + sum) with relu (a folded
// BatchNorm's shift is the bias), so a following ReLU costs no pass of its own. With a residual r of y's
// shape, bias + sum + r (then the ReLU): a ResNet block's shortcut addition (kernels/compiled.py fuses it).
#pragma once

#include "conv_geometry.h"

namespace lightning_srigl {
inline namespace CPU_CAPABILITY {

// dst[r][0:BT] = start[r] + sum_{j < n} w[r * k + j] * xs[off[r * k + j] + 0:BT] for NN consecutive rows (row
// stride k), where start[r] is init[r] in every lane, or partial[r * BT + 0:BT] (an earlier chunk's sums) where
// partial is given. With relu, dst holds max(0, that) (NaN stays NaN, as in torch.relu).
// SHARED: every row reads the first row's taps (off[r * k + j] == off[j]; a layer whose only sparsity is ablated
// filters), so each tap's BT activations are loaded once for all NN rows: NN FMAs per load instead of one, the
// register blocking of a dense convolution (ResNet-50's 90 % ERK masks leave 6 such 1x1 layers at 56 x 56).
template <int BT, int NN, bool SHARED>
inline void conv_rows(const float* xs, const float* w, const int32_t* off, int64_t n, int64_t k, const float* init,
                      const float* partial, bool relu, float* dst) {
  constexpr int V = BT / kLanes;
  Vec acc[NN][V];
  for (int r = 0; r < NN; ++r) {
    for (int v = 0; v < V; ++v) acc[r][v] = partial ? Vec::loadu(partial + r * BT + v * kLanes) : Vec(init[r]);
  }
  for (int64_t j = 0; j < n; ++j) {
    if constexpr (SHARED) {
      Vec xv[V];
      for (int v = 0; v < V; ++v) xv[v] = Vec::loadu(xs + off[j] + v * kLanes);
      for (int r = 0; r < NN; ++r) {
        const Vec wj(w[r * k + j]);
        for (int v = 0; v < V; ++v) acc[r][v] = at::vec::fmadd(wj, xv[v], acc[r][v]);
      }
    } else {
      for (int r = 0; r < NN; ++r) {
        const Vec wj(w[r * k + j]);
        const float* xr = xs + off[r * k + j];
        for (int v = 0; v < V; ++v) acc[r][v] = at::vec::fmadd(wj, Vec::loadu(xr + v * kLanes), acc[r][v]);
      }
    }
  }
  if (relu) {
    for (int r = 0; r < NN; ++r) {
      for (int v = 0; v < V; ++v) acc[r][v] = at::vec::maximum(acc[r][v], Vec(0.f));
    }
  }
  for (int r = 0; r < NN; ++r) {
    for (int v = 0; v < V; ++v) acc[r][v].store(dst + r * BT + v * kLanes);
  }
}

// Rows accumulated together, with 16 vector registers (AVX2, NEON, scalar) or 32 (AVX-512): at most 4 rows of V
// accumulators each; with shared taps up to 8 rows, leaving registers for the V activations and a weight.
template <int BT, bool SHARED>
constexpr int conv_rows_per_step() {
  constexpr int V = BT / kLanes;
  constexpr int registers = kLanes >= 16 ? 32 : 16;
  return SHARED ? std::max(1, std::min(8, (registers - V - 1) / V)) : std::max(1, std::min(4, registers / 2 / V));
}

// Where the BT grid points starting at point q0 of image n go in output channel 0 of y (N, out, Ho, Wo) (add
// c * Ho * Wo for channel c): runs of consecutive valid points (ox < Wo, q < Q) as (first point in the block,
// output offset, length); where Wq == Wo (no padding columns) a run continues over output rows. Batched, the
// block goes on into the next images' planes (Hq * Wq points each).
struct BlockRuns {
  int64_t count = 0;
  int64_t src[kMaxBlock + 1], dst[kMaxBlock + 1], len[kMaxBlock + 1];
};

inline BlockRuns block_runs(const ConvGeometry& g, int64_t n, int64_t q0, int64_t BT, int64_t out) {
  BlockRuns runs;
  const int64_t P = g.Hq * g.Wq, HWo = g.Ho * g.Wo;
  for (int64_t i = 0; i < BT;) {
    int64_t q = q0 + i;
    if (q >= g.Q) {
      if (!g.batched || n + 1 >= g.N) break;
      i += P - q, q0 -= P, ++n;  // the rest of this plane, then the next image's
      continue;
    }
    const int64_t oy = q / g.Wq, ox = q % g.Wq;
    if (ox >= g.Wo) {
      i += g.Wq - ox;
      continue;
    }
    const int64_t len = std::min(BT - i, g.Wo - ox), c = runs.count, dst = n * out * HWo + oy * g.Wo + ox;
    if (c > 0 && runs.src[c - 1] + runs.len[c - 1] == i && runs.dst[c - 1] + runs.len[c - 1] == dst) {
      runs.len[c - 1] += len;  // Wq == Wo: the next output row continues the run
    } else {
      runs.src[c] = i, runs.dst[c] = dst, runs.len[c] = len;
      ++runs.count;
    }
    i += len;
  }
  return runs;
}

// t[0:len] + r[0:len] (max(0, .) with relu) into d[0:len]: the epilogue with a residual.
inline void add_residual(const float* t, const float* r, int64_t len, bool relu, float* d) {
  int64_t i = 0;
  for (; i + kLanes <= len; i += kLanes) {
    const Vec v = Vec::loadu(t + i) + Vec::loadu(r + i);
    (relu ? at::vec::maximum(v, Vec(0.f)) : v).store(d + i);
  }
  for (; i < len; ++i) {
    const float v = t[i] + r[i];
    d[i] = relu && v < 0.f ? 0.f : v;  // NaN stays NaN
  }
}

// All active rows over the blocks [b0, b1) of the (image, block) enumeration (of the points of all images, batched,
// starting at image b BT / (Hq Wq)). With a panel, off holds panel
// offsets and sources[i] the buffer offset of the tap at panel row i. A residual (N, out, Ho, Wo), laid out
// like y, is added in the epilogue (add_residual), the ReLU after it.
template <int BT, bool SHARED>
void conv_blocks(const float* buf, const ConvGeometry& g, const float* w, const int32_t* off, const int64_t* rows,
                 const float* bias, int64_t A, int64_t k, int64_t out, bool relu, const float* residual,
                 const std::vector<int32_t>& sources, int64_t b0, int64_t b1, float* y) {
  constexpr int NN = conv_rows_per_step<BT, SHARED>();
  const int64_t blocks = (g.Q + BT - 1) / BT, HWo = g.Ho * g.Wo, P = g.Hq * g.Wq;
  alignas(64) float tile[NN * BT];
  thread_local std::vector<float> panel_buffer;
  thread_local std::vector<float> partial_buffer;
  float* panel = nullptr;
  float* partial = nullptr;  // (A, BT): the sums of the chunks so far
  if (g.panel) {
    panel_buffer.resize(sources.size() * BT + 16);
    panel = panel_buffer.data() +
            (16 - reinterpret_cast<std::uintptr_t>(panel_buffer.data()) / sizeof(float) % 16) % 16;
  }
  if (g.chunks > 1) {
    partial_buffer.resize(A * BT + 16);
    partial = partial_buffer.data() +
              (16 - reinterpret_cast<std::uintptr_t>(partial_buffer.data()) / sizeof(float) % 16) % 16;
  }
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t n = g.batched ? b * BT / P : b / blocks;
    int64_t q0 = g.batched ? b * BT % P : (b % blocks) * BT;
    if (g.direct) q0 = std::min(q0, g.Q - BT);  // the last block overlaps the previous one instead of over-reading
    const float* xs = buf + n * g.image + q0;
    if (panel) {
      for (size_t i = 0; i < sources.size(); ++i) {
        for (int64_t v = 0; v < BT; v += kLanes) Vec::loadu(xs + sources[i] + v).store(panel + i * BT + v);
      }
      xs = panel;
    }
    const bool relu_rows = relu && !residual;  // with a residual the ReLU follows the addition
    const BlockRuns runs = block_runs(g, n, q0, BT, out);
    const bool whole = runs.count == 1 && runs.len[0] == BT;
    for (int64_t chunk = 0; chunk < g.chunks; ++chunk) {
      const int64_t j0 = k * chunk / g.chunks, n_taps = k * (chunk + 1) / g.chunks - j0;
      const bool last = chunk + 1 == g.chunks;
      for (int64_t a = 0; a < A; a += NN) {
        const int64_t nr = std::min<int64_t>(NN, A - a);
        float init[NN] = {};
        for (int64_t r = 0; r < nr; ++r) init[r] = bias ? bias[rows[a + r]] : 0.f;
        const float* from = chunk > 0 ? partial + a * BT : nullptr;
        float* to = last ? tile : partial + a * BT;
        if (nr == NN) {
          conv_rows<BT, NN, SHARED>(xs, w + a * k + j0, off + a * k + j0, n_taps, k, init, from, last && relu_rows, to);
        } else {
          for (int64_t r = 0; r < nr; ++r) {
            conv_rows<BT, 1, SHARED>(xs, w + (a + r) * k + j0, off + (a + r) * k + j0, n_taps, k, init + r,
                                     from ? from + r * BT : nullptr, last && relu_rows, to + r * BT);
          }
        }
        if (!last) continue;
        for (int64_t r = 0; r < nr; ++r) {
          float* yc = y + rows[a + r] * HWo;
          const float* t = tile + r * BT;
          if (residual) {
            const float* rc = residual + rows[a + r] * HWo;
            for (int64_t s = 0; s < runs.count; ++s) {
              add_residual(t + runs.src[s], rc + runs.dst[s], runs.len[s], relu, yc + runs.dst[s]);
            }
          } else if (whole) {
            for (int64_t v = 0; v < BT; v += kLanes) Vec::loadu(t + v).store(yc + runs.dst[0] + v);
          } else {
            for (int64_t s = 0; s < runs.count; ++s) {
              std::memcpy(yc + runs.dst[s], t + runs.src[s], runs.len[s] * sizeof(float));
            }
          }
        }
      }
    }
  }
}

// y (N, out, Ho, Wo) for fp32 x (N, C, H, W), values (A, k), indices (A, k) into C * kh * kw, rows (A,);
// plus residual (N, out, Ho, Wo) where given, and with relu max(0, y), all in the same pass.
template <typename IT>
void condensed_conv2d_forward(const float* x, const ConvGeometry& g, const float* w, const IT* idx,
                              const int64_t* rows, const float* bias, int64_t A, int64_t k, int64_t out, bool relu,
                              const float* residual, float* y) {
  thread_local std::vector<int32_t> offsets;
  thread_local std::vector<float> planes;
  const int64_t taps = g.C * g.kh * g.kw;
  std::vector<int32_t> table(taps);
  for (int64_t t = 0; t < taps; ++t) {
    const int64_t c = t / (g.kh * g.kw), r = t % (g.kh * g.kw);
    table[t] = static_cast<int32_t>(g.tap_offset(c, r / g.kw, r % g.kw));
  }
  // With a panel, the taps some row reads get panel rows in tap order and sources lists their buffer offsets.
  std::vector<int32_t> panel_row(g.panel ? taps : 0, -1), sources;
  offsets.resize(A * k);
  for (int64_t e = 0; e < A * k; ++e) {
    const int64_t t = index_at(idx, e);
    TORCH_CHECK(t < taps, "condensed_conv2d: index ", t, " is out of range for ", taps, " taps (C * kh * kw)");
    if (g.panel) panel_row[t] = 0;
    offsets[e] = table[t];
  }
  if (g.panel) {
    for (int64_t t = 0; t < taps; ++t) {
      if (panel_row[t] == 0) panel_row[t] = static_cast<int32_t>(sources.size()), sources.push_back(table[t]);
    }
    for (int64_t e = 0; e < A * k; ++e) offsets[e] = panel_row[index_at(idx, e)] * static_cast<int32_t>(g.BT);
  }
  const float* buf = x;
  if (!g.direct) {
    planes.resize(g.buffer + 16);
    float* aligned = planes.data() + (16 - reinterpret_cast<std::uintptr_t>(planes.data()) / sizeof(float) % 16) % 16;
    build_planes(x, g, aligned);
    buf = aligned;
  }
  // Output channels without an active row (every channel when k == 0) hold their bias (plus the residual;
  // max(0, .) with relu).
  std::vector<bool> active(out, false);
  if (k > 0) {
    for (int64_t a = 0; a < A; ++a) active[rows[a]] = true;
  }
  const int64_t HWo = g.Ho * g.Wo;
  for (int64_t n = 0; n < g.N; ++n) {
    for (int64_t c = 0; c < out; ++c) {
      const float b = bias ? bias[c] : 0.f, v = relu && b < 0.f ? 0.f : b;
      if (active[c]) continue;
      float* yc = y + (n * out + c) * HWo;
      if (residual) {
        const float* rc = residual + (n * out + c) * HWo;
        for (int64_t i = 0; i < HWo; ++i) yc[i] = relu && b + rc[i] < 0.f ? 0.f : b + rc[i];
      } else {
        std::fill(yc, yc + HWo, v);
      }
    }
  }
  if (A == 0 || k == 0) return;
  const int32_t* off = offsets.data();  // the calling thread's buffer (workers have their own thread_locals)
  bool shared = true;  // every row reads the first row's taps (conv_rows' SHARED)
  for (int64_t e = k; e < A * k && shared; ++e) shared = off[e] == off[e % k];
  at::parallel_for(0, g.blocks, 1, [&](int64_t b0, int64_t b1) {
    switch (g.BT / kLanes) {
#define LSR_CONV_BLOCKS(V)                                                                                   \
  case V:                                                                                                    \
    if constexpr (V * kLanes <= kMaxBlock) {                                                                 \
      (shared ? conv_blocks<V * kLanes, true> : conv_blocks<V * kLanes, false>)(                             \
          buf, g, w, off, rows, bias, A, k, out, relu, residual, sources, b0, b1, y);                        \
    }                                                                                                        \
    break;
      LSR_CONV_BLOCKS(1) LSR_CONV_BLOCKS(2) LSR_CONV_BLOCKS(3) LSR_CONV_BLOCKS(4)
      LSR_CONV_BLOCKS(5) LSR_CONV_BLOCKS(6) LSR_CONV_BLOCKS(7) LSR_CONV_BLOCKS(8)
#undef LSR_CONV_BLOCKS
    }
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace lightning_srigl
