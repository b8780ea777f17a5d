"""Thin build script: the package metadata lives in pyproject.toml.

Builds the native extension ``fastlpips._C`` from csrc/ when torch and a C++ compiler are present
(install torch first, then ``pip install --no-build-isolation -e .``): the C++ CPU kernels always,
the CUDA kernels too when nvcc and a CUDA build of torch are present (TORCH_CUDA_ARCH_LIST
defaults to "8.0;9.0"; FASTLPIPS_NO_CUDA=1 skips them). Without a compiler, or with
FASTLPIPS_NO_EXT=1, the pure-PyTorch package is installed and works on its own.
"""
import os
import shutil
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent


def native_extensions():
    if os.environ.get("FASTLPIPS_NO_EXT", "") == "1":
        return [], {}
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        sys.stderr.write("fastlpips: no C++ compiler found; building without fastlpips._C\n")
        return [], {}
    try:
        import torch

        nvcc = _nvcc(torch)
        if nvcc is not None:  # before cpp_extension is imported: it fixes CUDA_HOME at import
            os.environ.setdefault("CUDA_HOME", _cuda_home(nvcc))
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        sys.stderr.write("fastlpips: torch is not installed in the build environment; building without "
                         "fastlpips._C (install torch first and use --no-build-isolation)\n")
        return [], {}
    sources = ["csrc/ops.cpp"] + sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "cpu").glob("*.cpp"))
    include_dirs = [str(ROOT / "csrc" / "include"), str(ROOT / "csrc" / "cuda")]
    macros = [("FASTLPIPS_TORCH_VERSION", f'"{torch.__version__}"')]
    cxx = ["-O3", "-fopenmp"]
    if nvcc is None:
        ext = CppExtension("fastlpips._C", sources, include_dirs=include_dirs, define_macros=macros,
                           extra_compile_args=cxx, extra_link_args=["-fopenmp"])
    else:
        from torch.utils.cpp_extension import CUDAExtension

        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        # Headers that pip's nvidia-* wheels ship beside torch (cusparse etc., absent from some
        # toolkits), searched after the toolkit's own.
        site = Path(torch.__file__).resolve().parent.parent
        late = [f"-idirafter{p}" for p in sorted(site.glob("nvidia/cu*/include"))]
        sources += ["csrc/cuda/head_cuda.cu", "csrc/cuda/head_cuda_glue.cpp", "csrc/cuda/transform_cuda.cu",
                    "csrc/cuda/transform_cuda_glue.cpp", "csrc/cuda/stats_cuda.cu", "csrc/cuda/stats_cuda_glue.cpp"]
        ext = CUDAExtension("fastlpips._C", sources, include_dirs=include_dirs,
                            define_macros=macros + [("FASTLPIPS_WITH_CUDA", "1")],
                            extra_compile_args={"cxx": cxx + late, "nvcc": ["-O3"]},
                            extra_link_args=["-fopenmp"])
    return [ext], {"build_ext": BuildExtension.with_options(no_python_abi_suffix=False)}


def _cuda_home(nvcc: str) -> str:
    """The toolkit folder of an nvcc (which may be a wrapper script outside it)."""
    for cand in (Path(nvcc).resolve().parent.parent, Path("/usr/local/cuda")):
        if (cand / "include" / "cuda_runtime_api.h").is_file():
            return str(cand)
    return str(Path(nvcc).resolve().parent.parent)


def _nvcc(torch):
    """Path of nvcc when the CUDA kernels should be built, else None."""
    if os.environ.get("FASTLPIPS_NO_CUDA", "") == "1" or torch.version.cuda is None:
        return None
    for cand in (os.environ.get("CUDA_HOME") and os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc"),
                 shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if cand and os.path.isfile(cand):
            return cand
    return None


ext_modules, cmdclass = native_extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
