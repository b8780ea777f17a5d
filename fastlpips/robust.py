"""Robustness evaluation against many threat models, as Laidlaw et al. report it (REFERENCE.md
section 6; perceptual-advex's evaluate_trained_model.py):

* accuracy under each attack = the fraction of ALL inputs still classified correctly after the
  attack (inputs already misclassified count as errors, as there);
* union accuracy = the fraction classified correctly under every narrow attack at once
  (``NARROW``: L_inf, L_2, JPEG, StAdv, ReColorAdv), per example;
* unseen mean = the sum of the accuracies under the narrow attacks NOT seen in training, divided by
  the number of narrow threat models (5), the paper's arithmetic (its Table 3 L_inf row:
  (3.7 + 10.8 + 4.6 + 37.5) / 5 = 11.3).

Attacks are named by specs ``name[:distance][=bound]`` (``make_attack``): 'linf=8/255', 'l2',
'jpeg', 'stadv', 'recolor', 'ppgd', 'lpa' (AlexNet-bounded, 40 iterations, bound 0.5 on
perceptual-advex's scale by default), 'fast-lpa:self=0.5' / 'fast-lpa:alexnet=1.0' (training),
'trades' (TRADES' L_inf KL attack, bound 0.031: training), 'linf-aa' / 'l2-aa' (AutoAttack
standard: APGD-CE, APGD-T, FAB-T, Square; the evaluation reviewers ask for where 'linf' / 'l2' are
plain PGD), 'none' (clean examples: an undefended model's training).

``PAPER_TABLES['cifar']``: the attacks and the layout of the paper's CIFAR-10 table (union and
unseen mean over L_inf and L_2 AutoAttack, StAdv and ReColorAdv; clean; each attack;
``paper_table_rows``).
Every attack output is checked against its bound (``ThreatAttack.within_bound``); an output
outside is not a valid adversarial example: the clean image is scored in its place and the count
is reported (``violations``) with a warning. Under torchrun each process evaluates its share and
rank 0 gets every example's result.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from . import distributed as D
from .attacks.threat import ThreatAttack
from .utils import CheckedDataLoader
from .validation import check_logits, parse_fraction

__all__ = ["NARROW", "PERCEPTUAL", "DEFAULT_BOUNDS", "PAPER_EVALUATION", "PAPER_TABLES", "PaperTable",
           "parse_attack_spec", "make_attack", "make_distance", "union_accuracy", "unseen_mean", "RobustResult",
           "evaluate_robustness", "plot_robustness", "paper_table_rows", "verify_outputs"]

log = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]

NARROW = ("linf", "l2", "jpeg", "stadv", "recolor")
PERCEPTUAL = ("ppgd", "lpa")
AUTOATTACK = ("linf-aa", "l2-aa")
# CIFAR-10 bounds of the paper / perceptual-advex (images in [0, 1]; perceptual bounds on
# perceptual-advex's uncalibrated AlexNet scale; 'fast-lpa' self-bounded 0.5, AlexNet-bounded 1.0;
# AutoAttack at the paper's L_inf / L_2 bounds, RobustBench's L_2 bound is 0.5)
DEFAULT_BOUNDS = {"linf": 8 / 255, "l2": 1.0, "jpeg": 0.25, "stadv": 0.05, "recolor": 0.06, "ppgd": 0.5,
                  "lpa": 0.5, "fast-lpa:self": 0.5, "fast-lpa:alexnet": 1.0, "linf-aa": 8 / 255, "l2-aa": 1.0,
                  "trades": 0.031}
PAPER_EVALUATION = NARROW + PERCEPTUAL
ATTACK_NAMES = NARROW + PERCEPTUAL + AUTOATTACK + ("fast-lpa", "trades", "none")
# training attacks that see a narrow threat model under another name (TRADES' KL attack is L_inf)
SEEN_AS = {"trades": "linf"}


@dataclass(frozen=True)
class PaperTable:
    """A paper's evaluation: the attack specs, the narrow threat models its union and unseen
    mean range over, and its column order (after 'model')."""

    attacks: Tuple[str, ...]
    narrow: Tuple[str, ...]
    columns: Tuple[str, ...]


# Laidlaw et al., Table 2 (CIFAR-10): L_inf and L_2 by AutoAttack, StAdv, ReColorAdv, PPGD and LPA
# (AlexNet-bounded, 40 iterations) at the paper's bounds; union and unseen mean over the four narrow ones
PAPER_TABLES = {"cifar": PaperTable(
    attacks=("linf-aa=8/255", "l2-aa=1", "stadv=0.05", "recolor=0.06", "ppgd=0.5", "lpa=0.5"),
    narrow=("linf-aa", "l2-aa", "stadv", "recolor"),
    columns=("union", "unseen_mean", "clean", "linf-aa", "l2-aa", "stadv", "recolor", "ppgd", "lpa"))}


@dataclass(frozen=True)
class AttackSpec:
    name: str
    distance: Optional[str]
    bound: float

    def __str__(self) -> str:
        return self.name + (f":{self.distance}" if self.distance else "") + f"={self.bound:.6g}"


def _number(text: str, spec: str) -> float:
    v = parse_fraction(text, f"attack {spec!r}: bound")
    if not v > 0:
        raise ValueError(f"attack {spec!r}: bound must be > 0, got {v}")
    return v


DISTANCE_FAMILIES = ("lpips", "elpips", "dists")  # registry families the perceptual attacks can be bounded by


def _is_number(text: str) -> bool:
    try:
        parse_fraction(text, "bound")
    except (ValueError, TypeError):
        return False
    return True


def _metric_distance(text: str, spec: str) -> str:
    """A perceptual attack's distance other than 'self' / 'alexnet': a registry metric of the LPIPS,
    E-LPIPS or DISTS family, with ``=CHECKPOINT`` where it takes one (``rlpips=CKPT``); returned
    as its registered name (and checkpoint)."""
    from .evaluation.specs import parse_metric
    from .metrics import list_metrics, metric_info

    choices = ["self", "alexnet"] + [n for n in list_metrics() if metric_info(n).family in DISTANCE_FAMILIES]
    try:
        m = parse_metric(text)
    except ValueError as e:
        raise ValueError(f"attack {spec!r}: distance {text!r}: {e}; distances: {', '.join(choices)} "
                         "(rlpips=CHECKPOINT)") from None
    info = metric_info(m.key) if m.kind != "classifier" else None
    if info is None or info.family not in DISTANCE_FAMILIES or not info.differentiable:
        raise ValueError(f"attack {spec!r}: {text!r} cannot bound a perceptual attack (it needs a differentiable "
                         f"feature distance); distances: {', '.join(choices)} (rlpips=CHECKPOINT)")
    return m.key + (f"={m.path}" if m.path else "")


def parse_attack_spec(spec: str) -> AttackSpec:
    """'name[:distance][=bound]' -> AttackSpec (bounds may be fractions: 'linf=8/255'). The
    distance applies to the perceptual attacks (ppgd, lpa, fast-lpa): 'self', 'alexnet' (default;
    Fast-LPA 'self'), or a metric of the registry's LPIPS, E-LPIPS or DISTS family, with its
    checkpoint where it takes one: 'ppgd:rlpips=CKPT=0.5', 'lpa:dists=0.1', 'ppgd:elpips=0.05'.
    A metric's bound is on its own scale (the LPIPS, E-LPIPS or DISTS value) and must be given;
    the bound is the text after the last '=' when that is a number (so a checkpoint whose name is
    a number needs a path such as './0.5')."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"an attack spec must be a non-empty string, got {spec!r}")
    text = spec.strip()
    colon_at, eq_at = text.find(":"), text.find("=")
    if colon_at >= 0 and (eq_at < 0 or colon_at < eq_at):
        name, _, rest = text.partition(":")
        head, eq, tail = rest.rpartition("=")
        if eq and (_is_number(tail) or not tail.strip() or head.strip().lower() in ("self", "alexnet")):
            distance, bound = head, tail
        else:
            distance, eq, bound = rest, "", ""
        colon = ":"
    else:
        head, eq, bound = text.partition("=")
        name, colon, distance = head.partition(":")
    name = name.strip().lower()
    if eq and not bound.strip():
        raise ValueError(f"attack {spec!r}: '=' without a bound (write e.g. {name}=0.5, or leave '=' out for the "
                         "default)")
    if colon and not distance.strip():
        raise ValueError(f"attack {spec!r}: ':' without a distance (write {name}:self or {name}:alexnet, or leave "
                         "':' out for the default)")
    if name not in ATTACK_NAMES:
        raise ValueError(f"unknown attack {name!r} in {spec!r}; choose among {', '.join(ATTACK_NAMES)}")
    perceptual = name in PERCEPTUAL or name == "fast-lpa"
    dist: Optional[str] = distance.strip() or None
    if dist is not None and not perceptual:
        raise ValueError(f"attack {spec!r}: only the perceptual attacks take a distance (':self', ':alexnet' or "
                         "a metric)")
    if perceptual:
        dist = dist or ("self" if name == "fast-lpa" else "alexnet")
        if dist.lower() in ("self", "alexnet"):
            dist = dist.lower()
        else:
            dist = _metric_distance(dist, spec)
            if not bound:
                raise ValueError(f"attack {spec!r}: give the bound on the scale of {dist.split('=')[0]}, e.g. "
                                 f"{name}:{dist}=0.1 (the defaults are on perceptual-advex's AlexNet scale)")
    if name == "none":
        if bound:
            raise ValueError(f"attack {spec!r}: 'none' (clean examples) takes no bound")
        return AttackSpec(name, None, 0.0)
    key = f"{name}:{dist}" if name == "fast-lpa" else name
    value = _number(bound, spec) if bound else DEFAULT_BOUNDS[key]
    return AttackSpec(name, dist, value)


