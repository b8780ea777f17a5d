"""``evaluate``: full-reference metrics of output folders against a reference folder (resumable,
torchrun-sharded), CSV/JSON and a self-contained HTML report."""
from __future__ import annotations

from pathlib import Path
from typing import List

import torch

from . import common as C


def register(sub, parents: C.Parents) -> None:
    s = sub.add_parser("evaluate", parents=[parents.common, parents.progress],
                       help="full-reference metrics of output folders "
                       "against a reference folder, resumable, torchrun-sharded; CSV/JSON and an HTML report")
    s.add_argument("ref_dir", help="folder of reference images (searched recursively)")
    s.add_argument("out_dirs", nargs="+", help="folders of outputs, one per method; files matched by relative path")
    s.add_argument("--metrics", nargs="+", default=["psnr,ssim,lpips"],
                   help="comma-separated names of `fastlpips metrics` (psnr, ssim, ms-ssim, gmsd, uqi, ifc, lpips, "
                        "lpips-vgg, "
                        "elpips, ...); rlpips=CKPT and lpips-NET=CKPT read a checkpoint (default psnr,ssim,lpips)")
    s.add_argument("--results", default="evaluation", help="folder for records, results.csv/json, report.html "
                   "(default ./evaluation; a rerun resumes there)")
    s.add_argument("--restart", action="store_true", help="discard the records in --results and start over")
    s.add_argument("--batch-size", type=int, default=16, help="output images per batch (default 16)")
    s.add_argument("--workers", type=int, default=0, help="image-reading worker processes (default 0)")
    s.add_argument("--elpips-samples", type=int, default=200, help="E-LPIPS sample budget per batch (default 200)")
    s.add_argument("--seed", type=int, default=0, help="seed of E-LPIPS' draws (default 0)")
    s.add_argument("--worst", type=int, default=6, help="worst images shown per method in the report (default 6)")
    s.add_argument("--no-report", action="store_true", help="write no report.html")
    s.add_argument("--labels", help="CSV with columns file,label (a class name or index) for top1=MODEL_DIR "
                   "metrics; default: each reference's class subfolder")
    s.set_defaults(func=run, validate=validate)


def validate(args) -> List[Path]:
    for opt, low in (("workers", 0), ("worst", 0), ("elpips_samples", 16)):
        if getattr(args, opt) < low:
            raise C.CLIError(f"--{opt.replace('_', '-')} must be >= {low}, got {getattr(args, opt)}")
    res_dir = Path(args.results)
    if res_dir.exists() and not res_dir.is_dir():
        raise C.CLIError(f"--results {res_dir} is a file; give a folder")
    for d in [args.ref_dir] + list(args.out_dirs):
        if res_dir.exists() and Path(d).exists() and C.same_file(res_dir, Path(d)):
            raise C.CLIError(f"--results {res_dir} is an input folder; give another folder")
    if args.labels is not None and not Path(args.labels).is_file():
        raise C.CLIError(f"--labels {args.labels} does not exist")
    return [Path(args.labels)] if args.labels is not None else []


# -- running -------------------------------------------------------------------------------------------
def run(args) -> C.Result:
    """Metrics of output folders against a reference folder: results.csv/json and report.html."""
    from .. import distributed as D
    from ..evaluation import evaluate

    D.init_from_env(torch.device(args.device))
    metrics = [m for text in args.metrics for m in text.split(",") if m.strip()]
    with C.progress_bar(0, "evaluate", args.progress if D.is_main() else False) as bar:
        def total(n):
            bar.total = n
            bar.refresh()

        try:
            r = evaluate(args.ref_dir, args.out_dirs, metrics, args.results, batch_size=args.batch_size,
                         device=args.device, workers=args.workers, elpips_samples=args.elpips_samples, seed=args.seed,
                         restart=args.restart, report=not args.no_report, worst=args.worst, progress=bar.update,
                         total=total, labels=args.labels)
        except (ValueError, OSError) as e:  # unusable folders or options: nothing to evaluate
            raise C.CLIError(str(e)) from None
    summary = r.summary()
    cols = [c for spec in r.metrics for c in spec.columns]
    res = C.Result(["method", "images", "errors"] + cols, exit_code=1 if r.errors else 0, quiet=not D.is_main())
    for m in r.methods:
        row = {"method": m, "images": max((summary[m][c]["n"] for c in cols), default=0),
               "errors": sum(1 for x in r.rows if x["method"] == m and x["error"])}
        row.update({c: summary[m][c]["mean"] for c in cols})
        res.rows.append(row)
    res.notes.append(f"{r.computed} batch(es) computed, {r.skipped} already done; "
                     + ", ".join(f"{k} {v}" for k, v in r.files.items()))
    if r.errors:
        res.notes.append(f"fastlpips: error: {len(r.errors)} error(s); the first: "
                         + "; ".join(f"{x['method'] or '-'}/{x['file'] or '-'} {x['metric']}: {x['message']}".strip()
                                     for x in r.errors[:3]) + " (all in results.csv and the report)")
    return res


