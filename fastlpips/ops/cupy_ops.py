"""CuPy backend: the CUDA head kernels (csrc/cuda/head_rtc.cu, the same device code the extension
compiles with nvcc) compiled at run time by NVRTC, for installs whose extension was built without
CUDA. Registered as ``torch.ops.fastlpips_cupy.*``. ``compile_ptx`` needs no GPU (CI checks that
the source compiles); launching needs one.
"""
from __future__ import annotations

import functools
import glob
import os
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Tuple

import torch

from .registry import register_head_ops
from .torch_kernels import acc_dtype

if TYPE_CHECKING:
    import cupy

_HEADERS = {  # include name -> path relative to the csrc folder
    "head_kernels.cuh": "cuda/head_kernels.cuh",
    "convert.cuh": "cuda/convert.cuh",
    "fastlpips/pixel_geometry.h": "include/fastlpips/pixel_geometry.h",
    "fastlpips/head_math.h": "include/fastlpips/head_math.h",
    "fastlpips/macros.h": "include/fastlpips/macros.h",
}
_SUFFIX = {torch.float32: "f32", torch.float64: "f64", torch.float16: "f16", torch.bfloat16: "bf16"}
_THREADS = 256


def csrc_dir() -> Path:
    """The kernel sources: the repository's csrc/ (editable installs) or the packaged copy."""
    here = Path(__file__).resolve()
    for cand in (here.parents[2] / "csrc", here.parents[1] / "csrc"):
        if (cand / "cuda" / "head_rtc.cu").is_file():
            return cand
    raise FileNotFoundError("fastlpips' CUDA kernel sources (csrc/cuda/head_rtc.cu) are not installed")


def sources() -> Tuple[str, Dict[str, str]]:
    root = csrc_dir()
    return (root / "cuda" / "head_rtc.cu").read_text(), {k: (root / v).read_text() for k, v in _HEADERS.items()}


def cuda_include_dirs() -> List[str]:
    """Where NVRTC finds cuda_fp16.h / cuda_bf16.h: the toolkit, or pip's nvidia wheels beside torch."""
    dirs = [os.path.join(os.environ[v], "include") for v in ("CUDA_PATH", "CUDA_HOME") if os.environ.get(v)]
    dirs += ["/usr/local/cuda/include"]
    dirs += sorted(glob.glob(str(Path(torch.__file__).resolve().parent.parent / "nvidia" / "cu*" / "include")))
    return [d for d in dirs if os.path.isfile(os.path.join(d, "cuda_fp16.h"))]


def compile_ptx(arch: str = "compute_90") -> bytes:
    """Compile the kernel source with NVRTC (no GPU needed); returns the PTX."""
    from cupy_backends.cuda.libs import nvrtc

    src, headers = sources()
    prog = nvrtc.createProgram(src, "head_rtc.cu", [h.encode() for h in headers.values()],
                               [k.encode() for k in headers])
    try:
        opts = [f"--gpu-architecture={arch}", "-std=c++17"] + [f"-I{d}" for d in cuda_include_dirs()]
        try:
            nvrtc.compileProgram(prog, opts)
        except nvrtc.NVRTCError as e:
            raise RuntimeError(f"NVRTC failed to compile the fastlpips head kernels: {e}\n"
                               f"{nvrtc.getProgramLog(prog)}") from e
        return nvrtc.getPTX(prog)
    finally:
        nvrtc.destroyProgram(prog)


@functools.lru_cache(maxsize=None)
def _module(device_index: int) -> "cupy.RawModule":
    import tempfile

    import cupy

    dev = cupy.cuda.Device(device_index)
    ptx = compile_ptx(f"compute_{dev.compute_capability}")
    with tempfile.NamedTemporaryFile(suffix=".ptx", delete=False) as f:
        f.write(ptx)
    try:
        with dev:
            return cupy.RawModule(path=f.name)
    finally:
        os.unlink(f.name)


def _arr(t):
    """A CuPy view of a torch tensor (strides kept), or a null pointer for None."""
    import cupy
    import numpy as np

    return np.uint64(0) if t is None else cupy.from_dlpack(t.detach())


