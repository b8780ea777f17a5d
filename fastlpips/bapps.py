"""BAPPS human-judgment data (Zhang et al. 2018): readers for its folder layout, and a generator of
small sets with the same layout from real photos.

Layout of one split folder (REFERENCE.md section 5)::

    2AFC: ref/ p0/ p1/ (image patches) and judge/*.npy (h: the fraction of people preferring p1)
    JND:  p0/ p1/ (image patches) and same/*.npy (the fraction of people judging them the same)

``TwoAFCDataset`` / ``JNDDataset`` take one split folder or a list of them (as lpips' data loader:
the files of all folders sorted together, patches resized to ``load_size`` on the short side and
mapped to [-1, 1]) and return lpips' item dicts (``ref``, ``p0``, ``p1``, ``judge`` or ``same``,
and the ``*_path`` entries), so lpips' own scripts and ``fastlpips.scoring`` read them alike.
Unlike lpips they check the folders first: every patch must have its partners and its judgment
file (matched by name), and unreadable, mismatched or misplaced files raise an error naming the file.

``make_synthetic_bapps`` writes a small set in the BAPPS layout: 64x64 patches cut from
scikit-image's bundled photos, distortions of known strength and a documented synthetic judge
(see its docstring). It stands in for BAPPS (not available offline) in tests and benchmarks; the
real BAPPS works unchanged.
"""
from __future__ import annotations

import functools
import io
import math
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from . import validation as V
from .utils import CheckedDataLoader, read_image

__all__ = ["TwoAFCDataset", "JNDDataset", "bapps_loader", "load_patch", "make_synthetic_bapps", "IMAGE_EXTENSIONS",
           "DISTORTIONS"]

PathLike = Union[str, os.PathLike]
# lpips' data/image_folder.py extensions (compared case-insensitively here)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp")


def _files(folder: Path, ext: Sequence[str], what: str) -> Dict[str, str]:
    """{path relative to ``folder`` without extension: full path} of the ``ext`` files under
    ``folder`` (recursively, as lpips' make_dataset); anything else but hidden files is an error."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: missing folder (a BAPPS {what} split holds "
                                f"{'ref/ p0/ p1/ judge/' if what == '2AFC' else 'p0/ p1/ same/'})")
    out: Dict[str, str] = {}
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith("."):
                continue
            path = os.path.join(root, name)
            stem, suffix = os.path.splitext(os.path.relpath(path, folder))
            if suffix.lower() not in ext:
                raise ValueError(f"{path}: not a {' / '.join(ext)} file; a BAPPS {folder.name}/ folder "
                                 "holds only those")
            if stem in out:
                raise ValueError(f"{path}: two files named {stem} in {folder} ({out[stem]})")
            out[stem] = path
    return out


def _triplets(roots: Sequence[PathLike], kinds: Sequence[str], label: str, what: str) -> List[List[str]]:
    """Per kind (e.g. ref, p0, p1, judge) the sorted paths of all roots, checked to pair up by name."""
    folders = [Path(roots)] if isinstance(roots, (str, os.PathLike)) else [Path(r) for r in roots]
    if not folders:
        raise ValueError(f"no {what} split folder given")
    columns: List[List[str]] = [[] for _ in kinds]
    for root in folders:
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: no such {what} split folder")
        found = [_files(root / k, (".npy",) if k == label else IMAGE_EXTENSIONS, what) for k in kinds]
        first = found[0]
        for k, f in zip(kinds[1:], found[1:]):
            for stem in sorted(set(first) ^ set(f)):
                have, lacks = (kinds[0], k) if stem in first else (k, kinds[0])
                path = (first if stem in first else f)[stem]
                raise ValueError(f"{path}: has no partner in {root / lacks}/ ({len(first)} files in "
                                 f"{kinds[0]}/, {len(f)} in {k}/); every {have} patch needs one of the same name")
        if not first:
            raise ValueError(f"{root}: empty {what} split (no files in {root / kinds[0]}/)")
        for col, f in zip(columns, found):
            col.extend(f.values())
    # lpips sorts the paths of all roots together, per kind; the names pair them, so the order agrees
    return [sorted(c) for c in columns]


def _load_judgment(path: str) -> torch.Tensor:
    try:
        v = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - any reader failure names the file
        raise ValueError(f"{path}: unreadable .npy judgment file ({type(e).__name__}: {e})") from e
    if v.size != 1 or not np.issubdtype(v.dtype, np.number):
        raise ValueError(f"{path}: a judgment file holds one number, got shape {v.shape} dtype {v.dtype}")
    x = float(v.reshape(()))
    if not 0.0 <= x <= 1.0:  # also refuses NaN
        raise ValueError(f"{path}: judgment {x} is not a fraction in [0, 1]")
    return torch.tensor(x, dtype=torch.float32).reshape(1, 1, 1)


def _resized_size(h: int, w: int, size: int) -> Tuple[int, int]:
    """torchvision's ``Resize(size)`` output: the short side to ``size``, the long side scaled (truncated)."""
    if h <= w:
        return size, int(size * w / h)
    return int(size * h / w), size


