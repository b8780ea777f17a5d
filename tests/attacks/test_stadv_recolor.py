"""StAdv and ReColorAdv (fastlpips.attacks.stadv / .recolor) against recoloradv, the package that
perceptual-advex 0.2.6's StAdvAttack / ReColorAdvAttack run, plus bounds, effect and input checks.

The reference attacks are built as perceptual_advex.attacks.MisterEdAttack._setup_attack builds
them (perceptual_advex itself is not imported: it is not installed): mister_ed's CWLossF6 (kappa
inf) + PerturbationNormLoss in a negated RegularizedLoss, PGD with Adam, signed=False, 20
iterations, no random start, through AdversarialAttackParameters. Both sides run the same float32
arithmetic on the CPU, so the whole attacks are compared to 1e-5 (they agree to the bit here; a
looser tolerance would only hide a semantic difference, since Adam's first steps are +-lr wherever
the gradient is non-zero). CPU only; every torch op runs on one thread (2 shared cores).
"""
import math
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from fastlpips.attacks.recolor import (
    ReColorAdv,
    apply_color_grid,
    cieluv_to_rgb,
    color_grid_smoothness,
    identity_color_grid,
    interpolate_color_grid,
    project_color_grid,
    rgb_to_cieluv,
)
from fastlpips.attacks.stadv import StAdv, apply_flow, flow_smoothness, identity_grid, project_sampling_grid
from fastlpips.attacks.threat import ThreatAttack
from helpers import require

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ATOL_ATTACK = 1e-5
# recoloradv calls affine_grid / grid_sample without align_corners (False, what we use)
pytestmark = pytest.mark.filterwarnings("ignore:Default grid_sample and affine_grid behavior:UserWarning")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads on two shared cores are several times slower here
    yield
    torch.set_num_threads(n)


@pytest.fixture
def me(monkeypatch):
    """recoloradv's modules, on the CPU (its mister_ed imports ``six`` for one name; shimmed if absent)."""
    require("recoloradv")
    monkeypatch.setenv("MISTER_ED_GPU", "False")
    try:
        import six  # noqa: F401
    except ImportError:
        monkeypatch.setitem(sys.modules, "six", types.SimpleNamespace(string_types=(str,)))
    from recoloradv import color_spaces as cs
    from recoloradv import color_transformers as ct
    from recoloradv import perturbations as pt
    from recoloradv.mister_ed import adversarial_attacks as aa
    from recoloradv.mister_ed import adversarial_perturbations as ap
    from recoloradv.mister_ed import adversarial_training as advtrain
    from recoloradv.mister_ed import loss_functions as lf
    from recoloradv.mister_ed import spatial_transformers as st
    return types.SimpleNamespace(cs=cs, ct=ct, pt=pt, aa=aa, ap=ap, advtrain=advtrain, lf=lf, st=st)


@pytest.fixture(scope="module")
def demo(attack_demo):
    """The worked example's CNN (trained once per test run: tests/attacks/conftest.py)."""
    return attack_demo


def attack_margin(logits, labels):
    """max_{j != y} z_j - z_y (< 0: correct)."""
    other = logits.masked_fill(nn.functional.one_hot(labels, logits.shape[1]).bool(), -math.inf).amax(1)
    return other - logits.gather(1, labels[:, None])[:, 0]


def tiny_model(k=5, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(32, k))


