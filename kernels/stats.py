"""Triton kernels of DISTS' per-stage statistics: forward (means, variances, covariance, the
weighted similarity terms) and backward (the feature gradients, elementwise). Launchers only;
autograd lives in fastlpips/ops/stats.py.

Same math as csrc/include/fastlpips/dists_math.h. For features fx, fy (N, C, H, W) of M = H W
pixels, read channels_last (element (n, p, c) at n M C + p C + c: channels contiguous), per (n, c)::

    mx, my = means;  vx, vy, cxy = centred sums of dx^2, dy^2, dx dy over M  (dx = fx - mx, dy = fy - my)
    S1 = (2 mx my + c1) / B,  B = mx^2 + my^2 + c1;   S2 = (2 cxy + c2) / Q,  Q = vx + vy + c2
    t[n] = sum_c alpha_c S1 + beta_c S2                                                   (fwd)
    gx = kx + k1 dx + k2 dy,  gy = ky + k1 dy + k2 dx,  gm = g[n] / M:                    (bwd)
    kx = 2 gm alpha (my - S1 mx) / B,  ky = 2 gm alpha (mx - S1 my) / B,  k1 = -2 gm beta S2 / Q,  k2 = 2 gm beta / Q

Forward: one program per (image n, block of BLOCK_C channels), two passes over the pixels in
[BLOCK_C, BLOCK_P] tiles (the means, then the centred sums: no cancellation), each tile summed
over its pixels with ``tl.sum`` and the tile sums added (fp32 for fp16/bf16/fp32 features, fp64
for float64). The pixel axis is the tile's last: a tree sum on the GPU, and numpy's pairwise sum
in the interpreter (a sum over a first axis there is sequential, ~sqrt(M) times the error). It
stores the statistics s (N, C, 5) = (mx, my, vx, vy, cxy) and the per-(n, c) terms; t is their sum
over c in torch (deterministic, no atomics). Backward: one program per (n, pixel tile, channel
block), the coefficients recomputed from the saved statistics. c1 and c2 travel in a tensor of the
accumulation dtype (a float argument would be rounded to fp32). Interpreted on CPU exactly as
kernels/head.py explains.
"""
from __future__ import annotations

from typing import List, Tuple

import torch

# Triton through head: importing head first fixes interpreted vs compiled (also when this module is
# the first kernel module imported)
from .head import INTERPRETED, _launch, tl, triton  # noqa: F401

N_STATS = 5  # mx, my, vx, vy, cxy


@triton.jit
def _similarity(mx, my, vx, vy, cxy, consts, ACC: tl.constexpr):
    """(S1, B, S2, Q) of blocks of statistics; consts = (c1, c2) in the accumulation dtype."""
    c1 = tl.load(consts + 0).to(ACC)
    c2 = tl.load(consts + 1).to(ACC)
    b = mx * mx + my * my + c1
    q = vx + vy + c2
    return (2.0 * mx * my + c1) / b, b, (2.0 * cxy + c2) / q, q


