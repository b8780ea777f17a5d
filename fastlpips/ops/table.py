"""The op table: every op (``head``, ``transform``) x every backend, in one place.

A backend entry says on which device types it runs, how to probe it (``None`` = usable, else the
reason it is not) and, per op, how to load its kernels:

* ``head``: ``(fwd, bwd, jvp)`` with the signatures of ``fastlpips.ops.registry`` —
  ``fwd(f0, f1, w, eps) -> (m, r0, r1)``, ``bwd(g, f0, f1, w, r0, r1, eps, needs) -> (g0, g1, gw)``,
  ``jvp(f0, f1, w, r0, r1, t0, t1, tw, eps) -> tm``;
* ``transform``: ``(fwd, bwd)`` — ``fwd(x, params, colors, scale, out_h, out_w)`` and the adjoint
  ``bwd(grad, params, colors, scale, batch, in_h, in_w)``;
* ``stats`` (DISTS' per-stage statistics): ``(fwd, bwd)`` — ``fwd(fx, fy, alpha, beta, c1, c2) ->
  (t, s)`` and ``bwd(g, fx, fy, alpha, beta, s, c1, c2, needs) -> (gx, gy)``.

Kernels are plain functions or torch.library ops with no autograd of their own; each op has one
``autograd.Function`` (``fastlpips.ops.head`` / ``transform`` / ``stats``) that calls them.
Backend choice (``resolve``), ``fastlpips.backends()`` and ``fastlpips check`` read this table.
Adding a backend = one ``Backend`` entry here plus its kernels. Nothing is imported until a
backend is first probed or used.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Tuple, Union

import torch

__all__ = ["OPS", "BACKENDS", "Backend", "BackendUnavailable", "ENV_VAR", "why_not", "kernels", "resolve",
           "report"]

OPS = ("head", "transform", "stats")
ENV_VAR = "FASTLPIPS_BACKEND"


class BackendUnavailable(RuntimeError):
    """A backend asked for by name cannot run here."""


@dataclass(frozen=True)
class Backend:
    name: str
    devices: Tuple[str, ...]                       # device types it runs on
    probe: Callable[[str], Optional[str]]          # device type -> None (usable) or the reason
    ops: Dict[str, Callable[[], tuple]] = field(default_factory=dict)  # op -> loader of its kernels


# -- probes -----------------------------------------------------------------------------------------
_NATIVE: list = []  # [reason or None] once probed (a plain cache: torch.compile traces it cleanly)


def native_reason() -> Optional[str]:
    """None if the extension fastlpips._C is usable, else the reason."""
    if not _NATIVE:
        _NATIVE.append(_probe_native())
    return _NATIVE[0]


def _probe_native() -> Optional[str]:
    try:
        importlib.import_module("fastlpips._C")
    except ImportError as e:
        return f"the native extension fastlpips._C is not built ({e}); reinstall with a C++ compiler"
    if not hasattr(torch.ops.fastlpips_native, "head_fwd"):  # pragma: no cover - stale build
        return "fastlpips._C has no head kernels (stale build); reinstall"
    from . import native  # noqa: F401  (fake kernels of the native ops)

    return None


def _probe_torch(device_type: str) -> Optional[str]:
    return None


def _probe_cpp(device_type: str) -> Optional[str]:
    return native_reason()


def _probe_cuda(device_type: str) -> Optional[str]:
    reason = native_reason()
    if reason:
        return reason
    from .. import _C  # type: ignore[attr-defined]  # the compiled extension

    if not _C.build_info().get("cuda"):
        return "fastlpips._C was built without CUDA (needs nvcc and a CUDA build of torch at install time)"
    return None if torch.cuda.is_available() else "no CUDA device is available"


def _probe_triton(device_type: str) -> Optional[str]:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if device_type == "cpu":
        from ..kernels import head

        if not head.interpreted():
            return ("triton runs CPU tensors only through its interpreter, which is used when no CUDA "
                    "device is present (or when TRITON_INTERPRET=1 is set)")
    elif not torch.cuda.is_available():
        return "no CUDA device is available"
    return None


def _probe_cupy(device_type: str) -> Optional[str]:
    try:
        cupy = importlib.import_module("cupy")
    except ImportError:
        return "cupy is not installed (pip install cupy-cuda13x)"
    return None if cupy.cuda.is_available() else "cupy finds no CUDA device"


# -- kernel loaders ---------------------------------------------------------------------------------
def _torch_head():
    from . import torch_kernels as k

    return k.head_fwd, k.head_bwd, k.head_jvp


def _torch_transform():
    from . import torch_kernels as k

    return k.transform_fwd, k.transform_bwd


def _torch_stats():
    from . import torch_kernels as k

    return k.stats_fwd, k.stats_bwd


_HEAD = ("head_fwd", "head_bwd", "head_jvp")
_TRANSFORM = ("transform_fwd", "transform_bwd")
_STATS = ("stats_fwd", "stats_bwd")


def _library(namespace: str, names: Tuple[str, ...], register: Optional[str] = None) -> Callable[[], tuple]:
    """A loader of ``torch.ops.<namespace>.<names>``, importing the module that registers them first."""
    def load() -> tuple:
        if register is not None:
            importlib.import_module(register, __package__)
        ops = getattr(torch.ops, namespace)
        return tuple(getattr(ops, n) for n in names)
    return load


BACKENDS: Dict[str, Backend] = {b.name: b for b in (
    Backend("torch", ("cpu", "cuda"), _probe_torch, {"head": _torch_head, "transform": _torch_transform,
                                                     "stats": _torch_stats}),
    Backend("cpp", ("cpu",), _probe_cpp, {"head": _library("fastlpips_native", _HEAD),
                                          "transform": _library("fastlpips_native", _TRANSFORM),
                                          "stats": _library("fastlpips_native", _STATS)}),
    Backend("triton", ("cpu", "cuda"), _probe_triton, {"head": _library("fastlpips_triton", _HEAD, ".triton_ops"),
                                                       "transform": _library("fastlpips_triton", _TRANSFORM,
                                                                             ".triton_ops"),
                                                       "stats": _library("fastlpips_triton", _STATS, ".triton_ops")}),
    Backend("cuda", ("cuda",), _probe_cuda, {"head": _library("fastlpips_native", _HEAD),
                                             "transform": _library("fastlpips_native", _TRANSFORM),
                                             "stats": _library("fastlpips_native", _STATS)}),
    Backend("cupy", ("cuda",), _probe_cupy, {"head": _library("fastlpips_cupy", _HEAD, ".cupy_ops")}),
)}

# Preference order of ``auto`` per device type (the first usable backend that has the op).
AUTO = {"cpu": ("cpp", "torch"), "cuda": ("cuda", "triton", "cupy", "torch")}


def why_not(name: str, device_type: str, op: Optional[str] = None) -> Optional[str]:
    """None if backend ``name`` can run ``op`` (any op when None) on ``device_type``, else the reason."""
    b = BACKENDS.get(name)
    if b is None:
        raise ValueError(f"unknown backend {name!r}; expected one of {tuple(BACKENDS)} or 'auto'")
    if device_type not in b.devices:
        return f"the {name} backend runs on {' or '.join(d.upper() for d in b.devices)} tensors only"
    if op is not None and op not in b.ops:
        return f"the {name} backend has no {op} kernels"
    return b.probe(device_type)


_LOADED: Dict[Tuple[str, str, Callable], tuple] = {}


def kernels(op: str, name: str) -> tuple:
    """The kernels of ``op`` for backend ``name`` (see the module docstring for their signatures),
    loaded once (the op's autograd Function looks them up on every call)."""
    loader = BACKENDS[name].ops[op]
    key = (op, name, loader)
    found = _LOADED.get(key)
    if found is None:
        found = _LOADED[key] = loader()
    return found


def report(device: Union[str, torch.device] = "cpu") -> Dict[str, str]:
    """{backend: 'available' or the reason it is not} for tensors on ``device``."""
    dt = torch.device(device).type
    return {name: (why_not(name, dt) or "available") for name in BACKENDS}


def resolve(device: Union[str, torch.device], requested: Optional[str] = None, op: str = "head") -> str:
    """The backend to run ``op`` on ``device``: ``requested`` > ``$FASTLPIPS_BACKEND`` > auto.
    ``auto`` falls back silently; a backend named explicitly that cannot run raises
    ``BackendUnavailable``, except that a backend lacking this op (CuPy has no transform kernels)
    hands it to the next one of ``auto``."""
    name = requested or os.environ.get(ENV_VAR) or "auto"
    dt = torch.device(device).type
    if name != "auto":
        reason = why_not(name, dt)
        if reason is not None:
            src = "FASTLPIPS_BACKEND" if requested is None else "backend="
            raise BackendUnavailable(f"backend {name!r} ({src}) cannot run on {dt} tensors: {reason}")
        if op in BACKENDS[name].ops:
            return name
    for cand in AUTO.get(dt, ("torch",)):
        if why_not(cand, dt, op) is None:
            return cand
    return "torch"
