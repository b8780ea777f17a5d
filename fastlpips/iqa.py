"""Classic full-reference image quality metrics on batches: PSNR, SSIM, MS-SSIM, GMSD and UQI.

Pure torch, differentiable, on the inputs' device. Every function takes two batches ``x`` and
``y`` of shape ``(N, C, H, W)`` (a batch of 1 broadcasts against N) with values in
``[0, data_range]`` (``data_range=1.0`` by default, ``255.0`` for 0..255 images) and returns one
value per image, ``(N,)`` (``reduction='mean'`` / ``'sum'`` reduce over the batch). float32 and
float64 are computed in their own dtype; float16/bfloat16 in float32, the result cast back.
Values outside ``[0, data_range]`` are not checked (no device sync): they go through the same
formulas, but SSIM's constants and GMSD's ``c`` assume that range. The filters are convolutions:
on CUDA, float32 results follow torch's TF32 setting for them (``torch.backends.cudnn.allow_tf32``,
on by default), which costs SSIM digits; switch it off (or use float64) for reference numbers.

The conventions are those of the established implementations, so numbers can be compared with
published ones (tests/test_iqa.py checks each against scikit-image, piq 0.8.0 and torchmetrics
1.9.0 on real photos):

* :func:`psnr`: ``10 log10(data_range**2 / MSE)``, MSE over C, H, W; ``+inf`` for identical
  images (no epsilon: piq adds 1e-8 to the MSE, scikit-image and torchmetrics do not).
* :func:`ssim`: Wang et al. 2004 with an 11 x 11 Gaussian window (sigma 1.5), K1 = 0.01,
  K2 = 0.03, population (not sample) statistics, "valid" filtering (no padding: the SSIM map is
  ``(H - win_size + 1) x (W - win_size + 1)``), averaged per channel, then over channels. This
  is ``skimage.metrics.structural_similarity(a, b, data_range=..., channel_axis=...,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False)`` and ``piq.ssim(...,
  downsample=False)``; see the function for piq's and torchmetrics' defaults that differ.
* :func:`ms_ssim`: Wang et al. 2003, 5 scales with weights ``MS_SSIM_WEIGHTS``, 2 x 2 average
  pooling (odd rows/columns dropped) between scales, contrast-structure terms at the first 4
  scales and SSIM at the last, each clamped at 0 before the power; computed per channel then
  averaged over channels, as ``piq.multi_scale_ssim``.
* :func:`gmsd`: Xue et al. 2014 as ``piq.gmsd`` (and the authors' MATLAB code): luminance
  ``0.299 R + 0.587 G + 0.114 B``, 2 x 2 average downsampling (an odd last row/column averaged
  with zeros), Prewitt gradients with zero padding, ``c = 170 / 255**2`` on [0, 1] data, and the
  population standard deviation of the similarity map.
* :func:`uqi`: Wang & Bovik 2002, the universal image quality index, as the authors' MATLAB
  ``img_qi.m``: an 8 x 8 sliding window over the valid region, ``Q = 4 s_xy m_x m_y / ((s_x^2 +
  s_y^2)(m_x^2 + m_y^2))`` with its two special cases (flat windows), averaged per channel, then
  over channels; ``window='gaussian', win_size=11`` is torchmetrics' variant.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from . import validation as V
from .utils import reduce_batch
from .validation import check_positive_int

__all__ = ["psnr", "ssim", "ms_ssim", "ms_ssim_min_size", "gmsd", "uqi", "UQI_WINDOWS", "MS_SSIM_WEIGHTS", "GMSD_C",
           "GMSD_MIN_SIZE", "REDUCTIONS"]

#: MS-SSIM scale weights (exponents), finest scale first (Wang, Simoncelli & Bovik 2003).
MS_SSIM_WEIGHTS: Tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
#: GMSD's stability constant for [0, 1] data: the paper's T = 170 for 0..255 data, divided by 255**2.
GMSD_C: float = 170.0 / 255.0 ** 2
#: The smallest height/width :func:`gmsd` accepts: after the 2 x 2 downsampling a 1 x 1 map has no
#: gradient (GMSD would be 0, "identical", for any two images).
GMSD_MIN_SIZE = 3
#: Reductions over the batch: ``'none'`` returns ``(N,)`` (``validation.REDUCTIONS``).
REDUCTIONS = V.REDUCTIONS

# ITU-R BT.601 luma, the Y of YIQ (piq.rgb2yiq and GMSD's MATLAB code)
_LUMA = (0.299, 0.587, 0.114)
_HINT = "convert 0..255 images with x.float() / 255, or pass data_range=255"


# --- input checks ------------------------------------------------------------------------------

def _check_images(x: torch.Tensor, y: torch.Tensor, min_size: int, what: str) -> None:
    """Two finite floating (N, C, H, W) batches that agree (validation.check_pair), at least
    ``min_size`` on both sides for ``what``."""
    V.check_image(x, "x", channels=None, hint=_HINT, finite=True)
    V.check_image(y, "y", channels=None, hint=_HINT, finite=True)
    V.check_pair(x, y, "x", "y")
    V.check_size(x, min_size, what, "x")


def _check_window(win_size: int, sigma: float) -> Tuple[int, float]:
    win_size = check_positive_int(win_size, "win_size")
    if win_size % 2 != 1:
        raise ValueError(f"win_size must be an odd integer, got {win_size}")
    return win_size, V.check_bound(sigma, "sigma")


def _prepare(x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.dtype]:
    """Broadcast a batch of 1 and move half types to float32; returns the result dtype too."""
    out_dtype = x.dtype
    cdt = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    n = max(x.shape[0], y.shape[0])
    x, y = x.to(cdt), y.to(cdt)
    return x.expand(n, *x.shape[1:]), y.expand(n, *y.shape[1:]), out_dtype


def _reduce(v: torch.Tensor, reduction: str, out_dtype: torch.dtype) -> torch.Tensor:
    return reduce_batch(v, reduction).to(out_dtype)


def _safe_sqrt(v: torch.Tensor) -> torch.Tensor:
    """sqrt with gradient 0 (instead of inf * 0 = NaN) where ``v == 0``."""
    pos = v > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, v, torch.ones_like(v))), torch.zeros_like(v))


# --- PSNR --------------------------------------------------------------------------------------

def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, *, reduction: str = "none") -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image: ``10 log10(data_range**2 / MSE)``, ``(N,)``.

    The MSE is the mean over C, H and W of ``(x - y)**2``. Identical images give ``+inf`` (and a
    zero gradient there, not NaN); no epsilon is added to the MSE (``piq.psnr`` adds 1e-8, which
    caps it at 80 dB for ``data_range=1``). Equals ``skimage.metrics.peak_signal_noise_ratio`` and
    ``torchmetrics``' ``peak_signal_noise_ratio(..., data_range=..., dim=(1, 2, 3),
    reduction='none')`` per image. Not to be confused with ``fastlpips.psnr``, lpips' numpy
    helper for 0..255 arrays.
    """
    data_range = V.check_bound(data_range, "data_range")
    reduction = V.check_reduction(reduction, allow_none=True)
    _check_images(x, y, 1, "PSNR")
    x, y, out_dtype = _prepare(x, y)
    mse = ((x - y) ** 2).mean(dim=(1, 2, 3))
    pos = mse > 0
    db = 20.0 * math.log10(data_range) - 10.0 * torch.log10(torch.where(pos, mse, torch.ones_like(mse)))
    return _reduce(torch.where(pos, db, torch.full_like(db, math.inf)), reduction, out_dtype)


