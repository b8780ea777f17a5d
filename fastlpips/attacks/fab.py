"""Targeted Fast Adaptive Boundary attack, FAB-T (Croce & Hein 2020, "Minimally distorted adversarial
examples with a fast adaptive boundary attack"), L_inf and L_2, as AutoAttack's "standard" ensemble
runs it (100 steps, 1 restart, 9 target classes, ``alpha_max=0.1``, ``eta=1.05``, ``beta=0.9``),
with the semantics of torchattacks 3.5.1's ``FAB(..., multi_targeted=True)`` (the reference the
tests compare with, per example).

One run on a batch, against one target class t per example (``_run``):

* start at the clean image x (a later restart of the same target starts at
  ``x + eps / 2 * u / |u|`` clamped to [0, 1], u ~ U(-1, 1) per pixel with the L_inf norm for
  L_inf, u ~ N(0, I) with the L_2 norm for L_2);
* each step linearizes ``f = z_t - z_y`` (logit of the target minus logit of the label) at the
  current point x1: the hyperplane ``{z : f(x1) + <grad f(x1), z - x1> = 0}``;
* both x1 and the clean x are projected onto that hyperplane intersected with the box [0, 1]
  (the smallest step in the attack's norm that reaches the hyperplane inside the box, or, where
  the box cannot reach it, the corner of the box that comes closest): steps d1 and d0;
* the new point is ``clamp((x1 + eta d1) (1 - a) + (x + eta d0) a, 0, 1)`` with the bias towards x
  ``a = min(|d1| / (|d1| + |d0|), alpha_max)``;
* when the new point is misclassified (any class other than the label), it is kept if it is the
  closest to x found so far, and x1 is pulled back towards x: ``x1 = x + beta (x1 - x)``;
* the run's result is the closest misclassified point it found (the clean image where none).

``perturb(x, y)`` attacks only the examples ``model`` classifies correctly; for each target rank
k = 2 .. n_target_classes + 1 (the class with the k-th largest clean logit) and each restart it
runs on the examples still classified correctly, and counts an example as fooled when the run's
result is misclassified and within ``eps`` (L_inf: ``max |adv - x| <= eps``, L_2:
``||adv - x||_2 <= eps``). It returns that result for the fooled examples and the clean image for
all the others (as the reference does). A model with fewer than ``n_target_classes + 1`` classes
gets every other class as a target once (``min(n_target_classes, classes - 1)`` ranks). The
restarts' random starts (only restarts after the first draw any) come from a generator seeded with
``seed`` at the start of every call, in the order the runs draw them (the reference's stream: it
seeds torch's global generator the same way); the global random state is left untouched.

Deliberate differences from torchattacks:

* the gradient is taken with ``torch.autograd.grad`` with respect to the input only (no parameter
  gets a ``.grad``); the model runs in the mode the caller left it in (the reference switches it
  to eval) and in the images' dtype (the reference casts the images to float32);
* the projections are written in closed form over sorted breakpoints: the active segment is found
  by counting the breakpoints the hyperplane lies beyond instead of by bisection (the same segment
  wherever the breakpoint values are monotone, as they are in exact arithmetic), a step that meets
  the box face stops exactly on it (the reference's L_2 step stops at ``(t / w) w``, a rounding away
  from it), and the degenerate L_2 case where no unsaturated weight is left in the active segment
  stops at that segment's breakpoint (the reference then returns a zero step);
* images with any channel count are accepted (the checks need values in [0, 1], one label each).
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
from torch import nn

from ..validation import (
    ATTACK_BOX,
    UNIT_HINT,
    check_bound,
    check_image,
    check_images_and_labels,
    check_labels,
    check_logits,
    check_norm,
    check_number,
    check_positive_int,
    check_seed,
)

__all__ = ["FABTargeted"]


# Below this absolute gradient a pixel counts as flat in the L_2 projection (the reference's guard).
_FLAT = 1e-8
# The saturation point of a flat pixel: never reached (sorted after every real breakpoint).
_NEVER = 1e12
# "No point found yet" distance of the run bookkeeping (the reference's).
_NONE_FOUND = 1e10


# --------------------------------------------------------------------------------------------------
# Projections onto {z : <w, z> = b} inside the box [0, 1]^D, one row per point
# --------------------------------------------------------------------------------------------------


def _orient(t: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Flip each row's hyperplane so that its point lies on the non-negative side: returns the
    oriented normal and ``excess = <w, t> - b >= 0`` (the step must lower ``<w, .>`` by it)."""
    excess = (w * t).sum(1) - b
    below = excess < 0
    return torch.where(below[:, None], -w, w), torch.where(below, -excess, excess)


