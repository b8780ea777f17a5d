"""E-LPIPS to a confidence interval: ``elpips_estimate`` (adaptive stopping as the release's
evaluation example does), stratified sampling of the scale level, and the interval arithmetic.
Built on ``fastlpips.elpips.ELPIPS`` (its ``sample_distances`` / ``distance_once``)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import List, Optional

import torch

from . import validation as V
from .elpips import ELPIPS
from .transforms import SobolTransformSampler, TransformSet, sample_batched, scale_probabilities

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
    method: str = "stratified"  # 'stratified' | 'iid' | 'qmc'
    samples_per_level: Optional[List[int]] = None  # samples of each scale level (1, 2, ...)
    dof: Optional[float] = None  # degrees of freedom of the t quantile ('qmc'); None: normal quantile


def _z(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def elpips_estimate(x: torch.Tensor, y: torch.Tensor, *, rtol: float = 0.025, atol: float = 0.01,
                    confidence: float = 0.95, min_samples: int = 10, max_samples: int = 2000,
                    stratified: bool = True, batch_size: int = 32, seed: Optional[int] = None,
                    metric: Optional[ELPIPS] = None, callback=None, method: Optional[str] = None,
                    replicates: int = 8) -> ELPIPSEstimate:
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

    ``method`` (default: 'stratified', or 'iid' with ``stratified=False``): 'qmc' is randomized
    quasi-Monte Carlo inside each scale level: ``replicates`` independent scrambled Sobol streams
    per level (``transforms.SobolTransformSampler``; every image balanced across its draws), each
    level's mean the mean of its streams' means and its variance their sample variance / R, levels
    weighted by P(s) as above, and the interval from a t quantile with Welch-Satterthwaite degrees
    of freedom (>= R - 1). Every draw has the metric's distribution, so the estimate is unbiased;
    the streams grow together (points per stream ~ P(s) x total / R, at least 1). Needs
    ``mode='batched'`` and the transformations on; dropout stays i.i.d.
    """
    if method is None:
        method = "stratified" if stratified else "iid"
    if method not in ("stratified", "iid", "qmc"):
        raise ValueError(f"method must be 'stratified', 'iid' or 'qmc', got {method!r}")
    stratified = method != "iid"
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
    if method == "qmc":
        replicates = V.check_positive_int(replicates, "replicates", 2)
        return _estimate_qmc(metric, x, y, g, rtol=rtol, atol=atol, confidence=confidence, min_samples=min_samples,
                             max_samples=max_samples, batch_size=batch_size, replicates=replicates, callback=callback)
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
                est.converged = _converged(est, rtol, atol)
                if callback is not None:
                    callback(done, est)
                if bool(est.converged.all()):
                    break
    if est is None:  # pragma: no cover - excluded by the checks above
        raise RuntimeError("no estimate: max_samples too small to estimate a variance in every stratum")
    est.method = method
    est.samples_per_level = [len(v) for v in strata] if stratified else None
    return est


def _converged(est: ELPIPSEstimate, rtol: float, atol: float) -> torch.Tensor:
    """The stopping rule per image; a zero-variance estimate (identical images: every sample exactly 0) is exact."""
    return ((est.half_width < rtol * est.mean) & (est.half_width < atol)) | (est.half_width == 0)


def _t_quantile(q: float, dof: float) -> float:
    """The q quantile of Student's t with ``dof`` degrees of freedom (Cornish-Fisher expansion in
    the normal quantile, Abramowitz & Stegun 26.7.5; relative error < 1e-3 for dof >= 5, checked
    against scipy in the tests); the normal quantile for infinite dof."""
    z = NormalDist().inv_cdf(q)
    if math.isinf(dof):
        return z
    z2 = z * z
    g1 = (z2 + 1) * z / 4
    g2 = ((5 * z2 + 16) * z2 + 3) * z / 96
    g3 = (((3 * z2 + 19) * z2 + 17) * z2 - 15) * z / 384
    g4 = ((((79 * z2 + 776) * z2 + 1482) * z2 - 1920) * z2 - 945) * z / 92160
    return z + g1 / dof + g2 / dof**2 + g3 / dof**3 + g4 / dof**4


