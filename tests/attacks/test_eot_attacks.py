"""E-LPIPS attacks A1/A2 as the paper runs them (issue 12): fresh draws every step (expectation
over transformation), A2's squared L2 bound exact, A1's metric bound certified with many draws."""
import math

import pytest
import torch

from fastlpips import ELPIPS, elpips_estimate
from fastlpips.attacks import ELPIPSDistance, certify_ball, estimate_distance, pull_to_target, push_within_l2
from helpers import real_images


@pytest.fixture(scope="module")
def metric():
    return ELPIPS(max_scale=2)  # 32x32 images: levels 1..2


@pytest.fixture(scope="module")
def images():
    x = (real_images(32, 2) + 1) / 2  # [0, 1]
    return x, x.flip(0)  # targets: the other photo


@pytest.mark.slow
def test_a2_keeps_the_squared_l2_bound_exactly_and_resamples_every_step(metric, images):
    x, _ = images
    eps = 0.25  # ||a - x||_2^2 <= 0.25, i.e. radius 0.5
    d = ELPIPSDistance(metric, samples=2, seed=0)
    res = push_within_l2(d, x, eps, steps=8, check_samples=32, seed=1)
    assert d.seed == 7  # 7 fresh draws after the first: one per step
    sq = (res.images - x).flatten(1).norm(dim=1).square()
    assert res.ok.all() and (sq <= eps * (1 + 1e-6)).all() and (sq > 0.5 * eps).all()
    assert res.images.min() >= 0 and res.images.max() <= 1
    assert res.upper is not None and (res.upper >= res.distance).all() and res.confidence == 0.95
    # beats a random direction of the same squared norm, both measured with many fresh draws
    g = torch.Generator().manual_seed(5)
    r = torch.randn(x.shape, generator=g)
    rand = (x + math.sqrt(eps) * r / r.flatten(1).norm(dim=1).view(-1, 1, 1, 1)).clamp(0, 1)
    d_rand = elpips_estimate(rand, x, metric=metric, min_samples=32, max_samples=32, atol=math.inf, rtol=math.inf,
                             seed=2).mean
    assert (res.distance > d_rand).all()
    fixed = ELPIPSDistance(metric, samples=2, seed=0)
    res_fixed = push_within_l2(fixed, x, eps, steps=3, fixed_draw=True, check_samples=32)
    assert fixed.seed == 0 and res_fixed.ok.all()  # one draw kept for the whole attack


@pytest.mark.slow
def test_a1_certifies_the_metric_bound_with_fresh_draws(metric, images):
    x, target = images
    eps = 0.05
    # one fixed draw of one sample: the attack only sees one transformed network
    d = ELPIPSDistance(metric, samples=1, seed=3)
    res = pull_to_target(d, x, target, eps, steps=6, step_size=0.2, fixed_draw=True, check_samples=64,
                         bisection_steps=4, seed=4)
    assert res.ok.all() and (res.upper <= eps).all() and res.confidence == 0.95
    assert ((res.images - target).flatten(1).norm(dim=1) < (x - target).flatten(1).norm(dim=1)).all()
    fresh = elpips_estimate(res.images, x, metric=metric, min_samples=128, max_samples=128, atol=math.inf,
                            rtol=math.inf, seed=99)
    assert (fresh.mean <= eps + 3 * fresh.stderr).all(), (fresh.mean, fresh.stderr)
    # the certification: an image far outside the ball (the target itself) is pulled back inside
    a, upper, moved = certify_ball(d, x, target, eps, samples=64, bisection_steps=5, seed=7)
    assert moved.all() and (upper <= eps).all() and (upper > 0).all()  # found a t > 0 on the segment
    fresh = elpips_estimate(a, x, metric=metric, min_samples=128, max_samples=128, atol=math.inf, rtol=math.inf,
                            seed=98)
    assert (fresh.mean <= eps + 3 * fresh.stderr).all(), (fresh.mean, fresh.stderr)
    assert (fresh.mean > 0.5 * eps).all()  # and not needlessly far inside (5 halvings)
    # EoT: k fresh draws per step
    eot = ELPIPSDistance(metric, samples=2, seed=3)
    res2 = pull_to_target(eot, x, target, eps, steps=4, step_size=0.2, check_samples=32, bisection_steps=2, seed=4)
    assert eot.seed == 6 and res2.ok.all()


def test_estimate_distance_exact_for_deterministic_and_refuses_bad_options(metric, images):
    import fastlpips
    from fastlpips.attacks import LPIPSDistance

    x, y = images
    lp = LPIPSDistance(fastlpips.LPIPS(net="alex", verbose=False))
    v, ub = estimate_distance(lp, x, y)
    assert torch.equal(v, ub)
    with pytest.raises(ValueError, match="confidence"):
        estimate_distance(ELPIPSDistance(metric), x, y, confidence=1.5)  # refused before any sample
    with pytest.raises(ValueError, match=r"eps must be (a finite number|> 0)"):
        push_within_l2(lp, x, -1.0)


def test_shared_draw_features_compare_every_image_with_every_other(metric):
    """ELPIPSDistance(shared=True): one draw for a single image applied to every image; d between
    rows equals ELPIPS' own sample distances under that draw (transforms and dropout masks shared
    by the pair), whatever the batch the rows were computed in."""
    import copy

    metric = copy.deepcopy(metric).double()  # float64: the two summation orders agree to rounding
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    d = ELPIPSDistance(metric, samples=6, seed=5, shared=True)
    assert d.batch_independent and not d.has_linearization
    f = d.features(x)
    draw = metric.new_draw(6, 1, seed=5)
    for i, j in ((0, 1), (2, 0)):
        want = metric.sample_distances((x[i:i + 1],), x[j:j + 1], 6, draw=draw)[0].mean(0)
        got = d.from_features(f[i:i + 1], f[j:j + 1])
        assert torch.allclose(got, want, rtol=1e-9, atol=1e-12), (got, want)
    assert torch.allclose(d.features(x[1:2]), f[1:2], rtol=1e-9, atol=1e-12)  # same masks in a batch of 1
    before = d.from_features(f[0:1], f[1:2])
    d.resample()
    f2 = d.features(x)
    assert not torch.allclose(d.from_features(f2[0:1], f2[1:2]), before)  # a new draw
    with pytest.raises(NotImplementedError, match="shared=True"):
        d.linearize(x)