def _launch(kind: str, f0: torch.Tensor, np_: int, *args: object) -> None:
    import cupy

    if f0.device.type != "cuda":
        raise RuntimeError(f"the cupy backend needs CUDA tensors, got {f0.device}")
    kern = _module(f0.device.index or 0).get_function(f"fastlpips_head_{kind}_{_SUFFIX[f0.dtype]}")
    stream = torch.cuda.current_stream(f0.device).cuda_stream
    with cupy.cuda.Device(f0.device.index or 0), cupy.cuda.ExternalStream(stream):
        kern(((np_ * 32 + _THREADS - 1) // _THREADS,), (_THREADS,), args)


def _geom(f0, f1):
    import numpy as np

    n, c, h, w = f0.shape
    return [np.int64(v) for v in (n * h * w, c, h * w, w, *f0.stride(), *f1.stride())]


def _scalar(eps, acc):
    import numpy as np

    return np.float64(eps) if acc == torch.float64 else np.float32(eps)


def _prep(f0, f1, w):
    acc = acc_dtype(f0.dtype)
    cl = torch.channels_last
    f0, f1 = f0.contiguous(memory_format=cl), f1.contiguous(memory_format=cl)
    w = None if w is None else w.reshape(-1).to(acc).contiguous()
    return f0, f1, w, acc


def head_fwd(f0, f1, w, eps):
    f0, f1, wv, acc = _prep(f0, f1, w)
    n, _, h, wd = f0.shape
    m = torch.empty((n, 1, h, wd), dtype=acc, device=f0.device)
    r0, r1 = torch.empty_like(m), torch.empty_like(m)
    if m.numel():
        _launch("fwd", f0, m.numel(), *_geom(f0, f1), _arr(f0), _arr(f1), _arr(wv), _scalar(eps, acc),
                _arr(m), _arr(r0), _arr(r1))
    return m, r0, r1


def head_bwd(g, f0, f1, w, r0, r1, eps, needs):
    f0, f1, wv, acc = _prep(f0, f1, w)
    n, c, h, wd = f0.shape
    cl = torch.channels_last
    g0 = torch.empty(f0.shape, dtype=f0.dtype, device=f0.device, memory_format=cl) if needs[0] else f0.new_empty((0,))
    g1 = torch.empty(f1.shape, dtype=f1.dtype, device=f1.device, memory_format=cl) if needs[1] else f1.new_empty((0,))
    needw = bool(needs[2]) and w is not None
    gw = torch.zeros(c, dtype=acc, device=f0.device) if needw else f0.new_empty((0,), dtype=acc)
    if n * h * wd:
        _launch("bwd", f0, n * h * wd, *_geom(f0, f1), _arr(g.reshape(-1).to(acc).contiguous()), _arr(f0), _arr(f1),
                _arr(wv), _arr(r0.reshape(-1).to(acc).contiguous()), _arr(r1.reshape(-1).to(acc).contiguous()),
                _scalar(eps, acc), _arr(g0 if needs[0] else None), _arr(g1 if needs[1] else None),
                _arr(gw if needw else None))
    if needw:
        gw = gw.to(w.dtype).reshape(w.shape)
    return g0, g1, gw


def head_jvp(f0, f1, w, r0, r1, t0, t1, tw, eps):
    f0, f1, wv, acc = _prep(f0, f1, w)
    n, c, h, wd = f0.shape

    def full(t):
        return None if t is None else t.to(f0.dtype).expand(n, c, h, wd).contiguous(memory_format=torch.channels_last)
    tm = torch.empty((n, 1, h, wd), dtype=acc, device=f0.device)
    if tm.numel():
        _launch("jvp", f0, tm.numel(), *_geom(f0, f1), _arr(f0), _arr(f1), _arr(wv),
                _arr(r0.reshape(-1).to(acc).contiguous()), _arr(r1.reshape(-1).to(acc).contiguous()),
                _arr(full(t0)), _arr(full(t1)), _arr(None if tw is None else tw.reshape(-1).to(acc).contiguous()),
                _scalar(eps, acc), _arr(tm))
    return tm


register_head_ops("fastlpips_cupy", head_fwd, head_bwd, head_jvp)
