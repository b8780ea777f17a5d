// CUDA kernels of DISTS' stage statistics, plain-pointer launchers (no torch headers; glue:
// stats_cuda_glue.cpp). Same math as the CPU kernels: csrc/include/fastlpips/dists_math.h.
// Features are full (N, C, H, W) channels_last: element (n, p, c) at n * M * C + p * C + c, M = H * W.
// Forward: one block per (image, tile of up to kTile channels); the block's threads are a
// (channel, pixel lane) grid, the channel fastest (coalesced loads), each thread striding over the
// pixels; two passes (the means, then the centred sums: no cancellation) with a deterministic
// shared-memory tree reduction over the lanes; then one block per image sums the C similarity terms
// (deterministic, no atomics). Backward: one thread per element (grid-stride).
// Sums in the accumulation type A (float for float/half/bfloat16, double for double).
// dtype codes: 0 float32, 1 float64, 2 float16, 3 bfloat16.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "convert.cuh"
#include "fastlpips/dists_math.h"

namespace {

namespace dists = fastlpips::dists;
using fastlpips::cuda::load_acc;
using fastlpips::cuda::store_cast;

constexpr int kStatsThreads = 512;  // per statistics block: tile * lanes of them busy
constexpr int kTile = 32;           // most channels per statistics block (one warp's coalesced row)
constexpr int kTermThreads = 256;   // per image in the terms kernel (a power of two)
constexpr int kThreads = 256;       // backward

// Deterministic tree sum over the lanes of red[kStatsThreads] laid out red[lane * tile + tc] for the
// first `lanes` lanes (the total lands in red[tc]); every thread of the block must call it.
template <typename A>
__device__ __forceinline__ void lane_sum(A* red, int tile, int lanes, int tc, int lane) {
  int span = 1;
  while (span < lanes) span <<= 1;
  for (int s = span >> 1; s > 0; s >>= 1) {
    if (lane < s && lane + s < lanes) red[lane * tile + tc] += red[(lane + s) * tile + tc];
    __syncthreads();
  }
}

// st (N, C, kStats): the statistics of channels [c0, c0 + tile) of image n, block n * tiles + c0 / tile.
template <typename T, typename A>
__global__ void __launch_bounds__(kStatsThreads)
    stats_kernel(const T* __restrict__ fx, const T* __restrict__ fy, int64_t C, int64_t M, int tile,
                 A* __restrict__ st) {
  __shared__ A red[3][kStatsThreads];
  __shared__ A mean[2][kTile];
  const int64_t tiles = (C + tile - 1) / tile;
  const int64_t n = blockIdx.x / tiles, c0 = (blockIdx.x % tiles) * tile;
  const int lanes = kStatsThreads / tile;
  const int tc = threadIdx.x % tile, lane = threadIdx.x / tile;
  const int64_t c = c0 + tc;
  const bool active = lane < lanes && c < C;
  const T* px = fx + n * M * C + c;
  const T* py = fy + n * M * C + c;
  const A inv_m = A(1) / A(M);

  A sx = 0, sy = 0;
  if (active)
    for (int64_t p = lane; p < M; p += lanes) {
      sx += A(load_acc(px + p * C));
      sy += A(load_acc(py + p * C));
    }
  red[0][threadIdx.x] = sx;
  red[1][threadIdx.x] = sy;
  __syncthreads();
  lane_sum(red[0], tile, lanes, tc, lane);  // ends in __syncthreads
  lane_sum(red[1], tile, lanes, tc, lane);
  if (lane == 0) {
    mean[0][tc] = red[0][tc] * inv_m;
    mean[1][tc] = red[1][tc] * inv_m;
  }
  __syncthreads();
  const A mx = lane < lanes ? mean[0][tc] : A(0), my = lane < lanes ? mean[1][tc] : A(0);

  A xx = 0, yy = 0, xy = 0;
  if (active)
    for (int64_t p = lane; p < M; p += lanes) {
      const A dx = A(load_acc(px + p * C)) - mx, dy = A(load_acc(py + p * C)) - my;
      xx += dx * dx;
      yy += dy * dy;
      xy += dx * dy;
    }
  red[0][threadIdx.x] = xx;  // the means' reads of red are behind the __syncthreads above
  red[1][threadIdx.x] = yy;
  red[2][threadIdx.x] = xy;
  __syncthreads();
  lane_sum(red[0], tile, lanes, tc, lane);
  lane_sum(red[1], tile, lanes, tc, lane);
  lane_sum(red[2], tile, lanes, tc, lane);
  if (lane == 0 && c < C)
    dists::finish<A, A>(mx, my, red[0][tc], red[1][tc], red[2][tc], inv_m, st + (n * C + c) * dists::kStats);
}

// t[n] = sum_c term(st[n, c]): one block per image, a fixed-order tree sum.
template <typename A>
__global__ void __launch_bounds__(kTermThreads)
    terms_kernel(const A* __restrict__ st, const A* __restrict__ alpha, const A* __restrict__ beta, int64_t C, A c1,
                 A c2, A* __restrict__ t) {
  __shared__ A red[kTermThreads];
  const int64_t n = blockIdx.x;
  A acc = 0;
  for (int64_t c = threadIdx.x; c < C; c += kTermThreads)
    acc += dists::term<A>(st + (n * C + c) * dists::kStats, alpha[c], beta[c], c1, c2);
  red[threadIdx.x] = acc;
  __syncthreads();
  for (int s = kTermThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) t[n] = red[0];
}

// gx / gy (either may be null): full channels_last, the features' dtype.
template <typename T, typename A>
__global__ void grad_kernel(const A* __restrict__ g, const T* __restrict__ fx, const T* __restrict__ fy,
                            const A* __restrict__ alpha, const A* __restrict__ beta, const A* __restrict__ st,
                            int64_t N, int64_t C, int64_t M, A c1, A c2, T* __restrict__ gx, T* __restrict__ gy) {
  const int64_t per_image = M * C, total = N * per_image;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = e / per_image, c = e % C;
    const A* row = st + (n * C + c) * dists::kStats;
    const auto k = dists::grad_coeffs<A>(row, alpha[c], beta[c], g[n] / A(M), c1, c2);
    const A dx = A(load_acc(fx + e)) - row[0], dy = A(load_acc(fy + e)) - row[1];
    if (gx) gx[e] = store_cast<T, A>(dists::grad<A>(k.kx, k.k1, k.k2, dx, dy));
    if (gy) gy[e] = store_cast<T, A>(dists::grad<A>(k.ky, k.k1, k.k2, dy, dx));
  }
}