def make_distance(kind: Optional[str], model: nn.Module, layers: Optional[Sequence[str]] = None,
                  *, samples: int = 8, image_size: Optional[Tuple[int, int]] = None):
    """The perceptual attacks' distance: 'alexnet' (perceptual-advex's scale: the AlexNet trunk,
    unit weights, sqrt of uncalibrated LPIPS), 'self' (``model``'s own ``layers``, default the
    ResNet stages layer1..layer4), or a registry metric of the LPIPS, E-LPIPS or DISTS family
    ('rlpips=CKPT', 'lpips-vgg', 'elpips', 'dists'), on the metric's own scale (calibrated LPIPS,
    E-LPIPS over ``samples`` draws renewed every step, at the largest scale level ``image_size``
    (H, W) allows: ``elpips.max_scale_for_size``, 4 for 32 x 32 images; DISTS); such a distance
    keeps the metric as ``bounding_metric``, which robust evaluation checks every output with."""
    from .attacks.distances import ClassifierFeatureDistance, DISTSDistance, ELPIPSDistance, LPIPSDistance
    from .metrics import create_metric, metric_info
    from .model import LPIPS

    if kind == "alexnet":  # the registry's LPIPS-AlexNet with unit channel weights
        lpips = create_metric("lpips-alex", calibrated=False).module
        assert isinstance(lpips, LPIPS)  # the registry's LPIPS family holds an LPIPS module
        return LPIPSDistance(lpips, calibrated=False)
    if kind == "self":
        from .nets.classifiers import SELF_BOUND_LAYERS

        return ClassifierFeatureDistance(model, list(layers) if layers else list(SELF_BOUND_LAYERS))
    if not isinstance(kind, str):
        raise ValueError(f"distance must be 'self', 'alexnet' or a metric name, got {kind!r}")
    name, _, ckpt = _metric_distance(kind, kind).partition("=")
    family = metric_info(name).family
    options: Dict[str, Any] = {"checkpoint": ckpt} if ckpt else {}
    if family == "elpips" and image_size is not None:
        from .elpips import max_scale_for_size

        options["max_scale"] = max_scale_for_size(*image_size, net=metric_info(name).params["net"])
    metric = create_metric(name, **options)
    dist: Any
    if family == "lpips":
        assert isinstance(metric.module, LPIPS)  # the registry's LPIPS family holds an LPIPS module
        dist = LPIPSDistance(metric.module, calibrated=True)
    elif family == "elpips":
        dist = ELPIPSDistance(metric.module, samples=samples)
    else:
        dist = DISTSDistance(metric.module)
    dist.bounding_metric = metric
    return dist


