// Entry points for run-time compilation (NVRTC, the CuPy backend): extern "C" kernels with scalar
// arguments (no struct passing), one per dtype, over the same device bodies as head_cuda.cu.
#include "head_kernels.cuh"

#define FASTLPIPS_GEOM                                                                          \
  fastlpips::PixelGeometry g;                                                                      \
  g.NP = NP; g.C = C; g.HW = HW; g.W = W;                                                       \
  g.s0n = s0n; g.s0c = s0c; g.s0h = s0h; g.s0w = s0w; g.s1n = s1n; g.s1c = s1c; g.s1h = s1h; g.s1w = s1w
#define FASTLPIPS_GEOM_ARGS                                                                     \
  long long NP, long long C, long long HW, long long W, long long s0n, long long s0c, long long s0h, \
  long long s0w, long long s1n, long long s1c, long long s1h, long long s1w

#define FASTLPIPS_RTC(SUFFIX, T, A)                                                             \
  extern "C" __global__ void fastlpips_head_fwd_##SUFFIX(FASTLPIPS_GEOM_ARGS, const T* f0, const T* f1, \
                                                         const A* w, A eps, A* m, A* r0, A* r1) {        \
    FASTLPIPS_GEOM;                                                                             \
    fastlpips::cuda::head_fwd_body<T, A>(g, f0, f1, w, eps, m, r0, r1);                         \
  }                                                                                             \
  extern "C" __global__ void fastlpips_head_bwd_##SUFFIX(FASTLPIPS_GEOM_ARGS, const A* gm, const T* f0, \
                                                         const T* f1, const A* w, const A* r0, const A* r1, \
                                                         A eps, T* g0, T* g1, A* gw) {                  \
    FASTLPIPS_GEOM;                                                                             \
    fastlpips::cuda::head_bwd_body<T, A>(g, gm, f0, f1, w, r0, r1, eps, g0, g1, gw);            \
  }                                                                                             \
  extern "C" __global__ void fastlpips_head_jvp_##SUFFIX(FASTLPIPS_GEOM_ARGS, const T* f0, const T* f1, \
                                                         const A* w, const A* r0, const A* r1, const T* t0, \
                                                         const T* t1, const A* tw, A eps, A* tm) {      \
    FASTLPIPS_GEOM;                                                                             \
    fastlpips::cuda::head_jvp_body<T, A>(g, f0, f1, w, r0, r1, t0, t1, tw, eps, tm);            \
  }

FASTLPIPS_RTC(f32, float, float)
FASTLPIPS_RTC(f64, double, double)
FASTLPIPS_RTC(f16, __half, float)
FASTLPIPS_RTC(bf16, __nv_bfloat16, float)
