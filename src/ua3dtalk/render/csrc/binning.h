// ua3dtalk CPU compositing kernel, part 1: tile binning and the tile schedule (included by
// composite.cpp inside its anonymous namespace; see the layout notes at the top of composite.cpp).
#pragma once

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

namespace {


// Loops cheaper than this many elements run on one thread: a fork/join costs more than it saves
// (and on a busy machine a join can wait for a descheduled thread).
constexpr int64_t kSmallGrain = 32768;

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

}  // namespace
