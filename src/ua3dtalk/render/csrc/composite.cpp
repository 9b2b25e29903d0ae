// ua3dtalk CPU compositing kernel: tile binning, depth sort and front-to-back alpha compositing of
// projected 2-D Gaussians, with a hand-written backward pass.
//
// Semantics are those of ua3dtalk.render.dense.composite_dense (the oracle): per pixel centre
// (c+0.5, r+0.5) and Gaussian i in front-to-back depth order (ties by index):
//   power = -0.5*(a dx^2 + c dy^2) - b dx dy,  dx = px - mx, dy = py - my
//   skipped when power > 0;  alpha = min(0.99, o*exp(power));  skipped when alpha < 1/255
//   compositing stops *before* the Gaussian whose (1-alpha) would drive T below 1e-4.
//   out = sum_i f_i alpha_i T_i,  T = final transmittance.
//
// Layout of the work:
//   * binning: every visible Gaussian goes to the tiles touched by its pixel-centre box
//     [m - e, m + e] (exactly projection.tile_ranges); one global stable sort by depth gives each
//     binned Gaussian a rank, its data is packed by rank, and a bucket fill by tile (in rank order)
//     gives tile lists that are front to back and stream through the packed records.
//   * forward/backward: parallel over tiles (at::parallel_for; dynamic scheduling, longest lists
//     first); within a tile the per-pixel state is structure-of-arrays and the loop over the
//     columns of a tile row is branch-free (selects only) so that GCC vectorises it. A Gaussian only
//     touches the tile rows its box covers (pixels outside the box have alpha < 1/255 by
//     construction of the extents; forward and backward use the very same rows, so they agree).
//   * backward: no atomics. Each (tile, Gaussian) pair writes its partial gradients (a fixed-order
//     sum over the tile's pixels) to its own row of a buffer; a second pass sums each Gaussian's
//     rows in a fixed order. Results are therefore bitwise independent of the number of threads.
//
// Floating point: no -ffast-math. Compiled with -ffp-contract=off so forward and backward evaluate
// alpha bitwise identically; fused multiply-adds are only used explicitly (UA_FMA) when the target
// has them. float uses a vectorisable exp (ua_exp); double uses std::exp.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <type_traits>
#include <vector>

