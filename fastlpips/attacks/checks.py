"""Input validation shared by every attack: one place, clear messages naming the argument.

Attacks work on images in [0, 1] and return images in [0, 1]; an input outside that box would be
silently moved into it by the first clamp, so it is refused instead of warned about.
"""
from __future__ import annotations

import math
from numbers import Real
from typing import Optional

import torch

from .. import validation as V

__all__ = ["check_unit_images", "check_images_and_labels", "check_bound", "check_nonnegative", "check_labels",
           "check_logits", "check_same_shape",
           "check_positive_int"]

check_positive_int = V.check_positive_int


def check_unit_images(x, name: str = "x") -> None:
    """A floating (N, 3, H, W) batch with N >= 1, finite values in [0, 1] (one device sync)."""
    V.check_image(x, name, hint=V.UNIT_HINT, allow_empty=False)
    mn, mx = (float(v) for v in torch.aminmax(x.detach()))
    if not (math.isfinite(mn) and math.isfinite(mx)):
        raise ValueError(f"{name} contains NaN or Inf values")
    if mn < 0 or mx > 1:
        raise ValueError(f"{name} has values in [{mn:.4g}, {mx:.4g}]; attacks take images in [0, 1] and return "
                         f"images in [0, 1]{V.unit_range_hint(mn, mx)}")


def check_images_and_labels(x, labels, name: str = "x", check_images=None) -> None:
    """What every classifier attack checks first: ``x`` a batch in [0, 1] (``check_unit_images``,
    or ``check_images(x, name)``, e.g. a distance's own check that adds its size limits), one
    integer label per image on x's device (the class count is checked against the logits)."""
    (check_images or check_unit_images)(x, name)
    check_labels(labels, x.shape[0])
    if labels.device != x.device:
        raise ValueError(f"labels are on {labels.device} but {name} on {x.device}")


def check_same_shape(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dtype != b.dtype or a.device != b.device:
        raise ValueError(f"{name_a} ({a.dtype}, {a.device}) and {name_b} ({b.dtype}, {b.device}) differ in dtype "
                         "or device")


def _one_number(value, name: str) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be one number, got a tensor of shape {tuple(value.shape)}")
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    return float(value)


def check_bound(value, name: str = "bound") -> float:
    """A finite number > 0 (NaN, inf, 0, negatives and tensors of several values refused)."""
    value = _one_number(value, name)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return value


def check_nonnegative(value, name: str) -> float:
    """A finite number >= 0 (a weight that may be switched off)."""
    value = _one_number(value, name)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


def check_labels(labels, n: int, num_classes: Optional[int] = None, name: str = "labels") -> None:
    """One integer class index per image: shape (N,), no broadcasting, 0 <= label < num_classes."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of class indices, got {type(labels).__name__}")
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"{name} must hold integer class indices, got dtype {labels.dtype}")
    if labels.dim() != 1 or labels.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},), one label per image, got {tuple(labels.shape)}")
    if n:
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or (num_classes is not None and hi >= num_classes):
            where = f"lie in [0, {num_classes - 1}]" if num_classes is not None else "be >= 0"
            raise ValueError(f"{name} must {where}, got values in [{lo}, {hi}]")


def check_logits(logits, n: int, name: str = "model(x)") -> None:
    """The classifier's output: (N, K) logits with K >= 2."""
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{name} must return a tensor of logits, got {type(logits).__name__}")
    if logits.dim() != 2 or logits.shape[0] != n or logits.shape[1] < 2:
        raise ValueError(f"{name} must return logits of shape ({n}, num_classes >= 2), got {tuple(logits.shape)}")