def _estimate_qmc(metric: ELPIPS, x, y, g: torch.Generator, *, rtol, atol, confidence, min_samples, max_samples,
                  batch_size, replicates, callback) -> ELPIPSEstimate:
    """``elpips_estimate(method='qmc')``: R scrambled Sobol streams per scale level (see there)."""
    if metric.mode != "batched" or not metric.transforms:
        raise ValueError("method='qmc' samples the transformations: it needs an ELPIPS with mode='batched' and "
                         "transforms on")
    n = y.shape[0]
    levels = metric.max_scale
    p = scale_probabilities(levels)
    if max_samples < replicates * levels:
        raise ValueError(f"max_samples={max_samples} is below the {replicates * levels} samples method='qmc' needs "
                         f"({replicates} replicates x {levels} scale levels, one point each); raise max_samples or "
                         "lower replicates or the metric's max_scale")
    streams = [SobolTransformSampler(n, scale=s + 1, replicates=replicates, generator=g,
                                     families=metric.sampled_families) for s in range(levels)]
    sums = torch.zeros(levels, replicates, n, dtype=torch.float64)
    counts = [0] * levels  # points per stream of each level
    done, est = 0, None
    q = 0.5 + confidence / 2
    with torch.no_grad():
        while done < max_samples:
            target = min(max_samples, max(done + batch_size, replicates * levels))
            want = [max(1, int(float(p[s]) * target / replicates)) for s in range(levels)]
            while sum(want) * replicates > max_samples:  # keep within the budget (levels first at 1 stay)
                s = max(range(levels), key=lambda k: want[k])
                want[s] -= 1
            add = [max(0, w - c) for w, c in zip(want, counts)]
            if not any(add):
                break
            sets, index = [], []
            for s in range(levels):
                if add[s]:
                    sets.append(streams[s].draw(add[s]))  # stream by stream
                    index += [(s, r) for r in range(replicates) for _ in range(add[s])]
            tset = TransformSet.cat(sets)
            d = metric.sample_distances((x,), y, tset.samples, generator=g, transforms=tset)[0].double().cpu()
            for k, (s, r) in enumerate(index):
                sums[s, r] += d[k]
            counts = [c + a for c, a in zip(counts, add)]
            done = sum(counts) * replicates
            if done >= min_samples:
                est = _combine_qmc(sums, counts, p, q, confidence, done)
                est.converged = _converged(est, rtol, atol)
                if callback is not None:
                    callback(done, est)
                if bool(est.converged.all()):
                    break
    if est is None:
        est = _combine_qmc(sums, counts, p, q, confidence, done)
        est.converged = _converged(est, rtol, atol)
    est.samples_per_level = [c * replicates for c in counts]
    return est


def _combine_qmc(sums, counts, p, q, confidence, done) -> ELPIPSEstimate:
    """Level means = mean of the streams' means; their variance = var over the R streams / R; the
    levels weighted by P(s); t quantile with Welch-Satterthwaite degrees of freedom."""
    reps = sums.shape[1]
    stream_means = sums / torch.tensor(counts, dtype=torch.float64).view(-1, 1, 1)  # (L, R, N)
    level_mean = stream_means.mean(1)
    a = (p.view(-1, 1) ** 2) * stream_means.var(1, unbiased=True) / reps  # (L, N): p_s^2 var(mean_s)
    mean = (p.view(-1, 1) * level_mean).sum(0)
    var = a.sum(0)
    den = (a**2).sum(0) / (reps - 1)
    dof = torch.where(den > 0, var**2 / den.clamp_min(1e-300), torch.full_like(var, float(reps - 1)))
    dof_min = float(dof.min())
    t = torch.tensor([_t_quantile(q, float(v)) for v in dof.tolist()], dtype=torch.float64)
    se = var.sqrt()
    return ELPIPSEstimate(mean.float(), se.float(), (t * se).float(), done, torch.zeros_like(mean, dtype=torch.bool),
                          confidence, True, method="qmc", dof=dof_min)


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
