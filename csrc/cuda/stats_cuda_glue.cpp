// Torch glue of the CUDA stage-statistics kernels (csrc/cuda/stats_cuda.cu): device guard, current
// stream, launch check; argument checks and allocation in csrc/include/fastlpips/op_args.h (shared
// with the CPU kernels, csrc/cpu/stats_cpu.cpp). CUDA implementation of fastlpips_native::stats_*.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <array>
#include <tuple>

#include "fastlpips/op_args.h"
#include "glue.h"

extern "C" {
cudaError_t fastlpips_stats_fwd(int, int64_t, int64_t, int64_t, const void*, const void*, const void*, const void*,
                                double, double, void*, void*, cudaStream_t);
cudaError_t fastlpips_stats_bwd(int, int64_t, int64_t, int64_t, const void*, const void*, const void*, const void*,
                                const void*, const void*, double, double, void*, void*, cudaStream_t);
}

namespace fastlpips {
namespace {

std::tuple<at::Tensor, at::Tensor> stats_fwd_cuda(const at::Tensor& fx, const at::Tensor& fy, const at::Tensor& alpha,
                                                  const at::Tensor& beta, double c1, double c2) {
  check_cuda(fx, "the cuda statistics");
  c10::cuda::CUDAGuard guard(fx.device());
  const StatsArgs a = stats_args(fx, fy, alpha, beta);
  auto [t, s] = stats_fwd_outputs(a);
  FASTLPIPS_CUDA_CHECK(fastlpips_stats_fwd(dtype_code(a.fx.scalar_type()), a.N, a.C, a.M, a.fx.data_ptr(),
                                           a.fy.data_ptr(), a.alpha.data_ptr(), a.beta.data_ptr(), c1, c2,
                                           t.data_ptr(), s.data_ptr(), at::cuda::getCurrentCUDAStream()));
  return {t, s};
}

std::tuple<at::Tensor, at::Tensor> stats_bwd_cuda(const at::Tensor& g, const at::Tensor& fx, const at::Tensor& fy,
                                                  const at::Tensor& alpha, const at::Tensor& beta,
                                                  const at::Tensor& s, double c1, double c2,
                                                  std::array<bool, 2> needs) {
  check_cuda(fx, "the cuda statistics");
  c10::cuda::CUDAGuard guard(fx.device());
  const StatsArgs a = stats_args(fx, fy, alpha, beta);
  auto [gv, sv] = stats_bwd_inputs(a, g, s);
  at::Tensor gx = stats_grad_output(needs[0], a.fx), gy = stats_grad_output(needs[1], a.fy);
  if (needs[0] || needs[1])
    FASTLPIPS_CUDA_CHECK(fastlpips_stats_bwd(dtype_code(a.fx.scalar_type()), a.N, a.C, a.M, gv.data_ptr(),
                                             a.fx.data_ptr(), a.fy.data_ptr(), a.alpha.data_ptr(), a.beta.data_ptr(),
                                             sv.data_ptr(), c1, c2, needs[0] ? gx.data_ptr() : nullptr,
                                             needs[1] ? gy.data_ptr() : nullptr, at::cuda::getCurrentCUDAStream()));
  return {gx, gy};
}

}  // namespace
}  // namespace fastlpips

TORCH_LIBRARY_IMPL(fastlpips_native, CUDA, m) {
  m.impl("stats_fwd", &fastlpips::stats_fwd_cuda);
  m.impl("stats_bwd", &fastlpips::stats_bwd_cuda);
}
