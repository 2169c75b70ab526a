// Exact fp32 attention for short sequences: out = softmax(q k^T * scale + mask) v per (batch, head).
//
// q (B, H, Lq, D), k and v (B, H, Lk, D), each with any strides whose last one is 1; mask (B, H, Lq, Lk), fp32
// additive or bool (True = attend), with strides (0 where broadcast, the last one 1), or none; causal: query i
// sees keys 0..i (Lq == Lk).
// Output (B, Lq, H, D) in memory, i.e. the (B, H, Lq, D) result with the strides of its transpose, as torch's
// CPU flash attention returns it for Hugging Face's (B, L, H, D) projections.
//
// One task per (batch, head): the keys are packed transposed, kT (D, Lk padded to whole vectors), once per
// head; the query rows then go in blocks of kAttnRows: the scores S = q_block kT (kAttnRows x Lk) by a
// register tile of kAttnRows rows x kTileVecs vectors (`tile_product`), the row softmax in place (max, exp,
// sum), then O = P v by the same tile over the value columns, divided by the row sums on the store. The
// scores of a block stay in L1 (kAttnRows * Lk floats); kT and v (2 * Lk * D floats) in L2. Fewer than
// kFewQueries query rows (decoding) skip the packing and the tile: `few_queries_head`.
// A row whose scores hold a NaN or +inf gives NaN; a row with every key masked (-inf) gives 0, as torch's
// scaled_dot_product_attention does. Causal blocks skip the keys no row of theirs sees.
#pragma once

#include "common.h"

#include <cmath>
#include <limits>

