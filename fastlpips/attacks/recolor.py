"""ReColorAdv: a colour-function attack (Laidlaw & Feizi, NeurIPS 2019) as perceptual-advex 0.2.6
runs it (``ReColorAdvAttack``: recoloradv's ``ReColorAdv`` perturbation with the ``FullSpatial``
colour transformer in ``CIELUVColorSpace``, driven by mister_ed's ``PGD``), on plain PyTorch.

Parameterisation (as recoloradv): colours live in recoloradv's scaled CIELUV,
c = (L* / 100, (u* + 100) / 200, (v* + 100) / 200) (``rgb_to_cieluv`` / ``cieluv_to_rgb``: sRGB
gamma, the 4-decimal sRGB <-> XYZ matrices, white point u' = 0.1978, v' = 0.4683, Y = 1,
eps = 1e-10, XYZ clamped to [0, 1.1] and RGB to [0, 1] on the way back). A colour function is a
grid of (rx, ry, rz) = ``resolution`` points per image, (N, rx, ry, rz, 3), whose identity holds
(i / (rx - 1), j / (ry - 1), k / (rz - 1)) at point (i, j, k); an image's colour c is mapped to
the trilinear interpolation of the grid at c * (resolution - 1) (``interpolate_color_grid``;
coordinates outside the grid, which sRGB colours reach since u*, v* leave [-100, 100], take the
edge value: both corner indices are clamped). The perturbation's size is the L_inf norm of the
grid's offset from the identity, ``bound`` 0.06 by default, on that scaled CIELUV scale.

The attack (``MisterEdAttack``: 20 iterations, no random start, ``signed=False``), from the
identity grid, per iteration:

1. projects the grid (``project_color_grid``): clamp to [0, 1]; map every grid point to RGB and
   back (``rgb_to_cieluv(cieluv_to_rgb(.))``, which moves out-of-gamut points onto the gamut);
   clamp to identity +- ``bound``;
2. evaluates ``loss = (z_y - max_{j != y} z_j) + smoothness * S`` per image (``CWLossF6`` with
   kappa = inf plus ``PerturbationNormLoss``, which with ``use_smooth_loss`` is recoloradv's
   ``norms.smoothness`` of the offset, ``color_grid_smoothness``), weight 0.0036 / bound by default;
3. takes one ``torch.optim.Adam`` step (lr 0.001) on the grid for the batch's summed loss.

The output is the final iterate, projected once more and applied (mister_ed's PGD returns the last
perturbation, not the best one it tracks). Note what step 1 does at the start: identity grid points
outside the sRGB gamut are moved by the gamut round trip (then clamped to the bound), so even before
any step the "zero" perturbation is not the identity: the offset's L_inf norm is already ``bound``
on every image and colours near the gamut boundary change slightly. ``self.last`` keeps ``grid``
(the offset from the identity, (N, rx, ry, rz, 3)), ``color_grid`` (the absolute grid), ``size``
(per-image L_inf norm of the offset) and ``loss`` (per-image loss of the last iteration).

Deliberate differences from perceptual-advex / recoloradv (as in ``stadv``): the model's train/eval
mode is left alone (mister_ed's PGD sets eval), gradients go to the grid only (mister_ed's end with
``model.zero_grad()``, dropping the caller's), half-precision images get float32 colour grids,
outputs are clamped to [0, 1] (already so: ``cieluv_to_rgb`` clamps), any ``resolution`` >= 2 per
axis and ``kappa`` (default inf) are exposed, and a per-channel ``bound`` (recoloradv accepts a
list) is not supported.

Properties of recoloradv's parameterisation kept as they are: the colour grid spans [0, 1] in
every scaled coordinate, but sRGB reaches u* up to ~175 (red) and v* down to ~-134 (blue), i.e.
coordinates up to 1.38 and down to -0.17; such colours (about 14% of uniformly random RGB colours,
few in natural images) are looked up at the grid's edge, so even the identity grid changes them
(pure red (1, 0, 0) comes out as about (0.83, 0.35, 0.19)), and the round trip rgb -> CIELUV -> rgb
is exact only to ~1e-3 (the
4-decimal matrices are not exact inverses).

The iterations reproduce recoloradv's arithmetic operation for operation (absolute grid, the same
eight gathers, the projection written as recoloradv's in-place ``p += q - p``, the same Adam), so
the adversarial images agree with perceptual-advex's to the bit on CPU in float32 (tested to 1e-5;
equal in the tests);
``apply_color_grid(x, last['grid'])`` rebuilds the output from the offset to float round-off.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, cast

import torch
from torch import nn

from ..validation import check_positive_int
from .stadv import _MisterEdPGD

__all__ = ["ReColorAdv", "rgb_to_cieluv", "cieluv_to_rgb", "identity_color_grid", "interpolate_color_grid",
           "apply_color_grid", "color_grid_smoothness", "project_color_grid"]

# recoloradv's CIELUVColorSpace defaults.
_UP_WHITE, _VP_WHITE, _Y_WHITE, _EPS = 0.1978, 0.4683, 1, 1e-10


def _srgb_to_xyz(imgs: torch.Tensor) -> torch.Tensor:
    small = (imgs < 0.04045).to(imgs.dtype)
    lin = (imgs / 12.92) * small + ((imgs + 0.055) / 1.055) ** 2.4 * (1 - small)
    r, g, b = lin.permute(1, 0, 2, 3)
    x = 0.4124 * r + 0.3576 * g + 0.1805 * b
    y = 0.2126 * r + 0.7152 * g + 0.0722 * b
    z = 0.0193 * r + 0.1192 * g + 0.9504 * b
    return torch.stack([x, y, z], 1)


def _xyz_to_srgb(imgs: torch.Tensor) -> torch.Tensor:
    x, y, z = imgs.permute(1, 0, 2, 3)
    r = 3.2406 * x - 1.5372 * y - 0.4986 * z
    g = -0.9689 * x + 1.8758 * y + 0.0415 * z
    b = 0.0557 * x - 0.2040 * y + 1.0570 * z
    lin = torch.stack([r, g, b], 1)
    small = (lin < 0.0031308).to(lin.dtype)
    lin_pos = lin.clamp(min=1e-10)  # no NaN gradient from the power at <= 0
    return (12.92 * lin) * small + (1.055 * lin_pos ** (1 / 2.4) - 0.055) * (1 - small)


def rgb_to_cieluv(imgs: torch.Tensor) -> torch.Tensor:
    """sRGB images (N, 3, H, W) in [0, 1] -> recoloradv's scaled CIELUV (L*/100, (u*+100)/200,
    (v*+100)/200); equals ``recoloradv.color_spaces.CIELUVColorSpace().from_rgb``."""
    x, y, z = _srgb_to_xyz(imgs).permute(1, 0, 2, 3)
    denom = x + 15 * y + 3 * z + _EPS
    up = 4 * x / denom
    vp = 9 * y / denom
    small = (y / _Y_WHITE < (6 / 29) ** 3).to(y.dtype)
    y_pos = y.clamp(min=_EPS)
    L = ((29 / 3) ** 3 * y / _Y_WHITE) * small + (116 * (y_pos / _Y_WHITE) ** (1 / 3) - 16) * (1 - small)
    u = 13 * L * (up - _UP_WHITE)
    v = 13 * L * (vp - _VP_WHITE)
    return torch.stack([L / 100, (u + 100) / 200, (v + 100) / 200], 1)


def cieluv_to_rgb(imgs: torch.Tensor) -> torch.Tensor:
    """recoloradv's scaled CIELUV (N, 3, H, W) -> sRGB in [0, 1] (XYZ clamped to [0, 1.1], RGB to
    [0, 1]); equals ``recoloradv.color_spaces.CIELUVColorSpace().to_rgb``."""
    L = imgs[:, 0, :, :] * 100
    u = imgs[:, 1, :, :] * 200 - 100
    v = imgs[:, 2, :, :] * 200 - 100
    up = u / (13 * L + _EPS) + _UP_WHITE
    vp = v / (13 * L + _EPS) + _VP_WHITE
    small = (L <= 8).to(L.dtype)
    y = (_Y_WHITE * L * (3 / 29) ** 3) * small + (_Y_WHITE * ((L + 16) / 116) ** 3) * (1 - small)
    denom = 4 * vp + _EPS
    x = y * 9 * up / denom
    z = y * (12 - 3 * up - 20 * vp) / denom
    return _xyz_to_srgb(torch.stack([x, y, z], 1).clamp(0, 1.1)).clamp(0, 1)


def _check_resolution(resolution) -> Tuple[int, int, int]:
    if isinstance(resolution, (str, bytes)) or not isinstance(resolution, Sequence) or len(resolution) != 3:
        raise ValueError(f"resolution must be three integers (L, u, v grid points), got {resolution!r}")
    return cast(Tuple[int, int, int], tuple(check_positive_int(r, "resolution entries", minimum=2) for r in resolution))


def identity_color_grid(n: int, resolution: Sequence[int] = (16, 32, 32), *, dtype: torch.dtype = torch.float32,
                        device=None) -> torch.Tensor:
    """(n, rx, ry, rz, 3) identity colour grid: point (i, j, k) holds (i/(rx-1), j/(ry-1), k/(rz-1))."""
    rx, ry, rz = _check_resolution(resolution)
    axes = [torch.arange(r, dtype=torch.float64, device=device) / (r - 1) for r in (rx, ry, rz)]
    g = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).to(dtype)
    return g.expand(n, rx, ry, rz, 3).contiguous()


def _check_grid(c: torch.Tensor, grid: torch.Tensor, name: str) -> None:
    if not isinstance(grid, torch.Tensor) or grid.dim() != 5 or grid.shape[-1] != 3 or grid.shape[0] != c.shape[0] \
            or min(grid.shape[1:4]) < 2:
        got = tuple(grid.shape) if isinstance(grid, torch.Tensor) else type(grid).__name__
        raise ValueError(f"{name} must be a tensor of shape (N, rx, ry, rz, 3) with N = {c.shape[0]} and every "
                         f"resolution >= 2, got {got}")


def interpolate_color_grid(c: torch.Tensor, color_grid: torch.Tensor) -> torch.Tensor:
    """Trilinear lookup of colours ``c`` (N, 3, H, W, grid coordinates in [0, 1]) in the absolute
    grid ``color_grid`` (N, rx, ry, rz, 3); outside [0, 1] the edge values are held. Equals
    ``recoloradv.color_transformers.FullSpatial.forward`` with ``xform_params = color_grid``."""
    _check_grid(c, color_grid, "color_grid")
    n, ch, h, w = c.shape
    res = color_grid.shape[1:4]
    t = c.permute(0, 2, 3, 1) * torch.tensor([r - 1 for r in res], dtype=c.dtype, device=c.device)
    base, frac = torch.floor(t).long(), t % 1
    flat = color_grid.reshape(n, -1, 3)

    def corner(d):
        idx = torch.zeros(n, h, w, dtype=torch.long, device=c.device)
        for axis in range(3):
            idx = idx * res[axis] + (base[..., axis] + d[axis]).clamp(0, res[axis] - 1)
        return flat.gather(1, idx.view(n, -1)[:, :, None].expand(-1, -1, 3)).view(n, h, w, 3)

    fx, fy, fz = frac[..., 0, None], frac[..., 1, None], frac[..., 2, None]
    ends = []
    for dx in (0, 1):
        mids = []
        for dy in (0, 1):
            v0, v1 = corner((dx, dy, 0)), corner((dx, dy, 1))
            mids.append(v0 * (1 - fz) + v1 * fz)
        ends.append(mids[0] * (1 - fy) + mids[1] * fy)
    return (ends[0] * (1 - fx) + ends[1] * fx).permute(0, 3, 1, 2)


def apply_color_grid(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Recolour sRGB images ``x`` (N, 3, H, W) with the colour-grid offset ``grid`` (N, rx, ry, rz, 3)
    from the identity, in scaled CIELUV: cieluv_to_rgb(interpolate(rgb_to_cieluv(x), identity + grid)).
    Equals recoloradv's ``ReColorAdv`` forward (CIELUV, ``FullSpatial``) without its projection."""
    _check_grid(x, grid, "grid")
    ident = identity_color_grid(x.shape[0], grid.shape[1:4], dtype=grid.dtype, device=grid.device)
    return cieluv_to_rgb(interpolate_color_grid(rgb_to_cieluv(x.to(grid.dtype)), ident + grid)).to(x.dtype)