# --- SSIM and MS-SSIM ---------------------------------------------------------------------------

def _gaussian_window(win_size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The normalized 1-D Gaussian taps (built in float64, then cast)."""
    t = torch.arange(win_size, dtype=torch.float64) - (win_size - 1) / 2.0
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    return (g / g.sum()).to(dtype=dtype, device=device)


def _filter_valid(maps: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' filtering of every channel of ``maps`` (N, K, H, W) by ``g`` (rows, then columns).

    A sum of shifted slices weighted by the taps (multiply-adds over whole tensors), not a
    single-channel ``conv2d``: on the CPU that convolution path is ~3.4x slower (measured on
    240 maps of 256x256, AVX2), and the sum gives the same float32 values there."""
    taps = g.tolist()
    k = len(taps)

    def along(m: torch.Tensor, dim: int) -> torch.Tensor:
        n = m.shape[dim] - k + 1
        out = m.narrow(dim, 0, n) * taps[0]
        for i in range(1, k):
            out = out.add_(m.narrow(dim, i, n), alpha=taps[i])
        return out

    return along(along(maps, 3), 2)


_SSIM_CHUNK_BYTES = 1 << 20  # images per SSIM pass: ~1 MiB of input (the pass's maps then stay in cache)


def _ssim_cs(x: torch.Tensor, y: torch.Tensor, g: torch.Tensor, c1: float, c2: float
             ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per image and channel, ``(N, C)``: the mean SSIM map and the mean contrast-structure map.

    Computed over chunks of images of about ``_SSIM_CHUNK_BYTES`` of input: the 5 filtered maps of
    a whole batch do not fit in a cache, and the ~25 passes over them are memory-bound (one
    256x256 RGB image per pass: 5.1x faster than the whole batch of 48 at once on this 2-core
    AVX2 machine, the same values)."""
    n = max(x.shape[0], y.shape[0])
    per = max(1, _SSIM_CHUNK_BYTES // max(1, x[:1].numel() * x.element_size()))
    if n <= per:
        return _ssim_cs_chunk(x, y, g, c1, c2)
    x, y = x.expand(n, *x.shape[1:]), y.expand(n, *y.shape[1:])
    parts = [_ssim_cs_chunk(x[i:i + per], y[i:i + per], g, c1, c2) for i in range(0, n, per)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _ssim_cs_chunk(x: torch.Tensor, y: torch.Tensor, g: torch.Tensor, c1: float, c2: float
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
    ux, uy, vx, vy, vxy = _window_moments(x, y, lambda maps: _filter_valid(maps, g))
    cs = (2.0 * vxy + c2) / (vx + vy + c2)
    lum = (2.0 * ux * uy + c1) / (ux * ux + uy * uy + c1)
    return (lum * cs).mean(dim=(2, 3)), cs.mean(dim=(2, 3))


def _window_moments(x: torch.Tensor, y: torch.Tensor, filt: Callable[[torch.Tensor], torch.Tensor]
                    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The window means ux, uy, variances vx, vy and covariance vxy of every channel (``filt``: the
    window's weighted mean over the valid region of (N, 5C, H, W) maps), as SSIM and UQI use them.

    Both images are shifted by one per-image, per-channel constant first: (co)variances do not
    change and E[x^2] - E[x]^2 loses far fewer digits (the means are shifted back). The shift is
    detached: the value does not depend on it, so neither does the gradient."""
    c = x.shape[1]
    shift = (0.5 * (x.mean(dim=(2, 3), keepdim=True) + y.mean(dim=(2, 3), keepdim=True))).detach()
    xs, ys = x - shift, y - shift
    mx, my, mxx, myy, mxy = filt(torch.cat((xs, ys, xs * xs, ys * ys, xs * ys), dim=1)).split(c, dim=1)
    return mx + shift, my + shift, mxx - mx * mx, myy - my * my, mxy - mx * my


def _ssim_args(data_range, win_size, sigma, k1, k2, reduction):
    data_range = V.check_bound(data_range, "data_range")
    win_size, sigma = _check_window(win_size, sigma)
    k1, k2 = V.check_bound(k1, "k1"), V.check_bound(k2, "k2")
    return (data_range, win_size, sigma, (k1 * data_range) ** 2, (k2 * data_range) ** 2,
            V.check_reduction(reduction, allow_none=True))


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, *, win_size: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03, reduction: str = "none") -> torch.Tensor:
    """Mean structural similarity per image, ``(N,)``, with a Gaussian window and no padding.

    Per channel, local means, variances and the covariance are Gaussian-weighted (``win_size``
    taps, standard deviation ``sigma``, weights summing to 1: population statistics) over the
    windows that lie inside the image; the SSIM map
    ``(2 ux uy + C1)(2 vxy + C2) / ((ux^2 + uy^2 + C1)(vx + vy + C2))`` with
    ``C1 = (k1 data_range)^2``, ``C2 = (k2 data_range)^2`` is averaged over its
    ``(H - win_size + 1) x (W - win_size + 1)`` positions, then over channels. Images must be at
    least ``win_size`` pixels high and wide. Any channel count (RGB is not converted).

    Matches, per image:

    * ``skimage.metrics.structural_similarity(a, b, data_range=data_range, channel_axis=-1,
      gaussian_weights=True, sigma=1.5, use_sample_covariance=False)`` (scikit-image derives
      the window from sigma, ``2 int(3.5 sigma + 0.5) + 1``, which is 11 for 1.5; it filters with
      reflection and crops the border, which is the same as not padding);
    * ``piq.ssim(x, y, data_range=..., downsample=False, reduction='none')``. piq's default
      ``downsample=True`` first average-pools both images by ``f = max(1, round(min(H, W) / 256))``
      (no effect below 384 pixels); to get its default on larger images, pool first:
      ``ssim(F.avg_pool2d(x, f), F.avg_pool2d(y, f))``;
    * torchmetrics' ``structural_similarity_index_measure(..., data_range=...,
      return_full_image=True)`` map cropped by ``(win_size - 1) // 2`` on each side and averaged.
      Its returned index itself (torchmetrics 1.9.0) averages the whole map, including the border
      positions whose windows reach into its reflection padding, so it differs slightly; it also
      estimates ``data_range`` from the data unless given one.
    """
    data_range, win_size, sigma, c1, c2, reduction = _ssim_args(data_range, win_size, sigma, k1, k2, reduction)
    _check_images(x, y, win_size, f"SSIM with win_size={win_size} (no padding: the window must fit in the image)")
    x, y, out_dtype = _prepare(x, y)
    if x.shape[0] == 0:
        return _reduce(x.new_zeros((0,)), reduction, out_dtype)
    s, _ = _ssim_cs(x, y, _gaussian_window(win_size, sigma, x.dtype, x.device), c1, c2)
    return _reduce(s.mean(dim=1), reduction, out_dtype)


def ms_ssim_min_size(win_size: int = 11, scales: int = len(MS_SSIM_WEIGHTS)) -> int:
    """The smallest height/width :func:`ms_ssim` accepts: ``win_size * 2**(scales - 1)`` (176 by default)."""
    return win_size * 2 ** (scales - 1)


def ms_ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, *, win_size: int = 11, sigma: float = 1.5,
            k1: float = 0.01, k2: float = 0.03, weights: Sequence[float] = MS_SSIM_WEIGHTS,
            reduction: str = "none") -> torch.Tensor:
    """Multi-scale SSIM per image, ``(N,)`` (Wang, Simoncelli & Bovik 2003).

    Scale 1 is the input; each further scale is the previous one 2 x 2 average-pooled
    (``F.avg_pool2d(x, 2)``: an odd last row/column is dropped). At each scale the windowed
    statistics are those of :func:`ssim` (Gaussian window, no padding). Per channel, ``cs_j``
    is the mean contrast-structure map ``(2 vxy + C2) / (vx + vy + C2)`` at scales 1..M-1 and
    ``s_M`` the mean SSIM map at the coarsest scale M; the channel's value is
    ``prod_j max(cs_j, 0)**w_j * max(s_M, 0)**w_M`` and the result is the mean over channels.
    ``weights`` (default :data:`MS_SSIM_WEIGHTS`, M = 5) are used as given (not renormalized).
    The clamp at 0 (piq's, and torchmetrics' default ``normalize='relu'``) keeps a negative term
    from giving NaN; its gradient there is 0.

    Images must be at least ``win_size * 2**(M - 1)`` pixels high and wide (176 by default,
    :func:`ms_ssim_min_size`), so that the coarsest scale still holds one window.

    Matches ``piq.multi_scale_ssim(x, y, data_range=..., reduction='none')`` whenever every
    pooled size is even (e.g. 192 x 192, or any multiple of 16 for 5 scales); piq pads an odd
    size by replicating the first (top/left) row/column before pooling instead of dropping the last one, and
    so accepts images from 161 pixels. torchmetrics' ``multiscale_structural_similarity_index_
    measure`` (1.9.0) differs in two ways: it averages ``cs`` over all channels at each scale
    before the product (equal to ours for one channel), and its last-scale SSIM averages the whole
    reflection-padded map (see :func:`ssim`).
    """
    if isinstance(weights, torch.Tensor):
        weights = weights.detach().cpu().reshape(-1).tolist()
    if isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence) or len(weights) == 0:
        raise ValueError(f"weights must be a non-empty sequence of positive numbers, got {weights!r}")
    weights = [V.check_bound(w, f"weights[{i}]") for i, w in enumerate(weights)]
    scales = len(weights)
    data_range, win_size, sigma, c1, c2, reduction = _ssim_args(data_range, win_size, sigma, k1, k2, reduction)
    _check_images(x, y, ms_ssim_min_size(win_size, scales),
                  f"MS-SSIM with {scales} scales and win_size={win_size} "
                  f"(the coarsest scale, 1/{2 ** (scales - 1)} of the size, must hold one window)")
    x, y, out_dtype = _prepare(x, y)
    if x.shape[0] == 0:
        return _reduce(x.new_zeros((0,)), reduction, out_dtype)
    g = _gaussian_window(win_size, sigma, x.dtype, x.device)
    terms = []
    for j in range(scales):
        if j:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
        s, cs = _ssim_cs(x, y, g, c1, c2)
        terms.append(s if j == scales - 1 else cs)
    v = torch.stack(terms)  # (M, N, C)
    w = torch.tensor(weights, dtype=v.dtype, device=v.device).view(-1, 1, 1)
    pos = v > 0
    # max(v, 0)**w with a zero (not inf * 0 = NaN) gradient where v <= 0
    p = torch.where(pos, torch.where(pos, v, torch.ones_like(v)) ** w, torch.zeros_like(v))
    return _reduce(p.prod(dim=0).mean(dim=1), reduction, out_dtype)


