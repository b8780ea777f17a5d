// Loads into the accumulation type and stores back, for every element type of the CUDA kernels
// (torch builds with __CUDA_NO_HALF_CONVERSIONS__, so half/bfloat16 need the intrinsics).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace fastlpips {
namespace cuda {

template <typename T> __device__ __forceinline__ float load_acc(const T* p) { return float(*p); }
template <> __device__ __forceinline__ float load_acc<__half>(const __half* p) { return __half2float(*p); }
template <> __device__ __forceinline__ float load_acc<__nv_bfloat16>(const __nv_bfloat16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ double load_acc(const double* p) { return *p; }

template <typename T, typename A> __device__ __forceinline__ T store_cast(A v) { return T(v); }
template <> __device__ __forceinline__ __half store_cast<__half, float>(float v) { return __float2half(v); }
template <> __device__ __forceinline__ __nv_bfloat16 store_cast<__nv_bfloat16, float>(float v) { return __float2bfloat16(v); }

}  // namespace cuda
}  // namespace fastlpips

// Calls FN<element type, accumulation type>(...) for a dtype code (glue.h: dtype_code).
#define FASTLPIPS_DISPATCH_CODE(code, FN, ...)                 \
  switch (code) {                                              \
    case 0: return FN<float, float>(__VA_ARGS__);              \
    case 1: return FN<double, double>(__VA_ARGS__);            \
    case 2: return FN<__half, float>(__VA_ARGS__);             \
    case 3: return FN<__nv_bfloat16, float>(__VA_ARGS__);      \
    default: return cudaErrorInvalidValue;                     \
  }
