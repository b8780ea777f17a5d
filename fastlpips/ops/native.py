"""Fake (meta) kernels and autograd for the native ops ``torch.ops.fastlpips_cpp.*``.

Imported once ``fastlpips._C`` has loaded (by ``fastlpips._backend``): the schemas are defined
in csrc/ops.cpp and the CPU (and CUDA) implementations in csrc/.
"""
from __future__ import annotations

import torch

from .. import _C  # noqa: F401  (loads the schemas)
from .registry import fake_bwd, fake_fwd, fake_jvp


torch.library.register_fake("fastlpips_cpp::head_fwd")(fake_fwd)
torch.library.register_fake("fastlpips_cpp::head_bwd")(fake_bwd)
torch.library.register_fake("fastlpips_cpp::head_jvp")(fake_jvp)


@torch.library.register_fake("fastlpips_cpp::transform_fwd")
def _transform_fwd_fake(x, params, colors, scale, out_h, out_w):
    return x.new_empty((params.shape[0], 3, out_h, out_w))


@torch.library.register_fake("fastlpips_cpp::transform_bwd")
def _transform_bwd_fake(grad, params, colors, scale, batch, in_h, in_w):
    return grad.new_empty((batch, 3, in_h, in_w))


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
