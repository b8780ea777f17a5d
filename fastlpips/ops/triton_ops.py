"""The Triton head kernels as torch.library custom ops (``torch.ops.fastlpips_triton.*``).

Going through the dispatcher lets torch.func transforms (jvp, vmap wrappers), fake tensors and
torch.compile see plain tensors and a fake implementation; the kernels themselves live in
``fastlpips.kernels.head`` and know nothing of this.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from fastlpips.kernels import head as _k


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.custom_op("fastlpips_triton::head_fwd", mutates_args=())
def head_fwd(f0: Tensor, f1: Tensor, w: Optional[Tensor], eps: float) -> Tuple[Tensor, Tensor, Tensor]:
    return _k.head_fwd(f0, f1, w, eps)


@head_fwd.register_fake
def _(f0, f1, w, eps):
    n, _, h, wd = f0.shape
    m = f0.new_empty((n, 1, h, wd), dtype=_acc(f0.dtype))
    return m, torch.empty_like(m), torch.empty_like(m)


@torch.library.custom_op("fastlpips_triton::head_bwd", mutates_args=())
def head_bwd(g: Tensor, f0: Tensor, f1: Tensor, w: Optional[Tensor], r0: Tensor, r1: Tensor, eps: float,
             needs: List[bool]) -> Tuple[Tensor, Tensor, Tensor]:
    return _k.head_bwd(g, f0, f1, w, r0, r1, eps, needs)


@head_bwd.register_fake
def _(g, f0, f1, w, r0, r1, eps, needs):
    cl = torch.channels_last
    g0 = torch.empty(f0.shape, dtype=f0.dtype, device=f0.device, memory_format=cl) if needs[0] else f0.new_empty((0,))
    g1 = torch.empty(f1.shape, dtype=f1.dtype, device=f1.device, memory_format=cl) if needs[1] else f1.new_empty((0,))
    gw = w.new_empty(w.shape) if (needs[2] and w is not None) else f0.new_empty((0,), dtype=_acc(f0.dtype))
    return g0, g1, gw


@torch.library.custom_op("fastlpips_triton::head_jvp", mutates_args=())
def head_jvp(f0: Tensor, f1: Tensor, w: Optional[Tensor], r0: Tensor, r1: Tensor, t0: Optional[Tensor],
             t1: Optional[Tensor], tw: Optional[Tensor], eps: float) -> Tensor:
    return _k.head_jvp(f0, f1, w, r0, r1, t0, t1, tw, eps)


@head_jvp.register_fake
def _(f0, f1, w, r0, r1, t0, t1, tw, eps):
    n, _, h, wd = f0.shape
    return f0.new_empty((n, 1, h, wd), dtype=_acc(f0.dtype))
