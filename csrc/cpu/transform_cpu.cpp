// E-LPIPS batched random transform on the CPU: forward (a gather per output pixel) and its
// adjoint (the scatter-add), math in csrc/include/fastlpips/transform_math.h.
//
// x (B, 3, H, W); params (N, kParams) int32; colors (N, 3) in the accumulation type; N = S * B,
// output image n comes from image n % B. The forward parallelizes over output planes; the adjoint
// over input planes (b, c), each owned by one thread, so the scatter needs no atomics.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "fastlpips/checks.h"
#include "fastlpips/transform_math.h"

namespace fastlpips {
namespace {

using namespace transform;

void check_params(const at::Tensor& params, const at::Tensor& colors, int64_t n, int64_t scale) {
  TORCH_CHECK(params.dim() == 2 && params.size(1) == kParams && params.scalar_type() == at::kInt,
              "fastlpips: transform params must be (N, ", int(kParams), ") int32, got ", params.sizes(), " ",
              params.scalar_type());
  TORCH_CHECK(colors.dim() == 2 && colors.size(1) == 3, "fastlpips: colors must be (N, 3), got ", colors.sizes());
  TORCH_CHECK(params.size(0) == n && colors.size(0) == n, "fastlpips: params/colors hold ", params.size(0), "/",
              colors.size(0), " rows for ", n, " output images");
  TORCH_CHECK(scale >= 1, "fastlpips: scale must be >= 1, got ", scale);
}

template <typename T>
void forward_kernel(const T* x, const int* params, const at::opmath_type<T>* colors, T* out, int64_t B, int64_t N,
                    int H, int W, int s, int OH, int OW) {
  using A = at::opmath_type<T>;
  const int hd = downscaled(H, s), wd = downscaled(W, s);
  const A area = A(s * s);
  at::parallel_for(0, N * 3, 1, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t n = plane / 3;
      const int c = int(plane % 3);
      const int* p = params + n * kParams;
      const T* src = x + ((n % B) * 3 + p[kPerm0 + c]) * int64_t(H) * W;
      const A col = colors[n * 3 + c];
      T* dst = out + plane * int64_t(OH) * OW;
      for (int i = 0; i < OH; ++i) {
        for (int j = 0; j < OW; ++j) {
          int u, v;
          source_pixel(p, i, j, hd, wd, u, v);
          A acc = 0;
          for (int k = 0; k < s; ++k) {
            const T* row = src + int64_t(box(u, k, s, p[kOy], H)) * W;
            for (int l = 0; l < s; ++l) acc += A(row[box(v, l, s, p[kOx], W)]);
          }
          dst[i * OW + j] = T(acc / area * col);
        }
      }
    }
  });
}

template <typename T>
void adjoint_kernel(const T* grad, const int* params, const at::opmath_type<T>* colors, at::opmath_type<T>* gx,
                    int64_t B, int64_t N, int H, int W, int s, int OH, int OW) {
  using A = at::opmath_type<T>;
  const int hd = downscaled(H, s), wd = downscaled(W, s);
  const A area = A(s * s);
  at::parallel_for(0, B * 3, 1, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t b = plane / 3;
      const int c_in = int(plane % 3);
      A* dst = gx + plane * int64_t(H) * W;
      for (int64_t n = b; n < N; n += B) {
        const int* p = params + n * kParams;
        for (int c = 0; c < 3; ++c) {
          if (p[kPerm0 + c] != c_in) continue;
          const A col = colors[n * 3 + c];
          const T* g = grad + (n * 3 + c) * int64_t(OH) * OW;
          for (int i = 0; i < OH; ++i) {
            for (int j = 0; j < OW; ++j) {
              int u, v;
              source_pixel(p, i, j, hd, wd, u, v);
              const A val = A(g[i * OW + j]) / area * col;
              for (int k = 0; k < s; ++k) {
                A* row = dst + int64_t(box(u, k, s, p[kOy], H)) * W;
                for (int l = 0; l < s; ++l) row[box(v, l, s, p[kOx], W)] += val;
              }
            }
          }
        }
      }
    }
  });
}

at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

at::Tensor transform_fwd_cpu(const at::Tensor& x_, const at::Tensor& params_, const at::Tensor& colors_,
                             int64_t scale, int64_t out_h, int64_t out_w) {
  TORCH_CHECK(x_.dim() == 4 && x_.size(1) == 3, "fastlpips: images must be (B, 3, H, W), got ", x_.sizes());
  TORCH_CHECK(x_.is_floating_point(), "fastlpips: images must be floating point, got ", x_.scalar_type());
  const int64_t B = x_.size(0), N = params_.size(0);
  check_params(params_, colors_, N, scale);
  TORCH_CHECK(B > 0 && N % B == 0, "fastlpips: ", N, " output images are not a multiple of ", B, " images");
  auto x = x_.contiguous();
  auto params = params_.contiguous();
  auto colors = colors_.to(acc_type(x.scalar_type())).contiguous();
  auto out = at::empty({N, 3, out_h, out_w}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastlpips_transform_fwd", [&] {
    forward_kernel<scalar_t>(x.const_data_ptr<scalar_t>(), params.const_data_ptr<int>(),
                             colors.const_data_ptr<at::opmath_type<scalar_t>>(), out.mutable_data_ptr<scalar_t>(), B,
                             N, int(x.size(2)), int(x.size(3)), int(scale), int(out_h), int(out_w));
  });
  return out;
}

at::Tensor transform_bwd_cpu(const at::Tensor& grad_, const at::Tensor& params_, const at::Tensor& colors_,
                             int64_t scale, int64_t batch, int64_t in_h, int64_t in_w) {
  TORCH_CHECK(grad_.dim() == 4 && grad_.size(1) == 3, "fastlpips: grad must be (N, 3, h, w), got ", grad_.sizes());
  const int64_t N = grad_.size(0);
  check_params(params_, colors_, N, scale);
  TORCH_CHECK(batch > 0 && N % batch == 0, "fastlpips: ", N, " output images are not a multiple of ", batch);
  auto grad = grad_.contiguous();
  auto params = params_.contiguous();
  const auto acc = acc_type(grad.scalar_type());
  auto colors = colors_.to(acc).contiguous();
  auto gx = at::zeros({batch, 3, in_h, in_w}, grad.options().dtype(acc));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "fastlpips_transform_bwd", [&] {
    adjoint_kernel<scalar_t>(grad.const_data_ptr<scalar_t>(), params.const_data_ptr<int>(),
                             colors.const_data_ptr<at::opmath_type<scalar_t>>(),
                             gx.mutable_data_ptr<at::opmath_type<scalar_t>>(), batch, N, int(in_h), int(in_w),
                             int(scale), int(grad.size(2)), int(grad.size(3)));
  });
  return gx.to(grad.scalar_type());
}

}  // namespace
}  // namespace fastlpips

TORCH_LIBRARY_IMPL(fastlpips_cpp, CPU, m) {
  m.impl("transform_fwd", &fastlpips::transform_fwd_cpu);
  m.impl("transform_bwd", &fastlpips::transform_bwd_cpu);
}
