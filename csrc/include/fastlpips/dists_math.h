// Per-(image, channel) math of DISTS' stage statistics, shared by the C++ CPU kernels
// (csrc/cpu/stats_cpu.cpp) and the CUDA kernels (csrc/cuda/stats_cuda.cu): the CPU tests exercise
// exactly what the GPU runs.
//
// For one channel of one image, with the M pixels' means mx, my, variances vx, vy and covariance
// cxy (population statistics, the layout of one statistics row: kStats values in that order):
//   S1 = (2 mx my + c1) / B,  B = mx^2 + my^2 + c1;   S2 = (2 cxy + c2) / Q,  Q = vx + vy + c2
//   term = alpha S1 + beta S2
// Backward with g = dL/dt (the image's summed term), dx = fx - mx, dy = fy - my:
//   dL/dfx = kx + k1 dx + k2 dy,  dL/dfy = ky + k1 dy + k2 dx,
//   kx = g/M alpha 2 (my - S1 mx) / B,  ky = g/M alpha 2 (mx - S1 my) / B,
//   k1 = -2 g/M beta S2 / Q,  k2 = 2 g/M beta / Q.
#pragma once

#include "fastlpips/macros.h"

namespace fastlpips {
namespace dists {

// mx, my, vx, vy, cxy
constexpr int kStats = 5;

template <typename A>
struct Similarity {
  A s1, b, s2, q;
};

template <typename A>
FASTLPIPS_HD Similarity<A> similarity(const A* st, A c1, A c2) {
  const A b = st[0] * st[0] + st[1] * st[1] + c1;
  const A q = st[2] + st[3] + c2;
  return {(A(2) * st[0] * st[1] + c1) / b, b, (A(2) * st[4] + c2) / q, q};
}

// alpha S1 + beta S2 of one statistics row.
template <typename A>
FASTLPIPS_HD A term(const A* st, A alpha, A beta, A c1, A c2) {
  const Similarity<A> s = similarity(st, c1, c2);
  return alpha * s.s1 + beta * s.s2;
}

// Statistics from the sums of one channel: sx, sy (means pass) and the centred sums dxx, dyy, dxy.
template <typename A, typename S>
FASTLPIPS_HD void finish(S mean_x, S mean_y, S dxx, S dyy, S dxy, S inv_m, A* st) {
  st[0] = A(mean_x);
  st[1] = A(mean_y);
  st[2] = A(dxx * inv_m);
  st[3] = A(dyy * inv_m);
  st[4] = A(dxy * inv_m);
}

template <typename A>
struct GradCoeffs {
  A kx, ky, k1, k2;
};

// The coefficients of dL/dfx, dL/dfy for one (image, channel) (gm = g / M).
template <typename A>
FASTLPIPS_HD GradCoeffs<A> grad_coeffs(const A* st, A alpha, A beta, A gm, A c1, A c2) {
  const Similarity<A> s = similarity(st, c1, c2);
  const A a2 = A(2) * gm * alpha / s.b;
  const A k2 = A(2) * gm * beta / s.q;
  return {a2 * (st[1] - s.s1 * st[0]), a2 * (st[0] - s.s1 * st[1]), -k2 * s.s2, k2};
}

// dL/dfx (or, with the roles of x and y swapped, dL/dfy) at one element.
template <typename A>
FASTLPIPS_HD A grad(A k0, A k1, A k2, A d_self, A d_other) {
  return k0 + k1 * d_self + k2 * d_other;
}

}  // namespace dists
}  // namespace fastlpips
