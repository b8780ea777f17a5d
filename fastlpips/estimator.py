"""E-LPIPS to a confidence interval: ``elpips_estimate`` (adaptive stopping as the release's
evaluation example does), stratified sampling of the scale level, and the interval arithmetic.
Built on ``fastlpips.elpips.ELPIPS`` (its ``sample_distances`` / ``distance_once``)."""
from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist
from typing import List, Optional

import torch

from . import validation as V
from .elpips import ELPIPS
from .transforms import TransformSet, sample_batched, scale_probabilities

__all__ = ["ELPIPSEstimate", "elpips_estimate"]


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
                    stratified: bool = True, batch_size: int = 32, seed: Optional[int] = None,
                    metric: Optional[ELPIPS] = None, callback=None) -> ELPIPSEstimate:
    """E-LPIPS of ``x`` vs ``y`` ((N, 3, H, W) in [0, 1]) to a confidence interval, stopping adaptively.

    Stops, as the release's evaluation example does, once for every image both
    ``z * stderr < rtol * mean`` and ``z * stderr < atol`` hold (z from ``confidence``; 1.96 for 95%)
    after at least ``min_samples`` samples, or at ``max_samples``. Samples are drawn in rounds of
    ``batch_size`` (the stopping rule is checked after each round); with ``metric.mode ==
    'official'`` each sample is its own pass (the release's loop) and the rule is checked after
    every sample.

    ``stratified=True`` samples the scale level by stratification: each level s gets a share of the
    samples proportional to P(s) ~ 1/s^2 (at least 2, for its variance), the transformation is drawn
    conditioned on its level, and mean = sum_s P(s) mean_s, var = sum_s P(s)^2 var_s / n_s: unbiased
    (each stratum's mean is) and free of the between-level variance. ``stratified=False`` is the
    release's i.i.d. sampling. ``callback(samples, estimate)`` is called after each check.
    """
    if metric is None:
        metric = ELPIPS()
    elif not isinstance(metric, ELPIPS):
        raise TypeError(f"metric must be an ELPIPS instance, got {type(metric).__name__}")
    z = _z(confidence)
    for name, tol in (("rtol", rtol), ("atol", atol)):
        if not isinstance(tol, (int, float)) or not tol > 0:  # refuses NaN; inf switches the criterion off
            raise ValueError(f"{name} must be a number > 0 (math.inf switches it off), got {tol!r}")
    min_samples = V.check_positive_int(min_samples, "min_samples", 2)
    max_samples = V.check_positive_int(max_samples, "max_samples", 2)
    batch_size = V.check_positive_int(batch_size, "batch_size")
    if max_samples < min_samples:
        raise ValueError(f"max_samples ({max_samples}) must be >= min_samples ({min_samples})")
    metric.validate((x,), y)
    g = torch.Generator().manual_seed(seed if seed is not None else int(torch.randint(2**62, (1,))))
    levels = metric.max_scale if metric.transforms else 1
    p = scale_probabilities(levels) if stratified else torch.ones(1, dtype=torch.float64)
    if max_samples < 2 * len(p):
        raise ValueError(f"max_samples={max_samples} is below the {2 * len(p)} samples stratified sampling needs "
                         f"for {len(p)} scale levels (2 per level, for each level's variance); raise max_samples, "
                         "lower the metric's max_scale or pass stratified=False")
    strata: List[List[torch.Tensor]] = [[] for _ in range(len(p))]
    order = _allocation(p, max_samples) if stratified else [0] * max_samples
    step = 1 if metric.mode == "official" else batch_size
    est = None
    done = 0
    with torch.no_grad():
        while done < len(order):
            chunk = order[done:done + step]
            for s, d in _draw(metric, x, y, chunk, stratified, g):
                strata[s].append(d.double())
            done += len(chunk)
            if done >= min_samples and all(len(v) >= 2 for v in strata):
                est = _combine(strata, p, z, done, confidence, stratified)
                # a zero-variance estimate (identical images: every sample exactly 0) is exact
                est.converged = ((est.half_width < rtol * est.mean) & (est.half_width < atol)) | (est.half_width == 0)
                if callback is not None:
                    callback(done, est)
                if bool(est.converged.all()):
                    break
    if est is None:  # pragma: no cover - excluded by the checks above
        raise RuntimeError("no estimate: max_samples too small to estimate a variance in every stratum")
    return est


def _draw(metric: ELPIPS, x, y, chunk: List[int], stratified: bool, g: torch.Generator):
    """Distances (one (N,) tensor per sample) for a round of samples whose strata are ``chunk``."""
    n = y.shape[0]
    if metric.mode == "official":
        return [(s, metric.distance_once((x,), y, g, scale=s + 1 if stratified else None)[0]) for s in chunk]
    if not metric.transforms:
        d = metric.sample_distances((x,), y, len(chunk), generator=g)[0]
        return [(s, d[k]) for k, s in enumerate(chunk)]
    if stratified:
        levels = sorted(set(chunk))
        sets = [sample_batched(chunk.count(s), n, generator=g, max_scale=metric.max_scale, scale=s + 1,
                               families=metric.sampled_families) for s in levels]
        tset, strata = TransformSet.cat(sets), [s for s in levels for _ in range(chunk.count(s))]
    else:
        tset, strata = sample_batched(len(chunk), n, generator=g, max_scale=metric.max_scale,
                                      families=metric.sampled_families), chunk
    d = metric.sample_distances((x,), y, len(chunk), generator=g, transforms=tset)[0]
    return [(s, d[k]) for k, s in enumerate(strata)]


def _allocation(p: torch.Tensor, total: int) -> List[int]:
    """Stratum of every successive sample: 2 per stratum first, then proportional to p (largest deficit)."""
    order = [s for s in range(len(p)) for _ in range(2)]
    counts = [2] * len(p)
    while len(order) < total:
        n = len(order) + 1
        s = max(range(len(p)), key=lambda k: float(p[k]) * n - counts[k])
        counts[s] += 1
        order.append(s)
    return order[:total]


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
