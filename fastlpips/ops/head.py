"""The per-layer LPIPS head as one autograd Function with analytic derivatives (pure PyTorch).

For features f0, f1 (N, C, H, W) and weights w (C,) (None = unit weights)::

    r = ||f||_c,  n = f / (r + eps),  d = n0 - n1,  m[n, 0, h, w] = sum_c w_c d_c^2

Backward, with g = dL/dm and u = 2 w d g (per channel)::

    dL/df0 = u / (r0 + eps) - n0 <u, n0>_c / r0      (second term 0 where r0 == 0)
    dL/df1 = the same with -u, n1, r1
    dL/dw_c = sum_{n,h,w} g d_c^2

which is exactly what autograd computes through ``fastlpips.reference.lpips_head`` (and at r == 0
the exact one-sided derivative I / eps), in fewer passes over memory. The backward is built from
differentiable torch ops, so double backward works; ``jvp`` gives forward-mode AD
(``torch.func.jvp``/``linearize``). ``reference.lpips_head`` remains the ground truth in tests.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..reference import EPS

__all__ = ["lpips_head_map"]


def _wsum(x: torch.Tensor, w: Optional[torch.Tensor]) -> torch.Tensor:
    """sum_c w_c x_c -> (N, 1, H, W); a GEMV over the channel axis for channels_last tensors."""
    if w is None:
        return x.sum(1, keepdim=True)
    if x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 1:
        return torch.matmul(x.permute(0, 2, 3, 1), w.reshape(-1, 1)).permute(0, 3, 1, 2)
    return (x * w.reshape(1, -1, 1, 1)).sum(1, keepdim=True)


def _safe_ratio(t: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """t / r with 0 where r == 0 (the norm term of the derivative vanishes at f = 0)."""
    pos = r > 0
    return torch.where(pos, t / torch.where(pos, r, torch.ones_like(r)), torch.zeros_like(t))


def _dnormalize(df: torch.Tensor, n: torch.Tensor, r: torch.Tensor, eps: float) -> torch.Tensor:
    """Derivative of f / (||f|| + eps) along df (also its own adjoint: the Jacobian is symmetric)."""
    return df / (r + eps) - n * _safe_ratio((df * n).sum(1, keepdim=True), r)


def _normalize(f: torch.Tensor, eps: float):
    r = torch.linalg.vector_norm(f, dim=1, keepdim=True)
    return f / (r + eps), r


class _HeadMap(torch.autograd.Function):
    @staticmethod
    def forward(f0, f1, w, eps):
        (n0, r0), (n1, r1) = _normalize(f0, eps), _normalize(f1, eps)
        d = n0 - n1
        return _wsum(d.square(), w), n0, n1, r0, r1

    @staticmethod
    def setup_context(ctx, inputs, output):
        f0, f1, w, eps = inputs
        _, n0, n1, r0, r1 = output
        ctx.eps = eps
        ctx.has_w = w is not None
        # f0/f1 are kept alive by the trunk's own graph anyway (max-pool / ReLU save them).
        ctx.save_for_backward(f0, f1, w, n0, n1, r0, r1)
        ctx.save_for_forward(n0, n1, r0, r1, w)
        ctx.mark_non_differentiable(n0, n1, r0, r1)

    @staticmethod
    def backward(ctx, g, *unused):
        f0, f1, w, n0, n1, r0, r1 = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: rebuild n, r as functions of f (double backward)
            (n0, r0), (n1, r1) = _normalize(f0, ctx.eps), _normalize(f1, ctx.eps)
        d = n0 - n1
        gw = g if w is None else g * w.reshape(1, -1, 1, 1)
        u = 2 * d * gw
        g0 = _dnormalize(u, n0, r0, ctx.eps) if ctx.needs_input_grad[0] else None
        g1 = _dnormalize(-u, n1, r1, ctx.eps) if ctx.needs_input_grad[1] else None
        gwt = None
        if ctx.has_w and ctx.needs_input_grad[2]:
            gwt = (d.square() * g).sum((0, 2, 3)).reshape(w.shape)
        return g0, g1, gwt, None

    @staticmethod
    def jvp(ctx, t0, t1, tw, _):
        n0, n1, r0, r1, w = ctx.saved_tensors  # (saved by save_for_forward)
        d = n0 - n1
        dd = 0
        if t0 is not None:
            dd = dd + _dnormalize(t0, n0, r0, ctx.eps)
        if t1 is not None:
            dd = dd - _dnormalize(t1, n1, r1, ctx.eps)
        tm = _wsum(2 * d * dd, w) if torch.is_tensor(dd) else torch.zeros_like(r0)
        if tw is not None:
            tm = tm + _wsum(d.square(), tw.reshape(-1))
        return tm, None, None, None, None


# Backends whose head kernels exist (see fastlpips._backend); each maps to (fwd, bwd, jvp) ops.
IMPLEMENTED = {"torch", "cpp", "triton", "cuda", "cupy"}


def _native_ops(backend: str):
    if backend in ("cpp", "cuda"):  # one native op, CPU and CUDA implementations
        ops = torch.ops.fastlpips_cpp
        return ops.head_fwd, ops.head_bwd, ops.head_jvp
    if backend == "triton":
        from . import triton_ops  # noqa: F401  (registers torch.ops.fastlpips_triton)

        ops = torch.ops.fastlpips_triton
        return ops.head_fwd, ops.head_bwd, ops.head_jvp
    if backend == "cupy":
        from . import cupy_ops  # noqa: F401  (registers torch.ops.fastlpips_cupy)

        ops = torch.ops.fastlpips_cupy
        return ops.head_fwd, ops.head_bwd, ops.head_jvp
    raise NotImplementedError(f"no head kernels for backend {backend!r}")  # pragma: no cover


def _torch_vjp(g, f0, f1, w, eps, needs):
    """Differentiable backward formula (used for double backward of the native backends)."""
    (n0, r0), (n1, r1) = _normalize(f0, eps), _normalize(f1, eps)
    d = n0 - n1
    u = 2 * d * (g if w is None else g * w.reshape(1, -1, 1, 1))
    g0 = _dnormalize(u, n0, r0, eps) if needs[0] else None
    g1 = _dnormalize(-u, n1, r1, eps) if needs[1] else None
    gw = (d.square() * g).sum((0, 2, 3)).reshape(w.shape) if (w is not None and needs[2]) else None
    return g0, g1, gw


class _NativeHeadMap(torch.autograd.Function):
    """Native kernels behind one autograd node: backward and jvp call the backend's kernels;
    double backward (create_graph=True) uses the differentiable torch formula."""

    @staticmethod
    def forward(f0, f1, w, eps, backend):
        fwd, _, _ = _native_ops(backend)
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
        if torch.is_grad_enabled():
            g0, g1, gw = _torch_vjp(g, f0, f1, w, ctx.eps, needs)
        else:
            _, bwd, _ = _native_ops(ctx.backend)
            g0, g1, gw = bwd(g, f0, f1, w, r0, r1, ctx.eps, needs)
            g0, g1, gw = (g0 if needs[0] else None), (g1 if needs[1] else None), (gw if needs[2] else None)
        return g0, g1, gw, None, None

    @staticmethod
    def jvp(ctx, t0, t1, tw, *unused):
        f0, f1, w, r0, r1 = ctx.saved_tensors
        _, _, jvp = _native_ops(ctx.backend)
        tw = None if tw is None else tw.reshape(-1)
        return jvp(f0, f1, w, r0, r1, t0, t1, tw, ctx.eps), None, None


def lpips_head_map(f0: torch.Tensor, f1: torch.Tensor, weight: Optional[torch.Tensor] = None,
                   *, eps: float = EPS, backend: Optional[str] = None) -> torch.Tensor:
    """Spatial LPIPS map of one layer: (N, 1, H, W) = sum_c w_c (n0 - n1)_c^2, n = f / (||f|| + eps).

    Args:
        f0, f1: features (N, C, H, W), contiguous or channels_last; batch 1 broadcasts against N.
        weight: per-channel weights, C elements in any shape (None = unit weights).
        backend: 'auto' (default, or ``$FASTLPIPS_BACKEND``), 'torch', 'cpp', 'triton', 'cuda', 'cupy'.
    Returns the map in the accumulation dtype (float32 for fp16/bf16/fp32 features, float64 for
    float64). Gradients for f0, f1 and the weights, double backward, forward-mode AD (jvp).
    Same value as ``reference.lpips_head(f0, f1, weight, spatial=True)``.
    """
    from .._backend import resolve

    if f0.shape[0] != f1.shape[0]:
        n = max(f0.shape[0], f1.shape[0])
        f0, f1 = f0.expand(n, *f0.shape[1:]), f1.expand(n, *f1.shape[1:])
    name = resolve(f0.device, backend)
    w = None if weight is None else weight.reshape(-1)
    if name == "torch":
        acc = torch.float64 if f0.dtype == torch.float64 else torch.float32
        if f0.dtype != acc:  # low precision: accumulate in fp32 (eps would underflow in fp16)
            f0, f1 = f0.to(acc), f1.to(acc)
        return _HeadMap.apply(f0, f1, None if w is None else w.to(acc), eps)[0]
    return _NativeHeadMap.apply(f0, f1, w, eps, name)[0]
