"""``elpips_estimate(method=...)`` (issue 16): unbiasedness and the coverage of the 95% interval of
every method over thousands of independent repeats, on a stand-in metric whose expectation is known
exactly, the control variates' exact means, the cost-aware allocation, and 'qmc' / 'cv' on the
real metric.

The stand-in: an ELPIPS module (random SqueezeNet, only for its configuration) whose
``sample_distances`` returns, per pair, a product of factors of the sampled transformation (colour
scales, offset, flip, permutation, swap, scale level) times (1 + 0.2 noise) from the dropout
generator. Each factor depends on one independent random choice, so the expectation is the product
of the factors' means: exact, whatever the sampling design, as long as every draw has the
metric's distribution. The estimator only sees ``sample_distances``, so its arithmetic (strata,
streams, t quantile) is tested at the cost of a few multiplications per sample."""
import pytest
import torch

from fastlpips import ELPIPS, elpips_estimate
from fastlpips.estimator import _cost_aware, _cv_level, _t_quantile, stratified_mean
from fastlpips.transforms import (
    SobolTransformSampler,
    control_features,
    sample_batched,
)
from helpers import STAND_IN_PAIRS as PAIRS
from helpers import estimator_stand_in as _stand_in
from helpers import stand_in_truth as _truth


def test_t_quantile_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for dof in (5, 7, 10, 30, 200):
        for q in (0.95, 0.975, 0.995):
            assert _t_quantile(q, dof) == pytest.approx(stats.t.ppf(q, dof), rel=1e-3), (q, dof)  # as documented
    assert _t_quantile(0.975, float("inf")) == pytest.approx(1.959964, rel=1e-6)


@pytest.mark.parametrize("method", ["stratified", "iid", "qmc", "auto"])
@pytest.mark.slow
def test_unbiased_and_the_95_percent_interval_covers_at_its_rate(method):
    """2000 independent estimates of 32 samples for 3 pairs (6000 intervals): the mean of the
    estimates is the exact expectation within 3 standard errors, and the nominal 95% intervals
    cover it at its rate for every pair: 92.5-96.5% of each pair's 2000 intervals (binomial sd 0.49%;
    the two-sided normal interval with 32 samples covers ~94.1-94.5%). The band catches intervals
    14% too wide (z 2.23: 97.4%) or too narrow (z 1.72: 91.5%) on every pair."""
    m = _stand_in()
    x = torch.zeros(3, 3, 64, 64)
    truth = _truth()
    means, covered = [], []
    for r in range(2000):
        e = elpips_estimate(x, x, metric=m, method=method, seed=r, min_samples=32, max_samples=32, batch_size=32,
                            rtol=1e-9, atol=1e-9)
        assert e.samples == 32 and e.method == ("cv" if method == "auto" else method)
        means.append(e.mean.double())
        covered.append((e.mean.double() - truth).abs() <= e.half_width.double())
    means, covered = torch.stack(means), torch.stack(covered).double()
    se = means.std(0) / len(means) ** 0.5
    assert ((means.mean(0) - truth).abs() <= 3 * se).all(), ((means.mean(0) - truth) / se).tolist()
    per_pair = covered.mean(0)
    assert ((0.925 <= per_pair) & (per_pair <= 0.965)).all(), per_pair.tolist()