namespace lightning_srigl {
inline namespace CPU_CAPABILITY {

// The register tile: kAttnRows rows x kTileVecs vectors of accumulators (24 of the 32 AVX-512 registers,
// 12 of AVX2's 16), one vector load per column vector and one broadcast per row at each step.
constexpr int kAttnRows = kLanes >= 16 ? 12 : 6;
constexpr int kTileVecs = 2;
constexpr int64_t kTileCols = kTileVecs * kLanes;

inline int64_t round_up(int64_t n, int64_t multiple) { return (n + multiple - 1) / multiple * multiple; }

// c[r, 0:NV*kLanes] = sum_{t < depth} a[r * lda + t] * b[t * ldb + 0:NV*kLanes] for r < kAttnRows.
template <int NV>
inline void tile_product(const float* a, int64_t lda, const float* b, int64_t ldb, int64_t depth, float* c,
                         int64_t ldc) {
  Vec acc[kAttnRows][NV];
#pragma GCC unroll 16
  for (int r = 0; r < kAttnRows; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = Vec(0.f);
  }
  for (int64_t t = 0; t < depth; ++t) {
    Vec bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = Vec::loadu(b + t * ldb + v * kLanes);
#pragma GCC unroll 16
    for (int r = 0; r < kAttnRows; ++r) {
      const Vec av(a[r * lda + t]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = at::vec::fmadd(av, bv[v], acc[r][v]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < kAttnRows; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v].store(c + r * ldc + v * kLanes);
  }
}

// c (kAttnRows, cols) = a (kAttnRows, depth) b (depth, cols); cols a multiple of kLanes, b's rows readable up to
// cols: whole tiles, then one vector at a time.
inline void block_product(const float* a, int64_t lda, const float* b, int64_t ldb, int64_t depth, int64_t cols,
                          float* c, int64_t ldc) {
  int64_t j = 0;
  for (; j + kTileCols <= cols; j += kTileCols) tile_product<kTileVecs>(a, lda, b + j, ldb, depth, c + j, ldc);
  for (; j < cols; j += kLanes) tile_product<1>(a, lda, b + j, ldb, depth, c + j, ldc);
}

// Row softmax of s[0:n] in place: s = s * scale + add (an additive mask row, or null), -inf where allowed (a
// bool mask row, or null) is false; then exp(s - max) into s[0:n] and 0 into s[n:width]. Returns the factor of
// the row's output: 1 / sum, 0 for a row every key of which is masked (-inf), NaN for a row with a NaN or +inf.
inline float softmax_row(float* s, int64_t n, int64_t width, const float* add, const bool* allowed, float scale) {
  const float minus_inf = -std::numeric_limits<float>::infinity();
  const Vec vscale(scale);
  Vec vmax(minus_inf);
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    Vec x = Vec::loadu(s + j) * vscale;
    if (add) x = x + Vec::loadu(add + j);
    x.store(s + j);
    vmax = at::vec::maximum(vmax, x);
  }
  if (j < n) {
    Vec x = Vec::loadu(s + j, n - j) * vscale;
    if (add) x = x + Vec::loadu(add + j, n - j);
    x.store(s + j, n - j);
    vmax = at::vec::maximum(vmax, Vec::set(Vec(minus_inf), x, n - j));
  }
  if (allowed) {  // masked scores to -inf, and the maximum of the others
    vmax = Vec(minus_inf);
    for (j = 0; j < n; ++j) s[j] = allowed[j] ? s[j] : minus_inf;
    for (j = 0; j + kLanes <= n; j += kLanes) vmax = at::vec::maximum(vmax, Vec::loadu(s + j));
    if (j < n) vmax = at::vec::maximum(vmax, Vec::set(Vec(minus_inf), Vec::loadu(s + j, n - j), n - j));
  }
  const float max = at::vec::vec_reduce_all<float>([](Vec& x, Vec& y) { return at::vec::maximum(x, y); }, vmax);
  std::fill(s + n, s + width, 0.f);
  if (!(max < std::numeric_limits<float>::infinity()) || max == minus_inf) {  // NaN, +inf, or all masked
    std::fill(s, s + n, 0.f);
    return max == minus_inf ? 0.f : std::numeric_limits<float>::quiet_NaN();
  }
  const Vec vmaxb(max);
  Vec vsum(0.f);
  for (j = 0; j + kLanes <= n; j += kLanes) {
    const Vec p = (Vec::loadu(s + j) - vmaxb).exp_u20();
    p.store(s + j);
    vsum = vsum + p;
  }
  if (j < n) {
    const Vec p = Vec::set(Vec(0.f), (Vec::loadu(s + j, n - j) - vmaxb).exp_u20(), n - j);
    p.store(s + j, n - j);
    vsum = vsum + p;
  }
  return 1.f / at::vec::vec_reduce_all<float>([](Vec& x, Vec& y) { return x + y; }, vsum);
}

// Strides of one (B, H, L, D) operand (elements; the last one is 1).
struct HeadStrides {
  int64_t batch, head, row;
};

struct AttentionShape {
  int64_t B, H, Lq, Lk, D;
};

// Floats of one task's scratch: kT, the packed values, the query block, the scores and the output block.
struct AttentionScratch {
  int64_t ldk, ldv, lds, ldo, kt, values, query, scores, out, total;
  bool pack_values;  // the values are copied into rows of ldv floats (D not whole vectors, or strided)
  AttentionScratch(const AttentionShape& s, bool pack) : pack_values(pack) {
    const int64_t keys = round_up(std::max<int64_t>(s.Lk, 1), kLanes);
    ldk = keys % 256 == 0 ? keys + kLanes : keys;  // rows 1 KiB apart would share few L1 sets
    ldv = round_up(s.D, kLanes);
    lds = ldk;
    ldo = ldv;
    kt = 0;
    values = kt + s.D * ldk;
    query = values + (pack_values ? s.Lk * ldv : 0);
    scores = query + kAttnRows * s.D;
    out = scores + kAttnRows * lds;
    total = out + kAttnRows * ldo;
  }
};

// This head's mask: (Lq, Lk) rows `row` apart, additive (add) or bool (allowed, True = attend), or none.
struct HeadMask {
  const float* add;
  const bool* allowed;
  int64_t row;
};

// Query rows below this count take `few_queries_head`: at one query (decoding with a cache) packing kT costs
// as much as the products, and the kAttnRows-row tile would multiply kAttnRows - 1 rows of zeros.
constexpr int64_t kFewQueries = 4;

// s[j] = sum_d q[d] * k[j * ldk + d] over d < D, for j < n: four key rows at a time (independent chains).
inline void row_scores(const float* q, const float* k, int64_t ldk, int64_t n, int64_t D, float* s) {
  const auto sum = [](Vec& x, Vec& y) { return x + y; };
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) {
    Vec acc[4] = {Vec(0.f), Vec(0.f), Vec(0.f), Vec(0.f)};
    for (int64_t d = 0; d < D; d += kLanes) {
      const int64_t count = std::min<int64_t>(kLanes, D - d);
      const Vec qv = Vec::loadu(q + d, count);
      for (int r = 0; r < 4; ++r) acc[r] = at::vec::fmadd(qv, Vec::loadu(k + (j + r) * ldk + d, count), acc[r]);
    }
    for (int r = 0; r < 4; ++r) s[j + r] = at::vec::vec_reduce_all<float>(sum, acc[r]);
  }
  for (; j < n; ++j) {
    Vec acc(0.f);
    for (int64_t d = 0; d < D; d += kLanes) {
      const int64_t count = std::min<int64_t>(kLanes, D - d);
      acc = at::vec::fmadd(Vec::loadu(q + d, count), Vec::loadu(k + j * ldk + d, count), acc);
    }
    s[j] = at::vec::vec_reduce_all<float>(sum, acc);
  }
}

// o[0:width] = factor * sum_{j < n} p[j] * v[j * ldv + 0:width] for width <= V * kLanes (FULL: width == V *
// kLanes, loads without masks): even and odd keys into separate accumulators (two independent FMA chains), all
// in registers (V a constant).
template <int V, bool FULL>
inline void weighted_block(const float* p, const float* v, int64_t ldv, int64_t n, int64_t width, float factor,
                           float* o) {
  const auto load = [&](const float* at, int u) {  // past width: zeros, nothing read
    if (FULL) return Vec::loadu(at + u * kLanes);
    const int64_t count = std::min<int64_t>(kLanes, width - u * kLanes);
    return count > 0 ? Vec::loadu(at + u * kLanes, count) : Vec(0.f);
  };
  Vec even[V], odd[V];
  for (int u = 0; u < V; ++u) even[u] = odd[u] = Vec(0.f);
  int64_t j = 0;
  for (; j + 2 <= n; j += 2) {
    const Vec p0(p[j]), p1(p[j + 1]);
    for (int u = 0; u < V; ++u) {
      even[u] = at::vec::fmadd(p0, load(v + j * ldv, u), even[u]);
      odd[u] = at::vec::fmadd(p1, load(v + (j + 1) * ldv, u), odd[u]);
    }
  }
  if (j < n) {
    const Vec p0(p[j]);
    for (int u = 0; u < V; ++u) even[u] = at::vec::fmadd(p0, load(v + j * ldv, u), even[u]);
  }
  for (int u = 0; u < V && u * kLanes < width; ++u) {
    ((even[u] + odd[u]) * Vec(factor)).store(o + u * kLanes, std::min<int64_t>(kLanes, width - u * kLanes));
  }
}

// o[0:D] = factor * sum_{j < n} p[j] * v[j * ldv + 0:D], kOutVecs vectors of the row at a time.
inline void weighted_rows(const float* p, const float* v, int64_t ldv, int64_t n, int64_t D, float factor, float* o) {
  constexpr int kOutVecs = 4;
  for (int64_t d0 = 0; d0 < D; d0 += kOutVecs * kLanes) {
    const int64_t width = std::min<int64_t>(kOutVecs * kLanes, D - d0);
    if (width == kOutVecs * kLanes) {
      weighted_block<kOutVecs, true>(p, v + d0, ldv, n, width, factor, o + d0);
    } else {
      weighted_block<kOutVecs, false>(p, v + d0, ldv, n, width, factor, o + d0);
    }
  }
}

// The output of one (batch, head) with fewer than kFewQueries query rows: each row's scores are dot products
// with the key rows where they are (no packing), its softmax in `scores` (Lk floats), then the weighted value rows.
inline void few_queries_head(const float* q, const float* k, const float* v, const HeadStrides& sq,
                             const HeadStrides& sk, const HeadStrides& sv, const HeadMask& mask,
                             const AttentionShape& s, float scale, bool causal, float* scores, float* out,
                             int64_t out_row) {
  for (int64_t i = 0; i < s.Lq; ++i) {
    const int64_t n = causal ? i + 1 : s.Lk;
    row_scores(q + i * sq.row, k, sk.row, n, s.D, scores);
    const float* add = mask.add ? mask.add + i * mask.row : nullptr;
    const bool* allowed = mask.allowed ? mask.allowed + i * mask.row : nullptr;
    const float factor = softmax_row(scores, n, n, add, allowed, scale);
    weighted_rows(scores, v, sv.row, n, s.D, factor, out + i * out_row);
  }
}

// The output of one (batch, head): see the file comment.
inline void attention_head(const float* q, const float* k, const float* v, const HeadStrides& sq,
                           const HeadStrides& sk, const HeadStrides& sv, const HeadMask& mask,
                           const AttentionShape& s, float scale, bool causal, const AttentionScratch& layout,
                           float* scratch, float* out, int64_t out_row) {
  if (s.Lq < kFewQueries) {
    few_queries_head(q, k, v, sq, sk, sv, mask, s, scale, causal, scratch + layout.scores, out, out_row);
    return;
  }
  float* kt = scratch + layout.kt;
  float* qb = scratch + layout.query;
  float* sc = scratch + layout.scores;
  float* ob = scratch + layout.out;
  const int64_t keys = round_up(s.Lk, kLanes);
  for (int64_t j = 0; j < s.Lk; j += 16) {  // 16 x 16 blocks (vector shuffles with AVX-512)
    for (int64_t d = 0; d < s.D; d += 16) {
      at::vec::transpose_mxn<float>(k + j * sk.row + d, sk.row, kt + d * layout.ldk + j, layout.ldk,
                                    static_cast<int>(std::min<int64_t>(16, s.Lk - j)),
                                    static_cast<int>(std::min<int64_t>(16, s.D - d)));
    }
  }
  for (int64_t d = 0; d < s.D; ++d) std::fill(kt + d * layout.ldk + s.Lk, kt + d * layout.ldk + keys, 0.f);
  const float* values = v;
  int64_t ldv = sv.row;
  if (layout.pack_values) {
    float* vp = scratch + layout.values;
    for (int64_t j = 0; j < s.Lk; ++j) {
      std::memcpy(vp + j * layout.ldv, v + j * sv.row, s.D * sizeof(float));
      std::fill(vp + j * layout.ldv + s.D, vp + (j + 1) * layout.ldv, 0.f);
    }
    values = vp;
    ldv = layout.ldv;
  }
  float factor[kAttnRows];
  for (int64_t i0 = 0; i0 < s.Lq; i0 += kAttnRows) {
    const int64_t rows = std::min<int64_t>(kAttnRows, s.Lq - i0);
    for (int64_t r = 0; r < kAttnRows; ++r) {
      if (r < rows) std::memcpy(qb + r * s.D, q + (i0 + r) * sq.row, s.D * sizeof(float));
      else std::fill(qb + r * s.D, qb + (r + 1) * s.D, 0.f);
    }
    const int64_t seen = causal ? std::min(s.Lk, i0 + rows) : s.Lk;  // keys any row of the block sees
    block_product(qb, s.D, kt, layout.ldk, s.D, round_up(seen, kLanes), sc, layout.lds);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t n = causal ? i0 + r + 1 : s.Lk;
      const float* add = mask.add ? mask.add + (i0 + r) * mask.row : nullptr;
      const bool* allowed = mask.allowed ? mask.allowed + (i0 + r) * mask.row : nullptr;
      factor[r] = softmax_row(sc + r * layout.lds, n, seen, add, allowed, scale);
    }
    block_product(sc, layout.lds, values, ldv, seen, layout.ldv, ob, layout.ldo);
    for (int64_t r = 0; r < rows; ++r) {
      float* o = out + (i0 + r) * out_row;
      const Vec f(factor[r]);
      int64_t d = 0;
      for (; d + kLanes <= s.D; d += kLanes) (Vec::loadu(ob + r * layout.ldo + d) * f).store(o + d);
      if (d < s.D) (Vec::loadu(ob + r * layout.ldo + d) * f).store(o + d, s.D - d);
    }
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace lightning_srigl
