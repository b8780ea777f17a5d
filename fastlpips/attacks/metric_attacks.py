"""Attacks on the metrics themselves (E-LPIPS paper, R-LPIPS paper), batched PGD with exact
constraints. Images are (N, 3, H, W) in [0, 1]; every result stays in [0, 1].

* ``pull_to_target`` (E-LPIPS A1): move ``a`` towards a target image (L2) while d(a, x) <= eps;
  each step is followed by a projection onto the metric ball (``project_newton``).
* ``push_within_l2`` (E-LPIPS A2): maximize d(a, x) subject to ||a - x||_2^2 <= eps (the SQUARED
  norm, as the paper), by projected Adam.
* ``feature_mse_attack`` (R-LPIPS "OPT"): maximize the feature MSE ||phi(a) - phi(x)||^2 of a
  distance (by default the unit-weight LPIPS features) within an L_inf ball.
* ``twoafc_pgd``: L_inf or L_2 PGD on one image of 2AFC triplets (ref, p0, p1) to make the
  metric's judgment disagree with the humans' (judge > 0.5: humans find p1 closer).

E-LPIPS (a stochastic distance, ``ELPIPSDistance(metric, samples=k)``): A1 and A2 attack the
expectation over transformations (EoT), as the paper: every step draws k fresh transformations
and dropout masks (``distance.resample()``), shared by x and a. ``fixed_draw=True`` keeps one draw
for the whole attack instead (an attack on k fixed transformed networks, not on E-LPIPS). The
result is then measured with ``check_samples`` fresh draws (``fastlpips.elpips_estimate``): A1
shrinks a towards x (bisection on the segment) until the one-sided upper confidence bound of
E-LPIPS(a, x) at ``confidence`` is <= eps; A2's constraint is exact (a projection).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Optional, Tuple

import torch

from ..validation import check_bound, check_positive_int, check_same_shape
from .distances import ELPIPSDistance, FeatureDistance
from .linalg import _bcast
from .perceptual import project_newton

__all__ = ["pull_to_target", "push_within_l2", "feature_mse_attack", "twoafc_pgd", "MetricAttackResult",
           "estimate_distance", "certify_ball", "project_l2", "project_linf", "ascent_direction"]


@dataclass
class MetricAttackResult:
    """``distance``: the result's distance to its anchor (exact, or for E-LPIPS the mean of
    ``check_samples`` fresh draws); ``ok``: the constraint holds (for A1 on E-LPIPS: the one-sided
    upper confidence bound ``upper`` at ``confidence`` is <= eps)."""

    images: torch.Tensor
    distance: torch.Tensor   # (N,) metric distance of the result to its anchor
    ok: torch.Tensor         # (N,) the constraint holds
    upper: Optional[torch.Tensor] = None  # (N,) upper confidence bound of the distance (stochastic distances)
    confidence: Optional[float] = None
    pulled_back: Optional[torch.Tensor] = None  # (N,) A1 on E-LPIPS: the certification moved the image towards x


def _norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1)


def project_l2(x: torch.Tensor, a: torch.Tensor, eps: float, box: Tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """``a`` onto ||a - x||_2 <= eps (per image), then into the value ``box`` (clamping only moves
    coordinates towards x when x is inside the box)."""
    d = a - x
    scale = torch.clamp(eps / _norm(d).clamp_min(1e-30), max=1.0)
    return (x + _bcast(scale, d) * d).clamp(*box)


def project_linf(x: torch.Tensor, a: torch.Tensor, eps: float, box: Tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """``a`` onto ||a - x||_inf <= eps, then into the value ``box``."""
    return torch.minimum(torch.maximum(a, x - eps), x + eps).clamp(*box)


def ascent_direction(g: torch.Tensor, norm: str) -> torch.Tensor:
    """The steepest-ascent unit step for gradient ``g``: sign(g) (L_inf) or g / ||g||_2 (L_2)."""
    return g.sign() if norm == "linf" else g / _bcast(_norm(g).clamp_min(1e-30), g)


def _check(distance: FeatureDistance, steps: int, eps: float, step_size: Optional[float] = None, **images) -> float:
    """Validation shared by the metric attacks (fastlpips.attacks.checks): images in [0, 1] of one
    shape and large enough for the distance, steps a positive int, eps and step_size finite > 0."""
    check_positive_int(steps, "steps")
    if step_size is not None:
        check_bound(step_size, "step_size")
    first = None
    for name, img in images.items():
        distance.check_images(img, name)
        if first is None:
            first = (name, img)
        else:
            check_same_shape(first[1], img, first[0], name)
    return check_bound(eps, "eps")


def _check_confidence(confidence: float) -> float:
    if not (isinstance(confidence, float) and 0.5 < confidence < 1):
        raise ValueError(f"confidence must be a float in (0.5, 1), got {confidence!r}")
    return confidence


def estimate_distance(distance: FeatureDistance, a: torch.Tensor, x: torch.Tensor, *, samples: int = 256,
                      confidence: float = 0.95, seed: int = 0):
    """d(a, x) per image and a one-sided upper confidence bound: exact (bound = value) for a
    deterministic distance; for E-LPIPS the stratified estimate of ``samples`` fresh draws
    (``fastlpips.elpips_estimate``) and mean + z stderr with z the one-sided ``confidence`` quantile."""
    _check_confidence(confidence)
    if not distance.stochastic:
        with torch.no_grad():
            d = distance(a, x)
        return d, d
    if not isinstance(distance, ELPIPSDistance):
        raise TypeError(f"no many-draw estimate for the stochastic distance {type(distance).__name__}")
    from ..estimator import elpips_estimate

    samples = check_positive_int(samples, "check_samples")
    est = elpips_estimate(a.detach(), x.detach(), metric=distance.metric, min_samples=samples, max_samples=samples,
                          rtol=math.inf, atol=math.inf, seed=seed)
    z = NormalDist().inv_cdf(confidence)
    return est.mean.to(a.dtype), (est.mean + z * est.stderr).to(a.dtype)


def _step_features(distance: FeatureDistance, x: torch.Tensor, fixed_draw: bool, first: bool) -> torch.Tensor:
    """phi(x) under this step's draw: fresh draws every step (EoT) unless ``fixed_draw``."""
    if distance.stochastic and not fixed_draw and not first:
        distance.resample()
    return distance.features(x).detach()