def make_attack(spec: Union[str, AttackSpec], model: nn.Module, *, iterations: Optional[int] = None,
                layers: Optional[Sequence[str]] = None, distances: Optional[dict] = None,
                image_size: Optional[Tuple[int, int]] = None) -> ThreatAttack:
    """The attack a spec names, on ``model``. ``iterations``: the attack's step count (defaults:
    perceptual-advex's 20 for the narrow attacks, the paper's 40 for PPGD/LPA evaluation, 10 for
    Fast-LPA). ``distances``: a dict shared between calls so one AlexNet is built once.
    ``image_size``: (H, W) of the images, for an E-LPIPS bound (its scale levels)."""
    s = parse_attack_spec(spec) if isinstance(spec, str) else spec
    kw: Dict[str, Any] = {} if iterations is None else {"num_iterations": iterations}
    if s.name == "none":
        from .attacks.threat import NoAttack
        return NoAttack(model)
    if s.name in AUTOATTACK:
        from .attacks.autoattack import AutoAttack
        return AutoAttack(model, s.name[:-3], s.bound, **kw)
    if s.name == "trades":
        from .attacks.narrow import TradesLinf
        return TradesLinf(model, s.bound, **kw)
    if s.name == "linf":
        from .attacks.narrow import LinfPGD
        return LinfPGD(model, s.bound, **kw)
    if s.name == "l2":
        from .attacks.narrow import L2PGD
        return L2PGD(model, s.bound, **kw)
    if s.name == "jpeg":
        from .attacks.narrow import JPEGLinf
        return JPEGLinf(model, s.bound, **kw)
    if s.name == "stadv":
        from .attacks.stadv import StAdv
        return StAdv(model, s.bound, **kw)
    if s.name == "recolor":
        from .attacks.recolor import ReColorAdv
        return ReColorAdv(model, s.bound, **kw)
    from .attacks.perceptual import FastLagrangePerceptualAttack, LagrangePerceptualAttack, PerceptualPGD

    cache = distances if distances is not None else {}
    key = (s.distance, id(model) if s.distance == "self" else None)
    if key not in cache:
        cache[key] = make_distance(s.distance, model, layers, image_size=image_size)
    dist = cache[key]
    if s.name == "ppgd":
        return PerceptualPGD(model, dist, s.bound, num_iterations=iterations or 40)
    if s.name == "lpa":
        return LagrangePerceptualAttack(model, dist, s.bound, num_iterations=iterations or 40)
    return FastLagrangePerceptualAttack(model, dist, s.bound, num_iterations=iterations or 10)


