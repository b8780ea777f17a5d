"""Triton kernels of the fused LPIPS head: forward, backward and jvp (launchers only, no autograd).

Same math as csrc/include/fastlpips/head_math.h. Each program handles BLOCK_P pixels with all C
channels in registers (C <= 512 for every LPIPS trunk). Inputs may have any strides (NCHW,
channels_last, an expanded batch of 1); accumulation is fp32 (fp64 for float64 inputs).

Compiled or interpreted: Triton fixes that when a function is jitted, its own helpers such as
``tl.sum`` when Triton is imported. This module is imported at first use of a Triton kernel (the
op table loads it lazily), and ``_import_triton`` decides then: a user's ``TRITON_INTERPRET``
(or a Triton that something else already imported) is respected; otherwise, without a CUDA
device, Triton is imported with the interpreter on (the variable is set only around that import
and Triton's own knob keeps the choice), so these kernels run CPU tensors through Triton's
interpreter (this is how the CPU test suite executes them). ``interpreted()`` tells which mode is
in force.
"""
from __future__ import annotations

import os
import sys

import torch


def _import_triton():
    if "triton" in sys.modules or "TRITON_INTERPRET" in os.environ or torch.cuda.is_available():
        import triton

        return triton
    os.environ["TRITON_INTERPRET"] = "1"  # read when triton.language defines its helpers
    try:
        import triton
        import triton.language  # noqa: F401
    finally:
        del os.environ["TRITON_INTERPRET"]
    # Triton's knob keeps the choice for the kernels jitted later; not propagated to os.environ
    propagate, triton.knobs.propagate_env = triton.knobs.propagate_env, False
    try:
        triton.knobs.runtime.interpret = True
    finally:
        triton.knobs.propagate_env = propagate
    return triton


triton = _import_triton()
import triton.language as tl  # noqa: E402

INTERPRETED = bool(triton.knobs.runtime.interpret)


def interpreted() -> bool:
    """Whether these kernels run through Triton's interpreter (CPU tensors) or compiled (GPU)."""
    return INTERPRETED


