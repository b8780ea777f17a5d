"""Attacks on the metrics themselves (E-LPIPS paper, R-LPIPS paper), batched PGD with exact
constraints. Images are (N, 3, H, W) in [0, 1]; every result stays in [0, 1].

* ``pull_to_target`` (E-LPIPS A1): move ``a`` towards a target image (L2) while d(a, x) <= eps;
  each step is followed by a projection onto the metric ball (``project_newton``), so the returned
  images satisfy the bound (samples the projection could not bring inside are reported).
* ``push_within_l2`` (E-LPIPS A2): maximize d(a, x) subject to ||a - x||_2 <= eps.
* ``feature_mse_attack`` (R-LPIPS "OPT"): maximize the feature MSE ||phi(a) - phi(x)||^2 of a
  distance (by default the unit-weight LPIPS features) within an L_inf ball.
* ``twoafc_pgd``: L_inf or L_2 PGD on one image of 2AFC triplets (ref, p0, p1) to make the
  metric's judgment disagree with the humans' (judge > 0.5: humans find p1 closer).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .checks import check_bound, check_positive_int, check_same_shape
from .distances import FeatureDistance
from .linalg import _bcast
from .perceptual import project_newton

__all__ = ["pull_to_target", "push_within_l2", "feature_mse_attack", "twoafc_pgd", "MetricAttackResult"]


@dataclass
class MetricAttackResult:
    images: torch.Tensor
    distance: torch.Tensor   # (N,) metric distance of the result to its anchor
    ok: torch.Tensor         # (N,) the constraint holds


def _norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1)


def _project_l2(x: torch.Tensor, a: torch.Tensor, eps: float) -> torch.Tensor:
    """Onto ||a - x||_2 <= eps, then the [0, 1] box (clamping only moves coordinates towards x)."""
    d = a - x
    scale = torch.clamp(eps / _norm(d).clamp_min(1e-30), max=1.0)
    return (x + _bcast(scale, d) * d).clamp(0, 1)


def _project_linf(x: torch.Tensor, a: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.minimum(torch.maximum(a, x - eps), x + eps).clamp(0, 1)


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


def pull_to_target(distance: FeatureDistance, x: torch.Tensor, target: torch.Tensor, eps: float, *,
                   steps: int = 50, step_size: float = 0.05) -> MetricAttackResult:
    """E-LPIPS A1: minimize ||a - target||_2 with d(a, x) <= eps (eps on the distance's own scale)."""
    eps = _check(distance, steps, eps, step_size, x=x, target=target)
    fx = distance.features(x).detach()
    a = x.detach().clone()
    for _ in range(steps):
        step = target - a
        a = (a + step_size * step).clamp(0, 1)
        a = project_newton(distance, x, a, eps, fx=fx).images
    with torch.no_grad():
        d = distance.from_features(distance.features(a), fx)
    return MetricAttackResult(a, d, d <= eps)


def push_within_l2(distance: FeatureDistance, x: torch.Tensor, eps: float, *, steps: int = 50,
                   step_size: Optional[float] = None, generator: Optional[torch.Generator] = None) -> MetricAttackResult:
    """E-LPIPS A2: maximize d(a, x) subject to ||a - x||_2 <= eps (normalized gradient ascent)."""
    eps = _check(distance, steps, eps, step_size, x=x)
    step_size = step_size if step_size is not None else 2.5 * eps / steps
    fx = distance.features(x).detach()
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    a = _project_l2(x, x + 1e-3 * eps * noise / _bcast(_norm(noise), noise), eps)
    for _ in range(steps):
        a = a.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(distance.from_features(distance.features(a), fx).sum(), a)
        a = _project_l2(x, a.detach() + step_size * g / _bcast(_norm(g).clamp_min(1e-30), g), eps)
    with torch.no_grad():
        d = distance.from_features(distance.features(a), fx)
    return MetricAttackResult(a, d, _norm(a - x) <= eps * (1 + 1e-6))


def feature_mse_attack(distance: FeatureDistance, x: torch.Tensor, eps: float, *, steps: int = 50,
                       step_size: Optional[float] = None,
                       generator: Optional[torch.Generator] = None) -> MetricAttackResult:
    """R-LPIPS OPT: maximize ||phi(a) - phi(x)||^2 within ||a - x||_inf <= eps (signed PGD, random start).
    ``distance`` is typically ``LPIPSDistance(model, calibrated=False)`` (the trunk's features)."""
    eps = _check(distance, steps, eps, step_size, x=x)
    step_size = step_size if step_size is not None else 2.5 * eps / steps
    fx = distance.features(x).detach()
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    a = _project_linf(x, x + eps * (2 * u - 1), eps)
    for _ in range(steps):
        a = a.detach().requires_grad_(True)
        mse = (distance.features(a) - fx).square().sum(1)
        (g,) = torch.autograd.grad(mse.sum(), a)
        a = _project_linf(x, a.detach() + step_size * g.sign(), eps)
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
    project = _project_linf if norm == "linf" else _project_l2
    a = x.clone()

    def margin(img):
        parts = dict(images, **{target: img})
        fr = distance.features(parts["ref"])
        return sign * (distance.from_features(fr, distance.features(parts["p1"])) -
                       distance.from_features(fr, distance.features(parts["p0"])))

    for _ in range(steps):
        a = a.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(margin(a).sum(), a)
        step = g.sign() if norm == "linf" else g / _bcast(_norm(g).clamp_min(1e-30), g)
        a = project(x, a.detach() + step_size * step, eps)
    with torch.no_grad():
        m = margin(a)
    size = (a - x).abs().flatten(1).amax(1) if norm == "linf" else _norm(a - x)
    return MetricAttackResult(a, m, size <= eps * (1 + 1e-6))
