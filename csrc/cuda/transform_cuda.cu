// CUDA kernels of the E-LPIPS batched random transform, plain-pointer launchers (no torch headers;
// glue: transform_cuda_glue.cpp). Same math as the CPU kernels: csrc/include/fastlpips/transform_math.h.
// Forward: one thread per output element (a gather). Adjoint: one thread per output element
// scattering into the accumulation-typed image gradient with atomicAdd.
// dtype codes: 0 float32, 1 float64, 2 float16, 3 bfloat16.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "convert.cuh"
#include "fastlpips/transform_math.h"

namespace {

using namespace fastlpips::transform;
using fastlpips::cuda::load_acc;
using fastlpips::cuda::store_cast;

constexpr int kThreads = 256;

// Calls f(e, src, plane) for every output element e = ((n * 3 + c) * OH + i) * OW + j this thread
// owns (grid-stride loop), with its source and its output plane n * 3 + c (the index of its colour).
template <typename F>
__device__ __forceinline__ void for_each_element(const TransformShape& g, const int* params, F&& f) {
  const int64_t total = g.out_numel();
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t plane = e / (int64_t(g.OH) * g.OW);
    f(e, source(g, params, plane / 3, int(plane % 3), int((e / g.OW) % g.OH), int(e % g.OW)), plane);
  }
}

template <typename T, typename A>
__global__ void transform_fwd_kernel(TransformShape g, const T* __restrict__ x, const int* __restrict__ params,
                                     const A* __restrict__ colors, T* __restrict__ out) {
  for_each_element(g, params, [&](int64_t e, const Source& src, int64_t plane) {
    A acc = 0;
    for (int k = 0; k < g.s; ++k)
      for (int l = 0; l < g.s; ++l) acc += A(load_acc(x + src.plane + box_offset(g, src, k, l)));
    out[e] = store_cast<T, A>(acc / A(g.s * g.s) * colors[plane]);
  });
}

template <typename T, typename A>
__global__ void transform_bwd_kernel(TransformShape g, const T* __restrict__ grad, const int* __restrict__ params,
                                     const A* __restrict__ colors, A* __restrict__ gx) {
  for_each_element(g, params, [&](int64_t e, const Source& src, int64_t plane) {
    const A val = A(load_acc(grad + e)) / A(g.s * g.s) * colors[plane];
    for (int k = 0; k < g.s; ++k)
      for (int l = 0; l < g.s; ++l) atomicAdd(gx + src.plane + box_offset(g, src, k, l), val);
  });
}

// One launch of kernel over the output elements of g on stream s (in: x or grad; out: the output
// images or the image gradient).
template <typename T, typename A, typename Out>
cudaError_t launch(void (*kernel)(TransformShape, const T*, const int*, const A*, Out*), TransformShape g,
                   const void* in, const void* params, const void* colors, void* out, cudaStream_t s) {
  const int64_t total = g.out_numel();
  if (total == 0) return cudaSuccess;
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  kernel<<<unsigned(blocks < 65535 * 32 ? blocks : 65535 * 32), kThreads, 0, s>>>(
      g, static_cast<const T*>(in), static_cast<const int*>(params), static_cast<const A*>(colors),
      static_cast<Out*>(out));
  return cudaGetLastError();
}

template <typename T, typename A>
cudaError_t fwd(TransformShape g, const void* x, const void* params, const void* colors, void* out, cudaStream_t s) {
  return launch(transform_fwd_kernel<T, A>, g, x, params, colors, out, s);
}

template <typename T, typename A>
cudaError_t bwd(TransformShape g, const void* grad, const void* params, const void* colors, void* gx, cudaStream_t s) {
  return launch(transform_bwd_kernel<T, A>, g, grad, params, colors, gx, s);
}

}  // namespace

extern "C" {

// x (B, 3, H, W) contiguous; params (N, kParams) int32; colors (N, 3) accumulation type; out (N, 3, OH, OW).
cudaError_t fastlpips_transform_fwd(int dtype, TransformShape shape, const void* x, const void* params,
                                    const void* colors, void* out, cudaStream_t stream) {
  FASTLPIPS_DISPATCH_CODE(dtype, fwd, shape, x, params, colors, out, stream)
}

// grad (N, 3, OH, OW) contiguous; gx (B, 3, H, W) accumulation type, zero-filled by the caller.
cudaError_t fastlpips_transform_bwd(int dtype, TransformShape shape, const void* grad, const void* params,
                                    const void* colors, void* gx, cudaStream_t stream) {
  FASTLPIPS_DISPATCH_CODE(dtype, bwd, shape, grad, params, colors, gx, stream)
}

}  // extern "C"
