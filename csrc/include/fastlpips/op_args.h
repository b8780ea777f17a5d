// Argument checks and allocations of the native ops, shared by their CPU implementations
// (csrc/cpu/*.cpp) and the torch glue of the CUDA kernels (csrc/cuda/*_glue.cpp): one definition of
// what each op accepts, the accumulation type it computes in (at::toOpMathType: float for half,
// bfloat16 and float, double for double) and the tensors it returns. Host only (ATen): the .cu
// files do not include it; the kernels' math is in the FASTLPIPS_HD headers beside it.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <array>
#include <tuple>

#include "fastlpips/checks.h"
#include "fastlpips/dists_math.h"
#include "fastlpips/pixel_geometry.h"
#include "fastlpips/transform_math.h"

namespace fastlpips {

// -- head ops: features f0, f1 (N, C, H, W), optional weights w (C), saved norms r0, r1 (N*H*W) --

// Two feature maps of one shape, dtype and device (each backend checks its device type itself).
inline void check_features(const at::Tensor& f0, const at::Tensor& f1) {
  FASTLPIPS_CHECK_FEATURES(f0);
  FASTLPIPS_CHECK_FEATURES(f1);
  FASTLPIPS_CHECK_SAME_SHAPE(f0, f1);
  FASTLPIPS_CHECK_DEVICE(f0, f1);
  TORCH_CHECK(f0.scalar_type() == f1.scalar_type(), "fastlpips: f0 and f1 dtypes differ: ", f0.scalar_type(), " vs ",
              f1.scalar_type());
}

// Where pixel q of f0 and f1 sits (their sizes and strides).
inline PixelGeometry geometry(const at::Tensor& f0, const at::Tensor& f1) {
  return make_geometry(f0.sizes().data(), f0.strides().data(), f1.strides().data());
}

// Optional per-channel weights (or their tangent) as a contiguous C-vector in the accumulation
// type; undefined when absent.
inline at::Tensor weight_vector(const c10::optional<at::Tensor>& w, int64_t C, at::ScalarType acc) {
  if (!w.has_value() || !w->defined()) return at::Tensor();
  TORCH_CHECK(w->numel() == C, "fastlpips: weights must have C = ", C, " elements, got shape ", w->sizes());
  return w->reshape({C}).to(acc).contiguous();
}

// A per-pixel input of f0's N*H*W pixels (the grad of m, the saved norms) as a contiguous vector in
// the accumulation type.
inline at::Tensor pixel_vector(const at::Tensor& t, const char* name, const at::Tensor& f0, at::ScalarType acc) {
  const int64_t NP = f0.size(0) * f0.size(2) * f0.size(3);
  TORCH_CHECK(t.numel() == NP, "fastlpips: ", name, " must have N*H*W = ", NP, " elements, got ", t.sizes());
  return t.reshape({NP}).to(acc).contiguous();
}

// What every head op takes besides the features, in the accumulation type of f0: the weight vector
// (undefined without weights) and, for backward and jvp, the forward's norms r0, r1 (N*H*W).
struct HeadInputs {
  at::ScalarType acc;
  at::Tensor w, r0, r1;
};

inline HeadInputs head_inputs(const at::Tensor& f0, const c10::optional<at::Tensor>& w) {
  const auto acc = at::toOpMathType(f0.scalar_type());
  return {acc, weight_vector(w, f0.size(1), acc), at::Tensor(), at::Tensor()};
}

inline HeadInputs head_inputs(const at::Tensor& f0, const c10::optional<at::Tensor>& w, const at::Tensor& r0,
                              const at::Tensor& r1) {
  HeadInputs in = head_inputs(f0, w);
  in.r0 = pixel_vector(r0, "r0", f0, in.acc);
  in.r1 = pixel_vector(r1, "r1", f0, in.acc);
  return in;
}

// A feature map as a full (N, C, H, W) channels_last tensor (an expanded batch materialized).
inline at::Tensor full_channels_last(const at::Tensor& f) { return f.contiguous(at::MemoryFormat::ChannelsLast); }

// head_jvp's optional tangent t of feature map f (full channels_last): in f's dtype and layout,
// expanded to f's size; undefined when absent.
inline at::Tensor tangent(const c10::optional<at::Tensor>& t, const at::Tensor& f) {
  if (!t.has_value() || !t->defined()) return at::Tensor();
  return full_channels_last(t->to(f.scalar_type()).expand(f.sizes()));
}

// An (N, 1, H, W) per-pixel map in the accumulation type on f0's device (head_fwd's m, r0, r1 and
// head_jvp's tangent of m).
inline at::Tensor pixel_map(const at::Tensor& f0) {
  return at::empty({f0.size(0), 1, f0.size(2), f0.size(3)}, f0.options().dtype(at::toOpMathType(f0.scalar_type())));
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor> head_fwd_outputs(const at::Tensor& f0) {
  return {pixel_map(f0), pixel_map(f0), pixel_map(f0)};
}

// head_bwd's outputs: g0 / g1 full (N, C, H, W) channels_last in the features' dtype where
// needs[0] / needs[1] (else empty); gw a zeroed C-vector in the accumulation type where needs[2]
// and the op has weights (want_w; else empty).
struct HeadGrads {
  at::Tensor g0, g1, gw;
  bool want_w;
  // The op's result: gw in the dtype and shape of the weights w.
  std::tuple<at::Tensor, at::Tensor, at::Tensor> result(const c10::optional<at::Tensor>& w) const {
    return {g0, g1, want_w ? gw.to(w->scalar_type()).reshape(w->sizes()) : gw};
  }
};

inline HeadGrads head_bwd_outputs(const at::Tensor& f0, const at::Tensor& f1, const HeadInputs& in,
                                  std::array<bool, 3> needs) {
  auto grad = [&](bool need, const at::Tensor& f) {
    return need ? at::empty(f.sizes(), f.options(), at::MemoryFormat::ChannelsLast) : at::empty({0}, f.options());
  };
  const bool want_w = needs[2] && in.w.defined();
  const auto acc = f0.options().dtype(in.acc);
  return {grad(needs[0], f0), grad(needs[1], f1), want_w ? at::zeros({f0.size(1)}, acc) : at::empty({0}, acc), want_w};
}

// -- transform ops (csrc/include/fastlpips/transform_math.h) --

// Checked, contiguous arguments of transform_fwd / transform_bwd with the output allocated: `in` is
// the images x (fwd) or the grad of the output (bwd); `out` the transformed images (fwd, in x's
// dtype) or the zero-filled image gradient in the accumulation type (bwd), which result() casts
// back to grad's dtype.
struct TransformArgs {
  transform::TransformShape shape;
  at::Tensor in, params, colors, out;
  at::Tensor result() const { return out.to(in.scalar_type()); }
};

namespace detail {

// t: (B, 3, H, W) images or (N, 3, h, w) grad, floating point.
inline void check_transform_input(const at::Tensor& t, const char* name, const char* layout) {
  TORCH_CHECK(t.dim() == 4 && t.size(1) == 3, "fastlpips: ", name, " must be ", layout, ", got ", t.sizes());
  TORCH_CHECK(t.is_floating_point(), "fastlpips: ", name, " must be floating point, got ", t.scalar_type());
}

// params / colors: one (kParams) int32 row and one (3) row per output image, on the device of
// `in`; scale >= 1; the N output images are S whole batches of the B images.
inline TransformArgs transform_args(const at::Tensor& in, const at::Tensor& params, const at::Tensor& colors,
                                    int64_t scale, const transform::TransformShape& shape) {
  TORCH_CHECK(params.device() == in.device() && colors.device() == in.device(),
              "fastlpips: the transform needs its images, params and colors on one device, got ", in.device(), ", ",
              params.device(), ", ", colors.device());
  TORCH_CHECK(params.dim() == 2 && params.size(1) == transform::kParams && params.scalar_type() == at::kInt,
              "fastlpips: transform params must be (N, ", int(transform::kParams), ") int32, got ", params.sizes(),
              " ", params.scalar_type());
  TORCH_CHECK(colors.dim() == 2 && colors.size(1) == 3, "fastlpips: colors must be (N, 3), got ", colors.sizes());
  TORCH_CHECK(params.size(0) == shape.N && colors.size(0) == shape.N, "fastlpips: params/colors hold ", params.size(0),
              "/", colors.size(0), " rows for ", shape.N, " output images");
  TORCH_CHECK(scale >= 1, "fastlpips: scale must be >= 1, got ", scale);
  TORCH_CHECK(shape.B > 0 && shape.N % shape.B == 0, "fastlpips: ", shape.N, " output images are not a multiple of ",
              shape.B, " images");
  return {shape, in.contiguous(), params.contiguous(), colors.to(at::toOpMathType(in.scalar_type())).contiguous(),
          at::Tensor()};
}

}  // namespace detail

inline TransformArgs transform_fwd_args(const at::Tensor& x, const at::Tensor& params, const at::Tensor& colors,
                                        int64_t scale, int64_t out_h, int64_t out_w) {
  detail::check_transform_input(x, "images", "(B, 3, H, W)");
  TransformArgs a = detail::transform_args(
      x, params, colors, scale,
      {x.size(0), params.size(0), int(x.size(2)), int(x.size(3)), int(scale), int(out_h), int(out_w)});
  a.out = at::empty({a.shape.N, 3, out_h, out_w}, a.in.options());
  return a;
}

inline TransformArgs transform_bwd_args(const at::Tensor& grad, const at::Tensor& params, const at::Tensor& colors,
                                        int64_t scale, int64_t batch, int64_t in_h, int64_t in_w) {
  detail::check_transform_input(grad, "grad", "(N, 3, h, w)");
  TransformArgs a = detail::transform_args(
      grad, params, colors, scale,
      {batch, grad.size(0), int(in_h), int(in_w), int(scale), int(grad.size(2)), int(grad.size(3))});
  a.out = at::zeros({batch, 3, in_h, in_w}, a.in.options().dtype(a.colors.scalar_type()));
  return a;
}

// -- DISTS stage statistics ops (csrc/include/fastlpips/dists_math.h) --

// Checked arguments of stats_fwd / stats_bwd: the features as full (N, C, H, W) channels_last
// tensors (an expanded batch materialized), alpha and beta as contiguous C-vectors in the
// accumulation type, and the image count, channels and pixels per channel.
struct StatsArgs {
  at::ScalarType acc;
  at::Tensor fx, fy, alpha, beta;
  int64_t N, C, M;
};

inline StatsArgs stats_args(const at::Tensor& fx, const at::Tensor& fy, const at::Tensor& alpha,
                            const at::Tensor& beta) {
  check_features(fx, fy);
  const auto acc = at::toOpMathType(fx.scalar_type());
  const int64_t C = fx.size(1);
  TORCH_CHECK(alpha.numel() == C && beta.numel() == C, "fastlpips: alpha and beta must have C = ", C,
              " elements, got ", alpha.sizes(), " and ", beta.sizes());
  FASTLPIPS_CHECK_DEVICE(fx, alpha);
  FASTLPIPS_CHECK_DEVICE(fx, beta);
  const int64_t M = fx.size(2) * fx.size(3);
  TORCH_CHECK(M > 0, "fastlpips: the features have no pixels: ", fx.sizes());
  return {acc, full_channels_last(fx), full_channels_last(fy), alpha.reshape({C}).to(acc).contiguous(),
          beta.reshape({C}).to(acc).contiguous(), fx.size(0), C, M};
}

// stats_fwd's outputs: t (N) and the statistics s (N, C, kStats), in the accumulation type.
inline std::tuple<at::Tensor, at::Tensor> stats_fwd_outputs(const StatsArgs& a) {
  const auto opt = a.fx.options().dtype(a.acc);
  return {at::empty({a.N}, opt), at::empty({a.N, a.C, dists::kStats}, opt)};
}

// stats_bwd's upstream gradient g (N) and saved statistics s (N, C, kStats), checked and contiguous
// in the accumulation type.
inline std::tuple<at::Tensor, at::Tensor> stats_bwd_inputs(const StatsArgs& a, const at::Tensor& g,
                                                           const at::Tensor& s) {
  TORCH_CHECK(g.numel() == a.N, "fastlpips: g must have N = ", a.N, " elements, got ", g.sizes());
  TORCH_CHECK(s.dim() == 3 && s.size(0) == a.N && s.size(1) == a.C && s.size(2) == dists::kStats,
              "fastlpips: the statistics must be (N, C, ", int(dists::kStats), ") = (", a.N, ", ", a.C, ", ",
              int(dists::kStats), "), got ", s.sizes());
  FASTLPIPS_CHECK_DEVICE(a.fx, g);
  FASTLPIPS_CHECK_DEVICE(a.fx, s);
  return {g.reshape({a.N}).to(a.acc).contiguous(), s.to(a.acc).contiguous()};
}

// A feature gradient (full channels_last, the features' dtype) where needed, else empty.
inline at::Tensor stats_grad_output(bool need, const at::Tensor& f) {
  return need ? at::empty(f.sizes(), f.options(), at::MemoryFormat::ChannelsLast) : at::empty({0}, f.options());
}

}  // namespace fastlpips