def _correctness(values, name: str) -> np.ndarray:
    """Per-example correctness: a 1-D sequence of booleans (or of 0 and 1)."""
    arr = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of per-example booleans, got shape {arr.shape}")
    if arr.dtype != bool:
        if arr.dtype.kind not in "iuf" or not np.isin(arr, (0, 1)).all():
            odd = arr[~np.isin(arr, (0, 1))] if arr.dtype.kind in "iuf" else arr
            raise ValueError(f"{name} must hold booleans (or 0 and 1), got {arr.dtype} values such as "
                             f"{odd[:3].tolist()}")
        arr = arr.astype(bool)
    return arr


def union_accuracy(correct: Mapping[str, Union[Sequence[bool], np.ndarray]], attacks: Sequence[str] = NARROW) -> float:
    """The fraction of examples classified correctly under every attack in ``attacks`` (per
    example: ``correct[name][i]``, booleans or 0/1, the same examples for every attack)."""
    if not isinstance(correct, Mapping):
        raise TypeError(f"correct must be a dict {{attack: per-example booleans}}, got {type(correct).__name__}")
    if isinstance(attacks, str) or not len(attacks):
        raise ValueError(f"attacks must be a non-empty sequence of attack names, got {attacks!r}")
    missing = [a for a in attacks if a not in correct]
    if missing:
        raise ValueError(f"union over {list(attacks)} needs per-example results of {missing}")
    rows = [_correctness(correct[a], f"correct[{a!r}]") for a in attacks]
    sizes = {a: len(r) for a, r in zip(attacks, rows)}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"the per-example results cover different numbers of examples: {sizes}")
    if not rows[0].size:
        raise ValueError("union accuracy of no examples: the per-example results are empty")
    return float(np.stack(rows).all(0).mean())


def unseen_mean(accuracy: Dict[str, float], seen: Sequence[str] = (), narrow: Sequence[str] = NARROW) -> float:
    """Sum of the accuracies under the narrow attacks not in ``seen``, divided by the number of
    narrow threat models (the paper's definition: a seen attack adds nothing, the divisor stays)."""
    if isinstance(narrow, str) or not len(narrow):
        raise ValueError(f"narrow must be a non-empty sequence of threat models, got {narrow!r}")
    if isinstance(seen, str):
        raise ValueError(f"seen must be a sequence of threat model names, got the string {seen!r}")
    unknown = [s for s in seen if s not in narrow]
    if unknown:
        raise ValueError(f"seen threat models {unknown} are not among the narrow ones {list(narrow)}")
    missing = [a for a in narrow if a not in seen and a not in accuracy]
    if missing:
        raise ValueError(f"unseen mean needs the accuracy under {missing}")
    return sum(accuracy[a] for a in narrow if a not in seen) / len(narrow)


