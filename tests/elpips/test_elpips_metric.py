"""The stateful E-LPIPS metric with an interval (fastlpips.torchmetrics.ELPIPSMetric): its interval
covers the exact mean at its rate on the estimator's stand-in metric, its state is three sums, and
its arguments are checked."""
import pytest
import torch

from fastlpips import elpips_estimate
from fastlpips.torchmetrics import ELPIPSMetric
from helpers import estimator_stand_in, stand_in_images, stand_in_truth

EXACT = dict(method="stratified", min_samples=16, max_samples=16, batch_size=16, rtol=1e-9, atol=1e-9)


def test_interval_covers_the_exact_mean_at_its_rate():
    """1000 independent metrics (seeds 0..999), each fed the stand-in's 3 pairs in two updates
    (2 + 1): the 95% interval of the mean over the pairs covers the exact mean in [92.5%, 97.5%]
    of the repeats (binomial sd 0.69%: the band is > 3.5 sd wide on each side of 95%), and the
    estimates are unbiased within 3 standard errors. A variance summed wrongly (e.g. the mean's
    variance taken as the pairs' variance / n instead of / n^2) covers ~100%; intervals from one
    pair only cover far less."""
    m = estimator_stand_in(pair_from_image=True)
    x = stand_in_images()
    truth = float(stand_in_truth().mean())
    covered, means, widths = [], [], []
    for r in range(1000):
        metric = ELPIPSMetric(metric=m, seed=r, estimate_kwargs=EXACT)
        metric.update(x[:2], x[:2])
        metric.update(x[2:], x[2:])
        out = metric.compute()
        assert int(out["count"]) == 3
        covered.append(float(out["low"]) <= truth <= float(out["high"]))
        means.append(float(out["mean"]))
        widths.append(float(out["half_width"]))
    rate = sum(covered) / len(covered)
    assert 0.925 <= rate <= 0.975, rate
    mean = torch.tensor(means, dtype=torch.float64)
    assert abs(float(mean.mean()) - truth) <= 3 * float(mean.std()) / len(means) ** 0.5
    # the reported half-width matches the spread of the estimates (1.96 sd)
    assert float(torch.tensor(widths).mean()) == pytest.approx(1.96 * float(mean.std()), rel=0.1)


def test_mean_is_the_mean_of_the_per_pair_estimates():
    m = estimator_stand_in(pair_from_image=True)
    x = stand_in_images()
    metric = ELPIPSMetric(metric=m, seed=7, estimate_kwargs=EXACT)
    seeds = [metric._pair_seed(i) for i in range(3)]  # the first update's: from (seed, rank, 0, pair)
    assert len(set(seeds)) == 3
    metric.update(x, x)
    metric2 = ELPIPSMetric(metric=m, seed=7, estimate_kwargs=EXACT)
    ests = [elpips_estimate(x[i:i + 1], x[i:i + 1], metric=m, seed=s, **EXACT) for i, s in enumerate(seeds)]
    out, again = metric.compute(), (metric2.update(x, x), metric2.compute())[1]
    assert float(out["mean"]) == pytest.approx(sum(float(e.mean) for e in ests) / 3, rel=1e-12)
    assert float(out["half_width"]) == pytest.approx(
        1.959964 * sum(float(e.stderr) ** 2 for e in ests) ** 0.5 / 3, rel=1e-5)
    assert float(again["mean"]) == float(out["mean"])  # reproducible from the seed
    metric.update(x, x)  # the next update draws afresh
    assert int(metric.compute()["count"]) == 6
    metric.reset()
    assert int(metric.compute()["count"]) == 0


def test_arguments_are_checked():
    m = estimator_stand_in()
    with pytest.raises(ValueError, match=r"confidence must be in \(0, 1\)"):
        ELPIPSMetric(metric=m, confidence=95)
    with pytest.raises(TypeError, match="metric must be an ELPIPS module"):
        ELPIPSMetric(metric=torch.nn.Identity())
    with pytest.raises(TypeError, match="estimate_kwargs must not hold seed"):
        ELPIPSMetric(metric=m, estimate_kwargs={"seed": 1})
    with pytest.raises(TypeError, match="seed"):
        ELPIPSMetric(metric=m, seed="one")
    with pytest.raises(ValueError, match="x and y must have the same shape"):
        ELPIPSMetric(metric=m).update(torch.zeros(2, 3, 64, 64), torch.zeros(1, 3, 64, 64))
