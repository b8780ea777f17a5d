"""Fake (meta) kernels of the native ops ``torch.ops.fastlpips_native.*``, and their deprecated alias.

Imported once ``fastlpips._C`` has loaded (by the op table's probe): the schemas are defined in
csrc/ops.cpp and the CPU (and CUDA) implementations in csrc/. The ops are kernels and carry no
autograd: ``fastlpips.ops.head.HeadMap`` and ``fastlpips.ops.transform`` are the only autograd
definitions, for every backend.

``torch.ops.fastlpips_cpp.*`` (the namespace's former name; it also holds the CUDA kernels) is kept
as a deprecated alias: the same schemas, each calling its ``fastlpips_native`` op, with the same
fake kernels. New code should use ``fastlpips_native``.
"""
from __future__ import annotations

import torch

from .. import _C  # type: ignore[attr-defined]  # noqa: F401  (the compiled extension: loads the schemas)
from .registry import fake_bwd, fake_fwd, fake_jvp, fake_stats_bwd, fake_stats_fwd

NAMESPACE = "fastlpips_native"
DEPRECATED_NAMESPACE = "fastlpips_cpp"


def _transform_fwd_fake(x, params, colors, scale, out_h, out_w):
    return x.new_empty((params.shape[0], 3, out_h, out_w))


def _transform_bwd_fake(grad, params, colors, scale, batch, in_h, in_w):
    return grad.new_empty((batch, 3, in_h, in_w))


FAKES = {"head_fwd": fake_fwd, "head_bwd": fake_bwd, "head_jvp": fake_jvp,
         "transform_fwd": _transform_fwd_fake, "transform_bwd": _transform_bwd_fake,
         "stats_fwd": fake_stats_fwd, "stats_bwd": fake_stats_bwd}

for _name, _fake in FAKES.items():
    torch.library.register_fake(f"{NAMESPACE}::{_name}")(_fake)


def _forward_to(op):
    def impl(*args):
        return op(*args)
    return impl


# The deprecated alias (kept alive with this module: a Library's registrations end with it).
_ALIAS = torch.library.Library(DEPRECATED_NAMESPACE, "DEF")
for _name, _fake in FAKES.items():
    _op = getattr(getattr(torch.ops, NAMESPACE), _name).default
    _ALIAS.define(str(_op._schema).split("::", 1)[1])  # the same schema, under the old namespace
    _ALIAS.impl(_name, _forward_to(_op), "CompositeExplicitAutograd")
    torch.library.register_fake(f"{DEPRECATED_NAMESPACE}::{_name}", _fake, lib=_ALIAS)  # type: ignore[arg-type]
