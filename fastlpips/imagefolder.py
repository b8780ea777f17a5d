"""Image classification data for PAT and robust evaluation: a class-per-subfolder dataset
(torchvision's ImageFolder layout, without torchvision) and a generator of a small real-photo
example set in that layout.

Layout::

    root/<class name>/<image files>      (classes sorted by name -> labels 0, 1, ...)

``ImageFolder(root)`` returns (image (3, H, W) float32 in [0, 1], label) pairs. Every image must
have the same size unless ``size`` is given (then each is resized to size x size, antialiased).
Problems are named: a missing folder, a folder with no class subfolders, a class without images,
an unreadable image (``read_image``'s error, naming the file), a size that differs from the first.

``make_example_folder(root)`` writes ``root/train`` and ``root/val``: 32x32 crops of five
scikit-image photos, one class per photo (the worked example's data: telling crops of different
photos apart is learnable in seconds, and attacks on it behave as on natural images).
``example_photos()`` returns the five photos themselves (uint8 arrays), for examples that crop
their own data (examples/loss_demo.py).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from . import validation as V
from .bapps import _PHOTOS, IMAGE_EXTENSIONS, _photos
from .utils import read_image

__all__ = ["ImageFolder", "make_example_folder", "example_photos", "EXAMPLE_CLASSES"]

PathLike = Union[str, os.PathLike]
EXAMPLE_CLASSES = _PHOTOS


def example_photos() -> List[np.ndarray]:
    """The five scikit-image photos of the worked examples (``EXAMPLE_CLASSES``, in that order), as
    (H, W, 3) uint8 arrays; loaded once and cached, so treat them as read-only. Needs scikit-image."""
    return list(_photos())


class ImageFolder(Dataset):
    """(image in [0, 1], label) from ``root/<class>/<image>`` (sorted; ``classes`` the names)."""

    def __init__(self, root: PathLike, *, size: Optional[int] = None,
                 extensions: Sequence[str] = IMAGE_EXTENSIONS) -> None:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder {root} does not exist or is not a directory")
        if size is not None:
            size = V.check_positive_int(size, "size")
        exts = tuple(e.lower() for e in extensions)
        self.root, self.size = root, size
        self.classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not self.classes:
            raise ValueError(f"{root} has no class subfolders (expected root/<class name>/<images>)")
        self.samples: List[Tuple[str, int]] = []
        for label, name in enumerate(self.classes):
            files = sorted(p for p in (root / name).iterdir() if p.is_file() and p.suffix.lower() in exts)
            if not files:
                raise ValueError(f"class folder {root / name} has no images ({', '.join(exts)})")
            self.samples += [(str(p), label) for p in files]
        self._shape: Optional[Tuple[int, int]] = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, path: str) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(read_image(path))).permute(2, 0, 1)
        if self.size is not None:
            if tuple(x.shape[1:]) != (self.size, self.size):
                x = F.interpolate(x[None], size=(self.size, self.size), mode="bilinear", antialias=True,
                                  align_corners=False)[0].clamp(0, 1)
            return x
        if self._shape is None:
            self._shape = (int(x.shape[1]), int(x.shape[2]))
        elif tuple(x.shape[1:]) != self._shape:
            raise ValueError(f"{path} is {x.shape[2]}x{x.shape[1]} but the folder's first image is "
                             f"{self._shape[1]}x{self._shape[0]}; pass size= to resize every image")
        return x

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return self.load(path), label


def make_example_folder(root: PathLike, *, train_per_class: int = 200, val_per_class: int = 50, size: int = 32,
                        seed: int = 0) -> Path:
    """Write ``root/train/<photo>/*.png`` and ``root/val/<photo>/*.png``: random ``size`` x ``size``
    crops of ``example_photos()`` (``EXAMPLE_CLASSES``; train crops from the left 70% of each
    photo, validation crops from the right 30%, so no validation pixel was seen in training).
    Returns ``root``. Needs scikit-image."""
    from PIL import Image

    for name, v in (("train_per_class", train_per_class), ("val_per_class", val_per_class), ("size", size)):
        V.check_positive_int(v, name)
    root = Path(root)
    g = np.random.default_rng(seed)
    for photo, name in zip(_photos(), EXAMPLE_CLASSES):
        h, w = photo.shape[:2]
        cut = int(w * 0.7)
        for split, n, (lo, hi) in (("train", train_per_class, (0, cut - size)),
                                   ("val", val_per_class, (cut, w - size))):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                y0, x0 = int(g.integers(0, h - size + 1)), int(g.integers(lo, hi + 1))
                Image.fromarray(np.ascontiguousarray(photo[y0:y0 + size, x0:x0 + size])).save(folder / f"{i:05d}.png")
    return root
