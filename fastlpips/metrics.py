"""The metric registry: every full-reference metric of the package under one name.

``create_metric(name, **options)`` builds a metric (an ``nn.Module``) that takes two image batches
``(x, y)`` of shape (N, 3, H, W) with values in [0, 1], or image file paths, and returns one score
per image, (N,). Out-of-range inputs raise ValueError naming the range, unless the metric is built
with ``as_loss=True`` (a loss sees whatever a generator produces). ``list_metrics()`` lists the
names, ``metric_info(name)`` tells what a metric is (``MetricInfo``: lower or higher better, the
range of its scores, whether it is differentiable, its options).

The commands (``--metric``, ``--metrics``, ``--distance``), BAPPS scoring, dataset evaluation and
the geometry module build their metrics here, so every one of them accepts exactly these names.

``l2`` alone is not a name: the L2 of lpips' BAPPS baselines (mean squared difference in CIELAB
of the 8-bit images, ``l2-lab``) and the Euclidean distance of the pixel vectors
(``euclidean``) are different metrics, and asking for ``l2`` raises an error naming both.
"""
from __future__ import annotations

import fnmatch
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from . import validation as V

__all__ = ["MetricInfo", "Metric", "create_metric", "list_metrics", "metric_info", "resolve_name", "all_names",
           "FAMILIES"]

INF = math.inf
#: What a metric is made of: a learned LPIPS head, the E-LPIPS ensemble, DISTS, a classic image quality
#: metric (``fastlpips.iqa``), one of lpips' BAPPS baselines (``fastlpips.classic``), or pixels.
FAMILIES = ("lpips", "elpips", "dists", "iqa", "baseline", "pixels")
WHY = "pass as_loss=True to score images outside [0, 1] (a loss sees whatever a generator produces)"


@dataclass(frozen=True)
class MetricInfo:
    """What a registered metric is. ``score_range``: the interval its scores lie in (``inf`` for
    unbounded); ``differentiable``: gradients with respect to the images are meaningful (the
    8-bit baselines are piecewise constant); ``options``: the keyword options ``create_metric``
    takes for it, with their defaults; ``checkpoint``: 'required', 'optional' or 'none'."""

    name: str
    family: str
    description: str
    lower_better: bool
    score_range: Tuple[float, float]
    differentiable: bool
    options: Dict[str, Any] = field(default_factory=dict)
    aliases: Tuple[str, ...] = ()
    checkpoint: str = "none"
    input_range: Tuple[float, float] = (0.0, 1.0)
    params: Dict[str, Any] = field(default_factory=dict)  # the module's fixed arguments (net, version)

    @property
    def higher_better(self) -> bool:
        return not self.lower_better

    @property
    def spatial(self) -> bool:
        """Whether the metric has a per-pixel distance map (LPIPS' spatial mode)."""
        return self.family == "lpips"

    def as_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "family": self.family, "description": self.description,
                "lower_better": self.lower_better, "score_range": list(self.score_range),
                "input_range": list(self.input_range), "differentiable": self.differentiable,
                "checkpoint": self.checkpoint, "aliases": list(self.aliases), "options": dict(self.options)}


_LPIPS_OPTIONS = {"checkpoint": None, "calibrated": True, "trunk_path": None, "pnet_rand": False, "backend": None,
                  "dtype": None, "memory_budget": None, "max_tile": None}
_ELPIPS_OPTIONS = {"n_samples": 50, "trunk_path": None, "pnet_rand": False, "backend": None, "dtype": None,
                   "mode": "batched", "max_scale": 8, "memory_budget": None, "max_tile": None}
_SSIM_OPTIONS = {"win_size": 11, "sigma": 1.5, "k1": 0.01, "k2": 0.03}


