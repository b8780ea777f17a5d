"""A one-line switch for torchmetrics users: ``LearnedPerceptualImagePatchSimilarity`` and
``learned_perceptual_image_patch_similarity`` with torchmetrics' arguments, checks, errors and
results, on fastlpips' engine.

    from fastlpips.torchmetrics import LearnedPerceptualImagePatchSimilarity   # was: torchmetrics.image.lpip

When torchmetrics is installed (``pip install fastlpips[torchmetrics]``) the class is a
``torchmetrics.Metric``: it works in a ``MetricCollection``, with Lightning's ``self.log``, and takes
every ``Metric`` keyword (``sync_on_compute``, ``dist_sync_on_step``, ``process_group``,
``compute_on_cpu``, ...); its state is synced across torch.distributed ranks. Without torchmetrics it
is a plain ``nn.Module`` with the same ``update`` / ``compute`` / ``reset`` / ``forward``, for one
process (under a process group of several ranks it refuses to compute rather than report one
rank's share).

What differs from torchmetrics, on purpose:

* memory: the state for ``reduction='mean'`` / ``'sum'`` is a running sum and a count (two
  numbers, whatever the number of updates); per-image scores are kept only for ``'none'``.
  torchmetrics keeps every score for every reduction.
* the functional form builds its network once per (net, device, dtype) and reuses it.
* numerics: lpips 0.1.4's (channel normalization ``f / (||f|| + 1e-10)``) by default, equal to the
  ``lpips`` package within its parity tolerance; ``eps='torchmetrics'`` normalizes as torchmetrics
  does (``f / sqrt(||f||^2 + 1e-8)``) for numbers that must match torchmetrics' to float32 rounding.
  On real photos the two differ by ~1e-7; they part only near all-zero feature vectors.
* trunk weights resolve offline like every fastlpips model (no torchvision, no download needed
  where the weights are cached; see ``fastlpips.nets.weights``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional

import torch
from torch import Tensor, nn

from .utils import reduce_batch

if TYPE_CHECKING:
    from .elpips import ELPIPS
    from .model import LPIPS

__all__ = ["LearnedPerceptualImagePatchSimilarity", "learned_perceptual_image_patch_similarity", "ELPIPSMetric",
           "DeepImageStructureAndTextureSimilarity",
           "HAVE_TORCHMETRICS", "EPS_MODES"]

_MetricBase: Any = None
try:  # the base class when torchmetrics is installed
    from torchmetrics import Metric

    _MetricBase = Metric
except ImportError:  # the fallback below (tested with torchmetrics hidden)
    pass
HAVE_TORCHMETRICS = _MetricBase is not None

NET_TYPES = ("vgg", "alex", "squeeze")
REDUCTIONS = ("mean", "sum", "none", None)
#: 'lpips': lpips 0.1.4's channel normalization; 'torchmetrics': torchmetrics 1.x's.
EPS_MODES = ("lpips", "torchmetrics")


class _StandaloneMetric(nn.Module):
    """The part of ``torchmetrics.Metric`` this module uses, for one process: states registered
    with ``add_state`` (a tensor summed, or a list concatenated), ``forward`` = the batch's value
    while the batch also joins the accumulated state, ``reset``."""

    is_differentiable: Optional[bool] = None
    higher_is_better: Optional[bool] = None
    full_state_update: Optional[bool] = None

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        if kwargs:
            raise ValueError(f"Unexpected keyword arguments: {', '.join(sorted(kwargs))} (the Metric keywords need "
                             f"torchmetrics: pip install fastlpips[torchmetrics])")
        self._defaults: Dict[str, Any] = {}
        self._update_count = 0

    def update(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError

    def _compute(self) -> Any:
        raise NotImplementedError

    def add_state(self, name: str, default, dist_reduce_fx=None, persistent: bool = False) -> None:
        self._defaults[name] = default
        setattr(self, name, [] if isinstance(default, list) else default.clone())

    def reset(self) -> None:
        self._update_count = 0
        for name, default in self._defaults.items():
            setattr(self, name, [] if isinstance(default, list) else default.clone().to(self._state_device()))

    def _state_device(self) -> torch.device:
        t = next(iter(self.buffers()), None)
        return t.device if t is not None else torch.device("cpu")

    def _check_single_process(self) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            raise RuntimeError("this metric's state is not synced across processes without torchmetrics: "
                               "pip install fastlpips[torchmetrics] (or compute per rank and reduce yourself)")

    def forward(self, *args, **kwargs):
        saved = {n: getattr(self, n) for n in self._defaults}
        count = self._update_count
        self.reset()
        self.update(*args, **kwargs)
        value = self._compute()
        for n, old in saved.items():
            new = getattr(self, n)
            setattr(self, n, old + new if isinstance(old, list) else old.to(new.device) + new)
        self._update_count = count + 1
        return value

    def _apply(self, fn, *args, **kwargs):  # move tensor states with the module, as torchmetrics does
        out = super()._apply(fn, *args, **kwargs)
        for n in self._defaults:
            v = getattr(self, n)
            setattr(self, n, [fn(t) for t in v] if isinstance(v, list) else fn(v))
        return out


_Base: Any = _MetricBase if _MetricBase is not None else _StandaloneMetric


def _valid_img(img: Tensor, normalize: bool) -> bool:
    if not isinstance(img, Tensor) or img.ndim != 4 or img.shape[1] != 3 or not img.numel():
        return False
    if normalize:
        return bool(img.min() >= 0.0 and img.max() <= 1.0)
    return bool(img.min() >= -1.0)


def _check_inputs(img1: Tensor, img2: Tensor, normalize: bool) -> None:
    """torchmetrics' input check and message: (N, 3, H, W), values in [0, 1] with ``normalize``,
    >= -1 without; a non-tensor or an empty tensor is refused with the same ValueError."""
    if not (_valid_img(img1, normalize) and _valid_img(img2, normalize)):
        def span(t):
            return [t.min(), t.max()] if isinstance(t, Tensor) and t.numel() else "(no values)"

        raise ValueError(
            "Expected both input arguments to be normalized tensors with shape [N, 3, H, W]."
            f" Got input with shape {getattr(img1, 'shape', type(img1).__name__)} and"
            f" {getattr(img2, 'shape', type(img2).__name__)} and values in range {span(img1)} and {span(img2)}"
            " when all values are"
            f" expected to be in the {[0, 1] if normalize else [-1, 1]} range.")


def _check_args(net_type, reduction, normalize, eps) -> None:
    if net_type not in NET_TYPES:
        raise ValueError(f"Argument `net_type` must be one of {NET_TYPES}, but got {net_type}.")
    if reduction not in REDUCTIONS:
        raise ValueError(f"Argument `reduction` must be one of {REDUCTIONS}, but got {reduction}")
    if not isinstance(normalize, bool):
        raise ValueError(f"Argument `normalize` should be an bool but got {normalize}")
    if eps not in EPS_MODES:
        raise ValueError(f"Argument `eps` must be one of {EPS_MODES}, but got {eps!r}")


def _scores(net: LPIPS, img1: Tensor, img2: Tensor, normalize: bool, eps: str) -> Tensor:
    """(N,) LPIPS scores under lpips' or torchmetrics' channel normalization."""
    if eps == "lpips":
        return net(img1, img2, normalize=normalize).reshape(-1)
    f1 = net.features(img1, normalize=normalize, name="img1", norm="torchmetrics")
    f2 = net.features(img2, normalize=normalize, name="img2", norm="torchmetrics")
    return net.compare_features(f1, f2).reshape(-1)


def _build_net(net_type: str, **kwargs) -> LPIPS:
    from .model import LPIPS

    net = LPIPS(net=net_type, verbose=False, **kwargs).eval()
    net.requires_grad_(False)
    return net


class _ScoreMetric(_Base):
    """What the torchmetrics-compatible classes share: per-image scores reduced by ``reduction``
    ('mean' / 'sum': a float64 sum and a count, constant memory; 'none' / None: the scores of each
    update), a network that never leaves eval mode, and a differentiable batch value from calling
    the metric while the state never holds a graph."""

    full_state_update: bool = False
    feature_network: str = "net"
    score_sum: Tensor
    total: Tensor
    scores: List[Tensor]
    _batch: Optional[Tensor] = None  # the latest update's scores with their graph (forward's value)

    def _add_states(self, reduction: Optional[str]) -> None:
        self.reduction = reduction
        if reduction in ("mean", "sum"):
            self.add_state("score_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state("total", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        else:
            self.add_state("scores", [], dist_reduce_fx="cat")

    def _add(self, s: Tensor) -> None:
        self._batch = s  # forward's batch value keeps its graph; the state never holds one
        if self.reduction in ("mean", "sum"):
            self.score_sum = self.score_sum + s.detach().sum().to(self.score_sum.dtype)
            self.total = self.total + s.numel()
        else:
            self.scores.append(s.detach())

    def train(self, mode: bool = True):
        """The metric's network never leaves eval mode (no dropout)."""
        super().train(mode)
        self.net.eval()
        return self

    def forward(self, *args: Tensor) -> Tensor:
        """The batch's value (differentiable, as torchmetrics'), the batch added to the state."""
        self._batch = None
        value = super().forward(*args)
        batch, self._batch = self._batch, None
        if batch is not None and batch.requires_grad and not getattr(self, "dist_sync_on_step", False):
            value = reduce_batch(batch, self.reduction)  # the same numbers, with the graph
        return value

    def compute(self) -> Tensor:
        """The reduction over every pair added since the last ``reset()`` (synced across ranks by
        torchmetrics)."""
        if not HAVE_TORCHMETRICS:
            self._check_single_process()
        return self._compute()

    def _compute(self) -> Tensor:
        if self.reduction in ("mean", "sum"):
            value = self.score_sum / self.total if self.reduction == "mean" else self.score_sum
            return value.to(torch.get_default_dtype())
        scores = self.scores
        if isinstance(scores, list):
            return torch.cat([s.reshape(-1) for s in scores]) if scores else torch.zeros(0)
        return scores.reshape(-1)


