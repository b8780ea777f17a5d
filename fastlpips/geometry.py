"""The E-LPIPS paper's geometry (section 3.3; REFERENCE.md section 7): barycenters and discrete
geodesics of images under a distance (Euclidean, LPIPS, E-LPIPS with fresh draws every step; any
lower-better, differentiable metric of the registry).

* ``barycenter(images, distance)``: argmin_x sum_i d(x, n_i)^2 over x in [0, 1];
* ``geodesic(a, b, distance, frames)``: the ``frames`` free images x_1..x_k between fixed ends
  minimizing sum_i d(x_i, x_{i+1})^2;
* ``hessian_study(distance, x)``: the spectrum of the distance's Hessian at an image (extremal
  eigenvalues by Lanczos, moments by Hutchinson traces, normalized by the mean eigenvalue, a
  density by stochastic Lanczos quadrature), and ``plot_spectrum``.

The release's optimizer is the default: Adam with lr_t = lr / (1 + 0.02 t'^0.75),
t' = sqrt(100^2 + t^2) - 100 (``release_lr``), a start at 0.5 + 0.2 N(0, 1), images clipped to
[1e-5, 1 - 1e-5] after every step. Every step evaluates all the pairs it needs at once (the
release takes one random input per barycenter step: ``inputs_per_step=1``): for LPIPS and E-LPIPS
each image's features are computed once per step, however many pairs it is in, the fixed images
(inputs, geodesic ends) without a graph (and only once for deterministic LPIPS); E-LPIPS takes
``draws`` fresh draws per step, shared by all images of the step (``ELPIPSDistance(shared=True)``).
Under the Euclidean distance ('euclidean') the barycenter is the pixel mean and the geodesic the
linear cross-fade (tested).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from . import validation as V
from .ops.head import lpips_head_map

__all__ = ["make_distance", "release_lr", "barycenter", "geodesic", "GeometryResult", "HessianStudy", "hessian_study",
           "plot_spectrum"]

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
CLIP = (1e-5, 1 - 1e-5)


def release_lr(step: int, lr: float = 0.03) -> float:
    """The release's learning rate at 0-based ``step``: lr / (1 + 0.02 t'^0.75), t' = sqrt(100^2 + t^2) - 100."""
    t = math.sqrt(100.0 ** 2 + float(step) ** 2) - 100.0
    return lr / (1.0 + 0.02 * t ** 0.75)


def _registered(name: str, draws: int, device):
    """The registry's metric ``name`` as a geometry distance: a loss (any range; the images stay in
    [0, 1] anyway), frozen, lower-better and differentiable, else ValueError."""
    from .metrics import create_metric, metric_info

    if not isinstance(name, str):
        raise TypeError(f"distance must be a metric name, a callable or a FeatureDistance, got {type(name).__name__}")
    try:
        info = metric_info(name)
    except ValueError as e:
        raise ValueError(f"distance: {e}") from None
    if not info.lower_better or not info.differentiable:
        why = "higher is better" if not info.lower_better else "it is piecewise constant (no gradient)"
        raise ValueError(f"distance {name!r} cannot be minimized: {why}; use a lower-better, differentiable "
                         f"metric such as 'euclidean', 'lpips-alex', 'lpips-vgg' or 'elpips'")
    opts = {"n_samples": V.check_positive_int(draws, "draws")} if info.family == "elpips" else {}
    return create_metric(name, as_loss=True, device=device, **opts).requires_grad_(False)


def make_distance(name: Union[str, Distance], *, draws: int = 1, device=None) -> Distance:
    """A distance d(x, y) -> (N,) on images in [0, 1]: a name of the metric registry
    (``fastlpips.list_metrics()``) that is lower-better and differentiable: 'euclidean' (the
    Euclidean norm of the pixels), 'lpips' / 'lpips-alex', 'lpips-vgg', ... (LPIPS values),
    'elpips' (E-LPIPS with ``draws`` fresh draws per call: an expectation-over-transformation
    estimate), 'gmsd', 'l2-rgb'; or a callable (returned as is)."""
    if callable(name):
        return name
    metric = _registered(name, draws, device)
    return lambda x, y: metric(x, y)


