"""Input checks shared by every public entry point: loud, specific errors.

The one home of argument checks (images, pairs, numbers, seeds, labels, logits): metrics, losses,
attacks, geometry and the commands call these and write no checks of their own beyond what is
particular to them (a window that must fit, a trunk's minimum size)."""
from __future__ import annotations

import math
import warnings
from typing import Callable, Literal, Optional, Tuple, overload

import numpy as np
import torch

__all__ = ["check_image", "check_pair", "check_unit_images", "check_images_and_labels", "check_same_shape",
           "check_model_match", "check_size", "check_values", "check_positive_int", "check_finite", "check_number",
           "check_bound", "check_nonnegative", "check_seed", "check_fraction_values", "check_labels", "check_logits",
           "check_reduction", "check_norm", "REDUCTIONS", "RangeWarning", "UNIT_HINT", "ATTACK_BOX", "NONFINITE_RULE"]

# The one rule for non-finite inputs, for every metric (iqa, classic, losses, LPIPS, E-LPIPS): a NaN
# or Inf pixel raises ValueError naming the argument; no metric returns a score for such an image.
NONFINITE_RULE = "NaN or Inf values raise ValueError"


class RangeWarning(UserWarning):
    """Image values outside the range the metric was calibrated for."""


_LPIPS_HINT = "convert images with x.float() / 127.5 - 1 (or / 255 with normalize=True)"
UNIT_HINT = "convert images with x.float() / 255 (this metric takes images in [0, 1])"


def check_image(x: object, name: str, *, channels: Optional[int] = 3, hint: Optional[str] = _LPIPS_HINT,
                allow_empty: bool = True, finite: bool = False) -> None:
    """Type, rank, channel count (``channels=None``: any count >= 1), dtype and, where asked, a
    non-empty batch and finite values (``finite``, one scan) of one N x C x H x W image batch."""
    want = f"(N, {channels}, H, W)" if channels is not None else "(N, C, H, W)"
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {want}, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must have 4 dimensions {want}, got shape {tuple(x.shape)}")
    if channels is None and x.shape[1] == 0:
        raise ValueError(f"{name} has no channels (shape {tuple(x.shape)})")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name} must have {channels} channels (RGB) in dim 1, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}" + (f"; {hint}" if hint else ""))
    if x.shape[0] == 0 and not allow_empty:
        raise ValueError(f"{name} is an empty batch (shape {tuple(x.shape)}); give at least one image")
    if finite:
        check_finite(x, name)


def check_pair(a: torch.Tensor, b: torch.Tensor, a_name: str = "in0", b_name: str = "in1") -> None:
    """Two checked image batches agree: channel count and spatial size, batch sizes (equal, or one
    of them 1: it broadcasts), dtype and device."""
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"{a_name} and {b_name} must have the same channel count and spatial size, "
                         f"got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[0] != b.shape[0] and 1 not in (a.shape[0], b.shape[0]):
        raise ValueError(f"{a_name} and {b_name} have batch sizes {a.shape[0]} and {b.shape[0]}: "
                         f"they must be equal or one of them must be 1")
    if a.dtype != b.dtype:
        raise TypeError(f"{a_name} and {b_name} have different dtypes: {a.dtype} and {b.dtype}")
    if a.device != b.device:
        raise ValueError(f"{a_name} and {b_name} are on different devices: {a.device} and {b.device}")


#: Why attacks refuse images outside [0, 1] (the first clamp would move them silently).
ATTACK_BOX = "attacks take images in [0, 1] and return images in [0, 1]"


def check_unit_images(x: torch.Tensor, name: str = "x", why: str = "") -> None:
    """A floating (N, 3, H, W) batch with N >= 1 and finite values in [0, 1] (one device sync);
    ``why``: what needs the box, added to the message (attacks: they return images in [0, 1])."""
    check_image(x, name, hint=UNIT_HINT, allow_empty=False)
    mn, mx = _finite_extremes(x, name)
    if mn < 0 or mx > 1:
        raise ValueError(f"{name} must hold values in [0, 1], got [{mn:.4g}, {mx:.4g}]"
                         f"{'; ' + why if why else ''}{unit_range_hint(mn, mx)}")


def check_images_and_labels(x: torch.Tensor, labels: torch.Tensor, name: str = "x",
                            check_images: Optional[Callable[[torch.Tensor, str], None]] = None) -> None:
    """What every classifier attack checks first: ``x`` a batch in [0, 1] (``check_unit_images``,
    or ``check_images(x, name)``, e.g. a distance's own check that adds its size limits), one
    integer label per image on x's device (the class count is checked against the logits)."""
    if check_images is None:
        check_unit_images(x, name, why=ATTACK_BOX)
    else:
        check_images(x, name)
    check_labels(labels, x.shape[0])
    if labels.device != x.device:
        raise ValueError(f"labels are on {labels.device} but {name} on {x.device}")