def _lpips_entries() -> List[MetricInfo]:
    out = []
    names = {"alex": "AlexNet", "vgg": "VGG16", "squeeze": "SqueezeNet1.1"}
    for version in ("0.1", "0.0"):
        for net, trunk in names.items():
            suffix = "" if version == "0.1" else "-v0.0"
            out.append(MetricInfo(
                f"lpips-{net}{suffix}", "lpips",
                f"LPIPS v{version} on the {trunk} trunk (Zhang et al. 2018; lpips.LPIPS(net='{net}', "
                f"version='{version}'))", True, (0.0, INF), True, dict(_LPIPS_OPTIONS),
                aliases=("lpips",) if (net, version) == ("alex", "0.1") else (), checkpoint="optional",
                params={"net": net, "version": version}))
    out.append(MetricInfo(
        "rlpips", "lpips", "R-LPIPS: LPIPS-AlexNet with adversarially trained weights read from a checkpoint "
        "(Ghazanfari et al. 2023)", True, (0.0, INF), True, dict(_LPIPS_OPTIONS), checkpoint="required",
        params={"net": "alex", "version": "0.1"}))
    return out


_ENTRIES: List[MetricInfo] = _lpips_entries() + [
    MetricInfo("elpips", "elpips", "E-LPIPS-VGG: LPIPS averaged over random image transformations "
               "(Kettunen et al. 2019); n_samples draws per call", True, (0.0, INF), True, dict(_ELPIPS_OPTIONS),
               params={"net": "vgg"}),
    MetricInfo("elpips-squeeze", "elpips", "E-LPIPS-SqueezeNet, the release's experimental variant",
               True, (0.0, INF), True, dict(_ELPIPS_OPTIONS), params={"net": "squeeze"}),
    MetricInfo("dists", "dists", "DISTS: structure and texture similarity of VGG16 features with L2 pooling "
               "(Ding et al. 2020; the authors' dists-pytorch)", True, (0.0, 2.0), True,
               {"weights_path": None, "trunk_path": None, "pnet_rand": False, "backend": None, "dtype": None,
                "memory_budget": None, "max_tile": None}),
    MetricInfo("psnr", "iqa", "peak signal-to-noise ratio in dB (inf for identical images)", False, (0.0, INF),
               True),
    MetricInfo("ssim", "iqa", "structural similarity, Gaussian window (Wang et al. 2004; scikit-image's "
               "gaussian_weights=True)", False, (-1.0, 1.0), True, dict(_SSIM_OPTIONS)),
    MetricInfo("ms-ssim", "iqa", "multi-scale SSIM, 5 scales (Wang et al. 2003; as piq)", False, (0.0, 1.0), True,
               dict(_SSIM_OPTIONS)),
    MetricInfo("gmsd", "iqa", "gradient magnitude similarity deviation (Xue et al. 2014; as piq)", True,
               (0.0, 1.0), True),
    MetricInfo("uqi", "iqa", "universal image quality index, 8 x 8 sliding window (Wang & Bovik 2002; the authors' "
               "img_qi.m)", False, (-1.0, 1.0), True, {"win_size": 8, "window": "uniform", "sigma": 1.5}),
    MetricInfo("ifc", "iqa", "information fidelity criterion on the luma (Sheikh, Bovik & de Veciana 2005; the "
               "authors' ifcvec.m; needs pyrtools' filters)", False, (0.0, INF), False),
    MetricInfo("l2-lab", "baseline", "lpips' L2 baseline: half the mean squared difference of the 8-bit images "
               "in CIELAB / 100 (lpips.L2(colorspace='Lab'))", True, (0.0, INF), False),
    MetricInfo("l2-rgb", "baseline", "lpips' L2 baseline in RGB: the mean squared difference of the images "
               "in [-1, 1] (lpips.L2(colorspace='RGB'))", True, (0.0, 4.0), True),
    MetricInfo("dssim", "baseline", "lpips' DSSIM baseline: (1 - SSIM) / 2 of the 8-bit images in CIELAB "
               "(lpips.DSSIM(colorspace='Lab'))", True, (0.0, 1.0), False),
    MetricInfo("dssim-rgb", "baseline", "lpips' DSSIM baseline on the 8-bit RGB images "
               "(lpips.DSSIM(colorspace='RGB'))", True, (0.0, 1.0), False),
    MetricInfo("euclidean", "pixels", "the Euclidean distance ||x - y||_2 of the pixel vectors in [0, 1]", True,
               (0.0, INF), True),
]
_BY_NAME: Dict[str, MetricInfo] = {e.name: e for e in _ENTRIES}
_ALIASES: Dict[str, str] = {a: e.name for e in _ENTRIES for a in e.aliases}
_AMBIGUOUS = {"l2": "'l2-lab' (lpips' L2 baseline in CIELAB), 'l2-rgb' (lpips' L2 in RGB: the mean squared "
                    "difference) or 'euclidean' (||x - y||_2 of the pixels)",
              "dssim-lab": "'dssim' (lpips' DSSIM in CIELAB)"}
