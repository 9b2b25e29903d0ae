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
//     [m - e, m + e] (exactly projection.tile_ranges); tile lists keep one global stable depth
//     order (stable sort, then a bucket fill by tile).
//   * forward/backward: parallel over tiles (dynamic scheduling, largest lists first); within a tile
//     the per-pixel state is structure-of-arrays and the loop over the columns of a tile row is
//     branch-free (selects only) so that GCC vectorises it. A Gaussian only touches the tile rows
//     its box covers (pixels outside the box have alpha < 1/255 by construction of the extents,
//     and forward and backward use the very same row ranges, so they are always consistent).
//   * backward: no atomics. Each (tile, Gaussian) pair writes its partial gradients to its own row
//     of a buffer laid out Gaussian-major; a second pass sums each Gaussian's rows in a fixed order.
//     Results are therefore bitwise independent of the number of threads.
//
// Floating point: compiled with -ffp-contract=off so forward and backward evaluate alpha bitwise
// identically; fused multiply-adds are only used explicitly (FMA macro) when the target has them.
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
inline float ua_exp(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 0.0f ? 0.0f : x;
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
  const int32_t sb = (ni + 127) << 23;  // 2^n, n in [-126, 0]: always a normal number
  float s;
  std::memcpy(&s, &sb, sizeof(s));
  return p * s;
}

inline double ua_exp(double x) { return std::exp(x); }

template <typename scalar_t>
struct MaskInt {
  using type = int32_t;
};
template <>
struct MaskInt<double> {
  using type = int64_t;
};

// Per-Gaussian integer data saved for the backward pass (int32 [N, 8]).
enum GInfo { G_CLO = 0, G_CHI, G_RLO, G_RHI, G_TX0, G_TX1, G_TY0, G_TY1, G_NINFO };

// ---------------------------------------------------------------------------------------------
// Binning
// ---------------------------------------------------------------------------------------------
struct Binning {
  at::Tensor ginfo;         // int32 [N, 8] pixel range (clamped) and tile range; tx1 < tx0 if not binned
  at::Tensor gstart;        // int64 [N+1] start of each Gaussian's pair rows (Gaussian-major layout)
  at::Tensor tile_offsets;  // int64 [ntiles+1]
  at::Tensor tile_gids;     // int32 [P] Gaussian ids per tile, front to back
};

