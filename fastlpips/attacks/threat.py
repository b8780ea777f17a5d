"""The threat-model attack protocol shared by robust evaluation (``fastlpips.robust``) and PAT.

Every attack used there is a ``ThreatAttack``: ``attack(x, labels, noise=None, generator=None)``
returns adversarial images in [0, 1] for images ``x`` (N, 3, H, W) in [0, 1] and class indices
``labels`` (N,), and leaves in ``attack.last['size']`` the (N,) size of each perturbation on the
threat model's own scale (the quantity ``bound`` limits: an L_inf norm of pixels, of DCT
coefficients, of a flow field, a perceptual distance, ...). ``attack.within_bound()`` tells which
outputs respect the bound; evaluation checks it on every batch.

Random starts: an attack whose start is random declares ``noise_kind`` ('normal': N(0, 1) per
pixel, 'uniform': U(-1, 1) per pixel) and takes the standard draws as ``noise`` (x's shape); when
``noise`` is None it draws them with ``generator``. Training under torchrun draws the noise of the
whole global batch and gives each process its rows, so a sample's start does not depend on how
the batch was split (``draw_noise``).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

__all__ = ["ThreatAttack", "NoAttack", "draw_noise", "BOUND_RTOL", "BOUND_ATOL"]

# A perturbation counts as inside its bound when size <= bound (1 + BOUND_RTOL) + BOUND_ATOL
# (float32 round-off of the projection / clamp; nothing else).
BOUND_RTOL = 1e-5
BOUND_ATOL = 1e-6


def draw_noise(kind: Optional[str], shape, *, generator: Optional[torch.Generator] = None,
               dtype: torch.dtype = torch.float32, device=None) -> Optional[torch.Tensor]:
    """Standard draws of ``kind`` ('normal' N(0, 1), 'uniform' U(-1, 1), None: no noise), drawn on
    the CPU with ``generator`` (reproducible across devices) and moved to ``device``."""
    if kind is None:
        return None
    if kind == "normal":
        z = torch.randn(shape, generator=generator, dtype=dtype)
    elif kind == "uniform":
        z = torch.rand(shape, generator=generator, dtype=dtype) * 2 - 1
    else:
        raise ValueError(f"noise kind must be 'normal', 'uniform' or None, got {kind!r}")
    return z.to(device) if device is not None else z


class ThreatAttack(nn.Module):
    """Base class: subclasses set ``name``, ``bound`` and ``noise_kind`` and implement
    ``forward(x, labels, *, noise=None, generator=None)``, filling ``self.last['size']``."""

    name: str = "attack"
    noise_kind: Optional[str] = None
    bound: float  # set by every subclass (a class attribute or in __init__)

    def __init__(self) -> None:
        super().__init__()
        self.last: dict = {}

    def _noise(self, x: torch.Tensor, noise: Optional[torch.Tensor], generator: Optional[torch.Generator]):
        """The standard draws of this attack's random start for ``x`` (checked when given)."""
        if self.noise_kind is None:
            return None
        if noise is None:
            return draw_noise(self.noise_kind, x.shape, generator=generator, dtype=x.dtype, device=x.device)
        if not isinstance(noise, torch.Tensor) or noise.shape != x.shape:
            raise ValueError(f"noise must be a tensor of the images' shape {tuple(x.shape)}, got "
                             f"{tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__}")
        return noise.to(device=x.device, dtype=x.dtype)

    def within_bound(self, size: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(N,) bool: the last call's perturbations (or ``size``) respect ``bound``."""
        size = self.last["size"] if size is None else size
        return size <= self.bound * (1 + BOUND_RTOL) + BOUND_ATOL

    def extra_repr(self) -> str:
        b = getattr(self, "bound", math.nan)
        return f"name={self.name!r}, bound={b:g}"


class NoAttack(ThreatAttack):
    """The identity (clean training / the clean column): returns a copy of x, size 0."""

    name = "none"
    bound = 0.0

    def __init__(self, model: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, labels: torch.Tensor, *, noise: Optional[torch.Tensor] = None,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
        self.last = {"size": torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)}
        return x.detach().clone()
