"""IFC, the information fidelity criterion (Sheikh, Bovik & de Veciana 2005), on batches, as the
authors' release ``ifcvec.m`` computes it (the version super-resolution evaluations run).

For a reference image x and a distorted image y (luminance on the 0..255 scale):

1. both go through the steerable pyramid of Simoncelli's ``sp5Filters`` (6 orientations, 4
   levels, 'reflect1' edges: ``buildSpyr(im, 4, 'sp5Filters', 'reflect1')``); the subbands used
   are orientations 1 and 4 of every level (the release's ``subbands = [4 7 10 13 16 19 22 25]``);
2. per subband, cropped to a multiple of M = 3, the distortion channel y = g x + v is fitted on
   windows of (2^lev + 1)^2 coefficients centred on every M x M block (lev = 4 for the finest level
   down to 1 for the coarsest, as the release's ``ceil((sub - 1) / 6)``; box windows with
   'reflect1' edges): g = cov_xy / var_x, sigma_v^2 = (var_y - g cov_xy) / window size, with the
   release's guards for (near) zero variances (``distsub_est_m.m``);
3. the reference's Gaussian scale mixture: C_U the covariance of every (overlapping) M x M
   neighbourhood vector, its eigenvalues lambda_j, and per non-overlapping block s^2 = u^T C_U^-1 u
   / M^2 (``refparams_vecgsm.m``);
4. IFC = sum over subbands, blocks inside a border of ceil(((2^lev + 1) - 1) / 2 / M) blocks, and
   eigenvalues of log2(1 + g^2 s^2 lambda_j / (sigma_v^2 + 1e-10)), divided by the image's pixel
   count. Higher is better; 0 when y carries no information about x.

The pyramid's filter taps are read from ``pyrtools`` (Simoncelli lab's Python port of
matlabPyrTools: ``pip install pyrtools``, the optional dependency of this one metric); the
pyramid itself, the fits and the sums run in torch, float64, batched, on the inputs' device.
tests/metrics/test_ifc.py compares with the release run under GNU Octave (to 1e-9 relative) and
the pyramid with pyrtools' own.
"""
from __future__ import annotations

import functools
import math
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F

from . import validation as V
from .utils import reduce_batch

__all__ = ["ifc", "IFC_MIN_SIZE", "IFC_SUBBANDS", "rgb_to_y", "steerable_pyramid"]

#: The release's subbands: (level, orientation), 0-based (its wtree indices 25, 22, 19, ..., 4).
IFC_SUBBANDS: Tuple[Tuple[int, int], ...] = tuple((lev, ori) for lev in range(4) for ori in (0, 3))
#: The smallest side: four pyramid levels of the 9-tap low-pass filter (matlabPyrTools' maxPyrHt).
IFC_MIN_SIZE = 72
_LEVELS = 4
_M = 3
_TOL = 1e-15
_SIGMA_NSQ = 1e-10  # the release's tolerance in the denominator


@functools.lru_cache(maxsize=None)
def _filters() -> Dict[str, List[List[float]]]:
    try:
        from pyrtools.pyramids.filters import steerable_filters
    except ImportError as e:  # pragma: no cover - pyrtools is a test dependency
        raise ImportError("IFC needs the steerable pyramid filters of pyrtools: pip install pyrtools "
                          f"(or pip install fastlpips[ifc]); {e}") from None
    f = steerable_filters("sp5_filters")
    n = int(round(math.sqrt(f["bfilts"].shape[0])))
    # matlabPyrTools reshapes each band filter column-major (pyrtools: reshape(...).T)
    bands = [f["bfilts"][:, b].reshape(n, n).T.tolist() for b in range(f["bfilts"].shape[1])]
    return {"hi0": f["hi0filt"].tolist(), "lo0": f["lo0filt"].tolist(), "lo": f["lofilt"].tolist(),
            "bands": bands}


