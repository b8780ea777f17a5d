"""Square Attack (Andriushchenko, Croce, Flammarion & Hein 2020, "Square Attack: a query-efficient
black-box adversarial attack via random search"): the score-based attack of AutoAttack's "standard"
ensemble (``attacks.autoattack``), L_inf and L_2, untargeted, on the margin loss, with the
semantics of torchattacks 3.5.1's ``Square`` (the reference the tests compare with, per example).

One run on a batch (``_search``), queries only (no gradient):

* loss: the margin ``z_y - max_{k != y} z_k`` of the logits; an example is fooled once it is <= 0
  and is then left alone;
* start: L_inf ``x + eps v`` with one random sign per (channel, column), i.e. vertical stripes;
  L_2 a tiling of the image by squares of side ``H // 5``, each holding the "double ring" profile
  (``_window_profile``) times one random sign per channel, scaled to L_2 norm eps; clamped to [0, 1];
* then ``n_queries`` iterations, each proposing one change for every example not yet fooled and
  keeping it where it lowers the margin. The square's side is ``sqrt(p H W)`` (rounded; at least 1,
  at least 3 and odd on L_2), where ``p`` starts at ``p_init`` and halves at fixed fractions of the
  budget (``_SCHEDULE``, the paper's iteration counts for 10000 queries rescaled to ``n_queries``);
* L_inf proposal: one square at a random place (the same for the whole batch) set to ``+-2 eps`` per
  channel (one random sign per channel, shared by the batch) on top of the current point,
  projected onto the ball and the box;
* L_2 proposal: two random squares (shared by the batch); the second is zeroed and the first gets
  its old content (per channel, normalized) plus a fresh double-ring profile with one random sign
  per example and channel, rescaled per channel to ``sqrt(m^2 + max(eps^2 - ||delta||^2, 0) / C)``
  (m the perturbation's norm inside the two squares: their mass, plus the budget left, moves into
  the first); the whole perturbation is then rescaled to norm eps and the image clamped to [0, 1].

``perturb(x, y)`` attacks only the examples ``model`` classifies correctly, and each restart only
those still classified correctly; the output of a restart is kept for an example when the model
misclassifies it (checked once more at the end, as the reference does). All random draws come from
a CPU generator seeded with ``seed`` at the start of every call, in the reference's order and shapes
(torchattacks seeds torch's global generator the same way), so the same examples are fooled with the
same images. The global random state is left untouched; everything runs under ``torch.no_grad``.

Deliberate differences from torchattacks:

* the square's side is capped at the image's shorter side. This only bites for non-square images
  (or L_2 with ``p_init`` near 1, where the side is made odd), where the reference's window slices
  run off the image: L_inf then perturbs a band, L_2 fails with a shape error;
* L_2 start: only the tiling squares that lie inside the image are placed (the reference fails for
  some heights under 25 pixels, where ``H // (H // 5)`` squares overrun the image); the L_2 attack
  needs images at least 5 pixels high (the reference divides by ``H // 5``);
* the model is used in the mode the caller left it in (the reference's ``__call__`` switches it to
  eval and back); nothing counts queries or prints progress;
* float64 images: the arithmetic stays in float64 (the reference takes the L_inf steps and part of
  the L_2 window arithmetic in float32); float32 images give the reference's values.
"""
from __future__ import annotations

import math
from typing import Dict, Tuple

import torch
from torch import nn

from ..validation import (
    check_bound,
    check_images_and_labels,
    check_labels,
    check_logits,
    check_norm,
    check_number,
    check_positive_int,
    check_seed,
)

__all__ = ["SquareAttack"]


# (last rescaled iteration, divisor of p_init): the rescaled iteration t = int(i / n_queries * 10000)
# uses p_init / divisor for the first row with t <= last; beyond 8000, p_init / 512.
_SCHEDULE: Tuple[Tuple[int, int], ...] = ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32),
                                          (4000, 64), (6000, 128), (8000, 256))


