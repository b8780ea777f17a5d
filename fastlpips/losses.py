"""Image losses as ``nn.Module``s with a shared feature pass.

Every loss is called as ``loss(x, y)`` with ``x`` the prediction and ``y`` the target, image batches
(N, 3, H, W) in [0, 1] (batch 1 broadcasts against N), and returns a 0-dim tensor; gradients flow to
whichever input requires them (float32 and float64; double backward through plain autograd ops).

* ``PerceptualLoss`` -- Johnson et al.'s feature reconstruction loss on VGG-19 ReLU outputs,
  ``sum_l w_l * mean((phi_l(x) - phi_l(y))^2)``;
* ``TextureLoss`` -- EnhanceNet's texture matching loss: Gram matrices of non-overlapping 16x16
  patches of each feature map, ``sum_l w_l * mean_{n, patch} ||G_l(x) - G_l(y)||_F^2``;
* ``PixelLoss`` -- MSE or L1 on the pixels;
* ``LPIPSLoss`` / ``ELPIPSLoss`` -- ``fastlpips.LPIPS`` / ``fastlpips.ELPIPS`` averaged over the
  batch (their fused heads);
* ``CombinedLoss`` -- a weighted sum, also built with ``+`` and ``*`` (``0.5 * a + b``); losses on
  one VGG trunk share a single trunk pass per input on the union of their layers, and
  ``forward(..., return_parts=True)`` returns the parts for logging.

Defaults follow Uelwer et al. (after EnhanceNet; ``docs/REFERENCE.md`` section 8): perceptual loss on
"conv2/conv5 after ReLU" with weights 0.2 / 0.02, texture loss on "conv1/3/5" with weights
3e-7 / 1e-6 / 1e-6 on 16x16 patches, pixel MSE. "convK" is read here as the output of VGG-19's block
K, after its last ReLU (the tensor max pool K reads; Johnson et al.'s convention for both their
losses): perceptual ``relu2_2, relu5_4``, texture ``relu1_2, relu3_4, relu5_4``. The other reading
(the first ReLU of block K, Gatys et al.'s style layers: ``relu1_1, relu3_1, relu5_1``; EnhanceNet's
own texture layers are ``relu1_1, relu2_1, relu3_1``) is one argument away: ``layers`` takes any
ReLU name of the trunk (``VGG19.relu_indices``: ``relu1_1`` ... ``relu5_4``).

The trunk (default: ImageNet VGG-19, ``fastlpips.nets.pretrained_trunk('vgg19')``: torchvision's
weights, resolved as ``fastlpips.nets.weights`` describes) sees ImageNet-normalized input,
``(x - IMAGENET_MEAN) / IMAGENET_STD`` for x in [0, 1], as torchvision's VGG-19 was trained; it is
frozen (``requires_grad=False``), in eval mode and channels_last. The feature magnitudes of this
trunk differ from those of the papers' (Caffe) networks, so the paper weights balance the terms only
roughly; tune them for a task.
"""
from __future__ import annotations

import numbers
import os
from typing import Dict, Iterable, Iterator, List, Mapping, Optional, Protocol, Sequence, Tuple, Union, cast

import torch
from torch import nn

from . import validation as V
from .elpips import ELPIPS, resolve_elpips_dtype
from .model import LPIPS
from .nets import pretrained_trunk
from .nets.trunks import build_trunk
from .nets.weights import IMAGENET_MEAN, IMAGENET_STD, WeightError
from .ops.head import lpips_head_map
from .precision import resolve_dtype

__all__ = ["Loss", "FeatureLoss", "PerceptualLoss", "TextureLoss", "PixelLoss", "LPIPSLoss", "ELPIPSLoss",
           "CombinedLoss", "patch_gram", "PERCEPTUAL_LAYERS", "TEXTURE_LAYERS"]

# Uelwer et al.'s weights on the block outputs (see the module docstring for the layer reading).
PERCEPTUAL_LAYERS: Dict[str, float] = {"relu2_2": 0.2, "relu5_4": 0.02}
TEXTURE_LAYERS: Dict[str, float] = {"relu1_2": 3e-7, "relu3_4": 1e-6, "relu5_4": 1e-6}

