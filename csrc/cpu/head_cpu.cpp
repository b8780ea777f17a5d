// Fused LPIPS head on the CPU: channel-normalize, difference, weight, reduce over channels, for
// every pixel in one pass (forward), plus its backward and forward-mode (jvp) products.
// Math: csrc/include/fastlpips/head_math.h (shared with the CUDA kernels); argument checks and
// allocation: csrc/include/fastlpips/op_args.h (shared with the CUDA glue).
//
// Layout: the kernels read channels-contiguous pixels (channels_last, the layout LPIPS runs in;
// batch stride free, so an expanded batch-1 input is read without a copy); their channel loops use
// independent lane accumulators, which the compiler vectorizes. Other layouts are converted first.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <mutex>
#include <vector>

#include "fastlpips/head_math.h"
#include "fastlpips/op_args.h"
#include "fastlpips/pixel_geometry.h"

namespace fastlpips {
namespace {

using namespace head;
constexpr int LANES = 16;

using Pixels = PixelGeometry;  // fastlpips/pixel_geometry.h, shared with the CUDA kernels

// sum_c term(c) over C contiguous channels with LANES independent accumulators (vectorizable
// without reassociating a single running sum).
template <typename A, typename F>
inline A channel_sum(int64_t C, F&& term) {
  A acc[LANES] = {};
  int64_t c = 0;
  for (; c + LANES <= C; c += LANES)
    for (int l = 0; l < LANES; ++l) acc[l] += term(c + l);
  A t = 0;
  for (; c < C; ++c) t += term(c);
  for (int l = 0; l < LANES; ++l) t += acc[l];
  return t;
}

int64_t grain(int64_t C) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(C, 1)); }

template <typename T, bool WEIGHTED>
void forward_kernel(const Pixels& P, const T* f0, const T* f1, const at::opmath_type<T>* w,
                    at::opmath_type<T> eps, at::opmath_type<T>* m, at::opmath_type<T>* r0,
                    at::opmath_type<T>* r1) {
  using A = at::opmath_type<T>;
  const int64_t C = P.C;
  at::parallel_for(0, P.NP, grain(C), [&](int64_t begin, int64_t end) {
    for (int64_t q = begin; q < end; ++q) {
      const T* a = f0 + P.off0(q);
      const T* b = f1 + P.off1(q);
      const A ra = std::sqrt(channel_sum<A>(C, [&](int64_t c) { A x = A(a[c]); return x * x; }));
      const A rb = std::sqrt(channel_sum<A>(C, [&](int64_t c) { A y = A(b[c]); return y * y; }));
      const A ia = inv_norm(ra, eps), ib = inv_norm(rb, eps);
      m[q] = channel_sum<A>(C, [&](int64_t c) {
        const A d = diff(A(a[c]), ia, A(b[c]), ib);
        return (WEIGHTED ? w[c] : A(1)) * d * d;
      });
      r0[q] = ra;
      r1[q] = rb;
    }
  });
}

template <typename T, bool WEIGHTED>
void backward_kernel(const Pixels& P, const at::opmath_type<T>* g, const T* f0, const T* f1,
                     const at::opmath_type<T>* w, const at::opmath_type<T>* r0, const at::opmath_type<T>* r1,
                     at::opmath_type<T> eps, T* g0, T* g1, at::opmath_type<T>* gw) {
  // g0 / g1 (when not null) have the strides of f0 / f1.
  using A = at::opmath_type<T>;
  const int64_t C = P.C;
  std::mutex mu;
  at::parallel_for(0, P.NP, grain(C), [&](int64_t begin, int64_t end) {
    std::vector<A> gw_local(gw ? C : 0, A(0));
    for (int64_t q = begin; q < end; ++q) {
      const SavedPixel<T, A> p = saved_pixel(P, q, f0, f1, r0, r1, eps);
      const T *a = p.a, *b = p.b;
      const A gq = g[q], ra = p.ra, rb = p.rb, ia = p.ia, ib = p.ib;
      auto u = [&](int64_t c) {
        return upstream(WEIGHTED ? w[c] : A(1), diff(A(a[c]), ia, A(b[c]), ib), gq);
      };
      if (g0 || g1) {
        const A ta = channel_sum<A>(C, [&](int64_t c) { return u(c) * A(a[c]) * ia; });
        const A tb = channel_sum<A>(C, [&](int64_t c) { return u(c) * A(b[c]) * ib; });
        const A qa = safe_ratio(ta, ra), qb = safe_ratio(tb, rb);
        T* oa = g0 ? g0 + P.off0(q) : nullptr;
        T* ob = g1 ? g1 + P.off1(q) : nullptr;
        for (int64_t c = 0; c < C; ++c) {
          const A uc = u(c);
          if (oa) oa[c] = T(normalize_vjp(uc, A(a[c]) * ia, ia, qa));
          if (ob) ob[c] = T(normalize_vjp(-uc, A(b[c]) * ib, ib, -qb));
        }
      }
      if (gw) {
        for (int64_t c = 0; c < C; ++c) {
          const A d = diff(A(a[c]), ia, A(b[c]), ib);
          gw_local[c] += gq * d * d;
        }
      }
    }
    if (gw) {
      std::lock_guard<std::mutex> lock(mu);
      for (int64_t c = 0; c < C; ++c) gw[c] += gw_local[c];
    }
  });
}

