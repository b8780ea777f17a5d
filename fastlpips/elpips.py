"""E-LPIPS (Kettunen et al. 2019): the expectation of an LPIPS-like distance over random image
transformations and dropout, with the official release's semantics (REFERENCE.md section 2):

* VGG16 trunk with every max-pool replaced by 2x2 average pooling; 14 compared layers: the scaled
  input image itself and all 13 conv+ReLU outputs; weights ``vgg_full_avg`` (package data);
* dropout (keep 0.99) before every convolution, the first included; one Bernoulli mask per
  element of the batch tensor, the same mask for every image compared in the call (the image(s)
  and the reference), scaled by 1/keep; layer 0 is taken before the first dropout;
* per layer: channel-normalize, squared difference, spatial mean, weighted channel sum (the fused
  head op of fastlpips.ops);
* inputs in [0, 1]; the transformation is applied first, then ``2x - 1`` and the LPIPS scaling.

Engine: ``mode='batched'`` (default) draws the samples of a call at once, groups them by scale level
and runs each group through the fused transform op (``fastlpips.ops.transform``) and one trunk
pass (chunked to ``memory_budget``); ``mode='official'`` is the release's one-sample-per-pass loop.
``fastlpips.estimator.elpips_estimate`` evaluates to a confidence interval with stratified scale levels.
"""
from __future__ import annotations

import itertools
import math
import os
import weakref
from dataclasses import dataclass
from typing import Callable, Iterable, List, Optional, Sequence, Tuple, Union, cast

import torch
import torch.nn.functional as F
from torch import nn

from . import validation as V
from .model import ScalingLayer
from .nets import tiling
from .nets.linearize import Tangent, linearize_module
from .nets.trunks import VGG16, Fire, SqueezeNet
from .nets.weights import load_lin_weights, load_trunk_state
from .ops.head import lpips_head_map
from .ops.transform import batched_transform
from .precision import resolve_dtype, warn_if_slow
from .transforms import (
    MAX_SCALE,
    TRANSFORM_FAMILIES,
    TransformBatch,
    TransformSet,
    apply_transform,
    check_families,
    downscaled_size,
    min_size_for_scale,
    sample_batched,
    sample_official,
)

__all__ = ["ELPIPS", "ELPIPSDraw", "scale_levels_for_size", "max_scale_for_size", "dropout_positions", "zero_at",
           "dropout_conv", "DEFAULT_RTOL", "DEFAULT_ATOL", "BF16_RELATIVE_BIAS", "BF16_ABSOLUTE_BIAS",
           "bf16_bias_allowed",
           "resolve_elpips_dtype"]

#: The estimator's default stopping rule (``elpips_estimate``): the 95% half-width below 2.5% of the
#: mean and below 0.01, as the release's evaluation example.
DEFAULT_RTOL, DEFAULT_ATOL = 0.025, 0.01
#: The bf16 trunk's bias on the mean E-LPIPS distance, measured on 4 real photo pairs (crops of
#: scikit-image's photos vs a blurred, noisy copy) with the same draws in fp32 and bf16:
#: benchmarks/precision_auto_study.py, results/precision-auto-bias-20261207.json (the largest relative and
#: absolute bias over the pairs at 64x64 and 256x256).
BF16_RELATIVE_BIAS = 0.0037  # measured 0.366% (64x64, 1 level, 128 draws) and 0.236% (256x256, 4 levels, 32)
BF16_ABSOLUTE_BIAS = 4.3e-5  # measured 4.2e-5 and 2.7e-5 (distances ~0.01; standard errors 2-4e-6)


#: Bytes of activations one trunk pass of a group's samples may take when no ``memory_budget`` is given.
CHUNK_BUDGET = 1 << 30


def bf16_bias_allowed() -> bool:
    """E-LPIPS' ``dtype='auto'`` takes bf16 (where it is faster) only when its measured bias is
    below a quarter of the estimator's default interval half-width, relative and absolute: an
    estimate in bf16 then stays within its interval as an fp32 one would."""
    return BF16_RELATIVE_BIAS < 0.25 * DEFAULT_RTOL and BF16_ABSOLUTE_BIAS < 0.25 * DEFAULT_ATOL


def resolve_elpips_dtype(dtype, device=None, net: str = "vgg", grad: bool = False) -> Optional[torch.dtype]:
    """``precision.resolve_dtype`` for E-LPIPS: 'auto' takes bf16 where the probe measured it faster
    (forward, or forward and backward with ``grad``) and ``bf16_bias_allowed()``."""
    auto = isinstance(dtype, str) and dtype.lower() == "auto"
    dtype = resolve_dtype(dtype, device, net=net, grad=grad)
    if auto and dtype is not None and not bf16_bias_allowed():
        return None  # faster, but its bias would show in the estimator's default interval
    return dtype