def pull_to_target(distance: FeatureDistance, x: torch.Tensor, target: torch.Tensor, eps: float, *,
                   steps: int = 50, step_size: float = 0.05, fixed_draw: bool = False, check_samples: int = 256,
                   confidence: float = 0.95, bisection_steps: int = 6, seed: int = 0) -> MetricAttackResult:
    """E-LPIPS A1: minimize ||a - target||_2 with d(a, x) <= eps (eps on the distance's own scale).

    Each step moves a by ``step_size`` of the way to the target and projects it back onto the
    metric ball (Newton steps, ``project_newton``) under the step's draw: for E-LPIPS k fresh
    draws per step (EoT), or one draw for the whole attack with ``fixed_draw=True``. E-LPIPS
    results are then certified with ``check_samples`` fresh draws: images whose one-sided upper
    confidence bound exceeds eps are pulled back towards x (``bisection_steps`` halvings of the
    segment, the same draws at every point), ``upper`` is the bound at the returned image and
    ``ok`` = upper <= eps; ``distance`` is an independent estimate (fresh draws) of d(a, x)."""
    eps = _check(distance, steps, eps, step_size, x=x, target=target)
    x, target = x.detach(), target.detach()
    a = x.clone()
    for t in range(steps):
        fx = _step_features(distance, x, fixed_draw, t == 0)
        a = (a + step_size * (target - a)).clamp(0, 1)
        a = project_newton(distance, x, a, eps, overshoot=0.05 * eps, fx=fx).images  # ends near the boundary
    if not distance.stochastic:
        with torch.no_grad():
            d = distance(a, x)
        return MetricAttackResult(a, d, d <= eps)
    a, upper, bad = certify_ball(distance, x, a, eps, samples=check_samples, confidence=confidence,
                                 bisection_steps=bisection_steps, seed=seed)
    d, _ = estimate_distance(distance, a, x, samples=check_samples, confidence=confidence, seed=seed + 1)
    return MetricAttackResult(a, d, upper <= eps, upper, confidence, bad)


