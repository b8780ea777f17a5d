"""GPU code that cannot run here still has to compile: every .cu for sm_80 and sm_90 with nvcc,
the run-time (CuPy/NVRTC) source with NVRTC, and the CUDA build of the extension. The GPU test
at the end runs with ``pytest --device cuda`` on a machine that has one."""
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
CU_FILES = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))


def _nvcc():
    for cand in (shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if cand and Path(cand).is_file():
            return cand
    pytest.skip("nvcc is not installed")


@pytest.mark.subprocess
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("cu", CU_FILES, ids=[p.name for p in CU_FILES])
def test_cu_compiles(cu, arch, tmp_path):
    out = tmp_path / f"{cu.stem}.cubin"
    proc = subprocess.run([_nvcc(), "-std=c++17", f"-arch={arch}", "-cubin", f"-I{ROOT / 'csrc' / 'include'}",
                           f"-I{ROOT / 'csrc' / 'cuda'}", "-o", str(out), str(cu)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert out.stat().st_size > 10_000


def test_cu_files_found():
    assert {p.name for p in CU_FILES} == {"head_cuda.cu", "head_rtc.cu", "stats_cuda.cu", "transform_cuda.cu"}


@pytest.mark.parametrize("arch", ["compute_80", "compute_90"])
def test_nvrtc_compiles_runtime_source(arch):
    pytest.importorskip("cupy_backends.cuda.libs.nvrtc", reason="cupy-cuda13x is not installed")
    from fastlpips.ops import cupy_ops

    if not cupy_ops.cuda_include_dirs():
        pytest.skip("no CUDA headers (cuda_fp16.h) found for NVRTC")
    ptx = cupy_ops.compile_ptx(arch)
    text = ptx.decode(errors="replace")
    for kind in ("fwd", "bwd", "jvp"):
        for suffix in ("f32", "f64", "f16", "bf16"):
            assert f".entry fastlpips_head_{kind}_{suffix}" in text


def test_extension_cuda_build_matches_environment():
    """When torch is a CUDA build and nvcc exists, setup.py must have built the CUDA kernels."""
    from fastlpips import _backend

    if _backend.native_reason() is not None:
        pytest.skip(_backend.native_reason())
    from fastlpips import _C

    can_build = torch.version.cuda is not None and (shutil.which("nvcc") or Path("/usr/local/cuda/bin/nvcc").is_file())
    import os

    if os.environ.get("FASTLPIPS_NO_CUDA") == "1" or not can_build:
        assert _C.build_info()["cuda"] is False
        pytest.skip("no nvcc or CPU-only torch: the CUDA kernels are not built here")
    assert _C.build_info()["cuda"] is True
    assert torch._C._dispatch_has_kernel_for_dispatch_key("fastlpips_native::head_fwd", "CUDA")
    assert torch._C._dispatch_has_kernel_for_dispatch_key("fastlpips_native::head_bwd", "CUDA")


@pytest.mark.parametrize("backend", ["cuda", "triton", "cupy"])
def test_gpu_backends_match_reference(device, backend):
    if device.type != "cuda":
        pytest.skip("GPU backends run with --device cuda on a machine with a GPU (none here)")
    from fastlpips import _backend
    from fastlpips.ops.head import lpips_head_map
    from fastlpips.reference import lpips_head

    reason = _backend.backends("cuda")[backend]
    if reason != "available":
        pytest.skip(reason)
    g = torch.Generator().manual_seed(0)
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
        f0 = torch.randn(3, 192, 13, 11, generator=g, dtype=dtype).relu().to(device).requires_grad_()
        f1 = torch.randn(1, 192, 13, 11, generator=g, dtype=dtype).relu().to(device).requires_grad_()
        w = torch.rand(192, generator=g, dtype=dtype).to(device).requires_grad_()
        out = lpips_head_map(f0, f1, w, backend=backend)
        ref = lpips_head(f0, f1, w, spatial=True)
        torch.testing.assert_close(out, ref, rtol=tol, atol=tol)
        go = torch.rand_like(ref)
        for a, b in zip(torch.autograd.grad(out, (f0, f1, w), go), torch.autograd.grad(ref, (f0, f1, w), go)):
            torch.testing.assert_close(a, b, rtol=tol, atol=tol)