# the names the commands took before the registry
_RENAMED = {"alex": "lpips-alex", "vgg": "lpips-vgg", "squeeze": "lpips-squeeze", "lpips-alex-v0.1": "lpips-alex",
            "lpips-vgg-v0.1": "lpips-vgg", "lpips-squeeze-v0.1": "lpips-squeeze", "ms_ssim": "ms-ssim",
            "elpips-vgg": "elpips"}


def list_metrics(filter: Optional[str] = None) -> List[str]:
    """The registered names, sorted by family then name. ``filter``: a shell pattern
    (``'lpips*'``) or, without wildcards, a substring (``'ssim'``) of the name."""
    if filter is not None and not isinstance(filter, str):
        raise TypeError(f"filter must be a string pattern, got {type(filter).__name__}")
    names = [e.name for e in sorted(_ENTRIES, key=lambda e: (FAMILIES.index(e.family), _ENTRIES.index(e)))]
    if not filter:
        return names
    pat = filter.lower() if any(c in filter for c in "*?[") else f"*{filter.lower()}*"
    return [n for n in names if fnmatch.fnmatchcase(n, pat)]


def all_names() -> List[str]:
    """Every name a metric option accepts: ``list_metrics()`` and the aliases."""
    return list_metrics() + sorted(_ALIASES)


def resolve_name(name: str) -> str:
    """The registered name of ``name`` (case and surrounding spaces ignored; aliases resolved).
    ValueError lists the known names."""
    if not isinstance(name, str):
        raise TypeError(f"metric name must be a string, got {type(name).__name__}")
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key in _BY_NAME:
        return key
    if key in _AMBIGUOUS:
        raise ValueError(f"metric {name!r} is ambiguous: use {_AMBIGUOUS[key]}")
    if key in _RENAMED:
        raise ValueError(f"unknown metric {name!r}: its name is {_RENAMED[key]!r}")
    raise ValueError(f"unknown metric {name!r}; known: {', '.join(list_metrics())} (aliases: "
                     f"{', '.join(f'{a}={n}' for a, n in _ALIASES.items())})")


def metric_info(name: str) -> MetricInfo:
    """The ``MetricInfo`` of a registered name or alias."""
    return _BY_NAME[resolve_name(name)]


# -- the metric module ---------------------------------------------------------------------------------
ImagesOrPaths = Union[torch.Tensor, str, os.PathLike, Sequence[Union[str, os.PathLike]]]


def _load(images: ImagesOrPaths, name: str, device: Optional[torch.device]) -> torch.Tensor:
    """A tensor as it is; a path or a list of paths read as a (N, 3, H, W) float32 batch in [0, 1]."""
    if isinstance(images, torch.Tensor):
        return images
    from .utils import read_image_tensor

    paths = [images] if isinstance(images, (str, os.PathLike)) else (
        list(images) if isinstance(images, (list, tuple)) else [])
    if not paths or not all(isinstance(p, (str, os.PathLike)) for p in paths):
        raise TypeError(f"{name} must be a tensor, an image path or a list of image paths, "
                        f"got {type(images).__name__}")
    batch = [read_image_tensor(p) for p in paths]
    sizes = {tuple(b.shape[1:]) for b in batch}
    if len(sizes) > 1:
        raise ValueError(f"{name}: the images have different sizes {sorted(sizes)}; a batch needs one size")
    out = torch.stack(batch)
    return out.to(device) if device is not None else out