@dataclass
class RobustResult:
    """Per-example correctness under each attack ('clean' first), with the bound violations
    (outputs replaced by the clean image) and the seconds each attack took."""

    attacks: List[str]
    specs: Dict[str, str]
    correct: Dict[str, np.ndarray]
    violations: Dict[str, int]
    seconds: Dict[str, float]
    seen: Sequence[str] = ()
    summary: Dict[str, float] = field(default_factory=dict)
    narrow: Sequence[str] = NARROW  # the threat models of the union and the unseen mean
    # per attack and example: the output's size on the bound's scale as verified (``verify_outputs``)
    # and, for E-LPIPS bounds, the half-width of its confidence interval (NaN elsewhere)
    sizes: Dict[str, np.ndarray] = field(default_factory=dict)
    half_widths: Dict[str, np.ndarray] = field(default_factory=dict)
    checked_with: Dict[str, str] = field(default_factory=dict)  # attack -> what verified its bound

    @property
    def n(self) -> int:
        return len(self.correct["clean"])

    def accuracy(self) -> Dict[str, float]:
        return {k: float(v.mean()) if len(v) else math.nan for k, v in self.correct.items()}

    def finish(self) -> "RobustResult":
        acc = self.accuracy()
        self.summary = dict(acc)
        if all(a in self.correct for a in self.narrow):
            self.summary["union"] = union_accuracy(self.correct, self.narrow)
            self.summary["unseen_mean"] = unseen_mean(acc, _seen_among(self.seen, self.narrow), self.narrow)
        return self

    def rows(self) -> List[dict]:
        """One row per attack: attack, spec, accuracy, violations, the largest verified size of an
        output (and the half-width of its interval, E-LPIPS bounds), what verified the bound,
        seconds, images/s; then union and unseen mean when every narrow attack ran."""
        out = []
        for a in ["clean"] + self.attacks:
            sec = self.seconds.get(a, math.nan)
            size = self.sizes.get(a, np.zeros(0))
            half = self.half_widths.get(a, np.full(len(size), math.nan))
            top = int(np.nanargmax(size)) if len(size) and not np.isnan(size).all() else None
            out.append({"attack": a, "spec": self.specs.get(a, "-"), "accuracy": self.summary[a],
                        "violations": self.violations.get(a, 0),
                        "max_size": float(size[top]) if top is not None else math.nan,
                        "max_size_ci": float(half[top]) if top is not None else math.nan,
                        "checked_with": self.checked_with.get(a, "-"), "seconds": sec,
                        "images_per_s": self.n / sec if sec and sec > 0 else math.nan})
        for k in ("union", "unseen_mean"):
            if k in self.summary:
                out.append({"attack": k, "spec": "narrow: " + ",".join(self.narrow), "accuracy": self.summary[k],
                            "violations": 0, "max_size": math.nan, "max_size_ci": math.nan, "checked_with": "-",
                            "seconds": math.nan, "images_per_s": math.nan})
        return out

    def save(self, path: PathLike) -> Path:
        """``.csv`` (the rows) or ``.json`` (rows, summary, per-example correctness), atomically."""
        from .utils import atomic_write

        path = Path(path)
        if path.suffix.lower() == ".csv":
            def write(tmp):
                with open(tmp, "w", newline="") as f:
                    w = csv.DictWriter(f, fieldnames=list(self.rows()[0]))
                    w.writeheader()
                    w.writerows(self.rows())
        elif path.suffix.lower() == ".json":
            doc = {"n": self.n, "rows": self.rows(), "summary": self.summary, "seen": list(self.seen),
                   "narrow": list(self.narrow), "checked_with": self.checked_with,
                   "sizes": {k: [None if math.isnan(v) else float(v) for v in a] for k, a in self.sizes.items()},
                   "half_widths": {k: [None if math.isnan(v) else float(v) for v in a]
                                   for k, a in self.half_widths.items()},
                   "per_example": {k: v.astype(int).tolist() for k, v in self.correct.items()}}

            def write(tmp):
                Path(tmp).write_text(json.dumps(doc, indent=1))
        else:
            raise ValueError(f"{path}: results are written as .csv or .json")
        atomic_write(path, write)
        return path


