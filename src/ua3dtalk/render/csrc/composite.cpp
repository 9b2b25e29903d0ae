// ua3dtalk CPU compositing kernel: tile binning, depth sort and front-to-back alpha compositing of
// projected 2-D Gaussians, with a hand-written backward pass.
//
// Semantics are those of ua3dtalk.render.dense.composite_dense (the oracle): per pixel centre
// (c+0.5, r+0.5) and Gaussian i in front-to-back depth order (ties by index):
//   power = -0.5*(a dx^2 + c dy^2) - b dx dy,  dx = px - mx, dy = py - my
//   skipped when power > 0;  alpha = min(0.999, o*exp(power));  skipped when alpha < 1/255
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

#include "ua_math.h"
#include "binning.h"

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

// exp in the compositing: float uses ua_exp_clamped (ua_math.h), double std::exp. Only called with
// the result masked out when power > 0, so the input is clamped to [-87, 0].
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

template <typename scalar_t>
struct MaskInt {
  using type = int32_t;
};
template <>
struct MaskInt<double> {
  using type = int64_t;
};
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

// Per-thread scratch of a tile kernel: one buffer of scalars and one of auxiliary integers.
template <typename scalar_t, typename aux_t>
struct Scratch {
  std::vector<scalar_t> buf;
  std::vector<aux_t> aux;
  Scratch(int64_t n_buf, int64_t n_aux) : buf(n_buf), aux(n_aux) {}
};

template <typename scalar_t, int TS, int CT>
struct ForwardTile {
  using mask_t = typename MaskInt<scalar_t>::type;
  const Params<scalar_t>& p;
  scalar_t* out_img;  // [H,W,C]
  scalar_t* T_img;    // [H,W]
  int32_t* last_img;  // [H,W]

  using State = Scratch<scalar_t, mask_t>;  // buf: T, features, ...; aux: per-pixel alive masks
  State make_state() const {
    const int64_t ts = TS > 0 ? TS : p.ts, C = CT > 0 ? CT : p.C;
    return State(ts * ts * (C + 2) + ts, ts * ts + ts);
  }

  void operator()(State& st, int64_t tile) const {
    constexpr scalar_t kAlphaMax = scalar_t(0.999), kAlphaMin = scalar_t(1.0 / 255.0), kTMin = scalar_t(1e-4);
    const int64_t ts = TS > 0 ? TS : p.ts, C = CT > 0 ? CT : p.C, tp = ts * ts, RS = R_F + C;
    const int64_t W = p.W, H = p.H;
    const int64_t tyi = tile / p.ntx, txi = tile % p.ntx;
    const int64_t x0 = txi * ts, y0 = tyi * ts;
    const int64_t nrows = std::min(ts, H - y0), ncols = std::min(ts, W - x0);
    scalar_t* UA_RESTRICT Tb = st.buf.data();
    scalar_t* UA_RESTRICT lastb = Tb + tp;
    scalar_t* UA_RESTRICT outb = lastb + tp;  // [C][tp]
    scalar_t* UA_RESTRICT pxs = outb + C * tp;
    mask_t* UA_RESTRICT alive = st.aux.data();
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

  using State = Scratch<scalar_t, int64_t>;  // buf: per-pixel state and row sums; aux: last rank per row
  State make_state() const {
    const int64_t ts = TS > 0 ? TS : p.ts, C = CT > 0 ? CT : p.C;
    return State(ts * ts * (C + 4) + ts * (C + 7), ts);
  }

  void operator()(State& st, int64_t tile) const {
    constexpr scalar_t kAlphaMax = scalar_t(0.999), kAlphaMin = scalar_t(1.0 / 255.0);
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
    int64_t* rowmax = st.aux.data();

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
            const bool unc = act & (alpha_raw <= kAlphaMax);  // the clamp at 0.999 blocks the gradient
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
}
