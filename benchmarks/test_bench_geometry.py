"""Barycenter and geodesic steps under E-LPIPS (issue 12): k draws per image in one batched pass
vs a per-draw loop, same run, same machine. Goal >= 2x.

* ``per-draw-loop``: the step as one writes it with the metric alone (the release's way): for
  each of the k draws, ``ELPIPS(x_pairs, y_pairs, n_samples=1)`` on all the step's pairs, the
  mean of the k values as the distance (the callable-distance path of ``fastlpips.geometry``);
* ``fastlpips``: ``fastlpips.geometry`` with ``ELPIPSDistance(samples=k, shared=True)``: every
  image's features once per step under k draws shared by all images (all k in one pass per
  scale level), the fixed images (barycenter inputs, geodesic ends) without a graph.

One step = the objective, its backward and the Adam step (``barycenter``/``geodesic`` with
``steps`` steps, divided by ``steps``). Barycenter: K inputs (10 at 64x64, the release's count;
4 at 256x256); geodesic: 8 free frames at 64x64, 4 at 256x256; k = 4 draws.
"""
import pytest
import torch

from fastlpips import ELPIPS
from fastlpips.attacks import ELPIPSDistance
from fastlpips.geometry import barycenter, geodesic

DRAWS = 4
STEPS = 2
CASES = {64: dict(inputs=10, frames=8), 256: dict(inputs=4, frames=4)}
_METRIC = {}


def metric():
    if "m" not in _METRIC:
        _METRIC["m"] = ELPIPS().requires_grad_(False)
    return _METRIC["m"]


def per_draw_loop(m, k):
    def d(x, y):
        return sum(m(x, y, n_samples=1) for _ in range(k)) / k
    return d


def images(n, size, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)).clamp(0.02, 0.98)


def distance_for(provider):
    m = metric()
    return per_draw_loop(m, DRAWS) if provider == "per-draw-loop" else ELPIPSDistance(m, samples=DRAWS, shared=True)


@pytest.mark.parametrize("size", sorted(CASES))
@pytest.mark.parametrize("provider", ["per-draw-loop", "fastlpips"])
def test_barycenter_step(benchmark, provider, size):
    k = CASES[size]["inputs"]
    imgs = images(k, size)
    d = distance_for(provider)
    benchmark.group = f"barycenter step elpips {size}x{size} K={k} inputs, {DRAWS} draws"
    benchmark.extra_info.update(provider=provider, size=size, steps_per_run=STEPS)
    res = benchmark.pedantic(lambda: barycenter(imgs, d, steps=STEPS, seed=0), rounds=3, iterations=1,
                             warmup_rounds=1)
    assert all(torch.isfinite(torch.tensor(res.losses)))


@pytest.mark.parametrize("size", sorted(CASES))
@pytest.mark.parametrize("provider", ["per-draw-loop", "fastlpips"])
def test_geodesic_step(benchmark, provider, size):
    frames = CASES[size]["frames"]
    a, b = images(2, size, seed=1).split(1)
    d = distance_for(provider)
    benchmark.group = f"geodesic step elpips {size}x{size} {frames} frames, {DRAWS} draws"
    benchmark.extra_info.update(provider=provider, size=size, steps_per_run=STEPS)
    res = benchmark.pedantic(lambda: geodesic(a, b, d, frames=frames, steps=STEPS, seed=0), rounds=3, iterations=1,
                             warmup_rounds=1)
    assert all(torch.isfinite(torch.tensor(res.losses)))
