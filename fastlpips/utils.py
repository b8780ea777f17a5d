"""Image helpers with the names and semantics of the ``lpips`` package (0.1.4)."""
from __future__ import annotations

import os

import numpy as np
import torch

from .reference import normalize_channels, spatial_average, upsample

__all__ = ["im2tensor", "tensor2im", "load_image", "normalize_tensor", "spatial_average", "upsample",
           "l2", "psnr"]


def normalize_tensor(in_feat: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Channel-normalize features: ``f / (sqrt(sum_c f^2) + eps)`` (finite gradient at f = 0)."""
    return normalize_channels(in_feat, eps)


def im2tensor(image: np.ndarray, imtype=np.uint8, cent: float = 1.0, factor: float = 255.0 / 2.0) -> torch.Tensor:
    """H x W x 3 array (0..255) -> 1 x 3 x H x W float32 tensor in [-1, 1]."""
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"im2tensor expects an H x W x C image, got shape {image.shape}")
    return torch.from_numpy(np.ascontiguousarray((image / factor - cent).transpose(2, 0, 1)[None]).astype(np.float32))


def tensor2im(image_tensor: torch.Tensor, imtype=np.uint8, cent: float = 1.0, factor: float = 255.0 / 2.0) -> np.ndarray:
    """First image of an N x 3 x H x W tensor in [-1, 1] -> H x W x 3 array (0..255, ``imtype``)."""
    image_numpy = image_tensor[0].detach().cpu().float().numpy()
    image_numpy = (np.transpose(image_numpy, (1, 2, 0)) + cent) * factor
    return image_numpy.astype(imtype)


def load_image(path) -> np.ndarray:
    """Read an image file as an H x W x 3 uint8 RGB array (alpha dropped, grey expanded)."""
    from PIL import Image

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file {path} does not exist")
    with Image.open(path) as im:
        if im.mode in ("I;16", "I;16B", "I"):
            arr = np.asarray(im, dtype=np.float64)
            arr = (arr / max(arr.max(), 1) * 255).round().astype(np.uint8)
            return np.repeat(arr[:, :, None], 3, axis=2)
        return np.asarray(im.convert("RGB"))


def l2(p0: np.ndarray, p1: np.ndarray, range: float = 255.0) -> float:
    return 0.5 * np.mean((p0 / range - p1 / range) ** 2)


def psnr(p0: np.ndarray, p1: np.ndarray, peak: float = 255.0) -> float:
    return 10 * np.log10(peak**2 / np.mean((1.0 * p0 - 1.0 * p1) ** 2))
