// Pixel geometry passed by value to the CUDA head kernels (plain struct: host and device).
#pragma once

#include "fastlpips/macros.h"

#ifdef __CUDACC_RTC__
typedef long long int64_t;
#else
#include <stdint.h>
#endif

namespace fastlpips {
namespace cuda {

struct Geom {
  int64_t NP, C, HW, W;
  int64_t s0n, s0c, s0h, s0w, s1n, s1c, s1h, s1w;
  FASTLPIPS_HD int64_t off0(int64_t q) const { return (q / HW) * s0n + ((q % HW) / W) * s0h + (q % W) * s0w; }
  FASTLPIPS_HD int64_t off1(int64_t q) const { return (q / HW) * s1n + ((q % HW) / W) * s1h + (q % W) * s1w; }
};

}  // namespace cuda
}  // namespace fastlpips