def rand(*shape, lo=0.0, hi=1.0, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand(*shape, generator=g, dtype=dtype)


def stadv_threat(me, bound):  # perceptual_advex.attacks.StAdvAttack's threat model
    return me.ap.ThreatModel(me.ap.ParameterizedXformAdv, {
        "lp_style": "inf", "lp_bound": bound, "xform_class": me.st.FullSpatial, "use_stadv": True})


def recolor_threat(me, bound, resolution=(16, 32, 32)):  # perceptual_advex.attacks.ReColorAdvAttack's
    rx, ry, rz = resolution
    return me.ap.ThreatModel(me.pt.ReColorAdv, {
        "xform_class": me.ct.FullSpatial, "cspace": me.cs.CIELUVColorSpace(), "lp_style": "inf", "lp_bound": bound,
        "xform_params": {"resolution_x": rx, "resolution_y": ry, "resolution_z": rz}, "use_smooth_loss": True})


def reference_attack(me, model, x, labels, threat, pert_factor, lr, iterations=20):
    """MisterEdAttack._setup_attack + forward (normalizer nn.Identity, no random targets)."""
    cw_loss = me.lf.CWLossF6(model, nn.Identity(), kappa=float("inf"))
    adv_loss = me.lf.RegularizedLoss({"cw": cw_loss, "pert": me.lf.PerturbationNormLoss(lp=2)},
                                     {"cw": 1.0, "pert": pert_factor}, negate=True)
    pgd = me.aa.PGD(model, nn.Identity(), threat, adv_loss)
    params = {"optimizer": torch.optim.Adam, "optimizer_kwargs": {"lr": lr}, "signed": False, "verbose": False,
              "num_iterations": iterations, "random_init": False}
    attack = me.advtrain.AdversarialAttackParameters(pgd, 1.0, attack_specific_params={"attack_kwargs": params})
    attack.set_gpu(False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = attack.attack(x, labels)
    return out[0].detach(), out[4]


def set_params(xform, value):
    with torch.no_grad():
        xform.xform_params.copy_(value)


# ----------------------------------------------------------------------------------------------
# the deterministic pieces against recoloradv
# ----------------------------------------------------------------------------------------------

def test_apply_flow_matches_mister_ed(me):
    x = rand(3, 3, 12, 12, seed=1)
    flow = rand(3, 12, 12, 2, lo=-0.05, hi=0.05, seed=2)
    pert = stadv_threat(me, 0.05)(x)  # ParameterizedXformAdv, set up for x
    ident = pert.xform.identity_params(x.shape)
    assert torch.equal(identity_grid(3, 12, 12), ident)
    set_params(pert.xform, ident + flow)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = pert(x).detach()  # projects first: a no-op for this flow
    torch.testing.assert_close(apply_flow(x, flow), ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(apply_flow(x, torch.zeros_like(flow)), x, atol=1e-6, rtol=0)  # up to grid round-off
    # non-square images: FullSpatial.forward works there too (only its stAdv_norm needs H == W)
    xr = rand(2, 3, 10, 14, seed=3)
    fr = rand(2, 10, 14, 2, lo=-0.2, hi=0.2, seed=4)
    fs = me.st.FullSpatial(shape=xr.shape, manual_gpu=False)
    set_params(fs, fs.identity_params(xr.shape) + fr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = fs(xr).detach()
    torch.testing.assert_close(apply_flow(xr, fr), ref, atol=1e-6, rtol=0)


def test_flow_smoothness_and_projection_match_mister_ed(me):
    x = rand(3, 3, 9, 9, seed=5)
    flow = rand(3, 9, 9, 2, lo=-0.08, hi=0.08, seed=6)
    pert = stadv_threat(me, 0.05)(x)
    ident = pert.xform.identity_params(x.shape)
    set_params(pert.xform, ident + flow)
    ref = pert.perturbation_norm()  # use_stadv: FullSpatial.stAdv_norm
    ours = flow_smoothness(pert.xform.xform_params - ident)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=0)
    # gradients w.r.t. the grid (built in the same order: the same to float round-off, here exact)
    (g_ref,) = torch.autograd.grad(ref.sum() * 0.05, pert.xform.xform_params)
    (g_ours,) = torch.autograd.grad(ours.sum() * 0.05, pert.xform.xform_params)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-6, atol=1e-9)
    # projection: clamp to [-1, 1], then to identity +- bound (grid points far out on purpose)
    wild = ident + rand(3, 9, 9, 2, lo=-0.3, hi=0.3, seed=7)
    set_params(pert.xform, wild)
    pert.constrain_params()
    ours = project_sampling_grid(wild, ident, 0.05)
    assert torch.equal(ours, pert.xform.xform_params.detach())
    assert float((ours - ident).abs().max()) <= 0.05 + 1e-7
    # a flow on a non-square image
    assert flow_smoothness(torch.zeros(2, 4, 7, 2)).shape == (2,)


def test_cieluv_matches_recoloradv(me):
    cs = me.cs.CIELUVColorSpace()
    x = rand(4, 3, 8, 8, seed=8)
    x[0, :, 0, :4] = torch.tensor([0.0, 1.0, 0.03, 0.5])[:, None].T.expand(3, 4)  # black, white, the linear part
    assert torch.equal(rgb_to_cieluv(x), cs.from_rgb(x))
    c = rand(4, 3, 8, 8, lo=-0.3, hi=1.3, seed=9)  # includes out-of-gamut and out-of-range colours
    assert torch.equal(cieluv_to_rgb(c), cs.to_rgb(c))
    # the 4-decimal matrices are not exact inverses: the round trip is good to ~1e-3 (dark channels)
    torch.testing.assert_close(cieluv_to_rgb(rgb_to_cieluv(x)), x, atol=1e-3, rtol=0)
    x64 = x.double()
    torch.testing.assert_close(rgb_to_cieluv(x64), cs.from_rgb(x64), atol=1e-12, rtol=0)
    white = rgb_to_cieluv(torch.ones(1, 3, 1, 1))[0, :, 0, 0]
    torch.testing.assert_close(white, torch.tensor([1.0, 0.5, 0.5]), atol=2e-3, rtol=0)


@pytest.mark.parametrize("resolution", [(4, 6, 5), (16, 32, 32)])
def test_color_grid_matches_recoloradv(me, resolution):
    n = 2
    x = rand(n, 3, 8, 8, seed=10)
    pert = recolor_threat(me, 0.06, resolution)(x)  # recoloradv.perturbations.ReColorAdv, set up for x
    ident = pert.xform.identity_params
    assert torch.equal(identity_color_grid(n, resolution), ident)
    offset = rand(n, *resolution, 3, lo=-0.06, hi=0.06, seed=11)
    set_params(pert.xform, ident + offset)
    # trilinear lookup, including colour coordinates outside [0, 1] (edge values held)
    c = rand(n, 3, 8, 8, lo=-0.3, hi=1.3, seed=12)
    assert torch.equal(interpolate_color_grid(c, ident + offset), pert.xform(c).detach())
    # the whole recolouring (recoloradv's forward without its projection)
    ref = me.cs.CIELUVColorSpace().to_rgb(pert.xform(me.cs.CIELUVColorSpace().from_rgb(x))).detach()
    torch.testing.assert_close(apply_color_grid(x, offset), ref, atol=1e-6, rtol=0)
    # the identity grid reproduces the colours whose coordinates lie inside the grid ([0, 1]^3) ...
    same = apply_color_grid(x, torch.zeros_like(offset))
    inside = ((rgb_to_cieluv(x) >= 0) & (rgb_to_cieluv(x) <= 1)).all(1, keepdim=True).expand_as(x)
    torch.testing.assert_close(same[inside], x[inside], atol=1e-3, rtol=0)
    # ... but not saturated reds / blues (u* > 100, v* < -100): their coordinates are clamped to
    # the grid's edge, so even a zero offset changes them (recoloradv's parameterisation)
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1).expand(n, 3, 1, 1)
    zero = torch.zeros_like(offset)
    assert float((apply_color_grid(red, zero) - red).abs().max()) > 0.05
    # smoothness loss
    ref_s = pert.perturbation_norm()
    ours_s = color_grid_smoothness(pert.xform.xform_params - ident)
    torch.testing.assert_close(ours_s, ref_s, rtol=1e-6, atol=0)
    (g_ref,) = torch.autograd.grad(ref_s.sum(), pert.xform.xform_params)
    (g_ours,) = torch.autograd.grad(ours_s.sum(), pert.xform.xform_params)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-6, atol=1e-9)
    # projection: [0, 1] clamp, gamut round trip, identity +- bound
    wild = ident + rand(n, *resolution, 3, lo=-0.2, hi=0.2, seed=13)
    set_params(pert.xform, wild)
    pert.constrain_params()
    ours_p = project_color_grid(wild, ident, 0.06)
    assert torch.equal(ours_p, pert.xform.xform_params.detach())
    assert float((ours_p - ident).abs().max()) <= 0.06 + 1e-7


