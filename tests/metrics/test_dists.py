"""DISTS against the authors' release (dists-pytorch 0.1, DISTS_pytorch) and torchmetrics 1.9.0 on
real photo pairs with the same trunk weights: values (fp32 and fp64), input gradients, the
registry's 'dists'; bad input and bad weight files."""
import hashlib
import shutil

import pytest
import torch

from fastlpips.dists import DISTS, L2Pool, dists_stage
from fastlpips.metrics import create_metric, metric_info
from fastlpips.nets.weights import DISTS_SHA256, WeightError, dists_weight_candidates
from helpers import copy_convs, distort, real_images, require, vgg16_with_weights_of


@pytest.fixture(scope="module")
def ours():
    return DISTS()


@pytest.fixture(scope="module")
def release(ours):
    """The authors' DISTS (DISTS_pytorch) with our trunk weights (its own are downloaded by torchvision)."""
    require("torchvision")
    pt = require("DISTS_pytorch.DISTS_pt")

    original = pt.models.vgg16  # torchvision.models.vgg16 itself
    pt.models.vgg16 = lambda pretrained=False, **kw: original(weights=None)
    try:
        ref = pt.DISTS(load_weights=True)  # alpha/beta from sys.prefix/weights.pt, as installed
    finally:
        pt.models.vgg16 = original
    copy_convs(ours, ref)
    return ref.eval()


@pytest.fixture(scope="module")
def photos():
    x = real_images(64, 4).double()
    return ((x + 1) / 2).float(), ((distort(x, 2) + 1) / 2).float()


def test_equals_the_release_in_fp32_and_fp64(ours, release, photos):
    x, y = photos
    with torch.no_grad():
        got, want = ours(x, y), release(x, y)
    assert got.shape == (4,)
    assert float(((got - want).abs() / want.abs()).max()) <= 1e-5
    o64, r64 = DISTS().double(), release.double()
    copy_convs(ours, o64)
    try:
        with torch.no_grad():
            got64, want64 = o64(x.double(), y.double()), r64(x.double(), y.double())
        assert float(((got64 - want64).abs() / want64.abs()).max()) <= 1e-10
        # the statistics op sums centred values in double: our fp32 is nearer the fp64 value than the
        # release's fp32 (whose covariance E[xy] - mx my cancels): measured 6e-7 vs 4.4e-6
        assert float(((got.double() - got64).abs() / got64).max()) <= 2e-6
    finally:
        release.float()


def test_input_gradients_match_the_release(ours, release, photos):
    x, y = photos
    xa = x.clone().requires_grad_(True)
    xb = x.clone().requires_grad_(True)
    ours(xa, y).sum().backward()
    release(xb, y, require_grad=True).sum().backward()
    rel = (xa.grad - xb.grad).norm() / xb.grad.norm()
    assert float(rel) <= 1e-4


def test_equals_torchmetrics(ours, photos, monkeypatch):
    tmd = require("torchmetrics.functional.image.dists")
    monkeypatch.setattr(tmd, "vgg16", vgg16_with_weights_of(ours))  # torchmetrics' trunk, offline, ours
    x, y = photos
    with torch.no_grad():
        want = tmd.deep_image_structure_and_texture_similarity(x, y, reduction="none")
        got = ours(x, y)
    assert float(((got - want).abs() / want.abs()).max()) <= 1e-5
    torch.testing.assert_close(ours(x, y, reduction="mean"), got.mean())


def test_definition_pieces():
    """L2 pooling halves the size (ceil) with the normalized (0.5, 1, 0.5) outer product; a stage
    of identical features scores alpha + beta; identical images are at distance 0."""
    pool = L2Pool()
    x = torch.rand(1, 2, 7, 6, generator=torch.Generator().manual_seed(0))
    out = pool(x)
    assert out.shape == (1, 2, 4, 3)
    g = torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16
    want = (torch.nn.functional.conv2d(x * x, g.expand(2, 1, 3, 3), stride=2, padding=1, groups=2) + 1e-12).sqrt()
    torch.testing.assert_close(out, want)
    f = torch.rand(2, 5, 4, 4, generator=torch.Generator().manual_seed(1))
    a, b = torch.full((5,), 0.1), torch.full((5,), 0.05)
    torch.testing.assert_close(dists_stage(f, f, a, b), torch.full((2,), 0.75))


def test_identical_images_broadcasting_and_the_registry(ours, photos):
    x, y = photos
    with torch.no_grad():
        assert float(ours(x, x).abs().max()) < 1e-5  # float32 rounding of 1 - (a sum near 1)
        torch.testing.assert_close(ours(x[:1], y), ours(x[:1].expand_as(y), y))
        torch.testing.assert_close(create_metric("dists")(x, y), ours(x, y))
    info = metric_info("dists")
    assert info.lower_better and info.differentiable and info.family == "dists"


