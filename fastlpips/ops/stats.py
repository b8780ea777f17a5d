"""DISTS' per-stage statistics op: one ``autograd.Function`` over every backend's kernels.

For one stage's feature maps fx, fy (N, C, H, W) and weights alpha, beta (C,)::

    t[n] = sum_c alpha_c S1[n, c] + beta_c S2[n, c]
    S1 = (2 mx my + c1) / (mx^2 + my^2 + c1),   S2 = (2 cxy + c2) / (vx + vy + c2)

with the per-channel means, variances and covariance over the pixels (the formulas, forward and
backward, in ``fastlpips.ops.torch_kernels``). The kernels of the chosen backend (the op table's
``stats`` op: torch, cpp, triton, cuda) compute the statistics, t and the feature gradients;
the gradients of alpha and beta (sums over the batch of g S1, g S2), forward-mode AD (jvp) and
double backward (``create_graph=True``) use the torch formulas, which are built from
differentiable ops. ``fastlpips.reference.dists_stage`` is the ground truth in tests.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..reference import DISTS_C1, DISTS_C2
from . import table, torch_kernels

__all__ = ["dists_stage_term", "StageStats"]


class StageStats(torch.autograd.Function):
    """(fx, fy, alpha, beta, c1, c2, backend) -> (t, s); s (the statistics) is not differentiable."""

    @staticmethod
    def forward(fx, fy, alpha, beta, c1, c2, backend):
        fwd, _ = table.kernels("stats", backend)
        return fwd(fx, fy, alpha, beta, c1, c2)

    @staticmethod
    def setup_context(ctx, inputs, output):
        fx, fy, alpha, beta, c1, c2, backend = inputs
        ctx.c1, ctx.c2, ctx.backend = c1, c2, backend
        ctx.save_for_backward(fx, fy, alpha, beta, output[1])
        ctx.save_for_forward(fx, fy, alpha, beta)
        ctx.mark_non_differentiable(output[1])

    @staticmethod
    def backward(ctx, g, *unused):
        fx, fy, alpha, beta, s = ctx.saved_tensors
        needs = [ctx.needs_input_grad[0], ctx.needs_input_grad[1]]
        graph = torch.is_grad_enabled()  # create_graph=True: the differentiable torch formulas
        gx = gy = ga = gb = None
        if any(needs):
            bwd = torch_kernels.stats_bwd if graph else table.kernels("stats", ctx.backend)[1]
            gx, gy = bwd(g, fx, fy, alpha, beta, s, ctx.c1, ctx.c2, needs)
        if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
            ga, gb = torch_kernels.stats_weight_grads(g, fx, fy, None if graph else s, ctx.c1, ctx.c2)
            ga, gb = ga.to(alpha.dtype).reshape(alpha.shape), gb.to(beta.dtype).reshape(beta.shape)
        return (gx if needs[0] else None), (gy if needs[1] else None), \
            (ga if ctx.needs_input_grad[2] else None), (gb if ctx.needs_input_grad[3] else None), None, None, None

    @staticmethod
    def jvp(ctx, tx, ty, ta, tb, *unused):
        fx, fy, alpha, beta = ctx.saved_tensors
        return torch_kernels.stats_jvp(fx, fy, alpha, beta, tx, ty, ta, tb, ctx.c1, ctx.c2), None


def dists_stage_term(fx: torch.Tensor, fy: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, *,
                     c1: float = DISTS_C1, c2: float = DISTS_C2, backend: Optional[str] = None) -> torch.Tensor:
    """One DISTS stage's term sum_c (alpha_c S1_c + beta_c S2_c) -> (N,) in the accumulation dtype
    (float32 for fp16/bf16/fp32 features, float64 for float64).

    Args:
        fx, fy: feature maps (N, C, H, W), contiguous or channels_last, of one dtype and device; a
            batch of 1 broadcasts against N.
        alpha, beta: the stage's weights, C elements each (already divided by DISTS' joint sum).
        backend: 'auto' (default, or ``$FASTLPIPS_BACKEND``), 'torch', 'cpp', 'triton', 'cuda'
            (CuPy has no statistics kernels: the next backend of 'auto' runs it).
    Gradients for fx, fy, alpha and beta, double backward, forward-mode AD (jvp). Same value as
    ``reference.dists_stage`` (which computes the covariance as E[xy] - mx my; the kernels use
    centred sums, the more accurate form of the same number).
    """
    if fx.dim() != 4 or fy.dim() != 4:
        raise ValueError(f"features must be (N, C, H, W), got {tuple(fx.shape)} and {tuple(fy.shape)}")
    if fx.shape[1:] != fy.shape[1:] or (fx.shape[0] != fy.shape[0] and 1 not in (fx.shape[0], fy.shape[0])):
        raise ValueError(f"features must have one shape (a batch of 1 broadcasts), got {tuple(fx.shape)} and "
                         f"{tuple(fy.shape)}")
    if not fx.is_floating_point() or fx.dtype != fy.dtype:
        raise TypeError(f"features must be floating point of one dtype, got {fx.dtype} and {fy.dtype}")
    if fx.device != fy.device:
        raise ValueError(f"features must be on one device, got {fx.device} and {fy.device}")
    c = fx.shape[1]
    if alpha.numel() != c or beta.numel() != c:
        raise ValueError(f"alpha and beta must have C = {c} elements, got {alpha.numel()} and {beta.numel()}")
    if fx.shape[2] * fx.shape[3] == 0:
        raise ValueError(f"features have no pixels: {tuple(fx.shape)}")
    if fx.shape[0] != fy.shape[0]:
        n = 0 if 0 in (fx.shape[0], fy.shape[0]) else max(fx.shape[0], fy.shape[0])
        fx, fy = fx.expand(n, *fx.shape[1:]), fy.expand(n, *fy.shape[1:])
    name = table.resolve(fx.device, backend, "stats")
    return StageStats.apply(fx, fy, alpha.reshape(-1), beta.reshape(-1), float(c1), float(c2), name)[0]
