"""The record types of an evaluation and the metric specifications (``'lpips-vgg'``,
``'rlpips=CKPT'``): what the run produces and the report reads."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

__all__ = ["METRICS", "MetricSpec", "parse_metric", "Item", "EvaluationResult"]

PathLike = Union[str, os.PathLike]

# name -> (kind, net, needs a checkpoint, higher is better)
METRICS: Dict[str, Tuple[str, Optional[str], Optional[bool], bool]] = {
    "psnr": ("psnr", None, None, True),
    "ssim": ("ssim", None, None, True),
    "ms-ssim": ("ms-ssim", None, None, True),
    "gmsd": ("gmsd", None, None, False),
    "lpips": ("lpips", "alex", False, False),
    "lpips-alex": ("lpips", "alex", False, False),
    "lpips-vgg": ("lpips", "vgg", False, False),
    "lpips-squeeze": ("lpips", "squeeze", False, False),
    "rlpips": ("lpips", "alex", True, False),
    "elpips": ("elpips", "vgg", None, False),
}
CONFIG_FILE = "evaluation.json"
RECORDS_DIR = "records"


@dataclass(frozen=True)
class MetricSpec:
    """A metric of the evaluation: ``key`` is its column (``elpips`` adds ``elpips_ci``)."""

    key: str
    kind: str
    net: Optional[str] = None
    path: Optional[str] = None
    higher_is_better: bool = False

    @property
    def columns(self) -> List[str]:
        return [self.key, self.key + "_ci"] if self.kind == "elpips" else [self.key]

    @property
    def spatial(self) -> bool:
        """Whether the metric has a distance map (the report's heat maps)."""
        return self.kind == "lpips"


def parse_metric(text: str) -> MetricSpec:
    """``'psnr'``, ``'lpips-vgg'``, ``'lpips-alex=ckpt.pth'``, ``'rlpips=ckpt.pth'``, ... -> MetricSpec.
    ValueError names the problem (unknown name, missing or unexpected checkpoint, missing file)."""
    name, eq, arg = str(text).strip().partition("=")
    name = name.strip().lower()
    if name not in METRICS:
        raise ValueError(f"unknown metric {text!r}; known: {', '.join(METRICS)} (rlpips and lpips-NET take "
                         f"=CHECKPOINT)")
    kind, net, ckpt, higher = METRICS[name]
    arg = arg.strip()
    if ckpt is None and eq:
        raise ValueError(f"metric {name} takes no argument, got {text!r}")
    if eq and not arg:
        raise ValueError(f"metric {text!r}: '=' without a checkpoint path (write {name}=PATH, or leave '=' out)")
    if ckpt and not arg:
        raise ValueError(f"metric {name} needs a checkpoint: {name}=PATH (an LPIPS state dict, e.g. R-LPIPS' release)")
    if arg and not Path(arg).is_file():
        raise ValueError(f"metric {name}: checkpoint {arg} does not exist")
    key = "lpips-alex" if name == "lpips" else name
    return MetricSpec(key, kind, net, arg or None, higher)


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


