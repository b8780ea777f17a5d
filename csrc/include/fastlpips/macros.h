// Shared macros for host and device code: one header so the CPU and CUDA kernels compile the
// same per-element math (see STYLE.md, "keep the math shared").
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FASTLPIPS_HD __host__ __device__ __forceinline__
#else
#define FASTLPIPS_HD inline
#endif
