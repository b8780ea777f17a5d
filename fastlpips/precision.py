"""Which precision is fast here: the CPU's instruction set, native bf16, and the ``dtype='auto'`` choice.

Reduced precision is not faster by itself, and CPU flags cannot tell. Measured on our machines
(shared STACK.md, benchmarks/README.md): without AVX512-BF16 (AVX2-only CPUs) oneDNN emulates bf16
and an E-LPIPS pass ran 7-8x slower than fp32; on one AVX512-BF16 CPU without AMX a bf16 VGG trunk
ran at 0.6-0.75x fp32 speed, on another with the same flags at 1.8-2x. So:

* ``isa()`` names the CPU's best vector ISA as 'AMX' | 'AVX512-BF16' | 'AVX512' | 'AVX2' | 'other';
* ``native_bf16(device)``: the hardware computes bf16 itself (CPU: AVX512-BF16 or AMX; CUDA:
  ``torch.cuda.is_bf16_supported()``);
* ``reduced_precision_is_faster(device, dtype, net=..., grad=...)``: CUDA with native support; on a
  CPU with native support (AVX512-BF16 or AMX) the answer of a timed probe: one layer-sized
  convolution of the trunk ``net`` (forward, or forward and backward with ``grad``), fp32 and
  ``dtype`` interleaved, once per process and (dtype, net, grad), cached. Faster means clearly
  faster: the median ratio below ``FASTER_RATIO`` and every timed run in ``dtype`` faster than every
  fp32 run, so run-to-run noise cannot flip it. CPUs without native support never run the probe
  (emulated bf16 is always slower);
* ``resolve_dtype(dtype, device, net=..., grad=...)`` turns the ``dtype=`` argument of LPIPS /
  ELPIPS into the compute dtype (None = fp32): 'auto' picks bf16 only where it is faster;
* ``auto_choices()`` (also in ``cpu_info()['auto']`` and ``fastlpips check``): every probe run so far,
  with its times, ratio and verdict;
* ``warn_if_slow(dtype, device)``: an explicit bf16/fp16 request on a CPU where it was not measured
  faster warns once per process and explains (``PrecisionWarning``).
"""
from __future__ import annotations

import functools
import statistics
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Tuple, Union

import torch

__all__ = ["PrecisionWarning", "isa", "cpu_info", "native_bf16", "reduced_precision_is_faster", "resolve_dtype",
           "warn_if_slow", "auto_choices", "describe_auto", "ProbeResult", "FASTER_RATIO", "PROBE_LAYERS"]

#: bf16 is taken only when its median time is below this fraction of fp32's (and every run beats every
#: fp32 run): a 10-20% gain is within what a busy VM's noise and the casts around the trunk can undo.
FASTER_RATIO = 0.8

#: The probe's convolution per trunk: (in channels, out channels, kernel, padding, batch, side); a
#: layer of the kind that dominates the trunk's time, at a size that keeps the probe to a few ms.
PROBE_LAYERS: Dict[str, Tuple[int, int, int, int, int, int]] = {
    "alex": (64, 192, 5, 2, 1, 16),     # AlexNet's conv2
    "vgg": (128, 128, 3, 1, 1, 16),     # a VGG16 block-2/3 convolution
    "squeeze": (64, 64, 3, 1, 2, 16),   # a SqueezeNet fire module's 3x3 expand
}
_RUNS = 5  # timed runs per precision, interleaved, after one warm-up each (fewer once the verdict is "no")


class PrecisionWarning(UserWarning):
    """A reduced-precision mode asked for where the hardware does not accelerate it."""


def _probe(name: str) -> bool:
    fn = getattr(torch.cpu, name, None)
    try:
        return bool(fn()) if fn is not None else False
    except Exception:  # pragma: no cover - a torch build without the probe
        return False


@functools.lru_cache(maxsize=None)
def _flags() -> dict:
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


def cpu_info() -> dict:
    """The CPU's vector features as torch sees them (also recorded with every benchmark run), and
    under ``'auto'`` the ``dtype='auto'`` probes run in this process so far (``auto_choices()``)."""
    return dict(_flags(), auto=auto_choices())


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
    return _flags()["isa"]


