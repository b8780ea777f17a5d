"""Functional API (torchmetrics style): models are built once per configuration and device."""
from __future__ import annotations

import threading
from typing import Dict, Optional, Tuple

import torch

from . import validation as V
from .model import LPIPS
from .utils import reduce_batch

__all__ = ["lpips", "distance_matrix", "get_model"]

_MODELS: Dict[Tuple, LPIPS] = {}
_LOCK = threading.Lock()


def get_model(net: str = "alex", version: str = "0.1", *, lpips: bool = True, spatial: bool = False,
              device=None, dtype: torch.dtype = torch.float32) -> LPIPS:
    """A cached, frozen (no parameter requires grad), eval-mode LPIPS model for this configuration."""
    device = torch.device(device if device is not None else "cpu")
    key = (net, version, lpips, spatial, str(device), dtype)
    with _LOCK:
        model = _MODELS.get(key)
        if model is None:
            model = LPIPS(net=net, version=version, lpips=lpips, spatial=spatial, verbose=False)
            model.requires_grad_(False)
            model = model.to(device=device, dtype=dtype).eval()
            _MODELS[key] = model
    return model


def lpips(img1: torch.Tensor, img2: torch.Tensor, *, net: str = "alex", version: str = "0.1",
          normalize: bool = False, reduction: str = "none") -> torch.Tensor:
    """LPIPS distance between image batches, differentiable with respect to both.

    Args:
        img1, img2: (N, 3, H, W) images in [-1, 1] ([0, 1] with ``normalize=True``); batch 1
            broadcasts. The model follows their device and dtype.
        net: 'alex' | 'vgg' | 'squeeze'; version: '0.1' | '0.0'.
        reduction: 'none' -> (N,), 'mean' or 'sum' -> scalar.

    Example::

        >>> d = fastlpips.lpips(x, y, net='vgg', normalize=True, reduction='mean')
    """
    reduction = V.check_reduction(reduction)
    if not isinstance(img1, torch.Tensor):
        raise TypeError(f"img1 must be a torch.Tensor, got {type(img1).__name__}")
    model = get_model(net, version, device=img1.device, dtype=img1.dtype if img1.is_floating_point() else torch.float32)
    return reduce_batch(model(img1, img2, normalize=normalize).reshape(-1), reduction)


def distance_matrix(x: torch.Tensor, y: Optional[torch.Tensor] = None, *, net: str = "alex", version: str = "0.1",
                    normalize: bool = False, batch_size: int = 64) -> torch.Tensor:
    """All-pairs LPIPS: (N, M) for x (N, 3, H, W) and y (M, 3, H, W); y=None gives x against itself.

    Each image runs through the trunk once; see ``LPIPS.pairwise``.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    model = get_model(net, version, device=x.device, dtype=x.dtype if x.is_floating_point() else torch.float32)
    return model.pairwise(x, y, normalize=normalize, batch_size=batch_size)
