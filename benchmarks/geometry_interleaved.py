"""Interleaved A/B timing of barycenter and geodesic steps (test_bench_geometry.py's setup): the
rounds alternate the providers so drifts of this shared machine hit both alike; every run draws
new scale levels. Reports s/step (median over rounds) and the ratio.

    .venv/bin/python benchmarks/geometry_interleaved.py --rounds 4 --json benchmarks/results/geometry-interleaved.json
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_bench_geometry as B  # noqa: E402

from fastlpips.geometry import barycenter, geodesic  # noqa: E402


def runs(kind, size, steps):
    case = B.CASES[size]
    if kind == "barycenter":
        imgs = B.images(case["inputs"], size)
        return {p: (lambda d=B.distance_for(p): barycenter(imgs, d, steps=steps, seed=B.next_seed()))
                for p in ("per-draw-loop", "fastlpips")}
    a, b = B.images(2, size, seed=1).split(1)
    return {p: (lambda d=B.distance_for(p): geodesic(a, b, d, frames=case["frames"], steps=steps, seed=B.next_seed()))
            for p in ("per-draw-loop", "fastlpips")}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--steps", type=int, nargs="+", default=[4, 2], help="steps per run, per size")
    ap.add_argument("--kinds", nargs="+", default=["barycenter", "geodesic"], choices=["barycenter", "geodesic"])
    ap.add_argument("--json")
    args = ap.parse_args()
    out = {}
    for size, steps in zip(args.sizes, args.steps):
        for kind in args.kinds:
            fns = runs(kind, size, steps)
            times = {k: [] for k in fns}
            for r in range(args.rounds):
                for k in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
                    t = time.perf_counter()
                    fns[k]()
                    times[k].append((time.perf_counter() - t) / steps)
            med = {k: statistics.median(v) for k, v in times.items()}
            key = f"{kind} {size}x{size}"
            out[key] = {"s_per_step": times, "median": med, "ratio": med["per-draw-loop"] / med["fastlpips"],
                        "steps_per_run": steps, "case": B.CASES[size], "draws": B.DRAWS}
            print(f"{key}: per-draw loop {med['per-draw-loop']:.2f} s/step, fastlpips {med['fastlpips']:.2f} s/step, "
                  f"ratio {out[key]['ratio']:.2f}x", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
