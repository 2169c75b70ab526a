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
  int64_t Hq, Wq, Q;        // plane rows and columns; grid points per image (Ho * Wq)
  int64_t plane_stride;     // floats from one plane to the next (all N images' planes of it where batched)
  int64_t BT;               // block width: grid points per block
  bool direct;              // read x in place (1x1, stride 1, no padding)
  bool batched;             // the N images' planes lie side by side and blocks run over all their points
  bool panel;               // copy each block's taps into an aligned tap panel first
  int64_t chunks;           // passes over a block's rows, each over a share of every row's taps
  std::vector<int64_t> slot;  // slot[py * sw + px]: index of that plane among the built ones, or -1
  int64_t planes;           // planes built per channel
  int64_t image;            // floats from one image's grid point to the same point of the next image
  int64_t blocks;           // blocks in all: N * ceil(Q / BT), or over the (N - 1) * Hq * Wq + Q batched points
  int64_t buffer;           // floats of the planes buffer (0 where direct)

  int64_t tap_offset(int64_t c, int64_t ky, int64_t kx) const {
    if (direct) return c * H * W;
    const int64_t ry = ky * dh, rx = kx * dw;
    const int64_t s = slot[(ry % sh) * sw + rx % sw];
    return (c * planes + s) * plane_stride + ry / sh * Wq + rx / sw;
  }
};

// The work of a grid of Q points in blocks of BT: ceil(Q / BT) blocks of BT / kLanes FMAs plus about two loads
// (offset, weight) per (row, tap).
inline int64_t conv_block_cost(int64_t Q, int64_t BT) { return (Q + BT - 1) / BT * (BT / kLanes + 2); }

// The block width for a grid of Q points: the one of kLanes, 16, 32, 64 with the least conv_block_cost. Wide
// blocks load each (row, tap) weight once per more pixels; narrow ones waste less of tiny grids (4 x 4 images).
// On ResNet-50's 7 x 7 outputs (Q = 49 to 63) 64 runs 2x faster than 16. block > 0 forces one (for tests).
inline int64_t conv_block_width(int64_t Q, int64_t block) {
  if (block > 0) return block;
  int64_t best = kLanes;
  for (int64_t BT = kLanes; BT <= kMaxBlock; BT += kLanes) {
    if (conv_block_cost(Q, BT) <= conv_block_cost(Q, best)) best = BT;
  }
  return best;
}

// Geometry of one call; block > 0 forces the block width (a multiple of kLanes, at most 64).
// Batched where it costs fewer blocks (conv_block_cost): a grid of Q points wastes up to BT - 1 of the last block
// per image (a 1x1 on 7 x 7: 49 of 64 points used), while side by side the N images' planes of Hq * Wq points are
// one grid of (N - 1) Hq Wq + Q points (8 x 49 = 392: 7 blocks instead of 8); the rows of a plane beyond the
// output's (padding) are then computed and not stored, so padded 3x3s stay per image. Only a saving of 10 % or
// more pays: a 1x1/2 from 56 x 56 (6 % fewer blocks batched) ran 9 % slower so at batch 8.
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
  g.Q = g.Ho * g.Wq;
  g.BT = conv_block_width(g.Q, block);
  g.direct = kh == 1 && kw == 1 && g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0 && g.H * g.W >= g.BT &&
             g.H * g.W % kAlign == 0;
  g.Hq = g.direct ? g.H : (Hp + g.sh - 1) / g.sh;
  const int64_t P = g.Hq * g.Wq, points = std::max<int64_t>(0, g.N - 1) * P + g.Q;
  const int64_t batched_BT = conv_block_width(points, block);
  g.batched = !g.direct && 10 * conv_block_cost(points, batched_BT) <= 9 * g.N * conv_block_cost(g.Q, g.BT);
  if (g.batched) g.BT = batched_BT;
  g.slot.assign(g.sh * g.sw, -1);
  g.planes = 0;
  if (g.direct) {
    g.planes = 1, g.slot[0] = 0, g.plane_stride = g.H * g.W;
  } else {
    g.plane_stride = ((g.batched ? g.N : 1) * P + kAlign - 1) / kAlign * kAlign;
    for (int64_t ky = 0; ky < kh; ++ky) {
      for (int64_t kx = 0; kx < kw; ++kx) {
        int64_t& s = g.slot[((ky * g.dh) % g.sh) * g.sw + (kx * g.dw) % g.sw];
        if (s < 0) s = g.planes++;
      }
    }
  }
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
  // Non-direct buffers end with slack, so the last block of an image (of all, batched) may read past the grid.
  const int64_t grid = g.batched ? points : g.Q;
  const int64_t reads = max_offset + (grid + g.BT - 1) / g.BT * g.BT;
  const int64_t needed = g.direct ? used : (std::max(used, reads) + 15) / 16 * 16;
  g.image = g.batched ? P : needed;
  g.blocks = g.batched ? (points + g.BT - 1) / g.BT : g.N * ((g.Q + g.BT - 1) / g.BT);
  g.buffer = g.direct ? 0 : g.batched ? needed : g.N * needed;
  TORCH_CHECK(needed < (int64_t{1} << 31), "condensed_conv2d: the input planes need ", needed,
              " floats; at most 2^31 are supported");
  return g;
}