# ----------------------------------------------------------------------------------------------
# the whole attacks against perceptual-advex's setup
# ----------------------------------------------------------------------------------------------

def test_stadv_matches_perceptual_advex(me, demo):
    x, y = demo.crops(1, 1)
    ref, ref_pert = reference_attack(me, demo.clf, x, y, stadv_threat(me, 0.05), 0.0025 / 0.05, 0.01)
    attack = StAdv(demo.clf)
    adv = attack(x, y)
    torch.testing.assert_close(adv, ref, atol=ATOL_ATTACK, rtol=0)
    ident = ref_pert.xform.identity_params(x.shape)
    torch.testing.assert_close(attack.last["flow"], ref_pert.xform.xform_params.detach() - ident,
                               atol=ATOL_ATTACK, rtol=0)
    assert float(attack.last["size"].min()) > 0.02  # the attack moved: the comparison means something
    assert bool(attack.within_bound().all())
    torch.testing.assert_close(apply_flow(x, attack.last["flow"]), adv, atol=1e-6, rtol=0)


def test_recolor_matches_perceptual_advex(me, demo):
    x, y = demo.crops(1, 1)
    x, y = x[:3], y[:3]
    ref, ref_pert = reference_attack(me, demo.clf, x, y, recolor_threat(me, 0.06), 0.0036 / 0.06, 0.001)
    attack = ReColorAdv(demo.clf)
    adv = attack(x, y)
    torch.testing.assert_close(adv, ref, atol=ATOL_ATTACK, rtol=0)
    ident = ref_pert.xform.identity_params
    torch.testing.assert_close(attack.last["grid"], ref_pert.xform.xform_params.detach() - ident,
                               atol=ATOL_ATTACK, rtol=0)
    assert float((adv - x).abs().max()) > 0.01  # the attack moved
    assert bool(attack.within_bound().all())
    torch.testing.assert_close(apply_color_grid(x, attack.last["grid"]), adv, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------------------------
# bounds, effect, model state, interface
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make, per_class", [(StAdv, 8), (ReColorAdv, 2)], ids=["stadv", "recolor"])
def test_attack_lowers_accuracy_within_bound(demo, make, per_class):
    x, y = demo.crops(per_class, 1)
    with torch.no_grad():
        keep = demo.clf(x).argmax(1) == y
    x, y = x[keep], y[keep]
    attack = make(demo.clf)
    with torch.no_grad():  # the attack turns gradients on for itself
        adv = attack(x, y)
        acc = float((demo.clf(adv).argmax(1) == y).float().mean())
        margin0 = -attack_margin(demo.clf(x), y)
        margin1 = -attack_margin(demo.clf(adv), y)
    assert isinstance(attack, ThreatAttack) and attack.noise_kind is None
    assert adv.shape == x.shape and adv.dtype == x.dtype
    assert float(adv.min()) >= 0 and float(adv.max()) <= 1
    assert attack.last["size"].shape == (len(y),)
    assert bool(attack.within_bound().all()), attack.last["size"]
    assert acc < 1.0, f"{attack.name} left every correctly classified crop correct"
    assert bool((margin1 < margin0).all()) and float(margin1.mean()) < 0.85 * float(margin0.mean())
    assert len(y) >= 6


def test_defaults_and_names():
    m = tiny_model()
    s, r = StAdv(m), ReColorAdv(m)
    assert (s.name, s.bound, s.lr, s.num_iterations) == ("stadv", 0.05, 0.01, 20)
    assert math.isclose(s.smoothness, 0.0025 / 0.05)
    assert (r.name, r.bound, r.lr, r.num_iterations, r.resolution) == ("recolor", 0.06, 0.001, 20, (16, 32, 32))
    assert math.isclose(r.smoothness, 0.0036 / 0.06)
    assert math.isclose(StAdv(m, 0.1).smoothness, 0.025)
    assert StAdv(m, smoothness=0).smoothness == 0.0


@pytest.mark.parametrize("make", [lambda m: StAdv(m, num_iterations=3),
                                  lambda m: ReColorAdv(m, num_iterations=3, resolution=(4, 8, 8))],
                         ids=["stadv", "recolor"])
def test_model_state_untouched_and_odd_inputs(make):
    model = tiny_model().train()  # parameters require grad, train mode
    attack = make(model)
    x = rand(1, 3, 10, 14, seed=20)  # one image, not square
    adv = attack(x, torch.tensor([2]))
    assert model.training and all(mod.training for mod in model.modules())
    assert all(p.grad is None for p in model.parameters())
    assert adv.shape == x.shape and bool(attack.within_bound().all())
    model.eval().double()
    adv = attack(x.double().repeat(2, 1, 1, 1), torch.tensor([0, 4]))  # float64 in -> float64 out
    assert not model.training
    assert adv.dtype == torch.float64 and attack.last["size"].dtype == torch.float64
    assert float(adv.min()) >= 0 and float(adv.max()) <= 1 and bool(attack.within_bound().all())


@pytest.mark.parametrize("make", [StAdv, lambda m, **kw: ReColorAdv(m, resolution=(4, 8, 8), **kw)],
                         ids=["stadv", "recolor"])
def test_bad_inputs(make):
    model = tiny_model(k=5).eval()
    attack = make(model, num_iterations=1)
    x, y = rand(2, 3, 8, 8, seed=21), torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        attack(x * 2, y)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        attack(x - 0.5, y)
    with pytest.raises(ValueError, match="NaN"):
        attack(torch.full_like(x, math.nan), y)
    with pytest.raises(ValueError, match="channels"):
        attack(x[:, :1], y)
    with pytest.raises(TypeError, match="integer class indices"):
        attack(x, y.float())
    with pytest.raises(ValueError, match="one label per image"):
        attack(x, y[:1])
    with pytest.raises(ValueError, match=r"lie in \[0, 4\]"):
        attack(x, torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="must be >= 0"):
        attack(x, torch.tensor([-1, 0]))
    for bad_model in (lambda a: a.flatten(1).sum(1), lambda a: model(a)[:, :1], lambda a: model(a)[:1]):
        with pytest.raises(ValueError, match="logits of shape"):
            make(bad_model, num_iterations=1)(x, y)
    for bound in (0, -0.1, math.nan, math.inf):
        with pytest.raises(ValueError, match="bound"):
            make(model, bound=bound)
    with pytest.raises(TypeError, match="bound"):
        make(model, bound="0.05")
    with pytest.raises(ValueError, match="num_iterations"):
        make(model, num_iterations=0)
    with pytest.raises(TypeError, match="num_iterations"):
        make(model, num_iterations=2.5)
    with pytest.raises(ValueError, match="lr"):
        make(model, lr=0)
    with pytest.raises(ValueError, match="smoothness"):
        make(model, smoothness=-1)
    with pytest.raises(ValueError, match="kappa"):
        make(model, kappa=-1)


def test_bad_shapes_for_the_pieces():
    model = tiny_model()
    with pytest.raises(ValueError, match="resolution"):
        ReColorAdv(model, resolution=(16, 32))
    with pytest.raises(ValueError, match="resolution entries"):
        ReColorAdv(model, resolution=(1, 32, 32))
    x = rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"\(N, H, W, 2\)"):
        apply_flow(x, torch.zeros(2, 8, 8, 3))
    with pytest.raises(ValueError, match=r"\(N, H, W, 2\)"):
        flow_smoothness(torch.zeros(2, 8, 8))
    with pytest.raises(ValueError, match=r"\(N, rx, ry, rz, 3\)"):
        apply_color_grid(x, torch.zeros(2, 4, 4, 3))
    with pytest.raises(ValueError, match=r"\(N, rx, ry, rz, 3\)"):
        apply_color_grid(x, torch.zeros(3, 4, 4, 4, 3))
