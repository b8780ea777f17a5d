"""Distances for perceptual attacks: every one is a feature distance d(x, y) = ||phi(x) - phi(y)||_2
(or its square), with phi(x) a flat (N, D) feature vector, so the attacks only need ``features``
(and its Jacobian J, through ``fastlpips.attacks.linalg``). Images are (N, 3, H, W) in [0, 1].

* ``LPIPSDistance(model)``: calibrated LPIPS (any net/version of ``fastlpips.LPIPS``, any lin
  weights, e.g. an R-LPIPS checkpoint loaded with ``model_path``). phi concatenates, per layer,
  the channel-normalized features times sqrt(w_c / (H W)), so ||phi(x) - phi(y)||^2 is exactly
  the LPIPS value; ``squared=True``: bounds are on the LPIPS value itself.
* ``LPIPSDistance(model, calibrated=False)``: perceptual-advex's scale: unit weights and the
  root, sqrt(uncalibrated LPIPS); its bounds 0.5 / 0.25 mean the same thing here.
* ``ELPIPSDistance(metric, samples)``: E-LPIPS with ``samples`` transformations and dropout masks
  fixed until ``resample()`` (common random numbers within an attack step), all in one pass.
* ``ClassifierFeatureDistance(model, layers)``: self-bounded distances from a classifier's own
  feature layers, named as in ``model.named_modules()`` and captured with forward hooks (4-D
  activations are normalized per pixel and divided by sqrt(H W), 2-D ones per vector).
* ``DISTSDistance(model)``: DISTS, which is not a feature norm: ``from_features`` computes DISTS
  itself from the six stages, and ``metric_features`` is the map whose Jacobian gives DISTS'
  local length (its second-order expansion at the current image), which the attacks' steps and
  J^T J products use; ``squared=True`` (DISTS grows like ||J v||^2).
"""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple, cast

import torch
from torch import nn

from .. import validation as V
from ..reference import EPS, normalize_channels
from ..utils import channels_last

if TYPE_CHECKING:
    from ..elpips import ELPIPSDraw
    from ..model import LPIPS

__all__ = ["FeatureDistance", "LPIPSDistance", "ELPIPSDistance", "ClassifierFeatureDistance", "normalize_layer"]


def _layer_scale(f: torch.Tensor, weight: Optional[torch.Tensor]):
    scale = 1.0 / (f.shape[2] * f.shape[3])
    if weight is None:
        return scale**0.5
    return (weight.reshape(1, -1, 1, 1).to(f.dtype) * scale).sqrt()