TrunkArg = Union[None, str, "os.PathLike[str]", nn.Module]


class _FeatureTrunk(Protocol):
    """A fastlpips trunk module (``fastlpips.nets.trunks``) as the losses use it (for typing only;
    ``_resolve_trunk`` checks that a module passed in has the trunk attributes)."""

    relu_indices: Mapping[str, int]

    @property
    def slices(self) -> Sequence[nn.Module]: ...

    def relu_outputs(self, x: torch.Tensor, names: Sequence[str]) -> Dict[str, torch.Tensor]: ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...

    def eval(self) -> nn.Module: ...


# -- input checks ---------------------------------------------------------------------------------
def _check_images(x: torch.Tensor, y: torch.Tensor, channels: Optional[int] = 3) -> None:
    """x (prediction) and y (target): floating (N, C, H, W) batches of one size, dtype and device."""
    V.check_image(x, "x (prediction)", channels=channels, hint=V.UNIT_HINT, allow_empty=False)
    V.check_image(y, "y (target)", channels=channels, hint=V.UNIT_HINT, allow_empty=False)
    V.check_pair(x, y, "x (prediction)", "y (target)")


def _window(size: int, m: nn.Module, axis: int) -> int:
    """Output length along one axis of a Conv2d / MaxPool2d window (PyTorch's formula, 0 when empty)."""
    def at(v):
        return int(v[axis]) if isinstance(v, (tuple, list)) else int(v)
    k, s, p, d = at(m.kernel_size), at(m.stride), at(m.padding), at(m.dilation)
    span = size + 2 * p - d * (k - 1) - 1
    if size <= 0 or span < 0:
        return 0
    if getattr(m, "ceil_mode", False):
        out = -(-span // s) + 1
        if (out - 1) * s >= size + p:
            out -= 1
    else:
        out = span // s + 1
    return max(out, 0)


def _feature_sizes(trunk: _FeatureTrunk, h: int, w: int, names: Iterable[str]) -> Dict[str, Tuple[int, int]]:
    """Spatial size of the named ReLU outputs of ``trunk`` for an h x w input (no pass is run)."""
    want = {trunk.relu_indices[n]: n for n in names}
    out: Dict[str, Tuple[int, int]] = {}
    for s in trunk.slices:
        for key, m in s.named_children():
            if isinstance(m, (nn.Conv2d, nn.MaxPool2d)):
                h, w = _window(h, m, 0), _window(w, m, 1)
            if int(key) in want:
                out[want[int(key)]] = (h, w)
    return out


def _resolve_trunk(trunk: TrunkArg, pnet_rand: bool = False) -> Tuple[_FeatureTrunk, Optional[tuple]]:
    """(trunk module, source key) -- the key names weights known to be identical (the default and
    checkpoint trunks) so that separately built losses still share one feature pass."""
    module: nn.Module
    if pnet_rand:
        if trunk is not None:
            raise ValueError("pnet_rand=True builds a random VGG-19; do not pass trunk as well")
        module, source = build_trunk("vgg19"), None
    elif trunk is None or isinstance(trunk, (str, os.PathLike)):
        try:
            module = pretrained_trunk("vgg19", trunk)
        except WeightError as e:
            raise type(e)(f"{e}\nFor fastlpips.losses: pass trunk=PATH (a weight file or checkpoint), a trunk "
                          f"module, or pnet_rand=True (random VGG-19).") from e
        source = ("vgg19", None if trunk is None else os.path.abspath(os.fspath(trunk)))
    elif isinstance(trunk, nn.Module):
        if not (hasattr(trunk, "relu_outputs") and hasattr(trunk, "relu_indices") and hasattr(trunk, "slices")):
            raise TypeError(f"trunk must be a fastlpips trunk (fastlpips.nets.trunks: relu_outputs, relu_indices), "
                            f"e.g. fastlpips.nets.pretrained_trunk('vgg19'); got {type(trunk).__name__}")
        module, source = trunk, None
    else:
        raise TypeError(f"trunk must be None (ImageNet VGG-19), a checkpoint path or a fastlpips trunk module, "
                        f"got {type(trunk).__name__}")
    module.requires_grad_(False)
    module.eval()
    # a fastlpips trunk: built here, or a module with the trunk attributes checked above
    return cast(_FeatureTrunk, module.to(memory_format=torch.channels_last)), source


def _layers_and_weights(trunk: _FeatureTrunk, layers, weights, default: Mapping[str, float], cls: str):
    """((names...), (weights...)) from ``layers`` (names, or a {name: weight} dict) and ``weights``."""
    if layers is None:
        if weights is not None:
            raise ValueError(f"{cls}: weights given without layers; give both (or layers as a {{name: weight}} dict)")
        layers = dict(default)
    if isinstance(layers, str):
        layers = [layers]
    if isinstance(layers, Mapping):
        if weights is not None:
            raise ValueError(f"{cls}: layers is a {{name: weight}} dict, so weights must not be given as well")
        names, ws = list(layers.keys()), list(layers.values())
    else:
        names = list(layers)
        ws = [1.0] * len(names) if weights is None else ([weights] if isinstance(weights, numbers.Real)
                                                         else list(weights))
        if len(ws) != len(names):
            raise ValueError(f"{cls}: {len(names)} layers {names} but {len(ws)} weights {ws}")
    if not names:
        raise ValueError(f"{cls}: no layers given; choose some of {list(trunk.relu_indices)}")
    bad = [n for n in names if not isinstance(n, str) or n not in trunk.relu_indices]
    if bad:
        raise ValueError(f"{cls}: unknown layer name(s) {bad} for the {type(trunk).__name__} trunk; "
                         f"expected some of {list(trunk.relu_indices)}")
    if len(set(names)) != len(names):
        raise ValueError(f"{cls}: layer names repeat: {names}")
    return tuple(names), tuple(V.check_number(w, f"{cls} weight of {n}") for n, w in zip(names, ws))


# -- the loss algebra -----------------------------------------------------------------------------
class Loss(nn.Module):
    """Base of the losses: ``loss(x, y)`` -> 0-dim tensor; ``a + b``, ``w * a`` build a
    ``CombinedLoss`` (``sum([a, b])`` works too)."""

    name = "loss"

    def _terms(self) -> List[Tuple[str, "Loss", float]]:
        return [(self.name, self, 1.0)]

    def __add__(self, other):
        if isinstance(other, numbers.Number) and other == 0:  # sum()'s start value
            return CombinedLoss._from_terms(self._terms())
        if not isinstance(other, Loss):
            return NotImplemented
        return CombinedLoss._from_terms(self._terms() + other._terms())

    def __radd__(self, other):
        if isinstance(other, numbers.Number) and other == 0:
            return CombinedLoss._from_terms(self._terms())
        return NotImplemented

    def __mul__(self, weight):
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
            return NotImplemented
        w = V.check_number(weight, "a loss weight")
        return CombinedLoss._from_terms([(n, loss, w * lw) for n, loss, lw in self._terms()])

    __rmul__ = __mul__


class FeatureLoss(Loss):
    """A loss computed from ReLU outputs of a frozen trunk: ``layers`` (names), ``trunk``,
    ``from_features(fx, fy)``. ``CombinedLoss`` runs one trunk pass for all of them that share a trunk."""

    layers: Tuple[str, ...] = ()
    mean: torch.Tensor  # buffers (ImageNet normalization), registered in __init__
    std: torch.Tensor

    def __init__(self, trunk: TrunkArg = None, check_inputs: bool = True, pnet_rand: bool = False) -> None:
        super().__init__()
        self.trunk, self._source = _resolve_trunk(trunk, pnet_rand)
        self.check_inputs = check_inputs
        self._warned: dict = {}
        dtype = next(self.trunk.parameters()).dtype
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN, dtype=dtype).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD, dtype=dtype).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.trunk.eval()  # frozen feature extractor: always eval
        return self

    # -- checks --------------------------------------------------------------------------------
    @property
    def _param(self) -> torch.Tensor:
        return next(self.trunk.parameters())

    def validate(self, x: torch.Tensor, y: torch.Tensor, *, scan: Optional[bool] = None) -> None:
        """Shapes, dtypes, devices and sizes (always); with ``check_inputs`` (or ``scan``) NaN/Inf
        raise and values outside [0, 1] warn once per loss."""
        _check_images(x, y)
        p = self._param
        V.check_model_match(x, p.device, p.dtype, "x (prediction)")
        h, w = x.shape[2], x.shape[3]
        sizes = _feature_sizes(self.trunk, h, w, self.layers)
        empty = [n for n, (a, b) in sizes.items() if a < 1 or b < 1]
        if empty:
            need = next(s for s in range(1, 4096) if min(min(v) for v in
                                                         _feature_sizes(self.trunk, s, s, self.layers).values()) >= 1)
            raise ValueError(f"images of {h}x{w} are too small for the {type(self.trunk).__name__} trunk up to "
                             f"{empty[-1]}: it needs at least {need}x{need}")
        self._check_sizes(h, w, sizes)
        if self.check_inputs if scan is None else scan:
            V.check_values(x, "x (prediction)", 0.0, 1.0, self._warned, hint=V.unit_range_hint)
            V.check_values(y, "y (target)", 0.0, 1.0, self._warned, hint=V.unit_range_hint)

    def _check_sizes(self, h: int, w: int, sizes: Dict[str, Tuple[int, int]]) -> None:
        """Loss-specific size checks (TextureLoss: the patches fit)."""

    # -- the feature pass -------------------------------------------------------------------------
    def features(self, x: torch.Tensor, y: torch.Tensor, names: Optional[Sequence[str]] = None):
        """({name: phi(x)}, {name: phi(y)}) of the trunk for ``names`` (default ``layers``): one trunk
        pass per input (one for both when both need, or both do not need, a graph); an input that
        needs no gradient runs without an autograd graph."""
        names = list(self.layers if names is None else names)
        ix, iy = self._trunk_input(x), self._trunk_input(y)
        gx, gy = self._needs_graph(x), self._needs_graph(y)
        if ix.shape == iy.shape and gx == gy:
            both = self._run(torch.cat([ix, iy]), names, gx)
            n = ix.shape[0]
            return {k: v[:n] for k, v in both.items()}, {k: v[n:] for k, v in both.items()}
        return self._run(ix, names, gx), self._run(iy, names, gy)

    def _trunk_input(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)

    def _needs_graph(self, x: torch.Tensor) -> bool:
        return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.trunk.parameters()))

    def _run(self, x: torch.Tensor, names: Sequence[str], grad: bool) -> Dict[str, torch.Tensor]:
        with torch.set_grad_enabled(grad):
            return self.trunk.relu_outputs(x, names)

    def from_features(self, fx: Mapping[str, torch.Tensor], fy: Mapping[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.validate(x, y)
        return self.from_features(*self.features(x, y))


# -- the losses -----------------------------------------------------------------------------------
class PerceptualLoss(FeatureLoss):
    """Johnson et al.'s feature reconstruction ("perceptual") loss,
    ``sum_l w_l * mean_{n,c,h,w} (phi_l(x) - phi_l(y))^2`` (Johnson's 1/(C_l H_l W_l) ||.||^2,
    averaged over the batch).

    Args:
        layers: ReLU output names of the trunk, or a ``{name: weight}`` dict. Default
            ``PERCEPTUAL_LAYERS`` = ``{'relu2_2': 0.2, 'relu5_4': 0.02}``: Uelwer et al.'s
            "conv2/conv5 after ReLU" read as the outputs of VGG-19's blocks 2 and 5 (module docstring).
        weights: one weight per layer when ``layers`` is a list (default 1 each).
        trunk: None (ImageNet VGG-19), a checkpoint path (e.g. a robust VGG-19, any format
            ``fastlpips.nets.weights`` reads) or a fastlpips trunk module (shared with other losses:
            pass the same module, e.g. ``fastlpips.nets.pretrained_trunk('vgg19')``). Frozen.
        pnet_rand: a randomly initialised VGG-19 instead (tests; as ``LPIPS(pnet_rand=True)``).
        criterion: 'mse' (default), 'l1' (mean absolute difference) or 'normalized': channel-normalized
            features compared as LPIPS' head with unit weights (``sum_c (f_x/|f_x| - f_y/|f_y|)^2``
            averaged over positions), computed by the fused head op (``ops.head.lpips_head_map``).
        check_inputs: scan the inputs' values on every call (NaN/Inf raise, outside [0, 1] warn once).

    Inputs in [0, 1]; the trunk sees ``(x - IMAGENET_MEAN) / IMAGENET_STD``.
    """

    name = "perceptual"
    CRITERIA = ("mse", "l1", "normalized")

    def __init__(self, layers: Union[Sequence[str], Mapping[str, float], None] = None,
                 weights: Optional[Sequence[float]] = None, trunk: TrunkArg = None, criterion: str = "mse",
                 *, pnet_rand: bool = False, check_inputs: bool = True) -> None:
        if criterion not in self.CRITERIA:
            raise ValueError(f"criterion must be one of {self.CRITERIA}, got {criterion!r}")
        super().__init__(trunk, check_inputs, pnet_rand)
        self.layers, self.weights = _layers_and_weights(self.trunk, layers, weights, PERCEPTUAL_LAYERS,
                                                        "PerceptualLoss")
        self.criterion = criterion

    def layer_loss(self, fx: torch.Tensor, fy: torch.Tensor) -> torch.Tensor:
        """The unweighted loss of one layer's features."""
        if self.criterion == "normalized":
            return lpips_head_map(fx, fy).mean()
        d = fx - fy
        return d.square().mean() if self.criterion == "mse" else d.abs().mean()

    def from_features(self, fx, fy) -> torch.Tensor:
        total = None
        for name, w in zip(self.layers, self.weights):
            term = w * self.layer_loss(fx[name], fy[name])
            total = term if total is None else total + term
        assert total is not None  # layers is never empty (_layers_and_weights)
        return total

    def extra_repr(self) -> str:
        return f"layers={dict(zip(self.layers, self.weights))}, criterion={self.criterion!r}"


GRAM_NORMS = ("positions", "size", "none")


def patch_gram(f: torch.Tensor, patch: int, norm: str = "positions") -> torch.Tensor:
    """Gram matrices of the non-overlapping ``patch`` x ``patch`` windows of a feature map.

    ``f`` (N, C, H, W) -> (N, P, C, C) with P = (H // patch) * (W // patch), patches in row-major order
    from the top-left corner; the last H % patch rows and W % patch columns (windows that do not fill
    a patch) are left out. ``G = F F^T / s`` for the patch's features F (C x patch^2), with s =
    patch^2 for ``norm='positions'`` (the mean outer product over the patch's positions), C * patch^2
    for 'size' (Johnson et al.'s normalization) and 1 for 'none'. All patches of all images are one
    ``bmm``.
    """
    if norm not in GRAM_NORMS:
        raise ValueError(f"norm must be one of {GRAM_NORMS}, got {norm!r}")
    patch = V.check_positive_int(patch, "patch")
    if f.dim() != 4:
        raise ValueError(f"features must be (N, C, H, W), got shape {tuple(f.shape)}")
    n, c, h, w = f.shape
    nh, nw = h // patch, w // patch
    if nh == 0 or nw == 0:
        raise ValueError(f"a feature map of {h}x{w} holds no {patch}x{patch} patch")
    # (N, C, H, W) -> (N * P, patch^2, C): a view for channels_last features, then one copy
    t = f[:, :, :nh * patch, :nw * patch].permute(0, 2, 3, 1)
    t = t.reshape(n, nh, patch, nw, patch, c).transpose(2, 3).reshape(n * nh * nw, patch * patch, c)
    g = torch.bmm(t.transpose(1, 2), t)
    scale = {"positions": patch * patch, "size": c * patch * patch, "none": 1}[norm]
    if scale != 1:
        g = g / scale
    return g.view(n, nh * nw, c, c)


class TextureLoss(FeatureLoss):
    """EnhanceNet's texture matching loss: Gram matrices of patches of the feature maps,
    ``sum_l w_l * mean_{n, patches} ||G_l(x) - G_l(y)||_F^2`` (the squared Frobenius norm of each
    patch's Gram difference, averaged over the images and the patches), G as ``patch_gram``.

    Args:
        layers, weights, trunk, pnet_rand, check_inputs: as ``PerceptualLoss``; default layers ``TEXTURE_LAYERS`` =
            ``{'relu1_2': 3e-7, 'relu3_4': 1e-6, 'relu5_4': 1e-6}`` (Uelwer et al.'s "conv1/3/5",
            read as block outputs; the module docstring gives the other reading).
        patch: patch side (default 16).
        patch_space: 'feature' (default): ``patch`` x ``patch`` pixels of every feature map, as
            EnhanceNet; 'image': ``patch`` image pixels, i.e. ``max(1, patch // stride_l)`` pixels of
            layer l's map (stride 2^(k-1) in VGG block k).
        gram_norm: 'positions' (default: G = F F^T / patch^2), 'size' (/ (C patch^2)) or 'none'.

    Patches tile each feature map from its top-left corner without overlap; rows and columns at the
    bottom/right that do not fill a patch are not used. A feature map smaller than its patch is an
    error: with the defaults (16 feature pixels, relu5_4 at 1/16 of the image) images need
    at least 256x256; for smaller crops use ``patch_space='image'``, a smaller patch or shallower layers.
    The patches are computed batched (one ``bmm`` per layer over all images and patches).
    """

    name = "texture"

    def __init__(self, layers: Union[Sequence[str], Mapping[str, float], None] = None,
                 weights: Optional[Sequence[float]] = None, patch: int = 16, trunk: TrunkArg = None, *,
                 patch_space: str = "feature", gram_norm: str = "positions", pnet_rand: bool = False,
                 check_inputs: bool = True) -> None:
        patch = V.check_positive_int(patch, "patch")
        if patch_space not in ("feature", "image"):
            raise ValueError(f"patch_space must be 'feature' or 'image', got {patch_space!r}")
        if gram_norm not in GRAM_NORMS:
            raise ValueError(f"gram_norm must be one of {GRAM_NORMS}, got {gram_norm!r}")
        super().__init__(trunk, check_inputs, pnet_rand)
        self.layers, self.weights = _layers_and_weights(self.trunk, layers, weights, TEXTURE_LAYERS, "TextureLoss")
        self.patch, self.patch_space, self.gram_norm = patch, patch_space, gram_norm
        if patch_space == "feature":
            self.patches = {n: patch for n in self.layers}
        else:
            big = 1 << 12
            sizes = _feature_sizes(self.trunk, big, big, self.layers)
            self.patches = {n: max(1, patch // max(1, round(big / sizes[n][0]))) for n in self.layers}

    def _check_sizes(self, h: int, w: int, sizes: Dict[str, Tuple[int, int]]) -> None:
        small = [n for n in self.layers if min(sizes[n]) < self.patches[n]]
        if small:
            need = next(s for s in range(1, 1 << 14)
                        if all(min(v) >= self.patches[k]
                               for k, v in _feature_sizes(self.trunk, s, s, self.layers).items()))
            what = ", ".join(f"{n} is {sizes[n][0]}x{sizes[n][1]} (patch {self.patches[n]}x{self.patches[n]})"
                             for n in small)
            raise ValueError(f"images of {h}x{w} are too small for TextureLoss' patches: {what}; these layers "
                             f"need images of at least {need}x{need} (or use a smaller patch, patch_space='image' "
                             f"or shallower layers)")

    def from_features(self, fx, fy) -> torch.Tensor:
        total = None
        for name, w in zip(self.layers, self.weights):
            p = self.patches[name]
            gx = patch_gram(fx[name], p, self.gram_norm)
            gy = patch_gram(fy[name], p, self.gram_norm)
            term = w * (gx - gy).square().sum((-2, -1)).mean()
            total = term if total is None else total + term
        assert total is not None  # layers is never empty (_layers_and_weights)
        return total

    def extra_repr(self) -> str:
        return (f"layers={dict(zip(self.layers, self.weights))}, patch={self.patch}, "
                f"patch_space={self.patch_space!r}, gram_norm={self.gram_norm!r}")


class PixelLoss(Loss):
    """``mean((x - y)^2)`` ('mse', default) or ``mean(|x - y|)`` ('l1') over all elements; any channel
    count, batch 1 broadcasts. NaN/Inf inputs raise unless ``check_inputs=False``."""

    def __init__(self, kind: str = "mse", check_inputs: bool = True) -> None:
        super().__init__()
        if kind not in ("mse", "l1"):
            raise ValueError(f"PixelLoss kind must be 'mse' or 'l1', got {kind!r}")
        self.kind = kind
        self.name = f"pixel_{kind}"
        self.check_inputs = check_inputs

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _check_images(x, y, channels=None)
        if self.check_inputs:  # NaN/Inf raise (the package's rule); check_inputs=False skips the scan
            V.check_finite(x, "x (prediction)")
            V.check_finite(y, "y (target)")
        d = x - y
        return d.square().mean() if self.kind == "mse" else d.abs().mean()

    def extra_repr(self) -> str:
        return repr(self.kind)


class LPIPSLoss(Loss):
    """``fastlpips.LPIPS`` as a loss: ``LPIPS(x, y, normalize=True).mean()`` for images in [0, 1]
    (the fused head; gradients to either input). ``net`` default 'vgg' (LPIPS' advice for
    optimization); other keyword arguments go to ``fastlpips.LPIPS`` (``version``, ``lpips``,
    ``pnet_rand``, ``model_path`` e.g. an R-LPIPS checkpoint, ``trunk_path``, ``backend``, ``dtype`` ...).
    The metric is ``self.metric``; its trunk is frozen."""

    name = "lpips"

    def __init__(self, net: str = "vgg", **kwargs) -> None:
        super().__init__()
        if kwargs.get("pnet_tune"):
            raise ValueError("LPIPSLoss keeps the LPIPS trunk frozen; pnet_tune=True is not supported")
        kwargs.setdefault("verbose", False)
        if isinstance(kwargs.get("dtype"), str) and kwargs["dtype"].lower() == "auto":  # a loss: gradients wanted
            kwargs["dtype"] = resolve_dtype("auto", kwargs.get("device"), net=net, grad=True)
        self.metric = LPIPS(net=net, **kwargs)
        self.metric.requires_grad_(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _check_images(x, y)
        return self.metric(x, y, normalize=True).mean()


class ELPIPSLoss(Loss):
    """``fastlpips.ELPIPS`` as a loss: the E-LPIPS distance of ``n_samples`` random transformations
    (default 1, the paper's loss use: a fresh draw per call), averaged over the batch. ``forward(x,
    y, generator=None, n_samples=None)``; other keyword arguments go to ``fastlpips.ELPIPS``
    (``net``, ``pnet_rand``, ``max_scale``, ``trunk_path``, ``backend`` ...). Images in [0, 1]."""

    name = "elpips"

    def __init__(self, n_samples: int = 1, **kwargs) -> None:
        super().__init__()
        if isinstance(kwargs.get("dtype"), str) and kwargs["dtype"].lower() == "auto":  # a loss: gradients wanted
            kwargs["dtype"] = resolve_elpips_dtype("auto", kwargs.get("device"), kwargs.get("net", "vgg"), grad=True)
        self.metric = ELPIPS(n_samples=n_samples, **kwargs)
        self.metric.requires_grad_(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor, *, generator: Optional[torch.Generator] = None,
                n_samples: Optional[int] = None) -> torch.Tensor:
        _check_images(x, y)
        return self.metric(x, y, n_samples=n_samples, generator=generator).mean()


# -- sums -----------------------------------------------------------------------------------------
class CombinedLoss(Loss):
    """A weighted sum of losses, ``total = sum_k w_k * loss_k(x, y)``.

    ``CombinedLoss({'perceptual': (PerceptualLoss(trunk=vgg), 1.0), 'texture': (TextureLoss(trunk=vgg),
    1.0), 'pixel': PixelLoss()})`` (a bare loss has weight 1), or ``PerceptualLoss(trunk=vgg) +
    TextureLoss(trunk=vgg) + 0.1 * PixelLoss()`` (parts named after the losses: 'perceptual',
    'texture', 'pixel_mse', 'lpips', 'elpips', with '_2', '_3' ... for repeats).

    Shared feature pass: the ``FeatureLoss`` parts on one trunk -- the same module, or trunks built
    from the same weights (the default ImageNet VGG-19, or one checkpoint path) on one device and
    dtype -- run that trunk once per input (once for both when both need, or both do not need,
    gradients), as deep as the deepest of their layers, and each part reads its layers from it.

    ``forward(x, y, return_parts=False, generator=None)``: the total (0-dim), or with
    ``return_parts=True`` ``(total, {name: part})`` with the unweighted parts (attached to the graph;
    ``.item()`` them for logging). ``generator`` goes to the E-LPIPS parts.
    """

    name = "combined"

    def __init__(self, losses: Mapping[str, Union[Loss, Tuple[Loss, float]]]) -> None:
        super().__init__()
        if not isinstance(losses, Mapping) or not losses:
            raise ValueError("CombinedLoss takes a non-empty {name: loss or (loss, weight)} dict")
        self.losses = nn.ModuleDict()
        self.weights: Dict[str, float] = {}
        for name, spec in losses.items():
            loss, w = tuple(spec) if isinstance(spec, (tuple, list)) and len(spec) == 2 else (spec, 1.0)
            if not isinstance(name, str) or not name or "." in name:
                raise ValueError(f"loss names must be non-empty strings without '.', got {name!r}")
            if not isinstance(loss, Loss) or isinstance(loss, CombinedLoss):
                raise TypeError(f"part {name!r} must be a fastlpips.losses loss (not a CombinedLoss: add them "
                                f"with +), got {type(loss).__name__}")
            self.losses[name] = loss
            self.weights[name] = V.check_number(w, f"the weight of {name!r}")

    @classmethod
    def _from_terms(cls, terms: Sequence[Tuple[str, Loss, float]]) -> "CombinedLoss":
        spec: Dict[str, Tuple[Loss, float]] = {}
        for name, loss, w in terms:
            key, k = name, 1
            while key in spec:
                k += 1
                key = f"{name}_{k}"
            spec[key] = (loss, w)
        return cls(spec)

    def _terms(self) -> List[Tuple[str, Loss, float]]:
        return [(n, cast(Loss, loss), self.weights[n]) for n, loss in self.losses.items()]

    def feature_groups(self) -> List[List[str]]:
        """The names of the ``FeatureLoss`` parts grouped by the trunk pass they share."""
        groups: List[Tuple[FeatureLoss, List[str]]] = []
        for name, loss in self.losses.items():
            if not isinstance(loss, FeatureLoss):
                continue
            for head, names in groups:
                if head.trunk is loss.trunk or (head._source is not None and head._source == loss._source
                                                and head._param.device == loss._param.device
                                                and head._param.dtype == loss._param.dtype
                                                and type(head.trunk) is type(loss.trunk)):
                    names.append(name)
                    break
            else:
                groups.append((loss, [name]))
        return [names for _, names in groups]

    def forward(self, x: torch.Tensor, y: torch.Tensor, *, return_parts: bool = False,
                generator: Optional[torch.Generator] = None):
        parts: Dict[str, torch.Tensor] = {}
        scanned = False
        for names in self.feature_groups():
            losses = [cast(FeatureLoss, self.losses[n]) for n in names]
            for loss in losses:
                loss.validate(x, y, scan=loss.check_inputs and not scanned)
                scanned = scanned or loss.check_inputs
            layers = list(dict.fromkeys(n for loss in losses for n in loss.layers))
            fx, fy = losses[0].features(x, y, layers)
            for n, loss in zip(names, losses):
                parts[n] = loss.from_features(fx, fy)
        for n, other in self.losses.items():  # the parts without a shared feature pass
            if n not in parts:
                parts[n] = other(x, y, generator=generator) if isinstance(other, ELPIPSLoss) else other(x, y)
        total = None
        for n in self.losses:  # in the order given
            term = self.weights[n] * parts[n]
            total = term if total is None else total + term
        parts = {n: parts[n] for n in self.losses}
        return (total, parts) if return_parts else total

    def extra_repr(self) -> str:
        return "weights=" + repr(self.weights)
