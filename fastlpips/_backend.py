"""Backend choice for the fused kernels: torch | cpp | triton | cuda | cupy.

``auto`` (the default) picks the best available backend for the tensor's device and falls back
silently to the next one; a backend asked for by name (argument or ``FASTLPIPS_BACKEND``) that
is unavailable raises ``BackendUnavailable`` with the reason. ``fastlpips.backends()`` reports
what is available and why not. Nothing is imported until a backend is first needed.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Dict, Optional

import torch

__all__ = ["BACKENDS", "BackendUnavailable", "backends", "resolve", "ENV_VAR"]

BACKENDS = ("torch", "cpp", "triton", "cuda", "cupy")
ENV_VAR = "FASTLPIPS_BACKEND"
# Preference order per device type for ``auto``.
_AUTO = {"cpu": ("cpp", "torch"), "cuda": ("cuda", "triton", "cupy", "torch")}


class BackendUnavailable(RuntimeError):
    """A backend asked for by name cannot run here."""


_NATIVE: list = []  # [reason or None] once probed (a plain cache: torch.compile traces it cleanly)


def _native() -> Optional[str]:
    """None if fastlpips._C is usable, else the reason."""
    if not _NATIVE:
        _NATIVE.append(_probe_native())
    return _NATIVE[0]


def _probe_native() -> Optional[str]:
    try:
        importlib.import_module("fastlpips._C")
    except ImportError as e:
        return f"the native extension fastlpips._C is not built ({e}); reinstall with a C++ compiler"
    if not hasattr(torch.ops.fastlpips_cpp, "head_fwd"):  # pragma: no cover - stale build
        return "fastlpips._C has no head kernels (stale build); reinstall"
    from .ops import native  # noqa: F401  (fake kernels and autograd for the native ops)

    return None


def _triton_interpreting() -> bool:
    """Whether the Triton kernels run interpreted (decided when fastlpips.kernels.head is imported)."""
    from fastlpips.kernels import head

    return head.INTERPRETED


def _why_not(name: str, device_type: str) -> Optional[str]:
    """None if ``name`` can run on ``device_type``, else the reason."""
    if name == "torch":
        return None
    if name == "cpp":
        if device_type != "cpu":
            return "the cpp backend runs on CPU tensors only"
        return _native()
    if name == "cuda":
        if device_type != "cuda":
            return "the cuda backend runs on CUDA tensors only"
        reason = _native()
        if reason:
            return reason
        from . import _C

        if not _C.build_info().get("cuda"):
            return "fastlpips._C was built without CUDA (needs nvcc and a CUDA build of torch at install time)"
        return None if torch.cuda.is_available() else "no CUDA device is available"
    if name == "triton":
        if importlib.util.find_spec("triton") is None:  # not imported here: fastlpips.kernels decides how
            return "triton is not installed"
        if device_type == "cpu" and not _triton_interpreting():
            return ("triton runs CPU tensors only through its interpreter, which is used when no CUDA "
                    "device is present (or TRITON_INTERPRET=1 is set before triton is imported)")
        if device_type == "cuda" and not torch.cuda.is_available():
            return "no CUDA device is available"
        return _missing_kernels("triton")
    if name == "cupy":
        if device_type != "cuda":
            return "the cupy backend runs on CUDA tensors only"
        try:
            cupy = importlib.import_module("cupy")
        except ImportError:
            return "cupy is not installed (pip install cupy-cuda13x)"
        if not cupy.cuda.is_available():
            return "cupy finds no CUDA device"
        return _missing_kernels("cupy")
    raise ValueError(f"unknown backend {name!r}; expected one of {BACKENDS} or 'auto'")


def _missing_kernels(name: str) -> Optional[str]:
    from .ops import head

    return None if name in head.IMPLEMENTED else f"the {name} head kernels are not implemented yet"


def backends(device: str = "cpu") -> Dict[str, str]:
    """{backend: 'available' or the reason it is not} for tensors on ``device``."""
    dt = torch.device(device).type
    return {name: (_why_not(name, dt) or "available") for name in BACKENDS}


def resolve(device: torch.device, requested: Optional[str] = None) -> str:
    """The backend to run on ``device``: ``requested`` > ``$FASTLPIPS_BACKEND`` > auto."""
    name = requested or os.environ.get(ENV_VAR) or "auto"
    dt = torch.device(device).type
    if name == "auto":
        for cand in _AUTO.get(dt, ("torch",)):
            if _why_not(cand, dt) is None:
                return cand
        return "torch"
    reason = _why_not(name, dt)
    if reason is not None:
        src = "FASTLPIPS_BACKEND" if requested is None else "backend="
        raise BackendUnavailable(f"backend {name!r} ({src}) cannot run on {dt} tensors: {reason}")
    return name
