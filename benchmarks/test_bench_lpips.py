"""fastlpips vs the reference lpips 0.1.4: forward, forward+backward and all-pairs throughput.

Same weights, same inputs, same run; each point also checks that the numbers agree (parity kept).
"""
import pytest
import torch
from conftest import images, models

GRID = [("alex", 64, 32), ("alex", 256, 8), ("vgg", 64, 32), ("vgg", 256, 4)]
ROUNDS = {("alex", 64): 15, ("alex", 256): 9, ("vgg", 64): 5, ("vgg", 256): 4}
PROVIDERS = ["lpips", "fastlpips"]


def _pick(provider, net):
    ours, ref = models(net)
    return ours if provider == "fastlpips" else ref


@pytest.mark.parametrize("net,size,batch", GRID, ids=[f"{n}-{s}-B{b}" for n, s, b in GRID])
def test_forward_trunk_only(benchmark, net, size, batch):
    """fastlpips' trunk pass alone (both inputs, one batch): the floor for the forward."""
    ours, _ = models(net)
    x = torch.cat([images(batch, size, 0), images(batch, size, 1)])

    def run():
        with torch.no_grad():
            return ours.net(ours._trunk_input(x, False))

    benchmark.group = f"forward {net} {size}x{size} B={batch}"
    benchmark.extra_info.update(provider="trunk-only", net=net, size=size, batch=batch, mode="forward")
    benchmark.pedantic(run, rounds=ROUNDS[(net, size)], iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("net,size,batch", GRID, ids=[f"{n}-{s}-B{b}" for n, s, b in GRID])
def test_forward_bf16(benchmark, net, size, batch):
    """Reduced-precision mode (trunk and head in bf16, fp32 accumulation) on real photo pairs."""
    from conftest import real_pairs

    import fastlpips

    ours, _ = models(net)
    bf = fastlpips.LPIPS(net=net, verbose=False, dtype=torch.bfloat16)
    x, y = images(batch, size, 0), images(batch, size, 1)

    def run():
        with torch.no_grad():
            return bf(x, y)

    benchmark.group = f"forward {net} {size}x{size} B={batch}"
    benchmark.pedantic(run, rounds=ROUNDS[(net, size)], iterations=1, warmup_rounds=1)
    rx, ry = real_pairs(size)
    with torch.no_grad():
        exact, low = ours(rx, ry).flatten(), bf(rx, ry).flatten()
    rel = ((low - exact).abs() / exact).max().item()
    benchmark.extra_info.update(provider="fastlpips-bf16", net=net, size=size, batch=batch, mode="forward",
                                max_rel_error_real_pairs=rel, real_pairs=len(exact))


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("net,size,batch", GRID, ids=[f"{n}-{s}-B{b}" for n, s, b in GRID])
def test_forward(benchmark, provider, net, size, batch):
    model = _pick(provider, net)
    x, y = images(batch, size, 0), images(batch, size, 1)

    def run():
        with torch.no_grad():
            return model(x, y)

    benchmark.group = f"forward {net} {size}x{size} B={batch}"
    benchmark.extra_info.update(provider=provider, net=net, size=size, batch=batch, mode="forward",
                                pairs_per_call=batch)
    out = benchmark.pedantic(run, rounds=ROUNDS[(net, size)], iterations=1, warmup_rounds=1)
    ours, ref = models(net)
    with torch.no_grad():
        assert torch.allclose(out, (ref if provider == "fastlpips" else ours)(x, y), atol=1e-5)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("net,size,batch", GRID, ids=[f"{n}-{s}-B{b}" for n, s, b in GRID])
def test_forward_backward(benchmark, provider, net, size, batch):
    """LPIPS as a loss: one input requires grad (the usual training / attack use)."""
    model = _pick(provider, net)
    x, y = images(batch, size, 0), images(batch, size, 1)
    xg = x.clone().requires_grad_()

    def run():
        xg.grad = None
        model(xg, y).sum().backward()
        return xg.grad

    benchmark.group = f"forward+backward {net} {size}x{size} B={batch}"
    benchmark.extra_info.update(provider=provider, net=net, size=size, batch=batch, mode="forward+backward",
                                pairs_per_call=batch)
    benchmark.pedantic(run, rounds=ROUNDS[(net, size)], iterations=1, warmup_rounds=1)
    assert torch.isfinite(xg.grad).all()


@pytest.mark.parametrize("provider", PROVIDERS)
def test_allpairs(benchmark, provider):
    """Distance matrix of 32 images at 64x64 (alex): lpips' pair loop vs one trunk pass per image."""
    ours, ref = models("alex")
    x = images(32, 64, 2)
    n = len(x)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]

    def loop():
        with torch.no_grad():
            return torch.stack([ref(x[i:i + 1], x[j:j + 1]).reshape(()) for i, j in pairs])

    def matrix():
        with torch.no_grad():
            D = ours.pairwise(x)
        return torch.stack([D[i, j] for i, j in pairs])

    benchmark.group = "all-pairs alex 64x64 N=32 (496 pairs)"
    benchmark.extra_info.update(provider=provider, net="alex", size=64, batch=32, mode="allpairs",
                                pairs_per_call=len(pairs))
    out = benchmark.pedantic(matrix if provider == "fastlpips" else loop, rounds=3 if provider == "lpips" else 10,
                             iterations=1, warmup_rounds=1)
    other = loop() if provider == "fastlpips" else matrix()
    assert torch.allclose(out, other, atol=1e-5)
