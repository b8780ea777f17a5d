"""Interleaved A/B timing of dataset evaluation (test_bench_evaluate.py's data and runs): every
round runs the per-image ``lpips`` + scikit-image loop and ``fastlpips.evaluate`` back to back,
alternating which goes first, so drifts of this shared machine hit both alike. Reports seconds per
run (median), pairs/s and the median of the per-round ratios with its range.

    .venv/bin/python benchmarks/evaluate_interleaved.py --rounds 10 --json benchmarks/results/evaluate-interleaved.json
"""
import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_bench_evaluate as B  # noqa: E402
from interleave import alternate, summary  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--methods", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--json")
    args = ap.parse_args()
    import torch

    root = B.data()
    report = []
    for m in args.methods:
        runs = {"reference": B.reference_run, "fastlpips": B.fastlpips_run}
        for f in runs.values():  # warm-up (model construction of the baseline, caches)
            f(root, m)
        times = alternate({p: (lambda f=f: f(root, m)) for p, f in runs.items()}, args.rounds)
        pairs = m * B.N
        out = summary(f"psnr+ssim+lpips-alex {B.SIZE}x{B.SIZE}, {m} methods x {B.N} images", times,
                      cpu=platform.processor() or platform.machine(), torch_threads=torch.get_num_threads(),
                      pairs_per_second={p: pairs / statistics.median(v) for p, v in times.items()})
        report.append(out)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
