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
// gather, so the adjoint is the matching scatter-add. The kernels start every output pixel with
// source() (its input plane, (u, v) and scale offsets) and visit its s x s box with box_offset().
#pragma once

#include <cstdint>

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

// Sizes of one transform call: B input images (B, 3, H, W), N = S * B output images (N, 3, OH, OW),
// scale level s (box side).
struct TransformShape {
  int64_t B, N;
  int H, W, s, OH, OW;
  FASTLPIPS_HD int hd() const { return downscaled(H, s); }  // sides of the downscaled image
  FASTLPIPS_HD int wd() const { return downscaled(W, s); }
  FASTLPIPS_HD int64_t out_numel() const { return N * 3 * OH * OW; }
};

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

// Input plane (b, perm[c]) = (n % B) * 3 + perm[c] that channel c of output image n reads.
FASTLPIPS_HD int64_t input_plane(const TransformShape& g, const int* params, int64_t n, int c) {
  return (n % g.B) * 3 + params[n * kParams + kPerm0 + c];
}

// Where output pixel (i, j) of channel c of output image n reads: the offset of its input plane in x
// (or in the image gradient), the downscaled pixel (u, v) and the scale offsets (oy, ox) of its box
// (from the image's parameter row).
struct Source {
  int64_t plane;
  int u, v, oy, ox;
};

FASTLPIPS_HD Source source(const TransformShape& g, const int* params, int64_t n, int c, int i, int j) {
  const int* p = params + n * kParams;
  Source src;
  src.plane = input_plane(g, params, n, c) * int64_t(g.H) * g.W;
  source_pixel(p, i, j, g.hd(), g.wd(), src.u, src.v);
  src.oy = p[kOy];
  src.ox = p[kOx];
  return src;
}

// Offset inside the input plane of element (k, l), k, l < s, of the box behind src's pixel (u, v).
FASTLPIPS_HD int64_t box_offset(const TransformShape& g, const Source& src, int k, int l) {
  return int64_t(box(src.u, k, g.s, src.oy, g.H)) * g.W + box(src.v, l, g.s, src.ox, g.W);
}

}  // namespace transform
}  // namespace fastlpips