# --- GMSD --------------------------------------------------------------------------------------

def gmsd(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, *, c: float = GMSD_C,
         reduction: str = "none") -> torch.Tensor:
    """Gradient magnitude similarity deviation per image, ``(N,)`` (Xue et al. 2014); 0 for identical images.

    The convention of ``piq.gmsd`` (and of the authors' MATLAB code, up to the last step):

    1. images divided by ``data_range``; RGB (C = 3) converted to luminance
       ``0.299 R + 0.587 G + 0.114 B``; one channel (C = 1) used as is; other channel counts
       are refused;
    2. 2 x 2 average downsampling; an odd height or width gets one zero row/column appended
       first (MATLAB's ``conv2(..., 'same')`` with a 2 x 2 box, then ``(1:2:end, 1:2:end)``);
    3. gradient magnitude ``m = sqrt(gx^2 + gy^2)`` from the 3 x 3 Prewitt filters
       ``[[1, 0, -1]] * 3 / 3`` and its transpose, zero padding (same size);
    4. ``GMS = (2 m_x m_y + c) / (m_x^2 + m_y^2 + c)`` with ``c = 170 / 255**2`` for [0, 1] data
       (:data:`GMSD_C`, the paper's T = 170 for 0..255 data);
    5. GMSD = the population standard deviation of the GMS map (piq). The MATLAB code's ``std2``
       divides by ``n - 1``: its value is ours times ``sqrt(n / (n - 1))``, n = the map's size.

    Gradients: ``m`` and the final square root use a gradient of 0 where their argument is 0
    (flat regions, identical images) instead of NaN.
    """
    data_range = V.check_bound(data_range, "data_range")
    c = V.check_bound(c, "c")
    reduction = V.check_reduction(reduction, allow_none=True)
    _check_images(x, y, GMSD_MIN_SIZE, "GMSD (the 2 x 2 downsampled map must be at least 2 x 2 for a gradient)")
    if x.shape[1] not in (1, 3):
        raise ValueError(f"x and y must have 1 (luminance) or 3 (RGB) channels for GMSD, got shape {tuple(x.shape)}")
    x, y, out_dtype = _prepare(x, y)
    if x.shape[0] == 0:
        return _reduce(x.new_zeros((0,)), reduction, out_dtype)
    x, y = x / data_range, y / data_range
    if x.shape[1] == 3:
        luma = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        x, y = (x * luma).sum(dim=1, keepdim=True), (y * luma).sum(dim=1, keepdim=True)
    h, w = x.shape[2], x.shape[3]
    pad = (0, w % 2, 0, h % 2)
    x, y = F.avg_pool2d(F.pad(x, pad), 2), F.avg_pool2d(F.pad(y, pad), 2)
    prewitt = torch.tensor([[1.0, 0.0, -1.0]] * 3, dtype=x.dtype, device=x.device) / 3.0
    kernels = torch.stack((prewitt, prewitt.t())).unsqueeze(1)  # (2, 1, 3, 3)
    gx2 = (F.conv2d(x, kernels, padding=1) ** 2).sum(dim=1, keepdim=True)
    gy2 = (F.conv2d(y, kernels, padding=1) ** 2).sum(dim=1, keepdim=True)
    mx, my = _safe_sqrt(gx2), _safe_sqrt(gy2)
    gms = (2.0 * mx * my + c) / (mx * mx + my * my + c)  # exactly 1 where mx == my
    dev = gms - gms.mean(dim=(1, 2, 3), keepdim=True)
    return _reduce(_safe_sqrt((dev * dev).mean(dim=(1, 2, 3))), reduction, out_dtype)