def check_same_shape(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    """Two tensors of one shape, dtype and device (an image and its perturbed copy)."""
    if a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dtype != b.dtype or a.device != b.device:
        raise ValueError(f"{name_a} ({a.dtype}, {a.device}) and {name_b} ({b.dtype}, {b.device}) differ in dtype "
                         "or device")


def check_model_match(x: torch.Tensor, device: torch.device, dtype: torch.dtype, name: str = "input") -> None:
    if x.device != device:
        raise ValueError(f"{name} is on {x.device} but the model is on {device}; move one with .to()")
    if x.dtype != dtype and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(f"{name} has dtype {x.dtype} but the model has dtype {dtype}; "
                        f"cast the input (x.to({dtype})) or the model (model.to({x.dtype}))")


def check_size(x: torch.Tensor, min_size: int, what: str, name: str) -> None:
    """Both spatial sides of ``x`` at least ``min_size``; ``what`` names the consumer (the alex trunk)."""
    h, w = x.shape[2], x.shape[3]
    if h < min_size or w < min_size:
        raise ValueError(f"{name} of spatial size {h}x{w} is too small for {what}: "
                         f"it needs at least {min_size}x{min_size}")


def _finite_extremes(x: torch.Tensor, name: str) -> Tuple[float, float]:
    """(min, max) of a non-empty ``x`` in one device sync; ValueError naming ``name`` and the count
    when it holds NaN or Inf (counted only then)."""
    lo, hi = torch.aminmax(x.detach())
    mn, mx = float(lo), float(hi)
    if not (math.isfinite(mn) and math.isfinite(mx)):
        bad = int((~torch.isfinite(x.detach())).sum())
        raise ValueError(f"{name} contains {bad} NaN or Inf value(s)")
    return mn, mx


def check_values(x: torch.Tensor, name: str, lo: float, hi: float, warn_state: Optional[dict] = None,
                 hint: Optional[Callable[[float, float], str]] = None) -> None:
    """NaN/Inf raise; values outside [lo, hi] warn once per ``warn_state`` (one sync per call)."""
    if x.numel() == 0:
        return
    mn, mx = _finite_extremes(x, name)
    if (mn < lo - 1e-6 or mx > hi + 1e-6) and (warn_state is None or not warn_state.get("range")):
        if warn_state is not None:
            warn_state["range"] = True
        if hint is None:
            why = (" (0..255 images? divide by 127.5 and subtract 1, or by 255 with normalize=True)"
                   if mx > 2 else "")
        else:
            why = hint(mn, mx)
        warnings.warn(f"{name} has values in [{mn:.4g}, {mx:.4g}], outside the expected [{lo:g}, {hi:g}]{why}; "
                      "this warning is shown once per model", RangeWarning, stacklevel=4)


def check_positive_int(value: object, name: str, minimum: int = 1) -> int:
    """An integer option >= ``minimum`` (bools and floats such as 1.5 refused by name)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_tile(tile: object, name: str = "max_tile") -> Optional[Tuple[int, int]]:
    """A tile size: None, a side (positive int) or a (height, width) pair of them -> (height, width)."""
    if tile is None:
        return None
    pair = (tile, tile) if isinstance(tile, (int, np.integer)) and not isinstance(tile, bool) else tile
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in pair)):
        raise ValueError(f"{name} must be a positive int or a (height, width) pair of positive ints, got {tile!r}")
    return int(pair[0]), int(pair[1])


def check_budget(budget: object, name: str = "memory_budget") -> Optional[int]:
    """A memory budget: None (the default) or a positive number of bytes."""
    if budget is None:
        return None
    return check_positive_int(budget, name)


#: Reductions over the batch: ``'none'`` keeps one value per image.
REDUCTIONS: Tuple[str, ...] = ("none", "mean", "sum")


def check_reduction(reduction: object, allow_none: bool = False) -> str:
    """One of ``REDUCTIONS`` (``None`` means 'none' where ``allow_none``); ValueError otherwise."""
    if reduction is None and allow_none:
        return "none"
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {list(REDUCTIONS)}, got {reduction!r}")
    return reduction


def parse_fraction(text: str, name: str) -> float:
    """A number written as a decimal or a fraction ('0.03', '8/255', '1e-3') -> a finite float;
    ValueError naming ``name`` otherwise (the one parser of the commands' radii and attack bounds)."""
    from fractions import Fraction

    try:
        value = float(Fraction(str(text).strip()))
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"{name} {text!r} is not a number or fraction (e.g. 0.5 or 8/255)") from None
    except OverflowError:
        raise ValueError(f"{name} {text!r} is not a finite number") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} {text!r} is not a finite number")
    return value


