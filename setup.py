"""Thin build script: the package metadata lives in pyproject.toml.

Builds the native extension ``fastlpips._C`` from csrc/ when torch and a C++ compiler are present
(install torch first, then ``pip install --no-build-isolation -e .``). Without a compiler, or with
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
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        sys.stderr.write("fastlpips: torch is not installed in the build environment; building without "
                         "fastlpips._C (install torch first and use --no-build-isolation)\n")
        return [], {}
    sources = ["csrc/ops.cpp"] + sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "cpu").glob("*.cpp"))
    ext = CppExtension(
        "fastlpips._C",
        sources,
        include_dirs=[str(ROOT / "csrc" / "include")],
        define_macros=[("FASTLPIPS_TORCH_VERSION", f'"{torch.__version__}"')],
        extra_compile_args=["-O3", "-fopenmp"],
        extra_link_args=["-fopenmp"],
    )
    return [ext], {"build_ext": BuildExtension.with_options(no_python_abi_suffix=False)}


ext_modules, cmdclass = native_extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