// The phase planes of every image (zero where they fall on padding), into buf (g.buffer floats).
inline void build_planes(const float* x, const ConvGeometry& g, float* buf) {
  const int64_t P = g.Hq * g.Wq;
  const float* x_end = x + g.N * g.C * g.H * g.W;
  at::parallel_for(0, g.N * g.C, 1, [&](int64_t nc0, int64_t nc1) {
    for (int64_t nc = nc0; nc < nc1; ++nc) {
      const int64_t n = nc / g.C, c = nc % g.C;
      const float* src = x + nc * g.H * g.W;
      for (int64_t py = 0; py < g.sh; ++py) {
        for (int64_t px = 0; px < g.sw; ++px) {
          const int64_t s = g.slot[py * g.sw + px];
          if (s < 0) continue;
          // This plane's run of plane_stride floats: the image's own, or (batched) all N images' side by side.
          float* run = buf + (g.batched ? 0 : n * g.image) + (c * g.planes + s) * g.plane_stride;
          float* plane = run + (g.batched ? n * P : 0);
          if (!g.batched || n + 1 == g.N) std::fill(plane + P, run + g.plane_stride, 0.f);
          if (g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0) {  // the plane is the channel itself
            std::memcpy(plane, src, P * sizeof(float));
            continue;
          }
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
            } else if (g.sw == 2) {
              // The even lanes of two vectors per vector (a strided scalar copy was a large share of the 7x7 stem's
              // and the stride-2 convolutions' time) in full loads and stores, which may read past the row but not
              // past x and store past a row shorter than a vector into the next one (rewritten after) but not past the
              // plane (masked loads and stores ran slower than the scalar copy on Zen 5); the tail of a longer row is
              // copied in scalars (a second vector reaching past the row end ran 15 % slower at batch 8).
              int64_t j = j0;
              const float* last_load = x_end - 2 * kLanes;
              const float* last_store = plane + P - kLanes;
              const auto vector_fits = [&](int64_t j) {
                const bool whole = j + kLanes <= j1 || (j == j0 && j < j1);
                return whole && row + 2 * (j - j0) <= last_load && out + j <= last_store;
              };
              for (; vector_fits(j); j += kLanes) {
                const float* p = row + 2 * (j - j0);
                at::vec::deinterleave2(Vec::loadu(p), Vec::loadu(p + kLanes)).first.store(out + j);
              }
              j = std::min(j, j1);
              for (; j < j1; ++j) out[j] = row[(j - j0) * g.sw];
            } else {
              for (int64_t j = j0; j < j1; ++j) out[j] = row[(j - j0) * g.sw];
            }
            std::fill(out + j1, out + g.Wq, 0.f);
          }
        }
      }
    }
  });
  // The slack after the planes (the last block's reads past the grid).
  const int64_t used = g.C * g.planes * g.plane_stride;
  if (g.batched) std::fill(buf + used, buf + g.buffer, 0.f);
  for (int64_t n = 0; n < g.N && !g.batched; ++n) std::fill(buf + n * g.image + used, buf + (n + 1) * g.image, 0.f);
}

}  // namespace CPU_CAPABILITY
}  // namespace lightning_srigl