def _signs(gen: torch.Generator, shape: Tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Random +-1 (0 on a draw of exactly 1/2) from one float32 uniform draw per element."""
    u = torch.rand(shape, generator=gen, dtype=torch.float32)
    return torch.sign(u * 2 - 1).to(device)


def _offset(gen: torch.Generator, span: int) -> int:
    """A random window start in [0, span) (0 when span is 0): one float32 uniform draw times span,
    truncated (the product taken in float32, as the reference's)."""
    u = torch.rand(1, generator=gen, dtype=torch.float32)
    return int((u * span).item())


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    """(N, 1, 1, 1) L_2 norm of each example (sum of squares over the flattened example, sqrt)."""
    return (t ** 2).flatten(1).sum(-1).sqrt().view(-1, 1, 1, 1)


def _to_unit_sphere(t: torch.Tensor) -> torch.Tensor:
    return t / (_flat_norm(t) + 1e-12)


def _rings(rows: int, cols: int) -> torch.Tensor:
    """(rows, cols) float32: sum over k of 1 / (k + 1)^2 over the nested rectangles of half-width k
    around the centre (rows // 2, cols // 2) that hold the pixel, accumulated in increasing k (the
    reference's float32 order), then scaled to unit Frobenius norm."""
    i = (torch.arange(rows) - rows // 2).abs().view(-1, 1)
    j = (torch.arange(cols) - cols // 2).abs().view(1, -1)
    first = torch.maximum(i, j)  # the smallest rectangle holding the pixel
    out = torch.zeros(rows, cols, dtype=torch.float32)
    for k in range(max(rows // 2, cols // 2) + 1):
        weight = 1.0 / torch.tensor([float((k + 1) ** 2)], dtype=torch.float32)
        out = torch.where(first <= k, out + weight, out)
    return out / (out ** 2).sum(dim=(0, 1), keepdim=True).sqrt()


def _window_profile(s: int) -> torch.Tensor:
    """The (s, s) float32 "double ring" of the L_2 attack: rings on the top half (s // 2 rows),
    negated rings on the bottom half, scaled to unit Frobenius norm."""
    top, bottom = _rings(s // 2, s), _rings(s - s // 2, s)
    out = torch.cat([top, -bottom], dim=0)
    return out / (out ** 2).sum(dim=(0, 1), keepdim=True).sqrt()


def _margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """z_y - max_{k != y} z_k per row (<= 0: misclassified)."""
    own = logits.gather(1, y[:, None])[:, 0]
    others = logits.scatter(1, y[:, None], -math.inf).amax(dim=1)
    return own - others


class SquareAttack:
    """Untargeted Square Attack on ``model`` (images in [0, 1] -> logits) with the margin loss:
    ``norm`` 'linf' or 'l2' (any case), radius ``eps`` on the [0, 1] scale, ``n_queries`` iterations per
    restart (one model query each, plus one for the start), ``p_init`` the starting fraction of the
    image a square covers, ``n_restarts`` runs, ``seed`` the random stream's. AutoAttack's standard
    budget: 5000 queries, ``p_init=0.8``, 1 restart."""

    def __init__(self, model: nn.Module, norm: str, eps: float, *, n_queries: int = 5000, p_init: float = 0.8,
                 n_restarts: int = 1, seed: int = 0) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module (images -> logits), got {type(model).__name__}")
        self.model, self.norm = model, check_norm(norm)
        self.eps = check_bound(eps, "eps")
        self.n_queries = check_positive_int(n_queries, "n_queries")
        self.p_init = check_number(p_init, "p_init", low=0.0, high=1.0, low_open=True)
        self.n_restarts = check_positive_int(n_restarts, "n_restarts")
        self.seed = check_seed(seed, "seed", allow_none=False)
        self._profiles: Dict[int, torch.Tensor] = {}

    # -- pieces ---------------------------------------------------------------------------------------
    def _fraction(self, i: int) -> float:
        """p at iteration i (0-based) of the rescaled schedule."""
        t = int(i / self.n_queries * 10000)
        for last, divisor in _SCHEDULE:
            if t <= last:
                return self.p_init / divisor
        return self.p_init / 512

    def _profile(self, s: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
        """(1, 1, s, s) double ring, transposed on one uniform draw > 1/2 (drawn here, as the reference)."""
        if s not in self._profiles:
            upright = _window_profile(s)
            # both orientations contiguous: a transposed view would give products a transposed memory
            # layout, and sums over a window would then add in another order than the reference's
            self._profiles[s] = torch.stack([upright, upright.t().contiguous()]).view(2, 1, 1, s, s)
        transpose = bool(torch.rand(1, generator=gen, dtype=torch.float32) > 0.5)
        return self._profiles[s][int(transpose)].to(device)

    def _query(self, images: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return _margin(self.model(images), y)

    def _start(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n, c, h, w = x.shape
        if self.norm == "linf":
            return torch.clamp(x + self.eps * _signs(gen, (n, c, 1, w), x.device).to(x.dtype), 0.0, 1.0)
        s = h // 5
        first = (h - 5 * s) // 2
        delta = torch.zeros_like(x)
        for a in range(h // s):
            top = first + a * s
            for b in range(w // s):
                left = first + b * s
                if top + s > h or left + s > w:  # the reference fails here (see the module docstring)
                    continue
                tile = self._profile(s, gen, x.device) * _signs(gen, (n, c, 1, 1), x.device)
                delta[:, :, top:top + s, left:left + s] = tile
        return torch.clamp(x + _to_unit_sphere(delta) * self.eps, 0.0, 1.0)

    def _side(self, p: float, c: int, h: int, w: int, smallest: int) -> int:
        side = max(int(round(math.sqrt(p * (c * h * w) / c))), smallest)
        if self.norm == "l2" and side % 2 == 0:
            side += 1
        return min(side, h, w)

    def _linf_proposal(self, x: torch.Tensor, best: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
        _, c, h, w = x.shape
        s = self._side(p, c, h, w, 1)
        top, left = _offset(gen, h - s), _offset(gen, w - s)
        step = torch.zeros((c, h, w), dtype=x.dtype, device=x.device)
        step[:, top:top + s, left:left + s] = (2.0 * self.eps) * _signs(gen, (c, 1, 1), x.device).to(x.dtype)
        return torch.clamp(torch.min(torch.max(best + step, x - self.eps), x + self.eps), 0.0, 1.0)

    def _l2_proposal(self, x: torch.Tensor, best: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
        n, c, h, w = x.shape
        s = self._side(p, c, h, w, 3)
        top, left = _offset(gen, h - s), _offset(gen, w - s)
        top2, left2 = _offset(gen, h - s), _offset(gen, w - s)
        win = (slice(None), slice(None), slice(top, top + s), slice(left, left + s))
        win2 = (slice(None), slice(None), slice(top2, top2 + s), slice(left2, left2 + s))
        delta = best - x
        old = delta[win]
        old_norm = (old ** 2).sum(dim=(-2, -1), keepdim=True).sqrt()  # per example and channel
        both = torch.zeros_like(x)
        both[win] = 1.0
        both[win2] = 1.0
        mass_both = _flat_norm(delta * both)  # what the two windows hold now
        mass_all = _flat_norm(delta)
        fresh = self._profile(s, gen, x.device) * _signs(gen, (n, c, 1, 1), x.device)
        fresh = fresh + old / (old_norm + 1e-12)
        eps_sq = torch.tensor(self.eps, dtype=x.dtype, device=x.device) ** 2
        budget = (torch.clamp(eps_sq - mass_all ** 2, min=0.0) / c + mass_both ** 2).sqrt()
        fresh = fresh / ((fresh ** 2).sum(dim=(-2, -1), keepdim=True).sqrt() + 1e-12) * budget
        delta[win2] = 0.0
        delta[win] = fresh
        return torch.clamp(x + _to_unit_sphere(delta) * self.eps, 0.0, 1.0)

    def _search(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """One run on (x, y): the best point found per example (its margin lowest; once it is <= 0
        the example is fooled and no longer queried)."""
        x_best = self._start(x, gen)
        margin = self._query(x_best, y)
        propose = self._linf_proposal if self.norm == "linf" else self._l2_proposal
        for i in range(self.n_queries):
            live = (margin > 0).nonzero().flatten()
            if live.numel() == 0:
                break
            xs, current = x[live], x_best[live]
            candidate = propose(xs, current, self._fraction(i), gen)
            m = self._query(candidate, y[live])
            # margin loss: a lower margin is an improvement, and a misclassified candidate (m <= 0)
            # is always one, since the live margins are > 0
            better = m < margin[live]
            margin[live] = torch.where(better, m, margin[live])
            x_best[live] = torch.where(better.view(-1, 1, 1, 1), candidate, current)
        return x_best

    # -- the attack -------------------------------------------------------------------------------------
    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Adversarial images for ``x`` (N, 3, H, W) in [0, 1] with labels ``y`` (N,): for an example
        a restart fooled, the run's best point (misclassified, within the eps ball, in [0, 1]); for
        every other example (never fooled, or misclassified already when clean) the clean image."""
        check_images_and_labels(x, y)
        if self.norm == "l2" and x.shape[2] < 5:
            raise ValueError(f"x must be at least 5 pixels high for the L_2 Square Attack (its start tiles the "
                             f"image with squares of side H // 5), got shape {tuple(x.shape)}")
        x, y = x.detach(), y.detach().long()
        with torch.no_grad():
            clean = self.model(x)
            check_logits(clean, x.shape[0])
            check_labels(y, x.shape[0], clean.shape[1])
            robust = clean.argmax(dim=1) == y
            adv = x.clone()
            gen = torch.Generator().manual_seed(self.seed)
            for _ in range(self.n_restarts):
                idx = robust.nonzero().flatten()
                if idx.numel() == 0:
                    break
                xs, ys = x[idx], y[idx]
                found = self._search(xs, ys, gen)
                fooled = self.model(found).argmax(dim=1) != ys
                robust[idx[fooled]] = False
                adv[idx[fooled]] = found[fooled]
        return adv
