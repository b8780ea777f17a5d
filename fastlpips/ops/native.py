"""Fake (meta) kernels of the native ops ``torch.ops.fastlpips_cpp.*``.

Imported once ``fastlpips._C`` has loaded (by the op table's probe): the schemas are defined in
csrc/ops.cpp and the CPU (and CUDA) implementations in csrc/. The ops are kernels and carry no
autograd: ``fastlpips.ops.head.HeadMap`` and ``fastlpips.ops.transform`` are the only autograd
definitions, for every backend.
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
