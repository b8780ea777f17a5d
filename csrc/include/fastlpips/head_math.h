// Per-element math of the fused LPIPS head, shared by the C++ CPU kernels (csrc/cpu/head_cpu.cpp)
// and the CUDA kernels (csrc/cuda/head_cuda.cu): the CPU tests exercise exactly what the GPU runs.
//
// For one pixel with channel vectors f0, f1 (C values), weights w (or unit weights):
//   r = ||f||, i = 1 / (r + eps), n = f * i, d = n0 - n1,  m = sum_c w_c d_c^2
// Backward with g = dL/dm, u_c = 2 w_c d_c g:
//   dL/df0_c = u_c i0 - n0_c * t0 / r0,   t0 = sum_c u_c n0_c   (t0 / r0 := 0 when r0 == 0)
//   dL/df1_c = -u_c i1 + n1_c * t1 / r1,  t1 = sum_c u_c n1_c
//   dL/dw_c  = sum_pixels g d_c^2
// Forward-mode with tangents a0, a1 (per channel) and tw:
//   dn_c = a_c i - n_c <a, n> / r,  tm = sum_c 2 w_c d_c (dn0_c - dn1_c) + tw_c d_c^2
#pragma once

#include "fastlpips/macros.h"

namespace fastlpips {
namespace head {

template <typename A>
FASTLPIPS_HD A inv_norm(A r, A eps) {
  return A(1) / (r + eps);
}

// t / r, taken as 0 where r == 0: the norm's derivative term vanishes at f = 0 (the exact
// one-sided derivative of f / (||f|| + eps) there is I / eps).
template <typename A>
FASTLPIPS_HD A safe_ratio(A t, A r) {
  return r > A(0) ? t / r : A(0);
}

// d = n0 - n1 for one channel.
template <typename A>
FASTLPIPS_HD A diff(A f0, A i0, A f1, A i1) {
  return f0 * i0 - f1 * i1;
}

// u_c = 2 w_c d_c g
template <typename A>
FASTLPIPS_HD A upstream(A w, A d, A g) {
  return A(2) * w * d * g;
}

// Vector-Jacobian (and, the Jacobian being symmetric, Jacobian-vector) product of the
// normalization for one channel: v_c * i - n_c * (<v, n> / r).
template <typename A>
FASTLPIPS_HD A normalize_vjp(A v, A n, A i, A t_over_r) {
  return v * i - n * t_over_r;
}

}  // namespace head
}  // namespace fastlpips