def scale_levels_for_size(height: int, width: int) -> int:
    """The release's rule (set_scale_levels_by_image_size): max(1, min(H, W) // 64) levels."""
    return max(1, min(MAX_SCALE, min(height, width) // 64))


def max_scale_for_size(height: int, width: int, net: str = "vgg") -> int:
    """The largest ``max_scale`` (1..8) that images of height x width fit (``ELPIPS.check_size``:
    the downscaled image >= 8 px, and >= 16 px (VGG) or 31 px (SqueezeNet) with the 7 px of offset
    padding): 4 for 32 x 32 images, 8 from 64 px (VGG). 1 when none fits (check_size then says why)."""
    from .transforms import downscaled_size, min_size_for_scale

    side, need = min(height, width), 16 if net == "vgg" else 31
    fits = [s for s in range(1, MAX_SCALE + 1)
            if side >= min_size_for_scale(s) and downscaled_size(side, s) + 7 >= need]
    return max(fits) if fits else 1


def _bernoulli_positions(count: int, p: float, generator: Optional[torch.Generator]) -> torch.Tensor:
    """Positions (0..count-1) of the successes of ``count`` independent Bernoulli(p) trials, drawn
    exactly through their geometric gaps: floor(log U / log(1 - p)) + 1 (about p * count uniforms
    instead of count)."""
    log_q = math.log1p(-p)
    chunks, total = [], 0
    while total < count:
        k = int(count * p + 6 * math.sqrt(count * p) + 16)
        u = 1 - torch.rand(k, generator=generator, dtype=torch.float64)  # (0, 1]
        gaps = torch.floor(torch.log(u) / log_q).long() + 1
        pos = torch.cumsum(gaps, 0) + (total - 1)
        chunks.append(pos[pos < count])
        total = int(pos[-1]) + 1
    return torch.cat(chunks)


def dropout_positions(x: torch.Tensor, n: int, groups: int, p: float,
                      generator: Optional[torch.Generator]) -> torch.Tensor:
    """Flat (channels_last order) positions of the dropped elements: a batch of ``n`` draws, the
    same positions in each of the ``groups`` stacked batches."""
    return _positions(x[0].numel(), x.device, n, groups, p, generator)


def _positions(numel: int, device: torch.device, n: int, groups: int, p: float,
               generator: Optional[torch.Generator]) -> torch.Tensor:
    per = n * numel
    idx = _bernoulli_positions(per, p, generator).to(device)
    if groups > 1:
        idx = (idx[None] + torch.arange(groups, device=device)[:, None] * per).reshape(-1)
    return idx


def _positions_in(idx: torch.Tensor, shape: Sequence[int], origin: Tuple[int, int],
                  size: Sequence[int]) -> torch.Tensor:
    """Positions ``idx`` of a (B, C, H, W) tensor's channels_last order that fall in the crop of
    ``size`` (h, w) pixels starting at global pixel ``origin``, as positions of the crop."""
    _, c, h, w = shape
    ch, t = idx % c, idx // c
    col, t = t % w, t // w
    row, b = t % h, t // h
    (r0, c0), (hh, ww) = origin, size
    inside = (row >= r0) & (row < r0 + hh) & (col >= c0) & (col < c0 + ww)
    return (((b * hh + (row - r0)) * ww + (col - c0)) * c + ch)[inside]


def zero_at(x: torch.Tensor, idx: torch.Tensor, inplace: bool) -> torch.Tensor:
    """Zero the elements at channels_last-order positions ``idx`` (in place when allowed)."""
    if inplace and x.is_contiguous(memory_format=torch.channels_last):
        x.permute(0, 2, 3, 1).view(-1).index_fill_(0, idx, 0)
        return x
    nhwc = x.permute(0, 2, 3, 1)
    return nhwc.reshape(-1).index_fill(0, idx, 0).view(nhwc.shape).permute(0, 3, 1, 2)


class _Dropout:
    """The dropout of one trunk pass: keep probability ``keep`` (None: off), masks drawn from
    ``generator`` for batches of ``n`` draws, the same in each of ``groups`` stacked batches."""

    def __init__(self, keep: Optional[float], generator: Optional[torch.Generator], n: int, groups: int,
                 inplace: bool = True) -> None:
        self.keep = keep if keep is not None and keep < 1 else None
        self.generator, self.n, self.groups, self.inplace = generator, n, groups, inplace


_SCALED_WEIGHTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # conv -> (weight key, weight / keep)


def _dropout_weight(conv: nn.Conv2d, keep: float) -> torch.Tensor:
    """``conv.weight * (1 / keep)``, computed once per weight (a VGG trunk's weights are 59 MB:
    scaling them on every pass cost ~5% of a geodesic step) and recomputed when the weight
    changes (another tensor, an in-place update, a dtype or device move; writes through
    ``weight.data`` bypass the version counter and are not seen: assign or ``load_state_dict``
    instead). A weight that records a graph, and anything under ``torch.inference_mode`` (whose
    tensors cannot be saved for a later backward), is scaled on every call."""
    w = conv.weight
    if (torch.is_grad_enabled() and w.requires_grad) or torch.is_inference_mode_enabled() or w.is_inference():
        return w * (1 / keep)
    key = (id(w), w.data_ptr(), w._version, w.dtype, w.device, keep)
    hit = _SCALED_WEIGHTS.get(conv)
    if hit is None or hit[0] != key:
        hit = (key, w.detach() * (1 / keep))
        _SCALED_WEIGHTS[conv] = hit
    return hit[1]


def dropout_conv(conv: nn.Conv2d, h: torch.Tensor, drop: _Dropout, *, shared: bool = False,
                 linear: bool = False) -> Tuple[torch.Tensor, Optional[Tangent]]:
    """``conv`` applied after E-LPIPS dropout: each input element zeroed with probability 1 - keep,
    the 1/keep scale folded into the weights (in place when no gradient is recorded, ``h`` is not
    ``shared`` with another consumer and not kept for a linearization). With ``linear``, also
    ``t -> d conv(dropout(h))[t]`` (the same positions zeroed, no bias); else None. The one definition
    both ELPIPS and the attacks' kept linearization run."""
    h = h.to(conv.weight.dtype)  # reduced precision: the first conv and its layers stay fp32
    if drop.keep is None:
        y = conv(h)
        weight, pos = conv.weight, None
    else:
        pos = dropout_positions(h, drop.n, drop.groups, 1 - drop.keep, drop.generator)
        # in place only when nothing else holds h: not shared, no graph, not kept for a linearization
        inplace = drop.inplace and not (shared or linear or (torch.is_grad_enabled() and h.requires_grad))
        weight = _dropout_weight(conv, drop.keep)
        y = F.conv2d(zero_at(h, pos, inplace), weight, conv.bias, conv.stride, conv.padding)
    if not linear:
        return y, None

    def tangent(t: torch.Tensor) -> torch.Tensor:
        t = t.to(weight.dtype)
        return F.conv2d(t if pos is None else zero_at(t, pos, inplace=False), weight, None, conv.stride, conv.padding)
    return y, tangent


class _Program:
    """The tangent program of a linearized trunk pass: maps applied in order, with ``feature``
    marks where a compared layer's tangent is taken (the first mark: the input itself)."""

    def __init__(self) -> None:
        self.steps: List[Optional[Tangent]] = [None]

    def map(self, fn: Tangent) -> None:
        self.steps.append(fn)

    def feature(self) -> None:
        self.steps.append(None)

    def __call__(self, t: torch.Tensor) -> List[torch.Tensor]:
        out = []
        for fn in self.steps:
            if fn is None:
                out.append(t)
            else:
                t = fn(t)
        return out


def _fire_tangent(fs: Tangent, fa: Tangent, fb: Tangent) -> Tangent:
    def fire(t: torch.Tensor) -> torch.Tensor:
        ts = fs(t)
        return torch.cat([fa(ts), fb(ts)], 1)
    return fire


class _AvgPoolVGG(nn.Module):
    """VGG16 convolutions with 2x2 average pooling, returning the 14 E-LPIPS layers."""

    def __init__(self, vgg: VGG16) -> None:
        super().__init__()
        layers: List[nn.Module] = []
        for s in vgg.slices:
            for m in s:
                layers.append(nn.AvgPool2d(2, 2) if isinstance(m, nn.MaxPool2d) else m)
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, drop: _Dropout, consume: Callable[[torch.Tensor], None],
                program: Optional[_Program] = None) -> None:
        """Hands the 14 layers to ``consume`` as they are computed (layer 0: the input); records
        the tangent maps in ``program`` when given."""
        consume(x)
        for m in self.layers:
            if isinstance(m, nn.Conv2d):
                x, fn = dropout_conv(m, x, drop, linear=program is not None)
            elif program is not None:
                x, fn = linearize_module(m, x)
            else:
                x = m(x)
            if program is not None:
                assert fn is not None  # linear=True: dropout_conv returned the tangent
                program.map(fn)
            if isinstance(m, nn.ReLU):
                consume(x)
                if program is not None:
                    program.feature()


class _FullMaxpoolSqueeze(nn.Module):
    """SqueezeNet1.1 as the release's experimental E-LPIPS variant uses it: 10 compared layers (the
    scaled input, conv1+ReLU, and every fire module's output), max pooling kept with the release's
    'VALID' (floor) rounding, dropout before every convolution including the squeeze and both
    expand convolutions of each fire module (each with its own mask)."""

    def __init__(self, sq) -> None:
        super().__init__()
        feats = [m for s in sq.slices for m in s]
        self.conv1 = feats[0]
        self.fires = nn.ModuleList([m for m in feats if isinstance(m, Fire)])
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2)  # floor: TF 'VALID'
        self.layers = nn.ModuleList(feats)  # parameters (for .to / dtype), in torchvision order

    def forward(self, x: torch.Tensor, drop: _Dropout, consume: Callable[[torch.Tensor], None],
                program: Optional[_Program] = None) -> None:
        linear = program is not None

        def conv(c: nn.Conv2d, h: torch.Tensor, shared: bool = False) -> Tuple[torch.Tensor, Optional[Tangent]]:
            # the squeeze output feeds both expand convs (shared): zero a copy, not h
            y, fn = dropout_conv(c, h, drop, shared=shared, linear=linear)
            if not linear:
                return F.relu(y), None
            y, relu = linearize_module(nn.ReLU(), y)
            assert fn is not None  # linear=True: dropout_conv returned the tangent
            return y, lambda t: relu(fn(t))

        consume(x)
        x, fn = conv(self.conv1, x)
        consume(x)
        if linear:
            assert program is not None and fn is not None  # linear: program given, conv returned the tangent
            program.map(fn)
            program.feature()
        for k, fire in enumerate(cast(Iterable[Fire], self.fires)):
            if k in (0, 2, 4):  # pools before fire3, fire6, fire9
                x, pool = linearize_module(self.pool, x) if linear else (self.pool(x), None)
                if linear:
                    assert program is not None and pool is not None
                    program.map(pool)
            s, fs = conv(fire.squeeze, x)
            (a, fa), (b, fb) = conv(fire.expand1x1, s, True), conv(fire.expand3x3, s, True)
            x = torch.cat([a, b], 1)
            consume(x)
            if linear:
                assert program is not None and fs is not None and fa is not None and fb is not None
                program.map(_fire_tangent(fs, fa, fb))
                program.feature()


