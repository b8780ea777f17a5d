"""Scoring distances against human judgments: BAPPS 2AFC and JND (REFERENCE.md section 5).

* 2AFC: per triplet ``(d0 < d1)(1 - h) + (d1 < d0) h + 0.5 [d0 == d1]`` (h: the fraction of people
  preferring p1), averaged; JND: the area under the precision-recall curve of "same" judgments
  sorted by distance (``voc_ap``).
* ``score_2afc`` / ``score_jnd`` score any ``distance`` on split folders: batched (a DataLoader with
  workers), the reference's features computed once per triplet (``LPIPS.distances``), progress
  bars, and under torch.distributed (torchrun) each rank scores its share and the results are
  gathered (the same score as one process).
* ``score_2afc_dataset`` / ``score_jnd_dataset`` / ``voc_ap`` are lpips' functions (same
  arguments and outputs) so lpips' test scripts run with ``import fastlpips as lpips``.
* ``make_distance`` builds the distances the CLI offers: LPIPS (any net, version, model_path,
  uncalibrated), E-LPIPS averaged over k draws per triplet (shared by p0 and p1), L2 and DSSIM.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Sized, Union, cast

import numpy as np
import torch
from torch.utils.data import Dataset

from . import distributed as D
from . import validation as V
from .bapps import JNDDataset, TwoAFCDataset, bapps_loader

if TYPE_CHECKING:
    from .model import LPIPS

__all__ = ["two_afc_scores", "voc_ap", "jnd_map", "score_2afc_dataset", "score_jnd_dataset", "score_2afc",
           "score_jnd", "make_distance", "TripletDistance", "ScoreResult", "score_splits", "mean_score"]

log = logging.getLogger(__name__)

# distance(reference, [image, ...]) -> [(N,) distance of each image to the reference]; images in [-1, 1]
TripletDistance = Callable[[torch.Tensor, Sequence[torch.Tensor]], List[torch.Tensor]]


# -- the formulas ------------------------------------------------------------------------------------
def _distances(d, name: str) -> np.ndarray:
    """Distances as a flat float64 array; NaN (a metric that failed) is refused, +inf allowed."""
    try:
        arr = np.asarray(d.detach().cpu() if isinstance(d, torch.Tensor) else d, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be numbers, got {type(d).__name__} ({e})") from None
    if np.isnan(arr).any():
        raise ValueError(f"{name} holds {int(np.isnan(arr).sum())} NaN distance(s) (e.g. at index "
                         f"{int(np.flatnonzero(np.isnan(arr))[0])}): a NaN has no rank, so it cannot be scored")
    return arr


def two_afc_scores(d0, d1, judge) -> np.ndarray:
    """Per-triplet 2AFC agreement ``(d0 < d1)(1 - h) + (d1 < d0) h + 0.5 [d0 == d1]`` (float64).
    Distances must not be NaN and judgments ``h`` (the fraction preferring p1) must lie in [0, 1]."""
    d0, d1 = _distances(d0, "d0"), _distances(d1, "d1")
    h = V.check_fraction_values(judge, "judge (the fraction of people preferring p1)")
    if not len(d0) == len(d1) == len(h):
        raise ValueError(f"d0, d1 and judge hold {len(d0)}, {len(d1)} and {len(h)} values")
    return (d0 < d1) * (1.0 - h) + (d1 < d0) * h + (d1 == d0) * 0.5


def voc_ap(rec, prec, use_07_metric: bool = False) -> float:
    """Average precision from recall/precision arrays: the area under the precision envelope
    (``use_07_metric``: the VOC2007 11-point form); lpips' ``voc_ap``."""
    rec, prec = np.asarray(rec, dtype=np.float64).reshape(-1), np.asarray(prec, dtype=np.float64).reshape(-1)
    if len(rec) != len(prec):
        raise ValueError(f"rec and prec hold {len(rec)} and {len(prec)} values")
    if use_07_metric:
        return float(sum((prec[rec >= t].max() if (rec >= t).any() else 0.0) for t in np.arange(0.0, 1.1, 0.1)) / 11)
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # the envelope: max precision at any higher recall
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def jnd_map(ds, sames) -> float:
    """JND score: ``voc_ap`` of the "same" fractions sorted by distance (ascending), as lpips'
    ``score_jnd_dataset`` (its stable order among equal distances: numpy's quicksort argsort)."""
    ds = _distances(ds, "ds")
    sames = V.check_fraction_values(sames, "sames (the fraction of people judging the pair the same)")
    if len(ds) != len(sames):
        raise ValueError(f"ds and sames hold {len(ds)} and {len(sames)} values")
    if len(ds) == 0:
        raise ValueError("no JND pairs to score")
    s = sames[np.argsort(ds)]
    tps = np.cumsum(s)
    fps = np.cumsum(1 - s)
    fns = np.sum(s) - tps
    with np.errstate(invalid="ignore", divide="ignore"):  # no "same" judgment at all: NaN, as lpips
        return voc_ap(tps / (tps + fns), tps / (tps + fps))


