"""Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks"): APGD-CE and the targeted APGD-T of AutoAttack's "standard"
ensemble (``attacks.autoattack``), L_inf and L_2, with the semantics of torchattacks 3.5.1's
``APGD`` / ``APGDT`` (the reference the tests compare with, per example).

One run on a batch (``_run``):

* start: L_inf ``x + eps t / max|t|`` with t ~ U(-1, 1) per pixel; L_2 ``x + eps t / ||t||`` with
  t ~ N(0, I); clamped to [0, 1];
* ``n_iter`` steps with momentum 0.75 (none on the first): a sign step (L_inf) or a normalized
  gradient step (L_2) of the example's step size (2 eps at the start), projected onto the ball and
  the box, averaged with the previous step, projected again;
* the step size of an example halves at checkpoints (after 0.22 n_iter steps, then ever shorter
  intervals, down to 0.06 n_iter, shrinking by 0.03 n_iter) when its loss rose in fewer than
  ``rho`` of the steps since the last checkpoint, or when the step size was not halved there and the
  best loss has not improved since; a halving restarts the example from its best point and gradient;
* loss: cross-entropy (APGD-CE) or the targeted DLR loss ``-(z_y - z_t) / (z_(1) - (z_(3) + z_(4)) / 2)``
  (APGD-T, z_(k) the k-th largest logit; the target t is the class with the k-th largest clean
  logit, k = 2 .. n_target_classes + 1, one run per target);
* an example counts as fooled once any iterate is misclassified; the last misclassified iterate is
  its output (examples never fooled keep their clean image).

``perturb(x, y)`` attacks only the examples ``model`` classifies correctly, and each run (restart,
target) only those still classified correctly; the random starts are drawn from a generator seeded
with ``seed`` at the start of every call, in the order the runs draw them (the reference's stream:
it seeds torch's global generator the same way). The global random state is left untouched.

Deliberate differences from torchattacks:

* APGD-T on L_2: the normalized gradient step uses each example's own step size (torchattacks uses
  the first example's, ``step_size[0]``, for the whole batch; the paper and the ensemble's L_inf
  path use the example's own);
* the gradient is taken with ``torch.autograd.grad`` with respect to the input only (no parameter
  gets a ``.grad``); the model runs in the mode the caller left it in (the reference switches it
  to eval);
* APGD-T needs four classes or more (its denominator is the 1st minus the mean of the 3rd and 4th
  largest logit) and is refused on fewer with that reason; with fewer than ``n_target_classes + 1``
  classes every other class is a target once.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

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

__all__ = ["APGD"]

def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    """(N, 1, 1, 1) L_2 norm of each example (the reference's sum of squares, then sqrt)."""
    return (t ** 2).sum(dim=tuple(range(1, t.dim())), keepdim=True).sqrt()


def _dlr_targeted(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    z = logits.sort(dim=1)[0]
    rows = torch.arange(logits.shape[0], device=logits.device)
    return -(logits[rows, y] - logits[rows, target]) / (z[:, -1] - 0.5 * z[:, -3] - 0.5 * z[:, -4] + 1e-12)


class APGD:
    """APGD-CE (``loss='ce'``) or APGD-T (``loss='dlr-targeted'``) on ``model`` (images in [0, 1]
    -> logits): ``norm`` 'linf' or 'l2', radius ``eps`` on the [0, 1] scale, ``n_iter`` steps,
    ``n_restarts`` runs (per target for APGD-T), ``rho`` the halving threshold, ``seed`` the
    random starts'. AutoAttack's standard budgets: 100 steps, 1 restart, 9 target classes."""

    def __init__(self, model: nn.Module, norm: str, eps: float, *, loss: str = "ce", n_iter: int = 100,
                 n_restarts: int = 1, n_target_classes: int = 9, rho: float = 0.75, seed: int = 0) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module (images -> logits), got {type(model).__name__}")
        if loss not in ("ce", "dlr-targeted"):
            raise ValueError(f"loss must be 'ce' (APGD-CE) or 'dlr-targeted' (APGD-T), got {loss!r}")
        self.model, self.norm, self.loss = model, check_norm(norm), loss
        self.eps = check_bound(eps, "eps")
        self.n_iter = check_positive_int(n_iter, "n_iter")
        self.n_restarts = check_positive_int(n_restarts, "n_restarts")
        self.n_target_classes = check_positive_int(n_target_classes, "n_target_classes")
        self.rho = check_number(rho, "rho", low=0.0, high=1.0)
        self.seed = check_seed(seed, "seed", allow_none=False)

    # -- one run ------------------------------------------------------------------------------------
    def _loss(self, logits: torch.Tensor, y: torch.Tensor, target: Optional[torch.Tensor]) -> torch.Tensor:
        if target is None:
            return F.cross_entropy(logits, y, reduction="none")
        return _dlr_targeted(logits, y, target)

    def _gradient(self, x_adv: torch.Tensor, y: torch.Tensor, target: Optional[torch.Tensor]):
        x_adv = x_adv.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = self.model(x_adv)
            loss = self._loss(logits, y, target)
            (g,) = torch.autograd.grad(loss.sum(), x_adv)
        return g.detach(), logits.detach(), loss.detach()

    def _project(self, x: torch.Tensor, z: torch.Tensor, guard: float) -> torch.Tensor:
        """z onto the ball around x and the box (L_inf: clamp; L_2: rescale, the reference's guards)."""
        if self.norm == "linf":
            return torch.clamp(torch.min(torch.max(z, x - self.eps), x + self.eps), 0.0, 1.0)
        d = z - x
        n = _flat_norm(d)
        return torch.clamp(x + d / (n + 1e-12) * torch.clamp(n + guard, max=self.eps), 0.0, 1.0)

    def _run(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator,
             target: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """(fooled (N,) bool, the last misclassified iterate (x's start where never fooled))."""
        n = x.shape[0]
        steps_2, steps_min, size_decr = (max(int(0.22 * self.n_iter), 1), max(int(0.06 * self.n_iter), 1),
                                         max(int(0.03 * self.n_iter), 1))
        if self.norm == "linf":
            t = (2 * torch.rand(x.shape, generator=gen) - 1).to(x.device, x.dtype)
            x_adv = x + self.eps * t / t.reshape(n, -1).abs().max(dim=1, keepdim=True)[0].reshape(-1, 1, 1, 1)
        else:
            t = torch.randn(x.shape, generator=gen).to(x.device, x.dtype)
            x_adv = x + self.eps * t / (_flat_norm(t) + 1e-12)
        x_adv = x_adv.clamp(0.0, 1.0)
        x_best, x_best_adv = x_adv.clone(), x_adv.clone()
        history = torch.zeros(self.n_iter, n)  # loss per step (CPU, as the reference's bookkeeping)
        grad, logits, loss = self._gradient(x_adv, y, target)
        grad_best = grad.clone()
        alive = logits.argmax(1) == y  # never fooled so far
        loss_best = loss.clone()
        step = torch.full((n, 1, 1, 1), 2.0 * self.eps, dtype=x.dtype, device=x.device)
        x_old = x_adv.clone()
        k, since_check = steps_2, 0
        best_at_check = loss_best.clone()
        halved_at_check = torch.ones(n, dtype=torch.bool)
        for i in range(self.n_iter):
            with torch.no_grad():
                momentum = x_adv - x_old
                x_old = x_adv.clone()
                a = 0.75 if i > 0 else 1.0
                if self.norm == "linf":
                    x1 = self._project(x, x_adv + step * torch.sign(grad), 0.0)
                    x_adv = self._project(x, x_adv + (x1 - x_adv) * a + momentum * (1 - a), 0.0)
                else:
                    x1 = self._project(x, x_adv + step * grad / (_flat_norm(grad) + 1e-12), 0.0)
                    x_adv = self._project(x, x_adv + (x1 - x_adv) * a + momentum * (1 - a), 1e-12)
            grad, logits, loss = self._gradient(x_adv, y, target)
            with torch.no_grad():
                wrong = logits.argmax(1) != y
                alive &= ~wrong
                x_best_adv[wrong] = x_adv[wrong]
                history[i] = loss.cpu()
                better = loss > loss_best
                x_best[better] = x_adv[better]
                grad_best[better] = grad[better]
                loss_best[better] = loss[better]
                since_check += 1
                if since_check == k:
                    # steps since the last checkpoint where the loss rose (history[-1] is 0 until
                    # the last step, as the reference's numpy wrap-around reads it)
                    rose = sum((history[i - c] > history[i - c - 1]).float() for c in range(k))
                    halve = rose <= k * self.rho
                    halve |= ~halved_at_check & (best_at_check.cpu() >= loss_best.cpu())
                    halved_at_check, best_at_check = halve.clone(), loss_best.clone()
                    if bool(halve.any()):
                        h = halve.to(x.device)
                        step[h] /= 2.0
                        x_adv[h] = x_best[h]
                        grad[h] = grad_best[h]
                    since_check = 0
                    k = max(k - size_decr, steps_min)
        return ~alive, x_best_adv

    # -- the attack ---------------------------------------------------------------------------------
    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Adversarial images for ``x`` (N, C, H, W) in [0, 1] with labels ``y`` (N,): the fooling
        iterate where a run fooled the model, the clean image elsewhere."""
        check_images_and_labels(x, y)
        x, y = x.detach(), y.detach()
        with torch.no_grad():
            clean = self.model(x)
        check_logits(clean, x.shape[0])
        check_labels(y, x.shape[0], clean.shape[1])
        targets = [None] if self.loss == "ce" else list(range(2, min(self.n_target_classes, clean.shape[1] - 1) + 2))
        if self.loss == "dlr-targeted" and clean.shape[1] < 4:
            raise ValueError(f"APGD-T needs a model with 4 classes or more (its loss divides by the gap between the "
                             f"1st and the 3rd/4th largest logit); this one has {clean.shape[1]}")
        robust = clean.argmax(1) == y
        adv = x.clone()
        gen = torch.Generator().manual_seed(self.seed)
        for k in targets:
            for _ in range(self.n_restarts):
                idx = robust.nonzero().flatten()
                if not idx.numel():
                    return adv
                xs, ys = x[idx], y[idx]
                target = None
                if k is not None:
                    with torch.no_grad():
                        target = self.model(xs).sort(dim=1)[1][:, -k]
                fooled, found = self._run(xs, ys, gen, target)
                robust[idx[fooled]] = False
                adv[idx[fooled]] = found[fooled]
        return adv