@dataclass(frozen=True)
class ELPIPSDraw:
    """The random numbers of one batch of E-LPIPS samples, as an object to keep and pass around.

    ``transforms``: the transformations of ``samples`` draws for batches of ``n`` images (a
    ``TransformSet``; None when the metric's transforms are off); ``dropout_seed``: the seed of
    the generator the dropout masks are drawn from. Every evaluation with the same draw uses the
    same transformations and masks (common random numbers): a fixed-draw attack keeps one draw, an
    expectation-over-transformation attack takes a new one per step, and training can log them.
    Make one with ``ELPIPS.new_draw``; ``ELPIPS.forward`` / ``sample_distances`` accept it.
    """

    samples: int
    n: int
    transforms: Optional[TransformSet]
    dropout_seed: int

    def dropout_generator(self) -> torch.Generator:
        """A fresh generator for the masks: the same masks on every evaluation."""
        return torch.Generator().manual_seed(self.dropout_seed)

    def groups(self, height: int, width: int):
        """[(sample indices, TransformBatch or None)]: the samples grouped by scale level (one trunk pass each)."""
        if self.transforms is None:
            return [(torch.arange(self.samples), None)]
        return self.transforms.groups(height, width)


class ELPIPS(nn.Module):
    """E-LPIPS: ``forward(image, reference)`` -> (N,) distances averaged over ``n_samples``.

    Args (keyword-only):
        net: 'vgg' (E-LPIPS-VGG, the metric) or 'squeeze' (the release's experimental
            E-LPIPS-SqueezeNet: ``squeeze_full_maxpool`` weights, 10 layers, max pooling kept;
            needs SqueezeNet1.1 ImageNet trunk weights, resolved like LPIPS' ``trunk_path`` /
            torch.hub cache, or ``pnet_rand=True`` for a random trunk in tests).
        n_samples: transformations (each with fresh dropout) averaged per call; default 1 (a loss).
        mode: 'batched' (default): the samples of a call are drawn at once (``sample_batched``),
            grouped by scale level, and every group runs as one pass of the fused transform op and
            one trunk pass (chunked to ``memory_budget``); 'official': the release's loop, one
            ``sample_official`` draw and one trunk pass per sample. Both compute the same
            expectation (tests check their agreement).
        transforms / dropout: switch the random transformations / the dropout off (for tests and
            ablations; the metric is E-LPIPS only with both on).
        families: the random families in force, for ablations such as the paper's Fig. 3 (default
            all seven, ``fastlpips.transforms.FAMILIES``: 'scale', 'translation', 'flip', 'swap',
            'permutation', 'color', 'dropout'); the others take their identity values (see
            ``FAMILIES``; without 'scale', ``max_scale`` is 1). ``transforms=False`` /
            ``dropout=False`` remove the six transformation families / dropout from this set.
        keep_prob: dropout keep probability (0.99).
        max_scale: largest scale level (1..8; the release's default is 8; see
            ``scale_levels_for_size`` for small images).
        dtype: reduced-precision trunk, ``torch.bfloat16`` / ``'bf16'`` (or fp16): every conv but
            the first runs in that dtype (the input, conv1_1 and their two layers stay fp32: cheap,
            and where bf16's rounding of the image would bias the distance most); heads accumulate
            in fp32. ``'auto'``: bf16 only where it is faster than fp32 on ``device`` (see
            ``fastlpips.precision``); an explicit bf16 on a CPU without native bf16 warns once.
        device: move the metric there after construction; also the device ``dtype='auto'``
            decides for (default CPU).
        check_inputs: scan input values on every call (NaN/Inf raise, values outside [0, 1] warn;
            one device sync per input), as ``LPIPS(check_inputs=...)``; shape, dtype, device and
            size checks always run (``validate``).
        memory_budget: bytes of activations one trunk pass may take (default None: 1 GiB for
            the chunks, ``nets.tiling.default_budget`` for tiling); larger groups are split into
            chunks of samples, and a pass over images too large for it (one sample) runs tiled
            (``fastlpips.nets.tiling``, E-LPIPS-VGG): the same masks and numbers to rounding,
            gradients through per-tile recomputation.
        max_tile: tile every trunk pass whose images are larger than this (a side or (height,
            width) in pixels of the transformed image), whatever the budget (E-LPIPS-VGG).
        trunk_path, backend: as for ``fastlpips.LPIPS`` (``backend`` picks the head and transform kernels).

    ``image`` may be a tuple of image batches: each is compared with ``reference`` under the same
    transformations and dropout (the official "third image" use). Images are (N, 3, H, W) in [0, 1].
    """

    weights: torch.Tensor  # buffer (the layers' channel weights, concatenated), registered in __init__

    def __init__(self, *, net: str = "vgg", n_samples: int = 1, mode: str = "batched", transforms: bool = True,
                 dropout: bool = True, keep_prob: float = 0.99, max_scale: int = MAX_SCALE,
                 dtype: Union[torch.dtype, str, None] = None, memory_budget: Optional[int] = None,
                 trunk_path: Optional[Union[str, os.PathLike]] = None, pnet_rand: bool = False,
                 backend: Optional[str] = None, device: Union[str, torch.device, None] = None,
                 check_inputs: bool = True, families: Optional[Iterable[str]] = None,
                 max_tile: Union[int, Tuple[int, int], None] = None) -> None:
        super().__init__()
        self.max_tile = V.check_tile(max_tile)
        self._stack: Optional[tiling.LocalStack] = None
        if self.max_tile is not None and net != "vgg":
            raise ValueError("max_tile: tiled passes are implemented for E-LPIPS-VGG (net='vgg'), not net='squeeze'")
        if net not in ("vgg", "squeeze"):
            raise ValueError(f"net must be 'vgg' (E-LPIPS-VGG) or 'squeeze' (the experimental E-LPIPS-SqueezeNet), "
                             f"got {net!r}")
        n_samples = V.check_positive_int(n_samples, "n_samples")
        if mode not in ("batched", "official"):
            raise ValueError(f"mode must be 'batched' or 'official', got {mode!r}")
        if not 0 < keep_prob <= 1:
            raise ValueError(f"keep_prob must be in (0, 1], got {keep_prob}")
        if not 1 <= max_scale <= MAX_SCALE:
            raise ValueError(f"max_scale must be in 1..{MAX_SCALE}, got {max_scale}")
        dtype = resolve_elpips_dtype(dtype, device, net)
        memory_budget = V.check_budget(memory_budget)
        fam = check_families(families)
        if not transforms:
            fam = fam - set(TRANSFORM_FAMILIES)
        if not dropout:
            fam = fam - {"dropout"}
        self.families = fam
        transforms, dropout = bool(fam & set(TRANSFORM_FAMILIES)), "dropout" in fam
        self.n_samples, self.mode, self.transforms, self.dropout = n_samples, mode, transforms, dropout
        self.keep_prob, self.max_scale, self.backend = keep_prob, max_scale if "scale" in fam else 1, backend
        self.compute_dtype, self.memory_budget = dtype, memory_budget
        self.net_name = net
        self.scaling_layer = ScalingLayer()
        trunk = VGG16() if net == "vgg" else SqueezeNet()
        if not pnet_rand:
            load_trunk_state(trunk, net, trunk_path)
        trunk.requires_grad_(False)
        self.net = _AvgPoolVGG(cast(VGG16, trunk)) if net == "vgg" else _FullMaxpoolSqueeze(trunk)
        self.net.to(memory_format=torch.channels_last)
        if dtype is not None:  # all but the first conv: the input and conv1_1 (cheap) stay fp32
            self.net.to(dtype)
            self.net.layers[0].float()
        lin = load_lin_weights("elpips", "vgg_full_avg" if net == "vgg" else "squeeze_full_maxpool")
        count = len(lin)
        self.register_buffer("weights", torch.cat([lin[f"lin{k}"].reshape(-1) for k in range(count)]))
        self.channels = [lin[f"lin{k}"].numel() for k in range(count)]
        self._warned: dict = {}
        self.check_inputs = check_inputs
        self.eval()
        if device is not None:
            self.to(device)

    def layer_weights(self) -> List[torch.Tensor]:
        """The per-layer channel weights (``vgg_full_avg`` / ``squeeze_full_maxpool``), in layer order."""
        return list(torch.split(self.weights, self.channels))

    @property
    def sampled_families(self) -> Optional[frozenset]:
        """The families to pass to the samplers: None when every transformation family is on
        (the release's draws, bit for bit), else ``families``."""
        return None if set(TRANSFORM_FAMILIES) <= self.families else self.families

    @property
    def keep(self) -> Optional[float]:
        """The dropout keep probability in force (None: dropout off)."""
        return self.keep_prob if self.dropout else None

    @property
    def layers(self) -> nn.ModuleList:
        """The trunk's modules in order (convolutions, ReLUs, poolings; Fire modules for SqueezeNet)."""
        return self.net.layers

    def trunk_input(self, x: torch.Tensor, tb=None, count: int = 1) -> torch.Tensor:
        """Images in [0, 1] (B, 3, H, W) -> the trunk's input: the transformations of ``tb`` (a
        ``TransformBatch``; None: ``count`` copies), then ``2x - 1`` and the LPIPS scaling."""
        xt = batched_transform(x, tb, backend=self.backend) if tb is not None else x.repeat(count, 1, 1, 1)
        return self.scaling_layer(xt * 2 - 1)

    def run_trunk(self, x: torch.Tensor, generator: Optional[torch.Generator],
                  consume: Callable[[torch.Tensor], None], groups: int = 1, *, inplace: bool = True) -> None:
        """The trunk on a trunk input; ``consume`` receives each compared layer (layer 0: the input)
        as it is computed. Dropout masks are drawn from ``generator``; ``x`` may hold ``groups``
        stacked batches that share every mask. Give ``x`` in channels_last for speed. Without a
        graph, dropout zeroes a consumed layer in place afterwards unless ``inplace=False`` (for
        consumers that keep the layers)."""
        self.net(x, _Dropout(self.keep, generator, x.shape[0] // groups, groups, inplace), consume)

    def shared_pass(self, x: torch.Tensor, draw: "ELPIPSDraw", consume: Callable[[int, int, torch.Tensor], None],
                    *, inplace: bool = True) -> None:
        """Every image of ``x`` (B, 3, H, W) under the transformations and dropout masks of ``draw``,
        a draw for ONE image (``new_draw(samples, 1)``), shared by all B images: images compared
        with each other (barycenters, geodesics) then see the same transformations and masks, as
        a pair does in ``forward``. Per scale group, the transformed batch is image-major (image
        b's ``s`` samples are rows b*s .. b*s + s-1) and ``consume(group, layer, f)`` receives the
        group's ordinal, the layer number (0: the input) and the layer (B*s, C, h, w). The masks'
        generator restarts on every call, so separate calls (any B) draw the same masks."""
        if draw.n != 1:
            raise ValueError(f"shared_pass needs a draw for one image (new_draw(samples, 1)), got one for {draw.n}")
        b, _, h, w = x.shape
        gen = draw.dropout_generator()
        for g, (idx, tb) in enumerate(draw.groups(h, w)):
            s = len(idx)
            if tb is not None:  # the one image's parameters for each of the b images (sample-major rows)
                tb = TransformBatch(tb.scale, tb.params.repeat_interleave(b, 0), tb.colors.repeat_interleave(b, 0), b)
            xt = self.trunk_input(x, tb, s)
            xt = xt.view(s, b, *xt.shape[1:]).transpose(0, 1).reshape(b * s, *xt.shape[1:])
            layer = itertools.count()

            def fed(f: torch.Tensor, g: int = g) -> None:
                consume(g, next(layer), f)

            self.run_trunk(xt.contiguous(memory_format=torch.channels_last), gen, fed, groups=b, inplace=inplace)

    def linearize_trunk(self, x: torch.Tensor, generator: Optional[torch.Generator]
                        ) -> Tuple[List[torch.Tensor], Callable[[torch.Tensor], List[torch.Tensor]]]:
        """The trunk at ``x`` and its derivative kept for many products: (the compared layers,
        ``t -> their tangents``). One primal pass draws the dropout masks from ``generator``
        exactly as ``run_trunk`` does and records the dropped positions, ReLU masks and max-pool
        indices; each tangent call is then a pass of bias-free convolutions, masks and gathers."""
        layers: List[torch.Tensor] = []
        program = _Program()
        self.net(x, _Dropout(self.keep, generator, x.shape[0], 1), layers.append, program)
        return layers, program

    def new_draw(self, samples: int, n: int, *, generator: Optional[torch.Generator] = None,
                 seed: Optional[int] = None) -> ELPIPSDraw:
        """Draw the transformations and the dropout seed of ``samples`` samples for batches of ``n``
        images: from ``generator``, or from ``seed`` (transforms from a generator seeded with it,
        masks from seed + 7919), or fresh."""
        samples = V.check_positive_int(samples, "samples")
        if seed is not None:
            generator, dropout_seed = torch.Generator().manual_seed(seed), seed + 7919
        else:
            generator = generator if generator is not None else torch.Generator().manual_seed(
                int(torch.randint(2**62, (1,))))
            dropout_seed = None
        tset = sample_batched(samples, n, generator=generator, max_scale=self.max_scale,
                              families=self.sampled_families) if self.transforms else None
        if dropout_seed is None:
            dropout_seed = int(torch.randint(2**62, (1,), generator=generator))
        return ELPIPSDraw(samples, n, tset, dropout_seed)

    def _distances(self, batch: List[torch.Tensor], per: int,
                   generator: Optional[torch.Generator]) -> List[torch.Tensor]:
        """Trunk + heads for stacked members (images..., reference), each of ``per`` images in the
        scale [0, 1]; one dropout mask per element of a member, shared by all members. Each layer's
        head runs as soon as the layer exists (dropout then zeroes the next conv's input in place)."""
        x = self.scaling_layer(torch.cat(batch) * 2 - 1)
        grad = torch.is_grad_enabled() and x.requires_grad
        tile = self._tile(x.shape[2], x.shape[3], x.shape[0], grad)
        if tile is not None:
            return self._distances_tiled(x, len(batch), per, generator, tile, grad)
        out: List[Union[float, torch.Tensor]] = [0.0] * (len(batch) - 1)
        weights = iter(self.layer_weights())

        def consume(f: torch.Tensor) -> None:
            w = next(weights)
            parts = torch.split(f, per)
            for i in range(len(out)):
                out[i] = out[i] + lpips_head_map(parts[i], parts[-1], w, backend=self.backend).mean((1, 2, 3))

        self.run_trunk(x.contiguous(memory_format=torch.channels_last), generator, consume, groups=len(batch))
        return cast(List[torch.Tensor], out)  # every layer's head added a tensor to each 0.0

    # -- tiled passes (large images) --------------------------------------------------------------
    def local_stack(self) -> tiling.LocalStack:
        """The VGG trunk as ``nets.tiling`` runs it; compared: the input and every ReLU output."""
        if self.net_name != "vgg":
            raise ValueError("tiled passes are implemented for E-LPIPS-VGG, not the experimental SqueezeNet variant "
                             "(its fire modules drop out inside); leave max_tile unset")
        if self._stack is None:  # made once: it remembers its tile choices
            layers = list(self.net.layers)
            self._stack = tiling.LocalStack(layers, [0] + [i + 1 for i, m in enumerate(layers)
                                                           if isinstance(m, nn.ReLU)])
        return self._stack

    def _tile(self, height: int, width: int, batch: int, grad: bool) -> Optional[Tuple[int, int]]:
        """The tile of a trunk pass over ``batch`` images (None: untiled): ``max_tile`` when an
        image is larger, else by ``memory_budget`` (E-LPIPS-VGG only)."""
        if self.net_name != "vgg":  # (max_tile is refused for it at construction)
            return None
        return self.local_stack().tile_for(height, width, batch, self.weights.element_size(), grad,
                                           max_tile=self.max_tile, budget=self.memory_budget,
                                           device=self.weights.device, what="the E-LPIPS-VGG trunk")

    def _distances_tiled(self, x: torch.Tensor, members: int, per: int, generator: Optional[torch.Generator],
                         tile: Tuple[int, int], grad: bool) -> List[torch.Tensor]:
        """``_distances`` tile by tile: the dropout positions of every convolution's input drawn
        first for the whole maps, in the order the untiled pass draws them (the same masks), each
        tile zeroing those inside its crops."""
        stack = self.local_stack()
        height, width = x.shape[2], x.shape[3]
        sizes = stack.sizes(height, width)
        tiles = stack.plan(height, width, tile)
        drop = _Dropout(self.keep, generator, per, members)
        positions = {}
        if drop.keep is not None:
            for i, m in enumerate(stack.layers):
                if isinstance(m, nn.Conv2d):
                    h, w = sizes[i]
                    positions[i] = _positions(stack.channels[i] * h * w, x.device, per, members, 1 - drop.keep,
                                              generator)
        weights = self.layer_weights()

        def apply(i: int, m: nn.Module, h: torch.Tensor, origin: Tuple[int, int]) -> torch.Tensor:
            if not isinstance(m, nn.Conv2d) or drop.keep is None:
                return tiling.apply_padded(m, h)
            h = h.to(m.weight.dtype)
            full = (per * members, stack.channels[i], sizes[i][0], sizes[i][1])
            h = zero_at(h, _positions_in(positions[i], full, origin, h.shape[2:]), inplace=False)
            return F.conv2d(h, _dropout_weight(m, drop.keep), m.bias, m.stride, 0)

        def one_tile(t: tiling.Tile, xx: torch.Tensor) -> List[torch.Tensor]:
            sums = [xx.new_zeros((members - 1, per), dtype=torch.float32 if xx.dtype != torch.float64 else xx.dtype)
                    for _ in stack.outputs]

            def source(r, c) -> torch.Tensor:
                return xx[:, :, r[0]:r[1], c[0]:c[1]].contiguous(memory_format=torch.channels_last)

            def emit(j: int, f: torch.Tensor) -> None:
                parts = torch.split(f, per)
                sums[j] = torch.stack([lpips_head_map(parts[i], parts[-1], weights[j], backend=self.backend).sum(
                    (1, 2, 3)) for i in range(members - 1)]).to(sums[j].dtype)

            stack.run(t, source, emit, sizes, apply)
            return sums

        parts = tiling.run_tiles(tiles, one_tile, [x], grad, self.memory_budget)
        total: Union[float, torch.Tensor] = 0.0
        for j, pos in enumerate(stack.outputs):
            h, w = sizes[pos]
            total = total + torch.stack([p[j] for p in parts]).sum(0) / (h * w)
        assert isinstance(total, torch.Tensor)  # at least one compared layer
        return list(total.unbind(0))

    def distance_once(self, images: Sequence[torch.Tensor], reference: torch.Tensor,
                      generator: Optional[torch.Generator], scale: Optional[int] = None) -> List[torch.Tensor]:
        """One sample as the release computes it: a ``sample_official`` transformation (applied by
        the plain reference ``apply_transform``) and dropout shared by every image; a (N,)
        distance per image. ``scale`` fixes the transformation's scale level (stratified sampling)."""
        n = reference.shape[0]
        batch = list(images) + [reference]
        if self.compute_dtype is not None:
            warn_if_slow(self.compute_dtype, reference.device)
        if self.transforms:
            p = sample_official(n, generator=generator, max_scale=self.max_scale, scale=scale,
                                families=self.sampled_families)
            batch = [apply_transform(b, p) for b in batch]
        return self._distances(batch, n, generator)

    def sample_distances(self, images: Sequence[torch.Tensor], reference: torch.Tensor, samples: int, *,
                         generator: Optional[torch.Generator] = None,
                         transforms: Optional[TransformSet] = None,
                         draw: Optional[ELPIPSDraw] = None) -> List[torch.Tensor]:
        """(samples, N) distances per image for ``samples`` independent draws (``sample_batched``,
        or the given ``transforms``, or the transformations and dropout masks of ``draw``), grouped
        by scale level: each group is one fused transform pass and one trunk pass (split into
        chunks that fit ``memory_budget``)."""
        n, h, w = reference.shape[0], reference.shape[2], reference.shape[3]
        if draw is not None:
            if transforms is not None:
                raise ValueError("give either transforms or draw, not both")
            if (draw.samples, draw.n) != (samples, n):
                raise ValueError(f"the draw holds {draw.samples} samples for batches of {draw.n} images; "
                                 f"expected {samples} for {n}")
            if (draw.transforms is None) == self.transforms:
                raise ValueError("the draw was made by a metric with transforms="
                                 f"{draw.transforms is not None}; this one has transforms={self.transforms}")
            transforms, generator = draw.transforms, draw.dropout_generator()
        members = list(images) + [reference]
        if self.compute_dtype is not None:
            warn_if_slow(self.compute_dtype, reference.device)
        groups: Sequence[Tuple[torch.Tensor, Optional[TransformBatch]]]
        if self.transforms:
            if transforms is None:
                transforms = sample_batched(samples, n, generator=generator, max_scale=self.max_scale,
                                            families=self.sampled_families)
            if transforms.samples != samples or transforms.n != n:
                raise ValueError(f"transforms hold {transforms.samples} samples for {transforms.n} images; "
                                 f"expected {samples} for {n}")
            groups = transforms.groups(h, w)
        else:
            groups = [(torch.arange(samples), None)]
        out = [reference.new_zeros((samples, n), dtype=torch.float64 if reference.dtype == torch.float64
                                   else torch.float32) for _ in images]
        for idx, tb in groups:
            oh, ow = tb.out_size(h, w) if tb is not None else (h, w)
            step = self._chunk(len(members) * n, oh, ow,
                               torch.is_grad_enabled() and any(m.requires_grad for m in members))
            for a in range(0, len(idx), step):
                part = idx[a:a + step]
                if tb is not None:
                    sub = tb.select(a, a + len(part))
                    batch = [batched_transform(m, sub, backend=self.backend) for m in members]
                else:
                    batch = [m.repeat(len(part), 1, 1, 1) for m in members]
                d = self._distances(batch, len(part) * n, generator)
                for i in range(len(images)):
                    out[i] = out[i].index_put((part.to(out[i].device),), d[i].view(len(part), n).to(out[i].dtype))
        return out

    def _chunk(self, images_per_sample: int, h: int, w: int, grad: bool) -> int:
        """Samples per trunk pass: activations of the 14 layers ~ 273 h w values per image (x3 with
        a graph for the backward), within ``memory_budget``."""
        elem = self.weights.element_size()  # not the reduced dtype: same chunks (and dropout draws) as fp32
        per_sample = images_per_sample * 273 * h * w * elem * (3 if grad else 1)
        return max(1, (self.memory_budget if self.memory_budget is not None else CHUNK_BUDGET) // per_sample)

    def forward(self, image: Union[torch.Tensor, Tuple[torch.Tensor, ...]], reference: torch.Tensor, *,
                n_samples: Optional[int] = None, generator: Optional[torch.Generator] = None,
                draw: Optional[ELPIPSDraw] = None):
        """(N,) distances averaged over ``n_samples`` samples (or over the samples of ``draw``:
        the same transformations and dropout masks on every call, see ``ELPIPSDraw``)."""
        images = tuple(image) if isinstance(image, (tuple, list)) else (image,)
        self.validate(images, reference)
        if generator is None:
            generator = torch.Generator().manual_seed(int(torch.randint(2**62, (1,))))
        k = self.n_samples if n_samples is None else V.check_positive_int(n_samples, "n_samples")
        if draw is not None:
            if n_samples is not None and n_samples != draw.samples:
                raise ValueError(f"n_samples={n_samples} but the draw holds {draw.samples} samples")
            result = tuple(d.mean(0) for d in self.sample_distances(images, reference, draw.samples, draw=draw))
        elif self.mode == "batched":
            result = tuple(d.mean(0) for d in self.sample_distances(images, reference, k, generator=generator))
        else:
            total = None
            for _ in range(k):
                d = self.distance_once(images, reference, generator)
                total = d if total is None else [a + b for a, b in zip(total, d)]
            assert total is not None  # k >= 1 samples
            result = tuple(t / k for t in total)
        return result if isinstance(image, (tuple, list)) else result[0]

    def validate(self, images: Sequence[torch.Tensor], reference: torch.Tensor) -> None:
        """Shapes, values and sizes, with named errors: floating-point (N, 3, H, W) batches of one
        size, dtype and device; with ``check_inputs`` NaN/Inf raise and values outside [0, 1] warn
        once per metric (E-LPIPS takes [0, 1] images, unlike LPIPS' [-1, 1]); the transforms need
        sides >= 8 * max_scale, the trunk >= 9 with transforms, 16 without."""
        if not images:
            raise ValueError("no images to compare with the reference")
        V.check_image(reference, "reference", hint=V.UNIT_HINT)
        for i, im in enumerate(images):
            V.check_image(im, f"image[{i}]", hint=V.UNIT_HINT)
            V.check_pair(im, reference, f"image[{i}]", "reference")
            if im.shape[0] != reference.shape[0]:
                raise ValueError(f"image[{i}] has batch {im.shape[0]} but reference {reference.shape[0]}")
        dev = self.weights.device
        for i, im in enumerate(list(images) + [reference]):
            name = "reference" if i == len(images) else f"image[{i}]"
            if im.device != dev:
                raise ValueError(f"{name} is on {im.device} but the metric is on {dev}; move one with .to()")
            if self.check_inputs:
                V.check_values(im, name, 0.0, 1.0, self._warned, hint=V.unit_range_hint)
        self.check_size(reference.shape[2], reference.shape[3])

    def check_size(self, h: int, w: int) -> None:
        """Images of h x w fit the transformations and the trunk, else a ValueError saying what fits."""
        if self.transforms and min(h, w) < min_size_for_scale(self.max_scale):
            raise ValueError(f"images of {h}x{w} are too small for scale levels up to {self.max_scale} (the "
                             f"downscaled image must be >= 8 px); use ELPIPS(max_scale={max(1, min(h, w) // 8)}) "
                             f"or the release's rule scale_levels_for_size(h, w) = {scale_levels_for_size(h, w)}")
        # the trunk's poolings need >= 16 px (VGG: four 2x2) or >= 31 px (SqueezeNet: a stride-2 conv and
        # three 3x3/2 pools): the downscaled + 7 px padded image at the largest level (the smallest one)
        need = 16 if self.net_name == "vgg" else 31
        if not self.transforms:
            if min(h, w) < need:
                raise ValueError(f"images of {h}x{w} are too small for the {self.net_name} trunk: sides must be >= "
                                 f"{need} px through its poolings")
            return
        side = min(h, w)
        if downscaled_size(side, self.max_scale) + 7 >= need:
            return
        if side + 7 < need:  # not even at level 1
            raise ValueError(f"images of {h}x{w} are too small for the {self.net_name} trunk: sides must be >= "
                             f"{need - 7} (+ 7 px of offset padding >= {need} px through its poolings)")
        fits = max(s for s in range(1, self.max_scale) if downscaled_size(side, s) + 7 >= need)
        raise ValueError(f"images of {h}x{w} are too small for the {self.net_name} trunk at scale level "
                         f"{self.max_scale}: "
                         f"the downscaled image ({downscaled_size(side, self.max_scale)} px + 7 px of offset padding) "
                         f"must be >= {need} px through its poolings; use ELPIPS(max_scale={fits})")
