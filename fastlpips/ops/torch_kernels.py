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

DISTS' stage statistics, for features fx, fy (N, C, H, W) of M = H W pixels and weights alpha,
beta (C,): per (n, c) the means mx, my, the variances vx, vy and the covariance cxy (population,
two-pass: centred sums), S1 = (2 mx my + c1) / B, B = mx^2 + my^2 + c1, S2 = (2 cxy + c2) / Q,
Q = vx + vy + c2, and t[n] = sum_c alpha_c S1 + beta_c S2 (fwd, which also returns the statistics
s (N, C, 5) = (mx, my, vx, vy, cxy)). The backward of g (N,) is, with dx = fx - mx, dy = fy - my::

    gx = g/M (alpha 2 (my - S1 mx) / B - 2 beta S2 / Q dx + 2 beta / Q dy)       (bwd)
    gy = g/M (alpha 2 (mx - S1 my) / B - 2 beta S2 / Q dy + 2 beta / Q dx)

``reference.dists_stage`` is the ground truth (the release's arithmetic).
"""
from __future__ import annotations

from typing import List, Optional, Tuple, Union

import torch

from ..reference import normalize_with_norm
from ..transforms import MAX_OFFSET, downscaled_size

__all__ = ["head_fwd", "head_bwd", "head_jvp", "transform_fwd", "transform_bwd", "stats_fwd", "stats_bwd",
           "stats_jvp", "stats_weight_grads", "acc_dtype"]


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


# -- DISTS stage statistics ------------------------------------------------------------------------
def _moments(fx: torch.Tensor, fy: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """(mx, my, vx, vy, cxy) (N, C) and the centred maps dx, dy of features in the accumulation dtype."""
    mx, my = fx.mean((2, 3)), fy.mean((2, 3))
    dx, dy = fx - mx[..., None, None], fy - my[..., None, None]
    return mx, my, dx.square().mean((2, 3)), dy.square().mean((2, 3)), (dx * dy).mean((2, 3)), dx, dy


def _similarities(mx: torch.Tensor, my: torch.Tensor, vx: torch.Tensor, vy: torch.Tensor, cxy: torch.Tensor,
                  c1: float, c2: float) -> Tuple[torch.Tensor, ...]:
    """(S1, B, S2, Q) per (n, c)."""
    b = mx * mx + my * my + c1
    q = vx + vy + c2
    return (2 * mx * my + c1) / b, b, (2 * cxy + c2) / q, q


def stage_term(mx: torch.Tensor, my: torch.Tensor, vx: torch.Tensor, vy: torch.Tensor, cxy: torch.Tensor,
               alpha: torch.Tensor, beta: torch.Tensor, c1: float, c2: float) -> torch.Tensor:
    """sum_c alpha_c S1 + beta_c S2 (N,) from the per-channel statistics (N, C) and the weights
    (1, C) of one DISTS stage: the forward's formula, also the tiled pass's (``fastlpips.dists``)."""
    s1, _, s2, _ = _similarities(mx, my, vx, vy, cxy, c1, c2)
    return (alpha * s1 + beta * s2).sum(1)


def _stats_acc(fx: torch.Tensor, fy: torch.Tensor, alpha: torch.Tensor,
               beta: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    acc = acc_dtype(fx.dtype)
    return fx.to(acc), fy.to(acc), alpha.reshape(1, -1).to(acc), beta.reshape(1, -1).to(acc)


def stats_fwd(fx: torch.Tensor, fy: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, c1: float,
              c2: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """-> (t (N,), s (N, C, 5)) in the accumulation dtype (see the module docstring)."""
    fx, fy, a, b = _stats_acc(fx, fy, alpha, beta)
    mx, my, vx, vy, cxy, _, _ = _moments(fx, fy)
    return stage_term(mx, my, vx, vy, cxy, a, b, c1, c2), torch.stack([mx, my, vx, vy, cxy], -1)


def stats_bwd(g: torch.Tensor, fx: torch.Tensor, fy: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor,
              s: torch.Tensor, c1: float, c2: float, needs: List[bool]) -> Tuple[torch.Tensor, torch.Tensor]:
    """-> (gx, gy) (N, C, H, W) in the features' dtype (empty where not needed). The statistics are
    recomputed from the features (differentiable in them: double backward)."""
    fxa, fya, a, b = _stats_acc(fx, fy, alpha, beta)
    mx, my, vx, vy, cxy, dx, dy = _moments(fxa, fya)
    s1, bb, s2, q = _similarities(mx, my, vx, vy, cxy, c1, c2)
    gm = g.to(fxa.dtype).reshape(-1, 1) / (fx.shape[2] * fx.shape[3])
    k1, k2 = (-2 * gm * b * s2 / q)[..., None, None], (2 * gm * b / q)[..., None, None]
    empty = fx.new_empty((0,))
    gx = (gm * a * 2 * (my - s1 * mx) / bb)[..., None, None] + k1 * dx + k2 * dy if needs[0] else None
    gy = (gm * a * 2 * (mx - s1 * my) / bb)[..., None, None] + k1 * dy + k2 * dx if needs[1] else None
    return (empty if gx is None else gx.to(fx.dtype)), (empty if gy is None else gy.to(fy.dtype))


def stats_weight_grads(g: torch.Tensor, fx: torch.Tensor, fy: torch.Tensor, s: Optional[torch.Tensor], c1: float,
                       c2: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Gradients of alpha and beta, (sum_n g S1, sum_n g S2) (C,), from the saved statistics ``s``
    (None: recomputed from the features, differentiable in them)."""
    if s is None:
        acc = acc_dtype(fx.dtype)
        mx, my, vx, vy, cxy, _, _ = _moments(fx.to(acc), fy.to(acc))
    else:
        mx, my, vx, vy, cxy = s.unbind(-1)
    s1, _, s2, _ = _similarities(mx, my, vx, vy, cxy, c1, c2)
    gg = g.to(s1.dtype).reshape(-1, 1)
    return (gg * s1).sum(0), (gg * s2).sum(0)


def stats_jvp(fx: torch.Tensor, fy: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor,
              tx: Optional[torch.Tensor], ty: Optional[torch.Tensor], ta: Optional[torch.Tensor],
              tb: Optional[torch.Tensor], c1: float, c2: float) -> torch.Tensor:
    """Tangent of t (N,) along (tx, ty, ta, tb) (None = zero tangent)."""
    fxa, fya, a, b = _stats_acc(fx, fy, alpha, beta)
    mx, my, vx, vy, cxy, dx, dy = _moments(fxa, fya)
    s1, bb, s2, q = _similarities(mx, my, vx, vy, cxy, c1, c2)
    zero = torch.zeros_like(mx)
    tx_ = None if tx is None else tx.to(fxa.dtype)
    ty_ = None if ty is None else ty.to(fya.dtype)
    dmx = zero if tx_ is None else tx_.mean((2, 3))
    dmy = zero if ty_ is None else ty_.mean((2, 3))
    dvx = zero if tx_ is None else 2 * (dx * tx_).mean((2, 3))
    dvy = zero if ty_ is None else 2 * (dy * ty_).mean((2, 3))
    dc = (zero if tx_ is None else (tx_ * dy).mean((2, 3))) + (zero if ty_ is None else (ty_ * dx).mean((2, 3)))
    ts1 = (2 * (my - s1 * mx) * dmx + 2 * (mx - s1 * my) * dmy) / bb
    ts2 = (2 * dc - s2 * (dvx + dvy)) / q
    out = a * ts1 + b * ts2
    if ta is not None:
        out = out + ta.reshape(1, -1).to(s1.dtype) * s1
    if tb is not None:
        out = out + tb.reshape(1, -1).to(s2.dtype) * s2
    return out.sum(1)
