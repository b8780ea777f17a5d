"""Perceptual + texture loss, forward + backward, vs a plain torchvision-style
implementation, same run, same machine. Goal >= 1.3x.

The loss is Uelwer et al.'s pair as ``fastlpips.losses`` defines it: perceptual MSE on VGG-19
relu2_2 / relu5_4 (weights 0.2 / 0.02) plus the texture loss on relu1_2 / relu3_4 / relu5_4
(3e-7 / 1e-6 / 1e-6), Gram matrices of non-overlapping 16x16 patches of every feature map. One step
is the loss of a prediction x (requires grad) against a target y and ``backward()`` to x.

* ``reference``: what one writes with torchvision: ``torchvision.models.vgg19().features``
  (frozen, NCHW), the perceptual loss and the texture loss as two separate modules, each running
  the network on x and on y (four trunk passes per step), the patches' Gram matrices from
  ``F.unfold`` and one ``bmm``;
* ``fastlpips``: ``PerceptualLoss(trunk=vgg) + TextureLoss(trunk=vgg)``: one trunk pass per input
  on the union of the layers (x with a graph, y without), channels_last, Gram matrices from a view
  of the channels_last features and one ``bmm``.

Same (random, seeded) VGG-19 weights on both sides -- the ImageNet weights are not needed for
timing and are not available offline -- and the same inputs; the two losses are checked equal
before timing. Cases: B=4 at 256x256 and B=1 at 512x512 (the default texture layers need >= 256x256
images: relu5_4 is 1/16 of the image and holds one 16x16 patch at 256).

Run: ``FASTLPIPS_OFFLINE=1 .venv/bin/python -m pytest -q benchmarks/test_bench_losses.py
--benchmark-json=benchmarks/results/losses.json`` then ``python benchmarks/report.py
benchmarks/results/losses.json``. ``FASTLPIPS_BENCH_SMOKE=1`` runs one tiny case (B=1 at 32x32, 2x2
patches) to check that the file works.
"""
import os

import pytest
import torch
import torch.nn.functional as F

from fastlpips.losses import PERCEPTUAL_LAYERS, TEXTURE_LAYERS, PerceptualLoss, TextureLoss
from fastlpips.nets.trunks import VGG19, build_trunk

SMOKE = os.environ.get("FASTLPIPS_BENCH_SMOKE") == "1"
CASES = [(1, 32, 2)] if SMOKE else [(4, 256, 16), (1, 512, 16)]  # (batch, size, patch)
ROUNDS = 1 if SMOKE else 3
_CACHE = {}


def trunk() -> VGG19:
    if "vgg" not in _CACHE:
        torch.manual_seed(0)
        _CACHE["vgg"] = build_trunk("vgg19").requires_grad_(False).eval()
    return _CACHE["vgg"]


def images(n, size, seed):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


class TorchvisionLosses:
    """A plain implementation: torchvision's VGG-19 features, two independent losses."""

    def __init__(self, patch):
        import torchvision

        self.vgg = torchvision.models.vgg19(weights=None).features[:36].eval()
        self.vgg.load_state_dict({k.split(".", 1)[1]: v for k, v in trunk().state_dict().items()})
        for p in self.vgg.parameters():
            p.requires_grad_(False)
        self.mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        self.std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        self.idx = {"relu1_2": 3, "relu2_2": 8, "relu3_4": 17, "relu5_4": 35}  # ReLUs in vgg19().features
        self.patch = patch

    def features(self, x, names):
        want = {self.idx[n]: n for n in names}
        h, out = (x - self.mean) / self.std, {}
        for i, layer in enumerate(self.vgg):
            h = layer(h)
            if i in want:
                out[want[i]] = h
            if i == max(want):
                return out

    def gram(self, f):
        n, c = f.shape[:2]
        p = self.patch
        cols = F.unfold(f, kernel_size=p, stride=p)  # (N, C*p*p, L)
        cols = cols.view(n, c, p * p, -1).permute(0, 3, 1, 2).reshape(-1, c, p * p)
        return torch.bmm(cols, cols.transpose(1, 2)) / (p * p)

    def perceptual(self, x, y):
        fx, fy = self.features(x, PERCEPTUAL_LAYERS), self.features(y, PERCEPTUAL_LAYERS)
        return sum(w * F.mse_loss(fx[n], fy[n]) for n, w in PERCEPTUAL_LAYERS.items())

    def texture(self, x, y):
        fx, fy = self.features(x, TEXTURE_LAYERS), self.features(y, TEXTURE_LAYERS)
        return sum(w * (self.gram(fx[n]) - self.gram(fy[n])).pow(2).sum((1, 2)).mean()
                   for n, w in TEXTURE_LAYERS.items())

    def __call__(self, x, y):
        return self.perceptual(x, y) + self.texture(x, y)


def make(provider, patch):
    key = (provider, patch)
    if key not in _CACHE:
        if provider == "reference":
            _CACHE[key] = TorchvisionLosses(patch)
        else:
            vgg = trunk()
            _CACHE[key] = PerceptualLoss(trunk=vgg) + TextureLoss(patch=patch, trunk=vgg)
    return _CACHE[key]


@pytest.mark.parametrize("case", CASES, ids=[f"B{n}-{s}px" for n, s, _ in CASES])
@pytest.mark.parametrize("provider", ["reference", "fastlpips"])
def test_perceptual_texture_fwd_bwd(benchmark, provider, case):
    n, size, patch = case
    x0, y = images(n, size, 1), images(n, size, 2)
    loss = make(provider, patch)
    other = make("fastlpips" if provider == "reference" else "reference", patch)
    with torch.no_grad():
        a, b = float(loss(x0, y)), float(other(x0, y))
    assert abs(a - b) <= 1e-4 * abs(b), (a, b)

    def step():
        x = x0.clone().requires_grad_(True)
        loss(x, y).backward()
        return x.grad

    benchmark.group = f"perceptual+texture fwd+bwd vgg19 {size}x{size} B={n} patch {patch}"
    benchmark.extra_info.update(provider=provider, loss_value=a, weights="random (seeded)",
                                trunk_forward_passes_per_step=4 if provider == "reference" else 2)
    benchmark.pedantic(step, rounds=ROUNDS, iterations=1, warmup_rounds=1)
