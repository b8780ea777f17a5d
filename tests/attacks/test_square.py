"""Square Attack (fastlpips.attacks.square): per-example agreement with torchattacks 3.5.1's
``Square`` (the same random draws, the same fooled examples, the same images), the bounds and the
box, the random state, and argument checks.

The classifier is a small random CNN whose last layer is re-centred on a set of random images (so
that its classes are balanced and its margins small enough for a few hundred queries to fool some
examples and not others); the images are smooth random images with some noise.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastlpips.attacks.square import SquareAttack

EPS = {"linf": 4 / 255, "l2": 0.5}
REFERENCE_NORM = {"linf": "Linf", "l2": "L2"}


pytestmark = pytest.mark.usefixtures("one_thread")


def smooth_images(n=8, size=32, seed=0, width=None):
    """Bilinearly upsampled 4x4 random images plus 10% noise, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    w = size if width is None else width
    low = torch.rand(n, 3, 4, 4, generator=g)
    x = F.interpolate(low, size=(size, w), mode="bilinear", align_corners=False)
    return (x + 0.1 * torch.rand(n, 3, size, w, generator=g)).clamp(0, 1)


def make_model(size=32):
    """A tiny random CNN with 5 classes, eval mode, its last layer centred on 64 random images."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        m = nn.Sequential(nn.Conv2d(3, 8, 5, stride=2, padding=2), nn.ReLU(),
                          nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(16 * (size // 4) ** 2, 5))
    m.eval().requires_grad_(False)
    with torch.no_grad():
        m[-1].bias -= m(smooth_images(64, size, seed=99)).mean(0)
        m[-1].weight *= 10
        m[-1].bias *= 10
    return m


@pytest.fixture(scope="module")
def setup():
    """(model, x, y): y the model's clean predictions except image 0 (misclassified from the start)."""
    m, x = make_model(), smooth_images()
    with torch.no_grad():
        y = m(x).argmax(1)
    y[0] = (y[0] + 1) % 5
    return m, x, y


def fooled(model, adv, y):
    with torch.no_grad():
        return model(adv).argmax(1) != y


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("seed,restarts", [(0, 1), (5, 2)])
def test_matches_torchattacks(setup, norm, seed, restarts):
    """The same fooled examples and bit-identical images as torchattacks' Square with the same seed.
    Exact equality holds on the CPU in float32: the draws come in the same order and shapes from a
    generator seeded the same, and every float operation (the window profile's float32 accumulation,
    the reductions over the same shapes and memory layouts, the model on the same sub-batches) is
    the reference's."""
    torchattacks = __import__("helpers").require("torchattacks")
    model, x, y = setup
    q = 150
    ref = torchattacks.Square(model, norm=REFERENCE_NORM[norm], eps=EPS[norm], n_queries=q, n_restarts=restarts,
                              p_init=0.8, loss="margin", resc_schedule=True, seed=seed)(x, y)
    ours = SquareAttack(model, norm, EPS[norm], n_queries=q, n_restarts=restarts, seed=seed).perturb(x, y)
    f_ref, f_ours = fooled(model, ref, y), fooled(model, ours, y)
    assert torch.equal(f_ours, f_ref)
    assert 2 <= int(f_ours[1:].sum()) <= 6, f_ours  # the comparison covers fooled and robust examples
    assert torch.equal(ours, ref), (ours - ref).abs().max()


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_bounds_box_and_labels(setup, norm):
    model, x, y = setup
    eps = EPS[norm]
    adv = SquareAttack(model, norm, eps, n_queries=150).perturb(x, y)
    assert adv.shape == x.shape and adv.dtype == x.dtype and not adv.requires_grad
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    d = (adv - x).flatten(1)
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    assert bool((size <= eps * (1 + 1e-6) + 1e-7).all()), size
    f = fooled(model, adv, y)
    with torch.no_grad():
        assert bool((model(adv[f]).argmax(1) != y[f]).all())
    robust = ~f
    robust[0] = True  # misclassified when clean: returned as is
    assert torch.equal(adv[robust], x[robust])
    assert bool(f[1:].any()) and bool(size[1:].gt(0).any())
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_non_square_images(norm):
    """Width != height: the square's side is capped at the shorter side; bounds and box hold."""
    x = smooth_images(3, size=8, width=40, seed=1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 40, 3)).eval().requires_grad_(False)
    with torch.no_grad():
        y = model(x).argmax(1)
    adv = SquareAttack(model, norm, 0.1, n_queries=30, p_init=1.0).perturb(x, y)
    d = (adv - x).flatten(1)
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    # within the bound up to float32 round-off (robust evaluation's tolerance, threat.BOUND_RTOL)
    assert bool((size <= 0.1 * (1 + 1e-5)).all()) and 0 <= float(adv.min()) and float(adv.max()) <= 1


def test_random_state(setup):
    """The global generator is untouched; a seed fixes the output; another seed changes it."""
    model, x, y = setup
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = SquareAttack(model, "linf", EPS["linf"], n_queries=60, seed=1).perturb(x, y)
    assert torch.equal(torch.random.get_rng_state(), before)
    attack = SquareAttack(model, "linf", EPS["linf"], n_queries=60, seed=1)
    b = attack.perturb(x, y)
    assert torch.equal(a, b)
    assert torch.equal(attack.perturb(x, y), a)  # re-seeded at every call
    c = SquareAttack(model, "linf", EPS["linf"], n_queries=60, seed=2).perturb(x, y)
    assert not torch.equal(a, c)
    d = SquareAttack(model, "l2", EPS["l2"], n_queries=20, seed=2).perturb(x, y)
    e = SquareAttack(model, "l2", EPS["l2"], n_queries=20, seed=3).perturb(x, y)
    assert not torch.equal(d, e)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_bad_arguments(setup):
    model, x, y = setup
    with pytest.raises(ValueError, match="norm"):
        SquareAttack(model, "l3", 0.1)
    for eps in (0.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="eps"):
            SquareAttack(model, "linf", eps)
    with pytest.raises(ValueError, match="n_queries"):
        SquareAttack(model, "linf", 0.1, n_queries=0)
    with pytest.raises(TypeError, match="n_queries"):
        SquareAttack(model, "linf", 0.1, n_queries=1.5)
    with pytest.raises(ValueError, match="n_restarts"):
        SquareAttack(model, "linf", 0.1, n_restarts=0)
    for p in (0.0, 1.5):
        with pytest.raises(ValueError, match="p_init"):
            SquareAttack(model, "linf", 0.1, p_init=p)
    with pytest.raises(TypeError, match="seed"):
        SquareAttack(model, "linf", 0.1, seed=None)
    with pytest.raises(TypeError, match="model"):
        SquareAttack(lambda t: t, "linf", 0.1)
    attack = SquareAttack(model, "l2", 0.1, n_queries=5)
    with pytest.raises(ValueError, match="labels"):
        attack.perturb(x, y[:-1])
    with pytest.raises(ValueError, match="labels"):
        attack.perturb(x, torch.full_like(y, 5))  # 5 classes: labels 0..4
    with pytest.raises(TypeError, match="labels"):
        attack.perturb(x, y.float())
    with pytest.raises(ValueError, match="x"):
        attack.perturb(x * 2, y)
    with pytest.raises(ValueError, match="5 pixels high"):
        attack.perturb(x[:, :, :4], y)
    assert SquareAttack(model, "Linf", 0.1).norm == "linf"
