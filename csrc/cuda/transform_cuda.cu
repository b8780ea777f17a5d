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

struct Shape {
  int64_t B, N;
  int H, W, s, OH, OW;
};

// Output element e: its parameter row, source plane offset, channel and downscaled pixel (u, v).
struct Element {
  const int* p;
  int64_t n, src;
  int c, u, v;
};

__device__ __forceinline__ Element element(const Shape& g, const int* params, int64_t e) {
  Element el;
  const int j = int(e % g.OW), i = int((e / g.OW) % g.OH);
  const int64_t plane = e / (int64_t(g.OH) * g.OW);
  el.n = plane / 3;
  el.c = int(plane % 3);
  el.p = params + el.n * kParams;
  el.src = ((el.n % g.B) * 3 + el.p[kPerm0 + el.c]) * int64_t(g.H) * g.W;
  source_pixel(el.p, i, j, downscaled(g.H, g.s), downscaled(g.W, g.s), el.u, el.v);
  return el;
}

template <typename T, typename A>
__global__ void transform_fwd_kernel(Shape g, const T* __restrict__ x, const int* __restrict__ params,
                                     const A* __restrict__ colors, T* __restrict__ out) {
  const int64_t total = g.N * 3 * g.OH * g.OW;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const Element el = element(g, params, e);
    const int* p = el.p;
    const T* src = x + el.src;
    const int u = el.u, v = el.v;
    A acc = 0;
    for (int k = 0; k < g.s; ++k) {
      const T* row = src + int64_t(box(u, k, g.s, p[kOy], g.H)) * g.W;
      for (int l = 0; l < g.s; ++l) acc += A(load_acc(row + box(v, l, g.s, p[kOx], g.W)));
    }
    out[e] = store_cast<T, A>(acc / A(g.s * g.s) * colors[el.n * 3 + el.c]);
  }
}

template <typename T, typename A>
__global__ void transform_bwd_kernel(Shape g, const T* __restrict__ grad, const int* __restrict__ params,
                                     const A* __restrict__ colors, A* __restrict__ gx) {
  const int64_t total = g.N * 3 * g.OH * g.OW;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const Element el = element(g, params, e);
    const int* p = el.p;
    A* dst = gx + el.src;
    const int u = el.u, v = el.v;
    const A val = A(load_acc(grad + e)) / A(g.s * g.s) * colors[el.n * 3 + el.c];
    for (int k = 0; k < g.s; ++k) {
      A* row = dst + int64_t(box(u, k, g.s, p[kOy], g.H)) * g.W;
      for (int l = 0; l < g.s; ++l) atomicAdd(row + box(v, l, g.s, p[kOx], g.W), val);
    }
  }
}

unsigned blocks(int64_t total) {
  const int64_t b = (total + kThreads - 1) / kThreads;
  return unsigned(b < 65535 * 32 ? b : 65535 * 32);
}

template <typename T, typename A>
cudaError_t fwd(Shape g, const void* x, const void* params, const void* colors, void* out, cudaStream_t s) {
  const int64_t total = g.N * 3 * g.OH * g.OW;
  if (total == 0) return cudaSuccess;
  transform_fwd_kernel<T, A><<<blocks(total), kThreads, 0, s>>>(
      g, static_cast<const T*>(x), static_cast<const int*>(params), static_cast<const A*>(colors), static_cast<T*>(out));
  return cudaGetLastError();
}

template <typename T, typename A>
cudaError_t bwd(Shape g, const void* grad, const void* params, const void* colors, void* gx, cudaStream_t s) {
  const int64_t total = g.N * 3 * g.OH * g.OW;
  if (total == 0) return cudaSuccess;
  transform_bwd_kernel<T, A><<<blocks(total), kThreads, 0, s>>>(
      g, static_cast<const T*>(grad), static_cast<const int*>(params), static_cast<const A*>(colors), static_cast<A*>(gx));
  return cudaGetLastError();
}

}  // namespace

extern "C" {

// x (B, 3, H, W) contiguous; params (N, kParams) int32; colors (N, 3) accumulation type; out (N, 3, OH, OW).
cudaError_t fastlpips_transform_fwd(int dtype, int64_t B, int64_t N, int H, int W, int s, int OH, int OW,
                                    const void* x, const void* params, const void* colors, void* out,
                                    cudaStream_t stream) {
  FASTLPIPS_DISPATCH_CODE(dtype, fwd, Shape{B, N, H, W, s, OH, OW}, x, params, colors, out, stream)
}

// grad (N, 3, OH, OW) contiguous; gx (B, 3, H, W) accumulation type, zero-filled by the caller.
cudaError_t fastlpips_transform_bwd(int dtype, int64_t B, int64_t N, int H, int W, int s, int OH, int OW,
                                    const void* grad, const void* params, const void* colors, void* gx,
                                    cudaStream_t stream) {
  FASTLPIPS_DISPATCH_CODE(dtype, bwd, Shape{B, N, H, W, s, OH, OW}, grad, params, colors, gx, stream)
}

}  // extern "C"