def test_qmc_on_the_metric_reports_streams_levels_and_stops():
    """On the real E-LPIPS computation (random SqueezeNet trunk, 64x64 noise pairs): levels get
    streams of their share of the points (at least one each), the t interval's degrees of freedom
    are >= R - 1, and the rule stops a run once both tolerances hold."""
    torch.manual_seed(0)
    m = ELPIPS(net="squeeze", pnet_rand=True, max_scale=2)
    x, y = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    e = elpips_estimate(x, y, metric=m, method="qmc", seed=0, min_samples=32, max_samples=64, batch_size=32,
                        rtol=1e-9, atol=1e-9, replicates=4)
    # points per stream: floor(P(s) x target / R), at least 1: 12 and 3 at the 64-sample budget
    assert e.samples == 60 and e.samples_per_level == [48, 12]
    assert e.dof >= 3 and torch.isfinite(e.mean).all() and (e.half_width > 0).all()
    loose = elpips_estimate(x, y, metric=m, method="qmc", seed=0, min_samples=16, max_samples=256, batch_size=16,
                            rtol=10.0, atol=10.0, replicates=4)
    assert loose.samples < 64 and bool(loose.converged.all())
    same = elpips_estimate(x, x, metric=m, method="qmc", seed=0, min_samples=16, max_samples=64, replicates=4)
    assert float(same.mean.abs().max()) == 0 and bool(same.converged.all())
    with pytest.raises(ValueError, match="method must be"):
        elpips_estimate(x, y, metric=m, method="sobol")
    with pytest.raises(ValueError, match="below the 16 samples"):
        elpips_estimate(x, y, metric=m, method="qmc", replicates=8, min_samples=2, max_samples=8)
    with pytest.raises(ValueError, match="mode='batched'"):
        elpips_estimate(x, y, metric=ELPIPS(net="squeeze", pnet_rand=True, max_scale=2, mode="official"),
                        method="qmc")


def _coverage(method, repeats, samples, batch):
    m = _stand_in()
    x = torch.zeros(3, 3, 64, 64)
    truth = _truth()
    means, covered, used = [], [], []
    for r in range(repeats):
        e = elpips_estimate(x, x, metric=m, method=method, seed=r, min_samples=samples, max_samples=samples,
                            batch_size=batch, rtol=1e-9, atol=1e-9)
        assert e.samples == samples and e.method == method
        means.append(e.mean.double())
        covered.append((e.mean.double() - truth).abs() <= e.half_width.double())
        used.append(e.cv_levels)
    return torch.stack(means), torch.stack(covered).double(), truth, used


@pytest.mark.slow
def test_cv_is_unbiased_covers_and_beats_stratified_at_equal_samples():
    """1000 estimates of 256 samples (two rounds of 128: proportional, then cost-aware) for 3 pairs
    (3000 intervals) with the control variates on at level 1: mean within 3 standard errors of the
    exact expectation, each pair's coverage of the 95% interval in [92.5%, 96.8%]; and the spread of the
    estimates below the stratified method's at the same samples (the stand-in's colour, flip,
    permutation and swap factors are what the features capture; its 20% noise and offsets are not:
    measured sd ratio 0.69-0.73, coverage 94.4-95.6% per pair; a broken regression (coefficients 0)
    gives ~1). 4000 more repeats per setting (rounds of 128 or 256, area or equal costs) put the mean
    within 2.3 standard errors of the expectation."""
    means, covered, truth, used = _coverage("cv", 1000, 256, 128)
    assert all(u[0] for u in used)  # level 1 had >= 3 (k + 1) samples in every run
    se = means.std(0) / len(means) ** 0.5
    assert ((means.mean(0) - truth).abs() <= 3 * se).all(), ((means.mean(0) - truth) / se).tolist()
    per_pair = covered.mean(0)  # 1000 intervals per pair: sd 0.69%; intervals 14% too wide would cover 97.4%
    assert ((0.925 <= per_pair) & (per_pair <= 0.968)).all(), per_pair.tolist()
    plain, _, _, _ = _coverage("stratified", 300, 256, 128)
    ratio = means.std(0) / plain.std(0)
    assert (ratio < 0.9).all(), ratio.tolist()


