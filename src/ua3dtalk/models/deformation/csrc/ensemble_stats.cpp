// ua3dtalk deformation kernel: the inference (no-autograd) path of the ensemble views'
// member statistics, EnsembleMLP.stats (ua3dtalk.models.deformation.ensemble).
//
// Plain-PyTorch reference of both entry points: ua3dtalk.models.deformation.kernels
// (ensemble_stats_reference, ensemble_view_stats_reference); tests/models/test_deformation_kernels.py
// compares them pairwise. Shapes are documented at each entry point below.
//
// Floating point: -ffp-contract=off, no -ffast-math (see ua_math.h); the exponential is the
// Cody-Waite + polynomial ua_exp_clamped of ua_math.h on [-87, 88].
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include "ua_math.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

// ---------------------------------------------------------------------------------------------
// Member statistics of one block: the fused replacement of the ~12 elementwise passes of
// fused_stats._stats_block, without saved derivatives.
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
