// Shared pieces of the torch glue around the plain-pointer CUDA launchers.
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

}  // namespace fastlpips
