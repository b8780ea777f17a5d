"""Same-machine before/after comparison of pytest-benchmark runs (refactors: "no row slower than 3%").

Usage: python benchmarks/compare_runs.py before1.json after1.json before2.json after2.json ...
(files named *before* / *after*, run alternately in one session). Per benchmark row: the median
of each run, the mean of those medians per side, and after / before; rows over the limit are marked.
"""
import argparse
import json
from collections import defaultdict
from pathlib import Path
from statistics import mean


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("json", nargs="+")
    ap.add_argument("--limit", type=float, default=1.03)
    args = ap.parse_args()
    medians = defaultdict(lambda: defaultdict(list))
    for p in args.json:
        side = "before" if "before" in Path(p).name else "after"
        for b in json.loads(Path(p).read_text())["benchmarks"]:
            medians[b["fullname"]][side].append(b["stats"]["median"])
    print(f"| benchmark | before (ms) | after (ms) | after / before | within {100 * (args.limit - 1):.0f}% |")
    print("|---|---|---|---|---|")
    worst = 0.0
    for name in sorted(medians):
        m = medians[name]
        if not m["before"] or not m["after"]:
            continue
        bef, aft = mean(m["before"]), mean(m["after"])
        worst = max(worst, aft / bef)
        print(f"| {name.split('::', 1)[1]} | {1e3 * bef:.2f} | {1e3 * aft:.2f} | {aft / bef:.3f} | "
              f"{'yes' if aft / bef <= args.limit else '**no**'} |")
    print(f"\nslowest row: after / before = {worst:.3f}")


if __name__ == "__main__":
    main()