def _flat(f: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, H*W*C), in channels_last order: a view of the channels_last features the
    trunks and traced classifiers produce, so their gradients stay channels_last too (mixed layouts
    make the backward's elementwise kernels several times slower on CPU). Every feature vector of
    this module is flattened here, so phi(x) and J v of one distance always share the order."""
    return f.permute(0, 2, 3, 1).flatten(1)


def _as_map(f: torch.Tensor) -> torch.Tensor:
    """(N, C) features (a linear layer's) as (N, C, 1, 1) maps; maps unchanged."""
    return f if f.dim() == 4 else f[:, :, None, None]


def _linearize_features(layers: Sequence[torch.Tensor], weights: Sequence[Optional[torch.Tensor]]):
    """What every kept linearization ends with: phi, the normalized, weighted and flattened layer
    features, and the map from the layers' tangents to phi's tangent (tangent-only)."""
    from .linearize import linearize_normalize

    parts, fns = [], []
    for f, w in zip(layers, weights):
        f = _as_map(f)
        nrm, fn = linearize_normalize(f, EPS)
        scale = _layer_scale(f, w)
        parts.append(_flat(nrm * scale))
        fns.append((fn, scale))

    def tangent(layer_tangents: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat([_flat(fn(_as_map(t)) * scale) for t, (fn, scale) in zip(layer_tangents, fns)], 1)
    return torch.cat(parts, 1), tangent


def normalize_layer(f: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(N, C, H, W) -> (N, H*W*C): f / (||f||_c + eps) * sqrt(w_c / (H W)) (w = 1 when None),
    flattened in channels_last order by ``_flat`` (norms and distances do not depend on the order;
    compare such vectors only with vectors made here)."""
    if f.dim() == 2:
        f = f[:, :, None, None]
    n = normalize_channels(f)
    return _flat(n * _layer_scale(f, weight))


class FeatureDistance(nn.Module):
    """d(x, y) = ||phi(x) - phi(y)|| (``squared=False``) or its square (``squared=True``).

    The protocol the attacks rely on, declared here (subclasses override what applies):

    * ``features(x)`` -> (N, D) phi (required); ``from_features``, ``check_images``, ``root``;
    * ``batch_independent``: phi of one image ignores the rest of the batch (attacks may then
      evaluate subsets); False for E-LPIPS, whose draws are stratified over the batch;
    * ``stochastic`` and ``resample()``: phi depends on random draws (E-LPIPS), which the attacks
      renew at every step; a no-op for deterministic distances;
    * ``has_linearization`` and ``linearize(x)`` -> (phi(x), v -> J v): an exact kept
      linearization (tangent-only passes); without one the attacks use ``torch.func.jvp``;
    * ``metric_features(x)``: the map whose Jacobian J measures lengths, d(x, x + v) ~ ||J v||
      (or its square); ``features`` itself for a feature norm, another map for a distance that
      is not one (DISTS), whose ``from_features`` then computes the distance.
    """

    squared: bool = False
    batch_independent: bool = True
    stochastic: bool = False
    has_linearization: bool = False

    def features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def resample(self, seed: Optional[int] = None) -> None:
        """Draw new random numbers (stochastic distances); nothing to do for deterministic ones."""

    def metric_features(self, x: torch.Tensor) -> torch.Tensor:
        """The map whose Jacobian the attacks use for lengths (``features`` for a feature norm)."""
        return self.features(x)

    def linearize(self, x: torch.Tensor):
        raise NotImplementedError(f"{type(self).__name__} has no kept linearization (has_linearization=False)")

    def from_features(self, fx: torch.Tensor, fy: torch.Tensor) -> torch.Tensor:
        d = torch.linalg.vector_norm(fx - fy, dim=1)
        return d.square() if self.squared else d

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.from_features(self.features(x), self.features(y))

    def check_images(self, x: torch.Tensor, name: str = "x") -> None:
        """What every attack checks first: a floating (N, 3, H, W) batch, finite, in [0, 1], large
        enough for this distance's features (clear errors naming ``name``)."""
        V.check_unit_images(x, name, why=V.ATTACK_BOX)
        self._check_size(x, name)

    def _check_size(self, x: torch.Tensor, name: str) -> None:
        """Subclasses whose features need a minimum image size raise here."""

    def root(self, value: float) -> float:
        """A bound or step on this distance's scale -> on the scale of ||dphi|| (the attacks' scale)."""
        return value**0.5 if self.squared else value


class LPIPSDistance(FeatureDistance):
    has_linearization = True

    def __init__(self, model: Optional[LPIPS] = None, *, net: str = "alex", calibrated: bool = True) -> None:
        super().__init__()
        if model is None:
            from ..model import LPIPS

            model = LPIPS(net=net, verbose=False)
        if calibrated and not model.lpips:
            raise ValueError("calibrated=True needs an LPIPS model with lin layers (lpips=True)")
        self.model = model.eval()
        self.calibrated = calibrated
        self.squared = calibrated

    def _check_size(self, x: torch.Tensor, name: str) -> None:
        V.check_size(x, self.model._min_size, f"the {self.model.pnet_type} trunk", name)

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        h = 2 * x - 1
        if m.version == "0.1":
            h = m.scaling_layer(h)
        if m.compute_dtype is not None:
            h = h.to(m.compute_dtype)
        return h

    def _weights(self, count: int):
        return [lin.weight for lin in self.model.lins] if self.calibrated else [None] * count

    def features(self, x: torch.Tensor) -> torch.Tensor:
        feats = list(self.model.net(channels_last(self._input(x))))
        return torch.cat([normalize_layer(f, w) for f, w in zip(feats, self._weights(len(feats)))], 1)

    def linearize(self, x: torch.Tensor):
        """(phi(x), v -> J v): one primal pass (differentiable if x requires grad) that keeps what
        the derivative needs, then tangent-only passes (see fastlpips.attacks.linearize)."""
        from .linearize import linearize_module

        m = self.model
        h = self._input(x)
        d_in = 2 / m.scaling_layer.scale if m.version == "0.1" else 2.0
        layers, steps = [], []
        for s in m.net.slices:
            h, fs = linearize_module(s, h)
            layers.append(h)
            steps.append(fs)
        phi, head = _linearize_features(layers, self._weights(len(layers)))

        def jvp(v: torch.Tensor) -> torch.Tensor:
            t = v * d_in
            tangents = []
            for fs in steps:
                t = fs(t)
                tangents.append(t)
            return head(tangents)
        return phi, jvp


class ELPIPSDistance(FeatureDistance):
    """E-LPIPS over ``samples`` fixed draws (transformations and dropout), squared scale
    (||phi(x) - phi(y)||^2 = the mean over the samples of the E-LPIPS sample distance).

    Default: a draw for a batch of N images (flips, permutations, colours stratified over the
    batch, as E-LPIPS draws them); image i of ``features(x)`` and of ``features(y)`` get the same
    draw, so ``d(x, y)`` compares x_i with y_i. ``shared=True``: every image of any batch gets the
    same transformations and dropout masks (a draw for one image), so the features of all images
    are comparable with each other (barycenters, geodesics: each image's trunk runs once per
    draw, whatever the number of pairs it is in); no kept linearization in this mode."""

    squared = True
    stochastic = True

    def __init__(self, metric=None, samples: int = 8, *, seed: int = 0, shared: bool = False) -> None:
        super().__init__()
        if metric is None:
            from ..elpips import ELPIPS

            metric = ELPIPS()
        from ..validation import check_positive_int

        self.metric, self.samples, self.seed = metric, check_positive_int(samples, "samples"), seed
        self.shared = bool(shared)
        self.draw: Optional[ELPIPSDraw] = None  # the ELPIPSDraw in use (made for the first batch shape seen)
        self._shape: Optional[Tuple[int, int, int]] = None

    # read-only properties over FeatureDistance's class attributes (hence the ignored override errors)
    @property
    def has_linearization(self) -> bool:  # type: ignore[override]  # VGG and SqueezeNet: ELPIPS.linearize_trunk
        return not self.shared

    @property
    def batch_independent(self) -> bool:  # type: ignore[override]
        """Shared draws: every image gets the same transformations and masks, whatever the batch."""
        return self.shared

    def resample(self, seed: Optional[int] = None) -> None:
        """Draw new transformations and dropout masks (the next attack step's common random numbers)."""
        self.seed = seed if seed is not None else self.seed + 1
        self.draw = None

    def _check_size(self, x: torch.Tensor, name: str) -> None:
        self.metric.check_size(x.shape[2], x.shape[3])

    def _groups(self, x: torch.Tensor):
        n, _, h, w = x.shape
        if self.draw is None or self._shape != (n, h, w):
            self.draw = self.metric.new_draw(self.samples, n, seed=self.seed)
            self._shape = (n, h, w)
        return self.draw.groups(h, w)

    def _assemble(self, x: torch.Tensor, groups, phis) -> torch.Tensor:
        per_sample: List[Optional[torch.Tensor]] = [None] * self.samples
        for (idx, _), phi in zip(groups, phis):
            phi = phi.view(len(idx), x.shape[0], -1)
            for k, s in enumerate(idx.tolist()):
                per_sample[s] = phi[k]
        return torch.cat(cast(List[torch.Tensor], per_sample), 1) / self.samples**0.5  # every sample set

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.shared:
            return self._shared_features(x)
        m = self.metric
        groups = self._groups(x)
        assert self.draw is not None  # made by _groups
        gen = self.draw.dropout_generator()
        weights = m.layer_weights()
        phis = []
        for idx, tb in groups:
            parts: List[torch.Tensor] = []
            it = iter(weights)
            m.run_trunk(channels_last(m.trunk_input(x, tb, len(idx))), gen,
                        lambda f: parts.append(normalize_layer(f, next(it))))
            phis.append(torch.cat(parts, 1))
        return self._assemble(x, groups, phis)

    def shared_draw(self, h: int, w: int):
        """The ELPIPSDraw in use in ``shared`` mode (a draw for one image, made at first use)."""
        if self.draw is None or self._shape != (1, h, w):
            self.draw = self.metric.new_draw(self.samples, 1, seed=self.seed)
            self._shape = (1, h, w)
        return self.draw

    def _shared_features(self, x: torch.Tensor) -> torch.Tensor:
        """Features under one draw for a single image applied to every image of ``x``
        (``ELPIPS.shared_pass``: the same transformations and masks for all, any batch size)."""
        m = self.metric
        b = x.shape[0]
        draw = self.shared_draw(x.shape[2], x.shape[3])
        weights = m.layer_weights()
        per_sample: List[Optional[torch.Tensor]] = [None] * self.samples
        parts: Dict[int, List[torch.Tensor]] = {}
        m.shared_pass(x, draw, lambda g, k, f: parts.setdefault(g, []).append(normalize_layer(f, weights[k])))
        for g, (idx, _) in enumerate(draw.groups(x.shape[2], x.shape[3])):
            phi = torch.cat(parts[g], 1).view(b, len(idx), -1)
            for k, si in enumerate(idx.tolist()):
                per_sample[si] = phi[:, k]
        return torch.cat(cast(List[torch.Tensor], per_sample), 1) / self.samples**0.5  # every sample set

    def linearize(self, x: torch.Tensor):
        """(phi(x), v -> J v) with the transforms, dropout positions, ReLU masks, pooling indices
        and normalization derivatives of one primal pass kept (``ELPIPS.linearize_trunk``): each
        J v is then a tangent-only pass (the transform op, bias-free convolutions with the dropped
        positions zeroed, masks, pooling)."""
        if self.shared:
            raise NotImplementedError("ELPIPSDistance(shared=True) has no kept linearization (has_linearization=False)")
        from ..ops.transform import batched_transform

        m = self.metric
        groups = self._groups(x)
        assert self.draw is not None  # made by _groups
        gen = self.draw.dropout_generator()
        d_in = 2 / m.scaling_layer.scale
        phis, programs = [], []
        for idx, tb in groups:
            layers, tangent = m.linearize_trunk(m.trunk_input(x, tb, len(idx)), gen)
            phi, head = _linearize_features(layers, m.layer_weights())
            phis.append(phi)
            programs.append((idx, tb, tangent, head))

        def jvp(v: torch.Tensor) -> torch.Tensor:
            outs = []
            for idx, tb, tangent, head in programs:
                t = batched_transform(v, tb, backend=m.backend) if tb is not None else v.repeat(len(idx), 1, 1, 1)
                outs.append(head(tangent(t * d_in)))
            return self._assemble(v, groups, outs)

        return self._assemble(x, groups, phis), jvp


class ClassifierFeatureDistance(FeatureDistance):
    """phi from named layers of ``model`` (self-bounded attacks: the classifier's own features).
    The layers' outputs are captured by forward hooks that exist only while ``features`` /
    ``features_and_logits`` run (``capture``): the classifier carries no hook otherwise."""

    def __init__(self, model: nn.Module, layers: Sequence[str]) -> None:
        super().__init__()
        modules = dict(model.named_modules())
        missing = [name for name in layers if name not in modules]
        if missing or not layers:
            raise ValueError(f"unknown feature layers {missing or list(layers)}; choose among "
                             f"{[k for k in modules if k][:20]}")
        self.model, self.layers = model, list(layers)

    @contextlib.contextmanager
    def capture(self):
        """Within the block, the named layers' outputs of every model call land in the yielded
        dict {layer name: output}; the hooks are removed on exit (also on an exception)."""
        modules = dict(self.model.named_modules())
        captured: Dict[str, torch.Tensor] = {}
        handles = [modules[name].register_forward_hook(
            lambda mod, inp, out, name=name: captured.__setitem__(name, out)) for name in self.layers]
        try:
            yield captured
        finally:
            for h in handles:
                h.remove()

    def features_and_logits(self, x: torch.Tensor):
        with self.capture() as captured:
            logits = self.model(x)
        missing = [name for name in self.layers if name not in captured]
        if missing:
            raise RuntimeError(f"layers {missing} did not run in model(x); they cannot be feature layers")
        return torch.cat([normalize_layer(captured[name]) for name in self.layers], 1), logits

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features_and_logits(x)[0]

    _traceable: Optional[bool] = None  # None: not tried yet; False: a rule is missing (torch.func.jvp instead)

    @property
    def has_linearization(self) -> bool:  # type: ignore[override]  # read-only over FeatureDistance's attribute
        return self._traceable is not False

    def linearize_and_logits(self, x: torch.Tensor):
        """(phi(x), model(x), v -> J v) from one primal pass through the classifier's torch.fx
        graph (``nets.linearize.linearize_traced``: every J v is then a tangent-only pass, ~1
        forward, versus ~4 for ``torch.func.jvp`` here). A classifier outside the supported
        vocabulary (e.g. GroupNorm, BatchNorm in training mode, data-dependent control flow) falls
        back to one captured pass and returns None for the jvp (the attacks then use
        ``torch.func.jvp``); the outcome is remembered."""
        from ..nets.linearize import linearize_traced

        if self._traceable is not False:
            try:
                logits, kept, tangent = linearize_traced(self.model, x, self.layers)
            except (NotImplementedError, RuntimeError) as e:  # RuntimeError: e.g. a layout the model cannot take
                self._traceable = False
                self.fallback_reason = str(e)
            else:
                self._traceable = True
                phi, head = _linearize_features([kept[name] for name in self.layers], [None] * len(self.layers))

                def jvp(v: torch.Tensor) -> torch.Tensor:
                    kt = tangent(v)[1]
                    return head([kt[name] for name in self.layers])
                return phi, logits, jvp
        phi, logits = self.features_and_logits(x)
        return phi, logits, None

    def linearize(self, x: torch.Tensor):
        phi, _, jvp = self.linearize_and_logits(x)
        if jvp is None:
            xd = x.detach()
            return phi, lambda v: torch.func.jvp(self.features, (xd,), (v,))[1]
        return phi, jvp


class DISTSDistance(FeatureDistance):
    """DISTS (``fastlpips.DISTS``) as the attacks' distance, on DISTS' own scale (``squared=True``).

    ``features(x)`` -> (N, D): the six stages flattened (image, relu1_2 .. relu5_3);
    ``from_features`` computes DISTS from two such rows (the statistics op, exact gradients).
    DISTS is not a norm of a feature difference, but it is a sum of squares: per stage and channel,
    alpha (mx - my)^2 / (mx^2 + my^2 + c1) + beta Var(fx - fy) / (vx + vy + c2). Its expansion at
    an image x is therefore ||W J v||^2 with J the stages' Jacobian and W the per-channel scales
    sqrt(alpha / (2 mx^2 + c1)) (on the mean) and sqrt(beta / (M (2 vx + c2))) (on the centred map,
    M pixels): ``metric_features`` applies W (computed at the image and held constant) to the
    stages, so the attacks' J v, J^T J products and step lengths measure DISTS' local length."""

    squared = True

    def __init__(self, model=None) -> None:
        super().__init__()
        if model is None:
            from ..dists import DISTS

            model = DISTS()
        self.model = model.eval()
        self._layouts: Dict[int, List[Tuple[int, ...]]] = {}

    def _check_size(self, x: torch.Tensor, name: str) -> None:
        self.model.check_size(x, name)

    def _stages(self, x: torch.Tensor) -> List[torch.Tensor]:
        return self.model.features(x.to(self.model.mean.dtype))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        stages = self._stages(x)
        flat = torch.cat([f.reshape(f.shape[0], -1) for f in stages], 1)
        self._layouts[flat.shape[1]] = [tuple(f.shape[1:]) for f in stages]
        return flat

    def _unflatten(self, f: torch.Tensor) -> List[torch.Tensor]:
        layout = self._layouts.get(f.shape[1])
        if layout is None:
            raise ValueError(f"DISTSDistance.from_features got rows of {f.shape[1]} values, which no call of "
                             f"features() produced; pass rows made by features()")
        out, start = [], 0
        for shape in layout:
            size = shape[0] * shape[1] * shape[2]
            out.append(f[:, start:start + size].reshape(f.shape[0], *shape))
            start += size
        return out

    def from_features(self, fx: torch.Tensor, fy: torch.Tensor) -> torch.Tensor:
        return self.model.from_features(self._unflatten(fx), self._unflatten(fy))

    def metric_features(self, x: torch.Tensor) -> torch.Tensor:
        from ..reference import DISTS_C1, DISTS_C2

        out = []
        for f, (alpha, beta) in zip(self._stages(x), self.model.stage_weights()):
            m = f.mean((2, 3), keepdim=True)
            centred = f - m
            # W at this image, held constant (detached: no tangent either): J of this map is W J
            md, v = m.detach(), centred.detach().square().mean((2, 3), keepdim=True)
            wm = (alpha.view(1, -1, 1, 1) / (2 * md * md + DISTS_C1)).sqrt()
            wc = (beta.view(1, -1, 1, 1) / (f.shape[2] * f.shape[3] * (2 * v + DISTS_C2))).sqrt()
            out += [(wm * m).flatten(1), (wc * centred).flatten(1)]
        return torch.cat(out, 1)