def _feature_distance(distance, draws: int, seed: int):
    """The perceptual distances as feature maps (``fastlpips.attacks`` distances): every image's
    trunk runs once per step however many pairs it is in, and fixed images run without a graph;
    E-LPIPS with ``draws`` draws per step shared by all images (``shared=True``). ``distance``: a
    registry metric (``_registered``), a FeatureDistance used as given (e.g.
    ``ELPIPSDistance(ELPIPS(families=...), shared=True)`` for ablations) or a callable. None for
    the registry's other metrics and callables (evaluated pair by pair)."""
    from .attacks.distances import ELPIPSDistance, FeatureDistance, LPIPSDistance
    from .metrics import Metric

    if isinstance(distance, FeatureDistance):
        if isinstance(distance, ELPIPSDistance) and not distance.shared:
            raise ValueError("an ELPIPSDistance for barycenters/geodesics must have shared=True (one draw for "
                             "every image of a step, so all images are comparable with each other)")
        return distance
    if isinstance(distance, Metric) and distance.info.family == "lpips":
        from .model import LPIPS

        assert isinstance(distance.module, LPIPS)  # the registry's LPIPS family holds an LPIPS module
        return LPIPSDistance(distance.module)
    if isinstance(distance, Metric) and distance.info.family == "elpips":
        return ELPIPSDistance(distance.module, samples=V.check_positive_int(draws, "draws"), seed=seed, shared=True)
    return None


