"""Narrow threat models (fastlpips.attacks.narrow): L_inf PGD, L_2 PGD and the JPEG L_inf attack.

Bounds and the box on random images, the accuracy drop on the small CNN of examples/attack_demo.py,
the JPEG transform (exact inverses; agreement with advex-uar's differentiable JPEG) and whole-attack
agreement with advex-uar's PGDAttack / JPEGAttack. advex-uar hard-codes CUDA (``.cuda()``,
``device='cuda'``) and float32 constants; ``uar`` runs it on the CPU in the default dtype by
replacing, for the test only, the ``torch`` / ``np`` names of its attack modules with shims that
drop ``device='cuda'`` and give float32 constants in the default dtype, and by making
``Tensor.cuda`` / ``Module.cuda`` no-ops. advex-uar works on the 0..255 scale: images and pixel
bounds go in times 255 and come back divided by 255.
"""
import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastlpips.attacks.narrow import (
    L2PGD,
    JPEGLinf,
    LinfPGD,
    block_dct,
    block_idct,
    jpeg_decode,
    jpeg_encode,
    rgb_to_ycbcr,
    ycbcr_to_rgb,
)
from fastlpips.attacks.threat import ThreatAttack
from helpers import require

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ATTACKS = {"linf": LinfPGD, "l2": L2PGD, "jpeg": JPEGLinf}


def smooth_model(dtype=torch.float64, classes=4, seed=0, size=32):
    """A small random classifier with no max-pool or other ties (its gradients are continuous in the
    input, so two implementations that agree to round-off take the same sign steps)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Tanh(), nn.AvgPool2d(4), nn.Flatten(),
                          nn.Linear(8 * (size // 4) ** 2, classes))
    return m.to(dtype).eval().requires_grad_(False)


def rand_images(n, h=32, w=32, dtype=torch.float64, seed=0, saturate=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, h, w, generator=g, dtype=dtype)
    if saturate:  # saturated corners: the clamps are exercised
        x[:, :, :4, :4] = 0.0
        x[:, :, -4:, -4:] = 1.0
    return x


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def classifier(one_thread, attack_demo):
    """examples/attack_demo.py's CNN (trained once per test run: tests/attacks/conftest.py) and 32
    held-out crops."""
    x, y = attack_demo.crops(8, 1)
    return attack_demo.clf, x, y


# ------------------------------------------------------------------------------------------------
# advex-uar on the CPU
# ------------------------------------------------------------------------------------------------

_FACTORIES = {"rand", "randn", "zeros", "ones", "full", "ones_like", "zeros_like", "as_tensor", "tensor", "empty"}


class _CpuTorch:
    """``torch`` for advex-uar's modules: factories with device='cuda' build on the CPU, and its
    float32 constants (torch.FloatTensor, torch.float32) follow the default dtype."""

    def __getattr__(self, name):
        if name == "FloatTensor":
            return lambda data: torch.tensor(data, dtype=torch.get_default_dtype())
        if name == "float32":
            return torch.get_default_dtype()
        obj = getattr(torch, name)
        if name not in _FACTORIES:
            return obj

        def factory(*a, **k):
            if str(k.get("device", "")).startswith("cuda"):
                k["device"] = "cpu"
            return obj(*a, **k)
        return factory


class _Np:
    def __getattr__(self, name):
        if name == "float32":
            return np.float64 if torch.get_default_dtype() == torch.float64 else np.float32
        return getattr(np, name)


@pytest.fixture
def uar(monkeypatch):
    """advex-uar's attack modules, runnable on the CPU, in float64 (the default dtype is restored)."""
    require("advex_uar")
    import importlib

    mods = {m: importlib.import_module(f"advex_uar.attacks.{m}") for m in ("attacks", "pgd_attack", "jpeg_attack",
                                                                          "jpeg")}
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
    monkeypatch.setattr(nn.Module, "cuda", lambda self, *a, **k: self)
    for mod in mods.values():
        monkeypatch.setattr(mod, "torch", _CpuTorch())
        if hasattr(mod, "np"):
            monkeypatch.setattr(mod, "np", _Np())
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield mods
    finally:
        torch.set_default_dtype(old)