def _corr(x: torch.Tensor, taps: torch.Tensor, step: int = 1) -> torch.Tensor:
    """matlabPyrTools' ``corrDn(x, filt, 'reflect1', [step step], [1 1])``: correlation with an odd
    (kh, kw) filter centred, edges reflected about the edge pixel, every ``step``-th output from
    the first. ``x`` (N, 1, H, W), ``taps`` (K, 1, kh, kw) -> (N, K, ceil(H/step), ceil(W/step))."""
    ph, pw = (taps.shape[2] - 1) // 2, (taps.shape[3] - 1) // 2
    return F.conv2d(F.pad(x, (pw, pw, ph, ph), mode="reflect"), taps, stride=step)


def steerable_pyramid(x: torch.Tensor) -> List[torch.Tensor]:
    """The 4 levels of 6 oriented subbands of ``x`` (N, 1, H, W), float64: a list of (N, 6, h, w),
    finest first (``buildSpyr(x, 4, 'sp5Filters', 'reflect1')`` without its two residuals)."""
    f = _filters()

    def t(k):
        return torch.tensor(k, dtype=x.dtype, device=x.device)

    lo = _corr(x, t(f["lo0"])[None, None])
    bands = t(f["bands"])[:, None]
    lofilt = t(f["lo"])[None, None]
    out = []
    for _ in range(_LEVELS):
        out.append(_corr(lo, bands))
        lo = _corr(lo, lofilt, step=2)
    return out