def _seen_among(seen: Sequence[str], narrow: Sequence[str]) -> List[str]:
    """The threat models of ``narrow`` seen in training: named in ``seen``, or, for an AutoAttack
    column ('linf-aa'), its norm's PGD ('linf': the same threat model, a weaker attack)."""
    names = {SEEN_AS.get(s, s) for s in seen}
    return [n for n in narrow if n in names or (n in AUTOATTACK and n[:-3] in names)]


def _labels(specs: Sequence[AttackSpec]) -> List[str]:
    """Each attack's column: its name ('ppgd'); where several share a name, the name and the
    distance's metric ('ppgd:alexnet', 'ppgd:rlpips'); where those repeat too, the whole spec."""
    def short(s: AttackSpec) -> str:
        return f"{s.name}:{s.distance.split('=')[0]}" if s.distance else s.name

    out = []
    for s in specs:
        if [t.name for t in specs].count(s.name) == 1:
            out.append(s.name)
        elif [short(t) for t in specs].count(short(s)) == 1:
            out.append(short(s))
        else:
            out.append(str(s))
    return out


def verify_outputs(attack: ThreatAttack, x: torch.Tensor, adv: torch.Tensor, *, seed: int = 0,
                   samples: int = 256):
    """``(ok, size, half_width, checked_with)`` of an attack's outputs ``adv`` for images ``x``:
    the size on the bound's scale, measured by the bounding metric itself where the attack's
    distance has one (``make_distance``: the registry metric's own forward pass, independent of
    the attack's feature path), else the attack's own ``last['size']``. An E-LPIPS bound is
    checked with fresh draws (``elpips_estimate`` seeded with ``seed``, independent of the
    attack's, up to ``samples`` draws per image, at least 32 or ``samples`` if fewer): the size is
    the estimate, ``half_width`` its 95% interval's half-width, and an
    output violates the bound only when the whole interval lies above it; elsewhere
    ``half_width`` is None."""
    metric = getattr(getattr(attack, "distance", None), "bounding_metric", None)
    if metric is None:
        if "size" not in attack.last:
            return torch.ones(x.shape[0], dtype=torch.bool), torch.zeros(x.shape[0]), None, "-"
        return attack.within_bound().cpu(), attack.last["size"].detach().cpu(), None, "attack"
    with torch.no_grad():
        if metric.info.family == "elpips":
            from .estimator import elpips_estimate

            est = elpips_estimate(adv, x, metric=metric.module, seed=seed, min_samples=min(32, samples),
                                  max_samples=samples)
            size, half = est.mean.detach().cpu(), est.half_width.detach().cpu()
            return attack.within_bound(size - half).cpu(), size, half, f"{metric.name} (fresh draws)"
        size = metric(adv, x).detach().float().cpu()
    return attack.within_bound(size).cpu(), size, None, metric.name


def _batch_generator(seed: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, index]).generate_state(1)[0]))


