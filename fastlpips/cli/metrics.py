"""``metrics``: the registry's metric names, what each is and its options (table, CSV or JSON)."""
from __future__ import annotations

from pathlib import Path
from typing import List

from . import common as C


def register(sub, parents: C.Parents) -> None:
    s = sub.add_parser("metrics", parents=[parents.common],
                       help="list the metric names every command and fastlpips.create_metric accept")
    s.add_argument("--filter", default=None, metavar="PATTERN",
                   help="a shell pattern ('lpips*') or a substring ('ssim') of the names")
    s.set_defaults(func=run, validate=validate)


def validate(args) -> List[Path]:
    return []


def run(args) -> C.Result:
    from ..metrics import list_metrics, metric_info

    res = C.Result(["name", "family", "better", "score_range", "differentiable", "checkpoint", "options",
                    "description"])
    for name in list_metrics(args.filter):
        info = metric_info(name)
        lo, hi = info.score_range
        res.rows.append({"name": name, "family": info.family, "better": "lower" if info.lower_better else "higher",
                         "score_range": f"[{lo:g}, {hi:g}]", "differentiable": info.differentiable,
                         "checkpoint": info.checkpoint, "options": " ".join(info.options),
                         "description": info.description})
    res.summary = {"metrics": len(res.rows)}
    res.notes.append("aliases: lpips = lpips-alex; every metric takes images in [0, 1]")
    return res
