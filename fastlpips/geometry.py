"""The E-LPIPS paper's geometry (section 3.3; REFERENCE.md section 7): barycenters and discrete
geodesics of images under a distance (L2, LPIPS, E-LPIPS with fresh draws every step).

* ``barycenter(images, distance)``: argmin_x sum_i d(x, n_i)^2 over x in [0, 1];
* ``geodesic(a, b, distance, frames)``: the ``frames`` free images x_1..x_k between fixed ends
  minimizing sum_i d(x_i, x_{i+1})^2.

The release's optimizer is the default: Adam with lr_t = lr / (1 + 0.02 t'^0.75),
t' = sqrt(100^2 + t^2) - 100 (``release_lr``), a start at 0.5 + 0.2 N(0, 1), images clipped to
[1e-5, 1 - 1e-5] after every step. Every step evaluates all the pairs it needs in one batched
distance call (the release takes one random input per barycenter step: ``inputs_per_step=1``).
Under L2 the barycenter is the pixel mean and the geodesic the linear cross-fade (tested).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Union

import torch

from . import validation as V

__all__ = ["make_distance", "release_lr", "barycenter", "geodesic", "GeometryResult"]

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
CLIP = (1e-5, 1 - 1e-5)


def release_lr(step: int, lr: float = 0.03) -> float:
    """The release's learning rate at 0-based ``step``: lr / (1 + 0.02 t'^0.75), t' = sqrt(100^2 + t^2) - 100."""
    t = math.sqrt(100.0 ** 2 + float(step) ** 2) - 100.0
    return lr / (1.0 + 0.02 * t ** 0.75)


def make_distance(name: Union[str, Distance], *, draws: int = 1, device=None) -> Distance:
    """A distance d(x, y) -> (N,) on images in [0, 1]: 'l2' (the Euclidean norm of the pixels),
    'lpips' / 'lpips-alex', 'lpips-vgg' (LPIPS values), 'elpips' (E-LPIPS with ``draws`` fresh
    draws per call: an expectation-over-transformation estimate), or a callable (returned as is)."""
    if callable(name):
        return name
    if name == "l2":
        return lambda x, y: (x - y).flatten(1).norm(dim=1)
    if name in ("lpips", "lpips-alex", "lpips-vgg", "lpips-squeeze"):
        from .model import LPIPS

        net = "alex" if name == "lpips" else name.split("-", 1)[1]
        model = LPIPS(net=net, verbose=False).eval().requires_grad_(False)
        if device is not None:
            model = model.to(device)
        return lambda x, y: model(x, y, normalize=True).flatten()
    if name == "elpips":
        from .elpips import ELPIPS

        draws = V.check_positive_int(draws, "draws")
        metric = ELPIPS(device=device).requires_grad_(False)
        return lambda x, y: metric(x, y, n_samples=draws)
    raise ValueError(f"distance must be 'l2', 'lpips', 'lpips-vgg', 'lpips-squeeze', 'elpips' or a callable, "
                     f"got {name!r}")


@dataclass
class GeometryResult:
    """The optimized image(s) and the objective per step (``losses``)."""

    images: torch.Tensor
    losses: List[float] = field(default_factory=list)


def _check_unit(x: torch.Tensor, name: str) -> None:
    V.check_image(x, name, hint=V.UNIT_HINT, allow_empty=False)
    mn, mx = (float(v) for v in torch.aminmax(x.detach()))
    if not (math.isfinite(mn) and math.isfinite(mx)) or mn < 0 or mx > 1:
        raise ValueError(f"{name} must hold finite values in [0, 1], got [{mn:.4g}, {mx:.4g}]{V.unit_range_hint(mn, mx)}")


def _start(shape, init: str, generator: torch.Generator, like: torch.Tensor, mean: Optional[torch.Tensor] = None):
    if init == "noise":
        z = torch.randn(shape, generator=generator, dtype=like.dtype).to(like.device)
        return (0.5 + 0.2 * z).clamp(*CLIP)
    if init == "mean" and mean is not None:
        return mean.expand(shape).clone().clamp(*CLIP)
    raise ValueError(f"init must be 'noise'{' or a start tensor' if mean is None else ', or mean'}, got {init!r}")


