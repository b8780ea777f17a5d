"""``check``: every available backend against the reference, and what ``dtype='auto'`` chose."""
from __future__ import annotations

from pathlib import Path
from typing import List

import torch

from . import common as C


def register(sub, parents: C.Parents) -> None:
    s = sub.add_parser("check", parents=[parents.common],
                       help="self-check: every available backend against the reference (run this first on a GPU)")
    s.add_argument("--quick", action="store_true", help="small shapes only")
    s.set_defaults(func=run, validate=validate)


def validate(args) -> List[Path]:
    return []


# -- running -------------------------------------------------------------------------------------------
def run(args) -> C.Result:
    """Every available backend of the head and transform ops against the reference, and LPIPS /
    E-LPIPS parity across backends (fastlpips.selfcheck)."""
    from ..selfcheck import run_checks

    rows = run_checks(torch.device(args.device), quick=args.quick)
    res = C.Result(["check", "backend", "available", "max_error", "tolerance", "status", "seconds"])
    res.rows = [r.as_row() for r in rows]
    failed = sum(r.status == "FAIL" for r in rows)
    res.summary = {"checks": len(rows), "passed": sum(r.status == "pass" for r in rows), "failed": failed,
                   "skipped": sum(r.status == "skip" for r in rows)}
    res.exit_code = 1 if failed else 0
    from ..precision import describe_auto

    res.notes += describe_auto(args.device)
    if failed:
        res.notes.append(f"fastlpips check: {failed} check(s) FAILED on {args.device}")
    return res


