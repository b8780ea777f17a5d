// Torch glue of the CUDA transform kernels (csrc/cuda/transform_cuda.cu): checks, allocation,
// device guard, current stream, launch check. CUDA implementation of fastlpips_cpp::transform_*.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "fastlpips/transform_math.h"
#include "glue.h"

extern "C" {
cudaError_t fastlpips_transform_fwd(int, int64_t, int64_t, int, int, int, int, int, const void*, const void*,
                                    const void*, void*, cudaStream_t);
cudaError_t fastlpips_transform_bwd(int, int64_t, int64_t, int, int, int, int, int, const void*, const void*,
                                    const void*, void*, cudaStream_t);
}

namespace fastlpips {
namespace {

void check_params(const at::Tensor& t, const at::Tensor& params, const at::Tensor& colors, int64_t scale) {
  TORCH_CHECK(t.is_cuda() && params.device() == t.device() && colors.device() == t.device(),
              "fastlpips: the cuda transform needs images, params and colors on one CUDA device");
  TORCH_CHECK(params.dim() == 2 && params.size(1) == transform::kParams && params.scalar_type() == at::kInt,
              "fastlpips: transform params must be (N, ", int(transform::kParams), ") int32, got ", params.sizes());
  TORCH_CHECK(colors.dim() == 2 && colors.size(1) == 3 && colors.size(0) == params.size(0),
              "fastlpips: colors must be (N, 3), got ", colors.sizes());
  TORCH_CHECK(scale >= 1, "fastlpips: scale must be >= 1, got ", scale);
}

at::Tensor transform_fwd_cuda(const at::Tensor& x_, const at::Tensor& params_, const at::Tensor& colors_,
                              int64_t scale, int64_t out_h, int64_t out_w) {
  TORCH_CHECK(x_.dim() == 4 && x_.size(1) == 3, "fastlpips: images must be (B, 3, H, W), got ", x_.sizes());
  check_params(x_, params_, colors_, scale);
  c10::cuda::CUDAGuard guard(x_.device());
  const int64_t B = x_.size(0), N = params_.size(0);
  TORCH_CHECK(B > 0 && N % B == 0, "fastlpips: ", N, " output images are not a multiple of ", B, " images");
  auto x = x_.contiguous();
  auto params = params_.contiguous();
  auto colors = colors_.to(at::toOpMathType(x.scalar_type())).contiguous();
  auto out = at::empty({N, 3, out_h, out_w}, x.options());
  FASTLPIPS_CUDA_CHECK(fastlpips_transform_fwd(dtype_code(x.scalar_type()), B, N, int(x.size(2)), int(x.size(3)), int(scale), int(out_h),
                                   int(out_w), x.data_ptr(), params.data_ptr(), colors.data_ptr(), out.data_ptr(),
                                   at::cuda::getCurrentCUDAStream()));
  return out;
}

at::Tensor transform_bwd_cuda(const at::Tensor& grad_, const at::Tensor& params_, const at::Tensor& colors_,
                              int64_t scale, int64_t batch, int64_t in_h, int64_t in_w) {
  TORCH_CHECK(grad_.dim() == 4 && grad_.size(1) == 3, "fastlpips: grad must be (N, 3, h, w), got ", grad_.sizes());
  check_params(grad_, params_, colors_, scale);
  c10::cuda::CUDAGuard guard(grad_.device());
  const int64_t N = grad_.size(0);
  TORCH_CHECK(batch > 0 && N % batch == 0, "fastlpips: ", N, " output images are not a multiple of ", batch);
  auto grad = grad_.contiguous();
  auto params = params_.contiguous();
  const auto acc = at::toOpMathType(grad.scalar_type());
  auto colors = colors_.to(acc).contiguous();
  auto gx = at::zeros({batch, 3, in_h, in_w}, grad.options().dtype(acc));
  FASTLPIPS_CUDA_CHECK(fastlpips_transform_bwd(dtype_code(grad.scalar_type()), batch, N, int(in_h), int(in_w), int(scale),
                                   int(grad.size(2)), int(grad.size(3)), grad.data_ptr(), params.data_ptr(),
                                   colors.data_ptr(), gx.data_ptr(), at::cuda::getCurrentCUDAStream()));
  return gx.to(grad.scalar_type());
}

}  // namespace
}  // namespace fastlpips

TORCH_LIBRARY_IMPL(fastlpips_cpp, CUDA, m) {
  m.impl("transform_fwd", &fastlpips::transform_fwd_cuda);
  m.impl("transform_bwd", &fastlpips::transform_bwd_cuda);
}