namespace {

#if defined(__FMA__)
#define UA_FMA(a, b, c) std::fma((a), (b), (c))
#else
#define UA_FMA(a, b, c) ((a) * (b) + (c))
#endif

#define UA_RESTRICT __restrict__

// ---------------------------------------------------------------------------------------------
// exp: float uses a branch-free, vectorisable approximation (Cody-Waite reduction + degree-7
// Taylor polynomial, ~1-2 ulp on the range that matters); double uses std::exp.
// Only called with the result masked out when power > 0, so the input is clamped to [-87, 0].
// ---------------------------------------------------------------------------------------------
// exp(x) for x already clamped to [-87, 88] (2^n is then a normal number).
inline float ua_exp_clamped(float x) {
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to the nearest integer
  const float t = UA_FMA(x, 1.44269504088896341f, magic);
  const float n = t - magic;
  int32_t tb;
  std::memcpy(&tb, &t, sizeof(tb));
  const int32_t ni = tb - 0x4B400000;  // integer value of n
  float r = UA_FMA(n, -0.693359375f, x);  // ln2 split in an exact high part and a low part
  r = UA_FMA(n, 2.12194440e-4f, r);
  float p = 1.0f / 5040.0f;
  p = UA_FMA(p, r, 1.0f / 720.0f);
  p = UA_FMA(p, r, 1.0f / 120.0f);
  p = UA_FMA(p, r, 1.0f / 24.0f);
  p = UA_FMA(p, r, 1.0f / 6.0f);
  p = UA_FMA(p, r, 0.5f);
  p = UA_FMA(p, r, 1.0f);
  p = UA_FMA(p, r, 1.0f);
  const int32_t sb = (ni + 127) << 23;  // 2^n, n in [-126, 127]: always a normal number
  float s;
  std::memcpy(&s, &sb, sizeof(s));
  return p * s;
}

inline float ua_exp(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 0.0f ? 0.0f : x;
  return ua_exp_clamped(x);
}

inline double ua_exp(double x) { return std::exp(x); }

// Sum of n lanes in a fixed pairwise-tree order (vectorisable, deterministic). n is a power of
// two when it is the compile-time tile size; otherwise a plain left-to-right sum.
template <int TS, typename scalar_t>
inline scalar_t lane_sum(const scalar_t* UA_RESTRICT x, int64_t n) {
  if constexpr (TS > 0 && (TS & (TS - 1)) == 0) {
    alignas(64) scalar_t t[TS];
    for (int c = 0; c < TS; ++c) t[c] = x[c];
    for (int w = TS / 2; w >= 1; w /= 2)
      for (int c = 0; c < w; ++c) t[c] = t[c] + t[c + w];
    return t[0];
  } else {
    scalar_t s = 0;
    for (int64_t c = 0; c < n; ++c) s += x[c];
    return s;
  }
}

// Loops cheaper than this many elements run on one thread: a fork/join costs more than it saves
// (and on a busy machine a join can wait for a descheduled thread).
constexpr int64_t kSmallGrain = 32768;

template <typename scalar_t>
struct MaskInt {
  using type = int32_t;
};
template <>
struct MaskInt<double> {
  using type = int64_t;
};
// ---------------------------------------------------------------------------------------------
// Binning. Binned Gaussians are renumbered by their rank in the global front-to-back order and
// their data is packed by rank, so every tile list (increasing ranks) streams through memory.
// ---------------------------------------------------------------------------------------------
// float record per rank: [mx, my, a, b, c, o, first row, last row, f_0 .. f_{C-1}]
enum Rec { R_MX = 0, R_MY, R_A, R_B, R_C, R_O, R_RLO, R_RHI, R_F };
// int32 record per rank: [tx0, tx1, ty0, Gaussian index]
enum IRec { I_TX0 = 0, I_TX1, I_TY0, I_G, I_N };

struct Binning {
  at::Tensor recs;          // scalar [M, 8 + C]
  at::Tensor irecs;         // int32 [M, 4]
  at::Tensor pstart;        // int64 [M+1] first (tile, Gaussian) pair row of each rank (rank-major)
  at::Tensor tile_offsets;  // int64 [ntiles+1]
  at::Tensor tile_ranks;    // int32 [P] ranks per tile, increasing (= front to back)
  at::Tensor pair_slot;     // int32 [P] rank-major pair (rank m, j-th tile of its box) -> slot in tile_ranks
};

template <typename scalar_t>
Binning bin_gaussians(const scalar_t* means2d, const scalar_t* conics, const scalar_t* features,
                      const scalar_t* opacities, const scalar_t* extents, const scalar_t* depths,
                      const bool* visible, int64_t N, int64_t C, int64_t W, int64_t H, int64_t ts) {
  const int64_t ntx = (W + ts - 1) / ts, nty = (H + ts - 1) / ts, ntiles = ntx * nty;
  std::vector<int32_t> box(4 * N);  // clamped pixel rows r0, r1 and tiles ty0 ... per Gaussian
  std::vector<uint8_t> binned(N, 0);

  at::parallel_for(0, N, kSmallGrain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      if (!visible[i]) continue;
      const scalar_t mx = means2d[2 * i], my = means2d[2 * i + 1];
      const scalar_t ex = extents[2 * i], ey = extents[2 * i + 1];
      if (!std::isfinite(mx) || !std::isfinite(my)) continue;
      const scalar_t half = scalar_t(0.5);
      // same expressions (and evaluation order) as projection.tile_ranges
      const scalar_t clo = std::ceil(mx - ex - half), chi = std::floor(mx + ex - half);
      const scalar_t rlo = std::ceil(my - ey - half), rhi = std::floor(my + ey - half);
      // an empty or off-screen box holds no pixel centre: nothing to draw (also catches NaN)
      if (!(clo <= chi) || !(rlo <= rhi)) continue;
      if (!(chi >= 0) || !(clo <= scalar_t(W - 1)) || !(rhi >= 0) || !(rlo <= scalar_t(H - 1))) continue;
      const int64_t c0 = clo < 0 ? 0 : static_cast<int64_t>(clo);
      const int64_t c1 = chi > scalar_t(W - 1) ? W - 1 : static_cast<int64_t>(chi);
      const int64_t r0 = rlo < 0 ? 0 : static_cast<int64_t>(rlo);
      const int64_t r1 = rhi > scalar_t(H - 1) ? H - 1 : static_cast<int64_t>(rhi);
      box[4 * i + 0] = static_cast<int32_t>(c0);
      box[4 * i + 1] = static_cast<int32_t>(c1);
      box[4 * i + 2] = static_cast<int32_t>(r0);
      box[4 * i + 3] = static_cast<int32_t>(r1);
      binned[i] = 1;
    }
  });

  std::vector<int32_t> order;
  order.reserve(N);
  for (int64_t i = 0; i < N; ++i)
    if (binned[i]) order.push_back(static_cast<int32_t>(i));
  // one global stable sort by depth (NaN last, like torch.sort), ties keep index order
  std::stable_sort(order.begin(), order.end(), [depths](int32_t a, int32_t b) {
    const scalar_t da = depths[a], db = depths[b];
    return da < db || (!std::isnan(da) && std::isnan(db));
  });
  const int64_t M = static_cast<int64_t>(order.size()), RS = R_F + C;

  Binning B;
  B.recs = at::empty({M, RS}, at::CPU(c10::CppTypeToScalarType<scalar_t>::value));
  B.irecs = at::empty({M, I_N}, at::kInt);
  B.pstart = at::empty({M + 1}, at::kLong);
  scalar_t* recs = B.recs.data_ptr<scalar_t>();
  int32_t* irecs = B.irecs.data_ptr<int32_t>();
  int64_t* pstart = B.pstart.data_ptr<int64_t>();
  at::parallel_for(0, M, kSmallGrain, [&](int64_t b, int64_t e) {
    for (int64_t m = b; m < e; ++m) {
      const int64_t i = order[m];
      scalar_t* r = recs + m * RS;
      r[R_MX] = means2d[2 * i]; r[R_MY] = means2d[2 * i + 1];
      r[R_A] = conics[3 * i]; r[R_B] = conics[3 * i + 1]; r[R_C] = conics[3 * i + 2];
      r[R_O] = opacities[i];
      r[R_RLO] = scalar_t(box[4 * i + 2]); r[R_RHI] = scalar_t(box[4 * i + 3]);
      for (int64_t ch = 0; ch < C; ++ch) r[R_F + ch] = features[i * C + ch];
      int32_t* q = irecs + m * I_N;
      q[I_TX0] = box[4 * i + 0] / ts; q[I_TX1] = box[4 * i + 1] / ts; q[I_TY0] = box[4 * i + 2] / ts;
      q[I_G] = static_cast<int32_t>(i);
    }
  });

  // Pair counts and the bucket fill are split over bands of tile rows: every band scans all ranks
  // in order and only touches its own tiles, so the lists are the same for any number of threads.
  std::vector<int32_t> ty1s(M);
  for (int64_t m = 0; m < M; ++m) ty1s[m] = box[4 * order[m] + 3] / ts;
  pstart[0] = 0;
  for (int64_t m = 0; m < M; ++m) {
    const int32_t* q = irecs + m * I_N;
    pstart[m + 1] = pstart[m] + int64_t(ty1s[m] - q[I_TY0] + 1) * (q[I_TX1] - q[I_TX0] + 1);
  }
  const int64_t P = pstart[M];
  TORCH_CHECK(P < std::numeric_limits<int32_t>::max(), "composite_cpu: too many tile-Gaussian pairs (", P, ")");
  const int64_t band_grain = P < kSmallGrain * 8 ? nty : 1;  // small scenes: one band, no fork/join
  B.tile_offsets = at::zeros({ntiles + 1}, at::kLong);
  int64_t* toff = B.tile_offsets.data_ptr<int64_t>();
  at::parallel_for(0, nty, band_grain, [&](int64_t tb, int64_t te) {
    for (int64_t m = 0; m < M; ++m) {
      const int32_t* q = irecs + m * I_N;
      const int64_t ya = std::max<int64_t>(q[I_TY0], tb), yb = std::min<int64_t>(ty1s[m], te - 1);
      for (int64_t ty = ya; ty <= yb; ++ty)
        for (int64_t tx = q[I_TX0]; tx <= q[I_TX1]; ++tx) ++toff[ty * ntx + tx + 1];
    }
  });
  for (int64_t t = 0; t < ntiles; ++t) toff[t + 1] += toff[t];
  B.tile_ranks = at::empty({P}, at::kInt);
  B.pair_slot = at::empty({P}, at::kInt);
  int32_t* ranks = B.tile_ranks.data_ptr<int32_t>();
  int32_t* slot = B.pair_slot.data_ptr<int32_t>();
  at::parallel_for(0, nty, band_grain, [&](int64_t tb, int64_t te) {
    std::vector<int64_t> cursor(toff + tb * ntx, toff + te * ntx);  // next free slot of the band's tiles
    for (int64_t m = 0; m < M; ++m) {  // rank order keeps every tile list front to back
      const int32_t* q = irecs + m * I_N;
      const int64_t ya = std::max<int64_t>(q[I_TY0], tb), yb = std::min<int64_t>(ty1s[m], te - 1);
      const int64_t wx = q[I_TX1] - q[I_TX0] + 1;
      for (int64_t ty = ya; ty <= yb; ++ty) {
        int64_t j = pstart[m] + (ty - q[I_TY0]) * wx;
        for (int64_t tx = q[I_TX0]; tx <= q[I_TX1]; ++tx) {
          const int64_t sl = cursor[(ty - tb) * ntx + tx]++;
          ranks[sl] = static_cast<int32_t>(m);
          slot[j++] = static_cast<int32_t>(sl);
        }
      }
    }
  });
  return B;
}