def _optimize(params: torch.Tensor, loss_fn: Callable[[int], torch.Tensor], steps: int, lr: float,
              progress: Optional[bool], desc: str) -> List[float]:
    from tqdm import tqdm

    params.requires_grad_(True)
    opt = torch.optim.Adam([params], lr=release_lr(0, lr))
    losses = []
    bar = tqdm(range(steps), desc=desc, unit="step", disable=True if progress is False else (None if progress is None else False),
               leave=False)
    for t in bar:
        for g in opt.param_groups:
            g["lr"] = release_lr(t, lr)
        loss = loss_fn(t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            params.clamp_(*CLIP)
        losses.append(float(loss.detach()))
        if t % 10 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.4g}")
    params.requires_grad_(False)
    return losses


def barycenter(images: torch.Tensor, distance: Union[str, Distance] = "l2", *, steps: int = 1000, lr: float = 0.03,
               inputs_per_step: Optional[int] = None, init: Union[str, torch.Tensor] = "noise", seed: int = 0,
               draws: int = 1, progress: Optional[bool] = False) -> GeometryResult:
    """argmin_x sum_i d(x, n_i)^2 for ``images`` (K, 3, H, W) in [0, 1], K >= 2. Each step takes
    ``inputs_per_step`` random inputs (None: all K, in one batched call; the release: 1) and one
    Adam step. ``init``: 'noise' (the release's), 'mean' (the pixel mean) or a start image."""
    _check_unit(images, "images")
    k = images.shape[0]
    if k < 2:
        raise ValueError(f"a barycenter needs at least 2 images, got {k}")
    steps = V.check_positive_int(steps, "steps")
    if inputs_per_step is not None and not (isinstance(inputs_per_step, int) and 1 <= inputs_per_step <= k):
        raise ValueError(f"inputs_per_step must be None or an int in [1, {k}], got {inputs_per_step!r}")
    d = make_distance(distance, draws=draws, device=images.device)
    g = torch.Generator().manual_seed(seed)
    images = images.detach()
    shape = (1,) + tuple(images.shape[1:])
    if isinstance(init, torch.Tensor):
        if tuple(init.shape[-3:]) != shape[1:]:
            raise ValueError(f"init has shape {tuple(init.shape)}; the images are {tuple(images.shape[1:])}")
        x = init.detach().to(images).reshape(shape).clone().clamp(*CLIP)
    else:
        x = _start(shape, init, g, images, images.mean(0, keepdim=True))

    def loss(t):
        idx = torch.arange(k) if inputs_per_step is None else torch.randperm(k, generator=g)[:inputs_per_step]
        n = images[idx.to(images.device)]
        return d(x.expand_as(n), n).square().sum()
    losses = _optimize(x, loss, steps, lr, progress, "barycenter")
    return GeometryResult(x.detach(), losses)


def geodesic(a: torch.Tensor, b: torch.Tensor, distance: Union[str, Distance] = "l2", *, frames: int = 8,
             steps: int = 1000, lr: float = 0.03, init: str = "noise", seed: int = 0, draws: int = 1,
             progress: Optional[bool] = False) -> GeometryResult:
    """The discrete geodesic between images ``a`` and ``b`` ((3, H, W) or (1, 3, H, W) in [0, 1]):
    ``frames`` free images minimizing sum_i d(x_i, x_{i+1})^2 over the chain a, x_1..x_k, b (all
    k + 1 pairs in one batched distance call per step). ``init``: 'noise' (the release's eq. 5
    start) or 'linear' (the cross-fade). Returns the chain with its ends, (frames + 2, 3, H, W)."""
    a = a[None] if a.dim() == 3 else a
    b = b[None] if b.dim() == 3 else b
    _check_unit(a, "a")
    _check_unit(b, "b")
    if a.shape != b.shape or a.shape[0] != 1:
        raise ValueError(f"a and b must be single images of one size, got {tuple(a.shape)} and {tuple(b.shape)}")
    if not (isinstance(frames, int) and not isinstance(frames, bool) and frames >= 1):
        raise ValueError(f"frames must be an int >= 1, got {frames!r}")
    steps = V.check_positive_int(steps, "steps")
    d = make_distance(distance, draws=draws, device=a.device)
    g = torch.Generator().manual_seed(seed)
    a, b = a.detach(), b.detach()
    shape = (frames,) + tuple(a.shape[1:])
    if init == "linear":
        w = torch.arange(1, frames + 1, dtype=a.dtype, device=a.device).view(-1, 1, 1, 1) / (frames + 1)
        x = ((1 - w) * a + w * b).clamp(*CLIP)
    else:
        x = _start(shape, init, g, a)

    def loss(t):
        chain = torch.cat([a, x, b])
        return d(chain[:-1], chain[1:]).square().sum()
    losses = _optimize(x, loss, steps, lr, progress, "geodesic")
    return GeometryResult(torch.cat([a, x.detach(), b]), losses)