def load_patch(path: str, load_size: int = 64) -> torch.Tensor:
    """A patch as lpips' loader gives it: (3, H, W) float32 in [-1, 1], the short side resized to
    ``load_size`` (bilinear with antialiasing, as torchvision's ``Resize`` on a PIL image; patches
    already of that size, as every BAPPS patch, are used as stored)."""
    return _to_patch(torch.from_numpy(read_image(path)).permute(2, 0, 1), load_size)


def _to_patch(x: torch.Tensor, load_size: int) -> torch.Tensor:
    h, w = x.shape[1:]
    size = _resized_size(h, w, load_size)
    if size != (h, w):
        x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0].clamp(0, 1)
    return x * 2 - 1


class _BAPPSDataset(Dataset):
    kinds: Sequence[str] = ()
    label = ""
    what = ""

    def __init__(self, roots: Union[PathLike, Sequence[PathLike]], load_size: int = 64) -> None:
        load_size = V.check_positive_int(load_size, "load_size")
        self.roots = [str(r) for r in ([roots] if isinstance(roots, (str, os.PathLike)) else roots)]
        self.load_size = load_size
        self.paths = dict(zip(self.kinds, _triplets(self.roots, self.kinds, self.label, self.what)))

    def __len__(self) -> int:
        return len(self.paths[self.kinds[0]])

    def __getitem__(self, index: int) -> dict:
        item: dict = {"index": index}
        sizes = {}
        for k in self.kinds:
            path = self.paths[k][index]
            if k == self.label:
                item[k] = _load_judgment(path)
            else:
                img = torch.from_numpy(read_image(path)).permute(2, 0, 1)
                sizes[path] = tuple(img.shape[1:])
                item[k] = _to_patch(img, self.load_size)
            item[f"{k}_path"] = path
        if len(set(sizes.values())) > 1:
            listing = ", ".join(f"{p} is {s[1]}x{s[0]}" for p, s in sizes.items())
            raise ValueError(f"patches of one {self.what} item differ in size: {listing}")
        return item


class TwoAFCDataset(_BAPPSDataset):
    """BAPPS 2AFC split folder(s): items ``{'ref', 'p0', 'p1'}`` (3, S, S) in [-1, 1], ``'judge'``
    (1, 1, 1) in [0, 1] (the fraction preferring p1), and their ``*_path``; as lpips' TwoAFCDataset."""

    kinds = ("ref", "p0", "p1", "judge")
    label = "judge"
    what = "2AFC"


class JNDDataset(_BAPPSDataset):
    """BAPPS JND split folder(s): items ``{'p0', 'p1'}`` (3, S, S) in [-1, 1], ``'same'`` (1, 1, 1) in
    [0, 1] (the fraction judging the pair the same), and their ``*_path``; as lpips' JNDDataset."""

    kinds = ("p0", "p1", "same")
    label = "same"
    what = "JND"


def bapps_loader(dataset: Dataset, batch_size: int = 50, *, shuffle: bool = False, workers: int = 0,
                 device: Union[str, torch.device, None] = None, seed: int = 0,
                 distributed: Optional[bool] = None, drop_last: bool = False) -> DataLoader:
    """A DataLoader over a BAPPS dataset: ``workers`` reader processes, pinned memory when
    ``device`` is a GPU, and under torch.distributed (``distributed=None``: when a process group is
    initialized) a ``DistributedSampler`` giving each rank its share (shuffled with ``seed`` when
    ``shuffle``; call ``loader.sampler.set_epoch(e)`` per epoch)."""
    batch_size = V.check_positive_int(batch_size, "batch_size")
    workers = V.check_positive_int(workers, "workers", minimum=0)
    if distributed is None:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    sampler: Optional[torch.utils.data.Sampler] = None
    generator = torch.Generator().manual_seed(seed)
    if distributed:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
        shuffle = False
    pin = device is not None and torch.device(device).type == "cuda"
    return CheckedDataLoader(dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler, num_workers=workers,
                      pin_memory=pin, drop_last=drop_last, generator=generator,
                      persistent_workers=workers > 0)


# -- synthetic BAPPS-layout sets ---------------------------------------------------------------------
_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")


@functools.lru_cache(maxsize=1)
def _photos() -> List[np.ndarray]:
    try:
        from skimage import data
    except ImportError as e:  # pragma: no cover - scikit-image is a test/benchmark dependency
        raise ImportError("make_synthetic_bapps needs scikit-image's bundled photos: pip install scikit-image") from e
    return [getattr(data, name)()[..., :3] for name in _PHOTOS]


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    if sigma <= 0:
        return x
    r = max(1, math.ceil(3 * sigma))
    k = torch.exp(-torch.arange(-r, r + 1, dtype=torch.float64) ** 2 / (2 * sigma**2))
    k = (k / k.sum()).to(x.dtype)
    x = F.pad(x[None], (r, r, r, r), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(3, 1, 1, 1), groups=3)
    return F.conv2d(x, k.view(1, 1, -1, 1).repeat(3, 1, 1, 1), groups=3)[0]


