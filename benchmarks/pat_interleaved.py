"""Interleaved A/B timing of one PAT epoch (perceptual-advex vs fastlpips; test_bench_pat.py's
setup): rounds alternate the providers so slow drifts of this shared machine hit both alike.

    .venv/bin/python benchmarks/pat_interleaved.py --rounds 4
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_bench_pat as B  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--json", help="write the times here")
    ap.add_argument("--distance", nargs="+", default=["self", "alexnet"], choices=["self", "alexnet"])
    args = ap.parse_args()
    out = {}
    for distance in args.distance:
        runs = {"perceptual-advex": B.their_epoch(distance), "fastlpips": B.our_epoch(distance)}
        times = {k: [] for k in runs}
        for r in range(args.rounds):
            order = list(runs) if r % 2 == 0 else list(runs)[::-1]
            for k in order:
                t = time.perf_counter()
                runs[k]()
                times[k].append(time.perf_counter() - t)
        med = {k: statistics.median(v) for k, v in times.items()}
        out[distance] = {"times": times, "median": med, "ratio": med["perceptual-advex"] / med["fastlpips"]}
        rounded = {k: [round(x, 2) for x in v] for k, v in times.items()}
        print(f"{distance}: perceptual-advex {med['perceptual-advex']:.2f} s, fastlpips {med['fastlpips']:.2f} s, "
              f"ratio {out[distance]['ratio']:.2f}x  (rounds: {json.dumps(rounded)})")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