def certify_ball(distance: FeatureDistance, x: torch.Tensor, a: torch.Tensor, eps: float, *, samples: int = 256,
                 confidence: float = 0.95, bisection_steps: int = 6, seed: int = 0):
    """Bring ``a`` inside the ball d(a, x) <= eps of a stochastic distance with the stated
    confidence: the one-sided upper bound of ``samples`` fresh draws (``estimate_distance``);
    images outside move to the largest t = k / 2^bisection_steps on the segment x + t (a - x)
    whose bound (the same draws at every point) is <= eps (t = 0, x itself, always is).
    Returns (images, upper bounds, which images moved)."""
    eps = check_bound(eps, "eps")
    check_positive_int(bisection_steps, "bisection_steps", 0)
    _, upper = estimate_distance(distance, a, x, samples=samples, confidence=confidence, seed=seed)
    bad = upper > eps
    if bool(bad.any()):
        lo = torch.zeros(int(bad.sum()), dtype=x.dtype, device=x.device)
        hi, ub_lo = torch.ones_like(lo), torch.zeros_like(lo)
        xb, db = x[bad], (a - x)[bad]
        for _ in range(bisection_steps):
            mid = (lo + hi) / 2
            _, ub = estimate_distance(distance, xb + _bcast(mid, db) * db, xb, samples=samples,
                                      confidence=confidence, seed=seed)
            inside = ub <= eps
            lo, hi, ub_lo = torch.where(inside, mid, lo), torch.where(inside, hi, mid), torch.where(inside, ub, ub_lo)
        a, upper = a.clone(), upper.clone()
        a[bad], upper[bad] = xb + _bcast(lo, db) * db, ub_lo
    return a, upper, bad


def push_within_l2(distance: FeatureDistance, x: torch.Tensor, eps: float, *, steps: int = 50,
                   lr: Optional[float] = None, fixed_draw: bool = False, check_samples: int = 256,
                   confidence: float = 0.95, seed: int = 0,
                   generator: Optional[torch.Generator] = None) -> MetricAttackResult:
    """E-LPIPS A2: maximize d(a, x) subject to ||a - x||_2^2 <= eps (the squared L2 norm, as the
    paper), by Adam on a (learning rate ``lr``, default 0.5 sqrt(eps / pixels): half the ball's
    per-pixel RMS radius) with a projection onto the ball and [0, 1] after every step; for E-LPIPS
    k fresh draws per step (EoT) unless ``fixed_draw``. The constraint holds exactly; ``distance``
    is measured with ``check_samples`` fresh draws for E-LPIPS."""
    eps = _check(distance, steps, eps, lr, x=x)
    x = x.detach()
    radius = math.sqrt(eps)
    lr = lr if lr is not None else 0.5 * radius / math.sqrt(x[0].numel())
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    a = project_l2(x, x + 1e-3 * radius * noise / _bcast(_norm(noise), noise), radius).requires_grad_(True)
    opt = torch.optim.Adam([a], lr=lr)
    for t in range(steps):
        fx = _step_features(distance, x, fixed_draw, t == 0)
        loss = -distance.from_features(distance.features(a), fx).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            a.copy_(project_l2(x, a, radius))
    a = a.detach()
    d, upper = estimate_distance(distance, a, x, samples=check_samples, confidence=confidence, seed=seed)
    ok = _norm(a - x).square() <= eps * (1 + 1e-6)
    return MetricAttackResult(a, d, ok, upper if distance.stochastic else None,
                              confidence if distance.stochastic else None)