// Tiles sorted by decreasing list length (ties by index): dynamic scheduling of the heavy tiles
// first. Only the assignment of tiles to threads depends on it, never a result.
std::vector<int64_t> tile_schedule(const int64_t* toff, int64_t ntiles) {
  std::vector<int64_t> s(ntiles);
  std::iota(s.begin(), s.end(), 0);
  std::stable_sort(s.begin(), s.end(),
                   [toff](int64_t a, int64_t b) { return toff[a + 1] - toff[a] > toff[b + 1] - toff[b]; });
  return s;
}

template <typename F>
void for_each_tile(const std::vector<int64_t>& sched, const F& fn) {
  const int64_t n = static_cast<int64_t>(sched.size());
  if (n == 0) return;
  const int64_t nthreads = std::min<int64_t>(at::get_num_threads(), n);
  std::atomic<int64_t> next{0};
  at::parallel_for(0, nthreads, 1, [&](int64_t b, int64_t e) {
    for (int64_t w = b; w < e; ++w) {
      auto state = fn.make_state();
      for (int64_t k = next.fetch_add(1); k < n; k = next.fetch_add(1)) fn(state, sched[k]);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Kernels. TS: tile size (0 = runtime), CT: channels (0 = runtime).
// ---------------------------------------------------------------------------------------------
template <typename scalar_t>
struct Params {
  const scalar_t* recs;
  const int32_t* irecs;
  const int64_t* pstart;
  const int64_t* toff;
  const int32_t* ranks;
  int64_t W, H, C, ts, ntx;
};

constexpr int kRowCheck = 8;  // forward: look for finished rows every this many Gaussians

template <typename scalar_t, int TS, int CT>
struct ForwardTile {
  using mask_t = typename MaskInt<scalar_t>::type;
  const Params<scalar_t>& p;
  scalar_t* out_img;  // [H,W,C]
  scalar_t* T_img;    // [H,W]
  int32_t* last_img;  // [H,W]

  struct State {
    std::vector<scalar_t> buf;
    std::vector<mask_t> alive;
  };
  State make_state() const {
    const int64_t ts = TS > 0 ? TS : p.ts, C = CT > 0 ? CT : p.C;
    State s;
    s.buf.resize(ts * ts * (C + 2) + ts);
    s.alive.resize(ts * ts + ts);
    return s;
  }

  void operator()(State& st, int64_t tile) const {
    constexpr scalar_t kAlphaMax = scalar_t(0.99), kAlphaMin = scalar_t(1.0 / 255.0), kTMin = scalar_t(1e-4);
    const int64_t ts = TS > 0 ? TS : p.ts, C = CT > 0 ? CT : p.C, tp = ts * ts, RS = R_F + C;
    const int64_t W = p.W, H = p.H;
    const int64_t tyi = tile / p.ntx, txi = tile % p.ntx;
    const int64_t x0 = txi * ts, y0 = tyi * ts;
    const int64_t nrows = std::min(ts, H - y0), ncols = std::min(ts, W - x0);
    scalar_t* UA_RESTRICT Tb = st.buf.data();
    scalar_t* UA_RESTRICT lastb = Tb + tp;
    scalar_t* UA_RESTRICT outb = lastb + tp;  // [C][tp]
    scalar_t* UA_RESTRICT pxs = outb + C * tp;
    mask_t* UA_RESTRICT alive = st.alive.data();
    mask_t* UA_RESTRICT row_alive = alive + tp;
    for (int64_t i = 0; i < tp; ++i) { Tb[i] = 1; lastb[i] = 0; }
    for (int64_t i = 0; i < C * tp; ++i) outb[i] = 0;
    for (int64_t r = 0; r < ts; ++r) {
      row_alive[r] = r < nrows;
      for (int64_t c = 0; c < ts; ++c) alive[r * ts + c] = (r < nrows && c < ncols) ? mask_t(-1) : mask_t(0);
    }
    for (int64_t c = 0; c < ts; ++c) pxs[c] = scalar_t(x0 + c) + scalar_t(0.5);
    int64_t rows_left = nrows;

    const int64_t begin = p.toff[tile], end = p.toff[tile + 1];
    for (int64_t k = begin; k < end; ++k) {
      const scalar_t* UA_RESTRICT rec = p.recs + int64_t(p.ranks[k]) * RS;
      const int64_t r0 = std::max<int64_t>(int64_t(rec[R_RLO]) - y0, 0);
      const int64_t r1 = std::min<int64_t>(int64_t(rec[R_RHI]) - y0, nrows - 1);
      const scalar_t mx = rec[R_MX], my = rec[R_MY], ca = rec[R_A], cb = rec[R_B], cc = rec[R_C], op = rec[R_O];
      const scalar_t* UA_RESTRICT f = rec + R_F;
      const scalar_t kf = scalar_t(k - begin + 1);
      for (int64_t r = r0; r <= r1; ++r) {
        if (!row_alive[r]) continue;
        const scalar_t dy = (scalar_t(y0 + r) + scalar_t(0.5)) - my;
        const scalar_t cdy2 = (cc * dy) * dy;
        scalar_t* UA_RESTRICT T = Tb + r * ts;
        scalar_t* UA_RESTRICT last = lastb + r * ts;
        mask_t* UA_RESTRICT al = alive + r * ts;
        scalar_t* UA_RESTRICT o0 = outb + r * ts;
#pragma omp simd
        for (int64_t c = 0; c < ts; ++c) {
          const scalar_t dx = pxs[c] - mx;
          const scalar_t power = scalar_t(-0.5) * ((ca * dx) * dx + cdy2) - (cb * dx) * dy;
          const scalar_t alpha_raw = op * ua_exp(power);
          const scalar_t alpha = alpha_raw > kAlphaMax ? kAlphaMax : alpha_raw;  // NaN stays NaN
          const scalar_t Ti = T[c];
          const scalar_t Tn = Ti * (scalar_t(1) - alpha);
          // alpha >= 1/255 <=> alpha_raw >= 1/255 (the clamp value is above the threshold)
          const bool ok = (power <= scalar_t(0)) & (alpha_raw >= kAlphaMin) & (al[c] != 0);
          const bool stop = ok & (Tn < kTMin);
          const bool contrib = ok & !stop;
          const scalar_t w = contrib ? alpha * Ti : scalar_t(0);
          for (int64_t ch = 0; ch < C; ++ch) o0[ch * tp + c] += w * f[ch];
          T[c] = contrib ? Tn : Ti;
          last[c] = contrib ? kf : last[c];
          al[c] = stop ? mask_t(0) : al[c];
        }
      }
      if ((k - begin) % kRowCheck == kRowCheck - 1 || k + 1 == end) {  // retire finished rows
        for (int64_t r = 0; r < nrows; ++r) {
          if (!row_alive[r]) continue;
          mask_t any = 0;
          const mask_t* UA_RESTRICT al = alive + r * ts;
#pragma omp simd reduction(| : any)
          for (int64_t c = 0; c < ts; ++c) any |= al[c];
          if (!any) { row_alive[r] = 0; --rows_left; }
        }
        if (rows_left == 0) break;  // every pixel of the tile is done
      }
    }

    for (int64_t r = 0; r < nrows; ++r) {
      const int64_t pix0 = (y0 + r) * W + x0;
      for (int64_t c = 0; c < ncols; ++c) {
        T_img[pix0 + c] = Tb[r * ts + c];
        last_img[pix0 + c] = static_cast<int32_t>(lastb[r * ts + c]);
        for (int64_t ch = 0; ch < C; ++ch) out_img[(pix0 + c) * C + ch] = outb[ch * tp + r * ts + c];
      }
    }
  }
};

template <typename scalar_t, int TS, int CT>
struct BackwardTile {
  const Params<scalar_t>& p;
  const scalar_t* gout_img;  // [H,W,C]
  const scalar_t* gT_img;    // [H,W]
  const scalar_t* T_img;     // [H,W]
  const int32_t* last_img;   // [H,W]
  scalar_t* pair_grads;      // [P, 6 + C] rows in tile-list (slot) order; rows >= tile_maxlast are not written
  int64_t* tile_maxlast;     // [ntiles] number of leading list entries that reach some pixel of the tile

  struct State {
    std::vector<scalar_t> buf;
    std::vector<int64_t> rowmax;
  };
  State make_state() const {
    const int64_t ts = TS > 0 ? TS : p.ts, C = CT > 0 ? CT : p.C;
    State s;
    s.buf.resize(ts * ts * (C + 4) + ts * (C + 7));
    s.rowmax.resize(ts);
    return s;
  }

  void operator()(State& st, int64_t tile) const {
    constexpr scalar_t kAlphaMax = scalar_t(0.99), kAlphaMin = scalar_t(1.0 / 255.0);
    const int64_t ts = TS > 0 ? TS : p.ts, C = CT > 0 ? CT : p.C, tp = ts * ts, RS = R_F + C;
    const int64_t W = p.W, H = p.H, NG = 6 + C;
    const int64_t tyi = tile / p.ntx, txi = tile % p.ntx;
    const int64_t x0 = txi * ts, y0 = tyi * ts;
    const int64_t nrows = std::min(ts, H - y0), ncols = std::min(ts, W - x0);
    const int64_t begin = p.toff[tile], end = p.toff[tile + 1];
    tile_maxlast[tile] = 0;
    if (begin == end) return;
    scalar_t* UA_RESTRICT Tb = st.buf.data();
    scalar_t* UA_RESTRICT lastb = Tb + tp;
    scalar_t* UA_RESTRICT accb = lastb + tp;  // sum_c g_c * (sum over Gaussians behind of f alpha T)
    scalar_t* UA_RESTRICT cTb = accb + tp;    // gT * T_final
    scalar_t* UA_RESTRICT gb = cTb + tp;      // [C][tp] grad of out
    scalar_t* UA_RESTRICT pxs = gb + C * tp;
    scalar_t* UA_RESTRICT lanes = pxs + ts;   // [6 + C][ts]
    int64_t* rowmax = st.rowmax.data();

    int64_t maxlast = 0;
    for (int64_t r = 0; r < ts; ++r) {
      rowmax[r] = 0;
      for (int64_t c = 0; c < ts; ++c) {
        const int64_t i = r * ts + c;
        if (r < nrows && c < ncols) {
          const int64_t pix = (y0 + r) * W + x0 + c;
          const int64_t l = last_img[pix];
          Tb[i] = T_img[pix];
          lastb[i] = scalar_t(l);
          cTb[i] = gT_img[pix] * T_img[pix];
          for (int64_t ch = 0; ch < C; ++ch) gb[ch * tp + i] = gout_img[pix * C + ch];
          rowmax[r] = std::max(rowmax[r], l);
        } else {
          Tb[i] = 1; lastb[i] = 0; cTb[i] = 0;
          for (int64_t ch = 0; ch < C; ++ch) gb[ch * tp + i] = 0;
        }
        accb[i] = 0;
      }
      maxlast = std::max(maxlast, rowmax[r]);
    }
    tile_maxlast[tile] = maxlast;
    for (int64_t c = 0; c < ts; ++c) pxs[c] = scalar_t(x0 + c) + scalar_t(0.5);

    scalar_t* UA_RESTRICT Lmx = lanes;
    scalar_t* UA_RESTRICT Lmy = lanes + ts;
    scalar_t* UA_RESTRICT La = lanes + 2 * ts;
    scalar_t* UA_RESTRICT Lb = lanes + 3 * ts;
    scalar_t* UA_RESTRICT Lc = lanes + 4 * ts;
    scalar_t* UA_RESTRICT Lo = lanes + 5 * ts;
    scalar_t* UA_RESTRICT Lf = lanes + 6 * ts;  // [C][ts]

    for (int64_t kk = maxlast - 1; kk >= 0; --kk) {
      const int64_t m = p.ranks[begin + kk];
      scalar_t* UA_RESTRICT dst = pair_grads + (begin + kk) * NG;
      bool touched = false;
      {
        const scalar_t* UA_RESTRICT rec = p.recs + m * RS;
        const int64_t r0 = std::max<int64_t>(int64_t(rec[R_RLO]) - y0, 0);
        const int64_t r1 = std::min<int64_t>(int64_t(rec[R_RHI]) - y0, nrows - 1);
        const scalar_t mx = rec[R_MX], my = rec[R_MY], ca = rec[R_A], cb = rec[R_B], cc = rec[R_C], op = rec[R_O];
        const scalar_t* UA_RESTRICT f = rec + R_F;
        const scalar_t kf = scalar_t(kk);
        for (int64_t r = r0; r <= r1; ++r) {
          if (rowmax[r] <= kk) continue;
          if (!touched) {
            for (int64_t i = 0; i < NG * ts; ++i) lanes[i] = 0;
            touched = true;
          }
          const scalar_t dy = (scalar_t(y0 + r) + scalar_t(0.5)) - my;
          const scalar_t cdy2 = (cc * dy) * dy;
          const scalar_t mhdy2 = scalar_t(-0.5) * dy * dy;
          scalar_t* UA_RESTRICT T = Tb + r * ts;
          const scalar_t* UA_RESTRICT last = lastb + r * ts;
          scalar_t* UA_RESTRICT acc = accb + r * ts;
          const scalar_t* UA_RESTRICT cT = cTb + r * ts;
          const scalar_t* UA_RESTRICT g0 = gb + r * ts;
#pragma omp simd
          for (int64_t c = 0; c < ts; ++c) {
            const scalar_t dx = pxs[c] - mx;
            const scalar_t power = scalar_t(-0.5) * ((ca * dx) * dx + cdy2) - (cb * dx) * dy;
            const scalar_t G = ua_exp(power);
            const scalar_t alpha_raw = op * G;
            const scalar_t alpha = alpha_raw > kAlphaMax ? kAlphaMax : alpha_raw;
            const bool act = (kf < last[c]) & (power <= scalar_t(0)) & (alpha_raw >= kAlphaMin);
            const scalar_t al = act ? alpha : scalar_t(0);
            const scalar_t inv = scalar_t(1) / (scalar_t(1) - al);
            const scalar_t Ti = T[c] * inv;  // transmittance in front of this Gaussian
            scalar_t gf = 0;
            for (int64_t ch = 0; ch < C; ++ch) gf += g0[ch * tp + c] * f[ch];
            const scalar_t wT = al * Ti;
            // dL/dalpha = T_i sum_c g_c f_c - (sum_{j behind} g.f_j alpha_j T_j + gT T_final) / (1 - alpha)
            const scalar_t dal = Ti * gf - (acc[c] + cT[c]) * inv;
            acc[c] = act ? acc[c] + gf * wT : acc[c];
            T[c] = act ? Ti : T[c];
            for (int64_t ch = 0; ch < C; ++ch) Lf[ch * ts + c] += act ? g0[ch * tp + c] * wT : scalar_t(0);
            const bool unc = act & (alpha_raw <= kAlphaMax);  // the clamp at 0.99 blocks the gradient
            const scalar_t dpow = unc ? dal * alpha_raw : scalar_t(0);
            Lo[c] += unc ? dal * G : scalar_t(0);
            La[c] += dpow * (scalar_t(-0.5) * dx * dx);
            Lb[c] += dpow * (-(dx * dy));
            Lc[c] += dpow * mhdy2;
            Lmx[c] += dpow * (ca * dx + cb * dy);
            Lmy[c] += dpow * (cb * dx + cc * dy);
          }
        }
      }
      if (touched) {
        for (int64_t qq = 0; qq < NG; ++qq) dst[qq] = lane_sum<TS>(lanes + qq * ts, ts);
      } else {
        for (int64_t qq = 0; qq < NG; ++qq) dst[qq] = 0;
      }
    }
  }
};

// ---------------------------------------------------------------------------------------------
// Input checks
// ---------------------------------------------------------------------------------------------
void check_tensor(const at::Tensor& t, const char* name, at::ScalarType dtype, std::vector<int64_t> shape) {
  TORCH_CHECK(t.defined(), "composite_cpu: `", name, "` is undefined");
  TORCH_CHECK(t.device().is_cpu(), "composite_cpu: `", name, "` must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.scalar_type() == dtype, "composite_cpu: `", name, "` has dtype ", t.scalar_type(), ", expected ",
              dtype);
  TORCH_CHECK(t.dim() == static_cast<int64_t>(shape.size()), "composite_cpu: `", name, "` must have ",
              shape.size(), " dims, got shape ", t.sizes());
  for (size_t d = 0; d < shape.size(); ++d)
    TORCH_CHECK(shape[d] < 0 || t.size(d) == shape[d], "composite_cpu: `", name, "` has shape ", t.sizes(),
                ", dim ", d, " should be ", shape[d]);
  TORCH_CHECK(t.is_contiguous(), "composite_cpu: `", name, "` must be contiguous");
}

void check_size(int64_t width, int64_t height, int64_t tile_size) {
  TORCH_CHECK(width > 0 && height > 0, "composite_cpu: width and height must be > 0, got ", width, "x", height);
  TORCH_CHECK(width < (1 << 24) && height < (1 << 24), "composite_cpu: image too large");
  TORCH_CHECK(tile_size >= 1 && tile_size <= 64, "composite_cpu: tile_size must be in [1, 64], got ", tile_size);
}

template <typename scalar_t, typename Fn>
void dispatch_shape(int64_t ts, int64_t C, Fn&& fn) {
  if (std::is_same<scalar_t, float>::value && ts == 16) {
    switch (C) {
      case 1: fn(std::integral_constant<int, 16>(), std::integral_constant<int, 1>()); return;
      case 2: fn(std::integral_constant<int, 16>(), std::integral_constant<int, 2>()); return;
      case 3: fn(std::integral_constant<int, 16>(), std::integral_constant<int, 3>()); return;
      case 4: fn(std::integral_constant<int, 16>(), std::integral_constant<int, 4>()); return;
      default: fn(std::integral_constant<int, 16>(), std::integral_constant<int, 0>()); return;
    }
  }
  fn(std::integral_constant<int, 0>(), std::integral_constant<int, 0>());
}

// ---------------------------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------------------------
std::vector<at::Tensor> composite_forward(const at::Tensor& means2d, const at::Tensor& conics,
                                          const at::Tensor& features, const at::Tensor& opacities,
                                          const at::Tensor& depths, const at::Tensor& extents,
                                          const at::Tensor& visible, int64_t width, int64_t height,
                                          int64_t tile_size) {
  TORCH_CHECK(means2d.defined() && (means2d.scalar_type() == at::kFloat || means2d.scalar_type() == at::kDouble),
              "composite_cpu: `means2d` must be float32 or float64");
  check_size(width, height, tile_size);
  const auto dt = means2d.scalar_type();
  check_tensor(means2d, "means2d", dt, {-1, 2});
  const int64_t N = means2d.size(0);
  TORCH_CHECK(N < std::numeric_limits<int32_t>::max(), "composite_cpu: too many Gaussians");
  check_tensor(conics, "conics", dt, {N, 3});
  check_tensor(features, "features", dt, {N, -1});
  const int64_t C = features.size(1);
  TORCH_CHECK(C >= 1, "composite_cpu: `features` needs at least one channel");
  check_tensor(opacities, "opacities", dt, {N});
  check_tensor(depths, "depths", dt, {N});
  check_tensor(extents, "extents", dt, {N, 2});
  check_tensor(visible, "visible", at::kBool, {N});
  const int64_t ts = tile_size, ntx = (width + ts - 1) / ts, nty = (height + ts - 1) / ts;

  at::Tensor out = at::empty({height, width, C}, means2d.options());
  at::Tensor T = at::empty({height, width}, means2d.options());
  at::Tensor last = at::empty({height, width}, means2d.options().dtype(at::kInt));
  Binning B;
  AT_DISPATCH_FLOATING_TYPES(dt, "ua3dtalk_composite_forward", [&] {
    B = bin_gaussians<scalar_t>(means2d.data_ptr<scalar_t>(), conics.data_ptr<scalar_t>(),
                                features.data_ptr<scalar_t>(), opacities.data_ptr<scalar_t>(),
                                extents.data_ptr<scalar_t>(), depths.data_ptr<scalar_t>(), visible.data_ptr<bool>(),
                                N, C, width, height, ts);
    Params<scalar_t> prm{B.recs.data_ptr<scalar_t>(), B.irecs.data_ptr<int32_t>(), B.pstart.data_ptr<int64_t>(),
                         B.tile_offsets.data_ptr<int64_t>(), B.tile_ranks.data_ptr<int32_t>(),
                         width, height, C, ts, ntx};
    const std::vector<int64_t> sched = tile_schedule(prm.toff, ntx * nty);
    dispatch_shape<scalar_t>(ts, C, [&](auto TSc, auto CTc) {
      ForwardTile<scalar_t, decltype(TSc)::value, decltype(CTc)::value> fw{
          prm, out.data_ptr<scalar_t>(), T.data_ptr<scalar_t>(), last.data_ptr<int32_t>()};
      for_each_tile(sched, fw);
    });
  });
  return {out, T, last, B.tile_offsets, B.tile_ranks, B.recs, B.irecs, B.pstart, B.pair_slot};
}

std::vector<at::Tensor> composite_backward(const at::Tensor& grad_out, const at::Tensor& grad_T, int64_t num_gaussians,
                                           const at::Tensor& T, const at::Tensor& last,
                                           const at::Tensor& tile_offsets, const at::Tensor& tile_ranks,
                                           const at::Tensor& recs, const at::Tensor& irecs, const at::Tensor& pstart,
                                           const at::Tensor& pair_slot, int64_t width, int64_t height, int64_t tile_size) {
  TORCH_CHECK(recs.defined() && (recs.scalar_type() == at::kFloat || recs.scalar_type() == at::kDouble),
              "composite_cpu: saved records must be float32 or float64");
  check_size(width, height, tile_size);
  const auto dt = recs.scalar_type();
  const int64_t N = num_gaussians;
  TORCH_CHECK(N >= 0, "composite_cpu: negative number of Gaussians");
  TORCH_CHECK(recs.dim() == 2 && recs.size(1) > R_F, "composite_cpu: bad saved records");
  const int64_t M = recs.size(0), C = recs.size(1) - R_F;
  const int64_t ts = tile_size, ntx = (width + ts - 1) / ts, nty = (height + ts - 1) / ts;
  check_tensor(recs, "recs", dt, {M, R_F + C});
  check_tensor(grad_out, "grad_out", dt, {height, width, C});
  check_tensor(grad_T, "grad_T", dt, {height, width});
  check_tensor(T, "T", dt, {height, width});
  check_tensor(last, "last", at::kInt, {height, width});
  check_tensor(tile_offsets, "tile_offsets", at::kLong, {ntx * nty + 1});
  check_tensor(tile_ranks, "tile_ranks", at::kInt, {-1});
  check_tensor(irecs, "irecs", at::kInt, {M, I_N});
  check_tensor(pstart, "pstart", at::kLong, {M + 1});
  const int64_t P = tile_ranks.size(0);
  check_tensor(pair_slot, "pair_slot", at::kInt, {P});
  TORCH_CHECK(tile_offsets.data_ptr<int64_t>()[ntx * nty] == P && pstart.data_ptr<int64_t>()[M] == P,
              "composite_cpu: inconsistent saved binning state");
  const int32_t* iq = irecs.data_ptr<int32_t>();
  for (int64_t m = 0; m < M; ++m)
    TORCH_CHECK(iq[m * I_N + I_G] >= 0 && iq[m * I_N + I_G] < N, "composite_cpu: saved state does not match N");

  const int64_t NG = 6 + C;
  at::Tensor pair = at::empty({P, NG}, recs.options());  // rows are only read where written (slot < maxlast)
  std::vector<int64_t> tile_maxlast(ntx * nty, 0);
  at::Tensor g_means = at::zeros({N, 2}, recs.options());
  at::Tensor g_conics = at::zeros({N, 3}, recs.options());
  at::Tensor g_feat = at::zeros({N, C}, recs.options());
  at::Tensor g_op = at::zeros({N}, recs.options());
  AT_DISPATCH_FLOATING_TYPES(dt, "ua3dtalk_composite_backward", [&] {
    Params<scalar_t> prm{recs.data_ptr<scalar_t>(), irecs.data_ptr<int32_t>(), pstart.data_ptr<int64_t>(),
                         tile_offsets.data_ptr<int64_t>(), tile_ranks.data_ptr<int32_t>(),
                         width, height, C, ts, ntx};
    const std::vector<int64_t> sched = tile_schedule(prm.toff, ntx * nty);
    scalar_t* pg = pair.data_ptr<scalar_t>();
    dispatch_shape<scalar_t>(ts, C, [&](auto TSc, auto CTc) {
      BackwardTile<scalar_t, decltype(TSc)::value, decltype(CTc)::value> bw{
          prm, grad_out.data_ptr<scalar_t>(), grad_T.data_ptr<scalar_t>(), T.data_ptr<scalar_t>(),
          last.data_ptr<int32_t>(), pg, tile_maxlast.data()};
      for_each_tile(sched, bw);
    });
    // deterministic reduction: each Gaussian sums its own pair rows in a fixed order
    const int64_t* ps = prm.pstart;
    const int64_t* toff = prm.toff;
    const int32_t* slot = pair_slot.data_ptr<int32_t>();
    scalar_t* gm = g_means.data_ptr<scalar_t>();
    scalar_t* gc = g_conics.data_ptr<scalar_t>();
    scalar_t* gf = g_feat.data_ptr<scalar_t>();
    scalar_t* go = g_op.data_ptr<scalar_t>();
    at::parallel_for(0, M, P < kSmallGrain * 8 ? M : 1024, [&](int64_t b, int64_t e) {
      std::vector<scalar_t> s(NG);
      for (int64_t m = b; m < e; ++m) {
        std::fill(s.begin(), s.end(), scalar_t(0));
        const int32_t* qm = iq + m * I_N;
        const int64_t wx = qm[I_TX1] - qm[I_TX0] + 1;
        for (int64_t j = ps[m]; j < ps[m + 1]; ++j) {
          const int64_t jj = j - ps[m];
          const int64_t t = (qm[I_TY0] + jj / wx) * ntx + qm[I_TX0] + jj % wx;
          const int64_t sl = slot[j];
          if (sl - toff[t] >= tile_maxlast[t]) continue;  // behind every pixel's last contributor: zero
          for (int64_t q = 0; q < NG; ++q) s[q] += pg[sl * NG + q];
        }
        const int64_t i = qm[I_G];
        gm[2 * i] = s[0]; gm[2 * i + 1] = s[1];
        gc[3 * i] = s[2]; gc[3 * i + 1] = s[3]; gc[3 * i + 2] = s[4];
        go[i] = s[5];
        for (int64_t ch = 0; ch < C; ++ch) gf[i * C + ch] = s[6 + ch];
      }
    });
  });
  return {g_means, g_conics, g_feat, g_op};
}

// ---------------------------------------------------------------------------------------------
// Ensemble member statistics (ua3dtalk.models.deformation.ensemble, inference path): fused
// replacement of the ~12 elementwise passes of _stats_block without saved derivatives.
//   y [T, n, 2D] (float or bfloat16): second-layer outputs without bias (scaled log-variance
//   columns, see _Head); b [T, 2D] float: the (scaled) bias. For every row r and output d:
//     mu_t = y[t,r,d] + b[t,d];  u_t = y[t,r,D+d] + b[t,D+d];  s_t = sigmoid(u_t)
//     mu_sum = sum_t mu_t;  ep_sum = sum_t (mu_t - mu_sum/T)^2;  al_sum = sum_t exp(span*s_t + c)
// (the member *sums*, exactly what _stats_block writes; _finish divides by T).
// exp uses the same Cody-Waite + polynomial as ua_exp, on [-87, 88].
// ---------------------------------------------------------------------------------------------
inline float ua_exp_wide(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  return ua_exp_clamped(x);
}

inline float ua_load(const float* p, int64_t i) { return p[i]; }
inline float ua_load(const at::BFloat16* p, int64_t i) {
  uint16_t h;
  std::memcpy(&h, reinterpret_cast<const char*>(p) + 2 * i, sizeof(h));
  const uint32_t w = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &w, sizeof(f));
  return f;
}

template <typename scalar_t>
void ensemble_stats_impl(const scalar_t* UA_RESTRICT y, const float* UA_RESTRICT b, float* UA_RESTRICT mu,
                         float* UA_RESTRICT al, float* UA_RESTRICT ep, int64_t T, int64_t n, int64_t D, float span,
                         float c) {
  const int64_t row = 2 * D, plane = n * row;
  const float inv_t = 1.0f / static_cast<float>(T);
  at::parallel_for(0, n, 64, [&](int64_t rb, int64_t re) {
    std::vector<float> buf(2 * static_cast<size_t>(row));
    float* UA_RESTRICT v = buf.data();        // one member's row (float), [2D]
    float* UA_RESTRICT mean = v + row;        // [D]
    for (int64_t r = rb; r < re; ++r) {
      float* UA_RESTRICT m_out = mu + r * D;
      float* UA_RESTRICT a_out = al + r * D;
      float* UA_RESTRICT e_out = ep + r * D;
      for (int64_t d = 0; d < D; ++d) m_out[d] = 0.0f;
      for (int64_t t = 0; t < T; ++t) {  // pass 1: sum of the means
        const scalar_t* yr = y + t * plane + r * row;
        const float* br = b + t * row;
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) m_out[d] += ua_load(yr, d) + br[d];
      }
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) {
        mean[d] = m_out[d] * inv_t;
        e_out[d] = 0.0f;
        a_out[d] = 0.0f;
      }
      for (int64_t t = 0; t < T; ++t) {  // pass 2: squared deviations and variances
        const scalar_t* yr = y + t * plane + r * row;
        const float* br = b + t * row;
#pragma omp simd
        for (int64_t k = 0; k < row; ++k) v[k] = ua_load(yr, k) + br[k];
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) {
          const float dev = v[d] - mean[d];
          e_out[d] = UA_FMA(dev, dev, e_out[d]);
          const float u = v[D + d];
          const float e = ua_exp_wide(u < 0.0f ? u : -u);  // exp(-|u|) in (0, 1]
          const float inv = 1.0f / (1.0f + e);
          const float sg = u >= 0.0f ? inv : e * inv;  // sigmoid(u) for either sign without overflow
          a_out[d] += ua_exp_wide(UA_FMA(span, sg, c));
        }
      }
    }
  });
}