def to_uar_blocks(c):
    """Our coefficient image (N, 1, H, W) (block (i, j), vertical frequency k, horizontal l at
    (8i + k, 8j + l)) -> advex-uar's (N, W/8 * H/8, 8, 8) (it works on transposed images: blocks
    column-major, each indexed [horizontal, vertical])."""
    n, _, h, w = c.shape
    return c.reshape(n, h // 8, 8, w // 8, 8).permute(0, 3, 1, 4, 2).reshape(n, -1, 8, 8)


# ------------------------------------------------------------------------------------------------
# Bounds, box, protocol
# ------------------------------------------------------------------------------------------------

BOUNDS = {"linf": (1 / 255, 8 / 255, 0.3), "l2": (0.1, 1.0, 8.0), "jpeg": (0.05, 0.25, 2.0)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["linf", "l2", "jpeg"])
def test_outputs_respect_bound_and_box(kind, dtype):
    model = smooth_model(dtype)
    x = rand_images(3, dtype=dtype)
    y = torch.tensor([0, 1, 3])
    for bound in BOUNDS[kind]:
        for step in (None, 3 * bound):  # a step longer than the bound exercises the projection
            attack = ATTACKS[kind](model, bound, num_iterations=3, step=step)
            adv = attack(x, y, generator=torch.Generator().manual_seed(1))
            assert isinstance(attack, ThreatAttack) and attack.name == kind
            assert adv.dtype == dtype and adv.shape == x.shape and not adv.requires_grad
            assert float(adv.min()) >= 0 and float(adv.max()) <= 1
            size = attack.last["size"]
            assert size.shape == (3,) and bool(attack.within_bound().all())
            d = (adv - x).flatten(1)
            if kind == "linf":
                own = d.abs().amax(1)
            elif kind == "l2":
                own = d.norm(dim=1)
            else:
                vy, vc = attack.last["coefficients"]
                own = torch.cat([vy.flatten(1), vc.flatten(1)], 1).abs().amax(1)
            torch.testing.assert_close(size, own, rtol=0, atol=0)
            assert bool((own <= bound * (1 + 1e-5) + 1e-6).all())
            assert bool((own > 0).all())


def test_noise_protocol():
    model = smooth_model(torch.float32)
    x, y = rand_images(2, dtype=torch.float32), torch.tensor([0, 2])
    assert (LinfPGD.noise_kind, L2PGD.noise_kind, JPEGLinf.noise_kind) == ("uniform", "normal", "uniform")
    for cls in ATTACKS.values():
        attack = cls(model, num_iterations=2)
        a1 = attack(x, y, generator=torch.Generator().manual_seed(5))
        a2 = attack(x, y, generator=torch.Generator().manual_seed(5))
        z = torch.rand(x.shape, generator=torch.Generator().manual_seed(5)) * 2 - 1 if cls.noise_kind == "uniform" \
            else torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
        a3 = attack(x, y, noise=z)
        torch.testing.assert_close(a1, a2, rtol=0, atol=0)
        torch.testing.assert_close(a1, a3, rtol=0, atol=0)  # the draws are the standard ones
        # zero draws start at x: the same as no random start
        a4 = attack(x, y, noise=torch.zeros_like(x))
        a5 = cls(model, num_iterations=2, random_start=False)(x, y)
        torch.testing.assert_close(a4, a5, rtol=0, atol=0)


def test_l2_random_start_is_uniform_in_the_ball():
    """r = ||delta|| / bound of a point uniform in the d-ball has r^d ~ U(0, 1) (here d = 3)."""
    attack = L2PGD(smooth_model(), 0.5)
    z = torch.randn(20000, 3, 1, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    delta = attack._start(z)
    r = delta.flatten(1).norm(dim=1) / 0.5
    assert float(r.max()) <= 1
    u = (r ** 3).sort().values
    grid = (torch.arange(1, 20001, dtype=torch.float64) - 0.5) / 20000
    assert float((u - grid).abs().max()) < 0.015  # Kolmogorov-Smirnov distance (5 sigma ~ 0.014)
    cos = (delta.flatten(1) * z.flatten(1)).sum(1) / (delta.flatten(1).norm(dim=1) * z.flatten(1).norm(dim=1))
    assert float(cos.min()) > 1 - 1e-12  # the direction is the draw's


def test_model_mode_and_parameters_untouched():
    model = smooth_model(torch.float32).train().requires_grad_(True)
    x, y = rand_images(2, dtype=torch.float32), torch.tensor([1, 0])
    for cls in ATTACKS.values():
        with torch.no_grad():  # works under no_grad (e.g. while scoring)
            cls(model, num_iterations=2)(x, y)
        assert model.training
        assert all(p.requires_grad and p.grad is None for p in model.parameters())
    model.eval()
    LinfPGD(model, num_iterations=1)(x, y)
    assert not model.training


# ------------------------------------------------------------------------------------------------
# Accuracy under attack
# ------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_attacks_lower_accuracy(classifier):
    clf, x, y = classifier
    with torch.no_grad():
        clean = float((clf(x).argmax(1) == y).float().mean())
    assert clean >= 0.8
    for kind, cls in ATTACKS.items():  # perceptual-advex's CIFAR defaults, 20 iterations
        attack = cls(clf)
        adv = attack(x, y, generator=torch.Generator().manual_seed(0))
        assert bool(attack.within_bound().all())
        with torch.no_grad():
            acc = float((clf(adv).argmax(1) == y).float().mean())
        assert acc <= clean - 0.25, (kind, clean, acc)


# ------------------------------------------------------------------------------------------------
# JPEG transform
# ------------------------------------------------------------------------------------------------

def test_jpeg_transforms_are_exact_inverses():
    x = rand_images(2, 32, 48)
    torch.testing.assert_close(ycbcr_to_rgb(rgb_to_ycbcr(x)), x, rtol=0, atol=1e-14)
    ycc = torch.rand(2, 3, 16, 24, dtype=torch.float64)
    torch.testing.assert_close(rgb_to_ycbcr(ycbcr_to_rgb(ycc)), ycc, rtol=0, atol=1e-14)
    torch.testing.assert_close(block_idct(block_dct(x)), x, rtol=0, atol=1e-14)
    torch.testing.assert_close(block_dct(block_idct(x)), x, rtol=0, atol=1e-14)
    # orthonormal (Parseval), and the DC coefficient of a constant block is 8 x its value
    torch.testing.assert_close(block_dct(x).flatten(1).norm(dim=1), x.flatten(1).norm(dim=1), rtol=1e-14, atol=0)
    c = block_dct(torch.full((1, 1, 8, 16), 0.25, dtype=torch.float64))
    assert float(c[0, 0, 0, 0]) == pytest.approx(2.0) and float(c[0, 0, 0, 8]) == pytest.approx(2.0)
    assert float(c[0, 0].abs().sum()) == pytest.approx(4.0)
    # JPEG representation: encode(decode(c)) = c always; decode(encode(x)) = x when x's chroma is
    # constant on 2x2 blocks (4:2:0 keeps nothing finer)
    cy, cc = torch.randn(2, 1, 32, 48, dtype=torch.float64), torch.randn(2, 2, 16, 24, dtype=torch.float64)
    ey, ec = jpeg_encode(jpeg_decode(cy, cc))
    torch.testing.assert_close(ey, cy, rtol=0, atol=1e-12)
    torch.testing.assert_close(ec, cc, rtol=0, atol=1e-12)
    chroma = torch.rand(2, 2, 16, 24, dtype=torch.float64).repeat_interleave(2, -2).repeat_interleave(2, -1)
    x2 = ycbcr_to_rgb(torch.cat([torch.rand(2, 1, 32, 48, dtype=torch.float64), chroma], 1))
    torch.testing.assert_close(jpeg_decode(*jpeg_encode(x2)), x2, rtol=0, atol=1e-13)


def test_block_dct_matches_the_jpeg_formula():
    """advex-uar's loop reference (rshin's differentiable JPEG), on one block in 0..255."""
    jpeg = require("advex_uar.attacks.jpeg")
    b = np.random.default_rng(0).uniform(0, 255, (8, 8))
    ref = jpeg.dct_8x8_ref(b)  # image[x, y] -> result[u, v], u the frequency along x (float32)
    ours = block_dct(torch.from_numpy(b - 128)[None, None])[0, 0].numpy()
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-3)


def test_jpeg_mapping_matches_advex_uar(uar):
    """advex-uar's JPEG(x, rounding_vars = v / eps, eps) adds eps (1/2 + v / (2 eps) - 1/2) = v / 2
    to every quantized coefficient; ours: jpeg_decode(jpeg_encode(x) + v / 2), clamped. They differ
    only by the colour inverse (advex-uar's rounded textbook matrix vs our exact inverse: ~3e-7 on
    [0, 1]). Non-square images check the layout (advex-uar works on transposed images)."""
    n, h, w, eps = 2, 32, 48, 0.25
    x = rand_images(n, h, w)
    g = torch.Generator().manual_seed(3)
    vy = (torch.rand(n, 1, h, w, generator=g, dtype=torch.float64) * 2 - 1) * eps
    vc = (torch.rand(n, 2, h // 2, w // 2, generator=g, dtype=torch.float64) * 2 - 1) * eps
    rounding_vars = [to_uar_blocks(vy / eps), to_uar_blocks(vc[:, :1] / eps), to_uar_blocks(vc[:, 1:] / eps)]
    theirs = uar["jpeg"].JPEG()(255 * x, rounding_vars, torch.full((n,), eps)) / 255
    cy, cc = jpeg_encode(x)
    ours = jpeg_decode(cy + vy / 2, cc + vc / 2).clamp(0, 1)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-6)
    attack = JPEGLinf(smooth_model(), eps)
    torch.testing.assert_close(attack.apply(jpeg_decode(cy, cc), vy, vc), theirs, rtol=0, atol=2e-6)
    # our default keeps x's chroma detail: the same mapping on images that have none
    chroma = torch.rand(n, 2, h // 2, w // 2, dtype=torch.float64).repeat_interleave(2, -2).repeat_interleave(2, -1)
    x2 = ycbcr_to_rgb(torch.cat([torch.rand(n, 1, h, w, dtype=torch.float64), chroma], 1) * 0.6 + 0.2)
    theirs2 = uar["jpeg"].JPEG()(255 * x2, rounding_vars, torch.full((n,), eps)) / 255
    torch.testing.assert_close(attack.apply(x2, vy, vc), theirs2, rtol=0, atol=2e-6)


def test_jpeg_attack_matches_advex_uar(uar):
    """Whole attack, no random start (advex-uar's start has a first-step scaling bug, see the
    module docstring), ``drop_chroma_detail=True`` (advex-uar's output), on a tie-free model and
    images with no saturated region. The two decoders differ by ~3e-7 (the colour inverse), and
    that round-off decides ties: which pixel of a max-pool window gets the gradient (the demo's
    CNN on 8-bit crops with flat regions), and whether the [0, 1] clamp passes the gradient of a
    pixel that decodes to exactly 0 or 1 (a saturated region decodes to 1 +- round-off). Such ties
    flip gradient signs and the runs diverge after one step, in either implementation; they are
    not a difference of algorithm."""
    eps, iters = 0.25, 8  # advex-uar rebuilds its DCT tensors with Python loops on every call
    model = smooth_model()
    x, y = rand_images(2, saturate=False), torch.tensor([0, 3])
    att = uar["jpeg_attack"].JPEGAttack(iters, eps, eps / math.sqrt(iters), 32, rand_init=False, opt="linf")
    theirs = att._forward(lambda z: model(z / 255), 255 * x, y, avoid_target=True, scale_eps=False).detach() / 255
    attack = JPEGLinf(model, eps, num_iterations=iters, random_start=False, drop_chroma_detail=True)
    torch.testing.assert_close(attack(x, y), theirs, rtol=0, atol=2e-6)


# ------------------------------------------------------------------------------------------------
# PGD against advex-uar
# ------------------------------------------------------------------------------------------------

class _ScaledSumCE(nn.Module):
    def forward(self, s, t):
        return 1e8 * F.cross_entropy(s, t, reduction="sum")


def _uar_pgd(uar, model, x, y, eps, step, iters, norm, criterion=None):
    att = uar["pgd_attack"].PGDAttack(iters, 255 * eps, 255 * step, x.shape[-1], norm=norm, rand_init=False)
    if criterion is not None:
        att.criterion = criterion
    return att._forward(lambda z: model(z / 255), 255 * x, y, avoid_target=True, scale_eps=False).detach() / 255


def test_linf_pgd_equals_advex_uar(uar, classifier):
    """No random start, the same step and iterations, float64, the demo's trained CNN: the same
    images up to round-off (advex-uar computes on 0..255 and divides by 255 at the model)."""
    clf, x, y = classifier
    model, x = copy.deepcopy(clf).double(), x.double()
    eps, iters = 8 / 255, 20
    theirs = _uar_pgd(uar, model, x, y, eps, eps / math.sqrt(iters), iters, "linf")
    ours = LinfPGD(model, eps, num_iterations=iters, random_start=False)(x, y)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    assert float((ours - x).abs().amax()) > 0.9 * eps


def test_l2_pgd_equals_advex_uar(uar, classifier):
    """As for L_inf, with one change on advex-uar's side: its step is g / (||g|| + 1e-8) for the
    gradient of the batch-MEAN loss on the 0..255 scale, whose norm is ||g_ours|| / (255 N), of the
    order of 1e-8 for confidently classified images, so there its steps shrink (a batch-size
    dependent artefact). Its criterion is replaced by 1e8 x the summed cross-entropy (same
    direction, the guard now negligible); everything else (step, projection, clamp) is its own."""
    clf, x, y = classifier
    model, x = copy.deepcopy(clf).double(), x.double()
    eps, iters = 1.0, 20
    theirs = _uar_pgd(uar, model, x, y, eps, eps / math.sqrt(iters), iters, "l2", criterion=_ScaledSumCE())
    ours = L2PGD(model, eps, num_iterations=iters, random_start=False)(x, y)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-9)


# ------------------------------------------------------------------------------------------------
# Bad inputs
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["linf", "l2", "jpeg"])
def test_bad_inputs(kind):
    cls = ATTACKS[kind]
    model = smooth_model(torch.float32)
    attack = cls(model, num_iterations=1)
    x, y = rand_images(2, dtype=torch.float32), torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        attack(x * 2 - 0.5, y)
    with pytest.raises(ValueError, match="NaN"):
        attack(torch.full_like(x, float("nan")), y)
    with pytest.raises(ValueError, match="4 dimensions"):
        attack(x[0], y)
    with pytest.raises(TypeError, match="floating"):
        attack((x * 255).to(torch.uint8), y)
    with pytest.raises(TypeError):
        attack(x.numpy(), y)
    with pytest.raises(ValueError, match="shape"):
        attack(x, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="shape"):
        attack(x, y[:, None])
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        attack(x, torch.tensor([0, 4]))
    with pytest.raises(ValueError, match=">= 0"):
        attack(x, torch.tensor([-1, 0]))
    with pytest.raises(TypeError, match="integer"):
        attack(x, y.float())
    with pytest.raises(TypeError, match="Tensor"):
        attack(x, [0, 1])
    for bad_model in (lambda z: model(z)[:, 0], lambda z: model(z)[:, :, None], lambda z: model(z)[:1],
                      lambda z: model(z)[:, :1]):
        with pytest.raises(ValueError, match="logits"):
            cls(bad_model, num_iterations=1)(x, y)
    with pytest.raises(TypeError, match="logits"):
        cls(lambda z: (model(z),), num_iterations=1)(x, y)
    with pytest.raises(ValueError, match="noise"):
        attack(x, y, noise=torch.zeros(2, 3, 16, 16))
    with pytest.raises(ValueError, match="noise"):
        attack(x, y, noise=torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="noise"):
        cls(model, random_start=False)(x, y, noise=torch.zeros(3))  # checked even when unused
    for bound in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="bound"):
            cls(model, bound)
    with pytest.raises(TypeError, match="bound"):
        cls(model, "8/255")
    with pytest.raises(ValueError, match="step"):
        cls(model, step=0.0)
    with pytest.raises(ValueError, match="num_iterations"):
        cls(model, num_iterations=0)
    with pytest.raises((TypeError, ValueError), match="num_iterations"):
        cls(model, num_iterations=2.5)
    with pytest.raises(TypeError, match="random_start"):
        cls(model, random_start=1)
    if kind == "jpeg":
        with pytest.raises(ValueError, match="multiples of 16"):
            attack(rand_images(2, 24, 32, dtype=torch.float32), y)
