// Index math of the E-LPIPS batched random transform, shared by the CPU and CUDA kernels (and
// mirrored line by line in kernels/transform.py and fastlpips/ops/transform.py).
//
// Output image n (of N = S samples x B images, sample-major: image b = n % B) shows, at pixel
// (i, j), the colour-scaled channel perm[c] of the box-downscaled, mirror-padded image b:
//
//   out[n, c, i, j] = color[n, c] / s^2 * sum_{k, l < s} x[b, perm[n, c], box(u, k, oy), box(v, l, ox)]
//
// where (u, v) = source_pixel(i, j) undoes, in reverse order, the swap, the flip and the offset
// padding (steps 4, 3, 2 of the release), and box() the scale padding (step 1). Every step is a
// gather, so the adjoint is the matching scatter-add.
#pragma once

#include "fastlpips/macros.h"

namespace fastlpips {
namespace transform {

constexpr int kMaxOffset = 7;
// Integer parameters of one output image, one int32 row each.
enum Param { kDy = 0, kDx, kFlip, kSwap, kOy, kOx, kPerm0, kPerm1, kPerm2, kParams };

// torch 'reflect' padding (mirror without repeating the edge), for |overshoot| < n.
FASTLPIPS_HD int reflect(int i, int n) { return i < 0 ? -i : (i >= n ? 2 * (n - 1) - i : i); }

// Side of the downscaled image: ((s - 1) + n + (s - 1)) // s.
FASTLPIPS_HD int downscaled(int n, int s) { return (2 * (s - 1) + n) / s; }

// Pixel (u, v) of the downscaled image that output pixel (i, j) shows.
FASTLPIPS_HD void source_pixel(const int* p, int i, int j, int hd, int wd, int& u, int& v) {
  int a = p[kSwap] ? j : i;
  int b = p[kSwap] ? i : j;
  const int flip = p[kFlip];  // 0 flip W, 1 flip H, 2 both, 3 none
  if (flip == 1 || flip == 2) a = hd + kMaxOffset - 1 - a;
  if (flip == 0 || flip == 2) b = wd + kMaxOffset - 1 - b;
  u = reflect(a - (kMaxOffset - p[kDy]), hd);
  v = reflect(b - (kMaxOffset - p[kDx]), wd);
}

// Input row (or column) k of the s x s box behind downscaled row u (scale offset o, input side n).
FASTLPIPS_HD int box(int u, int k, int s, int o, int n) { return reflect(u * s + k - o, n); }

}  // namespace transform
}  // namespace fastlpips
