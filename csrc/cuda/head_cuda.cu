// Plain-pointer launchers of the CUDA head kernels (no torch headers). The torch glue is
// csrc/cuda/head_cuda_glue.cpp. dtype codes: 0 float32, 1 float64, 2 float16, 3 bfloat16.
#include <cuda_runtime.h>

#include "head_kernels.cuh"

namespace {

constexpr int kThreads = 256;  // 8 pixels (warps) per block

inline unsigned blocks_for(int64_t np) { return unsigned((np * 32 + kThreads - 1) / kThreads); }

template <typename T, typename A>
cudaError_t fwd(const fastlpips::PixelGeometry& g, const void* f0, const void* f1, const void* w, double eps, void* m,
                void* r0, void* r1, cudaStream_t s) {
  if (g.NP == 0) return cudaSuccess;
  fastlpips::cuda::head_fwd_kernel<T, A><<<blocks_for(g.NP), kThreads, 0, s>>>(
      g, static_cast<const T*>(f0), static_cast<const T*>(f1), static_cast<const A*>(w), A(eps),
      static_cast<A*>(m), static_cast<A*>(r0), static_cast<A*>(r1));
  return cudaGetLastError();
}

template <typename T, typename A>
cudaError_t bwd(const fastlpips::PixelGeometry& g, const void* gm, const void* f0, const void* f1, const void* w,
                const void* r0, const void* r1, double eps, void* g0, void* g1, void* gw, cudaStream_t s) {
  if (g.NP == 0) return cudaSuccess;
  fastlpips::cuda::head_bwd_kernel<T, A><<<blocks_for(g.NP), kThreads, 0, s>>>(
      g, static_cast<const A*>(gm), static_cast<const T*>(f0), static_cast<const T*>(f1), static_cast<const A*>(w),
      static_cast<const A*>(r0), static_cast<const A*>(r1), A(eps), static_cast<T*>(g0), static_cast<T*>(g1),
      static_cast<A*>(gw));
  return cudaGetLastError();
}

template <typename T, typename A>
cudaError_t jvp(const fastlpips::PixelGeometry& g, const void* f0, const void* f1, const void* w, const void* r0,
                const void* r1, const void* t0, const void* t1, const void* tw, double eps, void* tm, cudaStream_t s) {
  if (g.NP == 0) return cudaSuccess;
  fastlpips::cuda::head_jvp_kernel<T, A><<<blocks_for(g.NP), kThreads, 0, s>>>(
      g, static_cast<const T*>(f0), static_cast<const T*>(f1), static_cast<const A*>(w), static_cast<const A*>(r0),
      static_cast<const A*>(r1), static_cast<const T*>(t0), static_cast<const T*>(t1), static_cast<const A*>(tw),
      A(eps), static_cast<A*>(tm));
  return cudaGetLastError();
}

}  // namespace

extern "C" {

cudaError_t fastlpips_head_fwd(int dtype, fastlpips::PixelGeometry g, const void* f0, const void* f1, const void* w,
                               double eps, void* m, void* r0, void* r1, cudaStream_t s) {
  FASTLPIPS_DISPATCH_CODE(dtype, fwd, g, f0, f1, w, eps, m, r0, r1, s)
}

cudaError_t fastlpips_head_bwd(int dtype, fastlpips::PixelGeometry g, const void* gm, const void* f0, const void* f1,
                               const void* w, const void* r0, const void* r1, double eps, void* g0, void* g1,
                               void* gw, cudaStream_t s) {
  FASTLPIPS_DISPATCH_CODE(dtype, bwd, g, gm, f0, f1, w, r0, r1, eps, g0, g1, gw, s)
}

cudaError_t fastlpips_head_jvp(int dtype, fastlpips::PixelGeometry g, const void* f0, const void* f1, const void* w,
                               const void* r0, const void* r1, const void* t0, const void* t1, const void* tw,
                               double eps, void* tm, cudaStream_t s) {
  FASTLPIPS_DISPATCH_CODE(dtype, jvp, g, f0, f1, w, r0, r1, t0, t1, tw, eps, tm, s)
}

}  // extern "C"
