"""E-LPIPS to a confidence interval: ``elpips_estimate`` (adaptive stopping as the release's
evaluation example does), stratified sampling of the scale level, randomized quasi-Monte Carlo,
control variates with cost-aware allocation, and the interval arithmetic. Built on
``fastlpips.elpips.ELPIPS`` (its ``sample_distances`` / ``distance_once``)."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from statistics import NormalDist
from typing import List, Optional

import torch

from . import validation as V
from .elpips import DEFAULT_ATOL, DEFAULT_RTOL, ELPIPS
from .transforms import (
    SobolTransformSampler,
    TransformSet,
    control_features,
    downscaled_size,
    sample_batched,
    scale_probabilities,
)

__all__ = ["ELPIPSEstimate", "elpips_estimate", "stratified_mean", "normal_quantile", "METHODS"]

METHODS = ("auto", "cv", "qmc", "stratified", "iid")
_CV_FOLDS = 8  # cross-fitting folds of the control-variate regression
_CV_MIN_RATIO = 3  # control variates at a level once it has >= 3 (k + 1) samples (k features)
_CV_FLOOR = 0.25  # every level keeps >= this share of its proportional allocation (P(s) x samples)


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
    method: str = "stratified"  # 'cv' | 'qmc' | 'stratified' | 'iid' (what ran; 'auto' resolved)
    samples_per_level: Optional[List[int]] = None  # samples of each scale level (1, 2, ...)
    cv_levels: Optional[List[bool]] = None  # 'cv': the levels whose mean used the control variates
    dof: Optional[float] = None  # degrees of freedom of the t quantile ('qmc'); None: normal quantile
    dtype: str = "float32"  # the trunk's compute dtype ('bfloat16' where dtype='auto' or 'bf16' chose it)


def _with_dtype(metric: ELPIPS, est: ELPIPSEstimate) -> ELPIPSEstimate:
    est.dtype = str(metric.compute_dtype or torch.float32).replace("torch.", "")
    return est


def normal_quantile(confidence: float) -> float:
    """z of a two-sided normal interval at ``confidence`` (1.96 for 0.95); ValueError outside (0, 1)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def elpips_estimate(x: torch.Tensor, y: torch.Tensor, *, rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL,
                    confidence: float = 0.95, min_samples: int = 10, max_samples: int = 2000,
                    stratified: bool = True, batch_size: int = 32, seed: Optional[int] = None,
                    metric: Optional[ELPIPS] = None, callback=None, method: Optional[str] = None,
                    replicates: int = 8, costs=None) -> ELPIPSEstimate:
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

    'cv' stratifies the scale level and subtracts control variates: functions of each sampled
    transformation with exactly known mean (``transforms.control_features``: permutation x colour
    factors, colour squares and products, flip, swap; 33 with every family on). A level's values
    are regressed per image on them with 8-fold cross-fitting (the coefficients applied to a sample
    are fitted on the other folds only, so they are independent of it and the adjusted value
    d - beta' h keeps the mean exactly: unbiased), once the level has >= 3 (k + 1) samples; below
    that its plain mean is used (``cv_levels`` says where they were used). The variance is the
    adjusted values' (normal quantile). The levels get their samples by cost-aware allocation: after
    a first round in proportion to P(s) (>= 2 per level), each round tops up the levels towards
    n_s ~ P(s) sigma_s / sqrt(cost_s) (sigma_s: the adjusted spread, over the images not yet
    converged, relative to their tolerance; never below 1/4 of the proportional share).
    ``costs``: 'measured' (seconds per sample of each level, timed during the run), 'area' (the
    downscaled image's padded area, a deterministic model), or a sequence of relative costs per
    level; default 'area' when ``seed`` is given (the run is then a function of the seed alone) and
    'measured' otherwise. Needs ``mode='batched'`` and the transformations on.

    'auto' (the default unless ``stratified=False``): 'cv' where it applies (mode 'batched' with
    transformations on), else 'stratified'. On real photo pairs it needs the fewest samples and the
    least time to the interval of the methods here (benchmarks/README.md, "E-LPIPS estimators").
    """
    if method is None:
        method = "auto" if stratified else "iid"
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(repr(m) for m in METHODS)}, got {method!r}")
    if metric is None:
        metric = ELPIPS()
    elif not isinstance(metric, ELPIPS):
        raise TypeError(f"metric must be an ELPIPS instance, got {type(metric).__name__}")
    if costs is not None and method not in ("cv", "auto"):
        raise ValueError(f"costs applies to method='cv' (cost-aware allocation), not to method={method!r}")
    if method == "auto":
        method = "cv" if metric.mode == "batched" and metric.transforms else "stratified"
    stratified = method != "iid"
    z = normal_quantile(confidence)
    for name, tol in (("rtol", rtol), ("atol", atol)):
        if not isinstance(tol, (int, float)) or not tol > 0:  # refuses NaN; inf switches the criterion off
            raise ValueError(f"{name} must be a number > 0 (math.inf switches it off), got {tol!r}")
    min_samples = V.check_positive_int(min_samples, "min_samples", 2)
    max_samples = V.check_positive_int(max_samples, "max_samples", 2)
    batch_size = V.check_positive_int(batch_size, "batch_size")
    if max_samples < min_samples:
        raise ValueError(f"max_samples ({max_samples}) must be >= min_samples ({min_samples})")
    seed = V.check_seed(seed)
    metric.validate((x,), y)
    g = torch.Generator().manual_seed(seed if seed is not None else int(torch.randint(2**62, (1,))))
    if method == "qmc":
        replicates = V.check_positive_int(replicates, "replicates", 2)
        return _with_dtype(metric, _estimate_qmc(metric, x, y, g, rtol=rtol, atol=atol, confidence=confidence,
                                                 min_samples=min_samples,
                             max_samples=max_samples, batch_size=batch_size, replicates=replicates, callback=callback))
    if method == "cv":
        costs = _cost_model(costs if costs is not None else ("area" if seed is not None else "measured"), metric, y)
        return _with_dtype(metric, _estimate_cv(metric, x, y, g, rtol=rtol, atol=atol, z=z, confidence=confidence,
                                                min_samples=min_samples,
                            max_samples=max_samples, batch_size=batch_size, callback=callback, costs=costs))
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
                if _checked(est, rtol, atol, callback):
                    break
    if est is None:  # pragma: no cover - excluded by the checks above
        raise RuntimeError("no estimate: max_samples too small to estimate a variance in every stratum")
    est.method = method
    est.samples_per_level = [len(v) for v in strata] if stratified else None
    return _with_dtype(metric, est)


def stratified_mean(metric: ELPIPS, images, reference: torch.Tensor, samples: int, *,
                    generator: Optional[torch.Generator] = None) -> List[torch.Tensor]:
    """E-LPIPS of each of ``images`` (a tensor or a tuple of them, compared under the same draws)
    vs ``reference`` from ``samples`` draws with the scale level stratified: one draw per level,
    the rest in proportion to P(s) (largest deficit first), and sum_s P(s) mean_s per image. The
    same expectation as ``metric(images, reference, n_samples=samples)`` (unbiased: each level's
    mean is) without the between-level variance, which is 80-85% of the i.i.d. variance on real
    photo pairs: a few stratified draws are as precise as many i.i.d. ones. Needs
    ``samples >= metric.max_scale``; with the transformations off every draw is one level and this
    is the plain mean. Returns one (N,) tensor per image tensor, without gradients."""
    images = tuple(images) if isinstance(images, (tuple, list)) else (images,)
    samples = V.check_positive_int(samples, "samples")
    metric.validate(images, reference)
    g = generator if generator is not None else torch.Generator().manual_seed(int(torch.randint(2**62, (1,))))
    with torch.no_grad():
        if not metric.transforms or metric.max_scale == 1:
            return [d.mean(0) for d in metric.sample_distances(images, reference, samples, generator=g)]
        levels = metric.max_scale
        if samples < levels:
            raise ValueError(f"stratified sampling needs one draw per scale level: samples={samples} < "
                             f"{levels} levels; raise samples or lower the metric's max_scale")
        p = scale_probabilities(levels)
        order = _allocation(p, samples, minimum=1)
        counts = [order.count(s) for s in range(levels)]
        tset = TransformSet.cat([_level_set(metric, s, c, reference.shape[0], g) for s, c in enumerate(counts)])
        weights = torch.cat([torch.full((c,), float(p[s]) / c, dtype=torch.float64) for s, c in enumerate(counts)])
        out = metric.sample_distances(images, reference, samples, generator=g, transforms=tset)
        return [(weights.to(d.device)[:, None] * d.double()).sum(0).to(d.dtype) for d in out]


def _checked(est: ELPIPSEstimate, rtol: float, atol: float, callback) -> bool:
    """Sets ``est.converged`` by the stopping rule, reports to ``callback``; True when every image has converged."""
    est.converged = _converged(est, rtol, atol)
    if callback is not None:
        callback(est.samples, est)
    return bool(est.converged.all())


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


def _transform_levels(metric: ELPIPS, method: str, what: str, max_samples: int, per_level: int, why: str,
                      fix: str):
    """(levels, P(s)) for a method that works on the sampled transformations; refuses a metric without
    them and a budget below ``per_level`` samples per level."""
    if metric.mode != "batched" or not metric.transforms:
        raise ValueError(f"method='{method}' {what}: it needs an ELPIPS with mode='batched' and transforms on")
    levels = metric.max_scale
    if max_samples < per_level * levels:
        raise ValueError(f"max_samples={max_samples} is below the {per_level * levels} samples method='{method}' "
                         f"needs ({why}); raise max_samples or {fix}")
    return levels, scale_probabilities(levels)


def _estimate_qmc(metric: ELPIPS, x, y, g: torch.Generator, *, rtol, atol, confidence, min_samples, max_samples,
                  batch_size, replicates, callback) -> ELPIPSEstimate:
    """``elpips_estimate(method='qmc')``: R scrambled Sobol streams per scale level (see there)."""
    levels, p = _transform_levels(metric, "qmc", "samples the transformations", max_samples, replicates,
                                  f"{replicates} replicates x {metric.max_scale} scale levels, one point each",
                                  "lower replicates or the metric's max_scale")
    n = y.shape[0]
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
                if _checked(est, rtol, atol, callback):
                    break
    if est is None:
        est = _combine_qmc(sums, counts, p, q, confidence, done)
        est.converged = _converged(est, rtol, atol)
    est.samples_per_level = [c * replicates for c in counts]
    return est


def _cost_model(costs, metric: ELPIPS, y: torch.Tensor):
    """``costs`` -> None (measure) or a list of relative seconds per sample, one per scale level."""
    levels = metric.max_scale if metric.transforms else 1
    if isinstance(costs, str):
        if costs == "measured":
            return None
        if costs == "area":
            h, w = y.shape[-2:]
            return [float((downscaled_size(h, s) + 7) * (downscaled_size(w, s) + 7)) for s in range(1, levels + 1)]
        raise ValueError(f"costs must be 'measured', 'area' or a sequence of {levels} positive numbers, got {costs!r}")
    try:
        out = [float(c) for c in costs]
    except (TypeError, ValueError):
        raise ValueError(f"costs must be 'measured', 'area' or a sequence of {levels} positive numbers, "
                         f"got {costs!r}") from None
    if len(out) != levels or not all(math.isfinite(c) and c > 0 for c in out):
        raise ValueError(f"costs must hold {levels} positive finite numbers (one per scale level), got {costs!r}")
    return out


def _estimate_cv(metric: ELPIPS, x, y, g: torch.Generator, *, rtol, atol, z, confidence, min_samples, max_samples,
                 batch_size, callback, costs) -> ELPIPSEstimate:
    """``elpips_estimate(method='cv')``: stratified levels, cross-fitted control variates, cost-aware
    allocation (see there)."""
    levels, p = _transform_levels(metric, "cv", "regresses on the sampled transformations", max_samples, 2,
                                  f"2 per scale level for its variance, {metric.max_scale} levels",
                                  "lower the metric's max_scale")
    n = y.shape[0]
    values: List[List[torch.Tensor]] = [[] for _ in range(levels)]
    feats: List[List[torch.Tensor]] = [[] for _ in range(levels)]
    counts, seconds = [0] * levels, [0.0] * levels
    done = 0
    est: Optional[ELPIPSEstimate] = None
    spread: List[float] = []
    with torch.no_grad():
        while done < max_samples:
            if done == 0:  # first round: in proportion to P(s), >= 2 per level
                first = _allocation(p, min(max_samples, max(batch_size, 2 * levels)))
                add = [first.count(s) for s in range(levels)]
            else:
                cost = costs if costs is not None else [seconds[s] / counts[s] for s in range(levels)]
                add = _cost_aware(counts, min(batch_size, max_samples - done), p, spread, cost)
            for s in range(levels):
                if not add[s]:
                    continue
                t0 = time.perf_counter()
                tset = _level_set(metric, s, add[s], n, g)
                d = metric.sample_distances((x,), y, add[s], generator=g, transforms=tset)[0].double().cpu()
                seconds[s] += time.perf_counter() - t0
                values[s].append(d)
                feats[s].append(control_features(tset, metric.families))
                counts[s] += add[s]
            done = sum(counts)
            est, level_sd = _combine_cv(values, feats, p, z, confidence, done)
            est.converged = _converged(est, rtol, atol)
            spread = _spread(est, level_sd, rtol, atol)
            if (done >= min_samples or done >= max_samples) and _checked(est, rtol, atol, callback):
                break
    assert est is not None  # max_samples >= 2 per level: at least one round ran
    est.samples_per_level = list(counts)
    return est


def _cv_level(d: torch.Tensor, h: torch.Tensor):
    """Mean (N,) and per-sample variance (N,) of one level's values d (S, N) after the control
    variates h (S, N, k) with cross-fitted coefficients, and whether they were used (S >= 3 (k + 1))."""
    count, n = d.shape
    k = h.shape[2]
    if k == 0 or count < _CV_MIN_RATIO * (k + 1):
        return d.mean(0), d.var(0, unbiased=True), False
    xs = torch.cat([torch.ones(count, n, 1, dtype=d.dtype), h], 2)  # (S, N, k + 1)
    fold = torch.arange(count) % _CV_FOLDS
    # every fold's Gram matrix and moments in one product: rows of fold f land in block f
    split = (xs[:, :, None, :] * torch.nn.functional.one_hot(fold, _CV_FOLDS).to(d.dtype)[:, None, :, None])
    split = split.reshape(count, n, -1).permute(1, 2, 0)  # (N, F (k + 1), S)
    grams = (split @ xs.transpose(0, 1)).view(n, _CV_FOLDS, k + 1, k + 1).transpose(0, 1)  # (F, N, k + 1, k + 1)
    moments = (split @ d.t().unsqueeze(2)).view(n, _CV_FOLDS, k + 1, 1).transpose(0, 1)
    a = grams.sum(0) - grams  # every fold's complement
    b = moments.sum(0) - moments
    scale = a.diagonal(dim1=-2, dim2=-1).mean(-1, keepdim=True).clamp_min(1e-300)  # (F, N, 1)
    ridge = 1e-9 * scale[..., None] * torch.eye(k + 1, dtype=d.dtype)  # keeps a rank-deficient design solvable
    beta = torch.linalg.solve(a + ridge, b)[..., 1:, 0]  # (F, N, k): the intercept is not subtracted
    adjusted = d - (h * beta[fold]).sum(-1)
    return adjusted.mean(0), adjusted.var(0, unbiased=True), True


def _combine_cv(values, feats, p, z, confidence, done):
    """The estimate from every level's (adjusted) mean and variance, and each level's per-image spread."""
    means, variances, used, level_sd = [], [], [], []
    for vs, hs in zip(values, feats):
        d, h = torch.cat(vs), torch.cat(hs)
        m, v, u = _cv_level(d, h)
        means.append(m)
        variances.append(v / d.shape[0])
        level_sd.append(v.clamp_min(0).sqrt())
        used.append(u)
    est = _weighted(means, variances, p, z, done, confidence, True)
    est.method, est.cv_levels = "cv", used
    return est, level_sd


def _spread(est: ELPIPSEstimate, level_sd: List[torch.Tensor], rtol: float, atol: float) -> List[float]:
    """Each level's spread relative to the tolerance of the images still running (all when none is)."""
    tol = torch.minimum(rtol * est.mean.double().abs(), torch.full_like(est.mean, atol, dtype=torch.float64))
    active = ~est.converged if not bool(est.converged.all()) else torch.ones_like(est.converged)
    ok = active & torch.isfinite(tol) & (tol > 0)
    return [float(((sd[ok] / tol[ok]) ** 2).mean().sqrt()) if bool(ok.any()) else 0.0 for sd in level_sd]


def _cost_aware(counts: List[int], add: int, p: torch.Tensor, spread: List[float], cost: List[float]) -> List[int]:
    """Samples of each level in the next round of ``add``: towards shares ~ P(s) sigma_s / sqrt(cost_s),
    none below ``_CV_FLOOR`` x P(s) (largest deficit first)."""
    w = [float(p[s]) * spread[s] / math.sqrt(max(cost[s], 1e-12)) for s in range(len(p))]
    total_w = sum(w)
    share = [w[s] / total_w if total_w > 0 and math.isfinite(total_w) else float(p[s]) for s in range(len(p))]
    share = [max(share[s], _CV_FLOOR * float(p[s])) for s in range(len(p))]
    norm = sum(share)
    share = [v / norm for v in share]
    order = _greedy(counts, add, share)
    return [order.count(s) for s in range(len(p))]


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
        sets = [_level_set(metric, s, chunk.count(s), n, g) for s in levels]
        tset, strata = TransformSet.cat(sets), [s for s in levels for _ in range(chunk.count(s))]
    else:
        tset, strata = sample_batched(len(chunk), n, generator=g, max_scale=metric.max_scale,
                                      families=metric.sampled_families), chunk
    d = metric.sample_distances((x,), y, len(chunk), generator=g, transforms=tset)[0]
    return [(s, d[k]) for k, s in enumerate(strata)]


def _level_set(metric: ELPIPS, level: int, count: int, n: int, g: torch.Generator) -> TransformSet:
    """``count`` draws for ``n`` images conditioned on scale level ``level + 1`` (0-based ``level``)."""
    return sample_batched(count, n, generator=g, max_scale=metric.max_scale, scale=level + 1,
                          families=metric.sampled_families)


def _allocation(p: torch.Tensor, total: int, minimum: int = 2) -> List[int]:
    """Stratum of every successive sample: ``minimum`` per stratum first, then proportional to p
    (largest deficit)."""
    order = [s for s in range(len(p)) for _ in range(minimum)]
    order += _greedy([minimum] * len(p), total - len(order), [float(v) for v in p])
    return order[:total]


def _greedy(counts: List[int], add: int, share: List[float]) -> List[int]:
    """The strata of ``add`` more samples, each to the stratum furthest below its share of the new total."""
    counts, order = list(counts), []
    for _ in range(add):
        total = sum(counts) + 1
        s = max(range(len(share)), key=lambda k: share[k] * total - counts[k])
        counts[s] += 1
        order.append(s)
    return order


def _combine(strata, p, z, n, confidence, stratified) -> ELPIPSEstimate:
    means, variances = [], []
    for v in strata:
        t = torch.stack(v)
        means.append(t.mean(0))
        variances.append(t.var(0, unbiased=True) / len(v))
    return _weighted(means, variances, p, z, n, confidence, stratified)


def _weighted(means, variances, p, z, n, confidence, stratified) -> ELPIPSEstimate:
    """sum_s P(s) mean_s, its variance sum_s P(s)^2 var(mean_s), and the normal-quantile interval."""
    mean = sum(float(p[k]) * means[k] for k in range(len(p)))
    var = sum(float(p[k]) ** 2 * variances[k] for k in range(len(p)))
    se = var.sqrt()
    return ELPIPSEstimate(mean.float(), se.float(), (z * se).float(), n, torch.zeros_like(mean, dtype=torch.bool),
                          confidence, stratified)