@triton.jit
def _stats_fwd(fx, fy, alpha, beta, consts, s, terms, C, M, ACC: tl.constexpr, BLOCK_P: tl.constexpr,
               BLOCK_C: tl.constexpr):
    n = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = c < C
    base = n.to(tl.int64) * M * C
    sx = tl.zeros((BLOCK_C,), dtype=ACC)
    sy = tl.zeros((BLOCK_C,), dtype=ACC)
    for p0 in range(0, M, BLOCK_P):  # pass 1: the means
        p = p0 + tl.arange(0, BLOCK_P)
        mask = cm[:, None] & (p < M)[None, :]
        off = base + c[:, None] + p.to(tl.int64)[None, :] * C
        sx += tl.sum(tl.load(fx + off, mask=mask, other=0.0).to(ACC), axis=1)
        sy += tl.sum(tl.load(fy + off, mask=mask, other=0.0).to(ACC), axis=1)
    mx = sx / M
    my = sy / M
    sxx = tl.zeros((BLOCK_C,), dtype=ACC)
    syy = tl.zeros((BLOCK_C,), dtype=ACC)
    sxy = tl.zeros((BLOCK_C,), dtype=ACC)
    for p0 in range(0, M, BLOCK_P):  # pass 2: the centred sums
        p = p0 + tl.arange(0, BLOCK_P)
        mask = cm[:, None] & (p < M)[None, :]
        off = base + c[:, None] + p.to(tl.int64)[None, :] * C
        dx = tl.where(mask, tl.load(fx + off, mask=mask, other=0.0).to(ACC) - mx[:, None], 0.0)
        dy = tl.where(mask, tl.load(fy + off, mask=mask, other=0.0).to(ACC) - my[:, None], 0.0)
        sxx += tl.sum(dx * dx, axis=1)
        syy += tl.sum(dy * dy, axis=1)
        sxy += tl.sum(dx * dy, axis=1)
    vx = sxx / M
    vy = syy / M
    cxy = sxy / M
    row = s + (n.to(tl.int64) * C + c) * 5
    tl.store(row + 0, mx, mask=cm)
    tl.store(row + 1, my, mask=cm)
    tl.store(row + 2, vx, mask=cm)
    tl.store(row + 3, vy, mask=cm)
    tl.store(row + 4, cxy, mask=cm)
    s1, b, s2, q = _similarity(mx, my, vx, vy, cxy, consts, ACC)
    a = tl.load(alpha + c, mask=cm, other=0.0).to(ACC)
    be = tl.load(beta + c, mask=cm, other=0.0).to(ACC)
    tl.store(terms + n.to(tl.int64) * C + c, a * s1 + be * s2, mask=cm)


@triton.jit
def _stats_bwd(g, fx, fy, alpha, beta, consts, s, gx, gy, C, M, NEEDX: tl.constexpr, NEEDY: tl.constexpr,
               ACC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)  # axis 0: up to 2^31 - 1 tiles (1 and 2: 65535)
    n = tl.program_id(1)
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = c < C
    row = s + (n.to(tl.int64) * C + c) * 5  # masked-out channels read zeros: B = c1, Q = c2 (finite)
    mx = tl.load(row + 0, mask=cm, other=0.0).to(ACC)
    my = tl.load(row + 1, mask=cm, other=0.0).to(ACC)
    vx = tl.load(row + 2, mask=cm, other=0.0).to(ACC)
    vy = tl.load(row + 3, mask=cm, other=0.0).to(ACC)
    cxy = tl.load(row + 4, mask=cm, other=0.0).to(ACC)
    s1, b, s2, q = _similarity(mx, my, vx, vy, cxy, consts, ACC)
    gm = tl.load(g + n).to(ACC) / M
    a2 = 2.0 * gm * tl.load(alpha + c, mask=cm, other=0.0).to(ACC) / b
    k2 = 2.0 * gm * tl.load(beta + c, mask=cm, other=0.0).to(ACC) / q
    k1 = -k2 * s2
    mask = (p < M)[:, None] & cm[None, :]
    off = n.to(tl.int64) * M * C + p.to(tl.int64)[:, None] * C + c[None, :]
    dx = tl.load(fx + off, mask=mask, other=0.0).to(ACC) - mx[None, :]
    dy = tl.load(fy + off, mask=mask, other=0.0).to(ACC) - my[None, :]
    if NEEDX:
        kx = a2 * (my - s1 * mx)
        val = kx[None, :] + k1[None, :] * dx + k2[None, :] * dy
        tl.store(gx + off, val.to(gx.dtype.element_ty), mask=mask)
    if NEEDY:
        ky = a2 * (mx - s1 * my)
        val = ky[None, :] + k1[None, :] * dy + k2[None, :] * dx
        tl.store(gy + off, val.to(gy.dtype.element_ty), mask=mask)


def _acc(dtype: torch.dtype):
    return (tl.float64, torch.float64) if dtype == torch.float64 else (tl.float32, torch.float32)


