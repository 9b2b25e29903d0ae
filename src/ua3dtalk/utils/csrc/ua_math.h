// Floating-point helpers shared by the project's C++ kernels (render/csrc/composite.cpp,
// models/deformation/csrc/ensemble_stats.cpp). Header-only; each kernel is its own extension.
// Both are compiled with -ffp-contract=off: fused multiply-adds happen only where UA_FMA asks.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__FMA__)
#define UA_FMA(a, b, c) std::fma((a), (b), (c))
#else
#define UA_FMA(a, b, c) ((a) * (b) + (c))
#endif

#define UA_RESTRICT __restrict__

// exp for float: a branch-free, vectorisable approximation (Cody-Waite reduction + degree-7
// Taylor polynomial, ~1-2 ulp on the range that matters).
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
