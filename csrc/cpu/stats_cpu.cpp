// DISTS' stage statistics on the CPU: per (image, channel) means, variances and covariance of two
// feature maps, the weighted similarity term per image (forward) and the feature gradients
// (backward). Math in csrc/include/fastlpips/dists_math.h, argument checks and allocation in
// csrc/include/fastlpips/op_args.h (shared with the CUDA glue).
//
// Features are read channels_last (N, H, W, C): the channel loop is innermost and contiguous. The
// forward is two passes over the pixels per (image, block of channels), summing in double (the
// means, then the centred sums: no cancellation); the backward one elementwise pass.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <tuple>
#include <vector>

#include "fastlpips/dists_math.h"
#include "fastlpips/op_args.h"

namespace fastlpips {
namespace {

constexpr int64_t kBlock = 64;  // channels per task

template <typename T>
void stats_kernel(const StatsArgs& a, const T* fx, const T* fy, at::opmath_type<T>* st) {
  using A = at::opmath_type<T>;
  const int64_t C = a.C, M = a.M, blocks = (C + kBlock - 1) / kBlock;
  const double inv_m = 1.0 / double(M);
  at::parallel_for(0, a.N * blocks, 1, [&](int64_t begin, int64_t end) {
    std::array<double, kBlock> mx, my, xx, yy, xy;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / blocks, c0 = (task % blocks) * kBlock, nc = std::min(kBlock, C - c0);
      const T* px = fx + n * M * C + c0;
      const T* py = fy + n * M * C + c0;
      std::fill(mx.begin(), mx.end(), 0.0);
      std::fill(my.begin(), my.end(), 0.0);
      for (int64_t p = 0; p < M; ++p)
        for (int64_t c = 0; c < nc; ++c) {
          mx[c] += double(A(px[p * C + c]));
          my[c] += double(A(py[p * C + c]));
        }
      for (int64_t c = 0; c < nc; ++c) {
        mx[c] *= inv_m;
        my[c] *= inv_m;
      }
      std::fill(xx.begin(), xx.end(), 0.0);
      std::fill(yy.begin(), yy.end(), 0.0);
      std::fill(xy.begin(), xy.end(), 0.0);
      for (int64_t p = 0; p < M; ++p)
        for (int64_t c = 0; c < nc; ++c) {
          const double dx = double(A(px[p * C + c])) - mx[c], dy = double(A(py[p * C + c])) - my[c];
          xx[c] += dx * dx;
          yy[c] += dy * dy;
          xy[c] += dx * dy;
        }
      for (int64_t c = 0; c < nc; ++c)
        dists::finish<A, double>(mx[c], my[c], xx[c], yy[c], xy[c], inv_m, st + (n * C + c0 + c) * dists::kStats);
    }
  });
}

template <typename T>
void grad_kernel(const StatsArgs& a, const T* fx, const T* fy, const at::opmath_type<T>* g,
                 const at::opmath_type<T>* st, double c1, double c2, T* gx, T* gy) {
  using A = at::opmath_type<T>;
  const int64_t C = a.C, M = a.M;
  const A* alpha = a.alpha.const_data_ptr<A>();
  const A* beta = a.beta.const_data_ptr<A>();
  // per image: kx, ky, k1, k2, mx, my (C each)
  std::vector<A> coef(size_t(a.N * 6 * C));
  for (int64_t n = 0; n < a.N; ++n)
    for (int64_t c = 0; c < C; ++c) {
      const A* row = st + (n * C + c) * dists::kStats;
      const auto k = dists::grad_coeffs<A>(row, alpha[c], beta[c], g[n] / A(M), A(c1), A(c2));
      A* cn = coef.data() + n * 6 * C;
      cn[c] = k.kx;
      cn[C + c] = k.ky;
      cn[2 * C + c] = k.k1;
      cn[3 * C + c] = k.k2;
      cn[4 * C + c] = row[0];
      cn[5 * C + c] = row[1];
    }
  at::parallel_for(0, a.N * M, 256, [&](int64_t begin, int64_t end) {
    for (int64_t q = begin; q < end; ++q) {  // pixel q of image q / M
      const A* cn = coef.data() + (q / M) * 6 * C;
      const T* px = fx + q * C;
      const T* py = fy + q * C;
      for (int64_t c = 0; c < C; ++c) {
        const A dx = A(px[c]) - cn[4 * C + c], dy = A(py[c]) - cn[5 * C + c];
        if (gx) gx[q * C + c] = T(dists::grad<A>(cn[c], cn[2 * C + c], cn[3 * C + c], dx, dy));
        if (gy) gy[q * C + c] = T(dists::grad<A>(cn[C + c], cn[2 * C + c], cn[3 * C + c], dy, dx));
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> stats_fwd_cpu(const at::Tensor& fx, const at::Tensor& fy, const at::Tensor& alpha,
                                                 const at::Tensor& beta, double c1, double c2) {
  const StatsArgs a = stats_args(fx, fy, alpha, beta);
  auto [t, s] = stats_fwd_outputs(a);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.fx.scalar_type(), "fastlpips_stats_fwd", [&] {
    using A = at::opmath_type<scalar_t>;
    A* st = s.mutable_data_ptr<A>();
    stats_kernel<scalar_t>(a, a.fx.const_data_ptr<scalar_t>(), a.fy.const_data_ptr<scalar_t>(), st);
    const A* al = a.alpha.const_data_ptr<A>();
    const A* be = a.beta.const_data_ptr<A>();
    A* out = t.mutable_data_ptr<A>();
    for (int64_t n = 0; n < a.N; ++n) {
      A sum = 0;
      for (int64_t c = 0; c < a.C; ++c) sum += dists::term<A>(st + (n * a.C + c) * dists::kStats, al[c], be[c], A(c1), A(c2));
      out[n] = sum;
    }
  });
  return {t, s};
}

std::tuple<at::Tensor, at::Tensor> stats_bwd_cpu(const at::Tensor& g, const at::Tensor& fx, const at::Tensor& fy,
                                                 const at::Tensor& alpha, const at::Tensor& beta, const at::Tensor& s,
                                                 double c1, double c2, std::array<bool, 2> needs) {
  const StatsArgs a = stats_args(fx, fy, alpha, beta);
  auto [gv, sv] = stats_bwd_inputs(a, g, s);
  at::Tensor gx = stats_grad_output(needs[0], a.fx), gy = stats_grad_output(needs[1], a.fy);
  if (needs[0] || needs[1]) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.fx.scalar_type(), "fastlpips_stats_bwd", [&] {
      using A = at::opmath_type<scalar_t>;
      grad_kernel<scalar_t>(a, a.fx.const_data_ptr<scalar_t>(), a.fy.const_data_ptr<scalar_t>(),
                            gv.const_data_ptr<A>(), sv.const_data_ptr<A>(), c1, c2,
                            needs[0] ? gx.mutable_data_ptr<scalar_t>() : nullptr,
                            needs[1] ? gy.mutable_data_ptr<scalar_t>() : nullptr);
    });
  }
  return {gx, gy};
}

}  // namespace
}  // namespace fastlpips

TORCH_LIBRARY_IMPL(fastlpips_native, CPU, m) {
  m.impl("stats_fwd", &fastlpips::stats_fwd_cpu);
  m.impl("stats_bwd", &fastlpips::stats_bwd_cpu);
}