class _Pairs:
    """sum over pairs of d(., .)^2 for a step, each image's trunk run once per step: ``fixed``
    images (no gradient; LPIPS features cached once) and the optimized ones. E-LPIPS runs its
    fused heads on the trunk layers directly (``ELPIPS.shared_pass``), under ``draws`` draws per
    step shared by every image; the other names and callables pair by pair."""

    def __init__(self, distance, draws: int, seed: int, device) -> None:
        from .attacks.distances import ELPIPSDistance

        if not callable(distance):  # a name: the registry's metric, built once (TypeError for anything else)
            distance = _registered(distance, draws, device)
        self.fd = _feature_distance(distance, draws, seed)
        self.d = _contract(distance) if self.fd is None else None
        self.elpips = self.fd if isinstance(self.fd, ELPIPSDistance) else None
        self._cache: Optional[torch.Tensor] = None
        self._step = 0

    def check(self, images: torch.Tensor, name: str) -> None:
        """What the distance needs of the images (a minimum size for the perceptual ones)."""
        if self.fd is not None:
            self.fd.check_images(images, name)

    def _draw(self, t: int, h: int, w: int):
        assert self.elpips is not None  # the E-LPIPS paths only
        if t != self._step:
            self.elpips.resample()  # fresh draws every step: an expectation over transformations
            self._step = t
        return self.elpips.shared_draw(h, w)

    def one_to_many(self, x: torch.Tensor, images: torch.Tensor, idx: Optional[torch.Tensor], t: int) -> torch.Tensor:
        """d(x, images_i) for the one free image ``x`` (1, 3, H, W) and the fixed images of index
        ``idx`` (None: all) -> (K,)."""
        if self.fd is not None and self.elpips is None:
            if self._cache is None:  # deterministic features of all the fixed images: once
                with torch.no_grad():
                    self._cache = self.fd.features(images)
            fn = self._cache if idx is None else self._cache[idx]
            fx = self.fd.features(x)
            return self.fd.from_features(fx.expand(fn.shape[0], *fx.shape[1:]), fn)
        fixed = images if idx is None else images[idx]
        if self.elpips is not None:
            return self._elpips_one_to_many(x, fixed, t)
        assert self.d is not None  # no feature distance (fd is None): the checked callable
        return self.d(x.expand_as(fixed), fixed)

    def chain(self, ends: torch.Tensor, frames: torch.Tensor, t: int) -> torch.Tensor:
        """d(c_i, c_i+1) along the chain ends[0], frames..., ends[1] -> (frames + 1,)."""
        if self.elpips is not None:
            return self._elpips_chain(ends, frames, t)
        if self.fd is None:
            c = torch.cat([ends[:1], frames, ends[1:]])
            assert self.d is not None  # fd is None: the checked callable
            return self.d(c[:-1], c[1:])
        if self._cache is None:
            with torch.no_grad():
                self._cache = self.fd.features(ends)
        c = torch.cat([self._cache[:1], self.fd.features(frames), self._cache[1:]])
        return self.fd.from_features(c[:-1], c[1:])

    def _head(self, f0: torch.Tensor, f1: torch.Tensor, layer: int) -> torch.Tensor:
        assert self.elpips is not None  # the E-LPIPS paths only
        m = self.elpips.metric
        return lpips_head_map(f0, f1, m.layer_weights()[layer], backend=m.backend).mean((1, 2, 3))

    def _elpips_one_to_many(self, x, fixed, t):
        assert self.elpips is not None  # the E-LPIPS paths only
        m, k = self.elpips.metric, fixed.shape[0]
        draw = self._draw(t, x.shape[2], x.shape[3])
        fx: Dict[Tuple[int, int], torch.Tensor] = {}
        m.shared_pass(x, draw, lambda g, layer, f: fx.__setitem__((g, layer), f))
        total = []

        def consume(g, layer, f):  # f: (k * s, C, h, w) of the fixed images, no graph
            a = fx[(g, layer)]
            s = a.shape[0]
            with torch.enable_grad():  # per fixed image against x's s samples: no copy of x's layer
                total.append(torch.stack([self._head(f[i * s:(i + 1) * s], a, layer).sum() for i in range(k)]))
        with torch.no_grad():
            m.shared_pass(fixed, draw, consume, inplace=False)  # the heads keep the layers for backward
        return torch.stack(total).sum(0) / draw.samples

    def _elpips_chain(self, ends, frames, t):
        assert self.elpips is not None  # the E-LPIPS paths only
        m = self.elpips.metric
        draw = self._draw(t, ends.shape[2], ends.shape[3])
        fe: Dict[Tuple[int, int], torch.Tensor] = {}
        with torch.no_grad():
            m.shared_pass(ends, draw, lambda g, layer, f: fe.__setitem__((g, layer), f), inplace=False)
        total = []

        def consume(g, layer, f):  # f: (frames * s, C, h, w), with a graph
            e = fe[(g, layer)]
            s = e.shape[0] // 2
            # every pair (c_i, c_i+1) of the chain a, frames..., b in one head call on two
            # concatenations: their backward hands f views of the two gradients (slices of f
            # would each get a zero-filled gradient of f's size to copy into and add: a quarter
            # of the step at 64x64)
            d = self._head(torch.cat([e[:s], f]), torch.cat([f, e[s:]]), layer)
            total.append(d.view(frames.shape[0] + 1, s).sum(1))
        m.shared_pass(frames, draw, consume)
        return torch.stack(total).sum(0) / draw.samples


@dataclass
class GeometryResult:
    """The optimized image(s) and the objective per step (``losses``)."""

    images: torch.Tensor
    losses: List[float] = field(default_factory=list)


