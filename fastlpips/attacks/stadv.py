"""StAdv: spatially transformed adversarial examples (Xiao et al., ICLR 2018) as perceptual-advex
0.2.6 runs them (``StAdvAttack``: recoloradv's mister_ed ``ParameterizedXformAdv`` with
``FullSpatial`` and ``use_stadv=True``, driven by mister_ed's ``PGD``), written on plain PyTorch.

Parameterisation (as mister_ed's ``FullSpatial``): every output pixel samples the image at its own
location in ``grid_sample`` coordinates, normalised to [-1, 1] with ``align_corners=False``
(bilinear, zero padding). The flow is the offset of that sampling grid from the identity grid,
``flow`` (N, H, W, 2) with ``flow[..., 0]`` horizontal and ``flow[..., 1]`` vertical, so a flow
of 0.05 moves a sample by 0.025 W (horizontally) or 0.025 H (vertically) pixels: 0.8 px on 32x32
images, 5.6 px on 224x224. ``bound`` limits the L_inf norm of that flow.

The attack (as ``MisterEdAttack`` with ``PGD_ITERS = 20``, no random start, ``signed=False``):
starting from the identity grid, each of ``num_iterations`` iterations

1. projects the sampling grid: clamp to [-1, 1], then clamp to identity +- ``bound`` (in that
   order, so a grid point next to the border may end up to ``bound`` outside [-1, 1]);
2. evaluates ``loss = (z_y - max_{j != y} z_j) + smoothness * L_flow`` per image (mister_ed's
   ``CWLossF6`` with kappa = inf, i.e. an unclamped margin, plus its ``PerturbationNormLoss``, which
   for ``use_stadv`` is the StAdv flow loss ``flow_smoothness``), weight 0.0025 / bound by default;
3. takes one ``torch.optim.Adam`` step (lr 0.01) on the sampling grid for the batch's summed loss.

The output is the last iterate, projected once more and applied: mister_ed's PGD tracks the best
loss per image (``keep_best``) but returns the final perturbation, not the best one, and does not
stop early at 20 iterations. ``self.last`` keeps ``flow`` (N, H, W, 2), ``sampling_grid`` (the
absolute grid the output was sampled with), ``size`` (the flow's per-image L_inf norm) and
``loss`` (the per-image loss of the last iteration).

Deliberate differences from perceptual-advex / mister_ed:

* the model's train/eval mode is left as it is (mister_ed's PGD calls ``classifier.eval()`` and
  leaves it there): put the model in eval mode first to attack it as perceptual-advex does;
* gradients are taken with ``torch.autograd.grad`` w.r.t. the grid only: the model's parameters
  get none and keep any the caller had (mister_ed backpropagates into them and then calls
  ``model.zero_grad()``, which drops the caller's);
* ``flow_smoothness`` works on any H x W (mister_ed's ``stAdv_norm`` asserts square images and
  shifts with permutation matrices; the value is the same sum up to float summation order, and
  the gradient is summed in the same order: equal to the bit in the tests);
* images in float16 / bfloat16 are attacked with the grid held in float32 (the model sees images
  in x's dtype), so the bound holds to float32 round-off;
* outputs are clamped to [0, 1] (bilinear interpolation with zero padding of [0, 1] images is
  already in [0, 1]; the clamp removes float round-off only);
* ``kappa`` (default inf, perceptual-advex's value) is exposed.

The iterations reproduce recoloradv's arithmetic (absolute grid coordinates, the projection written
as mister_ed's in-place ``p += clamp(p) - p``, the same Adam), so the adversarial images agree with
perceptual-advex's to the bit on CPU in float32 (tested to 1e-5; equal in the tests);
``apply_flow(x, last['flow'])`` rebuilds the output from the offsets to float round-off.
"""
from __future__ import annotations

import math
from numbers import Real
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..validation import (
    check_bound,
    check_images_and_labels,
    check_labels,
    check_logits,
    check_nonnegative,
    check_positive_int,
)
from .perceptual import margin_loss
from .threat import ThreatAttack

__all__ = ["StAdv", "identity_grid", "apply_flow", "flow_smoothness", "project_sampling_grid"]


def _check_kappa(kappa) -> float:
    if isinstance(kappa, bool) or not isinstance(kappa, Real) or math.isnan(kappa) or kappa < 0:
        raise ValueError(f"kappa must be a number >= 0 (inf: no clamp), got {kappa!r}")
    return float(kappa)


