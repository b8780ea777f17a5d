"""fastlpips.torchmetrics vs torchmetrics 1.9.0's LPIPS, same run, same trunk weights and inputs:
the class's ``update`` on 16 images (64x64 and 256x256, AlexNet) and the functional form called 50
times. Targets (benchmarks/README.md): update >= 1.2x, functional >= 5x.

torchmetrics builds its trunk through torchvision with ImageNet weights; offline, the benchmark
builds it with ``pretrained=False`` (a random init) and copies our trunk's weights in: the numbers
are checked equal (eps='torchmetrics', 1e-6). Its functional form builds a network on every call;
with ``pretrained=False`` that is a random initialization instead of reading 233 MB (alex) from
disk, so its measured time is a lower bound of what users see.
"""
import pytest
import torch
from conftest import images

NET = "alex"
SIZES = [(64, 16, 15), (256, 16, 7)]  # (size, images, rounds)


def _torchmetrics():
    tmf = pytest.importorskip("torchmetrics.functional.image.lpips")
    pytest.importorskip("torchvision")
    original = tmf._get_tv_model_features
    tmf._get_tv_model_features = lambda net, pretrained=False: original(net, pretrained=False)
    return tmf


def _pair(reduction="mean"):
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity as TM

    from fastlpips.torchmetrics import LearnedPerceptualImagePatchSimilarity as FL

    _torchmetrics()
    ours = FL(NET, reduction, eps="torchmetrics")
    theirs = TM(net_type=NET, reduction=reduction)
    theirs.net.net.load_state_dict(ours.net.net.state_dict())
    return ours, theirs


@pytest.mark.parametrize("provider", ["torchmetrics", "fastlpips"])
@pytest.mark.parametrize("size,n,rounds", SIZES, ids=[f"{s}x{s}-N{n}" for s, n, _ in SIZES])
def test_update(benchmark, provider, size, n, rounds):
    ours, theirs = _pair()
    m = ours if provider == "fastlpips" else theirs
    x, y = images(n, size, 0), images(n, size, 1)

    def run():
        m.update(x, y)

    benchmark.group = f"torchmetrics update {NET} {size}x{size} N={n}"
    benchmark.extra_info.update(provider=provider, net=NET, size=size, batch=n, mode="update")
    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=1)
    ours.reset()
    theirs.reset()
    ours.update(x, y)
    theirs.update(x, y)
    torch.testing.assert_close(ours.compute(), theirs.compute(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("provider", ["torchmetrics", "fastlpips"])
def test_functional_50_calls(benchmark, provider):
    tmf = _torchmetrics()
    from fastlpips.torchmetrics import learned_perceptual_image_patch_similarity as ours

    x, y = images(4, 64, 0), images(4, 64, 1)
    fn = ours if provider == "fastlpips" else tmf.learned_perceptual_image_patch_similarity

    def run():
        with torch.no_grad():
            for _ in range(50):
                fn(x, y, NET)

    benchmark.group = f"torchmetrics functional {NET} 64x64 N=4, 50 calls"
    benchmark.extra_info.update(provider=provider, net=NET, size=64, batch=4, mode="functional x50")
    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
