"""The channel normalization's kept linearization, for the attacks' J v products; the trunks'
rules live in ``fastlpips.nets.linearize`` (re-exported here)."""
from __future__ import annotations

from typing import Tuple

import torch

from ..nets.linearize import Tangent, linearize_module
from ..ops.torch_kernels import dnormalize
from ..reference import normalize_with_norm

__all__ = ["Tangent", "linearize_module", "linearize_normalize"]


def linearize_normalize(f: torch.Tensor, eps: float) -> Tuple[torch.Tensor, Tangent]:
    """n = f / (||f||_c + eps) and its derivative df / (r + eps) - n <n, df>_c / r (0 term at r = 0):
    the package's one definition of each (reference.normalize_with_norm, ops.torch_kernels.dnormalize)."""
    n, r = normalize_with_norm(f, eps)

    def tangent(df):
        return dnormalize(df, n, r, eps)
    return n, tangent