def _project_linf(t: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The smallest L_inf step d with ``<w, t + d> = b`` and ``t + d`` in [0, 1] for each row of
    ``t`` (M, D), or, where the box cannot reach the hyperplane, the step to the box corner that
    lowers ``<w, .>`` most.

    With the step ``d_i = -sign(w_i) min(lam, room_i)`` (``room_i`` the distance to the box face the
    pixel moves to) the change of ``<w, .>`` is ``-sum |w_i| min(lam, room_i)``, decreasing and
    piecewise linear in lam with breakpoints at the rooms: sorted by decreasing room, at the k-th
    breakpoint the pixels 0..k still move with lam and the others sit on their face."""
    w, excess = _orient(t, w, b)
    goal = -excess                                    # wanted change of <w, .> (<= 0)
    rises = w < 0                                     # pixels that move towards 1
    moves = w != 0
    full = torch.where(moves, torch.where(rises, 1 - t, -t), torch.zeros_like(t))  # all the way
    room = torch.where(rises, 1 - t, t)
    floor = (w * full).sum(1)                         # the lowest change the box allows
    order = torch.argsort(room, dim=1).flip(1)        # decreasing room
    w_o, full_o, room_o = w.gather(1, order), full.gather(1, order), room.gather(1, order)
    slope = w_o.abs().cumsum(1)                       # sum |w| of the moving pixels 0..k
    parked = (-w_o * full_o).cumsum(1) + floor[:, None]  # change from the pixels past k (on their face)
    at_break = parked - slope * room_o                # change reached at lam = room_(k), increasing in k
    k = ((at_break < goal[:, None]).sum(1, keepdim=True) - 1).clamp_(0, t.shape[1] - 1)
    slope_k, parked_k = slope.gather(1, k), parked.gather(1, k)
    lam = torch.where(slope_k > 0, (parked_k - goal[:, None]) / slope_k.clamp_min(1e-30),
                      torch.zeros_like(slope_k)).clamp_min(0)
    step = torch.where(rises, torch.minimum(lam, full), torch.maximum(-lam, full))
    reachable = (goal > floor)[:, None]
    return torch.where(moves & reachable, step, full)


def _project_l2(t: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The smallest L_2 step d with ``<w, t + d> = b`` and ``t + d`` in [0, 1] for each row of
    ``t`` (M, D), or, where the box cannot reach the hyperplane, the step to the box corner that
    lowers ``<w, .>`` most; pixels with ``|w| <= 1e-8`` do not move.

    The step is ``d(a) = clamp(-a w, -t, 1 - t)`` for the multiplier a >= 0; pixel i reaches its
    face at ``a_i = t_i / w_i`` (w_i > 0) or ``(t_i - 1) / w_i`` (w_i < 0). The change of ``<w, .>``
    decreases piecewise linearly in a with slope ``-sum w_i^2`` over the pixels not yet on a face."""
    w, excess = _orient(t, w, b)
    live = w.abs() > _FLAT
    face = torch.where(live, torch.where(w > 0, -t, 1 - t), torch.zeros_like(t))  # d on the face
    hits = torch.where(live, torch.where(w > 0, t / w, (t - 1) / w), torch.full_like(t, _NEVER))
    hits_o, order = torch.sort(hits, dim=1)
    sq_o = (w ** 2).gather(1, order)
    total_sq = sq_o.sum(1, keepdim=True)
    free_sq = total_sq - sq_o.cumsum(1)               # sum w^2 of the pixels after k (still free)
    # change of <w, .> at each breakpoint a = hits_(k): -total_sq hits_(0), then segment by segment
    first = -total_sq * hits_o[:, :1]
    at_break = torch.cat((first, first + ((hits_o[:, :-1] - hits_o[:, 1:]) * free_sq[:, :-1]).cumsum(1)), 1)
    real = hits_o < _NEVER                            # breakpoints of live pixels
    beyond = ((at_break + excess[:, None] > 0) & real).sum(1, keepdim=True)  # breakpoints passed
    k = (beyond - 1).clamp_(0, max(t.shape[1] - 2, 0))
    free_k, hit_k, at_k = free_sq.gather(1, k), hits_o.gather(1, k), at_break.gather(1, k)
    a_seg = torch.where(free_k > 0, (at_k + excess[:, None]) / free_k.clamp_min(1e-30) + hit_k, hit_k)
    seg = torch.where(a_seg > hits, face, -(a_seg * w))
    # before the first breakpoint nothing is on a face: d = -a w with a = excess / sum w^2
    a_free = excess[:, None] / total_sq.clamp_min(1e-30)
    free = -(a_free * w)
    unreachable = ((face * w).sum(1) + excess > 0)[:, None]
    before = (at_break[:, :1] + excess[:, None] < 0)
    d = torch.where(before, free, torch.where(unreachable, face, seg))
    return torch.where(live, d, torch.zeros_like(d))


def _sizes(d: torch.Tensor, norm: str) -> torch.Tensor:
    """(M,) L_inf or L_2 norm of each row of ``d`` (M, D)."""
    if norm == "linf":
        return d.abs().amax(1)
    return (d ** 2).sum(1).sqrt()


def _check_box(x: torch.Tensor, name: str) -> None:
    """A non-empty floating (N, C, H, W) batch with finite values in [0, 1], any channel count."""
    check_image(x, name, channels=None, hint=UNIT_HINT, allow_empty=False, finite=True)
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 1:
        raise ValueError(f"{name} must hold values in [0, 1], got [{lo:.4g}, {hi:.4g}]; {ATTACK_BOX}")


# --------------------------------------------------------------------------------------------------
# The attack
# --------------------------------------------------------------------------------------------------


class FABTargeted:
    """FAB-T on ``model`` (images in [0, 1] -> logits): ``norm`` 'linf' or 'l2' (any case), radius ``eps``
    on the [0, 1] scale, ``n_iter`` steps per run, ``n_target_classes`` target ranks (the classes
    with the 2nd .. (n_target_classes + 1)-th largest clean logit; a model with fewer than
    ``n_target_classes + 1`` classes gets all its other classes, ``min(n_target_classes, classes -
    1)`` ranks), ``n_restarts`` runs per target (restarts after the first start at a random point
    drawn with ``seed``), ``alpha_max`` the largest bias towards the clean image, ``eta`` the
    overshoot of the projection step, ``beta`` the pull back towards the clean image after a
    success. AutoAttack's standard budgets are the defaults."""

    def __init__(self, model: nn.Module, norm: str, eps: float, *, n_iter: int = 100, n_target_classes: int = 9,
                 n_restarts: int = 1, alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9,
                 seed: int = 0) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module (images -> logits), got {type(model).__name__}")
        self.model, self.norm = model, check_norm(norm)
        self.eps = check_bound(eps, "eps")
        self.n_iter = check_positive_int(n_iter, "n_iter")
        self.n_target_classes = check_positive_int(n_target_classes, "n_target_classes")
        self.n_restarts = check_positive_int(n_restarts, "n_restarts")
        self.alpha_max = check_number(alpha_max, "alpha_max", low=0.0, high=1.0)
        self.eta = check_bound(eta, "eta")
        self.beta = check_number(beta, "beta", low=0.0, high=1.0)
        self.seed = check_seed(seed, "seed", allow_none=False)
        self._project: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] = (
            _project_linf if self.norm == "linf" else _project_l2)

    # -- one run ------------------------------------------------------------------------------------
    def _linearize(self, x1: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``f = z_target - z_label`` at x1 (N, C, H, W) and its input gradient, flattened (N, D)."""
        inp = x1.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = self.model(inp)
            rows = torch.arange(inp.shape[0], device=inp.device)
            f = logits[rows, target] - logits[rows, y]
            (g,) = torch.autograd.grad(f.sum(), inp)
        return f.detach(), g.reshape(inp.shape[0], -1)

    def _random_start(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """``x + eps / 2 * u / |u|`` clamped to [0, 1] (the draws on the CPU generator)."""
        n = x.shape[0]
        if self.norm == "linf":
            u = (2 * torch.rand(x.shape, generator=gen) - 1).to(x.device, x.dtype)
            size = u.reshape(n, -1).abs().amax(1)
        else:
            u = torch.randn(x.shape, generator=gen).to(x.device, x.dtype)
            size = (u ** 2).reshape(n, -1).sum(1).sqrt()
        return (x + self.eps * u / size.view(-1, *[1] * (x.dim() - 1)) * 0.5).clamp(0.0, 1.0)

    def _predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).argmax(1)

    def _run(self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor,
             gen: Optional[torch.Generator]) -> torch.Tensor:
        """The closest misclassified point found for each example (its clean image where none);
        ``gen``: start at a random point drawn from it, else at x."""
        n, shape = x.shape[0], x.shape
        x0 = x.reshape(n, -1)
        x1 = (x if gen is None else self._random_start(x, gen)).reshape(n, -1).clone()
        best = torch.full((n,), _NONE_FOUND, dtype=x.dtype, device=x.device)
        found = x0.clone()
        for _ in range(self.n_iter):
            f, w = self._linearize(x1.view(shape), y, target)
            b = (w * x1).sum(1) - f                       # hyperplane <w, z> = b
            d = self._project(torch.cat((x1, x0)), torch.cat((w, w)), torch.cat((b, b)))
            sizes = _sizes(d, self.norm).clamp_min(1e-8)
            d1, d0, s1, s0 = d[:n], d[n:], sizes[:n], sizes[n:]
            a = (s1 / (s1 + s0)).clamp_min(0.0).clamp_max(self.alpha_max)[:, None]
            x1 = ((x1 + self.eta * d1) * (1 - a) + (x0 + d0 * self.eta) * a).clamp(0.0, 1.0)
            wrong = self._predict(x1.view(shape)) != y
            if bool(wrong.any()):
                dist = _sizes(x1 - x0, self.norm)
                closer = wrong & (dist < best)
                found[closer] = x1[closer]
                best[closer] = dist[closer]
                x1[wrong] = x0[wrong] + (x1[wrong] - x0[wrong]) * self.beta
        return found.view(shape)

    # -- the attack ---------------------------------------------------------------------------------
    @torch.no_grad()
    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Adversarial images for ``x`` (N, C, H, W) in [0, 1] with labels ``y`` (N,): the closest
        misclassified point a run found where it lies within ``eps`` of x, the clean image
        elsewhere (also for the examples the model misclassifies already)."""
        check_images_and_labels(x, y, check_images=_check_box)
        x, y = x.detach(), y.detach()
        n = x.shape[0]
        clean = self.model(x)
        check_logits(clean, n)
        check_labels(y, n, clean.shape[1])
        ranks = range(2, min(self.n_target_classes, clean.shape[1] - 1) + 2)
        robust = clean.argmax(1) == y
        adv = x.clone()
        gen = torch.Generator().manual_seed(self.seed)
        for rank in ranks:
            for restart in range(self.n_restarts):
                idx = robust.nonzero().flatten()
                if idx.numel() == 0:
                    return adv
                # the run's own clean logits (on the batch it attacks, as the reference's): its
                # targets and its check that the example is still classified correctly
                logits = self.model(x[idx])
                right = logits.argmax(1) == y[idx]
                target, idx = logits.sort(dim=1)[1][right, -rank], idx[right]
                if idx.numel() == 0:
                    continue
                xs, ys = x[idx], y[idx]
                found = self._run(xs, ys, target, gen if restart > 0 else None)
                fooled = (self._predict(found) != ys) & (_sizes((found - xs).reshape(len(idx), -1), self.norm)
                                                         <= self.eps)
                robust[idx[fooled]] = False
                adv[idx[fooled]] = found[fooled]
        return adv