def _blocks(m: int, c: int, device: torch.device, tile: int) -> Tuple[int, int]:
    """(BLOCK_P, BLOCK_C): the interpreter wants few, large programs (its cost grows with the
    program and loop-iteration counts); the GPU [tile]-element tiles, channels contiguous."""
    if device.type == "cpu":
        bc = min(triton.next_power_of_2(max(c, 1)), 512)
        return max(16, min(triton.next_power_of_2(m), 65536 // bc)), bc
    bc = min(triton.next_power_of_2(max(c, 1)), 32)
    return max(16, min(triton.next_power_of_2(m), tile // bc)), bc


def _features(fx: torch.Tensor, fy: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, int, int, int]:
    if fx.dim() != 4 or fx.shape != fy.shape or fx.dtype != fy.dtype or fx.device != fy.device:
        raise ValueError(f"fastlpips: fx and fy must be (N, C, H, W) of one shape, dtype and device, got "
                         f"{tuple(fx.shape)} {fx.dtype} {fx.device} and {tuple(fy.shape)} {fy.dtype} {fy.device}")
    n, c, h, w = fx.shape
    if h * w == 0:
        raise ValueError(f"fastlpips: the features have no pixels: {tuple(fx.shape)}")
    cl = torch.channels_last
    return fx.contiguous(memory_format=cl), fy.contiguous(memory_format=cl), n, c, h * w


def _vectors(alpha: torch.Tensor, beta: torch.Tensor, c: int, acc: torch.dtype, device: torch.device):
    if alpha.numel() != c or beta.numel() != c:
        raise ValueError(f"fastlpips: alpha and beta must have C = {c} elements, got {tuple(alpha.shape)} and "
                         f"{tuple(beta.shape)}")
    return (alpha.reshape(-1).to(device=device, dtype=acc).contiguous(),
            beta.reshape(-1).to(device=device, dtype=acc).contiguous())


def stats_fwd(fx: torch.Tensor, fy: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, c1: float,
              c2: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """fx, fy (N, C, H, W), alpha, beta (C,) -> (t (N,), s (N, C, 5)) in the accumulation dtype."""
    fx, fy, n, c, m = _features(fx, fy)
    tl_acc, acc = _acc(fx.dtype)
    a, b = _vectors(alpha, beta, c, acc, fx.device)
    s = torch.empty((n, c, N_STATS), dtype=acc, device=fx.device)
    terms = torch.empty((n, c), dtype=acc, device=fx.device)
    if n and c:
        bp, bc = _blocks(m, c, fx.device, 4096)
        consts = torch.tensor([c1, c2], dtype=acc, device=fx.device)
        _launch(_FWD, fx, (n, triton.cdiv(c, bc)),
                fx, fy, a, b, consts, s, terms, c, m, ACC=tl_acc, BLOCK_P=bp, BLOCK_C=bc)
    return terms.sum(1), s


def stats_bwd(g: torch.Tensor, fx: torch.Tensor, fy: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor,
              s: torch.Tensor, c1: float, c2: float, needs: List[bool]) -> Tuple[torch.Tensor, torch.Tensor]:
    """-> (gx, gy), (N, C, H, W) channels_last in the features' dtype (an empty tensor where
    ``needs`` does not ask for it), from the saved statistics s (N, C, 5)."""
    shape = fx.shape
    fx, fy, n, c, m = _features(fx, fy)
    tl_acc, acc = _acc(fx.dtype)
    a, b = _vectors(alpha, beta, c, acc, fx.device)
    if g.numel() != n or tuple(s.shape) != (n, c, N_STATS):
        raise ValueError(f"fastlpips: g must have N = {n} elements and s be (N, C, 5) = ({n}, {c}, 5), got "
                         f"{tuple(g.shape)} and {tuple(s.shape)}")
    cl = torch.channels_last
    gx = torch.empty(shape, dtype=fx.dtype, device=fx.device, memory_format=cl) if needs[0] else fx.new_empty((0,))
    gy = torch.empty(shape, dtype=fy.dtype, device=fy.device, memory_format=cl) if needs[1] else fy.new_empty((0,))
    if (needs[0] or needs[1]) and n and c:
        bp, bc = _blocks(m, c, fx.device, 2048)
        consts = torch.tensor([c1, c2], dtype=acc, device=fx.device)
        gv = g.reshape(-1).to(acc).contiguous()
        sv = s.to(acc).contiguous()
        _launch(_BWD, fx, (triton.cdiv(m, bp), n, triton.cdiv(c, bc)),
                gv, fx, fy, a, b, consts, sv, gx if needs[0] else fx, gy if needs[1] else fy, c, m,
                NEEDX=bool(needs[0]), NEEDY=bool(needs[1]), ACC=tl_acc, BLOCK_P=bp, BLOCK_C=bc)
    return gx, gy


_FWD = _stats_fwd
_BWD = _stats_bwd
