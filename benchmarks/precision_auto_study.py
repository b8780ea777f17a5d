"""dtype='auto' on this CPU: what it chooses and what it costs, and E-LPIPS' bf16 bias.

1. The choice: ``precision.resolve_dtype('auto')`` per trunk, forward and forward+backward, with the
   probe's times (``precision.auto_choices()``).
2. The cost of 'auto' over fp32, probe included, amortized over 20 calls: LPIPS-VGG and -Alex
   forward at 64x64 B=8 (model built + 20 calls), interleaved rounds, fresh process state each
   round (the probe cache cleared). On a CPU without native bf16 no probe runs; ``--force-probe``
   runs it anyway (the cost where it runs and says "slower").
3. E-LPIPS' bias in bf16: the mean over ``--samples`` draws per pair of 4 real photo pairs, fp32 and
   bf16 under the SAME draws (paired: the difference of means is the bias, with a small standard
   error), relative and absolute, against a quarter of the estimator's default interval half-width
   (``rtol`` 2.5%, ``atol`` 0.01). Where bf16 is emulated it is slow but exact to the same rounding.

    .venv/bin/python benchmarks/precision_auto_study.py --out benchmarks/results/precision-auto-YYYYMMDD.json
"""
import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fastlpips  # noqa: E402
from fastlpips import precision as P  # noqa: E402


def real_pairs(size, n=4):
    from conftest import real_pairs as pairs

    x, y = pairs(size, n)
    return (x + 1) / 2, (y + 1) / 2


def choices():
    out = {}
    for net in ("alex", "vgg", "squeeze"):
        for grad in (False, True):
            out[f"{net} {'fwd+bwd' if grad else 'fwd'}"] = str(P.resolve_dtype("auto", "cpu", net=net, grad=grad))
    return out, P.auto_choices()


def overhead(rounds, calls, force_probe):
    """Seconds for 'build + `calls` forward calls' with dtype='auto' vs fp32, interleaved."""
    x, y = real_pairs(64, 8)
    x, y = x * 2 - 1, y * 2 - 1
    native = P._native
    if force_probe:
        P._native = lambda dtype, device: True  # pretend bf16 is native: the probe runs (and decides)
    res = {}
    try:
        for net in ("vgg", "alex"):
            times = {"fp32": [], "auto": []}
            for r in range(rounds):
                for kind in (("fp32", "auto") if r % 2 == 0 else ("auto", "fp32")):
                    P._CHOICES.clear()
                    t = time.perf_counter()
                    m = fastlpips.LPIPS(net=net, verbose=False, dtype=None if kind == "fp32" else "auto")
                    with torch.no_grad():
                        for _ in range(calls):
                            m(x, y)
                    times[kind].append(time.perf_counter() - t)
            med = {k: statistics.median(v) for k, v in times.items()}
            res[net] = {"seconds": times, "median": med, "auto_over_fp32": med["auto"] / med["fp32"],
                        "probe": P.auto_choices()}
            print(net, json.dumps({k: v for k, v in res[net].items() if k != "seconds"}, default=str), flush=True)
    finally:
        P._native = native
    return res


def bias(size, samples, chunk=16):
    x, y = real_pairs(size, 4)
    from fastlpips.elpips import scale_levels_for_size

    levels = scale_levels_for_size(size, size)
    f32 = fastlpips.ELPIPS(max_scale=levels)
    bf = fastlpips.ELPIPS(max_scale=levels, dtype=torch.bfloat16)
    a, b = [], []
    t0 = time.perf_counter()
    with torch.no_grad():
        for k in range(0, samples, chunk):
            draw_a = f32.sample_distances((x,), y, chunk, generator=torch.Generator().manual_seed(1000 + k))[0]
            draw_b = bf.sample_distances((x,), y, chunk, generator=torch.Generator().manual_seed(1000 + k))[0]
            a.append(draw_a.double())
            b.append(draw_b.double())
    a, b = torch.cat(a), torch.cat(b)  # (samples, 4)
    diff = b - a
    mean = a.mean(0)
    out = {"size": size, "scale_levels": levels, "samples": samples, "seconds": time.perf_counter() - t0,
           "mean_fp32": mean.tolist(), "mean_bf16": b.mean(0).tolist(),
           "bias": diff.mean(0).tolist(), "bias_stderr": (diff.std(0) / samples ** 0.5).tolist(),
           "relative_bias": (diff.mean(0) / mean).tolist(),
           "max_abs_relative_bias": float((diff.mean(0) / mean).abs().max()),
           "max_abs_bias": float(diff.mean(0).abs().max())}
    print(json.dumps({k: v for k, v in out.items()}, indent=1), flush=True)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--samples", type=int, default=128, help="E-LPIPS draws per pair for the bias (64x64)")
    ap.add_argument("--samples-256", type=int, default=32, help="E-LPIPS draws per pair at 256x256 (0: skip)")
    ap.add_argument("--force-probe", action="store_true", help="run the probe even without native bf16")
    ap.add_argument("--parts", default="overhead,bias", help="comma-separated: overhead, bias")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    doc = {"date": time.strftime("%Y-%m-%d"), "cpu": P.cpu_info(), "torch": torch.__version__,
           "threads": torch.get_num_threads(), "python": platform.python_version()}
    doc["choices"], doc["probes"] = choices()
    print(json.dumps(doc["choices"], indent=1), flush=True)
    if "overhead" in parts:
        doc["overhead"] = overhead(args.rounds, args.calls, False)
        if args.force_probe:
            doc["overhead_forced_probe"] = overhead(args.rounds, args.calls, True)
    if "bias" in parts:
        quarter = {"relative": 0.25 * 0.025, "absolute": 0.25 * 0.01}
        doc["bias"] = [bias(64, args.samples)] + ([bias(256, args.samples_256)] if args.samples_256 else [])
        doc["rule"] = {"quarter_of_default_half_width": quarter,
                       "allowed": all(b["max_abs_relative_bias"] < quarter["relative"] and
                                      b["max_abs_bias"] < quarter["absolute"] for b in doc["bias"])}
        print(json.dumps(doc["rule"]), flush=True)
    Path(args.out).write_text(json.dumps(doc, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