def color_grid_smoothness(grid: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """(N,) recoloradv's ``norms.smoothness`` of a colour-grid offset (N, rx, ry, rz, 3): along each
    grid axis, for both neighbours (the edge point standing in for a missing one),
    sqrt(||o_q - o_p||^2 + eps), summed (terms built in recoloradv's order, so that the gradient is
    summed the same way)."""
    if not isinstance(grid, torch.Tensor) or grid.dim() != 5 or grid.shape[-1] != 3:
        got = tuple(grid.shape) if isinstance(grid, torch.Tensor) else type(grid).__name__
        raise ValueError(f"grid must be a tensor of shape (N, rx, ry, rz, 3), got {got}")
    norm = torch.zeros(grid.shape[0], dtype=grid.dtype, device=grid.device)
    for dim in (1, 2, 3):
        n = grid.shape[dim]
        following = torch.cat([grid.narrow(dim, 1, n - 1), grid.narrow(dim, n - 1, 1)], dim)
        preceding = torch.cat([grid.narrow(dim, 0, 1), grid.narrow(dim, 0, n - 1)], dim)
        for shifted in (following, preceding):
            delta = shifted - grid
            norm = norm + (delta.pow(2).sum(-1) + eps).pow(0.5).sum((1, 2, 3))
    return norm


def project_color_grid(color_grid: torch.Tensor, identity: torch.Tensor, bound: float) -> torch.Tensor:
    """recoloradv's ``FullSpatial.project_params`` for L_inf on an absolute grid: clamp to [0, 1],
    round-trip every point through RGB (gamut), clamp to identity +- bound (each step written as
    p + (q - p), recoloradv's in-place update)."""
    n = color_grid.shape[0]
    clamped = color_grid.clamp(0, 1)
    pts = clamped.permute(0, 4, 1, 2, 3).reshape(n, 3, -1, 1)
    gamut = rgb_to_cieluv(cieluv_to_rgb(pts)).permute(0, 2, 3, 1).reshape(color_grid.shape)
    p = color_grid + (gamut - color_grid)
    return p + ((p - identity).clamp(-bound, bound) + identity - p)


class ReColorAdv(_MisterEdPGD):
    """ReColorAdv in CIELUV under an L_inf bound on the colour-grid offset (see the module doc).
    ``attack(x, labels)`` -> adversarial images; ``last``: ``grid`` (offset), ``color_grid``,
    ``size`` (per-image L_inf norm of the offset), ``loss``. ``smoothness`` weights the grid's
    smoothness loss (default 0.0036 / bound, perceptual-advex's)."""

    name = "recolor"
    smoothness_times_bound = 0.0036
    offset_name, param_name = "grid", "color_grid"

    def __init__(self, model: nn.Module, bound: float = 0.06, *, num_iterations: int = 20, lr: float = 0.001,
                 resolution: Sequence[int] = (16, 32, 32), smoothness: Optional[float] = None,
                 kappa: float = math.inf) -> None:
        super().__init__()
        self.resolution = _check_resolution(resolution)
        self._setup(model, bound, num_iterations, lr, smoothness, kappa)

    def _parametrize(self, xp):
        luv = rgb_to_cieluv(xp)
        ident = identity_color_grid(xp.shape[0], self.resolution, dtype=xp.dtype, device=xp.device)
        return ident, lambda g: cieluv_to_rgb(interpolate_color_grid(luv, g))

    def _project(self, p, ident):
        return project_color_grid(p, ident, self.bound)

    def _smoothness(self, offset):
        return color_grid_smoothness(offset)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, resolution={self.resolution}, num_iterations={self.num_iterations}, "
                f"lr={self.lr:g}, smoothness={self.smoothness:g}")
