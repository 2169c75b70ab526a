// The geometry of a condensed convolution (stride phase planes, block width, tap chunks) and the copy of the
// input into its phase planes: the first half of conv.h's algorithm (read that header's comment first).
#pragma once

#include "common.h"

namespace lightning_srigl {
inline namespace CPU_CAPABILITY {

// The largest tap panel (bytes): most of a 48 KB L1d, which the weights and offsets stream through too.
constexpr int64_t kPanelBytes = 40 * 1024;
// Planes start at multiples of kAlign floats (64 bytes), and so do blocks (BT is a multiple of kLanes): every
// 1x1 tap's run is then aligned. An unaligned 64-byte load spans two cache lines, and these loads are one per
// FMA: 1x1 convolutions at 14 x 14 (196 floats a channel, so x is not read in place) and 7 x 7 gain most.
constexpr int64_t kAlign = 16;
// The widest block (points): 4 vectors with AVX-512, 8 with AVX2. Wider blocks read more of x per block than L1
// holds (ResNet-50's 1x1 convolutions at 56 x 56 ran slower at 128).
constexpr int64_t kMaxBlock = 64;
// The bytes of x one pass of a block's rows may read: more is split over chunks of each row's taps (below).
constexpr int64_t kChunkBytes = 32 * 1024;

struct ConvGeometry {
  int64_t N, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo;
  int64_t Hq, Wq, Q;        // plane rows and columns; grid points per sample (Ho * Wq)
  int64_t plane_stride;     // floats from one plane to the next: Hq * Wq rounded up to kAlign
  int64_t BT;               // block width: grid points per block
  bool direct;              // read x in place (1x1, stride 1, no padding)
  bool panel;               // copy each block's taps into an aligned tap panel first
  int64_t chunks;           // passes over a block's rows, each over a share of every row's taps
  std::vector<int64_t> slot;  // slot[py * sw + px]: index of that plane among the built ones, or -1
  int64_t planes;           // planes built per channel
  int64_t sample;           // floats between samples in the buffer

  int64_t tap_offset(int64_t c, int64_t ky, int64_t kx) const {
    if (direct) return c * H * W;
    const int64_t ry = ky * dh, rx = kx * dw;
    const int64_t s = slot[(ry % sh) * sw + rx % sw];
    return (c * planes + s) * plane_stride + ry / sh * Wq + rx / sw;
  }
};

// The block width for a grid of Q points per sample: the one of kLanes, 16, 32, 64 with the least work per
// (row, tap), ceil(Q / BT) blocks of BT / kLanes FMAs plus about two loads (offset, weight) each. Wide blocks
// load each (row, tap) weight once per more pixels; narrow ones waste less of tiny grids (4 x 4 images).
// On ResNet-50's 7 x 7 outputs (Q = 49 to 63) 64 runs 2x faster than 16. block > 0 forces one (for tests).
inline int64_t conv_block_width(int64_t Q, int64_t block) {
  if (block > 0) return block;
  int64_t best = kLanes, best_cost = -1;
  for (int64_t BT = kLanes; BT <= kMaxBlock; BT += kLanes) {
    const int64_t cost = (Q + BT - 1) / BT * (BT / kLanes + 2);
    if (best_cost < 0 || cost <= best_cost) best = BT, best_cost = cost;
  }
  return best;
}

// Geometry of one call; block > 0 forces the block width (a multiple of kLanes, at most 64).
inline ConvGeometry conv_geometry(const at::Tensor& x, int64_t kh, int64_t kw, at::IntArrayRef stride,
                                  at::IntArrayRef padding, at::IntArrayRef dilation, int64_t block) {
  ConvGeometry g;
  g.N = x.size(0), g.C = x.size(1), g.H = x.size(2), g.W = x.size(3), g.kh = kh, g.kw = kw;
  g.sh = stride[0], g.sw = stride[1], g.ph = padding[0], g.pw = padding[1], g.dh = dilation[0], g.dw = dilation[1];
  const int64_t Hp = g.H + 2 * g.ph, Wp = g.W + 2 * g.pw;
  g.Ho = (Hp - g.dh * (kh - 1) - 1) / g.sh + 1;
  g.Wo = (Wp - g.dw * (kw - 1) - 1) / g.sw + 1;
  TORCH_CHECK(Hp >= g.dh * (kh - 1) + 1 && Wp >= g.dw * (kw - 1) + 1, "condensed_conv2d: the padded input (",
              Hp, ", ", Wp, ") is smaller than the dilated kernel");
  g.Wq = (Wp + g.sw - 1) / g.sw;
  g.BT = conv_block_width(g.Ho * g.Wq, block);
  g.direct = kh == 1 && kw == 1 && g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0 && g.H * g.W >= g.BT &&
             g.H * g.W % kAlign == 0;
  g.slot.assign(g.sh * g.sw, -1);
  g.planes = 0;
  if (g.direct) {
    g.Hq = g.H, g.planes = 1, g.slot[0] = 0, g.plane_stride = g.H * g.W;
  } else {
    g.Hq = (Hp + g.sh - 1) / g.sh;
    g.plane_stride = (g.Hq * g.Wq + kAlign - 1) / kAlign * kAlign;
    for (int64_t ky = 0; ky < kh; ++ky) {
      for (int64_t kx = 0; kx < kw; ++kx) {
        int64_t& s = g.slot[((ky * g.dh) % g.sh) * g.sw + (kx * g.dw) % g.sw];
        if (s < 0) s = g.planes++;
      }
    }
  }
  g.Q = g.Ho * g.Wq;
  g.panel = !g.direct && g.C * kh * kw * g.BT * static_cast<int64_t>(sizeof(float)) <= kPanelBytes;
  // Floats of x a block reads per channel: BT per tap, less where the taps' runs overlap (a row of the plane
  // and the next ones). Rows' taps ascend by channel, so the j-th of k taps of every row lies near channel
  // j / k * C: chunk i of the taps [i k / chunks, (i + 1) k / chunks) reads about a chunks-th of x.
  const int64_t reach = (kh - 1) * g.dh / g.sh * g.Wq + (kw - 1) * g.dw / g.sw;
  const int64_t span = std::min(kh * kw * g.BT, g.planes * (reach + g.BT));
  g.chunks = g.panel ? 1 : std::max<int64_t>(1, (g.C * span * 4 + kChunkBytes - 1) / kChunkBytes);
  int64_t max_offset = 0;
  for (int64_t ky = 0; ky < kh; ++ky) {
    for (int64_t kx = 0; kx < kw; ++kx) max_offset = std::max(max_offset, g.tap_offset(g.C - 1, ky, kx));
  }
  const int64_t used = g.C * g.planes * g.plane_stride;
  // Non-direct buffers end with slack, so the last block of a sample may read past the grid.
  const int64_t needed = g.direct ? used : std::max(used, max_offset + (g.Q + g.BT - 1) / g.BT * g.BT);
  g.sample = g.direct ? used : (needed + 15) / 16 * 16;
  TORCH_CHECK(g.sample < (int64_t{1} << 31), "condensed_conv2d: one sample needs ", g.sample,
              " floats; at most 2^31 are supported");
  return g;
}

// The phase planes of every sample (zero where they fall on padding), into buf (N * sample floats).
inline void build_planes(const float* x, const ConvGeometry& g, float* buf) {
  at::parallel_for(0, g.N * g.C, 1, [&](int64_t nc0, int64_t nc1) {
    for (int64_t nc = nc0; nc < nc1; ++nc) {
      const int64_t n = nc / g.C, c = nc % g.C;
      const float* src = x + nc * g.H * g.W;
      for (int64_t py = 0; py < g.sh; ++py) {
        for (int64_t px = 0; px < g.sw; ++px) {
          const int64_t s = g.slot[py * g.sw + px];
          if (s < 0) continue;
          float* plane = buf + n * g.sample + (c * g.planes + s) * g.plane_stride;
          std::fill(plane + g.Hq * g.Wq, plane + g.plane_stride, 0.f);
          // Plane column j reads input column j * sw + px - pw: valid for j in [j0, j1).
          const int64_t j0 = std::min(g.Wq, std::max<int64_t>(0, (g.pw - px + g.sw - 1) / g.sw));
          const int64_t j1 = std::max(j0, std::min(g.Wq, (g.W + g.pw - px + g.sw - 1) / g.sw));
          for (int64_t i = 0; i < g.Hq; ++i) {
            float* out = plane + i * g.Wq;
            const int64_t r = i * g.sh + py - g.ph;
            if (r < 0 || r >= g.H) {
              std::fill(out, out + g.Wq, 0.f);
              continue;
            }
            std::fill(out, out + j0, 0.f);
            const float* row = src + r * g.W + j0 * g.sw + px - g.pw;
            if (g.sw == 1) {
              std::memcpy(out + j0, row, (j1 - j0) * sizeof(float));
            } else {
              int64_t j = j0;
              if (g.sw == 2) {  // the even lanes of two vectors per vector (the strided scalar copy below was a
                                // large share of the 7x7 stem's time); reads stay within the input row
                const int64_t row_end = g.W - (j0 * g.sw + px - g.pw);
                for (; 2 * (j - j0) + 2 * kLanes <= row_end && j + kLanes <= j1; j += kLanes) {
                  const float* p = row + 2 * (j - j0);
                  at::vec::deinterleave2(Vec::loadu(p), Vec::loadu(p + kLanes)).first.store(out + j);
                }
              }
              for (; j < j1; ++j) out[j] = row[(j - j0) * g.sw];
            }
            std::fill(out + j1, out + g.Wq, 0.f);
          }
        }
      }
    }
  });
  const int64_t used = g.C * g.planes * g.plane_stride;
  for (int64_t n = 0; n < g.N; ++n) std::fill(buf + n * g.sample + used, buf + (n + 1) * g.sample, 0.f);
}

}  // namespace CPU_CAPABILITY
}  // namespace lightning_srigl
