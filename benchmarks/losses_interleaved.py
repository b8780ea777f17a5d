"""Interleaved A/B timing of the perceptual + texture loss step (test_bench_losses.py's setup): the
rounds alternate the plain torchvision-style implementation and fastlpips' losses so drifts of this
shared machine hit both alike. Reports s/step (median over rounds) and the per-round ratios.

    .venv/bin/python benchmarks/losses_interleaved.py --rounds 4 --json benchmarks/results/losses-interleaved.json
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_bench_losses as B  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--json")
    args = ap.parse_args()
    report = []
    for n, size, patch in B.CASES:
        x0, y = B.images(n, size, 1), B.images(n, size, 2)
        losses = {p: B.make(p, patch) for p in ("reference", "fastlpips")}

        def step(loss):
            x = x0.clone().requires_grad_(True)
            loss(x, y).backward()

        for loss in losses.values():
            step(loss)  # warm-up
        times = {p: [] for p in losses}
        for r in range(args.rounds):
            for p in (list(losses) if r % 2 == 0 else list(losses)[::-1]):
                t = time.perf_counter()
                step(losses[p])
                times[p].append(time.perf_counter() - t)
        ratios = [a / b for a, b in zip(times["reference"], times["fastlpips"])]
        out = {"case": f"perceptual+texture fwd+bwd vgg19 {size}x{size} B={n} patch {patch}", "rounds": args.rounds,
               "seconds": times, "median_seconds": {p: statistics.median(v) for p, v in times.items()},
               "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}
        print(json.dumps({k: v for k, v in out.items() if k != "seconds"}, indent=1), flush=True)
        report.append(out)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
