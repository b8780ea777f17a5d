"""Interleaved A/B timing shared by the *_interleaved.py scripts: rounds alternate the order of
the providers so drifts of this shared machine hit both alike."""
import json
import statistics
import time


def alternate(runs, rounds):
    """{provider: [seconds per round]} running every ``runs[p]()`` once per round, order flipped each round."""
    times = {p: [] for p in runs}
    for r in range(rounds):
        for p in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            t = time.perf_counter()
            runs[p]()
            times[p].append(time.perf_counter() - t)
    return times


def summary(case, times, baseline="reference", provider="fastlpips", **extra):
    """The case's record: seconds, medians and the per-round ratios baseline / provider (printed too)."""
    ratios = [a / b for a, b in zip(times[baseline], times[provider])]
    out = {"case": case, "rounds": len(ratios), **extra, "seconds": times,
           "median_seconds": {p: statistics.median(v) for p, v in times.items()},
           "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}
    print(json.dumps({k: v for k, v in out.items() if k != "seconds"}, indent=1), flush=True)
    return out