def unit_range_hint(mn: float, mx: float) -> str:
    """Why [0, 1] images are out of range, from the observed extremes."""
    if mx > 2:
        return " (0..255 images? divide by 255)"
    if mn < -1e-6:
        return " ([-1, 1] images, LPIPS' range? map them with (x + 1) / 2)"
    return ""


def check_finite(x: torch.Tensor, name: str) -> None:
    """``x`` holds no NaN or Inf (one scan); ValueError naming ``name`` and the count otherwise."""
    if x.numel() and not bool(torch.isfinite(x.detach()).all()):
        bad = int((~torch.isfinite(x.detach())).sum())
        raise ValueError(f"{name} contains {bad} NaN or Inf value(s)")


def check_number(value: object, name: str, *, low: Optional[float] = None, high: Optional[float] = None,
                 low_open: bool = False, high_open: bool = False) -> float:
    """A finite real number (bools, strings, tensors of several values refused) within the bounds,
    as a float; ``low_open`` / ``high_open``: the bound itself excluded."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be one number, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    try:
        v = float(value)
    except OverflowError:
        v = math.inf
    if not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if low is not None and (v < low or (low_open and v == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low:g}, got {value!r}")
    if high is not None and (v > high or (high_open and v == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high:g}, got {value!r}")
    return v


def check_norm(norm: object, name: str = "norm") -> str:
    """A pixel norm of the L_p attacks: 'linf' or 'l2' (any case), returned lower case."""
    if not isinstance(norm, str) or norm.lower() not in ("linf", "l2"):
        raise ValueError(f"{name} must be 'linf' or 'l2', got {norm!r}")
    return norm.lower()


def check_bound(value: object, name: str = "bound") -> float:
    """A finite number > 0 (a radius, a step, a data range)."""
    return check_number(value, name, low=0.0, low_open=True)


def check_nonnegative(value: object, name: str) -> float:
    """A finite number >= 0 (a weight that may be switched off)."""
    return check_number(value, name, low=0.0)


@overload
def check_seed(seed: object, name: str = ..., allow_none: Literal[True] = ...) -> Optional[int]: ...
@overload
def check_seed(seed: object, name: str = ..., *, allow_none: Literal[False]) -> int: ...
@overload
def check_seed(seed: object, name: str, allow_none: Literal[False]) -> int: ...
@overload
def check_seed(seed: object, name: str = ..., allow_none: bool = ...) -> Optional[int]: ...


def check_seed(seed: object, name: str = "seed", allow_none: bool = True) -> Optional[int]:
    """A seed: an int >= 0 (numpy ints too), or None where allowed."""
    if seed is None and allow_none:
        return None
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"{name} must be an int >= 0{' or None' if allow_none else ''}, got {seed!r} "
                        f"({type(seed).__name__})")
    if not 0 <= seed < 2**63:
        raise ValueError(f"{name} must be in [0, 2**63), got {seed}")
    return int(seed)


def check_fraction_values(values: object, name: str, low: float = 0.0, high: float = 1.0) -> np.ndarray:
    """A flat float64 array of finite values in [low, high] (judgments, fractions); ValueError
    naming ``name``, the count and an example otherwise."""
    try:
        arr = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values,
                         dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be numbers, got {type(values).__name__} ({e})") from None
    bad = ~np.isfinite(arr) | (arr < low) | (arr > high)
    if bad.any():
        raise ValueError(f"{name} must hold finite values in [{low:g}, {high:g}]; {int(bad.sum())} do not "
                         f"(e.g. {float(arr[bad][0])!r} at index {int(np.flatnonzero(bad)[0])})")
    return arr


def check_labels(labels: object, n: int, num_classes: Optional[int] = None, name: str = "labels") -> None:
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


def check_logits(logits: object, n: int, name: str = "model(x)") -> None:
    """A classifier's output: (N, K) logits with K >= 2."""
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{name} must return a tensor of logits, got {type(logits).__name__}")
    if logits.dim() != 2 or logits.shape[0] != n or logits.shape[1] < 2:
        raise ValueError(f"{name} must return logits of shape ({n}, num_classes >= 2), got {tuple(logits.shape)}")