// y (float32 or bfloat16, contiguous [T, n, 2D]) -> member sums into mu/al/ep (contiguous float32 [n, D]).
void ensemble_stats_dispatch(const torch::Tensor& y, const torch::Tensor& b, const torch::Tensor& mu,
                             const torch::Tensor& al, const torch::Tensor& ep, int64_t T, int64_t n, int64_t D,
                             double span, double c) {
  if (y.scalar_type() == at::kFloat) {
    ensemble_stats_impl<float>(y.data_ptr<float>(), b.data_ptr<float>(), mu.data_ptr<float>(), al.data_ptr<float>(),
                               ep.data_ptr<float>(), T, n, D, static_cast<float>(span), static_cast<float>(c));
  } else {
    ensemble_stats_impl<at::BFloat16>(y.data_ptr<at::BFloat16>(), b.data_ptr<float>(), mu.data_ptr<float>(),
                                      al.data_ptr<float>(), ep.data_ptr<float>(), T, n, D, static_cast<float>(span),
                                      static_cast<float>(c));
  }
}

void ensemble_stats(torch::Tensor y, torch::Tensor b, double span, double c, torch::Tensor mu, torch::Tensor al,
                    torch::Tensor ep) {
  TORCH_CHECK(y.dim() == 3 && y.size(2) % 2 == 0, "ensemble_stats: y must be [T, n, 2D], got ", y.sizes());
  TORCH_CHECK(y.device().is_cpu() && b.device().is_cpu(), "ensemble_stats: CPU tensors only");
  TORCH_CHECK(y.scalar_type() == at::kFloat || y.scalar_type() == at::kBFloat16,
              "ensemble_stats: y must be float32 or bfloat16");
  const int64_t T = y.size(0), n = y.size(1), D = y.size(2) / 2;
  TORCH_CHECK(b.dim() == 2 && b.size(0) == T && b.size(1) == 2 * D && b.scalar_type() == at::kFloat,
              "ensemble_stats: b must be float32 [T, 2D] = [", T, ", ", 2 * D, "], got ", b.sizes());
  for (const auto& o : {mu, al, ep}) {
    TORCH_CHECK(o.dim() == 2 && o.size(0) == n && o.size(1) == D && o.scalar_type() == at::kFloat &&
                    o.is_contiguous() && o.device().is_cpu(),
                "ensemble_stats: outputs must be contiguous float32 [n, D] = [", n, ", ", D, "]");
  }
  auto yc = y.contiguous();
  auto bc = b.contiguous();
  ensemble_stats_dispatch(yc, bc, mu, al, ep, T, n, D, span, c);
}

