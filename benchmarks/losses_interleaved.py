"""Interleaved A/B timing of the perceptual + texture loss step (test_bench_losses.py's setup): the
rounds alternate the plain torchvision-style implementation and fastlpips' losses so drifts of this
shared machine hit both alike. Reports s/step (median over rounds) and the per-round ratios.

    .venv/bin/python benchmarks/losses_interleaved.py --rounds 4 --json benchmarks/results/losses-interleaved.json
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_bench_losses as B  # noqa: E402
from interleave import alternate, summary  # noqa: E402


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
        times = alternate({p: (lambda loss=loss: step(loss)) for p, loss in losses.items()}, args.rounds)
        out = summary(f"perceptual+texture fwd+bwd vgg19 {size}x{size} B={n} patch {patch}", times)
        report.append(out)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
