"""Barycenter and geodesic steps under E-LPIPS: k draws per image in one batched pass
vs a per-draw loop, same run, same machine. Goal >= 2x.

* ``per-draw-loop``: the step as one writes it with the metric alone (the release's way): for
  each of the k draws, ``ELPIPS(x_pairs, y_pairs, n_samples=1)`` on all the step's pairs, the
  mean of the k values as the distance (the callable-distance path of ``fastlpips.geometry``);
* ``fastlpips``: ``fastlpips.geometry`` with ``ELPIPSDistance(samples=k, shared=True)``: every
  image's features once per step under k draws shared by all images (all k in one pass per
  scale level), the fixed images (barycenter inputs, geodesic ends) without a graph.

One step = the objective, its backward and the Adam step (a run is ``barycenter``/``geodesic``
with ``steps`` steps: divide the median by ``steps_per_run`` for s/step). Barycenter: K inputs
(10 at 64x64, the release's count; 4 at 256x256); geodesic: 8 free frames at 64x64, 4 at 256x256;
k = 4 draws. A step's cost depends on the scale levels drawn (level 1 costs ~4x level 2), so
every round draws new ones (the loop from the global RNG, fastlpips from a new seed) and a run
has several steps.

The geodesic's ceiling: every frame is in two pairs, so computing each image's trunk once per
step at best halves the convolutions (F + 2 images forward and F backward instead of 2(F + 1)
each); on a CPU where the convolutions run at full rate at these batch sizes, batching the k
draws into one pass adds little, so the geodesic is bounded near 2x (the barycenter's inputs are
fixed: K + 1 trunks, one with a graph, instead of 2K with graphs).
"""
import pytest
import torch

from fastlpips import ELPIPS
from fastlpips.attacks import ELPIPSDistance
from fastlpips.geometry import barycenter, geodesic

DRAWS = 4
CASES = {64: dict(inputs=10, frames=8, steps=6), 256: dict(inputs=4, frames=4, steps=3)}
_METRIC = {}
_SEED = [0]


def next_seed():
    _SEED[0] += 1
    return _SEED[0]


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
    steps = CASES[size]["steps"]
    benchmark.extra_info.update(provider=provider, size=size, steps_per_run=steps)
    res = benchmark.pedantic(lambda: barycenter(imgs, d, steps=steps, seed=next_seed()), rounds=3, iterations=1,
                             warmup_rounds=1)
    assert all(torch.isfinite(torch.tensor(res.losses)))


@pytest.mark.parametrize("size", sorted(CASES))
@pytest.mark.parametrize("provider", ["per-draw-loop", "fastlpips"])
def test_geodesic_step(benchmark, provider, size):
    frames = CASES[size]["frames"]
    a, b = images(2, size, seed=1).split(1)
    d = distance_for(provider)
    benchmark.group = f"geodesic step elpips {size}x{size} {frames} frames, {DRAWS} draws"
    steps = CASES[size]["steps"]
    benchmark.extra_info.update(provider=provider, size=size, steps_per_run=steps)
    res = benchmark.pedantic(lambda: geodesic(a, b, d, frames=frames, steps=steps, seed=next_seed()), rounds=3,
                             iterations=1, warmup_rounds=1)
    assert all(torch.isfinite(torch.tensor(res.losses)))