# -- lpips' functions ---------------------------------------------------------------------------------
def _batches(data_loader):
    return data_loader.load_data() if hasattr(data_loader, "load_data") else data_loader


def _flat(t) -> List[float]:
    return (t.detach().cpu().numpy() if torch.is_tensor(t) else np.asarray(t)).reshape(-1).tolist()


def score_2afc_dataset(data_loader, func: Callable, name: str = ""):
    """lpips' ``score_2afc_dataset``: ``func(ref, p)`` over a loader of 2AFC batches (lpips' data
    loader with ``load_data()``, or any iterable of its dicts) -> (score, dict(d0s, d1s, gts, scores))."""
    from tqdm import tqdm

    d0s: List[float] = []
    d1s: List[float] = []
    gts: List[float] = []
    for data in tqdm(_batches(data_loader), desc=name):
        d0s += _flat(func(data["ref"], data["p0"]))
        d1s += _flat(func(data["ref"], data["p1"]))
        gts += _flat(data["judge"])
    d0, d1, h = np.array(d0s), np.array(d1s), np.array(gts)
    scores = two_afc_scores(d0, d1, h)
    return float(np.mean(scores)), dict(d0s=d0, d1s=d1, gts=h, scores=scores)


def score_jnd_dataset(data_loader, func: Callable, name: str = ""):
    """lpips' ``score_jnd_dataset``: ``func(p0, p1)`` over a loader of JND batches -> (mAP,
    dict(ds, sames)). Distances of any shape are flattened (lpips sorts an (N, 1, 1, 1) output
    along its last axis, which scrambles the score; ours sorts the N distances)."""
    from tqdm import tqdm

    ds: List[float] = []
    gts: List[float] = []
    for data in tqdm(_batches(data_loader), desc=name):
        ds += _flat(func(data["p0"], data["p1"]))
        gts += _flat(data["same"])
    d, s = np.array(ds), np.array(gts)
    return jnd_map(d, s), dict(ds=d, sames=s)


