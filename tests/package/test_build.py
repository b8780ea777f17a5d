"""The native extension and the CMake build of the same sources."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.subprocess
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


@pytest.mark.subprocess
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


@pytest.mark.subprocess
def test_every_package_folder_is_in_the_wheel(tmp_path):
    """pyproject lists the packages explicitly: a new folder missing there would be missing from the
    wheel while editable-install tests pass. Build the wheel (no extension) and compare."""
    import zipfile

    env = dict(os.environ, FASTLPIPS_NO_EXT="1")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (wheel,) = tmp_path.glob("fastlpips-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    folders = {p.parent.relative_to(ROOT).as_posix().replace("kernels", "fastlpips/kernels", 1)
               if p.parent.relative_to(ROOT).parts[0] == "kernels" else p.parent.relative_to(ROOT).as_posix()
               for p in list((ROOT / "fastlpips").rglob("__init__.py")) + list((ROOT / "kernels").rglob("__init__.py"))}
    missing = sorted(f for f in folders if f"{f}/__init__.py" not in names)
    assert not missing, f"package folders missing from the wheel (add them to pyproject's packages): {missing}"
    assert "fastlpips/weights/lpips_v0.1_alex.npz" in names and "fastlpips/csrc/cuda/head_rtc.cu" in names
