// fastlpips._C: the native extension. This file holds the Python module and build facts; kernels
// are registered from csrc/cpu/*.cpp (and csrc/cuda/*.cu when built with CUDA).
#include <torch/extension.h>
#include <torch/library.h>

#include <string>

#include "fastlpips/macros.h"

namespace fastlpips {

static py::dict build_info() {
  py::dict d;
#ifdef _OPENMP
  d["openmp"] = true;
#else
  d["openmp"] = false;
#endif
#ifdef FASTLPIPS_WITH_CUDA
  d["cuda"] = true;
#else
  d["cuda"] = false;
#endif
  d["torch_version"] = std::string(FASTLPIPS_TORCH_VERSION);
  d["compiler"] = std::string(__VERSION__);
  d["parallel_threads"] = at::get_num_threads();
  return d;
}

}  // namespace fastlpips

// Schemas of the native ops (implementations: csrc/cpu/*.cpp, csrc/cuda/*.cpp). Fake (meta)
// kernels, and the deprecated alias namespace fastlpips_cpp, are registered from Python
// (fastlpips/ops/native.py); autograd lives in fastlpips/ops/head.py and transform.py.
TORCH_LIBRARY(fastlpips_native, m) {
  m.def("head_fwd(Tensor f0, Tensor f1, Tensor? w, float eps) -> (Tensor, Tensor, Tensor)");
  m.def("head_bwd(Tensor g, Tensor f0, Tensor f1, Tensor? w, Tensor r0, Tensor r1, float eps, bool[3] needs)"
        " -> (Tensor, Tensor, Tensor)");
  m.def("head_jvp(Tensor f0, Tensor f1, Tensor? w, Tensor r0, Tensor r1, Tensor? t0, Tensor? t1, Tensor? tw,"
        " float eps) -> Tensor");
  // E-LPIPS batched random transform (csrc/include/fastlpips/transform_math.h) and its adjoint.
  m.def("transform_fwd(Tensor x, Tensor params, Tensor colors, int scale, int out_h, int out_w) -> Tensor");
  m.def("transform_bwd(Tensor grad, Tensor params, Tensor colors, int scale, int batch, int in_h, int in_w)"
        " -> Tensor");
  // DISTS' per-stage statistics (csrc/include/fastlpips/dists_math.h): t (N), s (N, C, 5) and the
  // feature gradients.
  m.def("stats_fwd(Tensor fx, Tensor fy, Tensor alpha, Tensor beta, float c1, float c2) -> (Tensor, Tensor)");
  m.def("stats_bwd(Tensor g, Tensor fx, Tensor fy, Tensor alpha, Tensor beta, Tensor s, float c1, float c2,"
        " bool[2] needs) -> (Tensor, Tensor)");
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastlpips native extension";
  m.def("build_info", &fastlpips::build_info, "How this extension was built (OpenMP, CUDA, compiler).");
}
