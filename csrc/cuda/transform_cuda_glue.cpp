// Torch glue of the CUDA transform kernels (csrc/cuda/transform_cuda.cu): device guard, current
// stream, launch check; argument checks and allocation in csrc/include/fastlpips/op_args.h (shared
// with the CPU kernels). CUDA implementation of fastlpips_native::transform_*.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "fastlpips/op_args.h"
#include "fastlpips/transform_math.h"
#include "glue.h"

extern "C" {
cudaError_t fastlpips_transform_fwd(int, fastlpips::transform::TransformShape, const void*, const void*, const void*,
                                    void*, cudaStream_t);
cudaError_t fastlpips_transform_bwd(int, fastlpips::transform::TransformShape, const void*, const void*, const void*,
                                    void*, cudaStream_t);
}

namespace fastlpips {
namespace {

using Launcher = cudaError_t (*)(int, transform::TransformShape, const void*, const void*, const void*, void*,
                                 cudaStream_t);

// Runs a launcher on checked arguments (allocated under the caller's device guard) on the current stream.
at::Tensor launch(Launcher launcher, const TransformArgs& a) {
  FASTLPIPS_CUDA_CHECK(launcher(dtype_code(a.in.scalar_type()), a.shape, a.in.data_ptr(), a.params.data_ptr(),
                                a.colors.data_ptr(), a.out.data_ptr(), at::cuda::getCurrentCUDAStream()));
  return a.result();
}

at::Tensor transform_fwd_cuda(const at::Tensor& x, const at::Tensor& params, const at::Tensor& colors, int64_t scale,
                              int64_t out_h, int64_t out_w) {
  check_cuda(x, "the cuda transform");
  c10::cuda::CUDAGuard guard(x.device());
  return launch(fastlpips_transform_fwd, transform_fwd_args(x, params, colors, scale, out_h, out_w));
}

at::Tensor transform_bwd_cuda(const at::Tensor& grad, const at::Tensor& params, const at::Tensor& colors,
                              int64_t scale, int64_t batch, int64_t in_h, int64_t in_w) {
  check_cuda(grad, "the cuda transform");
  c10::cuda::CUDAGuard guard(grad.device());
  return launch(fastlpips_transform_bwd, transform_bwd_args(grad, params, colors, scale, batch, in_h, in_w));
}

}  // namespace
}  // namespace fastlpips

TORCH_LIBRARY_IMPL(fastlpips_native, CUDA, m) {
  m.impl("transform_fwd", &fastlpips::transform_fwd_cuda);
  m.impl("transform_bwd", &fastlpips::transform_bwd_cuda);
}
