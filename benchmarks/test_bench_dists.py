"""fastlpips.DISTS vs the authors' DISTS_pytorch (dists-pytorch 0.1) and torchmetrics 1.9.0's DISTS
network, same run, same trunk weights (ours copied into theirs: their own are downloaded through
torchvision) and inputs: forward and forward+backward (the loss use) on 16 images 64x64 and 4
images 256x256. Each point checks that the numbers agree (1e-5 relative). Target
(benchmarks/README.md): >= 1.2x against both at both sizes.

torchmetrics' metric class and functional form build a new network on every update/call; this
benchmark times its network module built once, the fair per-forward comparison.

``test_dists_statistics`` times the six stages' statistics alone on the same inputs' features:
the op (``fastlpips.ops.stats``, auto backend) vs the release's arithmetic in plain torch
(``reference.dists_stage``), forward and forward+backward; its time over the whole forward's is
the op's share of DISTS (benchmarks/README.md).
"""
import pytest
import torch
from conftest import images

GRID = [(64, 16, 7), (256, 4, 5)]  # (size, images, rounds)
PROVIDERS = ["DISTS_pytorch", "torchmetrics", "fastlpips"]
_CACHE = {}


def _copy_convs(src, dst):
    a = [m for m in src.modules() if isinstance(m, torch.nn.Conv2d)]
    b = [m for m in dst.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        for m, n in zip(a, b):
            n.weight.copy_(m.weight)
            n.bias.copy_(m.bias)


def _models():
    if not _CACHE:
        pytest.importorskip("torchvision")
        pt = pytest.importorskip("DISTS_pytorch.DISTS_pt")
        tmd = pytest.importorskip("torchmetrics.functional.image.dists")
        import torchvision

        from fastlpips.dists import DISTS

        ours = DISTS()
        original = torchvision.models.vgg16
        pt.models.vgg16 = lambda pretrained=False, **kw: original(weights=None)
        tmd.vgg16 = lambda weights=None, **kw: original(weights=None)
        try:
            release = pt.DISTS(load_weights=True)
            tm = tmd.DISTSNetwork()
        finally:
            pt.models.vgg16 = original
            tmd.vgg16 = original
        _copy_convs(ours, release)
        _copy_convs(ours, tm)
        _CACHE.update({"fastlpips": ours, "DISTS_pytorch": release.eval(), "torchmetrics": tm.eval()})
    return _CACHE


def _call(provider, model, x, y, grad):
    if provider == "fastlpips":
        return model(x, y)
    return model(x, y, require_grad=grad)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("mode", ["forward", "forward+backward"])
@pytest.mark.parametrize("size,n,rounds", GRID, ids=[f"{s}x{s}-N{n}" for s, n, _ in GRID])
def test_dists(benchmark, provider, mode, size, n, rounds):
    models = _models()
    model = models[provider]
    x, y = (images(n, size, 0) + 1) / 2, (images(n, size, 1) + 1) / 2
    grad = mode == "forward+backward"

    def run():
        if grad:
            xg = x.clone().requires_grad_(True)
            _call(provider, model, xg, y, True).sum().backward()
            return xg.grad
        with torch.no_grad():
            return _call(provider, model, x, y, False)

    benchmark.group = f"DISTS {mode} {size}x{size} N={n}"
    benchmark.extra_info.update(provider=provider, size=size, batch=n, mode=mode)
    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=1)
    with torch.no_grad():
        got = _call(provider, model, x, y, False).reshape(-1)
        want = models["fastlpips"](x, y)
    assert float(((got - want).abs() / want.abs()).max()) <= 1e-5


@pytest.mark.parametrize("provider", ["release-arithmetic", "fastlpips-op"])
@pytest.mark.parametrize("mode", ["forward", "forward+backward"])
@pytest.mark.parametrize("size,n,rounds", GRID, ids=[f"{s}x{s}-N{n}" for s, n, _ in GRID])
def test_dists_statistics(benchmark, provider, mode, size, n, rounds):
    from fastlpips.reference import dists_stage

    model = _models()["fastlpips"]
    x, y = (images(n, size, 0) + 1) / 2, (images(n, size, 1) + 1) / 2
    with torch.no_grad():
        fx, fy = model.features(x), model.features(y)
    weights = model.stage_weights()
    grad = mode == "forward+backward"

    def stats(a, b):
        if provider == "fastlpips-op":
            return model.from_features(a, b)
        return 1 - torch.stack([dists_stage(p, q, al, be) for p, q, (al, be) in zip(a, b, weights)]).sum(0)

    def run():
        if grad:
            ys = [f.clone().requires_grad_(True) for f in fy]
            stats(fx, ys).sum().backward()
            return ys[0].grad
        with torch.no_grad():
            return stats(fx, fy)

    benchmark.group = f"DISTS statistics {mode} {size}x{size} N={n}"
    benchmark.extra_info.update(provider=provider, size=size, batch=n, mode=mode)
    benchmark.pedantic(run, rounds=rounds * 3, iterations=1, warmup_rounds=1)
    with torch.no_grad():
        want = 1 - torch.stack([dists_stage(p, q, al, be) for p, q, (al, be) in zip(fx, fy, weights)]).sum(0)
        assert float(((stats(fx, fy) - want).abs() / want.abs()).max()) <= 1e-5
