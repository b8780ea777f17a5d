"""Fake (meta) kernels and autograd for the native ops ``torch.ops.fastlpips_cpp.*``.

Imported once ``fastlpips._C`` has loaded (by ``fastlpips._backend``): the schemas are defined
in csrc/ops.cpp and the CPU (and CUDA) implementations in csrc/.
"""
from __future__ import annotations

import torch

from .. import _C  # noqa: F401  (loads the schemas)


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.register_fake("fastlpips_cpp::head_fwd")
def _fwd_fake(f0, f1, w, eps):
    n, _, h, wd = f0.shape
    m = f0.new_empty((n, 1, h, wd), dtype=_acc(f0.dtype))
    return m, torch.empty_like(m), torch.empty_like(m)


@torch.library.register_fake("fastlpips_cpp::head_bwd")
def _bwd_fake(g, f0, f1, w, r0, r1, eps, needs):
    shape = f0.shape
    cl = torch.channels_last
    g0 = torch.empty(shape, dtype=f0.dtype, device=f0.device, memory_format=cl) if needs[0] else f0.new_empty((0,))
    g1 = torch.empty(shape, dtype=f1.dtype, device=f1.device, memory_format=cl) if needs[1] else f1.new_empty((0,))
    gw = w.new_empty(w.shape) if (needs[2] and w is not None) else f0.new_empty((0,), dtype=_acc(f0.dtype))
    return g0, g1, gw


@torch.library.register_fake("fastlpips_cpp::head_jvp")
def _jvp_fake(f0, f1, w, r0, r1, t0, t1, tw, eps):
    n, _, h, wd = f0.shape
    return f0.new_empty((n, 1, h, wd), dtype=_acc(f0.dtype))


def _setup(ctx, inputs, output):
    f0, f1, w, eps = inputs
    _, r0, r1 = output
    ctx.eps = eps
    ctx.has_w = w is not None
    ctx.save_for_backward(f0, f1, w, r0, r1)


def _backward(ctx, g, g_r0, g_r1):
    f0, f1, w, r0, r1 = ctx.saved_tensors
    needs = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_w and ctx.needs_input_grad[2]]
    g0, g1, gw = torch.ops.fastlpips_cpp.head_bwd(g, f0, f1, w, r0, r1, ctx.eps, needs)
    g0 = g0 if needs[0] else None
    g1 = g1 if needs[1] else None
    # the norms are outputs too: d r / d f = f / r (0 at r = 0)
    for grad_r, f, r, i in ((g_r0, f0, r0, 0), (g_r1, f1, r1, 1)):
        if grad_r is not None and needs[i]:
            extra = grad_r.to(f.dtype) * f * torch.where(r > 0, 1 / r.clamp_min(1e-30), 0).to(f.dtype)
            if i == 0:
                g0 = g0 + extra
            else:
                g1 = g1 + extra
    return g0, g1, (gw if needs[2] else None), None


torch.library.register_autograd("fastlpips_cpp::head_fwd", _backward, setup_context=_setup)
