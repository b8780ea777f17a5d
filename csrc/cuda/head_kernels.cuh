// CUDA kernels of the fused LPIPS head (no torch headers: compiled by nvcc into the extension,
// and by NVRTC at run time for the CuPy backend). One warp per pixel: lanes stride the channels
// (coalesced for channels_last features), warp shuffles reduce. Accumulation in A (float, or
// double for double features). Per-element math: fastlpips/head_math.h, shared with the CPU kernels.
#pragma once

#include "fastlpips/head_math.h"
#include "convert.cuh"
#include "fastlpips/pixel_geometry.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace fastlpips {
namespace cuda {

using Geom = PixelGeometry;


template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <typename T, typename A>
__device__ __forceinline__ void head_fwd_body(Geom g, const T* __restrict__ f0, const T* __restrict__ f1,
                                              const A* __restrict__ w, A eps, A* __restrict__ m, A* __restrict__ r0,
                                              A* __restrict__ r1) {
  const int lane = threadIdx.x & 31;
  const int64_t q = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  if (q >= g.NP) return;
  const T* a = f0 + g.off0(q);
  const T* b = f1 + g.off1(q);
  A sa = 0, sb = 0;
  for (int64_t c = lane; c < g.C; c += 32) {
    const A x = load_acc(a + c * g.s0c), y = load_acc(b + c * g.s1c);
    sa += x * x;
    sb += y * y;
  }
  const A ra = sqrt(warp_sum(sa)), rb = sqrt(warp_sum(sb));
  const A ia = head::inv_norm(ra, eps), ib = head::inv_norm(rb, eps);
  A acc = 0;
  for (int64_t c = lane; c < g.C; c += 32) {
    const A d = head::diff(A(load_acc(a + c * g.s0c)), ia, A(load_acc(b + c * g.s1c)), ib);
    acc += (w ? w[c] : A(1)) * d * d;
  }
  acc = warp_sum(acc);
  if (lane == 0) {
    m[q] = acc;
    r0[q] = ra;
    r1[q] = rb;
  }
}

// g0 / g1 (either may be null) are written channels_last-contiguous: pixel q at q * C.
template <typename T, typename A>
__device__ __forceinline__ void head_bwd_body(Geom g, const A* __restrict__ gm, const T* __restrict__ f0,
                                              const T* __restrict__ f1, const A* __restrict__ w,
                                              const A* __restrict__ r0, const A* __restrict__ r1, A eps,
                                              T* __restrict__ g0, T* __restrict__ g1, A* __restrict__ gw) {
  const int lane = threadIdx.x & 31;
  const int64_t q = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  if (q >= g.NP) return;
  const SavedPixel<T, A> p = saved_pixel(g, q, f0, f1, r0, r1, eps);
  const T *a = p.a, *b = p.b;
  const A gq = gm[q], ra = p.ra, rb = p.rb, ia = p.ia, ib = p.ib;
  A ta = 0, tb = 0;
  for (int64_t c = lane; c < g.C; c += 32) {
    const A na = A(load_acc(a + c * g.s0c)) * ia, nb = A(load_acc(b + c * g.s1c)) * ib;
    const A u = head::upstream(w ? w[c] : A(1), na - nb, gq);
    ta += u * na;
    tb += u * nb;
  }
  const A qa = head::safe_ratio(warp_sum(ta), ra), qb = head::safe_ratio(warp_sum(tb), rb);
  for (int64_t c = lane; c < g.C; c += 32) {
    const A na = A(load_acc(a + c * g.s0c)) * ia, nb = A(load_acc(b + c * g.s1c)) * ib;
    const A d = na - nb;
    const A u = head::upstream(w ? w[c] : A(1), d, gq);
    if (g0) g0[q * g.C + c] = store_cast<T, A>(head::normalize_vjp(u, na, ia, qa));
    if (g1) g1[q * g.C + c] = store_cast<T, A>(head::normalize_vjp(-u, nb, ib, -qb));
    if (gw) atomicAdd(gw + c, gq * d * d);
  }
}

// Tangents t0 / t1 (either may be null) are channels_last-contiguous full batches.
template <typename T, typename A>
__device__ __forceinline__ void head_jvp_body(Geom g, const T* __restrict__ f0, const T* __restrict__ f1,
                                              const A* __restrict__ w, const A* __restrict__ r0,
                                              const A* __restrict__ r1, const T* __restrict__ t0,
                                              const T* __restrict__ t1, const A* __restrict__ tw, A eps,
                                              A* __restrict__ tm) {
  const int lane = threadIdx.x & 31;
  const int64_t q = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  if (q >= g.NP) return;
  const SavedPixel<T, A> p = saved_pixel(g, q, f0, f1, r0, r1, eps);
  const T *a = p.a, *b = p.b;
  const A ra = p.ra, rb = p.rb, ia = p.ia, ib = p.ib;
  A pa = 0, pb = 0;
  for (int64_t c = lane; c < g.C; c += 32) {
    if (t0) pa += A(load_acc(t0 + q * g.C + c)) * A(load_acc(a + c * g.s0c)) * ia;
    if (t1) pb += A(load_acc(t1 + q * g.C + c)) * A(load_acc(b + c * g.s1c)) * ib;
  }
  const A qa = head::safe_ratio(warp_sum(pa), ra), qb = head::safe_ratio(warp_sum(pb), rb);
  A acc = 0;
  for (int64_t c = lane; c < g.C; c += 32) {
    const A na = A(load_acc(a + c * g.s0c)) * ia, nb = A(load_acc(b + c * g.s1c)) * ib;
    const A d = na - nb;
    const A dna = t0 ? head::normalize_vjp(A(load_acc(t0 + q * g.C + c)), na, ia, qa) : A(0);
    const A dnb = t1 ? head::normalize_vjp(A(load_acc(t1 + q * g.C + c)), nb, ib, qb) : A(0);
    acc += A(2) * (w ? w[c] : A(1)) * d * (dna - dnb) + (tw ? tw[c] * d * d : A(0));
  }
  acc = warp_sum(acc);
  if (lane == 0) tm[q] = acc;
}

template <typename T, typename A>
__global__ void head_fwd_kernel(Geom g, const T* f0, const T* f1, const A* w, A eps, A* m, A* r0, A* r1) {
  head_fwd_body<T, A>(g, f0, f1, w, eps, m, r0, r1);
}

template <typename T, typename A>
__global__ void head_bwd_kernel(Geom g, const A* gm, const T* f0, const T* f1, const A* w, const A* r0, const A* r1,
                                A eps, T* g0, T* g1, A* gw) {
  head_bwd_body<T, A>(g, gm, f0, f1, w, r0, r1, eps, g0, g1, gw);
}

template <typename T, typename A>
__global__ void head_jvp_kernel(Geom g, const T* f0, const T* f1, const A* w, const A* r0, const A* r1, const T* t0,
                                const T* t1, const A* tw, A eps, A* tm) {
  head_jvp_body<T, A>(g, f0, f1, w, r0, r1, t0, t1, tw, eps, tm);
}

}  // namespace cuda
}  // namespace fastlpips
