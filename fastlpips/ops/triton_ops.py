"""The Triton kernels as torch.library custom ops: ``torch.ops.fastlpips_triton.*``."""
import torch
from torch import Tensor

from fastlpips.kernels import head as _k
from fastlpips.kernels import transform as _t

from .registry import register_head_ops

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
