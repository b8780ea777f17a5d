"""Classic (non-learned) image distances of the LPIPS paper's BAPPS baselines, in pure torch.

The ``lpips`` package (0.1.4) scores two classic baselines on BAPPS in its trainer, ``lpips.L2``
and ``lpips.DSSIM``, each with ``colorspace='Lab'`` or ``'RGB'``. Per pair of images in [-1, 1]
(``N x 3 x H x W``, batch size 1 only) they compute:

* ``L2``, ``'RGB'``: ``mean((in0 - in1)**2)`` over C, H, W of the [-1, 1] tensors themselves.
* ``L2``, ``'Lab'``: both images are quantized to 8 bits by ``lpips.tensor2im`` (below), converted
  to CIELAB by ``skimage.color.rgb2lab`` and stored as float32 (``lpips.tensor2tensorlab``), then
  ``0.5 * mean((a / 100 - b / 100)**2)`` (``lpips.l2`` with ``range=100``).
* ``DSSIM``: ``(1 - SSIM(a, b)) / 2`` (``lpips.dssim``) with the SSIM of
  ``skimage.measure.compare_ssim(..., multichannel=True)`` on the 8-bit images (``'RGB'``,
  ``data_range=255``) or on their Lab conversion (``'Lab'``, ``data_range=100``).

The 8-bit quantization is exactly ``lpips.tensor2im``: the tensor is cast to float32, mapped by
``(x + 1) * 127.5`` in float32 and cast to ``uint8``, which truncates toward zero.

This module computes the same numbers batched, on the input's device, without numpy or
scikit-image (neither ``compare_ssim`` nor batches > 1 work in lpips 0.1.4 with a current
scikit-image). Where we differ from lpips:

* any batch size; batches of 1 broadcast against batches of N; the result has the input's dtype
  and device (float16/bfloat16 inputs are computed in float32 and the result cast back);
* the colour conversion and SSIM run in the input's floating dtype (float32 or float64) instead
  of float64-then-float32 (Lab) and float32/float64 (SSIM, per scikit-image's type rules);
  results agree with lpips/scikit-image to float32 rounding (see tests/test_classic.py);
* SSIM's local (co)variances are computed from images shifted by a per-image, per-channel
  constant (SSIM is invariant to it), which removes most of the float32 cancellation in
  ``E[x^2] - E[x]^2``: our float32 SSIM is closer to the float64 value than scikit-image's;
* before the truncation to 8 bits, values are clamped to [0, 255] (inputs outside [-1, 1]
  saturate), where numpy's float -> uint8 cast of out-of-range values is undefined behaviour;
* the quantized (``'Lab'``, and ``DSSIM``) distances are piecewise constant in the input, so
  their gradient is zero, as the ``.data`` access in lpips implies; ``l2(..., 'RGB')`` is
  differentiable.

SSIM here is ``skimage.metrics.structural_similarity`` with its defaults (uniform 7 x 7 window,
K1 = 0.01, K2 = 0.03, sample covariance) and ``channel_axis`` set: per channel, the SSIM map is
averaged over the interior of the image (a border of ``(win_size - 1) // 2`` pixels is dropped),
then the channel means are averaged. The window around an interior pixel never leaves the image,
so the border mode of scipy's ``uniform_filter`` plays no part and a "valid" box filter gives the
cropped map exactly.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from . import validation as V

__all__ = ["rgb_to_lab", "ssim", "quantize_uint8", "l2", "dssim", "L2", "DSSIM", "COLORSPACES"]

COLORSPACES: Tuple[str, ...] = ("Lab", "RGB")

# sRGB (D65) -> XYZ, as in skimage.color.colorconv.xyz_from_rgb
_XYZ_FROM_RGB = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
# D65 white point, 2 degree observer, as in skimage.color.colorconv._illuminants["D65"]["2"]
_D65_WHITE = (0.95047, 1.0, 1.08883)

# SSIM constants of skimage.metrics.structural_similarity
_K1 = 0.01
_K2 = 0.03


def _check_colorspace(colorspace: str) -> str:
    if isinstance(colorspace, str):
        for c in COLORSPACES:
            if colorspace.lower() == c.lower():
                return c
    raise ValueError(f"colorspace must be one of {list(COLORSPACES)}, got {colorspace!r}")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _broadcast(x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    n = max(x.shape[0], y.shape[0])
    return x.expand(n, *x.shape[1:]), y.expand(n, *y.shape[1:])


def rgb_to_lab(x: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1], ``(N, 3, H, W)`` -> CIELAB (D65 white, 2 degree observer), ``(N, 3, H, W)``.

    The formulas and constants of ``skimage.color.rgb2lab`` (which lpips uses): sRGB gamma
    expansion (linear below 0.04045), scikit-image's sRGB -> XYZ matrix, normalization by the D65
    white point (0.95047, 1, 1.08883), ``f(t) = cbrt(t)`` above 0.008856 and
    ``7.787 t + 16 / 116`` below, ``L = 116 f(Y) - 16``, ``a = 500 (f(X) - f(Y))``,
    ``b = 200 (f(Y) - f(Z))``. Values outside [0, 1] are converted by the same formulas, as
    scikit-image does. float32/float64 are computed in their own dtype, other floating dtypes in
    float32 with the result cast back. Differentiable (the branches never produce NaN gradients).
    """
    V.check_image(x, "x", hint=None, finite=True)
    out_dtype = x.dtype
    x = x.to(_compute_dtype(x.dtype))
    # sRGB -> linear RGB; the clamp keeps the unused branch of torch.where finite for gradients
    lin = torch.where(x > 0.04045, torch.pow((x.clamp(min=0.04045) + 0.055) / 1.055, 2.4), x / 12.92)
    m = torch.tensor(_XYZ_FROM_RGB, dtype=x.dtype, device=x.device)
    white = torch.tensor(_D65_WHITE, dtype=x.dtype, device=x.device)
    xyz = torch.einsum("ij,njhw->nihw", m, lin)
    t = xyz / white.view(1, 3, 1, 1)
    f = torch.where(t > 0.008856, torch.pow(t.clamp(min=0.008856), 1.0 / 3.0), 7.787 * t + 16.0 / 116.0)
    fx, fy, fz = f[:, 0], f[:, 1], f[:, 2]
    lab = torch.stack((116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)), dim=1)
    return lab.to(out_dtype)


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float, *, win_size: int = 7) -> torch.Tensor:
    """Mean SSIM per image, ``(N,)``, of two ``(N, C, H, W)`` batches (a batch of 1 broadcasts).

    Equals ``skimage.metrics.structural_similarity(a, b, data_range=data_range,
    channel_axis=-1, win_size=win_size)`` on each ``H x W x C`` image: uniform
    ``win_size x win_size`` window, K1 = 0.01, K2 = 0.03, sample covariance (``N - 1``
    normalization), the SSIM map averaged over the interior (a border of ``(win_size - 1) // 2``
    pixels dropped) and over channels. ``data_range`` is the value range of the images (255 for
    0..255, 100 for Lab's L), not estimated from the data. Inputs must be at least
    ``win_size`` pixels high and wide. Computed in the input's dtype (float32 for half types,
    result cast back); differentiable.
    """
    V.check_image(x, "x", channels=None, hint=None, finite=True)
    V.check_image(y, "y", channels=None, hint=None, finite=True)
    V.check_pair(x, y, "x", "y")
    if isinstance(win_size, bool) or not isinstance(win_size, int) or win_size < 3 or win_size % 2 != 1:
        raise ValueError(f"win_size must be an odd integer >= 3, got {win_size!r}")
    data_range = V.check_bound(data_range, "data_range")
    h, w = x.shape[2], x.shape[3]
    if h < win_size or w < win_size:
        raise ValueError(f"x and y of spatial size {h}x{w} are smaller than the SSIM window "
                         f"(win_size={win_size}); give images of at least {win_size}x{win_size} "
                         f"or a smaller odd win_size")
    out_dtype = x.dtype
    cdt = _compute_dtype(x.dtype)
    x, y = _broadcast(x.to(cdt), y.to(cdt))
    n, c = x.shape[0], x.shape[1]
    if n == 0:
        return x.new_zeros((0,), dtype=out_dtype)

    # shift both images by the same per-image, per-channel constant: the (co)variances do not
    # change, and E[x^2] - E[x]^2 loses far fewer digits in float32 (the means are shifted back)
    shift = (0.5 * (x.mean(dim=(2, 3), keepdim=True) + y.mean(dim=(2, 3), keepdim=True))).detach()
    xs, ys = x - shift, y - shift
    # one "valid" box filter over the five maps: exactly the interior crop of skimage's filtered maps
    maps = torch.cat((xs, ys, xs * xs, ys * ys, xs * ys), dim=1)
    # (separable, like scipy's uniform_filter: rows then columns)
    filt = F.avg_pool2d(F.avg_pool2d(maps, kernel_size=(1, win_size), stride=1), kernel_size=(win_size, 1), stride=1)
    mx, my, mxx, myy, mxy = filt.split(c, dim=1)
    cov_norm = win_size * win_size / (win_size * win_size - 1.0)
    vx = cov_norm * (mxx - mx * mx)
    vy = cov_norm * (myy - my * my)
    vxy = cov_norm * (mxy - mx * my)
    ux, uy = mx + shift, my + shift
    c1 = (_K1 * data_range) ** 2
    c2 = (_K2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    # every channel's crop has the same size: the mean of channel means is the mean over C, H, W
    return s.mean(dim=(1, 2, 3)).to(out_dtype)


def quantize_uint8(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> their 8-bit values 0..255 (as floats of the compute dtype), as ``lpips.tensor2im``.

    lpips casts the tensor to float32, computes ``(x + 1) * 127.5`` in float32 and casts to uint8
    (truncation toward zero). We do the same float32 arithmetic and truncate with ``floor`` after
    clamping to [0, 255] (out-of-range inputs saturate; numpy's cast of them is undefined).
    The result is returned in float32 (float64 for float64 inputs); its values are integers.
    """
    v = (x.float() + 1.0) * 127.5
    return torch.floor(v.clamp(0.0, 255.0)).to(_compute_dtype(x.dtype))


def _lab_of_quantized(x: torch.Tensor) -> torch.Tensor:
    # skimage's img_as_float of a uint8 image multiplies by 1 / 255
    return rgb_to_lab(quantize_uint8(x) * (1.0 / 255.0))


def _prepare(in0: torch.Tensor, in1: torch.Tensor, colorspace: str) -> Tuple[torch.Tensor, torch.Tensor, str]:
    V.check_image(in0, "in0", hint=None, finite=True)
    V.check_image(in1, "in1", hint=None, finite=True)
    V.check_pair(in0, in1, "in0", "in1")
    return (*_broadcast(in0, in1), _check_colorspace(colorspace))


def l2(in0: torch.Tensor, in1: torch.Tensor, colorspace: str = "Lab") -> torch.Tensor:
    """lpips' ``L2`` baseline per image, ``(N,)``, of two ``(N, 3, H, W)`` batches in [-1, 1].

    ``'RGB'``: ``mean((in0 - in1)**2)`` over C, H, W (differentiable). ``'Lab'``: both images
    quantized to 8 bits like ``lpips.tensor2im``, converted to CIELAB (:func:`rgb_to_lab`), then
    ``0.5 * mean((a / 100 - b / 100)**2)``. Result in the input's dtype and device.
    """
    in0, in1, cs = _prepare(in0, in1, colorspace)
    if cs == "RGB":
        return ((in0 - in1) ** 2).mean(dim=(1, 2, 3))
    out_dtype = in0.dtype
    if in0.shape[0] == 0:
        return in0.new_zeros((0,))
    a, b = _lab_of_quantized(in0), _lab_of_quantized(in1)
    return (0.5 * ((a / 100.0 - b / 100.0) ** 2).mean(dim=(1, 2, 3))).to(out_dtype)


def dssim(in0: torch.Tensor, in1: torch.Tensor, colorspace: str = "Lab") -> torch.Tensor:
    """lpips' ``DSSIM`` baseline per image, ``(N,)``: ``(1 - SSIM) / 2`` of two ``(N, 3, H, W)`` batches in [-1, 1].

    Both images are quantized to 8 bits like ``lpips.tensor2im``; ``'RGB'`` takes :func:`ssim`
    of the 0..255 values with ``data_range=255``, ``'Lab'`` of their CIELAB conversion with
    ``data_range=100``. Images must be at least 7 x 7. Result in the input's dtype and device.
    """
    in0, in1, cs = _prepare(in0, in1, colorspace)
    out_dtype = in0.dtype
    if in0.shape[0] == 0:
        return in0.new_zeros((0,))
    if cs == "RGB":
        a, b, rng = quantize_uint8(in0), quantize_uint8(in1), 255.0
    else:
        a, b, rng = _lab_of_quantized(in0), _lab_of_quantized(in1), 100.0
    return ((1.0 - ssim(a, b, rng)) / 2.0).to(out_dtype)


class _Classic(nn.Module):
    """lpips' ``FakeNet`` constructor: ``use_gpu`` is accepted for compatibility only (the
    distance runs on the inputs' device); ``colorspace`` is ``'Lab'`` or ``'RGB'`` (any letter
    case, stored as spelled here; lpips itself accepts only these exact spellings)."""

    def __init__(self, use_gpu: bool = True, colorspace: str = "Lab") -> None:
        super().__init__()
        self.use_gpu = use_gpu
        self.colorspace = _check_colorspace(colorspace)

    def extra_repr(self) -> str:
        return f"colorspace={self.colorspace!r}"


class L2(_Classic):
    """``lpips.L2`` for any batch size: ``forward(in0, in1)`` -> ``(N,)``; see :func:`l2`."""

    def forward(self, in0: torch.Tensor, in1: torch.Tensor, retPerLayer: Optional[bool] = None) -> torch.Tensor:
        return l2(in0, in1, self.colorspace)


class DSSIM(_Classic):
    """``lpips.DSSIM`` for any batch size: ``forward(in0, in1)`` -> ``(N,)``; see :func:`dssim`."""

    def forward(self, in0: torch.Tensor, in1: torch.Tensor, retPerLayer: Optional[bool] = None) -> torch.Tensor:
        return dssim(in0, in1, self.colorspace)