@pytest.mark.parametrize("sampler", ["batched", "sobol"])
def test_control_features_have_their_stated_means(sampler):
    """Every feature's mean over 2^17 draws is 0 within 5 standard errors (of the per-draw means: the
    images of a draw are stratified together), for both samplers; a wrong constant (1/4 for E v^2)
    would be off by > 100 standard errors."""
    g = torch.Generator().manual_seed(0)
    if sampler == "batched":
        t = sample_batched(2**17, 3, generator=g, scale=2)
        per_draw = control_features(t).mean(1)
    else:
        t = SobolTransformSampler(3, scale=1, replicates=32, generator=g).draw(2**12)
        per_draw = control_features(t).view(32, 2**12, 3, -1).mean((1, 2))  # one value per stream
    assert per_draw.shape[-1] == 33
    mean, se = per_draw.mean(0), per_draw.std(0) / per_draw.shape[0] ** 0.5
    exact = se == 0  # Sobol balances flips and swaps exactly: those means are exactly 0
    assert (mean[exact].abs() < 1e-12).all() and ((mean / se)[~exact].abs() < 5).all(), (mean / se).tolist()


def test_control_features_follow_the_families():
    t = sample_batched(4, 2, generator=torch.Generator().manual_seed(0))
    assert control_features(t, ["flip"]).shape == (4, 2, 3)
    assert control_features(t, ["swap", "color"]).shape == (4, 2, 1 + 3 + 6)  # v = u without permutations
    assert control_features(t, ["permutation"]).shape == (4, 2, 5)
    assert control_features(t, ["translation", "scale", "dropout"]).shape == (4, 2, 0)


def test_cv_level_regression_removes_a_linear_effect_and_keeps_the_mean():
    """Values that are a linear function of the features plus noise: the adjusted variance is the
    noise's; the mean stays the plain mean's up to the noise; too few samples -> plain mean."""
    g = torch.Generator().manual_seed(1)
    t = sample_batched(400, 2, generator=g)
    h = control_features(t)
    coef = torch.randn(h.shape[2], dtype=torch.float64, generator=g)
    noise = 0.1 * torch.randn(400, 2, dtype=torch.float64, generator=g)
    d = 1.0 + h @ coef + noise
    mean, var, used = _cv_level(d, h)
    assert used and (var < 1.3 * noise.var(0)).all() and (var < 0.1 * d.var(0)).all()
    assert ((mean - 1.0).abs() < 4 * 0.1 / 20).all()  # the noise's standard error at 400 samples
    mean, var, used = _cv_level(d[:90], h[:90])  # 90 < 3 x 34
    assert not used and torch.allclose(mean, d[:90].mean(0)) and torch.allclose(var, d[:90].var(0))


def test_cost_aware_allocation():
    """Shares ~ P(s) sigma_s / sqrt(cost_s), never below 1/4 of P(s) (largest deficit first)."""
    p = torch.tensor([0.5, 0.5], dtype=torch.float64)
    assert _cost_aware([0, 0], 100, p, [1.0, 1.0], [1.0, 1.0]) == [50, 50]
    assert _cost_aware([0, 0], 100, p, [1.0, 1.0], [1.0, 4.0]) == [67, 33]  # 1 : 1/2
    assert _cost_aware([0, 0], 100, p, [3.0, 1.0], [1.0, 1.0]) == [75, 25]
    assert _cost_aware([0, 0], 100, p, [1.0, 0.0], [1.0, 1.0]) == [89, 11]  # floor 1/8 of the total
    assert _cost_aware([60, 0], 40, p, [1.0, 1.0], [1.0, 1.0]) == [0, 40]  # tops up the level behind
    assert _cost_aware([0, 0], 10, p, [0.0, 0.0], [1.0, 1.0]) == [5, 5]  # no spread yet: proportional


