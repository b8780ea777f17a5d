// Torch glue of the CUDA head kernels: argument checks, layout, allocation, current stream, a
// launch check after every kernel. Registered as the CUDA implementation of fastlpips_cpp::head_*.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "fastlpips/checks.h"
#include "glue.h"
#include "fastlpips/pixel_geometry.h"

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

at::Tensor cl(const at::Tensor& t) { return t.contiguous(at::MemoryFormat::ChannelsLast); }

PixelGeometry geom(const at::Tensor& f0, const at::Tensor& f1) {
  return make_geometry(f0.sizes().data(), f0.strides().data(), f1.strides().data());
}

void check(const at::Tensor& f0, const at::Tensor& f1) {
  FASTLPIPS_CHECK_FEATURES(f0);
  FASTLPIPS_CHECK_FEATURES(f1);
  FASTLPIPS_CHECK_SAME_SHAPE(f0, f1);
  FASTLPIPS_CHECK_DEVICE(f0, f1);
  TORCH_CHECK(f0.is_cuda(), "fastlpips: the cuda backend needs CUDA tensors, got ", f0.device());
  TORCH_CHECK(f0.scalar_type() == f1.scalar_type(), "fastlpips: f0 and f1 dtypes differ");
}

at::Tensor vec(const c10::optional<at::Tensor>& w, int64_t C, at::ScalarType acc) {
  if (!w.has_value() || !w->defined()) return at::Tensor();
  TORCH_CHECK(w->numel() == C, "fastlpips: weights must have C = ", C, " elements, got shape ", w->sizes());
  return w->reshape({C}).to(acc).contiguous();
}

const void* ptr(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

std::tuple<at::Tensor, at::Tensor, at::Tensor> head_fwd_cuda(const at::Tensor& a, const at::Tensor& b,
                                                             const c10::optional<at::Tensor>& w_in, double eps) {
  check(a, b);
  c10::cuda::CUDAGuard guard(a.device());
  at::Tensor f0 = cl(a), f1 = cl(b);
  const auto acc = at::toOpMathType(f0.scalar_type());
  auto w = vec(w_in, f0.size(1), acc);
  auto opts = f0.options().dtype(acc);
  auto m = at::empty({f0.size(0), 1, f0.size(2), f0.size(3)}, opts), r0 = at::empty_like(m), r1 = at::empty_like(m);
  FASTLPIPS_CUDA_CHECK(fastlpips_head_fwd(dtype_code(f0.scalar_type()), geom(f0, f1), f0.data_ptr(), f1.data_ptr(),
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
  const int64_t N = a.size(0), C = a.size(1), H = a.size(2), W = a.size(3);
  at::Tensor f0 = cl(a), f1 = cl(b);
  const auto acc = at::toOpMathType(f0.scalar_type());
  auto w = vec(w_in, C, acc);
  auto gm = g_in.reshape({N * H * W}).to(acc).contiguous();
  auto r0 = r0_in.reshape({N * H * W}).to(acc).contiguous(), r1 = r1_in.reshape({N * H * W}).to(acc).contiguous();
  const bool want_w = needs[2] && w.defined();
  at::Tensor g0 = needs[0] ? at::empty({N, C, H, W}, f0.options(), at::MemoryFormat::ChannelsLast) : at::empty({0}, f0.options());
  at::Tensor g1 = needs[1] ? at::empty({N, C, H, W}, f1.options(), at::MemoryFormat::ChannelsLast) : at::empty({0}, f1.options());
  at::Tensor gw = want_w ? at::zeros({C}, f0.options().dtype(acc)) : at::empty({0}, f0.options().dtype(acc));
  FASTLPIPS_CUDA_CHECK(fastlpips_head_bwd(dtype_code(f0.scalar_type()), geom(f0, f1), gm.data_ptr(), f0.data_ptr(),
                                          f1.data_ptr(), ptr(w), r0.data_ptr(), r1.data_ptr(), eps,
                                          needs[0] ? g0.data_ptr() : nullptr, needs[1] ? g1.data_ptr() : nullptr,
                                          want_w ? gw.data_ptr() : nullptr, at::cuda::getCurrentCUDAStream()));
  if (want_w) gw = gw.to(w_in->scalar_type()).reshape(w_in->sizes());
  return {g0, g1, gw};
}

at::Tensor head_jvp_cuda(const at::Tensor& a, const at::Tensor& b, const c10::optional<at::Tensor>& w_in,
                         const at::Tensor& r0_in, const at::Tensor& r1_in, const c10::optional<at::Tensor>& t0_in,
                         const c10::optional<at::Tensor>& t1_in, const c10::optional<at::Tensor>& tw_in, double eps) {
  check(a, b);
  c10::cuda::CUDAGuard guard(a.device());
  const int64_t N = a.size(0), C = a.size(1), H = a.size(2), W = a.size(3);
  at::Tensor f0 = cl(a), f1 = cl(b);
  const auto acc = at::toOpMathType(f0.scalar_type());
  auto full = [&](const c10::optional<at::Tensor>& t) {
    return (t.has_value() && t->defined()) ? cl(t->to(f0.scalar_type()).expand({N, C, H, W})) : at::Tensor();
  };
  at::Tensor t0 = full(t0_in), t1 = full(t1_in);
  auto w = vec(w_in, C, acc), tw = vec(tw_in, C, acc);
  auto r0 = r0_in.reshape({N * H * W}).to(acc).contiguous(), r1 = r1_in.reshape({N * H * W}).to(acc).contiguous();
  auto tm = at::empty({N, 1, H, W}, f0.options().dtype(acc));
  FASTLPIPS_CUDA_CHECK(fastlpips_head_jvp(dtype_code(f0.scalar_type()), geom(f0, f1), f0.data_ptr(), f1.data_ptr(),
                                          ptr(w), r0.data_ptr(), r1.data_ptr(), ptr(t0), ptr(t1), ptr(tw), eps,
                                          tm.data_ptr(), at::cuda::getCurrentCUDAStream()));
  return tm;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastlpips_cpp, CUDA, m) {
  m.impl("head_fwd", &head_fwd_cuda);
  m.impl("head_bwd", &head_bwd_cuda);
  m.impl("head_jvp", &head_jvp_cuda);
}

}  // namespace fastlpips