# -- distances -----------------------------------------------------------------------------------------
def make_distance(metric: str = "lpips-alex", *, draws: int = 50, device: Union[str, torch.device, None] = None,
                  backend: Optional[str] = None, seed: int = 0, model: Optional[torch.nn.Module] = None,
                  sampling: str = "iid", **options) -> TripletDistance:
    """A ``TripletDistance`` for ``metric``, a name of the metric registry (``fastlpips.list_metrics()``;
    ``options``: the metric's, e.g. ``checkpoint`` for R-LPIPS or an LPIPS checkpoint, ``calibrated=False``
    for LPIPS' uncalibrated baseline). LPIPS runs the reference's trunk once per triplet; E-LPIPS
    ('elpips', 'elpips-squeeze') is the mean of ``draws`` samples per triplet, p0 and p1 under the
    same transformations and dropout, the draws from ``seed`` and the batch; lpips' baselines
    ('l2-lab', 'dssim', ...) score the [-1, 1] patches exactly as lpips does. A metric where higher
    is better (PSNR, SSIM) scores as its negation, so a smaller distance is always the closer image.
    ``model``: score this LPIPS or ELPIPS module instead of building one.
    E-LPIPS draws are a function of ``seed`` and the batch's reference images alone (their bytes
    seed the draw), never of the calls made before: a split scores the same alone or after another.
    ``sampling`` (E-LPIPS): 'iid' (the release's: ``draws`` i.i.d. samples) or 'stratified' (the
    scale level stratified, ``estimator.stratified_mean``: the same expectation, without the
    between-level variance, so fewer draws give the i.i.d. precision; >= one draw per level)."""
    if sampling not in ("iid", "stratified"):
        raise ValueError(f"sampling must be 'iid' or 'stratified', got {sampling!r}")
    draws = V.check_positive_int(draws, "draws")
    from .elpips import ELPIPS
    from .metrics import create_metric, metric_info

    info = metric_info(metric) if model is None else None
    is_elpips = isinstance(model, ELPIPS) if info is None else info.family == "elpips"
    if sampling != "iid" and not is_elpips:
        raise ValueError(f"sampling={sampling!r} applies to E-LPIPS draws, not to metric {metric!r}")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if info is not None:
        if backend is not None:
            options["backend"] = backend
        if info.family == "elpips":
            options["n_samples"] = draws
        built = create_metric(metric, device=dev, **options)
        if info.family not in ("lpips", "elpips"):  # scored pair by pair on lpips' [-1, 1] patches
            sign = 1.0 if info.lower_better else -1.0
            return lambda ref, images: [sign * built.signed(ref, x) for x in images]
        model = built.module
    assert model is not None
    model = model.to(dev).eval()
    if not is_elpips:  # sampling is 'iid' here: 'stratified' was refused above for a non-E-LPIPS model
        lpips_model = cast("LPIPS", model)
        return lambda ref, images: [d.reshape(-1) for d in lpips_model.distances(ref, images)]
    assert isinstance(model, ELPIPS)
    if sampling == "stratified" and model.transforms and draws < model.max_scale:
        raise ValueError(f"sampling='stratified' needs one draw per scale level: draws={draws} < {model.max_scale}")
    seed = V.check_seed(seed, allow_none=False)

    def elpips(ref: torch.Tensor, images: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        g = torch.Generator().manual_seed(_batch_seed(seed, ref))
        if sampling == "stratified":
            from .estimator import stratified_mean

            out = stratified_mean(model, tuple((x + 1) / 2 for x in images), (ref + 1) / 2, draws, generator=g)
        else:
            out = model(tuple((x + 1) / 2 for x in images), (ref + 1) / 2, n_samples=draws, generator=g)
        return [d.reshape(-1) for d in out]
    return elpips


def _batch_seed(seed: int, ref: torch.Tensor) -> int:
    """A generator seed from ``seed`` and the bytes of a batch of images (stateless draws)."""
    h = hashlib.sha256(str(int(seed)).encode() + str(tuple(ref.shape)).encode())
    h.update(ref.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return int.from_bytes(h.digest()[:8], "little") & (2**63 - 1)


# -- scoring split folders -----------------------------------------------------------------------------
@dataclass
class ScoreResult:
    """One split's score: ``score`` (2AFC agreement or JND mAP), the per-item distances (``d0``,
    ``d1`` for 2AFC, ``d`` for JND), the judgments and the item paths, in the dataset's order."""

    kind: str
    split: str
    score: float
    distances: Dict[str, np.ndarray]
    judgments: np.ndarray
    paths: List[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.judgments)


def _score(dataset: Dataset, distance: TripletDistance, kind: str, split: str, batch_size: int, workers: int,
           device, progress: Optional[bool], attack: Optional[Callable] = None) -> ScoreResult:
    from tqdm import tqdm

    dev = torch.device(device) if device is not None else torch.device("cpu")
    loader = bapps_loader(dataset, batch_size, workers=workers, device=dev)
    label, members = ("judge", ("p0", "p1")) if kind == "2afc" else ("same", ("p1",))
    ref_key = "ref" if kind == "2afc" else "p0"
    rows: List[tuple] = []
    # progress None: shown on a terminal only (tqdm's disable=None); never on ranks other than 0
    disable = True if (progress is False or not D.is_main()) else (None if progress is None else False)
    bar = tqdm(total=len(cast(Sized, loader.sampler)), unit="item", desc=f"{kind} {split}", disable=disable,
               leave=False)
    with bar:
        for batch in loader:
            ref = batch[ref_key].to(dev, non_blocking=True)
            images = [batch[m].to(dev, non_blocking=True) for m in members]
            if attack is not None:
                ref, *images = attack(ref, *images, batch[label].to(dev).reshape(-1))
            with torch.no_grad():
                ds = distance(ref, images)
            arrs = [d.detach().double().cpu().numpy().reshape(-1) for d in ds]
            h = batch[label].double().numpy().reshape(-1)
            for i in range(len(h)):
                rows.append((int(batch["index"][i]), tuple(float(d[i]) for d in arrs), float(h[i]),
                             batch[f"{ref_key}_path"][i]))
            bar.update(len(h))
    # every rank's rows, in dataset order; DistributedSampler repeats a few items to even out ranks
    merged = {r[0]: r for part in D.gather_objects(rows) for r in part}
    ordered = [merged[i] for i in sorted(merged)]
    if len(ordered) != len(cast(Sized, dataset)):
        raise RuntimeError(f"scored {len(ordered)} of {len(cast(Sized, dataset))} items of {split}")
    dist = np.array([r[1] for r in ordered], dtype=np.float64).reshape(len(ordered), len(members))
    h = np.array([r[2] for r in ordered], dtype=np.float64)
    if kind == "2afc":
        distances = {"d0": dist[:, 0], "d1": dist[:, 1]}
        score = float(np.mean(two_afc_scores(dist[:, 0], dist[:, 1], h)))
    else:
        distances = {"d": dist[:, 0]}
        score = jnd_map(dist[:, 0], h)
    return ScoreResult(kind, split, score, distances, h, [r[3] for r in ordered])


def score_2afc(distance: TripletDistance, roots, *, batch_size: int = 50, workers: int = 0, device=None,
               progress: Optional[bool] = True, split: Optional[str] = None, load_size: int = 64,
               attack: Optional[Callable] = None) -> ScoreResult:
    """2AFC score of ``distance`` (``make_distance``) on split folder(s) ``roots`` (together).
    ``attack(ref, p0, p1, judge) -> (ref, p0, p1)``: score the attacked triplets instead (e.g.
    ``fastlpips.training.ranking_pgd``; runs with gradients enabled)."""
    batch_size = V.check_positive_int(batch_size, "batch_size")
    workers = V.check_positive_int(workers, "workers", minimum=0)
    dataset = roots if isinstance(roots, Dataset) else TwoAFCDataset(roots, load_size=load_size)
    return _score(dataset, distance, "2afc", split or _name(roots), batch_size, workers, device, progress, attack)


def score_jnd(distance: TripletDistance, roots, *, batch_size: int = 50, workers: int = 0, device=None,
              progress: Optional[bool] = True, split: Optional[str] = None, load_size: int = 64) -> ScoreResult:
    """JND mAP of ``distance`` on split folder(s) ``roots`` (together)."""
    batch_size = V.check_positive_int(batch_size, "batch_size")
    workers = V.check_positive_int(workers, "workers", minimum=0)
    dataset = roots if isinstance(roots, Dataset) else JNDDataset(roots, load_size=load_size)
    return _score(dataset, distance, "jnd", split or _name(roots), batch_size, workers, device, progress)


def _name(roots) -> str:
    if isinstance(roots, Dataset):
        return type(roots).__name__
    roots = [roots] if isinstance(roots, (str, os.PathLike)) else list(roots)
    return "+".join(_split_name(r) for r in roots)


def _split_name(root) -> str:
    """'val/cnn' for .../2afc/val/cnn: the last two path parts, as BAPPS names its splits."""
    parts = os.path.normpath(str(root)).split(os.sep)
    return "/".join(parts[-2:]) if len(parts) >= 2 else parts[-1]


def score_splits(distance: TripletDistance, roots: Sequence, kind: str = "2afc", **kwargs) -> List[ScoreResult]:
    """``score_2afc`` / ``score_jnd`` of each split folder separately (the per-split table)."""
    if kind not in ("2afc", "jnd"):
        raise ValueError(f"kind must be '2afc' or 'jnd', got {kind!r}")
    fn = score_2afc if kind == "2afc" else score_jnd
    if not roots:
        raise ValueError("no split folders given")
    return [fn(distance, r, split=_split_name(r), **kwargs) for r in roots]


def mean_score(results: Sequence[ScoreResult]) -> float:
    """The mean over splits (the papers' "mean" column); NaN-free inputs give a finite mean."""
    return float(np.mean([r.score for r in results])) if results else math.nan
