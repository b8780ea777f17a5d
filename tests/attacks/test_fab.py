"""FAB-T (fastlpips.attacks.fab): per-example agreement with torchattacks 3.5.1's
``FAB(..., multi_targeted=True)`` on L_inf and L_2 (whole attack, one run with a random start, and
the two projections alone), the bounds and the box of the outputs, the random state, and the
argument checks.

The models are tiny smooth CNNs (ELU / Tanh, no max-pool or other ties) on smooth random 32x32
images. In ``flat_second`` two classes hardly depend on the input and hold the two largest logits,
so the target of rank 2 cannot be reached within the radius and the fooled examples come from the
later ranks (the target order matters); ``steep`` has five ordinary classes.

Agreement with torchattacks: the fooled sets are identical and the returned images agree to 1e-6
(on this machine they are bit-identical: both run the same float32 operations on the same batches
in the same order). The margin covers the one place where the projections may round differently:
an L_2 step that meets a box face stops exactly on it here, the reference's at ``(t / w) w``, within
a float32 rounding of it (after the overshoot and the clamp to [0, 1] the points coincide)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastlpips.attacks.fab import FABTargeted, _project_l2, _project_linf

N_ITER = 10
# radii that leave some examples robust (flat_second: only the later target ranks fool within them)
EPS = {("flat_second", "linf"): 0.04, ("flat_second", "l2"): 1.5, ("steep", "linf"): 0.005, ("steep", "l2"): 0.2}


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_cnn(kind: str, classes: int = 5) -> nn.Module:
    """A small seeded float32 classifier of 32x32 images (eval mode, frozen parameters)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        m = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ELU(), nn.Conv2d(8, 16, 3, stride=2, padding=1),
                          nn.Tanh(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(16 * 16, classes))
    with torch.no_grad():
        m[0].weight.mul_(6)
        m[2].weight.mul_(6)
        if kind == "flat_second":  # classes 0 and 1: nearly constant logits 5 and 4.8
            m[6].weight.mul_(torch.tensor([0.05, 0.05] + [3.0] * (classes - 2))[:, None])
            m[6].bias.copy_(torch.tensor([5.0, 4.8] + [0.0] * (classes - 2)))
        else:
            m[6].weight.mul_(6)
    return m.eval().requires_grad_(False)


def smooth_images(n: int = 10, seed: int = 0) -> torch.Tensor:
    """Smooth random images in [0, 1]: upsampled 4x4 colour fields plus a little fine texture."""
    g = torch.Generator().manual_seed(seed)
    coarse = F.interpolate(torch.rand(n, 3, 4, 4, generator=g), size=32, mode="bilinear", align_corners=False)
    return (coarse + 0.1 * torch.rand(n, 3, 32, 32, generator=g) - 0.05).clamp(0, 1)


def batch(kind: str):
    m = tiny_cnn(kind)
    x = smooth_images()
    with torch.no_grad():
        y = m(x).argmax(1)
    y[3] = (y[3] + 1) % 5  # one example misclassified already: returned clean
    return m, x, y


def sizes(d: torch.Tensor, norm: str) -> torch.Tensor:
    d = d.flatten(1)
    return d.abs().amax(1) if norm == "linf" else d.norm(dim=1)


def reference(m, norm, eps, **kw):
    torchattacks = __import__("helpers").require("torchattacks")
    return torchattacks.FAB(m, norm={"linf": "Linf", "l2": "L2"}[norm], eps=eps, multi_targeted=True, **kw)