def test_bad_input_raises_clearly(ours, photos):
    x, y = photos
    with pytest.raises(ValueError, match=r"x must hold values in \[0, 1\]"):
        ours(x * 2 - 1, y)
    bad = y.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="y contains 1 NaN"):
        ours(x, bad)
    with pytest.raises(ValueError, match="x and y"):
        ours(x, y[..., :32])
    with pytest.raises(ValueError, match="reduction must be one of"):
        ours(x, y, reduction="max")
    with pytest.raises(ValueError, match=r"x of spatial size 16x16 is too small for DISTS.*at least 17x17"):
        ours(x[..., :16, :16], y[..., :16, :16])
    assert ours(x[..., :17, :17], y[..., :17, :17]).shape == (4,)
    with pytest.raises(ValueError, match=r"x must be .*\(N, 3, H, W\)|x must have 3 channels|x must be a 4-D"):
        ours(x[:, :1], y[:, :1])


def test_weight_files_are_checked_before_use(tmp_path):
    src = next(p for p in dists_weight_candidates() if p.is_file())
    assert hashlib.sha256(src.read_bytes()).hexdigest() == DISTS_SHA256
    tampered = tmp_path / "weights.pt"
    shutil.copy(src, tampered)
    with open(tampered, "r+b") as f:  # one byte changed inside the file
        f.seek(200)
        byte = f.read(1)
        f.seek(200)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(WeightError, match=f"have sha256 .* expected {DISTS_SHA256}.*nothing was loaded"):
        DISTS(weights_path=tampered, pnet_rand=True)
    with pytest.raises(WeightError, match="does not exist"):
        DISTS(weights_path=tmp_path / "missing.pt", pnet_rand=True)
    other = tmp_path / "other.pt"
    torch.save({"alpha": torch.ones(1, 1475, 1, 1), "beta": torch.ones(1, 1475, 1, 1)}, other)
    m = DISTS(weights_path=other, weights_sha256=None, pnet_rand=True)  # own weights: shapes still checked
    assert float(m.alpha.sum()) == 1475
    torch.save({"alpha": torch.ones(3)}, other)
    with pytest.raises(WeightError, match="exactly 'alpha' and 'beta'"):
        DISTS(weights_path=other, weights_sha256=None, pnet_rand=True)


def test_torchmetrics_compatible_class_equals_torchmetrics(ours, photos, monkeypatch):
    tmd = require("torchmetrics.functional.image.dists")
    from torchmetrics.image.dists import DeepImageStructureAndTextureSimilarity as TM

    from fastlpips.torchmetrics import DeepImageStructureAndTextureSimilarity as FL

    monkeypatch.setattr(tmd, "vgg16", vgg16_with_weights_of(ours))
    x, y = photos
    for reduction in ("mean", "sum"):
        theirs, mine = TM(reduction=reduction), FL(reduction=reduction)
        for i in (0, 2):
            theirs.update(x[i:i + 2], y[i:i + 2])
            mine.update(x[i:i + 2], y[i:i + 2])
        a, b = mine.compute(), theirs.compute()
        assert a.dtype == b.dtype and float((a - b).abs() / b.abs()) <= 1e-5, (reduction, a, b)
    with pytest.raises(ValueError) as t:
        TM(reduction="none")
    with pytest.raises(ValueError) as o:
        FL(reduction="none")
    assert str(o.value) == str(t.value)
    xs = x.clone().requires_grad_(True)
    value = FL()(xs, y)  # calling it: the batch's value, differentiable
    value.backward()
    assert xs.grad is not None and xs.grad.abs().sum() > 0


def test_reduced_precision_trunk(ours, photos, monkeypatch):
    from fastlpips import precision
    from fastlpips.precision import PrecisionWarning, resolve_dtype

    monkeypatch.setattr(precision, "_WARNED", set())  # the warning is once per process
    x, y = photos
    half = DISTS(dtype="bf16")
    copy_convs(ours, half)
    assert half.compute_dtype == torch.bfloat16 and half.layers[0].weight.dtype == torch.bfloat16
    with torch.no_grad(), pytest.warns(PrecisionWarning) if not _bf16_native() else _nothing():
        got = half(x, y)
    assert got.dtype == torch.float32
    assert float(((got - ours(x, y)).abs() / ours(x, y)).max()) <= 0.05  # bf16 trunk: ~1e-2 relative
    auto = DISTS(dtype="auto", pnet_rand=True)
    assert auto.compute_dtype == resolve_dtype("auto", "cpu", net="vgg")
    assert create_metric("dists", dtype="bf16", pnet_rand=True).module.compute_dtype == torch.bfloat16


def _bf16_native():
    from fastlpips.precision import native_bf16

    return native_bf16("cpu")


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_float16_trunk_keeps_finite_gradients(ours, photos):
    """In float16 the L2 pooling's 1e-12 would underflow (sqrt(0): infinite gradients where a ReLU
    neighbourhood is all zero) and x*x overflow: it runs in float32."""
    x, y = photos
    half = DISTS(dtype="fp16")
    copy_convs(ours, half)
    xg = x[:2].clone().requires_grad_(True)
    with pytest.warns(Warning) if not _bf16_native() else _nothing():
        d = half(xg, y[:2])
    d.sum().backward()
    assert torch.isfinite(d).all() and torch.isfinite(xg.grad).all() and xg.grad.abs().sum() > 0
    assert float(((d - ours(x[:2], y[:2])).abs() / ours(x[:2], y[:2])).max()) <= 0.05
