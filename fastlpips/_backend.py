"""Backend choice for the fused kernels: torch | cpp | triton | cuda | cupy (the public face of
``fastlpips.ops.table``, where each backend is declared once).

``auto`` (the default) picks the best available backend for the tensor's device and falls back
silently to the next one; a backend asked for by name (argument or ``FASTLPIPS_BACKEND``) that
is unavailable raises ``BackendUnavailable`` with the reason. ``fastlpips.backends()`` reports
what is available and why not. Nothing is imported until a backend is first needed.
"""
from __future__ import annotations

from typing import Dict

from .ops.table import BACKENDS as _TABLE
from .ops.table import ENV_VAR, BackendUnavailable, native_reason, resolve, why_not
from .ops.table import report as _report

__all__ = ["BACKENDS", "BackendUnavailable", "backends", "resolve", "why_not", "native_reason", "ENV_VAR"]

BACKENDS = tuple(_TABLE)


def backends(device: str = "cpu") -> Dict[str, str]:
    """{backend: 'available' or the reason it is not} for tensors on ``device``."""
    return _report(device)