def _contract(d: Distance) -> Distance:
    """``d`` checked on every call against the distance contract: d(x, y) for N pairs returns one
    value per pair, a tensor of shape (N,) (or (N, 1, 1, 1), LPIPS' shape, taken as (N,)); a scalar,
    (1,) for N > 1 or an (N, N) matrix is refused, naming it."""
    def checked(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = d(x, y)
        n = x.shape[0]
        if isinstance(out, torch.Tensor) and out.dim() > 1 and out.shape[0] == n and out.numel() == n:
            out = out.reshape(n)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (n,):
            got = f"a {type(out).__name__}" if not isinstance(out, torch.Tensor) else (
                "a scalar" if out.dim() == 0 else f"shape {tuple(out.shape)}")
            raise ValueError(f"distance(x, y) must return one distance per pair, a tensor of shape ({n},) for {n} "
                             f"pair(s); {getattr(d, '__name__', type(d).__name__)} returned {got}")
        return out
    return checked


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

    lr = V.check_number(lr, "lr", low=0, low_open=True)
    params.requires_grad_(True)
    opt = torch.optim.Adam([params], lr=release_lr(0, lr))
    losses = []
    bar = tqdm(range(steps), desc=desc, unit="step",
               disable=True if progress is False else (None if progress is None else False),
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
        if not math.isfinite(losses[-1]):
            raise ValueError(f"{desc}: the distance gave a loss of {losses[-1]} at step {t}; a distance must return "
                             "finite values")
        if t % 10 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.4g}")
    params.requires_grad_(False)
    return losses


def barycenter(images: torch.Tensor, distance: Union[str, Distance] = "euclidean", *, steps: int = 1000,
               lr: float = 0.03, inputs_per_step: Optional[int] = None, init: Union[str, torch.Tensor] = "noise",
               seed: int = 0, draws: int = 1, progress: Optional[bool] = False) -> GeometryResult:
    """argmin_x sum_i d(x, n_i)^2 for ``images`` (K, 3, H, W) in [0, 1], K >= 2. Each step takes
    ``inputs_per_step`` random inputs (None: all K, in one batched call; the release: 1) and one
    Adam step. ``init``: 'noise' (the release's), 'mean' (the pixel mean) or a start image.
    ``distance``: a name of ``make_distance`` ('elpips' with ``draws`` fresh draws per step), a
    callable d(x, y) -> (N,), or a ``fastlpips.attacks`` FeatureDistance (E-LPIPS: ``shared=True``)."""
    V.check_unit_images(images, "images")
    k = images.shape[0]
    if k < 2:
        raise ValueError(f"a barycenter needs at least 2 images, got {k}")
    steps = V.check_positive_int(steps, "steps")
    V.check_number(lr, "lr", low=0, low_open=True)
    seed = V.check_seed(seed, allow_none=False)
    draws = V.check_positive_int(draws, "draws")
    if inputs_per_step is not None and not (isinstance(inputs_per_step, (int, np.integer)) and
                                            not isinstance(inputs_per_step, bool) and 1 <= inputs_per_step <= k):
        raise ValueError(f"inputs_per_step must be None or an int in [1, {k}], got {inputs_per_step!r}")
    pairs = _Pairs(distance, draws, seed, images.device)
    pairs.check(images, "images")
    g = torch.Generator().manual_seed(seed)
    images = images.detach()
    shape = (1,) + tuple(images.shape[1:])
    if isinstance(init, torch.Tensor):
        if tuple(init.shape[-3:]) != shape[1:] or init.numel() != images[0].numel():
            raise ValueError(f"init has shape {tuple(init.shape)}; the images are {tuple(images.shape[1:])}")
        V.check_finite(init, "init")
        x = init.detach().to(images).reshape(shape).clone().clamp(*CLIP)
    else:
        x = _start(shape, init, g, images, images.mean(0, keepdim=True))

    def loss(t):
        idx = None if inputs_per_step is None else torch.randperm(k, generator=g)[:inputs_per_step].to(images.device)
        return pairs.one_to_many(x, images, idx, t).square().sum()
    losses = _optimize(x, loss, steps, lr, progress, "barycenter")
    return GeometryResult(x.detach(), losses)


def geodesic(a: torch.Tensor, b: torch.Tensor, distance: Union[str, Distance] = "euclidean", *, frames: int = 8,
             steps: int = 1000, lr: float = 0.03, init: str = "noise", seed: int = 0, draws: int = 1,
             progress: Optional[bool] = False) -> GeometryResult:
    """The discrete geodesic between images ``a`` and ``b`` ((3, H, W) or (1, 3, H, W) in [0, 1]):
    ``frames`` free images minimizing sum_i d(x_i, x_{i+1})^2 over the chain a, x_1..x_k, b (all
    k + 1 pairs in one batched distance call per step). ``init``: 'noise' (the release's eq. 5
    start) or 'linear' (the cross-fade). Returns the chain with its ends, (frames + 2, 3, H, W)."""
    a = a[None] if a.dim() == 3 else a
    b = b[None] if b.dim() == 3 else b
    V.check_unit_images(a, "a")
    V.check_unit_images(b, "b")
    if a.shape != b.shape or a.shape[0] != 1:
        raise ValueError(f"a and b must be single images of one size, got {tuple(a.shape)} and {tuple(b.shape)}")
    if not (isinstance(frames, (int, np.integer)) and not isinstance(frames, bool) and frames >= 1):
        raise ValueError(f"frames must be an int >= 1, got {frames!r}")
    frames = int(frames)
    steps = V.check_positive_int(steps, "steps")
    V.check_number(lr, "lr", low=0, low_open=True)
    seed = V.check_seed(seed, allow_none=False)
    draws = V.check_positive_int(draws, "draws")
    if init not in ("noise", "linear"):
        raise ValueError(f"init must be 'noise' or 'linear', got {init!r}")
    pairs = _Pairs(distance, draws, seed, a.device)
    pairs.check(a, "a")
    g = torch.Generator().manual_seed(seed)
    a, b = a.detach(), b.detach()
    shape = (frames,) + tuple(a.shape[1:])
    if init == "linear":
        w = torch.arange(1, frames + 1, dtype=a.dtype, device=a.device).view(-1, 1, 1, 1) / (frames + 1)
        x = ((1 - w) * a + w * b).clamp(*CLIP)
    else:
        x = _start(shape, init, g, a)
    ends = torch.cat([a, b])

    def loss(t):
        return pairs.chain(ends, x, t).square().sum()
    losses = _optimize(x, loss, steps, lr, progress, "geodesic")
    return GeometryResult(torch.cat([a, x.detach(), b]), losses)


# -- the Hessian study (E-LPIPS paper: LPIPS vs E-LPIPS conditioning) ------------------------------
@dataclass
class HessianStudy:
    """The spectrum of A = J^T J per image (N rows), J the Jacobian of the distance's features at
    the image: for d(x, y) = ||phi(x) - phi(y)||^2 (LPIPS, E-LPIPS) the Hessian in y at y = x is
    2 A, so ratios and normalized values are those of the Hessian. For E-LPIPS, A is the mean of
    J^T J over the distance's fixed draws (``ELPIPSDistance(samples=K)``).

    ``mean``: tr(A) / n (the mean eigenvalue, Hutchinson); ``moments[:, j-1]``: tr(A^j)/n over
    mean^j (Hutchinson); ``lambda_max`` / ``lambda_min``: the extreme Ritz values of the Lanczos
    runs (lambda_min is an upper bound on the smallest eigenvalue, so ``condition`` is a lower
    bound); ``nodes`` / ``weights``: the spectral density by stochastic Lanczos quadrature (the
    weights of each row sum to 1)."""

    mean: torch.Tensor
    lambda_max: torch.Tensor
    lambda_min: torch.Tensor
    moments: torch.Tensor
    nodes: torch.Tensor
    weights: torch.Tensor
    iterations: int
    probes: int

    @property
    def condition(self) -> torch.Tensor:
        return self.lambda_max / self.lambda_min.clamp_min(torch.finfo(self.lambda_min.dtype).tiny)

    def summary(self) -> dict:
        """Per-image values as lists: lambda_max and lambda_min over the mean eigenvalue, the
        condition number, the mean eigenvalue and the normalized moments."""
        return {"mean_eigenvalue": self.mean.tolist(), "lambda_max_over_mean": (self.lambda_max / self.mean).tolist(),
                "lambda_min_over_mean": (self.lambda_min / self.mean).tolist(), "condition": self.condition.tolist(),
                "normalized_moments": self.moments.tolist(), "lanczos_iterations": self.iterations,
                "probes": self.probes}


def hessian_study(distance, x: torch.Tensor, *, iterations: int = 30, probes: int = 4, order: int = 4,
                  seed: int = 0, progress: Optional[bool] = False) -> HessianStudy:
    """The Hessian spectrum of ``distance`` (a ``fastlpips.attacks`` FeatureDistance: LPIPSDistance,
    ELPIPSDistance with its fixed draws, ...) at each image of ``x`` ((N, 3, H, W) in [0, 1]):
    ``probes`` Lanczos runs of ``iterations`` products from Rademacher starts (extremes and the
    quadrature density) and ``probes`` Hutchinson probes for the ``order`` moments; every product
    is exact (``JTJ``: the distance's kept linearization where it has one) and batched over N."""
    from tqdm import tqdm

    from .attacks.linalg import JTJ, hutchinson_moments, lanczos_spectrum

    distance.check_images(x, "x")
    iterations = V.check_positive_int(iterations, "iterations", 2)
    probes = V.check_positive_int(probes, "probes")
    order = V.check_positive_int(order, "order")
    op = JTJ(distance, x.detach())
    g = torch.Generator().manual_seed(seed)
    node_parts: List[torch.Tensor] = []
    weight_parts: List[torch.Tensor] = []
    bar = tqdm(range(probes), desc="lanczos", unit="probe", leave=False,
               disable=True if progress is False else (None if progress is None else False))
    for _ in bar:
        v0 = (torch.randint(0, 2, tuple(x.shape), generator=g) * 2 - 1).to(x)
        ev, w = lanczos_spectrum(op, v0, iterations)
        node_parts.append(ev)
        weight_parts.append(w)
    nodes, weights = torch.cat(node_parts, 1).detach(), torch.cat(weight_parts, 1).detach() / probes
    moments = hutchinson_moments(op, tuple(x.shape), order=order, probes=probes, generator=g, dtype=x.dtype,
                                 device=x.device).detach()
    mean = moments[:, 0]
    powers = torch.arange(1, order + 1, dtype=x.dtype, device=x.device)
    return HessianStudy(mean, nodes.amax(1), nodes.amin(1), moments / mean[:, None] ** powers, nodes, weights,
                        iterations, probes)


def plot_spectrum(studies, path, *, title: str = "Hessian spectrum (J^T J) at the images") -> None:
    """Plot the quadrature densities of ``studies`` ({label: HessianStudy}) over eigenvalue / mean
    eigenvalue on a log axis (one curve per label, pooled over its images), with the extreme Ritz
    values marked; writes ``path`` (PNG/PDF/SVG by its suffix)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, st in studies.items():
        rel = (st.nodes / st.mean[:, None]).clamp_min(1e-12).log10().flatten()
        w = (st.weights / st.weights.shape[0]).flatten()
        grid = torch.linspace(float(rel.min()) - 0.5, float(rel.max()) + 0.5, 400, dtype=rel.dtype)
        dens = (w[None, :] * torch.exp(-0.5 * ((grid[:, None] - rel[None, :]) / 0.15) ** 2)).sum(1)
        dens = dens / (0.15 * math.sqrt(2 * math.pi))
        line, = ax.plot(grid.tolist(), dens.tolist(), label=label)
        for v in (st.lambda_max / st.mean).tolist():
            ax.axvline(math.log10(v), color=line.get_color(), lw=0.6, ls="--")
    ax.set_xlabel("log10(eigenvalue / mean eigenvalue)")
    ax.set_ylabel("density (stochastic Lanczos quadrature)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