class Metric(nn.Module):
    """A registered metric: ``forward(x, y)`` -> (N,) scores of images in [0, 1] (tensors or
    paths); for the one asymmetric metric, IFC, ``x`` is the output and ``y`` its reference (as
    ``evaluate`` and torchmetrics' ``(preds, target)``). ``info`` says what it is; ``module`` is the
    underlying ``LPIPS`` / ``ELPIPS`` / ``DISTS`` module (None for the functional metrics).
    ``signed(x, y)`` scores images in [-1, 1] (lpips' convention: BAPPS data) without converting
    them to [0, 1] and back, so the 8-bit baselines quantize exactly as lpips does; it checks no
    range."""

    def __init__(self, info: MetricInfo, unit: Callable[..., torch.Tensor], signed: Callable[..., torch.Tensor],
                 module: Optional[nn.Module] = None, as_loss: bool = False,
                 options: Optional[Dict[str, Any]] = None) -> None:
        super().__init__()
        self.info, self.as_loss, self.options = info, bool(as_loss), dict(options or {})
        self.module = module
        self._unit, self._signed = unit, signed

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def lower_better(self) -> bool:
        return self.info.lower_better

    def _device(self) -> Optional[torch.device]:
        """Where images read from paths go: the module's device (None for functional metrics)."""
        t: Optional[torch.Tensor] = next(iter(self.parameters()), None)
        if t is None:
            t = next(iter(self.buffers()), None)
        return t.device if t is not None else None

    def forward(self, x: ImagesOrPaths, y: ImagesOrPaths, **kwargs) -> torch.Tensor:
        x, y = _load(x, "x", self._device()), _load(y, "y", self._device())
        V.check_image(x, "x", hint=V.UNIT_HINT)
        V.check_image(y, "y", hint=V.UNIT_HINT)
        V.check_pair(x, y, "x", "y")
        if self.as_loss:  # any range, but never NaN/Inf (validation.NONFINITE_RULE)
            V.check_finite(x, "x")
            V.check_finite(y, "y")
        else:
            V.check_unit_images(x, "x", why=WHY)
            V.check_unit_images(y, "y", why=WHY)
        return self._unit(x, y, **kwargs).reshape(-1)

    def signed(self, x: torch.Tensor, y: torch.Tensor, **kwargs) -> torch.Tensor:
        """Scores of images in [-1, 1] (lpips' convention), (N,)."""
        return self._signed(x, y, **kwargs).reshape(-1)

    def extra_repr(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"name={self.info.name!r}{', ' + opts if opts else ''}{', as_loss=True' if self.as_loss else ''}"


def _options(info: MetricInfo, given: Dict[str, Any]) -> Dict[str, Any]:
    unknown = sorted(set(given) - set(info.options))
    if unknown:
        known = ", ".join(info.options) or "none"
        raise TypeError(f"metric {info.name!r} takes no option {', '.join(map(repr, unknown))} (its options: {known})")
    return {**info.options, **given}


def _half(x: torch.Tensor) -> torch.Tensor:
    return (x + 1) / 2


def _twice(x: torch.Tensor) -> torch.Tensor:
    return x * 2 - 1


def _build_lpips(info: MetricInfo, opts: Dict[str, Any], device) -> Tuple[nn.Module, Callable, Callable]:
    from .model import LPIPS

    ckpt = opts["checkpoint"]
    if info.checkpoint == "required" and ckpt is None:
        raise ValueError(f"metric {info.name!r} needs a checkpoint: create_metric({info.name!r}, checkpoint=PATH) "
                         f"(an LPIPS state dict, e.g. R-LPIPS' release; nothing is downloaded)")
    if ckpt is not None and not os.path.isfile(ckpt):
        raise FileNotFoundError(f"metric {info.name!r}: checkpoint {ckpt} does not exist")
    model = LPIPS(**info.params, lpips=opts["calibrated"], model_path=ckpt, trunk_path=opts["trunk_path"],
                  pnet_rand=opts["pnet_rand"], backend=opts["backend"],
                  dtype=opts["dtype"], device=device, verbose=False, check_inputs=opts["check_inputs"],
                  memory_budget=opts["memory_budget"], max_tile=opts["max_tile"]).eval()
    return (model, lambda x, y: model(x, y, normalize=True), lambda x, y: model(x, y))


def _build_elpips(info: MetricInfo, opts: Dict[str, Any], device) -> Tuple[nn.Module, Callable, Callable]:
    from .elpips import ELPIPS

    model = ELPIPS(**info.params, n_samples=opts["n_samples"],
                   trunk_path=opts["trunk_path"], pnet_rand=opts["pnet_rand"], backend=opts["backend"],
                   dtype=opts["dtype"], mode=opts["mode"],
                   max_scale=opts["max_scale"], device=device, check_inputs=opts["check_inputs"],
                   max_tile=opts["max_tile"],
                   **({} if opts["memory_budget"] is None else {"memory_budget": opts["memory_budget"]}))
    return (model, lambda x, y, **kw: model(x, y, **kw), lambda x, y, **kw: model(_half(x), _half(y), **kw))


def _build_dists(info: MetricInfo, opts: Dict[str, Any], device) -> Tuple[nn.Module, Callable, Callable]:
    from .dists import DISTS

    model = DISTS(weights_path=opts["weights_path"], trunk_path=opts["trunk_path"], pnet_rand=opts["pnet_rand"],
                  check_inputs=opts["check_inputs"], backend=opts["backend"], dtype=opts["dtype"], device=device,
                  memory_budget=opts["memory_budget"], max_tile=opts["max_tile"])
    return (model, lambda x, y: model(x, y), lambda x, y: model(_half(x), _half(y)))


def _build_function(info: MetricInfo, opts: Dict[str, Any]) -> Tuple[Callable, Callable]:
    from . import classic, iqa
    from .ifc import ifc

    if info.family == "iqa":
        fn = {"psnr": iqa.psnr, "ssim": iqa.ssim, "ms-ssim": iqa.ms_ssim, "gmsd": iqa.gmsd, "uqi": iqa.uqi,
              "ifc": lambda out, ref, *a, **k: ifc(ref, out, *a, **k)}[info.name]

        def unit(x, y):
            return fn(x, y, 1.0, **opts)
        return unit, lambda x, y: unit(_half(x), _half(y))
    if info.family == "baseline":
        base = classic.l2 if info.name.startswith("l2") else classic.dssim
        cs = "RGB" if info.name.endswith("-rgb") else "Lab"

        def signed(x, y):
            return base(x, y, colorspace=cs)
        return (lambda x, y: signed(_twice(x), _twice(y))), signed

    def euclidean(x, y):
        return (x - y).flatten(1).norm(dim=1)
    return euclidean, lambda x, y: euclidean(_half(x), _half(y))


def create_metric(name: str, *, as_loss: bool = False, device: Union[str, torch.device, None] = None,
                  **options) -> Metric:
    """The metric ``name`` (see ``list_metrics()``), in eval mode, on ``device`` (default CPU).

    ``as_loss``: accept images outside [0, 1] (no range check; gradients flow as for any module;
    E-LPIPS then defaults to one draw per call, the loss' setting). ``options``: the metric's own
    (``metric_info(name).options``): ``checkpoint`` (LPIPS weights such as R-LPIPS'; required by
    'rlpips'), ``calibrated`` (False: LPIPS' uncalibrated baseline, unit channel weights),
    ``trunk_path``, ``pnet_rand`` (a random trunk, for tests), ``backend``, ``dtype``,
    ``memory_budget`` and ``max_tile`` (tiled passes on large images) for LPIPS, E-LPIPS and DISTS; ``n_samples``,
    ``mode``, ``max_scale`` for E-LPIPS; SSIM's window for 'ssim' / 'ms-ssim'. An unknown option
    raises TypeError naming the metric's options.

    Example::

        >>> m = fastlpips.create_metric("lpips-vgg")
        >>> m(x, y)                        # (N,) for x, y (N, 3, H, W) in [0, 1]
        >>> fastlpips.create_metric("psnr")("a.png", "b.png")
    """
    info = metric_info(name)
    if not isinstance(as_loss, bool):
        raise TypeError(f"as_loss must be True or False, got {as_loss!r}")
    given = dict(options)
    if info.family == "elpips" and as_loss:
        given.setdefault("n_samples", 1)
    opts = _options(info, given)
    dev = torch.device(device) if device is not None else None
    # the module's own value scan warns about the range; a loss is scanned for NaN/Inf only (forward)
    opts["check_inputs"] = not as_loss
    shown = {k: v for k, v in given.items() if v is not None}
    if info.family == "lpips":
        module, unit, signed = _build_lpips(info, opts, dev)
    elif info.family == "elpips":
        module, unit, signed = _build_elpips(info, opts, dev)
    elif info.family == "dists":
        module, unit, signed = _build_dists(info, opts, dev)
    else:
        module = None
        unit, signed = _build_function(info, {k: opts[k] for k in info.options})
    return Metric(info, unit, signed, module, as_loss, shown).eval()
