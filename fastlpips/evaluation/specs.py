"""The record types of an evaluation and the metric specifications (``'lpips-vgg'``,
``'rlpips=CKPT'``): what the run produces and the report reads."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

__all__ = ["MetricSpec", "parse_metric", "Item", "EvaluationResult"]

PathLike = Union[str, os.PathLike]

CONFIG_FILE = "evaluation.json"
#: The classifier-error column's name: ``top1=MODEL_DIR``.
CLASSIFIER = "top1"
RECORDS_DIR = "records"


@dataclass(frozen=True)
class MetricSpec:
    """A metric of the evaluation, a name of the metric registry (``fastlpips.list_metrics()``):
    ``key`` is its column (``elpips`` adds ``elpips_ci``); ``kind`` 'lpips' (one trunk pass per
    reference, distance maps), 'elpips' (to a confidence interval), 'score' (the registry's
    metric on the [0, 1] images) or 'classifier' (``top1=MODEL_DIR`` or ``top1=WEIGHTS``: a
    classifier's top-1 error,
    1 or 0 per image, on the output (column ``top1-NAME``) and on its reference (``top1-NAME_ref``));
    ``path`` an LPIPS checkpoint or the classifier's folder."""

    key: str
    kind: str
    net: Optional[str] = None
    path: Optional[str] = None
    higher_is_better: bool = False

    @property
    def columns(self) -> List[str]:
        if self.kind == "classifier":
            return [self.key, self.key + "_ref"]
        return [self.key, self.key + "_ci"] if self.kind == "elpips" else [self.key]

    @property
    def spatial(self) -> bool:
        """Whether the metric has a distance map (the report's heat maps)."""
        return self.kind == "lpips"

    @property
    def params(self) -> Dict[str, Any]:
        """The LPIPS / E-LPIPS module's arguments (net, version) from the registry."""
        from ..metrics import metric_info

        return dict(metric_info(self.key).params)


def parse_metric(text: str) -> MetricSpec:
    """A registry name (``'psnr'``, ``'lpips-vgg'``, ...), with ``=CHECKPOINT`` for the LPIPS metrics
    (``'lpips-alex=ckpt.pth'``; ``'rlpips=ckpt.pth'`` needs one), or ``'top1=MODEL_DIR'`` (a
    classifier's error) -> MetricSpec. ValueError names the
    problem (unknown name with the known ones, missing or unexpected checkpoint, missing file)."""
    from ..metrics import metric_info

    name, eq, arg = str(text).strip().partition("=")
    arg = arg.strip()
    if name.strip() == CLASSIFIER:
        if not arg:
            raise ValueError(f"metric {CLASSIFIER} needs a classifier: {CLASSIFIER}=MODEL_DIR (a folder written by "
                             f"fastlpips pat-train) or {CLASSIFIER}=WEIGHTS (an ImageNet ResNet-50: torchvision or "
                             "robustness-library checkpoint)")
        p = Path(arg)
        if not p.exists():
            raise ValueError(f"metric {CLASSIFIER}: classifier {arg} does not exist")
        return MetricSpec(f"{CLASSIFIER}-{p.resolve().name if p.is_dir() else p.stem}", "classifier", path=arg)
    info = metric_info(name)
    if info.checkpoint == "none" and eq:
        raise ValueError(f"metric {info.name} takes no argument, got {text!r}")
    if eq and not arg:
        raise ValueError(f"metric {text!r}: '=' without a checkpoint path (write {info.name}=PATH, or leave '=' out)")
    if info.checkpoint == "required" and not arg:
        raise ValueError(f"metric {info.name} needs a checkpoint: {info.name}=PATH (an LPIPS state dict, e.g. "
                         f"R-LPIPS' release)")
    if arg and not Path(arg).is_file():
        raise ValueError(f"metric {info.name}: checkpoint {arg} does not exist")
    kind = info.family if info.family in ("lpips", "elpips") else "score"
    return MetricSpec(info.name, kind, info.params.get("net"), arg or None, info.higher_better)


@dataclass(frozen=True)
class Item:
    method: str
    file: str  # the reference's path relative to the reference folder (posix)
    ref: Optional[Path] = None
    out: Optional[Path] = None


@dataclass
class EvaluationResult:
    """What ``evaluate`` produced (complete on rank 0; other ranks hold their share)."""

    metrics: List[MetricSpec]
    methods: List[str]
    rows: List[Dict[str, object]]  # one per (method, file): method, file, the metric columns, error
    errors: List[Dict[str, str]]  # method, file, metric ('' = the whole file), message
    computed: int = 0  # chunks computed by this process in this run
    skipped: int = 0  # chunks already done by an earlier run
    files: Dict[str, Path] = field(default_factory=dict)  # 'csv', 'json', 'html' when written
    paths: Dict[Tuple[str, str], Tuple[Path, Path]] = field(default_factory=dict)  # (method, file) -> (ref, out)

    @property
    def columns(self) -> List[str]:
        return ["method", "file"] + [c for s in self.metrics for c in s.columns] + ["error"]

    def summary(self) -> Dict[str, Dict[str, Dict[str, float]]]:
        """{method: {column: {'mean', 'std', 'n', 'nonfinite'}}} over the images with a value."""
        out: Dict[str, Dict[str, Dict[str, float]]] = {}
        for m in self.methods:
            rows = [r for r in self.rows if r["method"] == m]
            out[m] = {}
            for s in self.metrics:
                for c in s.columns:
                    v = np.array([r[c] for r in rows if r.get(c) is not None], dtype=np.float64)
                    fin = v[np.isfinite(v)]
                    out[m][c] = {"mean": float(v.mean()) if len(v) else math.nan,
                                 "std": float(fin.std()) if len(fin) else math.nan,
                                 "n": int(len(v)), "nonfinite": int(len(v) - len(fin))}
        return out


