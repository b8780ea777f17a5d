"""E-LPIPS (Kettunen et al. 2019): the expectation of an LPIPS-like distance over random image
transformations and dropout, with the official release's semantics (REFERENCE.md section 2):

* VGG16 trunk with every max-pool replaced by 2x2 average pooling; 14 compared layers: the scaled
  input image itself and all 13 conv+ReLU outputs; weights ``vgg_full_avg`` (package data);
* dropout (keep 0.99) before every convolution, the first included; one Bernoulli mask per
  element of the batch tensor, the same mask for every image compared in the call (the image(s)
  and the reference), scaled by 1/keep; layer 0 is taken before the first dropout;
* per layer: channel-normalize, squared difference, spatial mean, weighted channel sum (the fused
  head op of fastlpips.ops);
* inputs in [0, 1]; the transformation is applied first, then ``2x - 1`` and the LPIPS scaling.

Status (issue 4, in progress): this module evaluates the metric by drawing one transformation
per sample in the official mode (``fastlpips.transforms``) and looping over samples. Still to
come: the batched-sample mode, the fused transform kernels, grouping by scale level, the
high-sample estimator with confidence intervals, the CLI and the benchmarks.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from statistics import NormalDist
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from . import _validation as V
from .model import ScalingLayer
from .nets.trunks import VGG16
from .nets.weights import load_lin_weights, load_trunk_state
from .ops.head import lpips_head_map
from .transforms import MAX_SCALE, apply_transform, min_size_for_scale, sample_official, scale_probabilities

__all__ = ["ELPIPS", "ELPIPSEstimate", "elpips_estimate", "scale_levels_for_size"]


def scale_levels_for_size(height: int, width: int) -> int:
    """The release's rule (set_scale_levels_by_image_size): max(1, min(H, W) // 64) levels."""
    return max(1, min(MAX_SCALE, min(height, width) // 64))


class _AvgPoolVGG(nn.Module):
    """VGG16 convolutions with 2x2 average pooling, returning the 14 E-LPIPS layers."""

    def __init__(self, vgg: VGG16) -> None:
        super().__init__()
        layers: List[nn.Module] = []
        for s in vgg.slices:
            for m in s:
                layers.append(nn.AvgPool2d(2, 2) if isinstance(m, nn.MaxPool2d) else m)
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, groups: int, keep: Optional[float],
                generator: Optional[torch.Generator]) -> List[torch.Tensor]:
        """``x`` holds ``groups`` stacked batches of equal size that share every dropout mask."""
        feats = [x]
        n = x.shape[0] // groups
        for m in self.layers:
            if isinstance(m, nn.Conv2d) and keep is not None:
                shape = (n,) + tuple(x.shape[1:])
                u = torch.rand(shape, generator=generator, dtype=torch.float32).to(device=x.device)
                mask = (u < keep).to(x.dtype) / keep
                x = x * mask.repeat(groups, 1, 1, 1)
            x = m(x)
            if isinstance(m, nn.ReLU):
                feats.append(x)
        return feats


class ELPIPS(nn.Module):
    """E-LPIPS-VGG: ``forward(image, reference)`` -> (N,) distances averaged over ``n_samples``.

    Args (keyword-only):
        n_samples: transformations (each with fresh dropout) averaged per call; default 1 (a loss).
        transforms / dropout: switch the random transformations / the dropout off (for tests and
            ablations; the metric is E-LPIPS only with both on).
        keep_prob: dropout keep probability (0.99).
        max_scale: largest scale level (1..8; the release's default is 8; see
            ``scale_levels_for_size`` for small images).
        trunk_path, backend: as for ``fastlpips.LPIPS``.

    ``image`` may be a tuple of image batches: each is compared with ``reference`` under the same
    transformations and dropout (the official "third image" use). Images are (N, 3, H, W) in [0, 1].
    """

    def __init__(self, *, n_samples: int = 1, transforms: bool = True, dropout: bool = True,
                 keep_prob: float = 0.99, max_scale: int = MAX_SCALE,
                 trunk_path: Optional[Union[str, os.PathLike]] = None, backend: Optional[str] = None) -> None:
        super().__init__()
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        if not 0 < keep_prob <= 1:
            raise ValueError(f"keep_prob must be in (0, 1], got {keep_prob}")
        if not 1 <= max_scale <= MAX_SCALE:
            raise ValueError(f"max_scale must be in 1..{MAX_SCALE}, got {max_scale}")
        self.n_samples, self.transforms, self.dropout = n_samples, transforms, dropout
        self.keep_prob, self.max_scale, self.backend = keep_prob, max_scale, backend
        self.scaling_layer = ScalingLayer()
        vgg = VGG16()
        load_trunk_state(vgg, "vgg", trunk_path)
        vgg.requires_grad_(False)
        self.net = _AvgPoolVGG(vgg)
        lin = load_lin_weights("elpips", "vgg_full_avg")
        self.register_buffer("weights", torch.cat([lin[f"lin{k}"].reshape(-1) for k in range(14)]))
        self.channels = [lin[f"lin{k}"].numel() for k in range(14)]
        self.eval()

    def _layer_weights(self) -> List[torch.Tensor]:
        return list(torch.split(self.weights, self.channels))

    def distance_once(self, images: Sequence[torch.Tensor], reference: torch.Tensor,
                      generator: Optional[torch.Generator], scale: Optional[int] = None) -> List[torch.Tensor]:
        """One sample: a transformation + dropout shared by every image; a (N,) distance per image.
        ``scale`` fixes the transformation's scale level (stratified sampling)."""
        n = reference.shape[0]
        batch = list(images) + [reference]
        if self.transforms:
            p = sample_official(n, generator=generator, max_scale=self.max_scale, scale=scale)
            batch = [apply_transform(b, p) for b in batch]
        x = self.scaling_layer(torch.cat(batch) * 2 - 1)
        feats = self.net(x, len(batch), self.keep_prob if self.dropout else None, generator)
        out = [0.0] * len(images)
        for f, w in zip(feats, self._layer_weights()):
            parts = torch.split(f, n)
            for i in range(len(images)):
                out[i] = out[i] + lpips_head_map(parts[i], parts[-1], w, backend=self.backend).mean((1, 2, 3))
        return out

    def forward(self, image: Union[torch.Tensor, Tuple[torch.Tensor, ...]], reference: torch.Tensor, *,
                n_samples: Optional[int] = None, generator: Optional[torch.Generator] = None):
        images = tuple(image) if isinstance(image, (tuple, list)) else (image,)
        for i, im in enumerate(images):
            V.check_image(im, f"image[{i}]")
            V.check_pair(im, reference)
            if im.shape[0] != reference.shape[0]:
                raise ValueError(f"image[{i}] has batch {im.shape[0]} but reference {reference.shape[0]}")
        V.check_image(reference, "reference")
        h, w = reference.shape[2:]
        if self.transforms and min(h, w) < min_size_for_scale(self.max_scale):
            raise ValueError(f"images of {h}x{w} are too small for scale levels up to {self.max_scale} (the "
                             f"downscaled image must be >= 8 px); use ELPIPS(max_scale={max(1, min(h, w) // 8)}) "
                             f"or the release's rule scale_levels_for_size(h, w) = {scale_levels_for_size(h, w)}")
        if generator is None:
            generator = torch.Generator().manual_seed(int(torch.randint(2**62, (1,))))
        k = n_samples or self.n_samples
        total = None
        for _ in range(k):
            d = self.distance_once(images, reference, generator)
            total = d if total is None else [a + b for a, b in zip(total, d)]
        result = tuple(t / k for t in total)
        return result if isinstance(image, (tuple, list)) else result[0]


@dataclass
class ELPIPSEstimate:
    """Result of ``elpips_estimate``: per-image mean, standard error and interval half-width."""

    mean: torch.Tensor
    stderr: torch.Tensor
    half_width: torch.Tensor
    samples: int
    converged: torch.Tensor
    confidence: float
    stratified: bool


def _z(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def elpips_estimate(x: torch.Tensor, y: torch.Tensor, *, rtol: float = 0.025, atol: float = 0.01,
                    confidence: float = 0.95, min_samples: int = 10, max_samples: int = 2000,
                    stratified: bool = True, seed: Optional[int] = None, metric: Optional[ELPIPS] = None,
                    callback=None) -> ELPIPSEstimate:
    """E-LPIPS of ``x`` vs ``y`` ((N, 3, H, W) in [0, 1]) to a confidence interval, stopping adaptively.

    Stops, as the release's evaluation example does, once for every image both
    ``z * stderr < rtol * mean`` and ``z * stderr < atol`` hold (z from ``confidence``; 1.96 for 95%)
    after at least ``min_samples`` samples, or at ``max_samples``.

    ``stratified=True`` samples the scale level by stratification: each level s gets a share of the
    samples proportional to P(s) ~ 1/s^2 (at least 2, for its variance), the transformation is drawn
    conditioned on its level, and mean = sum_s P(s) mean_s, var = sum_s P(s)^2 var_s / n_s: unbiased
    (each stratum's mean is) and free of the between-level variance. ``stratified=False`` is the
    release's i.i.d. sampling. ``callback(samples, estimate)`` is called after each sample.
    """
    if metric is None:
        metric = ELPIPS()
    z = _z(confidence)
    if min_samples < 2 or max_samples < min_samples:
        raise ValueError(f"need 2 <= min_samples <= max_samples, got {min_samples}, {max_samples}")
    g = torch.Generator().manual_seed(seed if seed is not None else int(torch.randint(2**62, (1,))))
    levels = metric.max_scale if metric.transforms else 1
    p = scale_probabilities(levels) if stratified else torch.ones(1, dtype=torch.float64)
    strata: List[List[torch.Tensor]] = [[] for _ in range(len(p))]
    order = _allocation(p, max_samples) if stratified else [0] * max_samples
    est = None
    with torch.no_grad():
        for i, s in enumerate(order, start=1):
            scale = s + 1 if stratified else None
            d = metric.distance_once((x,), y, g, scale=scale)[0].double()
            strata[s].append(d)
            if i >= min_samples and all(len(v) >= 2 for v in strata):
                est = _combine(strata, p, z, i, confidence, stratified)
                est.converged = (est.half_width < rtol * est.mean) & (est.half_width < atol)
                if callback is not None:
                    callback(i, est)
                if bool(est.converged.all()):
                    break
    if est is None:  # pragma: no cover - max_samples below the strata minimum
        raise ValueError("max_samples too small to estimate a variance in every stratum")
    return est


def _allocation(p: torch.Tensor, total: int) -> List[int]:
    """Stratum of every successive sample: 2 per stratum first, then proportional to p (largest deficit)."""
    order = [s for s in range(len(p)) for _ in range(2)]
    counts = [2] * len(p)
    while len(order) < total:
        n = len(order) + 1
        s = max(range(len(p)), key=lambda k: float(p[k]) * n - counts[k])
        counts[s] += 1
        order.append(s)
    return order[:max(total, 2 * len(p))]


def _combine(strata, p, z, n, confidence, stratified) -> ELPIPSEstimate:
    means, variances = [], []
    for v in strata:
        t = torch.stack(v)
        means.append(t.mean(0))
        variances.append(t.var(0, unbiased=True) / len(v))
    mean = sum(float(p[k]) * means[k] for k in range(len(p)))
    var = sum(float(p[k]) ** 2 * variances[k] for k in range(len(p)))
    se = var.sqrt()
    return ELPIPSEstimate(mean.float(), se.float(), (z * se).float(), n, torch.zeros_like(mean, dtype=torch.bool),
                          confidence, stratified)
