"""The fused head alone, on real LPIPS layer shapes: the reference op sequence (plain autograd,
``fastlpips.reference.lpips_head``) vs each backend. On a machine with a GPU the same suite runs
the GPU backends and records the achieved memory bandwidth (extra_info.gbytes_per_s)."""
import pytest
import torch

from fastlpips.ops.head import lpips_head_map
from fastlpips.reference import lpips_head

# label -> (N, C, H, W) of the features compared
SHAPES = {
    "vgg relu1_2 256x256 B=4": (4, 64, 256, 256),
    "alex relu1 256x256 B=8": (8, 64, 63, 63),
    "vgg relu3_3 64x64 B=32": (32, 256, 16, 16),
}
CPU_PROVIDERS = ["reference", "torch", "cpp"]
GPU_PROVIDERS = ["reference", "cuda", "triton", "cupy"]


def _devices():
    out = [("cpu", p) for p in CPU_PROVIDERS]
    if torch.cuda.is_available():
        out += [("cuda", p) for p in GPU_PROVIDERS]
    return out


def _feats(shape, device, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g).to(device).contiguous(memory_format=torch.channels_last)


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _fn(provider):
    if provider == "reference":
        return lambda a, b, w: lpips_head(a, b, w)
    return lambda a, b, w: lpips_head_map(a, b, w, backend=provider).mean((1, 2, 3))


@pytest.mark.parametrize("device,provider", _devices(), ids=[f"{d}-{p}" for d, p in _devices()])
@pytest.mark.parametrize("label", list(SHAPES))
@pytest.mark.parametrize("mode", ["forward", "forward+backward"])
def test_head(benchmark, device, provider, label, mode):
    from fastlpips import backends

    if provider != "reference" and backends(device)[provider] != "available":
        pytest.skip(backends(device)[provider])
    shape = SHAPES[label]
    f0, f1 = _feats(shape, device, 0), _feats(shape, device, 1)
    w = torch.rand(shape[1], device=device)
    fn = _fn(provider)
    if mode == "forward":
        def run():
            with torch.no_grad():
                out = fn(f0, f1, w)
            _sync(device)
            return out
        moved = 2 * f0.numel() * f0.element_size()
    else:
        a, b = f0.clone().requires_grad_(), f1.clone().requires_grad_()

        def run():
            a.grad = b.grad = None
            fn(a, b, w).sum().backward()
            _sync(device)
            return a.grad
        moved = 6 * f0.numel() * f0.element_size()  # read f0, f1 twice, write two gradients
    benchmark.group = f"head {mode} {label} [{device}]"
    benchmark.extra_info.update(provider=provider, device=device, mode=mode, shape=list(shape))
    rounds = 5 if provider == "reference" and shape[2] == 256 else 10
    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=1)
    if benchmark.stats is not None:  # None with --benchmark-disable
        benchmark.extra_info["gbytes_per_s"] = moved / benchmark.stats.stats.median / 1e9
