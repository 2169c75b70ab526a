// The product go^T x evaluated only at a mask's positions (a "sampled dense-dense product"), zero
// elsewhere: the weight gradient of a linear layer y = x W^T whose weight is masked, at the cost of
// the dense product times the density.
//   grad[i, cols[p]] = sum_n go[n, i] * x[n, cols[p]]   for p in [row_ptr[i], row_ptr[i + 1])
//   grad[i, c]       = +0 at every other position
// go (N, out) and x (N, in) fp32, row_ptr (out + 1) int64 and cols (nnz) int32 (the mask's rows in
// compressed-row form) -> grad (out, in).
//
// Samples are taken kSampleChunk at a time: the chunk of x and of go is packed into fp32 panels
// (features, kSampleChunk) with pack_block (panel.h), shared by every thread, so that each active
// (i, c) is one dot product of two contiguous runs, four at a time; wide layers visit the x panel
// kColumnBlock features at a time. Threads split the packing by features and the products by output
// rows. Samples past N are packed as zeros.
#pragma once

#include "panel.h"

namespace lightning_srigl {
inline namespace CPU_CAPABILITY {

constexpr int kSampleChunk = 128;

// Samples [n0, n0 + nb) of a (N, features) fp32 matrix m as a (features rounded up to kLanes,
// kSampleChunk) panel.
inline void pack_samples(const float* m, int64_t features, int64_t n0, int64_t nb, float* panel) {
  const int64_t blocks = (features + kLanes - 1) / kLanes;
  at::parallel_for(0, blocks, 16, [&](int64_t b0, int64_t b1) {
    const int64_t c0 = b0 * kLanes;
    const int64_t columns = std::min(features, b1 * kLanes) - c0;
    for (int64_t s = 0; s < kSampleChunk / kLanes; ++s) {
      const int64_t n = std::max<int64_t>(0, std::min<int64_t>(kLanes, nb - s * kLanes));
      const float* start = n > 0 ? m + (n0 + s * kLanes) * features + c0 : m;
      pack_block<float, kSampleChunk>(start, features, columns, n, panel + c0 * kSampleChunk + s * kLanes);
    }
  });
}

// out[r] = dot(g[0:kSampleChunk], rows[r][0:kSampleChunk]) for R panel rows.
template <int R>
inline void dot_panel_rows(const float* g, const float* const* rows, float* out) {
  constexpr int V = kSampleChunk / kLanes;
  Vec acc[R];
  for (int r = 0; r < R; ++r) acc[r] = Vec(0.f);
  for (int v = 0; v < V; ++v) {
    const Vec gv = Vec::loadu(g + v * kLanes);
    for (int r = 0; r < R; ++r) acc[r] = at::vec::fmadd(gv, Vec::loadu(rows[r] + v * kLanes), acc[r]);
  }
  for (int r = 0; r < R; ++r) out[r] = at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, acc[r]);
}

// Products of R positions p..p+R of one row: gi[cols[p + r]] += dot(g, x panel row cols[p + r]).
template <int R>
inline void add_products(const float* g, const float* xpanel, const int32_t* cols, int64_t p, float* gi) {
  const float* rows[R];
  float sums[R];
  for (int r = 0; r < R; ++r) rows[r] = xpanel + static_cast<int64_t>(cols[p + r]) * kSampleChunk;
  dot_panel_rows<R>(g, rows, sums);
  for (int r = 0; r < R; ++r) gi[cols[p + r]] += sums[r];
}

// Features of the x panel visited at a time: 1024 x 128 samples x 4 bytes = 512 KiB, which stays in
// a core's L2 while every row of the thread reads its positions in it (a row's cols ascend).
constexpr int64_t kColumnBlock = 1024;

// Adds one chunk's products into output rows [i0, i1); `first` zeroes each row before. cursor holds
// i1 - i0 entries of scratch.
inline void sampled_rows(const float* gpanel, const float* xpanel, int64_t in, const int64_t* row_ptr,
                         const int32_t* cols, bool first, int64_t i0, int64_t i1, int64_t* cursor, float* grad) {
  constexpr int R = 4;
  std::copy(row_ptr + i0, row_ptr + i1, cursor);
  for (int64_t c0 = 0; c0 < in; c0 += kColumnBlock) {
    const int64_t c1 = std::min(in, c0 + kColumnBlock);
    for (int64_t i = i0; i < i1; ++i) {
      float* gi = grad + i * in;
      if (first && c0 == 0) std::fill(gi, gi + in, 0.f);
      const float* g = gpanel + i * kSampleChunk;
      int64_t p = cursor[i - i0];
      int64_t end = p;
      while (end < row_ptr[i + 1] && cols[end] < c1) ++end;
      for (; p + R <= end; p += R) add_products<R>(g, xpanel, cols, p, gi);
      for (; p < end; ++p) add_products<1>(g, xpanel, cols, p, gi);
      cursor[i - i0] = end;
    }
  }
}

// grad (out, in), see the top of this file. row_ptr must be non-decreasing from 0 to nnz and every
// cols entry in [0, in) (the Python side builds them from a bool mask).
inline void sampled_product(const float* go, const float* x, int64_t N, int64_t out, int64_t in,
                            const int64_t* row_ptr, const int32_t* cols, float* grad) {
  if (N == 0) {
    std::fill(grad, grad + out * in, 0.f);
    return;
  }
  const auto padded = [](int64_t features) { return (features + kLanes - 1) / kLanes * kLanes; };
  // The calling thread's scratch holds both panels (every thread reads them through these pointers).
  float* xpanel = scratch_buffer((padded(in) + padded(out)) * kSampleChunk);
  float* gpanel = xpanel + padded(in) * kSampleChunk;
  const int64_t nnz = row_ptr[out];
  const int64_t grain = std::max<int64_t>(1, out * 256 / std::max<int64_t>(1, nnz));  // ~256 products a task
  for (int64_t n0 = 0; n0 < N; n0 += kSampleChunk) {
    const int64_t nb = std::min<int64_t>(kSampleChunk, N - n0);
    pack_samples(x, in, n0, nb, xpanel);
    pack_samples(go, out, n0, nb, gpanel);
    at::parallel_for(0, out, grain, [&](int64_t i0, int64_t i1) {
      thread_local std::vector<int64_t> cursor;
      cursor.resize(i1 - i0);
      sampled_rows(gpanel, xpanel, in, row_ptr, cols, n0 == 0, i0, i1, cursor.data(), grad);
    });
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace lightning_srigl