# -- agreement with torchattacks -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["flat_second", "steep"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_matches_torchattacks(norm, kind):
    m, x, y = batch(kind)
    eps = EPS[kind, norm]
    ours = FABTargeted(m, norm, eps, n_iter=N_ITER, seed=3).perturb(x, y)
    with torch.random.fork_rng():
        ref = reference(m, norm, eps, steps=N_ITER, n_restarts=1, n_classes=5, seed=3)(x, y)
    with torch.no_grad():
        fooled, fooled_ref = m(ours).argmax(1) != y, m(ref).argmax(1) != y
    fooled &= sizes(ours - x, norm) <= eps
    fooled_ref &= sizes(ref - x, norm) <= eps
    assert torch.equal(fooled, fooled_ref)
    assert fooled[3] and torch.equal(ours[3], x[3])  # misclassified already: returned as it is
    assert 1 < int(fooled.sum()) < len(x), "the radius should leave some examples robust"
    # fooled: the same images; the others: the clean images, as the reference's (bit-identical here)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    if kind == "flat_second":  # the later target ranks fooled them: rank 2 alone fools none
        only_rank2 = FABTargeted(m, norm, eps, n_iter=N_ITER, n_target_classes=1).perturb(x, y)
        assert torch.equal(only_rank2, x)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_start_run_matches_torchattacks(norm):
    """One run from a random start (what a restart after the first does) against the reference's
    ``attack_single_run_targeted(..., use_rand_start=True)`` after seeding the global generator as
    our local one: the same draws give the same points (the random start moves them: they differ
    from the run that starts at x)."""
    m, x, y = batch("steep")
    x, y = x[:6], y[:6]
    y[3] = m(x[3:4]).argmax(1)[0]
    eps = EPS["steep", norm]
    attack = FABTargeted(m, norm, eps, n_iter=3)
    with torch.no_grad():
        target = m(x).sort(dim=1)[1][:, -2]
        ours = attack._run(x, y, target, torch.Generator().manual_seed(5))
        plain = attack._run(x, y, target, None)
    ref_attack = reference(m, norm, eps, steps=3, n_restarts=2, n_classes=5, seed=5)
    ref_attack.target_class = 2
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(5)
        ref = ref_attack.attack_single_run_targeted(x, y, use_rand_start=True)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    assert (ours - plain).abs().max() > 1e-4


def test_restarts_match_torchattacks():
    """Two restarts per target, two targets (torchattacks' ``n_classes=3``: ranks 2 and 3)."""
    m, x, y = batch("flat_second")
    eps = EPS["flat_second", "l2"]
    ours = FABTargeted(m, "l2", eps, n_iter=4, n_restarts=2, n_target_classes=2, seed=1).perturb(x, y)
    with torch.random.fork_rng():
        ref = reference(m, "l2", eps, steps=4, n_restarts=2, n_classes=3, seed=1)(x, y)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("project, name", [(_project_linf, "projection_linf"), (_project_l2, "projection_l2")])