def rgb_to_y(x: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """The luma of ITU-R BT.601 YCbCr on the 0..255 scale (MATLAB's ``rgb2ycbcr``, not rounded):
    16 + 65.481 R + 128.553 G + 24.966 B for R, G, B in [0, 1]; (N, 3, H, W) -> (N, 1, H, W)."""
    w = torch.tensor((65.481, 128.553, 24.966), dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return 16.0 + (x / data_range * w).sum(1, keepdim=True)


def _box_blocks(v: torch.Tensor, size: int) -> torch.Tensor:
    """Sums over ``size`` x ``size`` windows ('reflect1' edges) centred on the middle pixel of every
    M x M block (``corrDn(v, ones(size), 'reflect1', [M M], [2 2], ...)`` of the release)."""
    p = (size - 1) // 2
    padded = F.pad(v, (p, p, p, p), mode="reflect")[..., _M // 2:, _M // 2:]  # windows from the first centre
    return F.avg_pool2d(padded, size, stride=_M) * (size * size)


def _distortion_channel(x: torch.Tensor, y: torch.Tensor, size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(g, sigma_v^2) per block: ``distsub_est_m.m`` for one subband of the two images (N, 1, h, w)."""
    area = size * size
    mean_x = _box_blocks(x, size) / area
    mean_y = _box_blocks(y, size) / area
    cov_xy = _box_blocks(x * y, size) - area * mean_x * mean_y
    ss_x = (_box_blocks(x * x, size) - area * mean_x * mean_x).clamp_min(0)
    ss_y = (_box_blocks(y * y, size) - area * mean_y * mean_y).clamp_min(0)
    g = cov_xy / (ss_x + _TOL)
    vv = (ss_y - g * cov_xy) / area
    small_x = ss_x < _TOL
    g = torch.where(small_x, torch.zeros_like(g), g)
    vv = torch.where(small_x, ss_y, vv)
    small_y = ss_y < _TOL
    g = torch.where(small_y, torch.zeros_like(g), g)
    vv = torch.where(small_y, torch.zeros_like(vv), vv)
    neg = g < 0
    vv = torch.where(neg, ss_y, vv)
    g = torch.where(neg, torch.zeros_like(g), g)
    return g, vv.clamp_min(_TOL)


def _reference_gsm(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(s^2 per block (N, 1, h/M, w/M), eigenvalues of C_U (N, M^2)): ``refparams_vecgsm.m``."""
    n, _, h, w = x.shape
    u = F.unfold(x, _M)  # (N, M^2, every overlapping block)
    centred = u - u.mean(2, keepdim=True)
    cu = centred @ centred.transpose(1, 2) / u.shape[2]
    blocks = F.unfold(x, _M, stride=_M)  # (N, M^2, non-overlapping blocks), row-major positions
    sol, info = torch.linalg.solve_ex(cu, blocks)  # singular (a flat subband): NaN, as the release's inv
    sol = torch.where((info != 0).view(-1, 1, 1), torch.full_like(sol, float("nan")), sol)
    ss = (blocks * sol).sum(1) / (_M * _M)
    return ss.view(n, 1, h // _M, w // _M), torch.linalg.eigvalsh(cu)


def ifc(reference: torch.Tensor, distorted: torch.Tensor, data_range: float = 1.0, *,
        reduction: str = "none") -> torch.Tensor:
    """Information fidelity criterion of ``distorted`` images given their ``reference`` per image,
    ``(N,)`` (higher is better; the order matters: the release's ``ifcvec(imorg, imdist)``; the
    registry's ``create_metric('ifc')(output, reference)`` takes them the other way round, as every
    registered metric and ``evaluate`` do). Images (N, C, H, W) in [0, data_range], C = 1
    (luminance, taken as is) or 3 (RGB: its BT.601 luma, ``rgb_to_y``, as SR evaluations do); a
    batch of 1 broadcasts; at least 72 x 72. Computed in float64 on the 0..255 scale (the release's
    tolerances are absolute), the result in the inputs' dtype. See the module docstring."""
    x, y = reference, distorted
    data_range = V.check_bound(data_range, "data_range")
    reduction = V.check_reduction(reduction, allow_none=True)
    hint = "convert 0..255 images with x.float() / 255, or pass data_range=255"
    V.check_image(x, "reference", channels=None, hint=hint, finite=True)
    V.check_image(y, "distorted", channels=None, hint=hint, finite=True)
    V.check_pair(x, y, "reference", "distorted")
    V.check_size(x, IFC_MIN_SIZE, "IFC (its steerable pyramid has 4 levels of a 9-tap filter)", "reference")
    if x.shape[1] not in (1, 3):
        raise ValueError(f"reference and distorted must have 1 (luminance) or 3 (RGB) channels for IFC, got shape "
                         f"{tuple(x.shape)}")
    out_dtype = x.dtype
    n = max(x.shape[0], y.shape[0])
    x, y = x.double().expand(n, *x.shape[1:]), y.double().expand(n, *y.shape[1:])
    if n == 0:
        return reduce_batch(x.new_zeros((0,)), reduction).to(out_dtype)
    if x.shape[1] == 3:
        x, y = rgb_to_y(x, data_range), rgb_to_y(y, data_range)
    else:
        x, y = x * (255.0 / data_range), y * (255.0 / data_range)
    # one image at a time: a batch's float64 subbands leave the cache (16 256x256 images: 107 ms an
    # image in one call, 51 ms one by one, measured here)
    total = torch.cat([_ifc_luma(x[i:i + 1], y[i:i + 1]) for i in range(n)])
    return reduce_batch(total, reduction).to(out_dtype)


def _ifc_luma(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """IFC (N,) of luma images (N, 1, H, W) on the 0..255 scale, float64."""
    n = x.shape[0]
    pixels = x.shape[2] * x.shape[3]
    px, py = steerable_pyramid(x), steerable_pyramid(y)
    total = x.new_zeros(n)
    for lev, ori in IFC_SUBBANDS:
        a, b = px[lev][:, ori:ori + 1], py[lev][:, ori:ori + 1]
        h, w = a.shape[2] // _M * _M, a.shape[3] // _M * _M
        a, b = a[..., :h, :w], b[..., :h, :w]
        size = 2 ** (4 - lev) + 1  # the release's 2^ceil((sub - 1) / 6) + 1: 17 at the finest level
        g, vv = _distortion_channel(a, b, size)
        ss, lam = _reference_gsm(a)
        border = math.ceil((size - 1) / 2 / _M)
        crop = (slice(None), slice(None), slice(border, g.shape[2] - border), slice(border, g.shape[3] - border))
        g, vv, ss = g[crop], vv[crop], ss[crop]
        info = torch.log2(1 + (g * g * ss / (vv + _SIGMA_NSQ)).unsqueeze(-1) * lam.view(n, 1, 1, 1, -1))
        total = total + info.sum((1, 2, 3, 4))
    return total / pixels