def _jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(_to_uint8(x)).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return torch.from_numpy(np.asarray(Image.open(buf).convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def _distort(x: torch.Tensor, kind: str, s: float, g: torch.Generator) -> torch.Tensor:
    """Distortion ``kind`` of strength s in [0, 1] (0: none) of a (3, H, W) patch in [0, 1]."""
    if kind == "noise":
        return (x + 0.25 * s * torch.randn(x.shape, generator=g)).clamp(0, 1)
    if kind == "blur":
        return _gaussian_blur(x, 2.5 * s)
    if kind == "jpeg":
        return _jpeg(x, max(1, int(round(95 - 90 * s))))
    if kind == "color":
        gain = 1 + 0.5 * s * (2 * torch.rand(3, 1, 1, generator=g) - 1)
        shift = 0.2 * s * (2 * torch.rand(3, 1, 1, generator=g) - 1)
        return (x * gain + shift).clamp(0, 1)
    raise ValueError(f"unknown distortion {kind!r}; one of {DISTORTIONS}")


DISTORTIONS = ("noise", "blur", "jpeg", "color")


def make_synthetic_bapps(root: PathLike, *, train: int = 200, val: int = 50, jnd: int = 50, seed: int = 0,
                         patch: int = 64) -> Dict[str, List[str]]:
    """Write a small BAPPS-layout set under ``root`` and return {'2afc/train': [...folders],
    '2afc/val': [...], 'jnd/val': [...]}: ``root/2afc/train/mix`` (``train`` triplets, every
    distortion), ``root/2afc/val/<distortion>`` and ``root/jnd/val/<distortion>`` (``val`` triplets
    and ``jnd`` pairs per distortion), from ``patch`` x ``patch`` crops of scikit-image's photos.

    The synthetic judge: a distortion of strength s (uniform in [0.05, 1]) is perceived as s. In 2AFC,
    p0 and p1 get independent strengths s0, s1 (and, in ``mix``, independent kinds); each of J judges
    (2 in train, 5 in val, as BAPPS) prefers p1 with probability sigmoid((s0 - s1) / 0.15), and
    ``judge`` = the fraction that did. In JND, p0 is the clean patch and p1 a distortion of strength
    s (uniform in [0, 0.6]); each of 3 judges calls them the same with probability exp(-s / 0.12).
    Everything is drawn from ``seed``: the same arguments write the same files.
    """
    root = Path(root)
    g = torch.Generator().manual_seed(seed)
    photos = [torch.from_numpy(p.astype(np.float32) / 255).permute(2, 0, 1) for p in _photos()]

    def crop() -> torch.Tensor:
        p = photos[int(torch.randint(len(photos), (1,), generator=g))]
        i = int(torch.randint(p.shape[1] - patch + 1, (1,), generator=g))
        j = int(torch.randint(p.shape[2] - patch + 1, (1,), generator=g))
        return p[:, i:i + patch, j:j + patch]

    def strength(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=g))

    def save(img: torch.Tensor, path: Path) -> None:
        from PIL import Image

        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_to_uint8(img)).save(path)

    def judgment(value: float, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, np.array([value], dtype=np.float32))

    def two_afc(folder: Path, n: int, kinds: Sequence[str], judges: int) -> None:
        for k in range(n):
            ref = crop()
            s0, s1 = strength(0.05, 1), strength(0.05, 1)
            k0 = kinds[int(torch.randint(len(kinds), (1,), generator=g))]
            k1 = kinds[int(torch.randint(len(kinds), (1,), generator=g))]
            name = f"{k:06d}"
            save(ref, folder / "ref" / f"{name}.png")
            save(_distort(ref, k0, s0, g), folder / "p0" / f"{name}.png")
            save(_distort(ref, k1, s1, g), folder / "p1" / f"{name}.png")
            p = 1 / (1 + math.exp(-(s0 - s1) / 0.15))
            votes = int(torch.binomial(torch.tensor(float(judges)), torch.tensor(p), generator=g))
            judgment(votes / judges, folder / "judge" / f"{name}.npy")

    def jnd_pairs(folder: Path, n: int, kind: str) -> None:
        for k in range(n):
            ref, s = crop(), strength(0, 0.6)
            name = f"{k:06d}"
            save(ref, folder / "p0" / f"{name}.png")
            save(_distort(ref, kind, s, g), folder / "p1" / f"{name}.png")
            votes = int(torch.binomial(torch.tensor(3.0), torch.tensor(math.exp(-s / 0.12)), generator=g))
            judgment(votes / 3, folder / "same" / f"{name}.npy")

    out: Dict[str, List[str]] = {"2afc/train": [], "2afc/val": [], "jnd/val": []}
    if train:
        two_afc(root / "2afc" / "train" / "mix", train, DISTORTIONS, 2)
        out["2afc/train"].append(str(root / "2afc" / "train" / "mix"))
    for kind in DISTORTIONS:
        if val:
            two_afc(root / "2afc" / "val" / kind, val, (kind,), 5)
            out["2afc/val"].append(str(root / "2afc" / "val" / kind))
        if jnd:
            jnd_pairs(root / "jnd" / "val" / kind, jnd, kind)
            out["jnd/val"].append(str(root / "jnd" / "val" / kind))
    return out