class LearnedPerceptualImagePatchSimilarity(_ScoreMetric):
    """torchmetrics' ``LearnedPerceptualImagePatchSimilarity`` on fastlpips.

    Args:
        net_type: 'alex' (default), 'vgg' or 'squeeze'.
        reduction: 'mean' (default), 'sum', 'none' or None (the per-image scores, in update order).
        normalize: False: images in [-1, 1]; True: images in [0, 1].
        eps: 'lpips' (default; lpips 0.1.4's numbers) or 'torchmetrics' (torchmetrics' normalization).
        net_kwargs: passed to ``fastlpips.LPIPS`` (e.g. ``trunk_path``, ``pnet_rand``, ``backend``).
        kwargs: ``torchmetrics.Metric``'s keywords.

    ``update(img1, img2)`` adds (N, 3, H, W) pairs; ``compute()`` returns the reduction over all pairs
    since the last ``reset()``; calling the metric returns the batch's value and adds the batch.
    """

    is_differentiable: bool = True
    higher_is_better: bool = False
    plot_lower_bound: float = 0.0
    plot_upper_bound: float = 1.0

    def __init__(self, net_type: str = "alex", reduction: Optional[str] = "mean", normalize: bool = False, *,
                 eps: str = "lpips", net_kwargs: Optional[Dict[str, Any]] = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        _check_args(net_type, reduction, normalize, eps)
        self.net_type, self.normalize, self.eps = net_type, normalize, eps
        self.net = _build_net(net_type, **(net_kwargs or {}))
        self._add_states(reduction)

    def update(self, img1: Tensor, img2: Tensor) -> None:
        """Add the LPIPS scores of the pairs (img1[i], img2[i])."""
        _check_inputs(img1, img2, self.normalize)
        self._add(_scores(self.net, img1, img2, self.normalize, self.eps))


class DeepImageStructureAndTextureSimilarity(_ScoreMetric):
    """torchmetrics' ``DeepImageStructureAndTextureSimilarity`` on fastlpips (``fastlpips.DISTS``,
    built once; torchmetrics builds its network again on every update).

    Args: ``reduction`` 'mean' (default) or 'sum' (torchmetrics' choices and error);
    ``dists_kwargs`` for ``fastlpips.DISTS`` (``weights_path``, ``trunk_path``, ...); torchmetrics'
    ``Metric`` keywords. ``update(preds, target)``: (N, 3, H, W) images in [0, 1]."""

    is_differentiable: bool = True
    higher_is_better: bool = False
    plot_lower_bound: float = 0.0

    def __init__(self, reduction: Optional[str] = "mean", *, dists_kwargs: Optional[Dict[str, Any]] = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        allowed = ("mean", "sum")
        if reduction not in allowed:
            raise ValueError(f"Argument `reduction` expected to be one of {allowed} but got {reduction}")
        from .dists import DISTS

        self.net = DISTS(**(dists_kwargs or {}))
        self._add_states(reduction)

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add the DISTS scores of the pairs (preds[i], target[i])."""
        self._add(self.net(preds, target))


def learned_perceptual_image_patch_similarity(img1: Tensor, img2: Tensor, net_type: str = "alex",
                                              reduction: Optional[str] = "mean", normalize: bool = False, *,
                                              eps: str = "lpips") -> Tensor:
    """torchmetrics' functional LPIPS on fastlpips: the network is built once per (net_type,
    device, dtype) and reused (``fastlpips.get_model``'s cache); differentiable with respect to
    the images."""
    from .functional import get_model

    _check_args(net_type, reduction, normalize, eps)
    _check_inputs(img1, img2, normalize)
    dtype = img1.dtype if img1.is_floating_point() else torch.float32
    return reduce_batch(_scores(get_model(net_type, device=img1.device, dtype=dtype), img1, img2, normalize, eps),
                        reduction)


class ELPIPSMetric(_Base):
    """E-LPIPS as a stateful metric with a confidence interval (a torchmetrics ``Metric`` when
    torchmetrics is installed, synced across ranks).

    ``update(x, y)`` estimates each pair's E-LPIPS with ``fastlpips.elpips_estimate`` (its
    ``method``, tolerances and sample budget; images (N, 3, H, W) in [0, 1]; each pair with its
    own draws) and adds the estimates and their variances; ``compute()`` returns a dict: ``mean``
    (the mean over every pair added since ``reset()``), ``low`` / ``high`` / ``half_width`` (its
    ``confidence`` interval: each pair's draws are independent, so the variance of the mean is
    sum(stderr_i^2) / n^2, normal quantile) and ``count``. The state is three sums (constant
    memory), summed across ranks.

    Args: ``net`` ('vgg' or 'squeeze') or ``metric`` (an ``ELPIPS`` module to use instead);
    ``confidence``; ``seed``: None (fresh draws) or an int (each pair's draws from the seed, the
    rank, the update's index and the pair's: reproducible, independent across ranks and updates); the other
    keywords of ``elpips_estimate`` (``method``, ``rtol``, ``atol``, ``min_samples``,
    ``max_samples``, ``batch_size``) in ``estimate_kwargs``; torchmetrics' ``Metric`` keywords.
    """

    is_differentiable: bool = False
    higher_is_better: bool = False
    full_state_update: bool = False
    plot_lower_bound: float = 0.0
    mean_sum: Tensor  # sum of the pairs' estimates
    var_sum: Tensor  # sum of their squared standard errors
    count: Tensor

    def __init__(self, net: str = "vgg", *, confidence: float = 0.95, seed: Optional[int] = None,
                 metric: Optional[ELPIPS] = None, estimate_kwargs: Optional[Dict[str, Any]] = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        from . import validation as V
        from .elpips import ELPIPS
        from .estimator import normal_quantile

        if metric is None:
            metric = ELPIPS(net=net)
        elif not isinstance(metric, ELPIPS):
            raise TypeError(f"metric must be an ELPIPS module, got {type(metric).__name__}")
        self.metric = metric.eval()
        self.confidence, self.z = confidence, normal_quantile(confidence)
        self.seed = V.check_seed(seed)
        self.estimate_kwargs = dict(estimate_kwargs or {})
        bad = sorted(set(self.estimate_kwargs) & {"seed", "metric", "confidence"})
        if bad:
            raise TypeError(f"estimate_kwargs must not hold {', '.join(bad)} (arguments of ELPIPSMetric itself)")
        self._updates = 0
        self.add_state("mean_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("var_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def train(self, mode: bool = True):
        super().train(mode)
        self.metric.eval()
        return self

    def _pair_seed(self, i: int) -> Optional[int]:
        if self.seed is None:
            return None
        import hashlib

        from . import distributed as D

        key = f"{self.seed}/{D.rank()}/{self._updates}/{i}".encode()
        return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & (2**62 - 1)

    def update(self, x: Tensor, y: Tensor) -> None:
        """Estimate E-LPIPS of each pair (x[i], y[i]) and add it. Each pair gets its own draws
        (the images of one E-LPIPS batch share theirs, which would correlate their estimates), so
        the pairs' variances add."""
        from . import validation as V
        from .estimator import elpips_estimate

        V.check_image(x, "x", hint=V.UNIT_HINT)
        V.check_pair(x, y, "x", "y")
        V.check_same_shape(x, y, "x", "y")  # no broadcasting: one estimate per pair
        means, variances = [], []
        for i in range(x.shape[0]):
            est = elpips_estimate(x[i:i + 1], y[i:i + 1], metric=self.metric, confidence=self.confidence,
                                  seed=self._pair_seed(i), **self.estimate_kwargs)
            means.append(est.mean.double())
            variances.append(est.stderr.double().square())
        self._updates += 1
        if means:
            self.mean_sum = self.mean_sum + torch.cat(means).sum().to(self.mean_sum.device)
            self.var_sum = self.var_sum + torch.cat(variances).sum().to(self.var_sum.device)
            self.count = self.count + len(means)

    def compute(self) -> Dict[str, Tensor]:
        if not HAVE_TORCHMETRICS:
            self._check_single_process()
        return self._compute()

    def _compute(self) -> Dict[str, Tensor]:
        n = self.count.double()
        mean = self.mean_sum / n
        half = self.z * self.var_sum.sqrt() / n
        return {"mean": mean, "low": mean - half, "high": mean + half, "half_width": half, "count": self.count}
