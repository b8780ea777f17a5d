"""The native extension and the CMake build of the same sources."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_package_imports_without_native_code():
    code = ("import sys; sys.modules['fastlpips._C'] = None; import fastlpips, torch; "
            "m = fastlpips.LPIPS(net='alex', pnet_rand=True); x = torch.zeros(1, 3, 64, 64); print(m(x, x).item())")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert float(proc.stdout) == 0.0


def test_native_extension_built():
    if os.environ.get("FASTLPIPS_NO_EXT") == "1":
        pytest.skip("built with FASTLPIPS_NO_EXT=1")
    from fastlpips import _C

    info = _C.build_info()
    assert info["openmp"] is True and info["torch_version"].startswith(__import__("torch").__version__.split("+")[0])


@pytest.mark.slow
def test_cmake_builds_the_extension(tmp_path):
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    pybind11 = pytest.importorskip("pybind11")
    cfg = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(tmp_path), f"-DPython_EXECUTABLE={sys.executable}",
                          f"-Dpybind11_DIR={pybind11.get_cmake_dir()}"], capture_output=True, text=True, timeout=300)
    assert cfg.returncode == 0, cfg.stdout + cfg.stderr
    build = subprocess.run(["cmake", "--build", str(tmp_path), "-j2"], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    so = list(tmp_path.glob("_C*.so"))
    assert so
    proc = subprocess.run([sys.executable, "-c", "import torch, _C; print(_C.build_info()['openmp'])"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "True", proc.stderr