def native_bf16(device: Union[str, torch.device] = "cpu") -> bool:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    info = _flags()
    return info["avx512_bf16"] or info["amx"]


def _native(dtype: torch.dtype, device: torch.device) -> bool:
    if device.type == "cuda":
        return dtype == torch.float16 or native_bf16(device)
    info = _flags()
    return info["amx_fp16"] if dtype == torch.float16 else native_bf16(device)


@dataclass
class ProbeResult:
    """One timed probe: ``net``'s layer in ``dtype`` vs fp32 (seconds per run, interleaved)."""

    dtype: str
    net: str
    grad: bool
    fp32_s: List[float] = field(default_factory=list)
    reduced_s: List[float] = field(default_factory=list)
    ratio: float = float("nan")  # median reduced / median fp32
    faster: bool = False
    seconds: float = 0.0  # what the probe cost, warm-ups included

    def as_dict(self) -> dict:
        return asdict(self)


_CHOICES: Dict[Tuple[torch.dtype, str, bool], ProbeResult] = {}


def _time_layer(net: str, dtype: torch.dtype, grad: bool) -> ProbeResult:
    """The probe: ``net``'s layer (``PROBE_LAYERS``) forward (and backward with ``grad``) in fp32 and
    ``dtype``, channels_last, interleaved runs after a warm-up of each, stopped as soon as a
    ``dtype`` run is not faster than every fp32 run (the verdict is then settled: not faster)."""
    cin, cout, k, pad, batch, side = PROBE_LAYERS.get(net, PROBE_LAYERS["vgg"])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, cin, side, side, generator=g).contiguous(memory_format=torch.channels_last)
    w = (torch.randn(cout, cin, k, k, generator=g) * 0.02).contiguous(memory_format=torch.channels_last)
    inputs = {dt: (x.to(dt), w.to(dt)) for dt in (torch.float32, dtype)}

    def run(dt: torch.dtype) -> float:
        xd, wd = inputs[dt]
        t0 = time.perf_counter()
        if grad:
            xg = xd.detach().requires_grad_(True)
            out = torch.nn.functional.conv2d(xg, wd, padding=pad)
            out.backward(torch.ones_like(out))
        else:
            with torch.no_grad():
                torch.nn.functional.conv2d(xd, wd, padding=pad)
        return time.perf_counter() - t0

    start = time.perf_counter()
    res = ProbeResult(str(dtype).replace("torch.", ""), net, grad)
    run(torch.float32), run(dtype)  # warm-ups: oneDNN primitive creation
    for _ in range(_RUNS):
        res.fp32_s.append(run(torch.float32))
        res.reduced_s.append(run(dtype))
        if max(res.reduced_s) >= min(res.fp32_s):  # the verdict can only be "not faster" now: stop paying
            break
    res.ratio = statistics.median(res.reduced_s) / statistics.median(res.fp32_s)
    res.faster = res.ratio < FASTER_RATIO and max(res.reduced_s) < min(res.fp32_s)
    res.seconds = time.perf_counter() - start
    return res


# the probe, replaceable in tests (a fake probe forces each branch)
_probe_layer: Callable[[str, torch.dtype, bool], ProbeResult] = _time_layer


def _probed(dtype: torch.dtype, net: str, grad: bool) -> ProbeResult:
    key = (dtype, net, grad)
    if key not in _CHOICES:
        _CHOICES[key] = _probe_layer(net, dtype, grad)
    return _CHOICES[key]


def auto_choices() -> List[dict]:
    """Every ``dtype='auto'`` probe this process ran: dtype, net, grad, the fp32 and reduced times
    (seconds per run), their median ratio, the verdict and the probe's own cost."""
    return [r.as_dict() for r in _CHOICES.values()]


