"""Triton kernels of the E-LPIPS batched random transform: forward (gather) and adjoint
(scatter-add with atomics). Launchers only; autograd lives in fastlpips/ops/transform.py.

Same index math as csrc/include/fastlpips/transform_math.h (one program per output plane
(n, c) and block of pixels). Interpreted on CPU exactly as kernels/head.py explains.
"""
from __future__ import annotations

import torch
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from .head import INTERPRETED, _launch  # noqa: F401  (importing head fixes interpreted vs compiled)

N_PARAMS = 9  # dy, dx, flip, swap, oy, ox, perm0, perm1, perm2
MAX_OFFSET = 7


@triton.jit
def _reflect(i, n):
    return tl.where(i < 0, -i, tl.where(i >= n, 2 * (n - 1) - i, i))


@triton.jit
def _plane(params, B, H, W, S: tl.constexpr, OH, OW, BLOCK: tl.constexpr):
    """This program's plane (n, c), its parameters and pixels: source image/channel offset, the
    downscaled pixel (u, v) behind each output pixel (i, j), and the pixel mask."""
    plane = tl.program_id(0)
    n = plane // 3
    c = plane % 3
    p = params + n * 9
    dy = tl.load(p + 0)
    dx = tl.load(p + 1)
    flip = tl.load(p + 2)
    swap = tl.load(p + 3)
    oy = tl.load(p + 4)
    ox = tl.load(p + 5)
    src = ((n % B) * 3 + tl.load(p + 6 + c)).to(tl.int64) * H * W
    hd = (2 * (S - 1) + H) // S
    wd = (2 * (S - 1) + W) // S
    e = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = e < OH * OW
    i = e // OW
    j = e % OW
    a = tl.where(swap != 0, j, i)
    b = tl.where(swap != 0, i, j)
    a = tl.where((flip == 1) | (flip == 2), hd + 6 - a, a)
    b = tl.where((flip == 0) | (flip == 2), wd + 6 - b, b)
    u = _reflect(a - (7 - dy), hd)
    v = _reflect(b - (7 - dx), wd)
    return plane, n, c, src, oy, ox, u, v, e, mask


@triton.jit
def _transform_fwd(x, params, colors, out, B, H, W, OH, OW, S: tl.constexpr, ACC: tl.constexpr,
                   BLOCK: tl.constexpr):
    plane, n, c, src, oy, ox, u, v, e, mask = _plane(params, B, H, W, S, OH, OW, BLOCK)
    acc = tl.zeros((BLOCK,), dtype=ACC)
    for k in tl.static_range(S):  # S (the scale, 1..8) is a compile-time constant: one variant per scale
        row = _reflect(u * S + k - oy, H)
        for m in tl.static_range(S):
            col = _reflect(v * S + m - ox, W)
            acc += tl.load(x + src + row * W + col, mask=mask, other=0.0).to(ACC)
    colour = tl.load(colors + n * 3 + c).to(ACC)
    val = acc / (S * S) * colour
    tl.store(out + plane.to(tl.int64) * OH * OW + e, val.to(out.dtype.element_ty), mask=mask)


@triton.jit
def _transform_bwd(grad, params, colors, gx, B, H, W, OH, OW, S: tl.constexpr, ACC: tl.constexpr,
                   BLOCK: tl.constexpr):
    plane, n, c, src, oy, ox, u, v, e, mask = _plane(params, B, H, W, S, OH, OW, BLOCK)
    colour = tl.load(colors + n * 3 + c).to(ACC)
    g = tl.load(grad + plane.to(tl.int64) * OH * OW + e, mask=mask, other=0.0).to(ACC)
    val = g / (S * S) * colour
    for k in tl.static_range(S):
        row = _reflect(u * S + k - oy, H)
        for m in tl.static_range(S):
            col = _reflect(v * S + m - ox, W)
            tl.atomic_add(gx + src + row * W + col, val, mask=mask)


def _acc(dtype: torch.dtype):
    return (tl.float64, torch.float64) if dtype == torch.float64 else (tl.float32, torch.float32)


def _block(pixels: int, device: torch.device) -> int:
    if device.type == "cpu":  # interpreter: one program per plane
        return triton.next_power_of_2(max(pixels, 16))
    return 256


def transform_fwd(x: torch.Tensor, params: torch.Tensor, colors: torch.Tensor, scale: int, out_h: int,
                  out_w: int) -> torch.Tensor:
    """x (B, 3, H, W), params (N, 9) int32, colors (N, 3) -> (N, 3, out_h, out_w)."""
    b, _, h, w = x.shape
    n = params.shape[0]
    tl_acc, acc = _acc(x.dtype)
    out = torch.empty((n, 3, out_h, out_w), dtype=x.dtype, device=x.device)
    if n == 0 or out_h * out_w == 0:
        return out
    block = _block(out_h * out_w, x.device)
    _launch(_FWD, x, (n * 3, triton.cdiv(out_h * out_w, block)),
            x.contiguous(), params.contiguous(), colors.to(acc).contiguous(), out, b, h, w, out_h, out_w,
            S=scale, ACC=tl_acc, BLOCK=block)
    return out


def transform_bwd(grad: torch.Tensor, params: torch.Tensor, colors: torch.Tensor, scale: int, batch: int,
                  in_h: int, in_w: int) -> torch.Tensor:
    """Adjoint: grad (N, 3, h, w) -> (batch, 3, in_h, in_w)."""
    n, _, oh, ow = grad.shape
    tl_acc, acc = _acc(grad.dtype)
    gx = torch.zeros((batch, 3, in_h, in_w), dtype=acc, device=grad.device)
    if n and oh * ow:
        block = _block(oh * ow, grad.device)
        _launch(_BWD, grad, (n * 3, triton.cdiv(oh * ow, block)),
                grad.contiguous(), params.contiguous(), colors.to(acc).contiguous(), gx, batch, in_h, in_w,
                oh, ow, S=scale, ACC=tl_acc, BLOCK=block)
    return gx.to(grad.dtype)


_FWD = _transform_fwd
_BWD = _transform_bwd
