"""The Triton kernels as torch.library custom ops: ``torch.ops.fastlpips_triton.*``."""
from typing import List, Tuple

import torch
from torch import Tensor

from fastlpips.kernels import head as _k
from fastlpips.kernels import stats as _s
from fastlpips.kernels import transform as _t

from .registry import fake_stats_bwd, fake_stats_fwd, register_head_ops

register_head_ops("fastlpips_triton", _k.head_fwd, _k.head_bwd, _k.head_jvp)


@torch.library.custom_op("fastlpips_triton::transform_fwd", mutates_args=())
def transform_fwd(x: Tensor, params: Tensor, colors: Tensor, scale: int, out_h: int, out_w: int) -> Tensor:
    return _t.transform_fwd(x, params, colors, scale, out_h, out_w)


@torch.library.custom_op("fastlpips_triton::transform_bwd", mutates_args=())
def transform_bwd(grad: Tensor, params: Tensor, colors: Tensor, scale: int, batch: int, in_h: int,
                  in_w: int) -> Tensor:
    return _t.transform_bwd(grad, params, colors, scale, batch, in_h, in_w)


@transform_fwd.register_fake
def _(x, params, colors, scale, out_h, out_w):
    return x.new_empty((params.shape[0], 3, out_h, out_w))


@transform_bwd.register_fake
def _(grad, params, colors, scale, batch, in_h, in_w):
    return grad.new_empty((batch, 3, in_h, in_w))


@torch.library.custom_op("fastlpips_triton::stats_fwd", mutates_args=())
def stats_fwd(fx: Tensor, fy: Tensor, alpha: Tensor, beta: Tensor, c1: float, c2: float) -> Tuple[Tensor, Tensor]:
    return _s.stats_fwd(fx, fy, alpha, beta, c1, c2)


@torch.library.custom_op("fastlpips_triton::stats_bwd", mutates_args=())
def stats_bwd(g: Tensor, fx: Tensor, fy: Tensor, alpha: Tensor, beta: Tensor, s: Tensor, c1: float, c2: float,
              needs: List[bool]) -> Tuple[Tensor, Tensor]:
    return _s.stats_bwd(g, fx, fy, alpha, beta, s, c1, c2, needs)


stats_fwd.register_fake(fake_stats_fwd)
stats_bwd.register_fake(fake_stats_bwd)