def test_projections_match_torchattacks(project, name):
    """The projection onto {<w, z> = b} within the box, against the reference's, on rows with ties,
    points on the faces, zero normals and hyperplanes inside, near and beyond the box's reach; each
    result meets the hyperplane (where reachable) and stays in the box."""
    fab = __import__("helpers").require("torchattacks.attacks.fab")
    g = torch.Generator().manual_seed(0)
    for dim in (1, 2, 7, 300, 3072):
        t = torch.rand(24, dim, generator=g)
        t[:, : dim // 4] = (t[:, : dim // 4] * 4).round() / 4  # ties, and points on the faces
        w = 0.01 * torch.randn(24, dim, generator=g)
        w[:, ::7] = 0
        w[-1] = 0
        b = (w * t).sum(1) + 0.03 * dim ** 0.5 * torch.randn(24, generator=g) * torch.rand(24, generator=g)
        d, ref = project(t, w, b), getattr(fab, name)(t, w, b)
        torch.testing.assert_close(d, ref, rtol=0, atol=1e-6)
        assert bool(((t + d) >= -1e-6).all() and ((t + d) <= 1 + 1e-6).all())
        assert torch.equal(d[-1], torch.zeros(dim))
        corner = torch.where(w < 0, 1 - t, -t) * (w != 0)
        # the hyperplane lies between t and the corner that moves <w, .> furthest: reachable
        reach = ((w * t).sum(1) - b).sign() != ((w * (t + corner)).sum(1) - b).sign()
        resid = ((w * (t + d)).sum(1) - b).abs()[reach]
        assert bool((resid <= 1e-4 * (w.abs().sum(1)[reach] + 1)).all())


# -- properties ------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_outputs_within_bound_and_box(norm):
    m, x, y = batch("steep")
    eps = EPS["steep", norm]
    adv = FABTargeted(m, norm, eps, n_iter=5).perturb(x, y)
    assert adv.shape == x.shape and adv.dtype == x.dtype
    assert bool((adv >= 0).all() and (adv <= 1).all())
    with torch.no_grad():
        wrong = m(adv).argmax(1) != y
    changed = (adv != x).flatten(1).any(1)
    assert bool(wrong[changed].all()), "every changed image is misclassified"
    assert bool((sizes(adv - x, norm)[changed] <= eps).all())
    assert bool(changed.any()) and not bool(changed.all())
    assert not changed[3]  # misclassified already: returned as it is


def test_fewer_classes_than_targets():
    """A 3-class model: 2 target ranks, however many are asked for."""
    m = tiny_cnn("steep", classes=3)
    x = smooth_images(6)
    with torch.no_grad():
        y = m(x).argmax(1)
    many = FABTargeted(m, "linf", 0.01, n_iter=3, n_target_classes=9).perturb(x, y)
    two = FABTargeted(m, "linf", 0.01, n_iter=3, n_target_classes=2).perturb(x, y)
    assert torch.equal(many, two)


def test_random_state_untouched_and_reproducible():
    m, x, y = batch("steep")
    x, y = x[:4], y[:4]
    m.requires_grad_(True)  # trainable parameters: still no .grad after the attack
    attack = FABTargeted(m, "l2", 0.3, n_iter=3, n_restarts=2, seed=7)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = attack.perturb(x, y)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(attack.perturb(x, y), first)
    assert not any(p.grad is not None for p in m.parameters())


def test_float64():
    m, x, y = batch("steep")
    m, x = m.double(), x.double()
    adv = FABTargeted(m, "linf", 0.01, n_iter=3).perturb(x, y)
    assert adv.dtype == torch.float64
    assert bool((sizes(adv - x, "linf") <= 0.01).all())


# -- argument checks -------------------------------------------------------------------------------


def test_bad_arguments():
    m, x, y = batch("steep")
    with pytest.raises(ValueError, match="norm"):
        FABTargeted(m, "l3", 0.1)
    assert FABTargeted(m, "Linf", 0.1).norm == "linf"
    with pytest.raises(ValueError, match="eps"):
        FABTargeted(m, "linf", 0.0)
    with pytest.raises(ValueError, match="eps"):
        FABTargeted(m, "l2", -1.0)
    with pytest.raises(ValueError, match="n_iter"):
        FABTargeted(m, "linf", 0.1, n_iter=0)
    with pytest.raises(TypeError, match="n_iter"):
        FABTargeted(m, "linf", 0.1, n_iter=2.5)
    with pytest.raises(ValueError, match="n_target_classes"):
        FABTargeted(m, "linf", 0.1, n_target_classes=0)
    with pytest.raises(ValueError, match="n_restarts"):
        FABTargeted(m, "linf", 0.1, n_restarts=0)
    with pytest.raises(ValueError, match="alpha_max"):
        FABTargeted(m, "linf", 0.1, alpha_max=1.5)
    with pytest.raises(ValueError, match="beta"):
        FABTargeted(m, "linf", 0.1, beta=-0.1)
    with pytest.raises(ValueError, match="eta"):
        FABTargeted(m, "linf", 0.1, eta=0)
    with pytest.raises(TypeError, match="model"):
        FABTargeted(lambda z: z, "linf", 0.1)  # type: ignore[arg-type]
    attack = FABTargeted(m, "linf", 0.1, n_iter=1)
    with pytest.raises(ValueError, match="labels"):
        attack.perturb(x, y[:-1])
    with pytest.raises(ValueError, match="labels"):
        attack.perturb(x, torch.full_like(y, 5))  # beyond the model's 5 classes
    with pytest.raises(TypeError, match="labels"):
        attack.perturb(x, y.float())
    with pytest.raises(ValueError, match=r"x must hold values in \[0, 1\]"):
        attack.perturb(x * 2, y)
    with pytest.raises(ValueError, match="x"):
        attack.perturb(x[0], y)