def evaluate_robustness(model: nn.Module, dataset, attacks: Sequence[Union[str, AttackSpec]] = PAPER_EVALUATION, *,
                        batch_size: int = 100, device=None, iterations: Optional[int] = None,
                        layers: Optional[Sequence[str]] = None, seen: Sequence[str] = (), seed: int = 0,
                        max_examples: Optional[int] = None, workers: int = 0,
                        progress: Optional[bool] = True, narrow: Sequence[str] = NARROW,
                        check_samples: int = 256) -> RobustResult:
    """Clean accuracy and accuracy under each attack of ``attacks`` (specs, see ``make_attack``) on
    ``dataset`` ((image in [0, 1], label) pairs, e.g. ``ImageFolder``); ``seen``: the threat
    models the model was trained against (for the unseen mean); ``narrow``: the threat models of
    the union and the unseen mean (the five of ``NARROW``, or a paper table's). Every output is
    checked against its bound (``verify_outputs``; an E-LPIPS bound with up to ``check_samples``
    fresh draws per image); one outside is replaced by the clean image and counted. The model is
    put in eval mode.
    Random starts are seeded per batch (``seed``), so results do not depend on the process count."""
    from torch.utils.data import Subset
    from tqdm import tqdm

    from .validation import check_positive_int, check_seed

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (images in [0, 1] -> logits), got {type(model).__name__}")
    batch_size = check_positive_int(batch_size, "batch_size")
    workers = check_positive_int(workers, "workers", minimum=0)
    seed = check_seed(seed, allow_none=False)
    check_samples = check_positive_int(check_samples, "check_samples")
    if iterations is not None:
        iterations = check_positive_int(iterations, "iterations")
    if max_examples is not None:
        max_examples = check_positive_int(max_examples, "max_examples")
    if isinstance(attacks, (str, AttackSpec)):
        attacks = [attacks]
    if isinstance(seen, str):
        seen = [seen]
    if isinstance(narrow, str) or not len(narrow) or any(a not in ATTACK_NAMES for a in narrow):
        raise ValueError(f"narrow must be a non-empty sequence of threat model names ({', '.join(ATTACK_NAMES)}), "
                         f"got {narrow!r}")
    unknown = [s for s in seen if s not in ATTACK_NAMES]
    if unknown:
        raise ValueError(f"seen names threat models {unknown} that do not exist; names: {', '.join(ATTACK_NAMES)} "
                         "(names, not specs: 'linf', not 'linf=8/255')")
    try:
        size = len(dataset)
    except TypeError:
        raise TypeError(f"dataset must be a sized dataset of (image, label) pairs, got "
                        f"{type(dataset).__name__}") from None
    if size == 0:
        raise ValueError("dataset is empty: no examples to evaluate")
    specs = [parse_attack_spec(a) if isinstance(a, str) else a for a in attacks]
    names = _labels(specs)
    if len(set(names)) != len(names):
        raise ValueError(f"attacks {[str(s) for s in specs]} repeat a threat model")
    first = next(iter(model.parameters()), None)
    dev = torch.device(device) if device is not None else (first.device if first is not None else torch.device("cpu"))
    model = model.to(dev).eval()
    cache: dict = {}
    image = dataset[0][0]
    image_size = (int(image.shape[-2]), int(image.shape[-1])) if isinstance(image, torch.Tensor) and image.dim() >= 2 \
        else None
    built = [make_attack(s, model, iterations=iterations, layers=layers, distances=cache, image_size=image_size)
             for s in specs]
    for m in cache.values():
        m.to(dev)
    n = size if max_examples is None else min(size, max_examples)
    mine = list(range(D.rank(), n, D.world_size()))
    # batches of the global order: batch b holds examples b*batch_size ... (this rank's share)
    loader = CheckedDataLoader(Subset(dataset, mine), batch_size=max(1, batch_size // D.world_size()), shuffle=False,
                        num_workers=workers, pin_memory=dev.type == "cuda")
    correct: Dict[str, List[torch.Tensor]] = {k: [] for k in ["clean"] + names}
    index: Dict[str, List[int]] = {k: [] for k in ["clean"]}
    violations = {k: 0 for k in names}
    sizes: Dict[str, List[torch.Tensor]] = {k: [] for k in names}
    halves: Dict[str, List[torch.Tensor]] = {k: [] for k in names}
    checked: Dict[str, str] = {k: "-" for k in names}
    seconds = {k: 0.0 for k in ["clean"] + names}
    disable = True if (progress is False or not D.is_main()) else (None if progress is None else False)
    for b, (x, y) in enumerate(tqdm(loader, desc="robust-eval", unit="batch", disable=disable)):
        x, y = x.to(dev, non_blocking=True), torch.as_tensor(y).to(dev)
        start = b * max(1, batch_size // D.world_size())
        index["clean"].extend(mine[start:start + len(y)])
        t = time.perf_counter()
        with torch.no_grad():
            logits = model(x)
        check_logits(logits, len(y))
        if int(y.min()) < 0 or int(y.max()) >= logits.shape[1]:
            raise ValueError(f"labels lie in [{int(y.min())}, {int(y.max())}] but the model has {logits.shape[1]} "
                             "classes")
        correct["clean"].append((logits.argmax(1) == y).cpu())
        seconds["clean"] += time.perf_counter() - t
        for name, attack in zip(names, built):
            t = time.perf_counter()
            adv = attack(x, y, generator=_batch_generator(seed, mine[start]))
            verify_seed = int(np.random.SeedSequence([seed, mine[start], 1]).generate_state(1)[0])
            ok, size, half, how = verify_outputs(attack, x, adv, seed=verify_seed, samples=check_samples)
            sizes[name].append(size.float())
            halves[name].append(half.float() if half is not None else torch.full_like(size.float(), math.nan))
            checked[name] = how
            ok = ok.to(adv.device)
            if not bool(ok.all()):
                violations[name] += int((~ok).sum())
                adv = torch.where(ok.view(-1, 1, 1, 1), adv, x)
            with torch.no_grad():
                correct[name].append((model(adv).argmax(1) == y).cpu())
            seconds[name] += time.perf_counter() - t
    local = {k: torch.cat(v).numpy() if v else np.zeros(0, bool) for k, v in correct.items()}
    local_sizes = {k: (torch.cat(sizes[k]).numpy() if sizes[k] else np.zeros(0),
                       torch.cat(halves[k]).numpy() if halves[k] else np.zeros(0)) for k in names}
    gathered = D.gather_objects((index["clean"], local, violations, seconds, local_sizes))
    order = np.argsort(np.concatenate([np.asarray(g[0], dtype=np.int64) for g in gathered]), kind="stable")
    merged = {k: np.concatenate([g[1][k] for g in gathered])[order] for k in local}
    viol = {k: sum(g[2][k] for g in gathered) for k in violations}
    secs = {k: max(g[3][k] for g in gathered) for k in seconds}
    for k, v in viol.items():
        if v:
            warnings.warn(f"robust evaluation: {v} output(s) of attack {k!r} exceeded its bound; the clean images "
                          "were scored in their place", RuntimeWarning, stacklevel=2)
    merged_sizes = {k: np.concatenate([g[4][k][0] for g in gathered])[order] for k in names}
    merged_halves = {k: np.concatenate([g[4][k][1] for g in gathered])[order] for k in names}
    return RobustResult(names, {k: str(s) for k, s in zip(names, specs)}, merged, viol, secs, tuple(seen),
                        narrow=tuple(narrow), sizes=merged_sizes, half_widths=merged_halves,
                        checked_with=checked).finish()


def plot_robustness(results: Dict[str, RobustResult], path: PathLike) -> Path:
    """Grouped bars: accuracy per attack (and union / unseen mean) for each model of ``results``
    ({model name: result}), saved atomically to ``path`` (any matplotlib format by suffix)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .utils import atomic_write

    cols: List[str] = []
    for r in results.values():
        for row in r.rows():
            if row["attack"] not in cols:
                cols.append(row["attack"])
    fig, ax = plt.subplots(figsize=(min(14, max(6, 0.35 * len(cols) * (1 + len(results)))), 3.6))
    width = 0.8 / max(1, len(results))
    for k, (label, r) in enumerate(results.items()):
        acc = {row["attack"]: row["accuracy"] for row in r.rows()}
        xs = np.arange(len(cols)) + (k - (len(results) - 1) / 2) * width
        ax.bar(xs, [100 * acc.get(c, math.nan) for c in cols], width, label=label)
    ax.set_xticks(np.arange(len(cols)), cols, rotation=30, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format=path.suffix.lstrip(".") or "png"))
    plt.close(fig)
    return path


def paper_table_rows(results: Mapping[str, RobustResult], table: Union[str, PaperTable] = "cifar", *,
                     extra: bool = False) -> List[dict]:
    """One row per model of ``results`` ({model name: result of ``evaluate_robustness`` with the
    table's attacks and ``narrow``}) in the table's column order (accuracies as fractions);
    ``extra``: the accuracies under any further attacks the results hold, after the table's
    columns (e.g. R-LPIPS-bounded PPGD beside the table's AlexNet-bounded one)."""
    if isinstance(table, str) and table not in PAPER_TABLES:
        raise ValueError(f"unknown paper table {table!r}; tables: {', '.join(PAPER_TABLES)}")
    t = PAPER_TABLES[table] if isinstance(table, str) else table
    rows = []
    for name, r in results.items():
        # the table's attack columns by spec (a column keeps its name when extra attacks share it)
        by_spec = {spec: label for label, spec in r.specs.items()}
        label = {}
        for a in t.attacks:
            s = parse_attack_spec(a)
            label[s.name] = by_spec.get(str(s), s.name)
        missing = [c for c in t.columns if label.get(c, c) not in r.summary]
        if missing:
            raise ValueError(f"the result of {name!r} lacks {missing} (evaluate with the table's attacks "
                             f"{list(t.attacks)} and narrow={list(t.narrow)})")
        row = {"model": name, **{c: r.summary[label.get(c, c)] for c in t.columns}}
        if extra:
            used = set(label.values())
            row.update({a: r.summary[a] for a in r.attacks if a not in used})
        rows.append(row)
    return rows
