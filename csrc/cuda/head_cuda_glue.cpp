// Torch glue of the CUDA head kernels: layout, device guard, current stream, a launch check after
// every kernel; argument checks and allocation in csrc/include/fastlpips/op_args.h (shared with the
// CPU kernels). Registered as the CUDA implementation of fastlpips_native::head_*.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "fastlpips/op_args.h"
#include "fastlpips/pixel_geometry.h"
#include "glue.h"

extern "C" {
cudaError_t fastlpips_head_fwd(int, fastlpips::PixelGeometry, const void*, const void*, const void*, double, void*,
                               void*, void*, cudaStream_t);
cudaError_t fastlpips_head_bwd(int, fastlpips::PixelGeometry, const void*, const void*, const void*, const void*,
                               const void*, const void*, double, void*, void*, void*, cudaStream_t);
cudaError_t fastlpips_head_jvp(int, fastlpips::PixelGeometry, const void*, const void*, const void*, const void*,
                               const void*, const void*, const void*, const void*, double, void*, cudaStream_t);
}

namespace fastlpips {
namespace {

void check(const at::Tensor& f0, const at::Tensor& f1) {
  check_features(f0, f1);
  check_cuda(f0, "the cuda backend");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> head_fwd_cuda(const at::Tensor& a, const at::Tensor& b,
                                                             const c10::optional<at::Tensor>& w_in, double eps) {
  check(a, b);
  c10::cuda::CUDAGuard guard(a.device());
  const at::Tensor f0 = full_channels_last(a), f1 = full_channels_last(b);
  const at::Tensor w = head_inputs(f0, w_in).w;
  auto [m, r0, r1] = head_fwd_outputs(f0);
  FASTLPIPS_CUDA_CHECK(fastlpips_head_fwd(dtype_code(f0.scalar_type()), geometry(f0, f1), f0.data_ptr(), f1.data_ptr(),
                                          ptr(w), eps, m.data_ptr(), r0.data_ptr(), r1.data_ptr(),
                                          at::cuda::getCurrentCUDAStream()));
  return {m, r0, r1};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> head_bwd_cuda(const at::Tensor& g_in, const at::Tensor& a,
                                                             const at::Tensor& b, const c10::optional<at::Tensor>& w_in,
                                                             const at::Tensor& r0_in, const at::Tensor& r1_in, double eps,
                                                             std::array<bool, 3> needs) {
  check(a, b);
  c10::cuda::CUDAGuard guard(a.device());
  const at::Tensor f0 = full_channels_last(a), f1 = full_channels_last(b);
  const HeadInputs in = head_inputs(f0, w_in, r0_in, r1_in);
  const at::Tensor gm = pixel_vector(g_in, "grad", f0, in.acc);
  const HeadGrads out = head_bwd_outputs(f0, f1, in, needs);
  FASTLPIPS_CUDA_CHECK(fastlpips_head_bwd(dtype_code(f0.scalar_type()), geometry(f0, f1), gm.data_ptr(), f0.data_ptr(),
                                          f1.data_ptr(), ptr(in.w), in.r0.data_ptr(), in.r1.data_ptr(), eps,
                                          needs[0] ? out.g0.data_ptr() : nullptr, needs[1] ? out.g1.data_ptr() : nullptr,
                                          out.want_w ? out.gw.data_ptr() : nullptr, at::cuda::getCurrentCUDAStream()));
  return out.result(w_in);
}

at::Tensor head_jvp_cuda(const at::Tensor& a, const at::Tensor& b, const c10::optional<at::Tensor>& w_in,
                         const at::Tensor& r0_in, const at::Tensor& r1_in, const c10::optional<at::Tensor>& t0_in,
                         const c10::optional<at::Tensor>& t1_in, const c10::optional<at::Tensor>& tw_in, double eps) {
  check(a, b);
  c10::cuda::CUDAGuard guard(a.device());
  const at::Tensor f0 = full_channels_last(a), f1 = full_channels_last(b);
  const at::Tensor t0 = tangent(t0_in, f0), t1 = tangent(t1_in, f1);
  const HeadInputs in = head_inputs(f0, w_in, r0_in, r1_in);
  const at::Tensor tw = weight_vector(tw_in, f0.size(1), in.acc);
  auto tm = pixel_map(f0);
  FASTLPIPS_CUDA_CHECK(fastlpips_head_jvp(dtype_code(f0.scalar_type()), geometry(f0, f1), f0.data_ptr(), f1.data_ptr(),
                                          ptr(in.w), in.r0.data_ptr(), in.r1.data_ptr(), ptr(t0), ptr(t1), ptr(tw), eps,
                                          tm.data_ptr(), at::cuda::getCurrentCUDAStream()));
  return tm;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastlpips_native, CUDA, m) {
  m.impl("head_fwd", &head_fwd_cuda);
  m.impl("head_bwd", &head_bwd_cuda);
  m.impl("head_jvp", &head_jvp_cuda);
}

}  // namespace fastlpips