template <typename scalar_t>
Binning bin_gaussians(const scalar_t* means2d, const scalar_t* extents, const scalar_t* depths,
                      const bool* visible, int64_t N, int64_t W, int64_t H, int64_t ts) {
  const int64_t ntx = (W + ts - 1) / ts, nty = (H + ts - 1) / ts, ntiles = ntx * nty;
  Binning B;
  B.ginfo = at::empty({N, G_NINFO}, at::kInt);
  B.gstart = at::empty({N + 1}, at::kLong);
  int32_t* gi = B.ginfo.data_ptr<int32_t>();
  int64_t* gstart = B.gstart.data_ptr<int64_t>();
  std::vector<int64_t> cnt(N);

  at::parallel_for(0, N, 2048, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      int32_t* g = gi + i * G_NINFO;
      g[G_CLO] = 0; g[G_CHI] = -1; g[G_RLO] = 0; g[G_RHI] = -1;
      g[G_TX0] = 0; g[G_TX1] = -1; g[G_TY0] = 0; g[G_TY1] = -1;
      cnt[i] = 0;
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
      g[G_CLO] = static_cast<int32_t>(c0); g[G_CHI] = static_cast<int32_t>(c1);
      g[G_RLO] = static_cast<int32_t>(r0); g[G_RHI] = static_cast<int32_t>(r1);
      g[G_TX0] = static_cast<int32_t>(c0 / ts); g[G_TX1] = static_cast<int32_t>(c1 / ts);
      g[G_TY0] = static_cast<int32_t>(r0 / ts); g[G_TY1] = static_cast<int32_t>(r1 / ts);
      cnt[i] = int64_t(g[G_TX1] - g[G_TX0] + 1) * int64_t(g[G_TY1] - g[G_TY0] + 1);
    }
  });

  gstart[0] = 0;
  std::vector<int32_t> order;
  order.reserve(N);
  for (int64_t i = 0; i < N; ++i) {
    gstart[i + 1] = gstart[i] + cnt[i];
    if (cnt[i] > 0) order.push_back(static_cast<int32_t>(i));
  }
  const int64_t P = gstart[N];
  TORCH_CHECK(P < std::numeric_limits<int32_t>::max(), "composite_cpu: too many tile-Gaussian pairs (", P, ")");

  // one global stable sort by depth (NaN last, like torch.sort), ties keep index order
  std::stable_sort(order.begin(), order.end(), [depths](int32_t a, int32_t b) {
    const scalar_t da = depths[a], db = depths[b];
    return da < db || (!std::isnan(da) && std::isnan(db));
  });

  B.tile_offsets = at::zeros({ntiles + 1}, at::kLong);
  int64_t* toff = B.tile_offsets.data_ptr<int64_t>();
  for (int32_t i : order) {
    const int32_t* g = gi + int64_t(i) * G_NINFO;
    for (int64_t ty = g[G_TY0]; ty <= g[G_TY1]; ++ty)
      for (int64_t tx = g[G_TX0]; tx <= g[G_TX1]; ++tx) ++toff[ty * ntx + tx + 1];
  }
  for (int64_t t = 0; t < ntiles; ++t) toff[t + 1] += toff[t];
  B.tile_gids = at::empty({P}, at::kInt);
  int32_t* gids = B.tile_gids.data_ptr<int32_t>();
  std::vector<int64_t> cursor(toff, toff + ntiles);
  for (int32_t i : order) {  // bucket fill in depth order keeps every tile list front to back
    const int32_t* g = gi + int64_t(i) * G_NINFO;
    for (int64_t ty = g[G_TY0]; ty <= g[G_TY1]; ++ty)
      for (int64_t tx = g[G_TX0]; tx <= g[G_TX1]; ++tx) gids[cursor[ty * ntx + tx]++] = i;
  }
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
void for_each_tile(const std::vector<int64_t>& sched, F&& fn) {
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
  const scalar_t* means2d;
  const scalar_t* conics;
  const scalar_t* features;
  const scalar_t* opacities;
  const int32_t* ginfo;
  const int64_t* gstart;
  const int64_t* toff;
  const int32_t* gids;
  int64_t W, H, C, ts, ntx;
};

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
    const int64_t ts = TS > 0 ? TS : p.ts, C = CT > 0 ? CT : p.C, tp = ts * ts;
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
    for (int64_t k = begin; k < end && rows_left > 0; ++k) {
      const int64_t g = p.gids[k];
      const int32_t* gi = p.ginfo + g * G_NINFO;
      const int64_t r0 = std::max<int64_t>(gi[G_RLO] - y0, 0), r1 = std::min<int64_t>(gi[G_RHI] - y0, nrows - 1);
      const scalar_t mx = p.means2d[2 * g], my = p.means2d[2 * g + 1];
      const scalar_t ca = p.conics[3 * g], cb = p.conics[3 * g + 1], cc = p.conics[3 * g + 2];
      const scalar_t op = p.opacities[g];
      const scalar_t* UA_RESTRICT f = p.features + g * C;
      const scalar_t kf = scalar_t(k - begin + 1);
      for (int64_t r = r0; r <= r1; ++r) {
        if (!row_alive[r]) continue;
        const scalar_t dy = (scalar_t(y0 + r) + scalar_t(0.5)) - my;
        const scalar_t cdy2 = (cc * dy) * dy;
        scalar_t* UA_RESTRICT T = Tb + r * ts;
        scalar_t* UA_RESTRICT last = lastb + r * ts;
        mask_t* UA_RESTRICT al = alive + r * ts;
        scalar_t* UA_RESTRICT o0 = outb + r * ts;
        mask_t any = 0;
        for (int64_t c = 0; c < ts; ++c) {
          const scalar_t dx = pxs[c] - mx;
          const scalar_t power = scalar_t(-0.5) * ((ca * dx) * dx + cdy2) - (cb * dx) * dy;
          const scalar_t alpha_raw = op * ua_exp(power);
          const scalar_t alpha = alpha_raw < kAlphaMax ? alpha_raw : kAlphaMax;
          const scalar_t Ti = T[c];
          const scalar_t Tn = Ti * (scalar_t(1) - alpha);
          const bool ok = (power <= scalar_t(0)) & (alpha >= kAlphaMin) & (al[c] != 0);
          const bool stop = ok & (Tn < kTMin);
          const bool contrib = ok & !stop;
          const scalar_t w = contrib ? alpha * Ti : scalar_t(0);
          for (int64_t ch = 0; ch < C; ++ch) o0[ch * tp + c] += w * f[ch];
          T[c] = contrib ? Tn : Ti;
          last[c] = contrib ? kf : last[c];
          const mask_t a2 = stop ? mask_t(0) : al[c];
          al[c] = a2;
          any |= a2;
        }
        if (!any) { row_alive[r] = 0; --rows_left; }
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
  scalar_t* pair_grads;      // [P, 6 + C] Gaussian-major rows

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
    const int64_t ts = TS > 0 ? TS : p.ts, C = CT > 0 ? CT : p.C, tp = ts * ts;
    const int64_t W = p.W, H = p.H, NG = 6 + C;
    const int64_t tyi = tile / p.ntx, txi = tile % p.ntx;
    const int64_t x0 = txi * ts, y0 = tyi * ts;
    const int64_t nrows = std::min(ts, H - y0), ncols = std::min(ts, W - x0);
    const int64_t begin = p.toff[tile], end = p.toff[tile + 1];
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
    for (int64_t c = 0; c < ts; ++c) pxs[c] = scalar_t(x0 + c) + scalar_t(0.5);

    scalar_t* UA_RESTRICT Lmx = lanes;
    scalar_t* UA_RESTRICT Lmy = lanes + ts;
    scalar_t* UA_RESTRICT La = lanes + 2 * ts;
    scalar_t* UA_RESTRICT Lb = lanes + 3 * ts;
    scalar_t* UA_RESTRICT Lc = lanes + 4 * ts;
    scalar_t* UA_RESTRICT Lo = lanes + 5 * ts;
    scalar_t* UA_RESTRICT Lf = lanes + 6 * ts;  // [C][ts]

    for (int64_t kk = maxlast - 1; kk >= 0; --kk) {
      const int64_t k = begin + kk;
      const int64_t g = p.gids[k];
      const int32_t* gi = p.ginfo + g * G_NINFO;
      const int64_t r0 = std::max<int64_t>(gi[G_RLO] - y0, 0), r1 = std::min<int64_t>(gi[G_RHI] - y0, nrows - 1);
      const scalar_t mx = p.means2d[2 * g], my = p.means2d[2 * g + 1];
      const scalar_t ca = p.conics[3 * g], cb = p.conics[3 * g + 1], cc = p.conics[3 * g + 2];
      const scalar_t op = p.opacities[g];
      const scalar_t* UA_RESTRICT f = p.features + g * C;
      const scalar_t kf = scalar_t(kk);
      bool touched = false;
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
        for (int64_t c = 0; c < ts; ++c) {
          const scalar_t dx = pxs[c] - mx;
          const scalar_t power = scalar_t(-0.5) * ((ca * dx) * dx + cdy2) - (cb * dx) * dy;
          const scalar_t G = ua_exp(power);
          const scalar_t alpha_raw = op * G;
          const scalar_t alpha = alpha_raw < kAlphaMax ? alpha_raw : kAlphaMax;
          const bool act = (kf < last[c]) & (power <= scalar_t(0)) & (alpha >= kAlphaMin);
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
      if (touched) {
        const int64_t wx = gi[G_TX1] - gi[G_TX0] + 1;
        const int64_t row = p.gstart[g] + (tyi - gi[G_TY0]) * wx + (txi - gi[G_TX0]);
        scalar_t* UA_RESTRICT dst = pair_grads + row * NG;
        for (int64_t q = 0; q < NG; ++q) {
          scalar_t s = 0;
          for (int64_t c = 0; c < ts; ++c) s += lanes[q * ts + c];
          dst[q] = s;
        }
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

void check_common(const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& features,
                  const at::Tensor& opacities, int64_t width, int64_t height, int64_t tile_size) {
  TORCH_CHECK(means2d.defined() && (means2d.scalar_type() == at::kFloat || means2d.scalar_type() == at::kDouble),
              "composite_cpu: `means2d` must be float32 or float64");
  TORCH_CHECK(width > 0 && height > 0, "composite_cpu: width and height must be > 0, got ", width, "x", height);
  TORCH_CHECK(width < (1 << 24) && height < (1 << 24), "composite_cpu: image too large");
  TORCH_CHECK(tile_size >= 1 && tile_size <= 64, "composite_cpu: tile_size must be in [1, 64], got ", tile_size);
  const auto dt = means2d.scalar_type();
  check_tensor(means2d, "means2d", dt, {-1, 2});
  const int64_t N = means2d.size(0);
  TORCH_CHECK(N < std::numeric_limits<int32_t>::max(), "composite_cpu: too many Gaussians");
  check_tensor(conics, "conics", dt, {N, 3});
  check_tensor(features, "features", dt, {N, -1});
  TORCH_CHECK(features.size(1) >= 1, "composite_cpu: `features` needs at least one channel");
  check_tensor(opacities, "opacities", dt, {N});
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
  check_common(means2d, conics, features, opacities, width, height, tile_size);
  const auto dt = means2d.scalar_type();
  const int64_t N = means2d.size(0), C = features.size(1);
  check_tensor(depths, "depths", dt, {N});
  check_tensor(extents, "extents", dt, {N, 2});
  check_tensor(visible, "visible", at::kBool, {N});
  const int64_t ts = tile_size, ntx = (width + ts - 1) / ts, nty = (height + ts - 1) / ts;

  at::Tensor out = at::empty({height, width, C}, means2d.options());
  at::Tensor T = at::empty({height, width}, means2d.options());
  at::Tensor last = at::empty({height, width}, means2d.options().dtype(at::kInt));
  Binning B;
  AT_DISPATCH_FLOATING_TYPES(dt, "ua3dtalk_composite_forward", [&] {
    B = bin_gaussians<scalar_t>(means2d.data_ptr<scalar_t>(), extents.data_ptr<scalar_t>(),
                                depths.data_ptr<scalar_t>(), visible.data_ptr<bool>(), N, width, height, ts);
    Params<scalar_t> prm{means2d.data_ptr<scalar_t>(), conics.data_ptr<scalar_t>(), features.data_ptr<scalar_t>(),
                         opacities.data_ptr<scalar_t>(), B.ginfo.data_ptr<int32_t>(), B.gstart.data_ptr<int64_t>(),
                         B.tile_offsets.data_ptr<int64_t>(), B.tile_gids.data_ptr<int32_t>(),
                         width, height, C, ts, ntx};
    const std::vector<int64_t> sched = tile_schedule(prm.toff, ntx * nty);
    dispatch_shape<scalar_t>(ts, C, [&](auto TSc, auto CTc) {
      ForwardTile<scalar_t, decltype(TSc)::value, decltype(CTc)::value> fw{
          prm, out.data_ptr<scalar_t>(), T.data_ptr<scalar_t>(), last.data_ptr<int32_t>()};
      for_each_tile(sched, fw);
    });
  });
  return {out, T, last, B.tile_offsets, B.tile_gids, B.ginfo, B.gstart};
}

std::vector<at::Tensor> composite_backward(const at::Tensor& grad_out, const at::Tensor& grad_T,
                                           const at::Tensor& means2d, const at::Tensor& conics,
                                           const at::Tensor& features, const at::Tensor& opacities,
                                           const at::Tensor& T, const at::Tensor& last,
                                           const at::Tensor& tile_offsets, const at::Tensor& tile_gids,
                                           const at::Tensor& ginfo, const at::Tensor& gstart, int64_t width,
                                           int64_t height, int64_t tile_size) {
  check_common(means2d, conics, features, opacities, width, height, tile_size);
  const auto dt = means2d.scalar_type();
  const int64_t N = means2d.size(0), C = features.size(1);
  const int64_t ts = tile_size, ntx = (width + ts - 1) / ts, nty = (height + ts - 1) / ts;
  check_tensor(grad_out, "grad_out", dt, {height, width, C});
  check_tensor(grad_T, "grad_T", dt, {height, width});
  check_tensor(T, "T", dt, {height, width});
  check_tensor(last, "last", at::kInt, {height, width});
  check_tensor(tile_offsets, "tile_offsets", at::kLong, {ntx * nty + 1});
  check_tensor(tile_gids, "tile_gids", at::kInt, {-1});
  check_tensor(ginfo, "ginfo", at::kInt, {N, G_NINFO});
  check_tensor(gstart, "gstart", at::kLong, {N + 1});
  const int64_t P = tile_gids.size(0);
  TORCH_CHECK(tile_offsets[ntx * nty].item<int64_t>() == P && gstart[N].item<int64_t>() == P,
              "composite_cpu: inconsistent saved binning state");

  const int64_t NG = 6 + C;
  at::Tensor pair = at::zeros({P, NG}, means2d.options());
  at::Tensor g_means = at::zeros({N, 2}, means2d.options());
  at::Tensor g_conics = at::zeros({N, 3}, means2d.options());
  at::Tensor g_feat = at::zeros({N, C}, means2d.options());
  at::Tensor g_op = at::zeros({N}, means2d.options());
  AT_DISPATCH_FLOATING_TYPES(dt, "ua3dtalk_composite_backward", [&] {
    Params<scalar_t> prm{means2d.data_ptr<scalar_t>(), conics.data_ptr<scalar_t>(), features.data_ptr<scalar_t>(),
                         opacities.data_ptr<scalar_t>(), ginfo.data_ptr<int32_t>(), gstart.data_ptr<int64_t>(),
                         tile_offsets.data_ptr<int64_t>(), tile_gids.data_ptr<int32_t>(),
                         width, height, C, ts, ntx};
    const std::vector<int64_t> sched = tile_schedule(prm.toff, ntx * nty);
    scalar_t* pg = pair.data_ptr<scalar_t>();
    dispatch_shape<scalar_t>(ts, C, [&](auto TSc, auto CTc) {
      BackwardTile<scalar_t, decltype(TSc)::value, decltype(CTc)::value> bw{
          prm, grad_out.data_ptr<scalar_t>(), grad_T.data_ptr<scalar_t>(), T.data_ptr<scalar_t>(),
          last.data_ptr<int32_t>(), pg};
      for_each_tile(sched, bw);
    });
    // deterministic reduction: each Gaussian sums its own pair rows in a fixed order
    const int64_t* gs = prm.gstart;
    scalar_t* gm = g_means.data_ptr<scalar_t>();
    scalar_t* gc = g_conics.data_ptr<scalar_t>();
    scalar_t* gf = g_feat.data_ptr<scalar_t>();
    scalar_t* go = g_op.data_ptr<scalar_t>();
    at::parallel_for(0, N, 256, [&](int64_t b, int64_t e) {
      std::vector<scalar_t> s(NG);
      for (int64_t i = b; i < e; ++i) {
        if (gs[i + 1] == gs[i]) continue;
        std::fill(s.begin(), s.end(), scalar_t(0));
        for (int64_t j = gs[i]; j < gs[i + 1]; ++j)
          for (int64_t q = 0; q < NG; ++q) s[q] += pg[j * NG + q];
        gm[2 * i] = s[0]; gm[2 * i + 1] = s[1];
        gc[3 * i] = s[2]; gc[3 * i + 1] = s[3]; gc[3 * i + 2] = s[4];
        go[i] = s[5];
        for (int64_t ch = 0; ch < C; ++ch) gf[i * C + ch] = s[6 + ch];
      }
    });
  });
  return {g_means, g_conics, g_feat, g_op};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &composite_forward,
        "Tile-binned front-to-back compositing. Returns (out [H,W,C], T [H,W], last [H,W] int32, "
        "tile_offsets [ntiles+1] int64, tile_gids [P] int32, ginfo [N,8] int32, gstart [N+1] int64).",
        py::arg("means2d"), py::arg("conics"), py::arg("features"), py::arg("opacities"), py::arg("depths"),
        py::arg("extents"), py::arg("visible"), py::arg("width"), py::arg("height"), py::arg("tile_size") = 16);
  m.def("backward", &composite_backward,
        "Gradients (means2d [N,2], conics [N,3], features [N,C], opacities [N]) of the forward outputs.",
        py::arg("grad_out"), py::arg("grad_T"), py::arg("means2d"), py::arg("conics"), py::arg("features"),
        py::arg("opacities"), py::arg("T"), py::arg("last"), py::arg("tile_offsets"), py::arg("tile_gids"),
        py::arg("ginfo"), py::arg("gstart"), py::arg("width"), py::arg("height"), py::arg("tile_size") = 16);
}
