"""AutoAttack (Croce & Hein 2020), "standard" version, as a threat model of robust evaluation:
``linf-aa`` / ``l2-aa`` in ``fastlpips.robust`` (the RobustBench protocol for L_inf and L_2).

The ensemble runs, in order, APGD-CE, APGD-T (targeted DLR loss, 9 target classes), FAB-T
(targeted FAB, 9 target classes) and Square (5000 queries), each with 1 restart and AutoAttack's
budgets (100 steps for the first three). Each attack gets only the examples that every earlier
one failed to fool (and that the model classifies correctly: a clean error needs no attack), so an
example's output is the first adversarial image found, per example the worst case of the four.
Examples no attack fools keep their clean image (size 0).

Components (the tests compare each with torchattacks 3.5.1's, per example, same seed):
``attacks.apgd.APGD``, ``attacks.fab.FABTargeted``, ``attacks.square.SquareAttack``.

Seeds: every component seeds its random draws with the same seed at the start of its run, as the
reference's ``AutoAttack(seed=...)`` does. ``attack(x, y, generator=g)`` takes that seed from
``g`` (one draw), so robust evaluation's per-batch generators make batches independent and
reproducible; without a generator the constructor's ``seed`` is used. ``iterations`` scales the
budgets together: APGD and FAB-T steps = iterations, Square queries = 50 x iterations (100 and 5000
by default).

``last['size']``: the L_inf / L_2 norm of ``adv - x``; ``last['by']``: per example, the index of the
component that fooled it (-1: clean error, ``len(COMPONENTS)``: robust).
"""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import nn

from ..utils import channels_last, takes_channels_last
from ..validation import (
    check_bound,
    check_images_and_labels,
    check_labels,
    check_logits,
    check_norm,
    check_positive_int,
    check_seed,
)
from .threat import ThreatAttack

__all__ = ["AutoAttack", "COMPONENTS"]

COMPONENTS = ("apgd-ce", "apgd-t", "fab-t", "square")


class AutoAttack(ThreatAttack):
    """AutoAttack standard for ``norm`` ('linf' or 'l2') with radius ``bound`` on the [0, 1]
    scale, on ``model`` (images in [0, 1] -> logits). ``components``: a subset of ``COMPONENTS``
    in their order (default all four: the standard version). ``layout``: 'channels_last' (default:
    the images are attacked in the convolutions' fast memory layout when the model accepts it,
    2.4x per forward pass for the attack tests' CNN on this CPU; values equal, the model's float32
    round-off that of the other layout) or 'as_given' (the caller's layout: torchattacks' results
    bit for bit on a contiguous batch)."""

    noise_kind = None

    def __init__(self, model: nn.Module, norm: str, bound: float, *, num_iterations: int = 100,
                 n_target_classes: int = 9, components=COMPONENTS, seed: int = 0,
                 layout: str = "channels_last") -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module (images -> logits), got {type(model).__name__}")
        self.norm = check_norm(norm)
        self.name = f"{self.norm}-aa"
        self.bound = check_bound(bound)
        self.num_iterations = check_positive_int(num_iterations, "num_iterations")
        self.n_target_classes = check_positive_int(n_target_classes, "n_target_classes")
        if isinstance(components, str) or not len(components) or any(c not in COMPONENTS for c in components):
            raise ValueError(f"components must be a non-empty subset of {COMPONENTS}, got {components!r}")
        self.components = tuple(c for c in COMPONENTS if c in components)
        self.seed = check_seed(seed, "seed", allow_none=False)
        if layout not in ("channels_last", "as_given"):
            raise ValueError(f"layout must be 'channels_last' or 'as_given', got {layout!r}")
        self.model, self.layout = model, layout
        self._layout_ok: Optional[bool] = None

    def _component(self, name: str, seed: int):
        from .apgd import APGD

        if name == "apgd-ce":
            return APGD(self.model, self.norm, self.bound, loss="ce", n_iter=self.num_iterations, seed=seed)
        if name == "apgd-t":
            return APGD(self.model, self.norm, self.bound, loss="dlr-targeted", n_iter=self.num_iterations,
                        n_target_classes=self.n_target_classes, seed=seed)
        if name == "fab-t":
            from .fab import FABTargeted
            return FABTargeted(self.model, self.norm, self.bound, n_iter=self.num_iterations,
                               n_target_classes=self.n_target_classes, seed=seed)
        from .square import SquareAttack
        return SquareAttack(self.model, self.norm, self.bound, n_queries=50 * self.num_iterations, seed=seed)

    def _size(self, d: torch.Tensor) -> torch.Tensor:
        flat = d.flatten(1)
        return flat.abs().amax(1) if self.norm == "linf" else flat.norm(dim=1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor, *, noise: Optional[torch.Tensor] = None,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Adversarial images for ``x`` (N, C, H, W) in [0, 1] and ``labels`` (N,); ``noise`` is
        not used (AutoAttack's components draw their own, from the seed)."""
        check_images_and_labels(x, labels)
        x = x.detach()
        if self.layout == "channels_last":
            if self._layout_ok is None:
                self._layout_ok = takes_channels_last(self.model, x)
            if self._layout_ok:
                x = channels_last(x)
        seed = self.seed if generator is None else int(torch.randint(0, 2 ** 31 - 1, (1,), generator=generator))
        with torch.no_grad():
            logits = self.model(x)
        check_logits(logits, x.shape[0])
        check_labels(labels, x.shape[0], logits.shape[1])
        robust = logits.argmax(1) == labels
        by = torch.where(robust, len(self.components), -1)
        adv = x.clone()
        counts: List[int] = []
        for k, name in enumerate(self.components):
            idx = robust.nonzero().flatten()
            counts.append(int(idx.numel()))
            if not idx.numel():
                break
            found = self._component(name, seed).perturb(x[idx], labels[idx])
            with torch.no_grad():
                fooled = self.model(found).argmax(1) != labels[idx]
            adv[idx[fooled]] = found[fooled]
            robust[idx[fooled]] = False
            by[idx[fooled]] = k
        self.last = {"size": self._size(adv - x), "by": by.cpu(), "attacked": counts}
        return adv

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, bound={self.bound:g}, num_iterations={self.num_iterations}, "
                f"components={self.components}")
