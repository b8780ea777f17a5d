"""The torch backend's kernels: the head and the transform written with plain torch ops, with the
signatures of every other backend (fastlpips.ops.table) and no autograd of their own — except
that they are built from differentiable ops, which is what double backward of every backend uses.

Head, for features f0, f1 (N, C, H, W) and weights w (C,) (None = unit weights)::

    r = ||f||_c,  n = f / (r + eps),  d = n0 - n1,  m = sum_c w_c d_c^2          (fwd)
    u = 2 w d g:  g0 = dn(u; n0, r0),  g1 = dn(-u; n1, r1),  gw_c = sum g d_c^2  (bwd)
    tm = sum_c w_c 2 d (dn(t0) - dn(t1)) + sum_c tw_c d_c^2                       (jvp)

with dn(v; n, r) = v / (r + eps) - n <v, n>_c / r the derivative of f / (||f|| + eps) (its
norm term 0 where r == 0: the exact one-sided derivative I / eps at f = 0). ``reference.py``
holds the same math with plain autograd: the ground truth of the tests.
"""
from __future__ import annotations

from typing import List, Optional, Tuple, Union

import torch

from ..reference import normalize_with_norm
from ..transforms import MAX_OFFSET, downscaled_size

__all__ = ["head_fwd", "head_bwd", "head_jvp", "transform_fwd", "transform_bwd", "acc_dtype"]


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 stays, everything else accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


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


def dnormalize(df: torch.Tensor, n: torch.Tensor, r: torch.Tensor, eps: float) -> torch.Tensor:
    """Derivative of f / (||f|| + eps) along df (also its own adjoint: the Jacobian is symmetric)."""
    return df / (r + eps) - n * _safe_ratio((df * n).sum(1, keepdim=True), r)