def _pixel_block(f0, f1, NP, C, HW, W, s0n, s0c, s0h, s0w, s1n, s1c, s1h, s1w,
                 ACC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's BLOCK_P pixels (q, their n/h/x coordinates) and both feature blocks."""
    q = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    qm = q < NP
    n = q // HW
    p = q % HW
    h = p // W
    x = p % W
    c = tl.arange(0, BLOCK_C)
    cm = c < C
    mask = qm[:, None] & cm[None, :]
    a = tl.load(f0 + (n * s0n + h * s0h + x * s0w)[:, None] + c[None, :] * s0c, mask=mask, other=0.0).to(ACC)
    b = tl.load(f1 + (n * s1n + h * s1h + x * s1w)[:, None] + c[None, :] * s1c, mask=mask, other=0.0).to(ACC)
    return q, qm, n, h, x, c, cm, mask, a, b


_pixel_block = triton.jit(_pixel_block)


def _saved_norms(r0, r1, q, qm, a, b, eps, ACC: tl.constexpr):
    """The forward's norms of this block's pixels and what follows from them: ra, rb, the inverse
    norms, the normalized features na, nb and their difference d (backward and jvp)."""
    ra = tl.load(r0 + q, mask=qm, other=1.0).to(ACC)
    rb = tl.load(r1 + q, mask=qm, other=1.0).to(ACC)
    ia = 1.0 / (ra + eps)
    ib = 1.0 / (rb + eps)
    na = a * ia[:, None]
    nb = b * ib[:, None]
    return ra, rb, ia, ib, na, nb, na - nb


_saved_norms = triton.jit(_saved_norms)


def _head_fwd(f0, f1, w, m, r0, r1, NP, C, HW, W,
              s0n, s0c, s0h, s0w, s1n, s1c, s1h, s1w, eps,
              HAS_W: tl.constexpr, ACC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    q, qm, n, h, x, c, cm, mask, a, b = _pixel_block(f0, f1, NP, C, HW, W, s0n, s0c, s0h, s0w, s1n, s1c, s1h, s1w,
                                                     ACC, BLOCK_P, BLOCK_C)
    ra = tl.sqrt(tl.sum(a * a, axis=1))
    rb = tl.sqrt(tl.sum(b * b, axis=1))
    ia = 1.0 / (ra + eps)
    ib = 1.0 / (rb + eps)
    d = a * ia[:, None] - b * ib[:, None]
    if HAS_W:
        wv = tl.load(w + c, mask=cm, other=0.0).to(ACC)
        d2 = d * d * wv[None, :]
    else:
        d2 = d * d
    tl.store(m + q, tl.sum(d2, axis=1), mask=qm)
    tl.store(r0 + q, ra, mask=qm)
    tl.store(r1 + q, rb, mask=qm)


def _head_bwd(g, f0, f1, w, r0, r1, g0, g1, gw, NP, C, HW, W,
              s0n, s0c, s0h, s0w, s1n, s1c, s1h, s1w,
              o0n, o0c, o0h, o0w, o1n, o1c, o1h, o1w, eps,
              HAS_W: tl.constexpr, NEED0: tl.constexpr, NEED1: tl.constexpr, NEEDW: tl.constexpr,
              ACC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    q, qm, n, h, x, c, cm, mask, a, b = _pixel_block(f0, f1, NP, C, HW, W, s0n, s0c, s0h, s0w, s1n, s1c, s1h, s1w,
                                                     ACC, BLOCK_P, BLOCK_C)
    gq = tl.load(g + q, mask=qm, other=0.0).to(ACC)
    ra, rb, ia, ib, na, nb, d = _saved_norms(r0, r1, q, qm, a, b, eps, ACC)
    if HAS_W:
        wv = tl.load(w + c, mask=cm, other=0.0).to(ACC)
        u = 2.0 * d * wv[None, :] * gq[:, None]
    else:
        u = 2.0 * d * gq[:, None]
    if NEED0:
        ta = tl.sum(u * na, axis=1)
        qa = tl.where(ra > 0, ta / tl.where(ra > 0, ra, 1.0), 0.0)
        ga = u * ia[:, None] - na * qa[:, None]
        tl.store(g0 + (n * o0n + h * o0h + x * o0w)[:, None] + c[None, :] * o0c, ga.to(g0.dtype.element_ty), mask=mask)
    if NEED1:
        tb = tl.sum(u * nb, axis=1)
        qb = tl.where(rb > 0, tb / tl.where(rb > 0, rb, 1.0), 0.0)
        gb = -u * ib[:, None] + nb * qb[:, None]
        tl.store(g1 + (n * o1n + h * o1h + x * o1w)[:, None] + c[None, :] * o1c, gb.to(g1.dtype.element_ty), mask=mask)
    if NEEDW:
        part = tl.sum(tl.where(mask, d * d * gq[:, None], 0.0), axis=0)
        tl.atomic_add(gw + c, part, mask=cm)


def _head_jvp(f0, f1, w, r0, r1, t0, t1, tw, tm, NP, C, HW, W,
              s0n, s0c, s0h, s0w, s1n, s1c, s1h, s1w,
              u0n, u0c, u0h, u0w, u1n, u1c, u1h, u1w, eps,
              HAS_W: tl.constexpr, HAS_T0: tl.constexpr, HAS_T1: tl.constexpr, HAS_TW: tl.constexpr,
              ACC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    q, qm, n, h, x, c, cm, mask, a, b = _pixel_block(f0, f1, NP, C, HW, W, s0n, s0c, s0h, s0w, s1n, s1c, s1h, s1w,
                                                     ACC, BLOCK_P, BLOCK_C)
    ra, rb, ia, ib, na, nb, d = _saved_norms(r0, r1, q, qm, a, b, eps, ACC)
    dd = tl.zeros_like(d)
    if HAS_T0:
        ta = tl.load(t0 + (n * u0n + h * u0h + x * u0w)[:, None] + c[None, :] * u0c, mask=mask, other=0.0).to(ACC)
        pa = tl.sum(ta * na, axis=1)
        qa = tl.where(ra > 0, pa / tl.where(ra > 0, ra, 1.0), 0.0)
        dd += ta * ia[:, None] - na * qa[:, None]
    if HAS_T1:
        tb = tl.load(t1 + (n * u1n + h * u1h + x * u1w)[:, None] + c[None, :] * u1c, mask=mask, other=0.0).to(ACC)
        pb = tl.sum(tb * nb, axis=1)
        qb = tl.where(rb > 0, pb / tl.where(rb > 0, rb, 1.0), 0.0)
        dd -= tb * ib[:, None] - nb * qb[:, None]
    if HAS_W:
        wv = tl.load(w + c, mask=cm, other=0.0).to(ACC)
        out = 2.0 * wv[None, :] * d * dd
    else:
        out = 2.0 * d * dd
    if HAS_TW:
        twv = tl.load(tw + c, mask=cm, other=0.0).to(ACC)
        out += twv[None, :] * d * d
    tl.store(tm + q, tl.sum(out, axis=1), mask=qm)


_FWD = triton.jit(_head_fwd)
_BWD = triton.jit(_head_bwd)
_JVP = triton.jit(_head_jvp)


def _launch(kernel, t: torch.Tensor, grid, *args, **kwargs):
    if t.device.type == "cpu" and not INTERPRETED:
        raise RuntimeError("the Triton kernels were compiled for the GPU (a CUDA device was present when "
                           "fastlpips.kernels.head was imported); they cannot run CPU tensors")
    return kernel[grid](*args, **kwargs)


def _acc(dtype: torch.dtype):
    return (tl.float64, torch.float64) if dtype == torch.float64 else (tl.float32, torch.float32)


def _blocks(np_: int, c: int, device: torch.device):
    bc = triton.next_power_of_2(max(c, 1))
    if device.type == "cpu":  # interpreter: few, large programs (cost grows with the program count)
        bp = min(max(triton.next_power_of_2(-(-np_ // 8)), 16), 4096)
    else:
        bp = max(1, min(64, 8192 // bc))
    return bp, bc


def _strides(t: torch.Tensor):
    return tuple(t.stride())


def head_fwd(f0: torch.Tensor, f1: torch.Tensor, w, eps: float):
    """-> (m, r0, r1), each (N, 1, H, W) in the accumulation dtype."""
    n, c, h, wd = f0.shape
    tl_acc, acc = _acc(f0.dtype)
    m = torch.empty((n, 1, h, wd), dtype=acc, device=f0.device)
    r0, r1 = torch.empty_like(m), torch.empty_like(m)
    np_ = n * h * wd
    if np_ == 0:
        return m, r0, r1
    bp, bc = _blocks(np_, c, f0.device)
    wv = w.reshape(-1).contiguous() if w is not None else m
    _launch(_FWD, f0, (triton.cdiv(np_, bp),),
        f0, f1, wv, m, r0, r1, np_, c, h * wd, wd, *_strides(f0), *_strides(f1), eps,
        HAS_W=w is not None, ACC=tl_acc, BLOCK_P=bp, BLOCK_C=bc)
    return m, r0, r1


def head_bwd(g, f0, f1, w, r0, r1, eps: float, needs):
    """-> (g0, g1, gw); an entry not asked for by ``needs`` is an empty tensor."""
    n, c, h, wd = f0.shape
    tl_acc, acc = _acc(f0.dtype)
    np_ = n * h * wd
    g0 = torch.empty((n, c, h, wd), dtype=f0.dtype, device=f0.device, memory_format=torch.channels_last) \
        if needs[0] else f0.new_empty((0,))
    g1 = torch.empty((n, c, h, wd), dtype=f1.dtype, device=f1.device, memory_format=torch.channels_last) \
        if needs[1] else f1.new_empty((0,))
    needw = bool(needs[2]) and w is not None
    gw = torch.zeros(c, dtype=acc, device=f0.device) if needw else f0.new_empty((0,), dtype=acc)
    if np_ and (needs[0] or needs[1] or needw):
        bp, bc = _blocks(np_, c, f0.device)
        gq = g.reshape(-1).to(acc).contiguous()
        r0c, r1c = r0.reshape(-1).contiguous(), r1.reshape(-1).contiguous()
        wv = w.reshape(-1).contiguous() if w is not None else gq
        o0 = _strides(g0) if needs[0] else (0, 0, 0, 0)
        o1 = _strides(g1) if needs[1] else (0, 0, 0, 0)
        _launch(_BWD, f0, (triton.cdiv(np_, bp),),
            gq, f0, f1, wv, r0c, r1c, g0, g1, gw, np_, c, h * wd, wd,
            *_strides(f0), *_strides(f1), *o0, *o1, eps,
            HAS_W=w is not None, NEED0=bool(needs[0]), NEED1=bool(needs[1]), NEEDW=needw,
            ACC=tl_acc, BLOCK_P=bp, BLOCK_C=bc)
    elif needs[0] or needs[1]:
        g0.zero_() if needs[0] else None
        g1.zero_() if needs[1] else None
    if needw:
        gw = gw.to(w.dtype).reshape(w.shape)
    return g0, g1, gw


def head_jvp(f0, f1, w, r0, r1, t0, t1, tw, eps: float):
    """-> tangent of the map, (N, 1, H, W) in the accumulation dtype."""
    n, c, h, wd = f0.shape
    tl_acc, acc = _acc(f0.dtype)
    tm = torch.empty((n, 1, h, wd), dtype=acc, device=f0.device)
    np_ = n * h * wd
    if np_ == 0:
        return tm
    bp, bc = _blocks(np_, c, f0.device)
    t0 = None if t0 is None else t0.expand(n, c, h, wd)
    t1 = None if t1 is None else t1.expand(n, c, h, wd)
    dummy = tm
    _launch(_JVP, f0, (triton.cdiv(np_, bp),),
        f0, f1, w.reshape(-1).contiguous() if w is not None else dummy,
        r0.reshape(-1).contiguous(), r1.reshape(-1).contiguous(),
        t0 if t0 is not None else dummy, t1 if t1 is not None else dummy,
        tw.reshape(-1).contiguous() if tw is not None else dummy, tm, np_, c, h * wd, wd,
        *_strides(f0), *_strides(f1),
        *(_strides(t0) if t0 is not None else (0, 0, 0, 0)), *(_strides(t1) if t1 is not None else (0, 0, 0, 0)), eps,
        HAS_W=w is not None, HAS_T0=t0 is not None, HAS_T1=t1 is not None, HAS_TW=tw is not None,
        ACC=tl_acc, BLOCK_P=bp, BLOCK_C=bc)
    return tm