def test_cv_on_the_metric_reports_levels_costs_and_reproduces():
    """On the real E-LPIPS computation (random SqueezeNet, 64x64 noise pairs): 'auto' runs 'cv',
    reports samples per level and where the control variates were used, repeats bit for bit with a
    seed (costs then default to the area model), accepts measured and explicit costs, and refuses
    bad ones and modes it cannot serve."""
    torch.manual_seed(0)
    m = ELPIPS(net="squeeze", pnet_rand=True, max_scale=2)
    x, y = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    kw = dict(metric=m, seed=0, min_samples=160, max_samples=160, batch_size=80, rtol=1e-9, atol=1e-9)
    e = elpips_estimate(x, y, **kw)
    assert e.method == "cv" and e.samples == 160 and sum(e.samples_per_level) == 160
    assert e.cv_levels == [e.samples_per_level[0] >= 102, e.samples_per_level[1] >= 102]
    assert e.cv_levels[0] and (e.half_width > 0).all()
    again = elpips_estimate(x, y, **kw)
    assert torch.equal(e.mean, again.mean) and e.samples_per_level == again.samples_per_level
    measured = elpips_estimate(x, y, **{**kw, "max_samples": 64, "min_samples": 64}, costs="measured")
    assert measured.samples == 64 and torch.isfinite(measured.mean).all()
    cheap_top = elpips_estimate(x, y, **kw, costs=[1.0, 1e-4])  # level 2 nearly free: it gets more
    assert cheap_top.samples_per_level[1] > e.samples_per_level[1]
    with pytest.raises(ValueError, match="costs must hold 2"):
        elpips_estimate(x, y, **kw, costs=[1.0])
    with pytest.raises(ValueError, match="costs must be"):
        elpips_estimate(x, y, **kw, costs="flops")
    with pytest.raises(ValueError, match="costs applies to method='cv'"):
        elpips_estimate(x, y, **kw, method="stratified", costs="area")
    with pytest.raises(ValueError, match="mode='batched'"):
        elpips_estimate(x, y, metric=ELPIPS(net="squeeze", pnet_rand=True, max_scale=2, mode="official"),
                        method="cv")
    official = elpips_estimate(x, y, metric=ELPIPS(net="squeeze", pnet_rand=True, max_scale=2, mode="official"),
                               seed=0, min_samples=4, max_samples=4)
    assert official.method == "stratified"  # 'auto' where 'cv' cannot serve


@pytest.mark.slow
def test_stratified_mean_is_unbiased_and_beats_iid_draws():
    """``stratified_mean`` (the scoring's stratified draws): over 3000 repeats of 10 draws on the
    stand-in (levels 1 and 2 with factors 1 and 0.6: between-level variance) its mean is the exact
    expectation within 3 standard errors, and its variance (pooled over the pairs) is below the
    plain mean of 10 i.i.d. draws': measured 0.80-0.81x (0.83-0.84x with 4 draws; the stand-in's
    between-level share is small), the test asks < 0.92x."""
    m = _stand_in()
    x = torch.zeros(3, 3, 64, 64)
    truth = _truth()
    strat = torch.stack([stratified_mean(m, x, x, 10, generator=torch.Generator().manual_seed(r))[0].double()
                         for r in range(3000)])
    iid = torch.stack([m.sample_distances((x,), x, 10, generator=torch.Generator().manual_seed(r))[0].double().mean(0)
                       for r in range(3000)])
    se = strat.std(0) / len(strat) ** 0.5
    assert ((strat.mean(0) - truth).abs() <= 3 * se).all(), ((strat.mean(0) - truth) / se).tolist()
    ratio = float((strat.var(0) / PAIRS**2).sum() / (iid.var(0) / PAIRS**2).sum())
    assert ratio < 0.92, ratio
    with pytest.raises(ValueError, match="one draw per scale level: samples=1 < 2"):
        stratified_mean(m, x, x, 1)


def test_stratified_mean_without_transforms_is_the_plain_mean():
    torch.manual_seed(0)
    m = ELPIPS(net="squeeze", pnet_rand=True, transforms=False)
    x, y, z = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    a, b = stratified_mean(m, (x, z), y, 3, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = m.sample_distances((x, z), y, 3, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(a, ref[0].mean(0)) and torch.allclose(b, ref[1].mean(0))