def reduced_precision_is_faster(device: Union[str, torch.device], dtype: torch.dtype = torch.bfloat16, *,
                                net: str = "vgg", grad: bool = False) -> bool:
    """Whether ``dtype`` beats fp32 on ``device`` for the trunk ``net`` (see the module docstring)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and _native(dtype, device)
    if device.type != "cpu" or not _native(dtype, device):
        return False  # emulated: always slower (no probe, no cost)
    return _probed(dtype, net, grad).faster


_ALIASES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
            "half": torch.float16, "fp32": None, "float32": None}


def resolve_dtype(dtype: Union[str, torch.dtype, None], device: Union[str, torch.device, None] = None, *,
                  net: str = "vgg", grad: bool = False) -> Optional[torch.dtype]:
    """The compute dtype for a ``dtype=`` argument: None / torch.float32 / 'fp32' -> None (fp32),
    torch.bfloat16 / 'bf16', torch.float16 / 'fp16', or 'auto' -> bf16 where it is faster on
    ``device`` (default CPU) for the trunk ``net`` (forward, or forward and backward with ``grad``),
    else None."""
    device = torch.device(device if device is not None else "cpu")
    if isinstance(dtype, str):
        key = dtype.lower()
        if key == "auto":
            return torch.bfloat16 if reduced_precision_is_faster(device, torch.bfloat16, net=net, grad=grad) else None
        if key not in _ALIASES:
            raise ValueError(f"dtype={dtype!r}: expected 'auto', 'bf16', 'fp16', 'fp32' or a torch dtype")
        return _ALIASES[key]
    if dtype is None or dtype == torch.float32:
        return None
    if dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"dtype= selects a reduced-precision mode (torch.bfloat16, torch.float16 or 'auto'), got "
                         f"{dtype}")
    return dtype


_WARNED: set = set()


def warn_if_slow(dtype: Optional[torch.dtype], device: torch.device, stacklevel: int = 5, net: str = "vgg") -> None:
    """Once per process and (dtype, device type): reduced precision on a CPU where it was not measured faster."""
    if dtype is None or device.type != "cpu" or (dtype, device.type) in _WARNED:
        return
    _WARNED.add((dtype, device.type))
    if _native(dtype, device) and reduced_precision_is_faster(device, dtype, net=net):
        return
    name = "bf16" if dtype == torch.bfloat16 else "fp16"
    info = _flags()
    if not _native(dtype, device):
        why = (f"this CPU ({info['model']}; best ISA {info['isa']}) has no native {name} arithmetic, so it is "
               "emulated (measured 7-8x slower than fp32 for E-LPIPS on an AVX2-only CPU)")
    else:
        r = _probed(dtype, net, False)
        why = (f"on this CPU ({info['model']}; best ISA {info['isa']}) a {net} layer timed {r.ratio:.2f}x fp32's time "
               f"in {name} (taken only below {FASTER_RATIO}x)")
    warnings.warn(f"dtype={dtype} asked for on CPU, but {why}. Use dtype='auto' to get the faster precision for "
                  "the device, or fp32 (dtype=None). This warning is shown once.", PrecisionWarning,
                  stacklevel=stacklevel)


def describe_auto(device: Union[str, torch.device] = "cpu", nets: Iterable[str] = ("alex", "vgg")) -> List[str]:
    """What ``dtype='auto'`` chooses on ``device`` for each trunk of ``nets`` and why, one line each
    (``fastlpips check`` prints them); runs the probes it needs."""
    device = torch.device(device)
    info = _flags()
    lines = []
    for net in nets:
        chosen = resolve_dtype("auto", device, net=net)
        name = "bf16" if chosen == torch.bfloat16 else "fp32"
        if device.type == "cuda":
            why = "native bf16 on this GPU" if chosen is not None else "no native bf16 on this GPU"
        elif device.type != "cpu":
            why = f"no probe for {device.type}"
        elif not _native(torch.bfloat16, device):
            why = f"no native bf16 on this CPU ({info['isa']}): emulated, never faster; no probe run"
        else:
            r = _probed(torch.bfloat16, net, False)
            why = (f"probe on this CPU ({info['isa']}): bf16 {statistics.median(r.reduced_s) * 1e3:.2f} ms vs fp32 "
                   f"{statistics.median(r.fp32_s) * 1e3:.2f} ms per layer run ({r.ratio:.2f}x; bf16 taken below "
                   f"{FASTER_RATIO}x with no overlap), probe cost {r.seconds * 1e3:.0f} ms")
        lines.append(f"dtype='auto' on {device} for {net}: {name} ({why})")
    return lines
