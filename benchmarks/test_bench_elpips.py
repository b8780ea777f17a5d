"""E-LPIPS: time to a 95% interval of +-2.5% with the engine vs a faithful per-sample loop, and its
factors, on real photo pairs (4 at 64x64, 3 at 256x256), same run, CPU:

* samples/s: ``FaithfulLoop`` (benchmarks/elpips_baseline.py: official draws, one transform per
  forward, NCHW fp32, per-element dropout masks, plain head) vs ``ELPIPS.sample_distances``
  (batched draws grouped by scale level, fused transform op, channels_last, fused head, sparse
  dropout) at fp32 and with a bf16 trunk (its bias, measured on the same transforms and dropout,
  is recorded next to the interval it has to stay far below);
* samples needed: from a stratified pilot (the same number of samples on each scale level) the
  per-level means and variances give, for each pair, the i.i.d. variance (law of total variance)
  and the variance of the stratified estimator with proportional allocation (sum_s P(s) var_s);
  samples needed = (z * sd / min(rtol * mean, atol))^2, the maximum over the pairs (the stopping
  rule must hold for every image);
* at 64x64 an actual ``elpips_estimate`` run to the target checks the projection.

benchmarks/report.py combines them: time to target = samples needed x seconds per sample.
"""
import time

import pytest
import torch
from conftest import real_pairs
from elpips_baseline import FaithfulLoop, samples_needed, stratified_pilot

SIZES = {64: dict(pairs=4, samples=32, rounds=3, pilot_per_level=48),
         256: dict(pairs=3, samples=4, rounds=3, pilot_per_level=12)}
RTOL, ATOL, Z = 0.025, 0.01, 1.959964
_CACHE = {}


def _engine(dtype=None):
    from fastlpips.elpips import ELPIPS

    key = ("engine", dtype)
    if key not in _CACHE:
        _CACHE[key] = ELPIPS(dtype=dtype)
    return _CACHE[key]


def _pairs(size):
    x, y = real_pairs(size, SIZES[size]["pairs"])
    return (x + 1) / 2, (y + 1) / 2  # E-LPIPS takes [0, 1] images


@pytest.mark.parametrize("provider", ["faithful-loop", "fastlpips", "fastlpips-bf16"])
@pytest.mark.parametrize("size", list(SIZES))
def test_elpips_samples_per_second(benchmark, provider, size):
    cfg = SIZES[size]
    x, y = _pairs(size)
    k = cfg["samples"]
    seeds = iter(range(1000))
    if provider == "faithful-loop":
        base = FaithfulLoop(_engine())
        run = lambda: base(x, y, k, torch.Generator().manual_seed(next(seeds)))  # noqa: E731
    else:
        m = _engine(torch.bfloat16 if provider == "fastlpips-bf16" else None)

        def run():
            with torch.no_grad():
                return m.sample_distances((x,), y, k, generator=torch.Generator().manual_seed(next(seeds)))[0]

    benchmark.group = f"elpips samples {size}x{size} ({cfg['pairs']} pairs)"
    benchmark.extra_info.update(provider=provider, size=size, samples_per_run=k, pairs=cfg["pairs"])
    benchmark.pedantic(run, rounds=cfg["rounds"], iterations=1, warmup_rounds=1)
    if provider == "fastlpips-bf16":  # bias on the same transforms and dropout, 4k samples
        with torch.no_grad():
            g32, g16 = torch.Generator().manual_seed(99), torch.Generator().manual_seed(99)
            d32 = _engine().sample_distances((x,), y, 4 * k, generator=g32)[0].double()
            d16 = m.sample_distances((x,), y, 4 * k, generator=g16)[0].double()
        bias = ((d16 - d32).mean(0) / d32.mean(0)).abs().max().item()
        benchmark.extra_info.update(bf16_rel_bias=bias, bf16_bias_samples=4 * k)


@pytest.mark.parametrize("size", list(SIZES))
def test_elpips_samples_needed(benchmark, size):
    """Stratified pilot -> samples needed for i.i.d. and for stratified sampling (see module doc)."""
    cfg = SIZES[size]
    x, y = _pairs(size)
    m = _engine()
    benchmark.group = f"elpips samples needed {size}x{size} ({cfg['pairs']} pairs)"
    d = benchmark.pedantic(lambda: stratified_pilot(m, x, y, cfg["pilot_per_level"]), rounds=1, iterations=1)
    need = samples_needed(d, RTOL, ATOL, Z)
    benchmark.extra_info.update(provider="pilot", size=size, pilot_samples=int(d.shape[0] * d.shape[1]),
                                samples_needed_iid=need["iid"], samples_needed_stratified=need["stratified"],
                                variance_ratio_per_pair=need["variance_ratio"], mean_per_pair=need["mean"])


def test_elpips_estimate_reaches_target_64(benchmark):
    """The real thing at 64x64: elpips_estimate (stratified, rounds of 64) to +-2.5% on every pair."""
    from fastlpips import elpips_estimate

    x, y = _pairs(64)
    holder = {}

    def run():
        t = time.perf_counter()
        holder["est"] = elpips_estimate(x, y, rtol=RTOL, atol=ATOL, max_samples=4000, batch_size=64, seed=5,
                                        metric=_engine(), method="stratified")
        holder["s"] = time.perf_counter() - t

    benchmark.group = "elpips estimate to +-2.5% 64x64 (4 pairs)"
    benchmark.pedantic(run, rounds=1, iterations=1)
    est = holder["est"]
    benchmark.extra_info.update(provider="fastlpips-estimate", samples_used=est.samples,
                                converged=bool(est.converged.all()),
                                rel_half_width=(est.half_width / est.mean).max().item())