def _acc(f0: torch.Tensor, f1: torch.Tensor,
         w: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    acc = acc_dtype(f0.dtype)
    if f0.dtype != acc:  # low precision: accumulate in fp32 (eps would underflow in fp16)
        f0, f1 = f0.to(acc), f1.to(acc)
    return f0, f1, None if w is None else w.reshape(-1).to(acc)


def head_fwd(f0: torch.Tensor, f1: torch.Tensor, w: Optional[torch.Tensor],
             eps: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (m, r0, r1), each (N, 1, H, W) in the accumulation dtype."""
    f0, f1, w = _acc(f0, f1, w)
    (n0, r0), (n1, r1) = normalize_with_norm(f0, eps), normalize_with_norm(f1, eps)
    return _wsum((n0 - n1).square(), w), r0, r1


def head_bwd(g: torch.Tensor, f0: torch.Tensor, f1: torch.Tensor, w: Optional[torch.Tensor], r0: torch.Tensor,
             r1: torch.Tensor, eps: float, needs: List[bool]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (g0, g1, gw) (empty tensors where not needed). n and r are recomputed from f (the same
    rounding as the forward), so under autograd this is differentiable in f: double backward."""
    wdt = None if w is None else w.dtype
    f0a, f1a, wa = _acc(f0, f1, w)
    (n0, r0), (n1, r1) = normalize_with_norm(f0a, eps), normalize_with_norm(f1a, eps)
    d = n0 - n1
    u = 2 * d * (g if wa is None else g * wa.reshape(1, -1, 1, 1))
    empty = f0.new_empty((0,))
    g0 = dnormalize(u, n0, r0, eps).to(f0.dtype) if needs[0] else empty
    g1 = dnormalize(-u, n1, r1, eps).to(f1.dtype) if needs[1] else empty
    gw = (d.square() * g).sum((0, 2, 3)).to(wdt) if (w is not None and needs[2]) else f0a.new_empty((0,))
    return g0, g1, gw


def head_jvp(f0: torch.Tensor, f1: torch.Tensor, w: Optional[torch.Tensor], r0: torch.Tensor, r1: torch.Tensor,
             t0: Optional[torch.Tensor], t1: Optional[torch.Tensor], tw: Optional[torch.Tensor],
             eps: float) -> torch.Tensor:
    """Tangent of m along (t0, t1, tw) (None = zero tangent)."""
    f0a, f1a, wa = _acc(f0, f1, w)
    (n0, r0), (n1, r1) = normalize_with_norm(f0a, eps), normalize_with_norm(f1a, eps)
    d = n0 - n1
    dd: Union[int, torch.Tensor] = 0
    if t0 is not None:
        dd = dd + dnormalize(t0.to(f0a.dtype), n0, r0, eps)
    if t1 is not None:
        dd = dd - dnormalize(t1.to(f1a.dtype), n1, r1, eps)
    tm = _wsum(2 * d * dd, wa) if torch.is_tensor(dd) else torch.zeros_like(r0)
    if tw is not None:
        tm = tm + _wsum(d.square(), tw.reshape(-1).to(d.dtype))
    return tm


# -- transform ----------------------------------------------------------------------------------------
def _reflect(i: torch.Tensor, n: int) -> torch.Tensor:
    return torch.where(i < 0, -i, torch.where(i >= n, 2 * (n - 1) - i, i))


def _indices(params: torch.Tensor, scale: int, batch: int, h: int, w: int, oh: int,
             ow: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(image, channel, rows, cols) gather indices of every output pixel's s x s box: the index
    math of csrc/include/fastlpips/transform_math.h in torch ops."""
    s = scale
    hd, wd = downscaled_size(h, s), downscaled_size(w, s)
    p = params.long()
    dev = p.device
    n = p.shape[0]
    i = torch.arange(oh, device=dev).view(1, oh, 1)
    j = torch.arange(ow, device=dev).view(1, 1, ow)
    col = lambda k: p[:, k].view(n, 1, 1)  # noqa: E731
    swap, flip = col(3) != 0, col(2)
    a, bb = torch.where(swap, j, i), torch.where(swap, i, j)
    a = torch.where((flip == 1) | (flip == 2), hd + MAX_OFFSET - 1 - a, a)
    bb = torch.where((flip == 0) | (flip == 2), wd + MAX_OFFSET - 1 - bb, bb)
    u = _reflect(a - (MAX_OFFSET - col(0)), hd)
    v = _reflect(bb - (MAX_OFFSET - col(1)), wd)
    k = torch.arange(s, device=dev)
    rows = _reflect(u[..., None] * s + k - col(4)[..., None], h)  # (N, oh, ow, s)
    cols = _reflect(v[..., None] * s + k - col(5)[..., None], w)
    img = (torch.arange(n, device=dev) % batch).view(n, 1, 1, 1, 1, 1)
    chan = p[:, 6:9].view(n, 3, 1, 1, 1, 1)
    return img, chan, rows[:, None, :, :, :, None], cols[:, None, :, :, None, :]


def transform_fwd(x: torch.Tensor, params: torch.Tensor, colors: torch.Tensor, scale: int, out_h: int,
                  out_w: int) -> torch.Tensor:
    """x (B, 3, H, W), params (N, 9) int, colors (N, 3) -> (N, 3, out_h, out_w): one gather of every
    s x s box, then a mean and the colour scale."""
    b, _, h, w = x.shape
    n = params.shape[0]
    idx = _indices(params.to(x.device), scale, b, h, w, out_h, out_w)
    boxes = x[idx]  # (N, 3, oh, ow, s, s)
    return boxes.sum((-1, -2)) / (scale * scale) * colors.to(device=x.device, dtype=x.dtype).view(n, 3, 1, 1)


def transform_bwd(grad: torch.Tensor, params: torch.Tensor, colors: torch.Tensor, scale: int, batch: int,
                  in_h: int, in_w: int) -> torch.Tensor:
    """The adjoint: every output pixel's gradient spread over its s x s box (scatter-add)."""
    n, _, oh, ow = grad.shape
    idx = _indices(params.to(grad.device), scale, batch, in_h, in_w, oh, ow)
    val = grad * colors.to(device=grad.device, dtype=grad.dtype).view(n, 3, 1, 1) / (scale * scale)
    val = val[..., None, None].expand(n, 3, oh, ow, scale, scale)
    gx = grad.new_zeros((batch, 3, in_h, in_w))
    return gx.index_put(idx, val, accumulate=True)