template <typename T, typename A>
cudaError_t fwd(int64_t N, int64_t C, int64_t M, const void* fx, const void* fy, const void* alpha, const void* beta,
                double c1, double c2, void* t, void* s, cudaStream_t stream) {
  if (N == 0) return cudaSuccess;
  if (C > 0 && M > 0) {
    const int tile = int(C < kTile ? C : kTile);  // narrow stages (C < 32): more pixel lanes instead
    const int64_t blocks = N * ((C + tile - 1) / tile);
    stats_kernel<T, A><<<unsigned(blocks), kStatsThreads, 0, stream>>>(
        static_cast<const T*>(fx), static_cast<const T*>(fy), C, M, tile, static_cast<A*>(s));
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  terms_kernel<A><<<unsigned(N), kTermThreads, 0, stream>>>(static_cast<const A*>(s), static_cast<const A*>(alpha),
                                                            static_cast<const A*>(beta), C, A(c1), A(c2),
                                                            static_cast<A*>(t));
  return cudaGetLastError();
}

template <typename T, typename A>
cudaError_t bwd(int64_t N, int64_t C, int64_t M, const void* g, const void* fx, const void* fy, const void* alpha,
                const void* beta, const void* s, double c1, double c2, void* gx, void* gy, cudaStream_t stream) {
  const int64_t total = N * C * M;
  if (total == 0 || (gx == nullptr && gy == nullptr)) return cudaSuccess;
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  grad_kernel<T, A><<<unsigned(blocks < 65535 * 32 ? blocks : 65535 * 32), kThreads, 0, stream>>>(
      static_cast<const A*>(g), static_cast<const T*>(fx), static_cast<const T*>(fy), static_cast<const A*>(alpha),
      static_cast<const A*>(beta), static_cast<const A*>(s), N, C, M, A(c1), A(c2), static_cast<T*>(gx),
      static_cast<T*>(gy));
  return cudaGetLastError();
}

}  // namespace

extern "C" {

// fx, fy (N, C, H, W) channels_last-contiguous (M = H * W pixels); alpha, beta (C) accumulation
// type; out: t (N) and s (N, C, kStats), accumulation type.
cudaError_t fastlpips_stats_fwd(int dtype, int64_t N, int64_t C, int64_t M, const void* fx, const void* fy,
                                const void* alpha, const void* beta, double c1, double c2, void* t, void* s,
                                cudaStream_t stream) {
  FASTLPIPS_DISPATCH_CODE(dtype, fwd, N, C, M, fx, fy, alpha, beta, c1, c2, t, s, stream)
}

// g (N) and s (N, C, kStats) accumulation type, contiguous; gx / gy (either may be null) like fx.
cudaError_t fastlpips_stats_bwd(int dtype, int64_t N, int64_t C, int64_t M, const void* g, const void* fx,
                                const void* fy, const void* alpha, const void* beta, const void* s, double c1,
                                double c2, void* gx, void* gy, cudaStream_t stream) {
  FASTLPIPS_DISPATCH_CODE(dtype, bwd, N, C, M, g, fx, fy, alpha, beta, s, c1, c2, gx, gy, stream)
}

}  // extern "C"
