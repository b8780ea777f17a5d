"""``elpips_estimate(method=...)`` (issue 16): unbiasedness and the coverage of the 95% interval of
every method over thousands of independent repeats, on a stand-in metric whose expectation is known
exactly, and 'qmc' on the real metric.

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
from fastlpips.estimator import _t_quantile
from fastlpips.transforms import PERMUTATIONS, sample_batched, scale_probabilities

PAIRS = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
FLIP = torch.tensor([1.0, 1.3, 0.8, 1.1], dtype=torch.float64)
PERM = torch.tensor([1.0, 1.2, 0.9, 1.1, 0.7, 1.4], dtype=torch.float64)
LEVEL = torch.tensor([1.0, 0.6], dtype=torch.float64)
_PERM_CODE = {tuple(p): k for k, p in enumerate(PERMUTATIONS.tolist())}


def _stand_in():
    m = ELPIPS(net="squeeze", pnet_rand=True, max_scale=2)

    def sample_distances(images, reference, samples, *, generator=None, transforms=None, draw=None):
        t = transforms if transforms is not None else sample_batched(samples, reference.shape[0], generator=generator,
                                                                     max_scale=m.max_scale)
        perm = torch.tensor([[_PERM_CODE[tuple(p)] for p in row] for row in t.perms.tolist()])
        noise = torch.randn(t.samples, t.n, generator=generator, dtype=torch.float64)
        d = (PAIRS * (1 + 0.3 * t.colors.double().mean(2)) * (1 + 0.1 * t.offsets[..., 0].double() / 7)
             * FLIP[t.flips] * PERM[perm] * (1 + 0.05 * t.swap.double())[:, None] * LEVEL[t.scales - 1][:, None]
             * (1 + 0.2 * noise))
        return [d.float()]
    m.sample_distances = sample_distances
    return m


def _truth():
    p = scale_probabilities(2)
    return PAIRS * (1 + 0.3 * 0.6) * (1 + 0.1 * 3.5 / 7) * FLIP.mean() * PERM.mean() * 1.025 * (p * LEVEL).sum()


def test_t_quantile_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for dof in (5, 7, 10, 30, 200):
        for q in (0.95, 0.975, 0.995):
            assert _t_quantile(q, dof) == pytest.approx(stats.t.ppf(q, dof), rel=1e-3), (q, dof)  # as documented
    assert _t_quantile(0.975, float("inf")) == pytest.approx(1.959964, rel=1e-6)


@pytest.mark.parametrize("method", ["stratified", "iid", "qmc"])
def test_unbiased_and_the_95_percent_interval_covers_at_its_rate(method):
    """2000 independent estimates of 32 samples for 3 pairs (6000 intervals): the mean of the
    estimates is the exact expectation within 3 standard errors, and the nominal 95% intervals
    cover it 92.5-97.5% of the time (binomial sd at 6000 intervals: 0.28%; the two-sided normal
    interval of the i.i.d. and stratified methods with ~32 samples covers ~94.5%)."""
    m = _stand_in()
    x = torch.zeros(3, 3, 64, 64)
    truth = _truth()
    means, covered = [], []
    for r in range(2000):
        e = elpips_estimate(x, x, metric=m, method=method, seed=r, min_samples=32, max_samples=32, batch_size=32,
                            rtol=1e-9, atol=1e-9)
        assert e.samples == 32 and e.method == method
        means.append(e.mean.double())
        covered.append((e.mean.double() - truth).abs() <= e.half_width.double())
    means, covered = torch.stack(means), torch.stack(covered).double()
    se = means.std(0) / len(means) ** 0.5
    assert ((means.mean(0) - truth).abs() <= 3 * se).all(), ((means.mean(0) - truth) / se).tolist()
    assert 0.925 <= float(covered.mean()) <= 0.975, covered.mean(0).tolist()


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
