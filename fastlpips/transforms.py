"""E-LPIPS random image transformations: sampling and the plain-PyTorch reference application.

Semantics of the official E-LPIPS release (shared/docs/REFERENCE.md section 2), N images per call:

* offsets ``dy, dx`` in 0..7 per image;
* scale level ``s`` in 1..8 with P(s) proportional to 1/s^2 and scale offsets ``oy, ox`` in 0..s-1,
  one of each per call ("official" mode);
* flips (0: flip W, 1: flip H, 2: both, 3: none), stratified over the batch and shuffled;
* one H<->W swap coin per call;
* colour permutations (the 6 of 3 channels), stratified over the batch and shuffled;
* colour scale per channel ``0.2 + 0.8 u``, u stratified over the batch ((U_i + i) / N, shuffled).

Applied in this order: (1) if s > 1, reflect-pad to a multiple of s (left/top pad = ox/oy, padded
size ((s-1) + W + (s-1)) // s * s) and box-downscale by s; (2) reflect-pad each image by
(top 7-dy, bottom dy, left 7-dx, right dx); (3) flip; (4) swap H/W; (5) permute channels;
(6) scale channels. ``apply_transform`` is the reference the fused kernels will be tested against.

Status: sampling and the reference application only; the E-LPIPS metric, the batched-sample mode
and the fused transform kernels are the rest of the E-LPIPS work (issue 4).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["TransformParams", "sample_official", "scale_probabilities", "apply_transform", "PERMUTATIONS", "MAX_SCALE", "MAX_OFFSET"]

PERMUTATIONS = torch.tensor(list(itertools.permutations(range(3))))  # (6, 3)
MAX_SCALE = 8
MAX_OFFSET = 7


@dataclass
class TransformParams:
    """One random transformation for a batch of N images."""

    scale: int                 # s in 1..8 (shared by the batch)
    scale_offset: tuple        # (oy, ox), each in 0..s-1
    offsets: torch.Tensor      # (N, 2) long: dy, dx in 0..7
    flips: torch.Tensor        # (N,) long: 0 flip W, 1 flip H, 2 both, 3 none
    swap: bool                 # transpose H and W
    perms: torch.Tensor        # (N, 3) long: channel permutation per image
    colors: torch.Tensor       # (N, 3) float: channel factors in [0.2, 1)

    @property
    def n(self) -> int:
        return int(self.offsets.shape[0])


def _stratified_codes(n: int, k: int, g: torch.Generator) -> torch.Tensor:
    """n codes in 0..k-1, each used n/k times (up to one), in random order."""
    start = int(torch.randint(k, (1,), generator=g))  # which codes get the leftover slots
    codes = (torch.arange(n) + start) % k
    return codes[torch.randperm(n, generator=g)]


def scale_probabilities(max_scale: int = MAX_SCALE) -> torch.Tensor:
    """P(s) for s = 1..max_scale, proportional to 1/s^2 (float64)."""
    levels = torch.arange(1, max_scale + 1, dtype=torch.float64)
    p = 1.0 / levels**2
    return p / p.sum()


def sample_official(n: int, *, generator: Optional[torch.Generator] = None, max_scale: int = MAX_SCALE,
                    brightness: bool = False, scale: Optional[int] = None) -> TransformParams:
    """Draw one transformation for ``n`` images as the official release does (scale level and swap
    shared by the batch). ``max_scale`` limits the scale levels (see ``scale_levels_for_size``);
    ``scale`` fixes the level (a draw conditioned on it, for stratified sampling)."""
    if n < 1:
        raise ValueError(f"need at least one image, got n={n}")
    if not 1 <= max_scale <= MAX_SCALE:
        raise ValueError(f"max_scale must be in 1..{MAX_SCALE}, got {max_scale}")
    g = generator if generator is not None else torch.Generator().manual_seed(int(torch.randint(2**62, (1,))))
    if scale is not None and not 1 <= scale <= max_scale:
        raise ValueError(f"scale must be in 1..{max_scale}, got {scale}")
    s = scale if scale is not None else int(torch.multinomial(scale_probabilities(max_scale), 1, generator=g)) + 1
    oy, ox = (int(v) for v in torch.randint(s, (2,), generator=g))
    offsets = torch.randint(MAX_OFFSET + 1, (n, 2), generator=g)
    flips = _stratified_codes(n, 4, g)
    swap = bool(torch.randint(2, (1,), generator=g))
    perms = PERMUTATIONS[_stratified_codes(n, 6, g)]
    ch = 1 if brightness else 3
    u = (torch.rand(n, ch, generator=g, dtype=torch.float64) + torch.arange(n, dtype=torch.float64)[:, None]) / n
    u = torch.stack([u[torch.randperm(n, generator=g), c] for c in range(ch)], 1)
    colors = (0.2 + 0.8 * u).float().expand(n, 3).contiguous()
    return TransformParams(s, (oy, ox), offsets, flips, swap, perms, colors)


def min_size_for_scale(scale: int) -> int:
    """Smallest image side that scale level ``scale`` accepts (the downscaled image >= 8 px)."""
    return 8 * scale


def apply_transform(x: torch.Tensor, p: TransformParams) -> torch.Tensor:
    """Reference application of ``p`` to images ``x`` (N, 3, H, W) -> (N, 3, h+7, w+7) (H/W
    swapped when ``p.swap``), differentiable with respect to ``x``."""
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"images must be (N, 3, H, W), got {tuple(x.shape)}")
    if x.shape[0] != p.n:
        raise ValueError(f"the transform was drawn for {p.n} images, got {x.shape[0]}")
    s = p.scale
    h, w = x.shape[2], x.shape[3]
    if min(h, w) < min_size_for_scale(s):
        raise ValueError(f"images of {h}x{w} are too small for scale level {s}: reflect padding needs the "
                         f"downscaled image to be >= 8 px, i.e. sides >= {min_size_for_scale(s)}")
    if s > 1:
        oy, ox = p.scale_offset
        hp = ((s - 1) + h + (s - 1)) // s * s
        wp = ((s - 1) + w + (s - 1)) // s * s
        x = F.pad(x, (ox, wp - w - ox, oy, hp - h - oy), mode="reflect")
        x = F.avg_pool2d(x, s)
    out = []
    for i in range(p.n):
        dy, dx = (int(v) for v in p.offsets[i])
        y = F.pad(x[i:i + 1], (MAX_OFFSET - dx, dx, MAX_OFFSET - dy, dy), mode="reflect")
        code = int(p.flips[i])
        if code in (0, 2):
            y = y.flip(-1)
        if code in (1, 2):
            y = y.flip(-2)
        out.append(y)
    x = torch.cat(out)
    if p.swap:
        x = x.transpose(-1, -2)
    x = x[torch.arange(p.n)[:, None], p.perms.to(x.device)]
    return x * p.colors.to(device=x.device, dtype=x.dtype)[:, :, None, None]