template <typename T, bool WEIGHTED>
void jvp_kernel(const Pixels& P, const T* f0, const T* f1, const at::opmath_type<T>* w,
                const at::opmath_type<T>* r0, const at::opmath_type<T>* r1, const T* t0, const T* t1,
                const at::opmath_type<T>* tw, at::opmath_type<T> eps, at::opmath_type<T>* tm) {
  // Tangents t0 / t1 share the strides of f0 / f1 (the wrapper makes them so).
  using A = at::opmath_type<T>;
  const int64_t C = P.C;
  at::parallel_for(0, P.NP, grain(C), [&](int64_t begin, int64_t end) {
    for (int64_t q = begin; q < end; ++q) {
      const SavedPixel<T, A> p = saved_pixel(P, q, f0, f1, r0, r1, eps);
      const T *a = p.a, *b = p.b;
      const T* ta = t0 ? t0 + P.off0(q) : nullptr;
      const T* tb = t1 ? t1 + P.off1(q) : nullptr;
      const A ra = p.ra, rb = p.rb, ia = p.ia, ib = p.ib;
      const A pa = ta ? safe_ratio(channel_sum<A>(C, [&](int64_t c) { return A(ta[c]) * A(a[c]) * ia; }), ra) : A(0);
      const A pb = tb ? safe_ratio(channel_sum<A>(C, [&](int64_t c) { return A(tb[c]) * A(b[c]) * ib; }), rb) : A(0);
      tm[q] = channel_sum<A>(C, [&](int64_t c) {
        const A na = A(a[c]) * ia, nb = A(b[c]) * ib;
        const A d = na - nb;
        const A dna = ta ? normalize_vjp(A(ta[c]), na, ia, pa) : A(0);
        const A dnb = tb ? normalize_vjp(A(tb[c]), nb, ib, pb) : A(0);
        return A(2) * (WEIGHTED ? w[c] : A(1)) * d * (dna - dnb) + (tw ? tw[c] * d * d : A(0));
      });
    }
  });
}

bool channels_contiguous(const at::Tensor& f) {
  // channel stride 1 and pixels packed C apart (batch stride free: 0 for an expanded batch)
  return f.stride(1) == 1 && f.stride(3) == f.size(1) && f.stride(2) == f.size(1) * f.size(3);
}

void check_pair(const at::Tensor& f0, const at::Tensor& f1) {
  check_features(f0, f1);
  TORCH_CHECK(f0.device().is_cpu(), "fastlpips: the cpp backend runs on the CPU, got ", f0.device());
}

// Both feature maps channels-contiguous (the layout the vectorized path wants). NCHW inputs are
// converted: one copy costs less than a strided channel loop (measured: 4x64x256x256 forward
// 148 ms strided vs ~35 ms copy + contiguous path). Expanded batches (stride 0) stay as they are.
std::pair<at::Tensor, at::Tensor> harmonize(const at::Tensor& f0, const at::Tensor& f1) {
  auto cl = [](const at::Tensor& t) {
    if (channels_contiguous(t)) return t;
    if (t.stride(0) == 0) return t.select(0, 0).unsqueeze(0).contiguous(at::MemoryFormat::ChannelsLast).expand(t.sizes());
    return t.contiguous(at::MemoryFormat::ChannelsLast);
  };
  return {cl(f0), cl(f1)};
}

