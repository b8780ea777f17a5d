"""The fused E-LPIPS batched random transform and its adjoint, behind the backend dispatch.

``batched_transform(x, t)`` maps images x (B, 3, H, W) and a ``TransformBatch`` t of S samples
(one scale level) to the transformed (S*B, 3, h, w) batch in one pass (output image n comes from
image n % B): mirror pad + box downscale (step 1), offset padding (2), flip (3), swap (4),
channel permutation (5) and colour scale (6), as in ``fastlpips.transforms.apply_transform``.

The map is linear in x; gradients reach x through the adjoint kernel (a scatter-add), the
adjoint's own derivative is the forward kernel again (double backward), and forward-mode AD
applies the forward kernel to the tangent: one autograd definition (here) over the kernels of the
op table (fastlpips.ops.table): 'torch' (a vectorized gather and scatter-add,
fastlpips.ops.torch_kernels), 'cpp' and 'cuda' (fastlpips._C, math in
csrc/include/fastlpips/transform_math.h), 'triton' (kernels/transform.py, interpreted on CPU).
The colours are constants (no gradient).
"""
from __future__ import annotations

from typing import Optional

import torch

from ..transforms import TransformBatch
from . import table
from .torch_kernels import acc_dtype

__all__ = ["batched_transform"]


class _Transform(torch.autograd.Function):
    @staticmethod
    def forward(x, params, colors, scale, out_h, out_w, backend):
        fwd, _ = table.kernels("transform", backend)
        return fwd(x, params, colors, scale, out_h, out_w)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, params, colors, scale, _, _, backend = inputs
        ctx.params, ctx.colors, ctx.scale, ctx.backend = params, colors, scale, backend
        ctx.in_shape, ctx.out_hw = tuple(x.shape), (inputs[4], inputs[5])

    @staticmethod
    def backward(ctx, g):
        b, _, h, w = ctx.in_shape
        gx = _TransformAdjoint.apply(g, ctx.params, ctx.colors, ctx.scale, b, h, w, ctx.backend)
        return gx, None, None, None, None, None, None

    @staticmethod
    def jvp(ctx, tx, *unused):
        fwd, _ = table.kernels("transform", ctx.backend)
        return fwd(tx, ctx.params, ctx.colors, ctx.scale, *ctx.out_hw)

    @staticmethod
    def vmap(info, in_dims, x, params, colors, scale, out_h, out_w, backend):
        """torch.func.vmap (e.g. jacfwd): one call per vmapped slice (the kernels take one batch)."""
        xs = x.movedim(in_dims[0], 0)
        return torch.stack([_Transform.apply(xi, params, colors, scale, out_h, out_w, backend) for xi in xs]), 0


class _TransformAdjoint(torch.autograd.Function):
    """The adjoint as its own node: its derivative is the forward transform (double backward)."""

    @staticmethod
    def forward(g, params, colors, scale, batch, in_h, in_w, backend):
        _, bwd = table.kernels("transform", backend)
        return bwd(g, params, colors, scale, batch, in_h, in_w)

    @staticmethod
    def setup_context(ctx, inputs, output):
        g, params, colors, scale, _, _, _, backend = inputs
        ctx.params, ctx.colors, ctx.scale, ctx.backend = params, colors, scale, backend
        ctx.out_hw = tuple(g.shape[2:])

    @staticmethod
    def backward(ctx, gg):
        ggx = _Transform.apply(gg, ctx.params, ctx.colors, ctx.scale, *ctx.out_hw, ctx.backend)
        return ggx, None, None, None, None, None, None, None

    @staticmethod
    def vmap(info, in_dims, g, params, colors, scale, batch, in_h, in_w, backend):
        gs = g.movedim(in_dims[0], 0)
        return torch.stack([_TransformAdjoint.apply(gi, params, colors, scale, batch, in_h, in_w, backend)
                            for gi in gs]), 0


def batched_transform(x: torch.Tensor, t: TransformBatch, *, backend: Optional[str] = None) -> torch.Tensor:
    """Apply the S samples of ``t`` to images ``x`` (B, 3, H, W) -> (S*B, 3, h, w), sample-major.

    Differentiable with respect to ``x`` (backward, double backward, forward-mode AD). ``backend``
    as for ``lpips_head_map``: 'auto' (default), 'torch', 'cpp', 'triton', 'cuda'.
    """
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"images must be floating point, got {x.dtype}")
    if t.batch != x.shape[0]:
        raise ValueError(f"the transforms were drawn for batches of {t.batch} images, got {x.shape[0]}")
    h, w = x.shape[2:]
    t.check_size(h, w)
    name = table.resolve(x.device, backend, "transform")  # CuPy has head kernels only: the next backend
    params = t.params.to(device=x.device, dtype=torch.int32)
    acc = acc_dtype(x.dtype)
    colors = t.colors.to(device=x.device, dtype=acc)
    oh, ow = t.out_size(h, w)
    return _Transform.apply(x, params, colors, t.scale, oh, ow, name)