def _param_dtype(dtype: torch.dtype) -> torch.dtype:
    """Parameters live in float32 or float64; half-precision images get float32 parameters."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def identity_grid(n: int, h: int, w: int, *, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """The (n, h, w, 2) ``grid_sample`` grid (align_corners=False) that reproduces the image: pixel
    (i, j) samples at ((2 j + 1) / w - 1, (2 i + 1) / h - 1), as mister_ed's ``FullSpatial``."""
    theta = torch.zeros(n, 2, 3, dtype=dtype, device=device)
    theta[:, 0, 0] = 1
    theta[:, 1, 1] = 1
    return F.affine_grid(theta, [n, 1, h, w], align_corners=False)


def _sample(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _check_flow(x: torch.Tensor, flow: torch.Tensor) -> None:
    n, _, h, w = x.shape
    if not isinstance(flow, torch.Tensor) or tuple(flow.shape) != (n, h, w, 2):
        got = tuple(flow.shape) if isinstance(flow, torch.Tensor) else type(flow).__name__
        raise ValueError(f"flow must be a tensor of shape (N, H, W, 2) = {(n, h, w, 2)} for images of shape "
                         f"{tuple(x.shape)}, got {got}")


def apply_flow(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Warp images ``x`` (N, C, H, W) by ``flow`` (N, H, W, 2): bilinear samples of x at
    identity_grid + flow (normalised [-1, 1] coordinates, align_corners=False, zero padding).
    Equals mister_ed's ``FullSpatial.forward`` with ``xform_params = identity + flow``."""
    _check_flow(x, flow)
    n, _, h, w = x.shape
    grid = identity_grid(n, h, w, dtype=flow.dtype, device=flow.device) + flow
    return _sample(x, grid.to(x.dtype))


def flow_smoothness(flow: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """(N,) StAdv's flow loss L_flow of ``flow`` (N, H, W, 2): for every pixel p and each of its four
    neighbours q (the edge pixel standing in for a missing one), sqrt(||f_p - f_q||^2 + eps), summed.
    Equals mister_ed's ``FullSpatial.stAdv_norm`` (which needs H == W); the terms are built in its
    order (rows: previous, next; columns: previous, next) so that its gradient is summed the same way."""
    if not isinstance(flow, torch.Tensor) or flow.dim() != 4 or flow.shape[-1] != 2:
        got = tuple(flow.shape) if isinstance(flow, torch.Tensor) else type(flow).__name__
        raise ValueError(f"flow must be a tensor of shape (N, H, W, 2), got {got}")
    norm = torch.zeros(flow.shape[0], dtype=flow.dtype, device=flow.device)
    for dim in (1, 2):
        k = torch.arange(flow.shape[dim], device=flow.device)
        for neighbour in ((k - 1).clamp(min=0), (k + 1).clamp(max=flow.shape[dim] - 1)):
            delta = flow - flow.index_select(dim, neighbour)
            norm = norm + (delta.pow(2).sum(-1) + eps).pow(0.5).sum((1, 2))
    return norm


def project_sampling_grid(grid: torch.Tensor, identity: torch.Tensor, bound: float) -> torch.Tensor:
    """mister_ed's ``FullSpatial.project_params`` for L_inf: clamp the sampling grid to [-1, 1],
    then to identity +- bound, each written as p + (q - p) like mister_ed's in-place update."""
    p = grid + (grid.clamp(-1, 1) - grid)
    return p + ((p - identity).clamp(-bound, bound) + identity - p)


def _margin(logits: torch.Tensor, labels: torch.Tensor, kappa: float) -> torch.Tensor:
    """mister_ed's untargeted ``CWLossF6``: z_y - max_{j != y} z_j, clamped below at -kappa (the
    negated ``margin_loss``)."""
    return -margin_loss(logits, labels, kappa)


class _MisterEdPGD(ThreatAttack):
    """The shared loop of perceptual-advex's ``MisterEdAttack`` (mister_ed ``PGD``, Adam,
    signed=False, no random start, final iterate returned) over one parameter tensor ``p``."""

    noise_kind = None
    #: The default smoothness weight times the bound (perceptual-advex's defaults).
    smoothness_times_bound: float
    #: The names in ``last`` of the offset from the identity and of the parameter itself.
    offset_name: str
    param_name: str

    def _setup(self, model, bound, num_iterations, lr, smoothness, kappa):
        self.model = model
        self.bound = check_bound(bound)
        if smoothness is None:
            smoothness = self.smoothness_times_bound / self.bound
        self.num_iterations = check_positive_int(num_iterations, "num_iterations")
        self.lr = check_bound(lr, "lr")
        self.smoothness = check_nonnegative(smoothness, "smoothness")
        self.kappa = _check_kappa(kappa)

    def _parametrize(self, xp: torch.Tensor) -> Tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
        """The identity parameter for the images ``xp`` (in the parameter dtype) and the map from a
        parameter to images."""
        raise NotImplementedError

    def _project(self, p: torch.Tensor, ident: torch.Tensor) -> torch.Tensor:
        """``p`` moved into the bound around ``ident``."""
        raise NotImplementedError

    def _smoothness(self, offset: torch.Tensor) -> torch.Tensor:
        """The per-image smoothness loss of an offset from the identity."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, labels: torch.Tensor, *, noise: Optional[torch.Tensor] = None,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``x`` (N, 3, H, W) in [0, 1], ``labels`` (N,) class indices -> adversarial images in [0, 1].
        No random start (``noise`` / ``generator`` are accepted and unused, as ``noise_kind`` is None)."""
        check_images_and_labels(x, labels)
        x = x.detach()
        ident, transform = self._parametrize(x.to(_param_dtype(x.dtype)))
        p, out, loss = self._optimize(x, labels, ident, project=lambda g: self._project(g, ident),
                                      transform=transform, smooth=lambda g: self._smoothness(g - ident))
        offset = p - ident
        self.last = {self.offset_name: offset, self.param_name: p, "size": offset.abs().flatten(1).amax(1),
                     "loss": loss}
        return out

    def _optimize(self, x: torch.Tensor, labels: torch.Tensor, start: torch.Tensor,
                  project: Callable[[torch.Tensor], torch.Tensor], transform: Callable[[torch.Tensor], torch.Tensor],
                  smooth: Callable[[torch.Tensor], torch.Tensor]):
        """Adam on ``p`` (from ``start``): per iteration project, loss, step; returns the projected
        final ``p``, the output images (x's dtype, in [0, 1]) and the last per-image loss."""
        labels = labels.long()
        p = start.clone().requires_grad_(True)
        opt = torch.optim.Adam([p], lr=self.lr)
        loss = None
        with torch.enable_grad():
            for it in range(self.num_iterations):
                with torch.no_grad():
                    p.copy_(project(p))
                logits = self.model(transform(p).to(x.dtype))
                if it == 0:
                    check_logits(logits, x.shape[0])
                    check_labels(labels, x.shape[0], logits.shape[1])
                loss = _margin(logits, labels, self.kappa)
                if self.smoothness:
                    loss = loss + self.smoothness * smooth(p)
                (g,) = torch.autograd.grad(loss.sum(), p)
                p.grad = g
                opt.step()
                p.grad = None
        with torch.no_grad():
            p = project(p.detach())
            out = transform(p).clamp(0, 1).to(x.dtype)
        assert loss is not None  # num_iterations >= 1 (checked in _setup)
        return p, out, loss.detach()


class StAdv(_MisterEdPGD):
    """StAdv under an L_inf bound on the flow (normalised grid coordinates; see the module doc).
    ``attack(x, labels)`` -> adversarial images; ``last``: ``flow``, ``sampling_grid``, ``size``
    (per-image L_inf norm of the flow), ``loss``. ``smoothness`` weights the StAdv flow loss
    (default 0.0025 / bound, perceptual-advex's)."""

    name = "stadv"
    smoothness_times_bound = 0.0025
    offset_name, param_name = "flow", "sampling_grid"

    def __init__(self, model: nn.Module, bound: float = 0.05, *, num_iterations: int = 20, lr: float = 0.01,
                 smoothness: Optional[float] = None, kappa: float = math.inf) -> None:
        super().__init__()
        self._setup(model, bound, num_iterations, lr, smoothness, kappa)

    def _parametrize(self, xp):
        n, _, h, w = xp.shape
        return identity_grid(n, h, w, dtype=xp.dtype, device=xp.device), lambda g: _sample(xp, g)

    def _project(self, p, ident):
        return project_sampling_grid(p, ident, self.bound)

    def _smoothness(self, offset):
        return flow_smoothness(offset)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, num_iterations={self.num_iterations}, lr={self.lr:g}, "
                f"smoothness={self.smoothness:g}")