# --- UQI -----------------------------------------------------------------------------------------

#: UQI's window shapes: the paper's uniform (box) window and torchmetrics' Gaussian one.
UQI_WINDOWS = ("uniform", "gaussian")


def uqi(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, *, win_size: int = 8, window: str = "uniform",
        sigma: float = 1.5, reduction: str = "none") -> torch.Tensor:
    """Universal image quality index per image, ``(N,)`` (Wang & Bovik 2002); 1 for identical images.

    Per channel and window position (the valid region: a ``win_size`` window never leaves the
    image), with the window's means m, variances s^2 and covariance s_xy (population statistics)::

        Q = 4 s_xy m_x m_y / ((s_x^2 + s_y^2) (m_x^2 + m_y^2))

    and, as the authors' ``img_qi.m``: ``Q = 2 m_x m_y / (m_x^2 + m_y^2)`` where both windows are
    flat (s_x^2 + s_y^2 = 0) but not both zero, ``Q = 1`` where both are zero. The map's mean per
    channel, then the mean over channels. Computed in float64 (the window statistics of flat
    regions cancel in float32; windows flat in both images are found exactly, by their extremes), the
    result in the input's dtype.

    ``window='uniform'`` (default, the paper's 8 x 8 box); ``window='gaussian'`` with ``win_size=11,
    sigma=1.5`` is ``torchmetrics.functional.universal_image_quality_index`` (which pads by
    reflection and crops back to the same valid region, and adds float eps to its denominator
    instead of the special cases). sewar's ``uqi`` drops the last row and column of this map
    (scipy's even-sized window is off centre). UQI is scale-free: ``data_range`` only checks.
    """
    V.check_bound(data_range, "data_range")
    reduction = V.check_reduction(reduction, allow_none=True)
    if window not in UQI_WINDOWS:
        raise ValueError(f"window must be one of {UQI_WINDOWS}, got {window!r}")
    win_size = check_positive_int(win_size, "win_size")
    if window == "gaussian":
        win_size, sigma = _check_window(win_size, sigma)
    _check_images(x, y, win_size, f"UQI's {win_size} x {win_size} window")
    x, y, out_dtype = _prepare(x, y)
    if x.shape[0] == 0:
        return _reduce(x.new_zeros((0,)), reduction, out_dtype)
    g = _gaussian_window(win_size, sigma, torch.float64, x.device) if window == "gaussian" else None
    per = max(1, _SSIM_CHUNK_BYTES // max(1, 2 * x[:1].numel() * 8))  # images per pass: cache-sized, as SSIM
    q = torch.cat([_uqi_chunk(x[i:i + per], y[i:i + per], win_size, g) for i in range(0, x.shape[0], per)])
    return _reduce(q, reduction, out_dtype)


def _box_mean_valid(maps: torch.Tensor, k: int) -> torch.Tensor:
    """Means over every k x k window inside ``maps`` (N, K, H, W): running sums (two cumulative
    sums and differences, O(1) per pixel: 6x faster than ``avg_pool2d``'s k^2 in float64 here)."""
    def along(m: torch.Tensor, dim: int) -> torch.Tensor:
        c = F.pad(m.cumsum(dim), (1, 0) if dim == 3 else (0, 0, 1, 0))
        n = m.shape[dim] - k + 1
        return c.narrow(dim, k, n) - c.narrow(dim, 0, n)

    return along(along(maps, 3), 2) / (k * k)


def _uqi_chunk(x: torch.Tensor, y: torch.Tensor, win_size: int, g: Optional[torch.Tensor]) -> torch.Tensor:
    """UQI (N,) of images (see ``uqi``; the statistics in float64, the flatness test in the images'
    own dtype: exact, and 2x cheaper for float32); ``g`` the Gaussian taps, None for the box window."""
    both = torch.cat((x, y), dim=1)
    x, y = x.double(), y.double()
    c = x.shape[1]
    def filt(maps: torch.Tensor) -> torch.Tensor:
        return _filter_valid(maps, g) if g is not None else _box_mean_valid(maps, win_size)

    ux, uy, vx, vy, vxy = _window_moments(x, y, filt)
    vsum = vx + vy
    # windows flat in both images: exactly (max == min), not from the statistics, which carry the
    # sums' rounding there (noise / noise would be any number); img_qi.m's cases then apply
    k = win_size
    def window_max(t: torch.Tensor) -> torch.Tensor:
        """Maxima of the k x k windows: per axis, maxima of doubling spans (log2 k elementwise
        passes; 8x faster than max_pool2d here)."""
        for dim in (3, 2):
            w = 1
            while w < k:
                s = min(w, k - w)
                n = t.shape[dim] - s
                t = torch.maximum(t.narrow(dim, 0, n), t.narrow(dim, s, n))
                w += s
        return t

    top = window_max(both)
    flat2 = top == -window_max(-both)
    flat_both = flat2[:, :c] & flat2[:, c:]
    vsum = torch.where(flat_both, torch.zeros_like(vsum), vsum)
    vxy = torch.where(flat_both, torch.zeros_like(vxy), vxy)
    # a flat window's mean is its value, exactly (the running sums' is off by their rounding)
    ux = torch.where(flat_both, top[:, :c].double(), ux)
    uy = torch.where(flat_both, top[:, c:].double(), uy)
    msum = ux * ux + uy * uy
    one = torch.ones_like(msum)
    flat = torch.where(msum != 0, 2 * ux * uy / torch.where(msum != 0, msum, one), one)
    den = vsum * msum
    q = torch.where(den != 0, 4 * vxy * ux * uy / torch.where(den != 0, den, one), flat)
    return q.mean(dim=(2, 3)).mean(dim=1)
