"""Narrow threat models: L_inf PGD, L_2 PGD (and TRADES' KL variant of L_inf PGD, ``TradesLinf``,
with its objective ``trades_loss``) and the JPEG L_inf attack of Kang et al. ("Testing
Robustness Against Unforeseen Adversaries"), written on plain PyTorch with the semantics of
advex-uar's ``PGDAttack`` / ``JPEGAttack`` as perceptual-advex 0.2.6 runs them (``LinfAttack``,
``L2Attack``, ``JPEGLinfAttack``: ``num_iterations=20``, ``step = bound / sqrt(num_iterations)``,
``scale_each``/``scale_eps`` off, ``avoid_target=True``), moved to this package's scale: images in
[0, 1] and pixel bounds on the [0, 1] scale (perceptual-advex's CIFAR defaults 8 and 255 on the
0..255 scale are ``8/255`` and ``1.0`` here; the JPEG bound has no pixel scale and keeps its value,
0.25 for CIFAR, 0.5 for ImageNet).

The algorithm, as advex-uar's:

* loss: cross-entropy of ``model(x + delta)`` against the true labels, increased (untargeted);
* random start: L_inf ``delta = bound * U(-1, 1)`` per pixel (JPEG: per coefficient); L_2 a point
  uniform in the ball, ``bound * r * z / ||z||`` with z ~ N(0, I) and r = U^(1/d). As advex-uar, the
  pixel start is not clamped to [0, 1] before the first gradient (the first clamp follows the first
  step); the outputs always lie in [0, 1];
* steps: ``num_iterations`` steps, each from a gradient at the current point: L_inf
  ``delta += step sign(g)``, projection ``clamp(delta, -bound, bound)``, then
  ``delta = clamp(x + delta, 0, 1) - x``; L_2 ``delta += step g / ||g||``, projection
  ``delta *= min(1, bound / ||delta||)``, then the same clamp to the box;
* JPEG: the image is taken to its JPEG representation as advex-uar's differentiable JPEG does
  (JFIF YCbCr, 4:2:0 chroma subsampling by 2x2 averaging, level shift of 128/255, orthonormal 8x8
  block DCT, division by the standard quality-50 luminance / chrominance quantization tables,
  advex-uar's ``factor=1``; no rounding is applied). The attack variable v has one entry per kept
  coefficient (Y at full resolution, Cb and Cr at half), starts at ``bound * U(-1, 1)``, takes
  sign steps and is clamped to [-bound, bound]; a quantized coefficient moves by ``v / 2`` (advex-uar
  adds ``eps (u - 1/2)`` with ``u = 1/2 + v / (2 eps)``), i.e. a DCT coefficient moves by
  ``v / 2 * Q / 255`` on the [0, 1] scale. The perturbed representation is decoded (nearest chroma
  upsampling, inverse DCT, YCbCr -> RGB) and clamped to [0, 1].

``last['size']`` (``ThreatAttack``): for the pixel attacks the L_inf / L_2 norm of ``adv - x``
measured on the returned images; for JPEG ``max |v|`` over the kept coefficients, on the scale of
``bound`` (the quantity advex-uar bounds).

Deliberate differences from advex-uar:

* the gradient is taken of the per-sample loss (summed cross-entropy) with ``torch.autograd.grad``
  w.r.t. the perturbation only: no parameter of the model gets a ``.grad``. advex-uar's batch-mean
  loss scales gradients by 1/N, which changes nothing for sign steps but, in the L_2 step
  ``g / (||g|| + 1e-8)``, makes the 1e-8 guard depend on the batch size; here the guard is 1e-30;
* the model is used in the train/eval mode the caller left it in (advex-uar switches it to eval
  for the attack and back to train); evaluation passes an eval-mode model;
* the L_2 random radius ``U^(1/d)`` takes U from the normal draws themselves,
  ``U = P(chi2_d <= ||z||^2)`` (uniform and independent of ``z / ||z||``), so the start comes from
  the one standard draw per pixel of the ``ThreatAttack`` protocol (``noise_kind='normal'``);
* JPEG, first gradient: advex-uar evaluates it with the start v passed unscaled where later steps
  pass ``v / eps`` (the start counts eps times too little, e.g. 4x for eps = 0.25); here every
  gradient is evaluated at the current v;
* JPEG, the image's own detail: advex-uar returns ``decode(encode(x) + v / 2)``, which also drops
  the chroma detail inside each 2x2 block that 4:2:0 cannot hold, so even v = 0 changes x. Here the
  output is ``clamp(x + decode_perturbation(v / 2))`` = ``decode(encode(x) + v / 2)`` plus x's
  chroma residual ``x - decode(encode(x))``: v = 0 returns x, and everything the attack changes is
  the bounded coefficient perturbation. ``drop_chroma_detail=True`` gives advex-uar's output;
* JPEG, colour: RGB -> YCbCr uses advex-uar's JFIF matrix; the way back uses its exact inverse
  (advex-uar uses the rounded textbook inverse, ``1.402``, ``0.344136``, ..., off by ~1e-6
  relative), so the transform and its inverse are exact inverses;
* JPEG, image side: H and W must be multiples of 16, as advex-uar's ``JPEGAttack`` requires (its
  padding path is never reached by the attack);
* JPEG, random start: it uses the first channel of the (N, 3, H, W) uniform draws for Y and the top
  left quarter of the second and third channel for Cb and Cr.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple, cast

import torch
from torch import nn
from torch.nn import functional as F

from ..validation import check_bound, check_images_and_labels, check_labels, check_logits, check_positive_int
from .threat import ThreatAttack

__all__ = ["LinfPGD", "L2PGD", "TradesLinf", "trades_loss", "JPEGLinf", "rgb_to_ycbcr", "ycbcr_to_rgb", "block_dct",
           "block_idct",           "jpeg_encode", "jpeg_decode", "JPEG_Y_TABLE", "JPEG_C_TABLE"]

# --------------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------------


def _per_sample_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, check: bool) -> torch.Tensor:
    """Summed cross-entropy of ``model(images)`` (one term per image); ``check``: validate the
    logits and the labels against their class count (done on the first step only)."""
    logits = model(images)
    if check:
        check_logits(logits, images.shape[0])
        check_labels(labels, images.shape[0], logits.shape[1])
    return F.cross_entropy(logits, labels, reduction="sum")


def _view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(N,) -> (N, 1, 1, ...) broadcasting against ``like``."""
    return v.view(-1, *([1] * (like.dim() - 1)))


