"""Which precision is fast here: the CPU's instruction set, native bf16, and the ``dtype='auto'`` choice.

Reduced precision is not faster by itself. Measured on our machines (docs: shared STACK.md,
benchmarks/README.md): without AVX512-BF16 (AVX2-only CPUs) oneDNN emulates bf16 and an E-LPIPS
pass ran 7-8x slower than fp32; with AVX512-BF16 but no AMX a bf16 VGG trunk ran at 0.6-0.75x
fp32 speed; only AMX tiles (or a GPU with bf16 tensor cores) make bf16 convolutions faster. So:

* ``isa()`` names the CPU's best vector ISA as 'AMX' | 'AVX512-BF16' | 'AVX512' | 'AVX2' | 'other';
* ``native_bf16(device)``: the hardware computes bf16 itself (CPU: AVX512-BF16 or AMX; CUDA:
  ``torch.cuda.is_bf16_supported()``);
* ``reduced_precision_is_faster(device, dtype)``: CUDA with native support, or a CPU with AMX on
  which one layer-sized convolution, timed once per process, runs faster in ``dtype`` than fp32;
* ``resolve_dtype(dtype, device)`` turns the ``dtype=`` argument of LPIPS / ELPIPS into the
  compute dtype (None = fp32): 'auto' picks bf16 only where it is faster, never slower than fp32;
* ``warn_if_slow(dtype, device)``: an explicit bf16/fp16 request on a CPU without native support
  warns once per process and explains (``PrecisionWarning``).
"""
from __future__ import annotations

import functools
import time
import warnings
from typing import Optional, Union

import torch

__all__ = ["PrecisionWarning", "isa", "cpu_info", "native_bf16", "reduced_precision_is_faster", "resolve_dtype",
           "warn_if_slow"]


class PrecisionWarning(UserWarning):
    """A reduced-precision mode asked for where the hardware does not accelerate it."""


def _probe(name: str) -> bool:
    fn = getattr(torch.cpu, name, None)
    try:
        return bool(fn()) if fn is not None else False
    except Exception:  # pragma: no cover - a torch build without the probe
        return False


@functools.lru_cache(maxsize=None)
def cpu_info() -> dict:
    """The CPU's vector features as torch sees them (also recorded with every benchmark run)."""
    info = {
        "capability": torch.backends.cpu.get_cpu_capability(),
        "avx2": _probe("_is_avx2_supported"),
        "avx512": _probe("_is_avx512_supported"),
        "avx512_bf16": _probe("_is_avx512_bf16_supported"),
        "amx": _probe("_is_amx_tile_supported"),
        "amx_fp16": _probe("_is_amx_fp16_supported"),
        "model": _cpu_model(),
    }
    info["isa"] = ("AMX" if info["amx"] else "AVX512-BF16" if info["avx512_bf16"] else
                   "AVX512" if info["avx512"] else "AVX2" if info["avx2"] else "other")
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


def isa() -> str:
    return cpu_info()["isa"]


def native_bf16(device: Union[str, torch.device] = "cpu") -> bool:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    info = cpu_info()
    return info["avx512_bf16"] or info["amx"]


def _native(dtype: torch.dtype, device: torch.device) -> bool:
    if device.type == "cuda":
        return dtype == torch.float16 or native_bf16(device)
    info = cpu_info()
    return info["amx_fp16"] if dtype == torch.float16 else native_bf16(device)


@functools.lru_cache(maxsize=None)
def _conv_faster_on_cpu(dtype: torch.dtype) -> bool:
    """Time one VGG-layer-sized convolution (256 -> 256 channels, 3x3, 2 x 32 x 32, channels_last)
    in ``dtype`` and in fp32; faster means under 0.9x the fp32 time (median of 5)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 256, 32, 32, generator=g).contiguous(memory_format=torch.channels_last)
    w = torch.randn(256, 256, 3, 3, generator=g).contiguous(memory_format=torch.channels_last) * 0.02

    def median_time(dt):
        xd, wd = x.to(dt), w.to(dt)
        times = []
        with torch.no_grad():
            for _ in range(6):
                t0 = time.perf_counter()
                torch.nn.functional.conv2d(xd, wd, padding=1)
                times.append(time.perf_counter() - t0)
        return sorted(times[1:])[2]

    return median_time(dtype) < 0.9 * median_time(torch.float32)


def reduced_precision_is_faster(device: Union[str, torch.device], dtype: torch.dtype = torch.bfloat16) -> bool:
    """Whether ``dtype`` convolutions beat fp32 on ``device`` (see the module docstring)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and _native(dtype, device)
    if device.type != "cpu":
        return False
    info = cpu_info()
    has_tiles = info["amx_fp16"] if dtype == torch.float16 else info["amx"]
    return has_tiles and _conv_faster_on_cpu(dtype)


_ALIASES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
            "half": torch.float16, "fp32": None, "float32": None}


def resolve_dtype(dtype, device: Union[str, torch.device, None] = None) -> Optional[torch.dtype]:
    """The compute dtype for a ``dtype=`` argument: None / torch.float32 / 'fp32' -> None (fp32),
    torch.bfloat16 / 'bf16', torch.float16 / 'fp16', or 'auto' -> bf16 where it is faster on
    ``device`` (default CPU), else None."""
    device = torch.device(device if device is not None else "cpu")
    if isinstance(dtype, str):
        key = dtype.lower()
        if key == "auto":
            return torch.bfloat16 if reduced_precision_is_faster(device, torch.bfloat16) else None
        if key not in _ALIASES:
            raise ValueError(f"dtype={dtype!r}: expected 'auto', 'bf16', 'fp16', 'fp32' or a torch dtype")
        return _ALIASES[key]
    if dtype is None or dtype == torch.float32:
        return None
    if dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"dtype= selects a reduced-precision mode (torch.bfloat16, torch.float16 or 'auto'), got {dtype}")
    return dtype


_WARNED: set = set()


def warn_if_slow(dtype: Optional[torch.dtype], device: torch.device, stacklevel: int = 5) -> None:
    """Once per process and (dtype, device type): reduced precision on a CPU that does not compute it natively."""
    if dtype is None or device.type != "cpu" or (dtype, device.type) in _WARNED:
        return
    _WARNED.add((dtype, device.type))
    if _native(dtype, device) and reduced_precision_is_faster(device, dtype):
        return
    name = "bf16" if dtype == torch.bfloat16 else "fp16"
    info = cpu_info()
    why = (f"this CPU ({info['model']}; best ISA {info['isa']}) has no native {name} arithmetic, so it is emulated "
           "(measured 7-8x slower than fp32 for E-LPIPS on an AVX2-only CPU)"
           if not _native(dtype, device) else
           f"this CPU ({info['model']}; best ISA {info['isa']}) computes {name} but without AMX tiles, where "
           f"{name} convolutions measured slower than fp32 (0.6-0.8x)")
    warnings.warn(f"dtype={dtype} asked for on CPU, but {why}. Use dtype='auto' to get the faster precision for "
                  "the device, or fp32 (dtype=None). This warning is shown once.", PrecisionWarning,
                  stacklevel=stacklevel)
