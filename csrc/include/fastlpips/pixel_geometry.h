// Pixel geometry of the fused LPIPS head, shared by the C++ CPU kernels (csrc/cpu/head_cpu.cpp),
// the CUDA kernels (csrc/cuda/head_kernels.cuh, compiled by nvcc and by NVRTC) and their glue: one
// definition of how pixel q of two (N, C, H, W) feature maps with arbitrary strides is found, and
// of the prologue every backward and jvp kernel starts with (the saved norms and their inverses).
#pragma once

#include "fastlpips/head_math.h"
#include "fastlpips/macros.h"

#ifdef __CUDACC_RTC__
typedef long long int64_t;
#else
#include <stdint.h>
#endif

namespace fastlpips {

// Pixel q in 0..NP-1 (NP = N H W) is (q / HW, (q % HW) / W, q % W); channel c of it sits at
// off0(q) + c * s0c in f0 (s1* and off1 for f1). A batch stride of 0 reads an expanded batch of 1.
struct PixelGeometry {
  int64_t NP, C, HW, W;
  int64_t s0n, s0c, s0h, s0w, s1n, s1c, s1h, s1w;
  FASTLPIPS_HD int64_t off0(int64_t q) const { return (q / HW) * s0n + ((q % HW) / W) * s0h + (q % W) * s0w; }
  FASTLPIPS_HD int64_t off1(int64_t q) const { return (q / HW) * s1n + ((q % HW) / W) * s1h + (q % W) * s1w; }
};

// From sizes (N, C, H, W) and the two maps' strides (as torch's sizes().data() / strides().data()).
FASTLPIPS_HD PixelGeometry make_geometry(const int64_t* size, const int64_t* stride0, const int64_t* stride1) {
  PixelGeometry g;
  g.NP = size[0] * size[2] * size[3];
  g.C = size[1];
  g.HW = size[2] * size[3];
  g.W = size[3];
  g.s0n = stride0[0]; g.s0c = stride0[1]; g.s0h = stride0[2]; g.s0w = stride0[3];
  g.s1n = stride1[0]; g.s1c = stride1[1]; g.s1h = stride1[2]; g.s1w = stride1[3];
  return g;
}

// One pixel as the backward and jvp kernels see it: both channel vectors and the forward's norms
// with their inverses i = 1 / (r + eps).
template <typename T, typename A>
struct SavedPixel {
  const T* a;
  const T* b;
  A ra, rb, ia, ib;
};

template <typename T, typename A>
FASTLPIPS_HD SavedPixel<T, A> saved_pixel(const PixelGeometry& g, int64_t q, const T* f0, const T* f1, const A* r0,
                                          const A* r1, A eps) {
  SavedPixel<T, A> p;
  p.a = f0 + g.off0(q);
  p.b = f1 + g.off1(q);
  p.ra = r0[q];
  p.rb = r1[q];
  p.ia = head::inv_norm(p.ra, eps);
  p.ib = head::inv_norm(p.rb, eps);
  return p;
}

}  // namespace fastlpips
