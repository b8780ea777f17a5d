"""Exact linearization of the LPIPS and E-LPIPS trunks, kept for many J v products at one point.

One primal pass through the trunk records what each module's derivative needs (ReLU masks,
max-pool argmax indices); afterwards every J v is a tangent-only pass: the convolutions without
bias on the tangent, the masks, the gathers, and the analytic derivative of the channel
normalization (``fastlpips.attacks.linearize``) — about the cost of one forward pass, versus 3-5 for
forward-mode AD through generic tensor wrappers. Supported modules: Conv2d, ReLU, MaxPool2d,
AvgPool2d, Sequential and SqueezeNet's Fire; anything else raises ``NotImplementedError`` (callers
fall back to ``torch.func.jvp``). The E-LPIPS trunks (``fastlpips.elpips``) linearize through the
same rules plus their dropout convolutions. Checked against ``torch.func.jvp`` and dense Jacobians
in the tests.
"""
from __future__ import annotations

from typing import Callable, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .trunks import Fire

Tangent = Callable[[torch.Tensor], torch.Tensor]


def linearize_module(m: nn.Module, x: torch.Tensor) -> Tuple[torch.Tensor, Tangent]:
    """(m(x), t -> d m(x)[t]) for the supported modules."""
    if isinstance(m, nn.Conv2d):
        w = m.weight
        return m(x), lambda t: F.conv2d(t, w, None, m.stride, m.padding, m.dilation, m.groups)
    if isinstance(m, nn.ReLU):
        y = F.relu(x)
        mask = (y > 0).to(y.dtype)
        return y, lambda t: t * mask
    if isinstance(m, nn.MaxPool2d):
        y, idx = F.max_pool2d(x, m.kernel_size, m.stride, m.padding, m.dilation, ceil_mode=m.ceil_mode,
                              return_indices=True)
        flat = idx.flatten(2)
        return y, lambda t: t.flatten(2).gather(2, flat).view(y.shape)
    if isinstance(m, nn.AvgPool2d):
        return m(x), m
    if isinstance(m, nn.Sequential):
        fns: List[Tangent] = []
        for sub in m:
            x, fn = linearize_module(sub, x)
            fns.append(fn)

        def chain(t):
            for fn in fns:
                t = fn(t)
            return t
        return x, chain
    if isinstance(m, Fire):
        s, fs = linearize_module(nn.Sequential(m.squeeze, m.squeeze_activation), x)
        a, fa = linearize_module(nn.Sequential(m.expand1x1, m.expand1x1_activation), s)
        b, fb = linearize_module(nn.Sequential(m.expand3x3, m.expand3x3_activation), s)

        def fire(t):
            ts = fs(t)
            return torch.cat([fa(ts), fb(ts)], 1)
        return torch.cat([a, b], 1), fire
    raise NotImplementedError(f"no linearization rule for {type(m).__name__}")
