"""DISTS as the attacks' distance (DISTSDistance): its value is DISTS, its local length is DISTS'
second-order expansion (the exact Gauss-Newton form at the minimum, against the Hessian from double
backward), and PPGD / LPA under a DISTS bound on the small CNN of examples/attack_demo.py keep the
bound on every output (their success next to L2-PGD at the same pixel budget is printed)."""

import pytest
import torch

from fastlpips.attacks import JTJ, L2PGD, DISTSDistance, FeatureDistance, LagrangePerceptualAttack, PerceptualPGD
from fastlpips.dists import DISTS
from helpers import distort, real_images


@pytest.fixture(scope="module")
def dists64():
    torch.manual_seed(0)
    return DISTS(pnet_rand=True).double()  # a random trunk: the identities hold for any weights


def _images(n=2, size=32):
    x = (real_images(size, n).double() + 1) / 2
    return x, ((distort(x * 2 - 1, 2) + 1) / 2).clamp(0, 1)


def test_the_distance_is_dists(dists64):
    d = DISTSDistance(dists64)
    x, y = _images()
    fx, fy = d.features(x), d.features(y)
    assert fx.shape == (2, sum(c * h * w for c, h, w in d._layouts[fx.shape[1]]))
    torch.testing.assert_close(d.from_features(fx, fy), dists64(x, y), rtol=1e-13, atol=0)
    torch.testing.assert_close(d(x, y), dists64(x, y), rtol=1e-13, atol=0)
    assert d.squared and d.root(0.04) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="which no call of features"):
        d.from_features(fx[:, :-1], fy[:, :-1])
    with pytest.raises(ValueError, match="too small for DISTS"):
        d.check_images(x[..., :16, :16])


def test_the_local_length_is_the_hessian_of_dists(dists64):
    """At y = x DISTS is 0 with a zero gradient, so its Hessian in y is J^T H_f J exactly (the trunk's
    own curvature is multiplied by a zero gradient): 1/2 v^T H v must equal ||J_metric v||^2."""
    d = DISTSDistance(dists64)
    x, _ = _images(n=1)
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    y = x.clone().requires_grad_(True)
    fx = [f.detach() for f in dists64.features(x)]
    val = dists64.from_features(fx, dists64.features(y)).sum()
    (g,) = torch.autograd.grad(val, y, create_graph=True)
    assert float(g.detach().abs().max()) < 1e-9
    (hv,) = torch.autograd.grad((g * v).sum(), y)
    quad = 0.5 * float((hv * v).sum())
    jv = torch.func.jvp(d.metric_features, (x,), (v,))[1]
    assert float(jv.square().sum()) == pytest.approx(quad, rel=1e-9)
    # the attacks' J^T J operator uses the same map
    op = JTJ(d, x)
    assert float((op(v) * v).sum()) == pytest.approx(quad, rel=1e-9)


def test_the_protocol_default_is_the_features():
    class Pixels(FeatureDistance):
        def features(self, x):
            return x.flatten(1)

    x = torch.rand(2, 3, 4, 4)
    assert torch.equal(Pixels().metric_features(x), x.flatten(1))


@pytest.mark.slow
def test_ppgd_and_lpa_under_a_dists_bound_keep_it(attack_demo):
    clf = attack_demo.clf
    x, y = attack_demo.crops(2, 3)  # 8 crops, 32x32
    metric = DISTS()
    d = DISTSDistance(metric)
    bound = 0.1
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        adv = PerceptualPGD(clf, d, bound, num_iterations=3, cg_iterations=3)(
            x, y, generator=torch.Generator().manual_seed(0))
        lpa = LagrangePerceptualAttack(clf, d, bound, num_iterations=5, binary_steps=2)(
            x, y, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            for out in (adv, lpa):
                assert out.min() >= 0 and out.max() <= 1
                assert (metric(x, out) <= bound).all()  # measured by the metric itself, every output
            size = (adv - x).flatten(1).norm(dim=1)
            base = L2PGD(clf, float(size.median()), num_iterations=10)(x, y, generator=torch.Generator().manual_seed(0))
            ok = clf(x).argmax(1) == y
            rate = lambda a: float(((clf(a).argmax(1) != y) & ok).sum() / ok.sum())  # noqa: E731
    finally:
        torch.set_num_threads(old)
    print(f"\nDISTS <= {bound}: PPGD success {rate(adv):.3f}, LPA {rate(lpa):.3f}; L2-PGD at the median pixel "
          f"budget {float(size.median()):.3f}: {rate(base):.3f}")


def test_a_kept_linearization_is_not_used_for_another_metric_map():
    """JTJ uses a distance's kept linearization (of ``features``) only when the lengths are those of
    ``features``: a distance with its own ``metric_features`` gets forward-mode AD of that map."""
    class Scaled(FeatureDistance):
        has_linearization = True

        def features(self, x):
            return x.flatten(1)

        def linearize(self, x):
            return self.features(x), lambda v: v.flatten(1)

        def metric_features(self, x):
            return 2 * x.flatten(1)

    d = Scaled()
    x = torch.rand(1, 3, 4, 4, dtype=torch.float64)
    v = torch.rand_like(x)
    assert JTJ(d, x).mode == "jvp" and JTJ(d.metric_features, x).mode == "jvp"
    torch.testing.assert_close(JTJ(d, x)(v), 4 * v)
    assert JTJ(d.features, x).mode == "manual"  # the features themselves: their kept linearization
