"""Pure-PyTorch ground truth of the LPIPS per-layer head (also the CPU fallback) and of DISTS'
per-stage statistics term (``dists_stage``, the release's arithmetic).

For one trunk layer with features ``f0, f1`` of shape (N, C, H, W)::

    n = f / (||f||_c + eps)                      # per pixel, over channels; eps OUTSIDE the sqrt
    d[n, h, w] = sum_c w_c (n0 - n1)[n, c, h, w]^2   # w = None means unit weights
    out = mean_{h,w} d  -> (N,)    or    d -> (N, 1, H, W) with ``spatial=True``

Zero feature vectors: the reference ``lpips`` package gets NaN gradients there (the derivative of
sqrt at 0). Here the norm's derivative is taken as 0 where ``||f|| == 0``, which is the exact
one-sided derivative of ``f / (||f|| + eps)`` at f = 0 (the Jacobian there is I / eps), so
gradients stay finite. Forward values are unchanged.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

EPS = 1e-10
#: torchmetrics' normalization adds its epsilon inside the square root: f / sqrt(||f||^2 + 1e-8).
ROOT_EPS = 1e-8

#: DISTS' stabilizing constants of both similarity terms (the release's c1 = c2 = 1e-6).
DISTS_C1 = 1e-6
DISTS_C2 = 1e-6

__all__ = ["EPS", "ROOT_EPS", "DISTS_C1", "DISTS_C2", "safe_norm", "normalize_with_norm", "normalize_channels",
           "normalize_channels_root", "lpips_head", "weighted_channel_sum", "spatial_average", "upsample",
           "dists_stage"]


def safe_norm(f: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """``sqrt(sum_c f^2)`` (keepdim) whose gradient is 0 instead of NaN where the norm is 0.

    float32/float64: the sum of squares, then a square root guarded where the sum is 0 (its
    gradient there is 0); ``torch.linalg.vector_norm`` over a non-innermost axis of an NCHW
    tensor is ~20x slower on CPU (7 ms vs 0.3 ms for 50x16x32x32 here). Half types keep
    ``vector_norm``, which accumulates in float32 (a float16 sum of squares overflows)."""
    if f.dtype in (torch.float16, torch.bfloat16):
        return torch.linalg.vector_norm(f, ord=2, dim=dim, keepdim=True)
    s = (f * f).sum(dim, keepdim=True)
    pos = s > 0
    return torch.where(pos, torch.where(pos, s, torch.ones_like(s)).sqrt(), torch.zeros_like(s))


def normalize_with_norm(f: torch.Tensor, eps: float = EPS) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(f / (||f||_channels + eps), ||f||_channels)``: the one definition of the channel
    normalization (reference, torch kernels, attacks), finite gradients at f = 0."""
    r = safe_norm(f)
    return f / (r + eps), r


def normalize_channels(f: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """``f / (||f||_channels + eps)`` with finite gradients at f = 0 (see module docstring)."""
    return normalize_with_norm(f, eps)[0]


def normalize_channels_root(f: torch.Tensor, eps: float = ROOT_EPS) -> torch.Tensor:
    """``f / sqrt(||f||_channels^2 + eps)``: torchmetrics' channel normalization (``eps`` inside the
    square root; finite gradients everywhere since eps > 0). Differs from :func:`normalize_channels`
    by ~1e-7 on real features; the two part only near all-zero feature vectors."""
    return f / torch.sqrt((f * f).sum(1, keepdim=True) + eps)


def spatial_average(in_tens: torch.Tensor, keepdim: bool = True) -> torch.Tensor:
    """Mean over the two spatial axes (``lpips.spatial_average``)."""
    return in_tens.mean([2, 3], keepdim=keepdim)


def upsample(in_tens: torch.Tensor, out_HW: Sequence[int] = (64, 64)) -> torch.Tensor:
    """Bilinear resize to ``out_HW`` with align_corners=False (``lpips.upsample``)."""
    return F.interpolate(in_tens, size=tuple(out_HW), mode="bilinear", align_corners=False)


def lpips_head(f0: torch.Tensor, f1: torch.Tensor, weight: Optional[torch.Tensor] = None, *,
               eps: float = EPS, spatial: bool = False, normalized: bool = False) -> torch.Tensor:
    """One layer's LPIPS distance.

    Args:
        f0, f1: features (N, C, H, W), any memory layout; N may broadcast (1 vs N).
        weight: per-channel weights of shape (C,) or (1, C, 1, 1); None = unit weights.
        eps: added to the channel norm (outside the sqrt).
        spatial: return the (N, 1, H, W) map instead of the (N,) mean.
        normalized: f0, f1 are already channel-normalized (skip that step).
    """
    if not normalized:
        f0, f1 = normalize_channels(f0, eps), normalize_channels(f1, eps)
    m = weighted_channel_sum((f0 - f1).square(), weight)
    return m if spatial else m.mean((1, 2, 3))


def weighted_channel_sum(d: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(N, C, H, W) -> (N, 1, H, W): sum_c w_c d_c, as lpips' 1x1 convolution (None = unit weights)."""
    if weight is None:
        return d.sum(1, keepdim=True)
    return F.conv2d(d, weight.reshape(1, -1, 1, 1).to(d.dtype))


def dists_stage(fx: torch.Tensor, fy: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor,
                c1: float = DISTS_C1, c2: float = DISTS_C2) -> torch.Tensor:
    """One DISTS stage's term sum_c (alpha_c S1_c + beta_c S2_c), (N,), of feature maps (N, C, H, W)
    (a batch of 1 broadcasts); alpha, beta: (C,) already divided by the joint sum. Per channel, with
    population statistics over the pixels::

        S1 = (2 mu_x mu_y + c1) / (mu_x^2 + mu_y^2 + c1),   S2 = (2 sigma_xy + c2) / (sigma_x^2 + sigma_y^2 + c2)

    The release's arithmetic (dists-pytorch 0.1: the covariance as E[xy] - mu_x mu_y) with plain
    torch autograd: the ground truth of the statistics op (``fastlpips.ops.stats``)."""
    mx, my = fx.mean((2, 3), keepdim=True), fy.mean((2, 3), keepdim=True)
    s1 = (2 * mx * my + c1) / (mx * mx + my * my + c1)
    vx = ((fx - mx) ** 2).mean((2, 3), keepdim=True)
    vy = ((fy - my) ** 2).mean((2, 3), keepdim=True)
    cxy = (fx * fy).mean((2, 3), keepdim=True) - mx * my
    s2 = (2 * cxy + c2) / (vx + vy + c2)
    w = alpha.reshape(1, -1, 1, 1) * s1 + beta.reshape(1, -1, 1, 1) * s2
    return w.sum((1, 2, 3))
