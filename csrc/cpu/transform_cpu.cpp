// E-LPIPS batched random transform on the CPU: forward (a gather per output pixel) and its
// adjoint (the scatter-add), math in csrc/include/fastlpips/transform_math.h, argument checks and
// allocation in csrc/include/fastlpips/op_args.h (shared with the CUDA glue).
//
// x (B, 3, H, W); params (N, kParams) int32; colors (N, 3) in the accumulation type; N = S * B,
// output image n comes from image n % B. The forward parallelizes over output planes; the adjoint
// over input planes (b, c), each owned by one thread, so the scatter needs no atomics.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "fastlpips/op_args.h"
#include "fastlpips/transform_math.h"

namespace fastlpips {
namespace {

using namespace transform;

template <typename T>
void forward_kernel(const TransformShape& g, const T* x, const int* params, const at::opmath_type<T>* colors,
                    T* out) {
  using A = at::opmath_type<T>;
  const A area = A(g.s * g.s);
  at::parallel_for(0, g.N * 3, 1, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {  // output plane n * 3 + c
      const int64_t n = plane / 3;
      const int c = int(plane % 3);
      const A col = colors[plane];
      T* dst = out + plane * int64_t(g.OH) * g.OW;
      for (int i = 0; i < g.OH; ++i) {
        for (int j = 0; j < g.OW; ++j) {
          const Source src = source(g, params, n, c, i, j);
          const T* in = x + src.plane;
          A acc = 0;
          for (int k = 0; k < g.s; ++k)
            for (int l = 0; l < g.s; ++l) acc += A(in[box_offset(g, src, k, l)]);
          dst[i * g.OW + j] = T(acc / area * col);
        }
      }
    }
  });
}

template <typename T>
void adjoint_kernel(const TransformShape& g, const T* grad, const int* params, const at::opmath_type<T>* colors,
                    at::opmath_type<T>* gx) {
  using A = at::opmath_type<T>;
  const A area = A(g.s * g.s);
  at::parallel_for(0, g.B * 3, 1, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {  // input plane b * 3 + c_in
      for (int64_t n = plane / 3; n < g.N; n += g.B) {
        for (int c = 0; c < 3; ++c) {
          // Only output planes (n, c) that read this input plane (so every src.plane below is its offset).
          if (input_plane(g, params, n, c) != plane) continue;
          const A col = colors[n * 3 + c];
          const T* gp = grad + (n * 3 + c) * int64_t(g.OH) * g.OW;
          for (int i = 0; i < g.OH; ++i) {
            for (int j = 0; j < g.OW; ++j) {
              const Source src = source(g, params, n, c, i, j);
              const A val = A(gp[i * g.OW + j]) / area * col;
              A* dst = gx + src.plane;
              for (int k = 0; k < g.s; ++k)
                for (int l = 0; l < g.s; ++l) dst[box_offset(g, src, k, l)] += val;
            }
          }
        }
      }
    }
  });
}

at::Tensor transform_fwd_cpu(const at::Tensor& x, const at::Tensor& params, const at::Tensor& colors, int64_t scale,
                             int64_t out_h, int64_t out_w) {
  const TransformArgs a = transform_fwd_args(x, params, colors, scale, out_h, out_w);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.in.scalar_type(), "fastlpips_transform_fwd", [&] {
    forward_kernel<scalar_t>(a.shape, a.in.const_data_ptr<scalar_t>(), a.params.const_data_ptr<int>(),
                             a.colors.const_data_ptr<at::opmath_type<scalar_t>>(), a.out.mutable_data_ptr<scalar_t>());
  });
  return a.out;
}

at::Tensor transform_bwd_cpu(const at::Tensor& grad, const at::Tensor& params, const at::Tensor& colors, int64_t scale,
                             int64_t batch, int64_t in_h, int64_t in_w) {
  const TransformArgs a = transform_bwd_args(grad, params, colors, scale, batch, in_h, in_w);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.in.scalar_type(), "fastlpips_transform_bwd", [&] {
    adjoint_kernel<scalar_t>(a.shape, a.in.const_data_ptr<scalar_t>(), a.params.const_data_ptr<int>(),
                             a.colors.const_data_ptr<at::opmath_type<scalar_t>>(),
                             a.out.mutable_data_ptr<at::opmath_type<scalar_t>>());
  });
  return a.result();
}

}  // namespace
}  // namespace fastlpips

TORCH_LIBRARY_IMPL(fastlpips_native, CPU, m) {
  m.impl("transform_fwd", &fastlpips::transform_fwd_cpu);
  m.impl("transform_bwd", &fastlpips::transform_bwd_cpu);
}