# --------------------------------------------------------------------------------------------------
# Pixel PGD
# --------------------------------------------------------------------------------------------------


class _PixelPGD(ThreatAttack):
    """PGD on pixels (advex-uar ``PGDAttack``); subclasses set ``name`` / ``noise_kind`` and the
    three norm-specific pieces."""

    def __init__(self, model: nn.Module, bound: float, *, num_iterations: int = 20, step: Optional[float] = None,
                 random_start: bool = True) -> None:
        super().__init__()
        self.bound = check_bound(bound)
        check_positive_int(num_iterations, "num_iterations")
        self.step = self.bound / math.sqrt(num_iterations) if step is None else check_bound(step, "step")
        if not isinstance(random_start, bool):
            raise TypeError(f"random_start must be a bool, got {random_start!r}")
        self.model, self.num_iterations, self.random_start = model, num_iterations, random_start

    # norm-specific pieces
    def _start(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _ascend(self, delta: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _size(self, d: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, labels: torch.Tensor, *, noise: Optional[torch.Tensor] = None,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``x`` (N, 3, H, W) in [0, 1], ``labels`` (N,) class indices -> adversarial images in
        [0, 1]. The random start comes from ``noise`` (the standard draws of ``noise_kind``, x's
        shape), drawn with ``generator`` when None; ``random_start=False`` starts at x."""
        check_images_and_labels(x, labels)
        x = x.detach()
        z = self._noise(x, noise, generator) if (self.random_start or noise is not None) else None
        # random_start: z holds the draws of the subclass's noise_kind
        delta = self._start(cast(torch.Tensor, z)) if self.random_start else torch.zeros_like(x)
        for it in range(self.num_iterations):
            delta.requires_grad_(True)
            with torch.enable_grad():
                (g,) = torch.autograd.grad(_per_sample_loss(self.model, x + delta, labels, it == 0), delta)
            with torch.no_grad():
                delta = (x + self._ascend(delta.detach(), g)).clamp(0, 1) - x
        adv = (x + delta.detach()).clamp(0, 1)
        self.last = {"size": self._size(adv - x)}
        return adv


class LinfPGD(_PixelPGD):
    """L_inf PGD (advex-uar ``pgd_linf``): ``bound`` on the [0, 1] scale (perceptual-advex's CIFAR
    default 8/255), ``num_iterations`` sign steps of ``step`` (default bound / sqrt(num_iterations))
    from a uniform start in the box; ``last['size']`` = max |adv - x| per image."""

    name = "linf"
    noise_kind = "uniform"

    def __init__(self, model: nn.Module, bound: float = 8 / 255, **kw) -> None:
        super().__init__(model, bound, **kw)

    def _start(self, z):
        return self.bound * z

    def _ascend(self, delta, g):
        return (delta + self.step * g.sign()).clamp(-self.bound, self.bound)

    def _size(self, d):
        return d.flatten(1).abs().amax(1)


class L2PGD(_PixelPGD):
    """L_2 PGD (advex-uar ``pgd_l2``): ``bound`` on the [0, 1] scale (perceptual-advex's CIFAR
    default 255 on 0..255 = 1.0), ``num_iterations`` normalized-gradient steps of length ``step``
    (default bound / sqrt(num_iterations)) from a point uniform in the ball, each projected onto
    the ball; ``last['size']`` = ||adv - x||_2 per image."""

    name = "l2"
    noise_kind = "normal"

    def __init__(self, model: nn.Module, bound: float = 1.0, **kw) -> None:
        super().__init__(model, bound, **kw)

    def _start(self, z):
        flat = z.flatten(1)
        d = flat.shape[1]
        r2 = (flat * flat).sum(1)
        # P(chi2_d <= ||z||^2) is U(0, 1) and independent of the direction z / ||z||
        u = torch.special.gammainc(torch.full_like(r2, d / 2), r2 / 2)
        radius = self.bound * u ** (1.0 / d) / r2.sqrt().clamp_min(1e-30)
        return _view(radius, z) * z

    def _ascend(self, delta, g):
        gn = g.flatten(1).norm(dim=1)
        delta = delta + _view(self.step / (gn + 1e-30), g) * g
        dn = delta.flatten(1).norm(dim=1)
        scale = torch.clamp(self.bound / dn.clamp_min(1e-30), max=1.0)
        return _view(scale, delta) * delta

    def _size(self, d):
        return d.flatten(1).norm(dim=1)


class TradesLinf(ThreatAttack):
    """TRADES' inner maximization (Zhang et al. 2019, the authors' ``trades_loss``): L_inf PGD on
    the KL divergence ``KL(p(x) || p(x'))`` between the model's clean and perturbed class
    probabilities (labels are not used), from ``x + 0.001 z`` (z ~ N(0, 1) per pixel, not clamped
    before the first gradient, as there), ``num_iterations`` sign steps of ``step`` (default
    ``bound * 0.007 / 0.031``: the authors' CIFAR-10 step for their bound 0.031), each projected onto
    the ball and the box. ``last['size']`` = max |adv - x| per image."""

    name = "trades"
    noise_kind = "normal"

    def __init__(self, model: nn.Module, bound: float = 0.031, *, num_iterations: int = 10,
                 step: Optional[float] = None) -> None:
        super().__init__()
        self.bound = check_bound(bound)
        self.num_iterations = check_positive_int(num_iterations, "num_iterations")
        self.step = self.bound * 0.007 / 0.031 if step is None else check_bound(step, "step")
        self.model = model

    def forward(self, x: torch.Tensor, labels: torch.Tensor, *, noise: Optional[torch.Tensor] = None,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
        check_images_and_labels(x, labels)
        x = x.detach()
        with torch.no_grad():
            logits = self.model(x)
        check_logits(logits, x.shape[0])
        p_clean = F.softmax(logits, dim=1)
        adv = x + 0.001 * cast(torch.Tensor, self._noise(x, noise, generator))
        for _ in range(self.num_iterations):
            adv.requires_grad_(True)
            with torch.enable_grad():
                kl = F.kl_div(F.log_softmax(self.model(adv), dim=1), p_clean, reduction="sum")
                (g,) = torch.autograd.grad(kl, adv)
            with torch.no_grad():
                adv = adv.detach() + self.step * g.sign()
                adv = torch.min(torch.max(adv, x - self.bound), x + self.bound).clamp(0, 1)
        self.last = {"size": (adv - x).flatten(1).abs().amax(1)}
        return adv.detach()


def trades_loss(logits_clean: torch.Tensor, logits_adv: torch.Tensor, labels: torch.Tensor,
                beta: float = 6.0) -> torch.Tensor:
    """TRADES' training objective: cross-entropy on the clean batch plus ``beta`` times the batch
    mean of ``KL(p(x) || p(x'))`` (gradients flow through both distributions, as the authors')."""
    robust = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_clean, dim=1), reduction="sum")
    return F.cross_entropy(logits_clean, labels) + beta * robust / labels.shape[0]


# --------------------------------------------------------------------------------------------------
# JPEG
# --------------------------------------------------------------------------------------------------

# Standard JPEG (quality 50) quantization tables, rows = vertical frequency, columns = horizontal
# (advex-uar stores their transposes and works on transposed images: the same pairing).
JPEG_Y_TABLE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
JPEG_C_TABLE = (
    (17, 18, 24, 47, 99, 99, 99, 99),
    (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99),
) + ((99,) * 8,) * 4

# JFIF RGB -> YCbCr (advex-uar's rgb_to_ycbcr_jpeg); chroma offset 128 on 0..255
_RGB_TO_YCC = ((0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))
_LEVEL = 128 / 255  # JPEG's level shift and chroma offset (128 on 0..255)


def _consts(x: torch.Tensor):
    """The colour matrix, its exact inverse (float64 inversion) and the chroma offsets in x's dtype."""
    a = torch.tensor(_RGB_TO_YCC, dtype=torch.float64)
    off = torch.tensor([0.0, _LEVEL, _LEVEL], dtype=torch.float64)
    return [t.to(dtype=x.dtype, device=x.device) for t in (a, torch.linalg.inv(a), off)]


def _mix(m: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,njhw->nihw", m, img)


def rgb_to_ycbcr(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] -> JFIF YCbCr on the same scale (Cb, Cr centred at 128/255)."""
    a, _, off = _consts(x)
    return _mix(a, x) + off.view(1, 3, 1, 1)


def ycbcr_to_rgb(y: torch.Tensor) -> torch.Tensor:
    """The exact inverse of ``rgb_to_ycbcr`` (no clamp)."""
    _, inv, off = _consts(y)
    return _mix(inv, y - off.view(1, 3, 1, 1))


def _dct_matrix(like: torch.Tensor) -> torch.Tensor:
    """The orthonormal 8-point DCT-II matrix M[k, n] (the JPEG DCT is M B M^T per block)."""
    k = torch.arange(8, dtype=torch.float64)[:, None]
    n = torch.arange(8, dtype=torch.float64)[None, :]
    m = torch.cos((2 * n + 1) * k * math.pi / 16) * math.sqrt(2 / 8)
    m[0] /= math.sqrt(2)
    return m.to(dtype=like.dtype, device=like.device)


def _blocks(img: torch.Tensor) -> torch.Tensor:
    n, c, h, w = img.shape
    if h % 8 or w % 8:
        raise ValueError(f"block DCT needs a height and width that are multiples of 8, got {h}x{w}")
    return img.reshape(n, c, h // 8, 8, w // 8, 8)


def block_dct(img: torch.Tensor) -> torch.Tensor:
    """Orthonormal 8x8 block DCT of (N, C, H, W): block (i, j)'s coefficient of vertical frequency
    k and horizontal frequency l lands at (8i + k, 8j + l)."""
    m = _dct_matrix(img)
    return torch.einsum("kr,ncirjs,ls->ncikjl", m, _blocks(img), m).reshape(img.shape)


def block_idct(coef: torch.Tensor) -> torch.Tensor:
    """The exact inverse of ``block_dct``."""
    m = _dct_matrix(coef)
    return torch.einsum("kr,ncikjl,ls->ncirjs", m, _blocks(coef), m).reshape(coef.shape)


def _qtables(like: torch.Tensor, h: int, w: int):
    """The quantization steps on the [0, 1] scale (Q / 255), tiled over an (h, w) coefficient image."""
    return [torch.tensor(t, dtype=like.dtype, device=like.device).div(255).repeat(h // 8, w // 8)
            for t in (JPEG_Y_TABLE, JPEG_C_TABLE)]


def _check_jpeg_side(h: int, w: int) -> None:
    if h % 16 or w % 16:
        raise ValueError(f"the JPEG attack needs a height and width that are multiples of 16 (8x8 blocks of "
                         f"4:2:0 chroma), got {h}x{w}")


def jpeg_encode(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """RGB (N, 3, H, W) in [0, 1] (H, W multiples of 16) -> quantized coefficients before rounding,
    as advex-uar's differentiable JPEG has them: Y (N, 1, H, W) and Cb, Cr (N, 2, H/2, W/2), each an
    image of 8x8 coefficient blocks (``block_dct``'s layout) divided by the quality-50 tables (in
    quantization steps of the 0..255 scale). Chroma is 4:2:0-subsampled by 2x2 averaging."""
    _check_jpeg_side(*x.shape[-2:])
    ycc = rgb_to_ycbcr(x) - _LEVEL
    y, c = ycc[:, :1], F.avg_pool2d(ycc[:, 1:], 2)
    qy, _ = _qtables(x, *y.shape[-2:])
    _, qc = _qtables(x, *c.shape[-2:])
    return block_dct(y) / qy, block_dct(c) / qc


def _decode_centered(cy: torch.Tensor, cc: torch.Tensor) -> torch.Tensor:
    """Coefficients -> level-shifted full-resolution YCbCr (linear in the coefficients)."""
    qy, _ = _qtables(cy, *cy.shape[-2:])
    _, qc = _qtables(cc, *cc.shape[-2:])
    c = block_idct(cc * qc).repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
    return torch.cat([block_idct(cy * qy), c], dim=1)


def jpeg_decode(cy: torch.Tensor, cc: torch.Tensor) -> torch.Tensor:
    """The decoder of ``jpeg_encode`` (nearest chroma upsampling; no clamp). ``jpeg_encode`` of
    ``jpeg_decode`` is the identity; ``jpeg_decode`` of ``jpeg_encode`` is the identity on images
    whose chroma is constant on 2x2 blocks."""
    return ycbcr_to_rgb(_decode_centered(cy, cc) + _LEVEL)


def _decode_perturbation(vy: torch.Tensor, vc: torch.Tensor) -> torch.Tensor:
    """The RGB change caused by adding (vy, vc) to the coefficients (the linear part of the decoder)."""
    _, inv, _ = _consts(vy)
    return _mix(inv, _decode_centered(vy, vc))


class JPEGLinf(ThreatAttack):
    """The JPEG L_inf attack (advex-uar ``jpeg_linf``): a perturbation v, |v| <= ``bound`` (advex-uar's
    scale: a quantized coefficient moves by v / 2; perceptual-advex's defaults 0.25 CIFAR, 0.5
    ImageNet) of the 4:2:0 quality-50 JPEG coefficients, ``num_iterations`` sign steps of ``step``
    (default bound / sqrt(num_iterations)) from a uniform start, mapped back to RGB and clamped to
    [0, 1]. ``last['size']`` = max |v| per image, ``last['coefficients']`` = (vy (N, 1, H, W),
    vc (N, 2, H/2, W/2)) in ``jpeg_encode``'s layout. ``drop_chroma_detail=True`` returns advex-uar's
    ``decode(encode(x) + v / 2)`` (which loses x's chroma detail within 2x2 blocks even at v = 0)
    instead of ``x + decode_perturbation(v / 2)``. Images: H and W multiples of 16."""

    name = "jpeg"
    noise_kind = "uniform"

    def __init__(self, model: nn.Module, bound: float = 0.25, *, num_iterations: int = 20,
                 step: Optional[float] = None, random_start: bool = True, drop_chroma_detail: bool = False) -> None:
        super().__init__()
        self.bound = check_bound(bound)
        check_positive_int(num_iterations, "num_iterations")
        self.step = self.bound / math.sqrt(num_iterations) if step is None else check_bound(step, "step")
        for nm, flag in (("random_start", random_start), ("drop_chroma_detail", drop_chroma_detail)):
            if not isinstance(flag, bool):
                raise TypeError(f"{nm} must be a bool, got {flag!r}")
        self.model, self.num_iterations = model, num_iterations
        self.random_start, self.drop_chroma_detail = random_start, drop_chroma_detail

    # shadows nn.Module.apply(fn) under its public name (an incompatible override, on purpose)
    def apply(self, base: torch.Tensor, vy: torch.Tensor, vc: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """The image for coefficient perturbation (vy, vc) (advex-uar's scale): base + the decoded
        change of v / 2 quantization steps, clamped to [0, 1]."""
        return (base + _decode_perturbation(vy / 2, vc / 2)).clamp(0, 1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor, *, noise: Optional[torch.Tensor] = None,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``x`` (N, 3, H, W) in [0, 1] (H, W multiples of 16), ``labels`` (N,) -> adversarial images
        in [0, 1]. The start is ``bound * noise`` (U(-1, 1) draws of x's shape: channel 0 for Y, the
        top-left quarter of channels 1, 2 for Cb, Cr), drawn with ``generator`` when None."""
        check_images_and_labels(x, labels)
        h, w = x.shape[-2:]
        _check_jpeg_side(h, w)
        x = x.detach()
        z = self._noise(x, noise, generator) if (self.random_start or noise is not None) else None
        if self.random_start:
            assert z is not None  # noise_kind 'uniform': _noise drew (or checked) the start
            vy, vc = self.bound * z[:, :1], self.bound * z[:, 1:, :h // 2, :w // 2]
        else:
            vy, vc = x.new_zeros(x.shape[0], 1, h, w), x.new_zeros(x.shape[0], 2, h // 2, w // 2)
        base = jpeg_decode(*jpeg_encode(x)) if self.drop_chroma_detail else x
        for it in range(self.num_iterations):
            vy, vc = vy.detach().requires_grad_(True), vc.detach().requires_grad_(True)
            with torch.enable_grad():
                loss = _per_sample_loss(self.model, self.apply(base, vy, vc), labels, it == 0)
                gy, gc = torch.autograd.grad(loss, (vy, vc))
            with torch.no_grad():
                vy = (vy + self.step * gy.sign()).clamp(-self.bound, self.bound)
                vc = (vc + self.step * gc.sign()).clamp(-self.bound, self.bound)
        vy, vc = vy.detach(), vc.detach()
        with torch.no_grad():
            adv = self.apply(base, vy, vc)
        self.last = {"size": torch.maximum(vy.flatten(1).abs().amax(1), vc.flatten(1).abs().amax(1)),
                     "coefficients": (vy, vc)}
        return adv
