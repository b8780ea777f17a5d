"""E-LPIPS estimators: samples and seconds to a 95% interval of +-2.5% relative and
+-0.01 absolute, on the same real photo pairs as test_bench_elpips.py (4 at 64x64, 3 at 256x256),
same run, CPU:

* every method of ``elpips_estimate`` run to the target: 'stratified' (today's estimator before
  the variance-reduction work), 'qmc' (8 scrambled Sobol streams per level), 'auto' (= 'cv': control variates with
  cost-aware allocation from measured costs, the default without a seed), several seeds each;
* the faithful per-sample loop (benchmarks/elpips_baseline.py): its seconds per sample, and the
  samples the release's i.i.d. sampling needs (projected from a stratified pilot by the law of
  total variance, as in test_bench_elpips.py: running it would take ~11 min at 64x64 and ~1.7 h
  at 256x256). Its time to the interval = those samples x its seconds per sample.

benchmarks/report.py writes the table (samples and seconds per method, ratios to 'stratified' and
to the faithful loop, the issue's goals) to README.md between the estimator markers. Run:
``FASTLPIPS_OFFLINE=1 .venv/bin/python -m pytest benchmarks/test_bench_estimator.py
--benchmark-json=benchmarks/results/estimator.json`` then ``python benchmarks/report.py
benchmarks/results/estimator.json``.
"""
import time

import pytest
import torch
from conftest import real_pairs
from elpips_baseline import FaithfulLoop, samples_needed, stratified_pilot

RTOL, ATOL, Z = 0.025, 0.01, 1.959964
SIZES = {64: dict(pairs=4, batch=64, faithful_samples=16, pilot_per_level=48, max_samples=6000),
         256: dict(pairs=3, batch=32, faithful_samples=3, pilot_per_level=12, max_samples=3000)}
RUNS = {("auto", 64): 3, ("stratified", 64): 2, ("qmc", 64): 2,
        ("auto", 256): 2, ("stratified", 256): 1, ("qmc", 256): 1}
_CACHE = {}


def _engine():
    from fastlpips.elpips import ELPIPS

    if "m" not in _CACHE:
        _CACHE["m"] = ELPIPS()
    return _CACHE["m"]


def _pairs(size):
    x, y = real_pairs(size, SIZES[size]["pairs"])
    return (x + 1) / 2, (y + 1) / 2  # E-LPIPS takes [0, 1] images


@pytest.mark.parametrize("size", list(SIZES))
def test_faithful_loop_seconds_per_sample(benchmark, size):
    cfg = SIZES[size]
    x, y = _pairs(size)
    base = FaithfulLoop(_engine())
    seeds = iter(range(1000))
    k = cfg["faithful_samples"]
    benchmark.group = f"estimator faithful loop {size}x{size}"
    benchmark.extra_info.update(provider="faithful-loop", size=size, samples_per_run=k, pairs=cfg["pairs"])
    benchmark.pedantic(lambda: base(x, y, k, torch.Generator().manual_seed(next(seeds))), rounds=3, iterations=1,
                       warmup_rounds=1)


@pytest.mark.parametrize("size", list(SIZES))
def test_iid_samples_needed(benchmark, size):
    """Stratified pilot (the same samples on every level) -> the i.i.d. variance per pair (law of
    total variance) -> samples the release's sampling needs (elpips_baseline.samples_needed)."""
    cfg = SIZES[size]
    x, y = _pairs(size)
    m = _engine()
    benchmark.group = f"estimator i.i.d. pilot {size}x{size}"
    d = benchmark.pedantic(lambda: stratified_pilot(m, x, y, cfg["pilot_per_level"]), rounds=1, iterations=1)
    need = samples_needed(d, RTOL, ATOL, Z)
    benchmark.extra_info.update(provider="iid-projection", size=size, pilot_samples=int(d.shape[0] * d.shape[1]),
                                samples_needed_iid=need["iid"], mean_per_pair=need["mean"])


@pytest.mark.parametrize("size,method,run", [(s, m, r) for (m, s), n in RUNS.items() for r in range(n)])
def test_time_to_interval(benchmark, size, method, run):
    from fastlpips import elpips_estimate

    cfg = SIZES[size]
    x, y = _pairs(size)
    holder = {}
    kw = dict(costs="measured") if method == "auto" else {}

    def go():
        t = time.perf_counter()
        holder["est"] = elpips_estimate(x, y, rtol=RTOL, atol=ATOL, max_samples=cfg["max_samples"],
                                        batch_size=cfg["batch"], seed=100 + run, metric=_engine(), method=method,
                                        **kw)
        holder["s"] = time.perf_counter() - t

    benchmark.group = f"estimator to +-2.5% {size}x{size} ({cfg['pairs']} pairs)"
    benchmark.pedantic(go, rounds=1, iterations=1)
    est = holder["est"]
    benchmark.extra_info.update(provider="estimator", size=size, method=method, resolved=est.method, run=run,
                                samples=est.samples, seconds=holder["s"], converged=bool(est.converged.all()),
                                rel_half_width=(est.half_width / est.mean).max().item(),
                                samples_per_level=est.samples_per_level, cv_levels=est.cv_levels,
                                mean=est.mean.tolist(), batch=cfg["batch"])