def feature_mse_attack(distance: FeatureDistance, x: torch.Tensor, eps: float, *, steps: int = 50,
                       step_size: Optional[float] = None,
                       generator: Optional[torch.Generator] = None) -> MetricAttackResult:
    """R-LPIPS OPT: maximize ||phi(a) - phi(x)||^2 within ||a - x||_inf <= eps (signed PGD, random start).
    ``distance`` is typically ``LPIPSDistance(model, calibrated=False)`` (the trunk's features)."""
    eps = _check(distance, steps, eps, step_size, x=x)
    step_size = step_size if step_size is not None else 2.5 * eps / steps
    fx = distance.features(x).detach()
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    a = project_linf(x, x + eps * (2 * u - 1), eps)
    for _ in range(steps):
        a = a.detach().requires_grad_(True)
        mse = (distance.features(a) - fx).square().sum(1)
        (g,) = torch.autograd.grad(mse.sum(), a)
        a = project_linf(x, a.detach() + step_size * g.sign(), eps)
    with torch.no_grad():
        d = (distance.features(a) - fx).square().sum(1)
    return MetricAttackResult(a, d, (a - x).abs().flatten(1).amax(1) <= eps * (1 + 1e-6))


def twoafc_pgd(distance: FeatureDistance, ref: torch.Tensor, p0: torch.Tensor, p1: torch.Tensor,
               judge: torch.Tensor, eps: float, *, norm: str = "linf", target: str = "p0", steps: int = 20,
               step_size: Optional[float] = None) -> MetricAttackResult:
    """Perturb ``target`` ('p0', 'p1' or 'ref') within an L_inf or L_2 ball so that the metric's
    2AFC judgment (p1 closer when d(ref, p1) < d(ref, p0)) disagrees with the humans' (``judge`` in
    [0, 1], the fraction who found p1 closer). Returns the perturbed image, the final margin
    sign * (d(ref, p1) - d(ref, p0)) (> 0: the metric disagrees) and the norm constraint."""
    if norm not in ("linf", "l2") or target not in ("p0", "p1", "ref"):
        raise ValueError(f"norm must be 'linf' or 'l2' and target 'p0', 'p1' or 'ref', got {norm!r}, {target!r}")
    eps = _check(distance, steps, eps, step_size, ref=ref, p0=p0, p1=p1)
    if not isinstance(judge, torch.Tensor) or judge.shape != (ref.shape[0],):
        raise ValueError(f"judge must be a tensor of shape ({ref.shape[0]},), the fraction of humans who found p1 "
                         f"closer, got {getattr(judge, 'shape', type(judge).__name__)}")
    if not bool(((judge >= 0) & (judge <= 1)).all()):
        raise ValueError("judge must lie in [0, 1] (the fraction of humans who found p1 closer)")
    step_size = step_size if step_size is not None else 2.5 * eps / steps
    sign = torch.where(judge > 0.5, 1.0, -1.0).to(ref.dtype)  # humans: p1 closer -> make d1 - d0 large
    images = {"ref": ref.detach(), "p0": p0.detach(), "p1": p1.detach()}
    x = images[target]
    project = project_linf if norm == "linf" else project_l2
    a = x.clone()

    def margin(img):
        parts = dict(images, **{target: img})
        fr = distance.features(parts["ref"])
        return sign * (distance.from_features(fr, distance.features(parts["p1"])) -
                       distance.from_features(fr, distance.features(parts["p0"])))

    for _ in range(steps):
        a = a.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(margin(a).sum(), a)
        step = ascent_direction(g, norm)
        a = project(x, a.detach() + step_size * step, eps)
    with torch.no_grad():
        m = margin(a)
    size = (a - x).abs().flatten(1).amax(1) if norm == "linf" else _norm(a - x)
    return MetricAttackResult(a, m, size <= eps * (1 + 1e-6))
