"""The per-layer LPIPS head op: one ``autograd.Function`` over every backend's kernels.

For features f0, f1 (N, C, H, W) and weights w (C,) (None = unit weights)::

    r = ||f||_c,  n = f / (r + eps),  d = n0 - n1,  m[n, 0, h, w] = sum_c w_c d_c^2

The kernels of the chosen backend (``fastlpips.ops.table``: torch, cpp, triton, cuda, cupy)
compute the forward, the backward (gradients of f0, f1 and w) and the jvp; this module is the
only autograd definition of the op. Double backward (``create_graph=True``) runs the torch
backend's backward, which is built from differentiable ops, for every backend.
``fastlpips.reference.lpips_head`` is the ground truth in tests.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..reference import EPS, normalize_channels, weighted_channel_sum
from . import table, torch_kernels

__all__ = ["lpips_head_map", "HeadMap"]


class HeadMap(torch.autograd.Function):
    """(f0, f1, w, eps, backend) -> (m, r0, r1); r0, r1 (the channel norms) are not differentiable."""

    @staticmethod
    def forward(f0, f1, w, eps, backend):
        fwd, _, _ = table.kernels("head", backend)
        return fwd(f0, f1, w, eps)

    @staticmethod
    def setup_context(ctx, inputs, output):
        f0, f1, w, eps, backend = inputs
        _, r0, r1 = output
        ctx.eps, ctx.backend = eps, backend
        ctx.save_for_backward(f0, f1, w, r0, r1)
        ctx.save_for_forward(f0, f1, w, r0, r1)
        ctx.mark_non_differentiable(r0, r1)

    @staticmethod
    def backward(ctx, g, *unused):
        f0, f1, w, r0, r1 = ctx.saved_tensors
        needs = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], w is not None and ctx.needs_input_grad[2]]
        # create_graph=True: the differentiable torch formula (double backward); else the kernels
        bwd = torch_kernels.head_bwd if torch.is_grad_enabled() else table.kernels("head", ctx.backend)[1]
        g0, g1, gw = bwd(g, f0, f1, w, r0, r1, ctx.eps, needs)
        return (g0 if needs[0] else None), (g1 if needs[1] else None), (gw if needs[2] else None), None, None

    @staticmethod
    def jvp(ctx, t0, t1, tw, *unused):
        f0, f1, w, r0, r1 = ctx.saved_tensors
        _, _, jvp = table.kernels("head", ctx.backend)
        tw = None if tw is None else tw.reshape(-1)
        return jvp(f0, f1, w, r0, r1, t0, t1, tw, ctx.eps), None, None


def lpips_head_map(f0: torch.Tensor, f1: torch.Tensor, weight: Optional[torch.Tensor] = None,
                   *, eps: float = EPS, backend: Optional[str] = None, dropout: float = 0.0) -> torch.Tensor:
    """Spatial LPIPS map of one layer: (N, 1, H, W) = sum_c w_c (n0 - n1)_c^2, n = f / (||f|| + eps).

    Args:
        f0, f1: features (N, C, H, W), contiguous or channels_last; batch 1 broadcasts against N.
        weight: per-channel weights, C elements in any shape (None = unit weights).
        backend: 'auto' (default, or ``$FASTLPIPS_BACKEND``), 'torch', 'cpp', 'triton', 'cuda', 'cupy'.
        dropout: probability of zeroing each element of (n0 - n1)^2 before the weighting (lpips'
            training-mode dropout, the global RNG as ``nn.Dropout``); computed with the reference
            math (no kernel has a dropout mask), the backend is then not used.
    Returns the map in the accumulation dtype (float32 for fp16/bf16/fp32 features, float64 for
    float64). Gradients for f0, f1 and the weights, double backward, forward-mode AD (jvp).
    Same value as ``reference.lpips_head(f0, f1, weight, spatial=True)``.
    """
    if f0.shape[0] != f1.shape[0]:
        n = max(f0.shape[0], f1.shape[0])
        f0, f1 = f0.expand(n, *f0.shape[1:]), f1.expand(n, *f1.shape[1:])
    if dropout > 0:  # lpips' training-mode sequence: normalize, square, dropout, weight
        # contiguous (NCHW) like lpips' difference tensor: nn.Dropout then draws lpips' masks
        d = (normalize_channels(f0, eps) - normalize_channels(f1, eps)).square().contiguous()
        return weighted_channel_sum(torch.nn.functional.dropout(d, dropout, training=True), weight)
    name = table.resolve(f0.device, backend, "head")
    w = None if weight is None else weight.reshape(-1)
    return HeadMap.apply(f0, f1, w, eps, name)[0]
