"""Input checks shared by every public entry point: loud, specific errors."""
from __future__ import annotations

import math
import warnings
from typing import Callable, Optional

import numpy as np
import torch

__all__ = ["check_image", "check_pair", "check_model_match", "check_size", "check_values", "check_positive_int",
           "check_finite", "check_number", "check_seed", "check_fraction_values", "RangeWarning", "UNIT_HINT",
           "NONFINITE_RULE"]

# The one rule for non-finite inputs, for every metric (iqa, classic, losses, LPIPS, E-LPIPS): a NaN
# or Inf pixel raises ValueError naming the argument; no metric returns a score for such an image.
NONFINITE_RULE = "NaN or Inf values raise ValueError"


class RangeWarning(UserWarning):
    """Image values outside the range the metric was calibrated for."""


_LPIPS_HINT = "convert images with x.float() / 127.5 - 1 (or / 255 with normalize=True)"
UNIT_HINT = "convert images with x.float() / 255 (this metric takes images in [0, 1])"


def check_image(x, name: str, *, channels: int = 3, hint: str = _LPIPS_HINT, allow_empty: bool = True) -> None:
    """Type, rank, channel count, dtype and a non-empty batch of one N x C x H x W image batch."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, {channels}, H, W), got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must have 4 dimensions (N, {channels}, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] != channels:
        raise ValueError(f"{name} must have {channels} channels (RGB) in dim 1, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}; {hint}")
    if x.shape[0] == 0 and not allow_empty:
        raise ValueError(f"{name} is an empty batch (shape {tuple(x.shape)}); give at least one image")


def check_pair(in0: torch.Tensor, in1: torch.Tensor) -> None:
    """Shapes, dtypes and devices of the two inputs agree (batch 1 broadcasts against N)."""
    if in0.shape[2:] != in1.shape[2:]:
        raise ValueError(f"in0 and in1 must have the same spatial size, got {tuple(in0.shape)} and {tuple(in1.shape)}")
    if in0.shape[0] != in1.shape[0] and 1 not in (in0.shape[0], in1.shape[0]):
        raise ValueError(f"batch sizes {in0.shape[0]} and {in1.shape[0]} differ and neither is 1")
    if in0.dtype != in1.dtype:
        raise TypeError(f"in0 and in1 have different dtypes: {in0.dtype} and {in1.dtype}")
    if in0.device != in1.device:
        raise ValueError(f"in0 and in1 are on different devices: {in0.device} and {in1.device}")


def check_model_match(x: torch.Tensor, device: torch.device, dtype: torch.dtype, name: str = "input") -> None:
    if x.device != device:
        raise ValueError(f"{name} is on {x.device} but the model is on {device}; move one with .to()")
    if x.dtype != dtype and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(f"{name} has dtype {x.dtype} but the model has dtype {dtype}; "
                        f"cast the input (x.to({dtype})) or the model (model.to({x.dtype}))")


def check_size(x: torch.Tensor, min_size: int, net: str, name: str) -> None:
    h, w = x.shape[2], x.shape[3]
    if h < min_size or w < min_size:
        raise ValueError(f"{name} of spatial size {h}x{w} is too small for the {net} trunk: "
                         f"it needs at least {min_size}x{min_size}")


def check_values(x: torch.Tensor, name: str, lo: float, hi: float, warn_state: Optional[dict] = None,
                 hint: Optional[Callable[[float, float], str]] = None) -> None:
    """NaN/Inf raise; values outside [lo, hi] warn once per ``warn_state`` (one sync per call)."""
    if x.numel() == 0:
        return
    mn, mx = torch.aminmax(x.detach())
    mn, mx = float(mn), float(mx)
    if not (math.isfinite(mn) and math.isfinite(mx)):
        bad = int((~torch.isfinite(x.detach())).sum())
        raise ValueError(f"{name} contains {bad} NaN or Inf value(s)")
    if (mn < lo - 1e-6 or mx > hi + 1e-6) and (warn_state is None or not warn_state.get("range")):
        if warn_state is not None:
            warn_state["range"] = True
        if hint is None:
            hint = (" (0..255 images? divide by 127.5 and subtract 1, or by 255 with normalize=True)"
                    if mx > 2 else "")
        else:
            hint = hint(mn, mx)
        warnings.warn(f"{name} has values in [{mn:.4g}, {mx:.4g}], outside the expected [{lo:g}, {hi:g}]{hint}; "
                      "this warning is shown once per model", RangeWarning, stacklevel=4)


def check_positive_int(value, name: str, minimum: int = 1) -> int:
    """An integer option >= ``minimum`` (bools and floats such as 1.5 refused by name)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


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


def check_number(value, name: str, *, low: Optional[float] = None, high: Optional[float] = None,
                 low_open: bool = False, high_open: bool = False) -> float:
    """A finite real number (bools, strings, tensors of several values refused) within the bounds,
    as a float; ``low_open`` / ``high_open``: the bound itself excluded."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
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


def check_seed(seed, name: str = "seed", allow_none: bool = True) -> Optional[int]:
    """A seed: an int >= 0 (numpy ints too), or None where allowed."""
    if seed is None and allow_none:
        return None
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"{name} must be an int >= 0{' or None' if allow_none else ''}, got {seed!r} "
                        f"({type(seed).__name__})")
    if not 0 <= seed < 2**63:
        raise ValueError(f"{name} must be in [0, 2**63), got {seed}")
    return int(seed)


def check_fraction_values(values, name: str, low: float = 0.0, high: float = 1.0) -> np.ndarray:
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
