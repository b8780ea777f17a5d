"""Perceptual attacks (Laidlaw et al., ICLR 2021) on exact products: PPGD, LPA, Fast-LPA, and the
projections onto a distance ball. Semantics follow perceptual-advex 0.2.6 (REFERENCE.md section 4)
where it is sound; differences are deliberate and listed:

* J v is exact (forward-mode AD on one linearization per step) instead of a finite difference,
  CG starts from x = 0 without spending a product on J^T J 0, and the step length ||J x|| comes
  from the same linearization instead of an extra forward;
* projections return a point that satisfies d <= bound, or report the sample as not projected
  (``Projected.ok``); perceptual-advex's bisection returns its last midpoint, which may lie outside.

Every attack takes the classifier ``model`` (logits from images in [0, 1]), a ``FeatureDistance``
and a bound on that distance's own scale (e.g. perceptual-advex's 0.5 with
``LPIPSDistance(calibrated=False)``, or an LPIPS value with the calibrated one).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ..validation import (
    check_bound,
    check_images_and_labels,
    check_labels,
    check_logits,
    check_nonnegative,
    check_positive_int,
    check_same_shape,
)
from .distances import ClassifierFeatureDistance, FeatureDistance
from .linalg import JTJ, _bcast, _dot, conjugate_gradient
from .threat import ThreatAttack

__all__ = ["margin_loss", "Projected", "project_bisection", "project_newton", "PerceptualPGD",
           "LagrangePerceptualAttack", "FastLagrangePerceptualAttack"]


def margin_loss(logits: torch.Tensor, labels: torch.Tensor, kappa: float = math.inf,
                targeted: bool = False) -> torch.Tensor:
    """Untargeted: max_{i != y} z_i - z_y; targeted: z_y - max_{i != y} z_i; clamped at kappa.
    ``logits`` (N, K), ``labels`` (N,) integer classes in [0, K) (checked: no broadcasting)."""
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1:  # raises, naming what labels should be
        check_labels(labels, logits.shape[0] if isinstance(logits, torch.Tensor) and logits.dim() else 0)
    check_logits(logits, labels.shape[0])
    check_labels(labels, logits.shape[0], logits.shape[1])
    z_y = logits.gather(1, labels[:, None])[:, 0]
    other = logits.masked_fill(nn.functional.one_hot(labels, logits.shape[1]).bool(), -math.inf).amax(1)
    m = (z_y - other) if targeted else (other - z_y)
    return m.clamp(max=kappa)


@dataclass
class Projected:
    images: torch.Tensor
    distance: torch.Tensor  # (N,) final distance on the distance's scale
    ok: torch.Tensor        # (N,) d <= bound holds


def _dist(distance: FeatureDistance, x: torch.Tensor, fx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return distance.from_features(distance.features(x), fx)


def project_bisection(distance: FeatureDistance, x: torch.Tensor, x_adv: torch.Tensor, bound: float, *,
                      steps: int = 10, fx: Optional[torch.Tensor] = None) -> Projected:
    """Bisection on the segment x + a (x_adv - x), a in [0, 1]: the largest a found with d <= bound
    (a = 0, the clean image, is always inside)."""
    bound = check_bound(bound)
    check_same_shape(x, x_adv, "x", "x_adv")
    fx = distance.features(x).detach() if fx is None else fx
    d_adv = _dist(distance, x_adv, fx)
    inside = d_adv <= bound
    lo = torch.where(inside, torch.ones_like(d_adv), torch.zeros_like(d_adv))
    hi = torch.ones_like(d_adv)
    for _ in range(steps):
        mid = (lo + hi) / 2
        d = _dist(distance, x + _bcast(mid, x) * (x_adv - x), fx)
        ok = (d <= bound) & ~inside
        lo = torch.where(ok, mid, lo)
        hi = torch.where(~ok & ~inside, mid, hi)
    out = x + _bcast(lo, x) * (x_adv - x)
    d = _dist(distance, out, fx)
    return Projected(out, d, d <= bound)


def project_newton(distance: FeatureDistance, x: torch.Tensor, x_adv: torch.Tensor, bound: float, *,
                   overshoot: float = 0.1, max_iterations: int = 10, fx: Optional[torch.Tensor] = None) -> Projected:
    """Newton steps x_adv -= (d - bound + overshoot) (1 + overshoot) g / ||g||^2 on the samples
    still outside (clamped to [0, 1]); each iteration's forward pass also tells which samples are
    inside by now (they stop). Samples still outside after ``max_iterations`` fall back to
    bisection from the original x_adv."""
    bound = check_bound(bound)
    check_same_shape(x, x_adv, "x", "x_adv")
    fx = distance.features(x).detach() if fx is None else fx
    cur = x_adv.detach().clone()
    dist = torch.zeros(x.shape[0], dtype=fx.dtype, device=x.device)
    need = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    subsets = distance.batch_independent  # else evaluate the whole batch, step only the samples outside
    for it in range(max_iterations + 1):
        if not bool(need.any()):
            break
        idx = need.nonzero().flatten() if subsets else torch.arange(x.shape[0], device=x.device)
        a = cur[idx].clone().requires_grad_(it < max_iterations)
        with torch.set_grad_enabled(it < max_iterations):
            d = distance.from_features(distance.features(a), fx[idx])
        dist[idx] = d.detach()
        outside = d.detach() > bound
        need[idx] = outside
        if it == max_iterations or not bool(outside.any()):
            break
        (g,) = torch.autograd.grad(d.sum(), a)
        step = torch.where(outside, d.detach() - bound + overshoot, torch.zeros_like(d))
        gn = _dot(g, g).clamp_min(1e-30)
        moved = (a.detach() - _bcast(step * (1 + overshoot) / gn, g) * g).clamp(0, 1)
        cur[idx] = torch.where(_bcast(outside, a), moved,
                               a.detach())
    if bool(need.any()):
        if subsets:
            fb = project_bisection(distance, x[need], x_adv[need], bound, fx=fx[need])
            cur[need], dist[need] = fb.images, fb.distance
        else:  # bisection of the whole batch, kept for the samples that need it
            fb = project_bisection(distance, x, torch.where(_bcast(need, cur), x_adv, cur), bound, fx=fx)
            cur, dist = fb.images, fb.distance
    return Projected(cur, dist, dist <= bound)


def _check_projection(kind: str) -> None:
    if kind not in ("newton", "bisection"):
        raise ValueError(f"projection must be 'newton' or 'bisection', got {kind!r}")


def check_attack_inputs(distance: FeatureDistance, x: torch.Tensor, labels: torch.Tensor) -> None:
    """Images in [0, 1] large enough for the distance, one integer label per image (the class
    count is checked against the logits by ``margin_loss``)."""
    check_images_and_labels(x, labels, check_images=distance.check_images)


def _project(kind: str, distance, x, x_adv, bound, fx) -> Projected:
    if kind == "newton":
        return project_newton(distance, x, x_adv, bound, fx=fx)
    if kind == "bisection":
        return project_bisection(distance, x, x_adv, bound, fx=fx)
    raise ValueError(f"projection must be 'newton' or 'bisection', got {kind!r}")


def _logits_and_features(model: nn.Module, distance: FeatureDistance, a: torch.Tensor, linearize: bool):
    """(logits, phi(a), jvp or None): a self-bounded distance on ``model``'s own layers gets its
    features and the logits from one classifier pass."""
    if isinstance(distance, ClassifierFeatureDistance) and distance.model is model:
        if linearize:
            fa, logits, jvp = distance.linearize_and_logits(a)
            return logits, fa, jvp
        fa, logits = distance.features_and_logits(a)
        return logits, fa, None
    fa, jvp = distance.linearize(a) if linearize else (distance.features(a), None)
    return model(a), fa, jvp


class _PerceptualAttack(ThreatAttack):
    """What PPGD and LPA share: the classifier, the distance, the bound, the step count, an
    optional step length, the margin loss' kappa and direction, the projection and the start's noise."""

    noise_kind = "normal"

    def _setup(self, model: nn.Module, distance: FeatureDistance, bound: float, num_iterations: int,
               step: Optional[float], kappa: float, targeted: bool, projection: str, init_std: float) -> None:
        self.model, self.distance = model, distance
        self.bound = check_bound(bound)
        self.num_iterations = check_positive_int(num_iterations, "num_iterations")
        self.step = None if step is None else check_bound(step, "step")
        _check_projection(projection)
        self.kappa, self.targeted, self.projection = kappa, targeted, projection
        self.init_std = check_nonnegative(init_std, "init_std")


class PerceptualPGD(_PerceptualAttack):
    """PPGD: each step solves (J^T J) d = grad(margin loss) by ``cg_iterations`` CG iterations with
    exact products at the current image, moves to x + (step / ||J d||) d (clamped to [0, 1]) and
    projects onto d(x0, .) <= bound. ``step`` defaults to 2 bound / num_iterations (root scale).
    ``forward`` returns the adversarial images; ``last`` keeps the CG residuals, pass counts and
    projection results of the final step and ``size``, the final distances (``ThreatAttack``)."""

    name = "ppgd"

    def __init__(self, model: nn.Module, distance: FeatureDistance, bound: float, *, num_iterations: int = 5,
                 cg_iterations: int = 5, step: Optional[float] = None, kappa: float = 1.0,
                 targeted: bool = False, projection: str = "newton", init_std: float = 0.01) -> None:
        super().__init__()
        self._setup(model, distance, bound, num_iterations, step, kappa, targeted, projection, init_std)
        self.cg_iterations = check_positive_int(cg_iterations, "cg_iterations")
        if self.step is None:
            self.step = 2 * distance.root(self.bound) / self.num_iterations

    def step_once(self, x0: torch.Tensor, adv: torch.Tensor, labels: torch.Tensor, fx0: torch.Tensor) -> torch.Tensor:
        a = adv.detach().requires_grad_(True)
        loss = margin_loss(self.model(a), labels, self.kappa, self.targeted)
        (g,) = torch.autograd.grad(loss.sum(), a)
        op = JTJ(self.distance.metric_features, adv)
        cg = conjugate_gradient(op, g, iterations=self.cg_iterations)
        jd = op.J(cg.x)
        length = jd.flatten(1).norm(dim=1)
        live = (g.flatten(1).norm(dim=1) >= 1e-4) & (length > 0)  # as perceptual-advex: a zero gradient stays put
        lam = torch.where(live, self.step / length.clamp_min(1e-30), torch.zeros_like(length))
        moved = (adv + _bcast(lam, adv) * cg.x).clamp(0, 1)
        proj = _project(self.projection, self.distance, x0, moved, self.bound, fx0)
        self.last = {"cg": cg, "passes": dict(op.passes), "projection": proj, "size": proj.distance}
        return proj.images

    def forward(self, x: torch.Tensor, labels: torch.Tensor, *, noise: Optional[torch.Tensor] = None,
                generator: Optional[torch.Generator] = None):
        """``x`` (N, 3, H, W) in [0, 1], ``labels`` (N,) class indices -> adversarial images in [0, 1].
        The start is x + init_std * noise (``noise``: N(0, 1) draws of x's shape; drawn with
        ``generator`` when None)."""
        check_attack_inputs(self.distance, x, labels)
        x = x.detach()
        fx0 = self.distance.features(x).detach()
        adv = (x + self._noise(x, noise, generator) * self.init_std).clamp(0, 1)
        for _ in range(self.num_iterations):
            if self.distance.stochastic:
                self.distance.resample()
                fx0 = self.distance.features(x).detach()
            adv = self.step_once(x, adv, labels, fx0)
        return adv.detach()


class LagrangePerceptualAttack(_PerceptualAttack):
    """LPA: minimize -margin + lambda relu(d - bound) with normalized gradient steps of perceptual
    length eta (decaying bound -> bound/10; length from an exact J v), lambda from 0.01 growing x10
    for samples still outside after each of ``binary_steps`` rounds; samples that succeed inside
    the bound stop being recomputed. Ends with a projection (guaranteed inside or reported).
    ``last['size']``: the final distances (one more distance pass; ``measure=False`` skips it,
    as PAT's training attack does); ``last['projection']`` the projection's result."""

    @property
    def name(self) -> str:  # type: ignore[override]  # read-only over ThreatAttack's class attribute
        return "fast-lpa" if self.fast else "lpa"

    def __init__(self, model: nn.Module, distance: FeatureDistance, bound: float, *, num_iterations: int = 20,
                 binary_steps: int = 5, step: Optional[float] = None, kappa: float = 1.0, targeted: bool = False,
                 projection: str = "newton", lam: float = 0.01, fast: bool = False, init_std: float = 0.01,
                 measure: bool = True) -> None:
        super().__init__()
        self._setup(model, distance, bound, num_iterations, step, kappa, targeted, projection, init_std)
        binary_steps = check_positive_int(binary_steps, "binary_steps")
        self.binary_steps = 1 if fast else binary_steps
        if self.step is None:
            self.step = distance.root(self.bound)
        self.lam0, self.fast, self.measure = check_bound(lam, "lam"), fast, measure

    def forward(self, x: torch.Tensor, labels: torch.Tensor, *, noise: Optional[torch.Tensor] = None,
                generator: Optional[torch.Generator] = None, reference: Optional[torch.Tensor] = None):
        """``x`` (N, 3, H, W) in [0, 1], ``labels`` (N,) class indices -> adversarial images in [0, 1].
        The start is x + init_std * noise (``noise``: N(0, 1) draws of x's shape; drawn with
        ``generator`` when None). ``reference``: phi(x) under the (deterministic) distance when the
        caller already has it (PAT's clean pass of a self-bounded distance), saving that pass."""
        check_attack_inputs(self.distance, x, labels)
        x = x.detach()
        n = x.shape[0]
        if reference is not None:
            if self.distance.stochastic:
                raise ValueError("reference features cannot be given for a stochastic distance (E-LPIPS)")
            if reference.shape[0] != n:
                raise ValueError(f"reference holds {reference.shape[0]} feature rows for {n} images")
            fx0 = reference.detach()
        else:
            fx0 = self.distance.features(x).detach()
        adv = (x + self._noise(x, noise, generator) * self.init_std).clamp(0, 1)
        self.last = {}
        lam = torch.full((n,), self.lam0, dtype=x.dtype, device=x.device)
        live = torch.ones(n, dtype=torch.bool, device=x.device)
        for _ in range(self.binary_steps):
            dists = torch.zeros(n, dtype=x.dtype, device=x.device)
            for it in range(self.num_iterations):
                eta = self.step * 0.1 ** (it / self.num_iterations)
                lam_t = lam * 0.1 ** (1 - it / self.num_iterations) if self.fast else lam
                # only still-failing samples are recomputed (gathered), unless the distance couples the
                # batch (E-LPIPS): then the whole batch runs and only the live samples are updated
                gather = not bool(live.all()) and self.distance.batch_independent
                idx = live.nonzero().flatten() if gather else slice(None)
                rows = live[idx]
                a = adv[idx].detach().clone().requires_grad_(True)
                logits, fa, jvp = _logits_and_features(self.model, self.distance, a, self.distance.has_linearization)
                d = self.distance.from_features(fa, fx0[idx])
                loss = -margin_loss(logits, labels[idx], self.kappa, self.targeted) + \
                    lam_t[idx] * torch.relu(d - self.bound)
                (g,) = torch.autograd.grad(loss.sum(), a)
                gn = g / _bcast(g.flatten(1).norm(dim=1) + 1e-8, g)
                with torch.no_grad():  # exact ||J g||: a tangent pass on this forward's linearization
                    jg = jvp(gn) if jvp is not None else \
                        torch.func.jvp(self.distance.metric_features, (a.detach(),), (gn,))[1]
                length = jg.flatten(1).norm(dim=1)
                new = (a.detach() - _bcast(eta / (length + 1e-8), gn) * gn).clamp(0, 1)
                adv[idx] = torch.where(_bcast(rows, new), new, a.detach())
                dists[idx] = torch.where(rows, d.detach(), dists[idx])
                if not self.fast:
                    pred = logits.argmax(1)
                    success = (pred == labels[idx]) if self.targeted else (pred != labels[idx])
                    still = ~success | (d.detach() > self.bound)
                    live = live.clone()
                    live[idx] = rows & still
                    if not bool(live.any()):
                        break
            lam = torch.where(dists >= self.bound, lam * 10, lam)
            if not bool(live.any()):
                break
        if self.fast:
            adv = adv.detach()
            if self.measure:
                self.last["size"] = _dist(self.distance, adv, fx0)
            return adv
        proj = _project(self.projection, self.distance, x, adv, self.bound, fx0)
        self.last = {"projection": proj, "size": proj.distance}
        return proj.images.detach()


def FastLagrangePerceptualAttack(model: nn.Module, distance: FeatureDistance, bound: float, *,
                                 num_iterations: int = 10, lam: float = 10.0, kappa: float = math.inf,
                                 **kw) -> LagrangePerceptualAttack:
    """Fast-LPA as PAT trains with it (Laidlaw et al. section 5, perceptual-advex's defaults): one
    round of ``num_iterations`` steps, lambda = lam 0.1^(1 - t/T) (growing to ``lam``), step
    length bound 0.1^(t/T), the UNclamped margin (``kappa`` = inf; pass a number to clamp it), no
    projection: the bound is soft, so outputs may lie outside it (``last['size']`` says by how
    much). ``distance``: ``ClassifierFeatureDistance(model, layers)`` (self-bounded; features and
    logits from one pass) or ``LPIPSDistance(..., calibrated=False)`` (AlexNet-bounded)."""
    return LagrangePerceptualAttack(model, distance, bound, num_iterations=num_iterations, lam=lam, kappa=kappa,
                                    fast=True, **kw)
