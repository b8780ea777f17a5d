"""Register a backend's three head kernels (fwd, bwd, jvp) as torch.library custom ops, and the
fake (meta) kernels of the head and statistics ops that every namespace shares.

Going through the dispatcher lets torch.func transforms, fake tensors and torch.compile see
plain tensors and a fake implementation; the kernels themselves know nothing of this.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import torch
from torch import Tensor

from .torch_kernels import acc_dtype as _acc


def fake_fwd(f0, f1, w, eps):
    n, _, h, wd = f0.shape
    m = f0.new_empty((n, 1, h, wd), dtype=_acc(f0.dtype))
    return m, torch.empty_like(m), torch.empty_like(m)


def fake_bwd(g, f0, f1, w, r0, r1, eps, needs):
    cl = torch.channels_last
    g0 = torch.empty(f0.shape, dtype=f0.dtype, device=f0.device, memory_format=cl) if needs[0] else f0.new_empty((0,))
    g1 = torch.empty(f1.shape, dtype=f1.dtype, device=f1.device, memory_format=cl) if needs[1] else f1.new_empty((0,))
    gw = w.new_empty(w.shape) if (needs[2] and w is not None) else f0.new_empty((0,), dtype=_acc(f0.dtype))
    return g0, g1, gw


def fake_jvp(f0, f1, w, r0, r1, t0, t1, tw, eps):
    n, _, h, wd = f0.shape
    return f0.new_empty((n, 1, h, wd), dtype=_acc(f0.dtype))


def fake_stats_fwd(fx, fy, alpha, beta, c1, c2):
    """The statistics op's forward: t (N,) and s (N, C, 5) in the accumulation dtype."""
    n, c = fx.shape[:2]
    acc = _acc(fx.dtype)
    return fx.new_empty((n,), dtype=acc), fx.new_empty((n, c, 5), dtype=acc)


def fake_stats_bwd(g, fx, fy, alpha, beta, s, c1, c2, needs):
    """The statistics op's backward: full channels_last feature gradients where needed, else empty."""
    def grad(need, f):
        if not need:
            return f.new_empty((0,))
        return torch.empty(f.shape, dtype=f.dtype, device=f.device, memory_format=torch.channels_last)

    return grad(needs[0], fx), grad(needs[1], fy)


def register_head_ops(namespace: str, fwd: Callable, bwd: Callable, jvp: Callable) -> None:
    """Define ``torch.ops.<namespace>.head_fwd / head_bwd / head_jvp`` with fake kernels."""

    @torch.library.custom_op(f"{namespace}::head_fwd", mutates_args=())
    def head_fwd(f0: Tensor, f1: Tensor, w: Optional[Tensor], eps: float) -> Tuple[Tensor, Tensor, Tensor]:
        return fwd(f0, f1, w, eps)

    @torch.library.custom_op(f"{namespace}::head_bwd", mutates_args=())
    def head_bwd(g: Tensor, f0: Tensor, f1: Tensor, w: Optional[Tensor], r0: Tensor, r1: Tensor, eps: float,
                 needs: List[bool]) -> Tuple[Tensor, Tensor, Tensor]:
        return bwd(g, f0, f1, w, r0, r1, eps, needs)

    @torch.library.custom_op(f"{namespace}::head_jvp", mutates_args=())
    def head_jvp(f0: Tensor, f1: Tensor, w: Optional[Tensor], r0: Tensor, r1: Tensor, t0: Optional[Tensor],
                 t1: Optional[Tensor], tw: Optional[Tensor], eps: float) -> Tensor:
        return jvp(f0, f1, w, r0, r1, t0, t1, tw, eps)

    head_fwd.register_fake(fake_fwd)
    head_bwd.register_fake(fake_bwd)
    head_jvp.register_fake(fake_jvp)