// The whole no-grad stage-B evaluation of one view, blocked over Gaussians and parallel over blocks
// (one thread per block: the small GEMMs run single-threaded inside the parallel region, so there is
// no fork/join per operation). For frame f and Gaussians [a, e):
//   z = pre[a:e] (if given) + rows[f] (if given) + x[f or 0, a:e] @ w (if given)     [e-a, T*hid]
//   h = relu(z);  y_t = h_t @ w2c[t]  (t = member)                                     [T, e-a, 2D]
// then the member sums of ensemble_stats into mu/al/ep rows f*N + [a, e).
// All matmul operands are in one dtype (float32 or bfloat16); accumulation is float32.
void ensemble_view_stats(torch::Tensor x, torch::Tensor w, torch::Tensor pre, torch::Tensor rows, torch::Tensor w2c,
                         torch::Tensor b, double span, double c, int64_t chunk, int64_t batch, int64_t n,
                         torch::Tensor mu, torch::Tensor al, torch::Tensor ep) {
  TORCH_CHECK(w2c.dim() == 3, "ensemble_view_stats: w2c must be [T, hidden, 2D]");
  const int64_t T = w2c.size(0), hid = w2c.size(1), D = w2c.size(2) / 2, width = T * hid;
  const auto dt = w2c.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16, "ensemble_view_stats: float32 or bfloat16 matmuls only");
  TORCH_CHECK(chunk >= 1 && batch >= 1 && n >= 1, "ensemble_view_stats: chunk, batch and n must be >= 1");
  const bool has_x = x.defined() && x.numel() > 0, has_pre = pre.defined() && pre.numel() > 0;
  const bool has_rows = rows.defined() && rows.numel() > 0;
  TORCH_CHECK(has_x || has_pre, "ensemble_view_stats: needs point features x or precomputed pre");
  if (has_x) {
    TORCH_CHECK(x.dim() == 3 && (x.size(0) == 1 || x.size(0) == batch) && x.size(1) == n && x.scalar_type() == dt &&
                    w.dim() == 2 && w.size(0) == x.size(2) && w.size(1) == width && w.scalar_type() == dt,
                "ensemble_view_stats: x must be [1 or B, N, K] and w [K, T*hidden] in the matmul dtype");
  }
  if (has_pre) {
    TORCH_CHECK(pre.dim() == 2 && pre.size(0) == n && pre.size(1) == width, "ensemble_view_stats: pre must be [N, T*hidden]");
  }
  if (has_rows) {
    TORCH_CHECK(rows.dim() == 2 && rows.size(0) == batch && rows.size(1) == width,
                "ensemble_view_stats: rows must be [B, T*hidden]");
  }
  TORCH_CHECK(b.scalar_type() == at::kFloat && b.dim() == 2 && b.size(0) == T && b.size(1) == 2 * D,
              "ensemble_view_stats: b must be float32 [T, 2D]");
  for (const auto& o : {mu, al, ep}) {
    TORCH_CHECK(o.dim() == 2 && o.size(0) == batch * n && o.size(1) == D && o.scalar_type() == at::kFloat &&
                    o.is_contiguous(),
                "ensemble_view_stats: outputs must be contiguous float32 [B*N, D]");
  }
  auto opts = w2c.options();
  auto xc = has_x ? x.contiguous() : x;
  auto prec = has_pre ? pre.to(dt).contiguous() : pre;
  auto rowsc = has_rows ? rows.to(dt).contiguous() : rows;
  auto bc = b.contiguous();
  const int64_t nchunks = (n + chunk - 1) / chunk, jobs = batch * nchunks;
  at::parallel_for(0, jobs, 1, [&](int64_t jb, int64_t je) {
    for (int64_t j = jb; j < je; ++j) {
      const int64_t f = j / nchunks, a = (j % nchunks) * chunk, e = std::min(a + chunk, n), m = e - a;
      torch::Tensor z;
      if (has_pre) {
        z = prec.slice(0, a, e).clone();
        if (has_rows) z.add_(rowsc[f]);
      } else if (has_rows) {
        z = rowsc[f].unsqueeze(0).expand({m, width}).clone();
      } else {
        z = torch::zeros({m, width}, opts);
      }
      if (has_x) z.addmm_(xc[xc.size(0) == 1 ? 0 : f].slice(0, a, e), w);
      z.clamp_min_(0);
      auto y = at::bmm(z.view({m, T, hid}).transpose(0, 1), w2c).contiguous();  // [T, m, 2D]
      const int64_t r0 = f * n + a;
      auto mo = mu.slice(0, r0, r0 + m), ao = al.slice(0, r0, r0 + m), eo = ep.slice(0, r0, r0 + m);
      ensemble_stats_dispatch(y, bc, mo, ao, eo, T, m, D, span, c);
    }
  });
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &composite_forward,
        "Tile-binned front-to-back compositing. Returns (out [H,W,C], T [H,W], last [H,W] int32, "
        "tile_offsets [ntiles+1] int64, tile_ranks [P] int32, recs [M,8+C], irecs [M,4] int32, "
        "pstart [M+1] int64, pair_slot [P] int32); everything after T is the state the backward pass needs.",
        py::arg("means2d"), py::arg("conics"), py::arg("features"), py::arg("opacities"), py::arg("depths"),
        py::arg("extents"), py::arg("visible"), py::arg("width"), py::arg("height"), py::arg("tile_size") = 16);
  m.def("backward", &composite_backward,
        "Gradients (means2d [N,2], conics [N,3], features [N,C], opacities [N]) from grad_out [H,W,C] and "
        "grad_T [H,W], given the forward's T and saved state.",
        py::arg("grad_out"), py::arg("grad_T"), py::arg("num_gaussians"), py::arg("T"), py::arg("last"),
        py::arg("tile_offsets"), py::arg("tile_ranks"), py::arg("recs"), py::arg("irecs"), py::arg("pstart"),
        py::arg("pair_slot"), py::arg("width"), py::arg("height"), py::arg("tile_size") = 16);
  m.def("ensemble_stats", &ensemble_stats,
        "Fused ensemble member statistics (inference): y [T,n,2D] float32/bfloat16 outputs without bias, "
        "b [T,2D] float32 bias; writes sum_t mu_t, sum_t exp(span*sigmoid(u_t)+c), sum_t (mu_t-mean)^2 into "
        "mu, al, ep (contiguous float32 [n,D]).",
        py::arg("y"), py::arg("b"), py::arg("span"), py::arg("c"), py::arg("mu"), py::arg("al"), py::arg("ep"));
  m.def("ensemble_view_stats", &ensemble_view_stats,
        "No-grad stage-B evaluation of one ensemble view (first layer, ReLU, second layer, member sums), "
        "blocked over Gaussians and parallel over blocks; writes the member sums into mu, al, ep [B*N, D].",
        py::arg("x"), py::arg("w"), py::arg("pre"), py::arg("rows"), py::arg("w2c"), py::arg("b"), py::arg("span"),
        py::arg("c"), py::arg("chunk"), py::arg("batch"), py::arg("n"), py::arg("mu"), py::arg("al"), py::arg("ep"));
}