// Calls body(T(), weighted, wp) for the element type T of features f (float, double, half, bfloat16),
// weighted = std::bool_constant<w is defined> (the kernels' WEIGHTED) and wp = w's data or null.
template <typename F>
void dispatch(const at::Tensor& f, const at::Tensor& w, F&& body) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f.scalar_type(), "fastlpips_head", [&] {
    using A = at::opmath_type<scalar_t>;
    const A* wp = w.defined() ? w.data_ptr<A>() : nullptr;
    wp ? body(scalar_t(), std::true_type{}, wp) : body(scalar_t(), std::false_type{}, wp);
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> head_fwd_cpu(const at::Tensor& f0_in, const at::Tensor& f1_in,
                                                            const c10::optional<at::Tensor>& w_in, double eps) {
  check_pair(f0_in, f1_in);
  auto [f0, f1] = harmonize(f0_in, f1_in);
  const at::Tensor w = head_inputs(f0, w_in).w;
  auto [m, r0, r1] = head_fwd_outputs(f0);
  if (m.numel() == 0) return {m, r0, r1};
  const Pixels P = geometry(f0, f1);
  dispatch(f0, w, [&](auto t, auto weighted, auto wp) {
    using T = decltype(t);
    using A = at::opmath_type<T>;
    forward_kernel<T, decltype(weighted)::value>(P, f0.data_ptr<T>(), f1.data_ptr<T>(), wp, A(eps), m.data_ptr<A>(),
                                                 r0.data_ptr<A>(), r1.data_ptr<A>());
  });
  return {m, r0, r1};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> head_bwd_cpu(const at::Tensor& g_in, const at::Tensor& f0_in,
                                                            const at::Tensor& f1_in, const c10::optional<at::Tensor>& w_in,
                                                            const at::Tensor& r0_in, const at::Tensor& r1_in, double eps,
                                                            std::array<bool, 3> needs) {
  check_pair(f0_in, f1_in);
  auto [f0, f1] = harmonize(f0_in, f1_in);
  const int64_t N = f0.size(0), C = f0.size(1), H = f0.size(2), W = f0.size(3);
  const HeadInputs in = head_inputs(f0, w_in, r0_in, r1_in);
  const at::Tensor g = pixel_vector(g_in, "grad", f0, in.acc);
  // Gradients: channels_last, full batch (expanded features get one too); see op_args.h.
  const HeadGrads out = head_bwd_outputs(f0, f1, in, needs);
  const at::Tensor &g0 = out.g0, &g1 = out.g1, &gw = out.gw;
  const bool want_w = out.want_w;
  if (N * H * W > 0 && (needs[0] || needs[1] || want_w)) {
    // The kernel writes g0/g1 at f0/f1's strides: use the gradients' own strides instead.
    const bool same_strides = (!needs[0] || g0.strides() == f0.strides()) && (!needs[1] || g1.strides() == f1.strides());
    // Expanded (batch stride 0) features: materialize so features and gradients share strides.
    at::Tensor a = same_strides ? f0 : (needs[0] ? f0.expand({N, C, H, W}).contiguous(g0.suggest_memory_format()) : f0);
    at::Tensor b = same_strides ? f1 : (needs[1] ? f1.expand({N, C, H, W}).contiguous(g1.suggest_memory_format()) : f1);
    const Pixels Q = geometry(a, b);
    dispatch(f0, in.w, [&](auto t, auto weighted, auto wp) {
      using T = decltype(t);
      using A = at::opmath_type<T>;
      backward_kernel<T, decltype(weighted)::value>(
          Q, g.data_ptr<A>(), a.data_ptr<T>(), b.data_ptr<T>(), wp, in.r0.data_ptr<A>(), in.r1.data_ptr<A>(), A(eps),
          needs[0] ? g0.data_ptr<T>() : nullptr, needs[1] ? g1.data_ptr<T>() : nullptr,
          want_w ? gw.data_ptr<A>() : nullptr);
    });
  } else if (N * H * W == 0) {
    if (needs[0]) g0.zero_();
    if (needs[1]) g1.zero_();
  }
  return out.result(w_in);
}

at::Tensor head_jvp_cpu(const at::Tensor& f0_in, const at::Tensor& f1_in, const c10::optional<at::Tensor>& w_in,
                        const at::Tensor& r0_in, const at::Tensor& r1_in, const c10::optional<at::Tensor>& t0_in,
                        const c10::optional<at::Tensor>& t1_in, const c10::optional<at::Tensor>& tw_in, double eps) {
  check_pair(f0_in, f1_in);
  // Features and tangents are brought to one full channels_last layout (tangents rarely share strides).
  const at::Tensor f0 = full_channels_last(f0_in), f1 = full_channels_last(f1_in);
  const at::Tensor t0 = tangent(t0_in, f0), t1 = tangent(t1_in, f1);
  const HeadInputs in = head_inputs(f0, w_in, r0_in, r1_in);
  const at::Tensor tw = weight_vector(tw_in, f0.size(1), in.acc);
  auto tm = pixel_map(f0);
  if (tm.numel() == 0) return tm;
  const Pixels P = geometry(f0, f1);
  dispatch(f0, in.w, [&](auto t, auto weighted, auto wp) {
    using T = decltype(t);
    using A = at::opmath_type<T>;
    jvp_kernel<T, decltype(weighted)::value>(P, f0.data_ptr<T>(), f1.data_ptr<T>(), wp, in.r0.data_ptr<A>(),
                                             in.r1.data_ptr<A>(), t0.defined() ? t0.data_ptr<T>() : nullptr,
                                             t1.defined() ? t1.data_ptr<T>() : nullptr,
                                             tw.defined() ? tw.data_ptr<A>() : nullptr, A(eps), tm.data_ptr<A>());
  });
  return tm;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastlpips_native, CPU, m) {
  m.impl("head_fwd", &head_fwd_cpu);
  m.impl("head_bwd", &head_bwd_cpu);
  m.impl("head_jvp", &head_jvp_cpu);
}

}  // namespace fastlpips
