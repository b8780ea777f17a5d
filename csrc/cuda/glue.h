// Shared pieces of the torch glue around the plain-pointer CUDA launchers (the argument checks
// and allocations the CPU kernels share are in csrc/include/fastlpips/op_args.h).
#pragma once

#include <ATen/ATen.h>
#include <cuda_runtime.h>

#define FASTLPIPS_CUDA_CHECK(expr)                                                                  \
  do {                                                                                              \
    cudaError_t err__ = (expr);                                                                     \
    TORCH_CHECK(err__ == cudaSuccess, "fastlpips CUDA kernel failed: ", cudaGetErrorString(err__)); \
  } while (0)

namespace fastlpips {

// Element type code of the launchers (FASTLPIPS_DISPATCH_CODE in convert.cuh).
inline int dtype_code(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return 0;
    case at::kDouble: return 1;
    case at::kHalf: return 2;
    case at::kBFloat16: return 3;
    default: TORCH_CHECK(false, "fastlpips: unsupported dtype ", t);
  }
}

// The CUDA kernels' device check (before the device guard is taken on t's device).
inline void check_cuda(const at::Tensor& t, const char* who) {
  TORCH_CHECK(t.is_cuda(), "fastlpips: ", who, " needs CUDA tensors, got ", t.device());
}

// Data pointer of an optional input (null where undefined).
inline const void* ptr(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

}  // namespace fastlpips
