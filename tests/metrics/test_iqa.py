"""fastlpips.iqa (PSNR, SSIM, MS-SSIM, GMSD) against scikit-image, piq and torchmetrics on real photos.

The photos are crops of scikit-image's bundled astronaut / chelsea / coffee, each with three real
distortions: Gaussian noise, Gaussian blur (PIL) and JPEG at quality 20 (PIL). The references
(test dependencies, pinned in requirements-dev.txt: piq 0.8.0, torchmetrics 1.9.0) are called
with the options that give fastlpips' conventions (see the fastlpips.iqa docstrings). Every
tolerance below is stated where it is used, with the measured difference it covers.
"""
import functools
import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastlpips import iqa
from helpers import require

skdata = require("skimage.data")
skmetrics = require("skimage.metrics")

DISTORTIONS = ("noise", "blur", "jpeg")


def _distort(a: np.ndarray, kind: str, seed: int) -> np.ndarray:
    """uint8 H x W x 3 -> distorted float64 image in [0, 1]."""
    from PIL import Image, ImageFilter

    if kind == "noise":
        rng = np.random.default_rng(seed)
        return np.clip(a / 255.0 + rng.normal(0.0, 0.05, a.shape), 0.0, 1.0)
    if kind == "blur":
        return np.asarray(Image.fromarray(a).filter(ImageFilter.GaussianBlur(1.5)), dtype=np.float64) / 255.0
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=20)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"), dtype=np.float64) / 255.0


@functools.lru_cache(maxsize=None)
def _pairs_np(h: int, w: int, every: bool):
    """(references, distorted) lists of H x W x 3 float64 arrays in [0, 1]: each photo with every
    distortion (9 pairs), or with one distortion each (3 pairs: noise, blur, jpeg)."""
    xs, ys = [], []
    for i, photo in enumerate((skdata.astronaut(), skdata.chelsea(), skdata.coffee())):
        y0, x0 = 30 + 11 * i, 50 + 13 * i
        a = np.ascontiguousarray(photo[y0:y0 + h, x0:x0 + w, :3])
        for j, kind in enumerate(DISTORTIONS if every else DISTORTIONS[i:i + 1]):
            xs.append(a / 255.0)
            ys.append(_distort(a, kind, seed=3 * i + j))
    return xs, ys


def pairs(h, w, dtype=torch.float64, every=True):
    """The pairs of :func:`_pairs_np` as two N x 3 x H x W tensors, plus the numpy lists."""
    xs, ys = _pairs_np(h, w, every)

    def t(lst):
        return torch.from_numpy(np.stack(lst)).permute(0, 3, 1, 2).contiguous().to(dtype)

    return t(xs), t(ys), xs, ys


def gray(x):
    return x.mean(dim=1, keepdim=True)


def assert_close(actual, expected, atol, rtol=0.0, what=""):
    def f64(v):  # python floats would become float32 through torch.as_tensor
        return v.double() if isinstance(v, torch.Tensor) else torch.tensor(np.asarray(v, dtype=np.float64))

    actual, expected = f64(actual), f64(expected)
    diff = (actual - expected).abs()
    bad = diff > atol + rtol * expected.abs()
    assert not bad.any(), (f"{what}: max |diff| {diff.max().item():.3g} (atol {atol:g}, rtol {rtol:g})\n"
                           f"actual   {actual.tolist()}\nexpected {expected.tolist()}")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These images are tiny: intra-op threads only add overhead, which grows badly on a loaded
    2-core machine (measured 20-30x slower gradchecks); restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def piq():
    return require("piq", reason="piq 0.8.0 is a test dependency (requirements-dev.txt)")


@pytest.fixture(scope="module")
def tm():
    return require("torchmetrics.functional.image",
                               reason="torchmetrics 1.9.0 is a test dependency (requirements-dev.txt)")


# --- PSNR --------------------------------------------------------------------------------------

def test_psnr_matches_references(piq, tm):
    x, y, xs, ys = pairs(64, 72)
    ours = iqa.psnr(x, y)
    assert ours.shape == (9,) and ours.dtype == torch.float64
    sk = [skmetrics.peak_signal_noise_ratio(a, b, data_range=1.0) for a, b in zip(xs, ys)]
    # scikit-image: the same float64 formula (measured: 0.0)
    assert_close(ours, sk, atol=1e-10, what="psnr vs skimage")
    # torchmetrics converts ln -> dB with a float32 10 / ln(10): relative 1e-7 (measured 1.6e-6 dB)
    assert_close(ours, tm.peak_signal_noise_ratio(x, y, data_range=1.0, dim=(1, 2, 3), reduction="none"),
                 atol=0.0, rtol=1e-6, what="psnr vs torchmetrics")
    # piq adds 1e-8 to the MSE (measured: 1.4e-4 dB without accounting for it); accounted for: float64 rounding
    with_eps = -10.0 * torch.log10(10.0 ** (-ours / 10.0) + 1e-8)
    assert_close(with_eps, piq.psnr(x, y, data_range=1.0, reduction="none"), atol=1e-10, what="psnr vs piq")


def test_psnr_identical_images_is_inf_with_zero_gradient():
    x = pairs(16, 16)[0][:2].clone().requires_grad_(True)
    p = iqa.psnr(x, x.detach())
    assert torch.isinf(p).all() and (p > 0).all()
    p.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


# --- SSIM --------------------------------------------------------------------------------------

def _skimage_ssim(xs, ys, dtype=np.float64):
    return [skmetrics.structural_similarity(a.astype(dtype), b.astype(dtype), data_range=1.0, channel_axis=2,
                                            gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
            for a, b in zip(xs, ys)]


def test_ssim_matches_references_float64(piq, tm):
    x, y, xs, ys = pairs(64, 72)
    ours = iqa.ssim(x, y)
    assert ours.shape == (9,) and ours.dtype == torch.float64
    assert 0.3 < ours.min() and ours.max() < 0.99  # real, distinct distortions
    # float64 rounding only (measured: skimage 6.9e-15, piq 1.8e-14, torchmetrics 2.2e-14)
    assert_close(ours, _skimage_ssim(xs, ys), atol=1e-12, what="ssim vs skimage")
    assert_close(ours, piq.ssim(x, y, data_range=1.0, downsample=False, reduction="none"), atol=1e-12,
                 what="ssim vs piq(downsample=False)")
    # torchmetrics 1.9.0 averages its whole reflection-padded map; its interior is the 'valid' map
    _, full = tm.structural_similarity_index_measure(x, y, data_range=1.0, reduction="none", return_full_image=True)
    assert_close(ours, full[..., 5:-5, 5:-5].mean(dim=(1, 2, 3)), atol=1e-12, what="ssim vs torchmetrics' map, cropped")


def test_ssim_float32_is_close_to_float64_references(piq):
    x, y, xs, ys = pairs(64, 72, torch.float32)
    ours = iqa.ssim(x, y)
    assert ours.dtype == torch.float32
    truth = torch.tensor(_skimage_ssim(xs, ys), dtype=torch.float64)
    # float32 rounding, small thanks to the mean shift (measured 1.2e-7; scikit-image's float32 is off
    # by 2.1e-6 and piq's by 3.8e-5: plain E[x^2] - E[x]^2)
    assert_close(ours, truth, atol=1e-6, what="float32 ssim vs float64 skimage")
    assert_close(piq.ssim(x, y, data_range=1.0, downsample=False, reduction="none"), truth, atol=3e-4,
                 what="piq's float32 ssim vs float64")


def test_ssim_and_piq_default_downsampling(piq):
    """piq's default downsample=True pools by f = max(1, round(min(H, W) / 256)) first (f = 2 here)."""
    a = skdata.astronaut()[40:424, 60:460].astype(np.float64) / 255.0  # 384 x 400
    x = torch.from_numpy(a).permute(2, 0, 1)[None].mean(dim=1, keepdim=True)
    y = torch.from_numpy(_distort(skdata.astronaut()[40:424, 60:460], "jpeg", 0)).permute(2, 0, 1)[None]
    y = y.mean(dim=1, keepdim=True)
    ref = piq.ssim(x, y, data_range=1.0, reduction="none")  # downsample=True (default)
    assert_close(iqa.ssim(F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)), ref, atol=1e-12, what="pooled ssim vs piq default")
    assert abs(float(iqa.ssim(x, y)) - float(ref)) > 1e-3  # without pooling it is another number


def test_ssim_options_match_skimage():
    x, y, xs, ys = pairs(40, 44, every=False)
    ours = iqa.ssim(x, y, win_size=7, sigma=0.8, k1=0.02, k2=0.05)
    # scikit-image always truncates its Gaussian at 3.5 sigma (its `truncate` argument is overridden):
    # its window has 2 * int(3.5 * sigma + 0.5) + 1 taps, 7 for sigma = 0.8
    sk = [skmetrics.structural_similarity(a, b, data_range=1.0, channel_axis=2, gaussian_weights=True, sigma=0.8,
                                          use_sample_covariance=False, K1=0.02, K2=0.05)
          for a, b in zip(xs, ys)]
    assert_close(ours, sk, atol=1e-12, what="ssim(win_size=7, sigma=0.8, k1, k2) vs skimage")


# --- MS-SSIM -------------------------------------------------------------------------------------

def test_ms_ssim_matches_piq(piq):
    # 176 x 192: every pooled size is even, where piq's replicate padding plays no part
    x, y, _, _ = pairs(176, 192, every=False)
    ours = iqa.ms_ssim(x, y)
    assert ours.shape == (3,) and 0.8 < ours.min() and ours.max() < 1
    # float64 rounding (measured 4.4e-15)
    assert_close(ours, piq.multi_scale_ssim(x, y, data_range=1.0, reduction="none"), atol=1e-12,
                 what="ms_ssim vs piq")
    ours32 = iqa.ms_ssim(x.float(), y.float())
    assert ours32.dtype == torch.float32
    assert_close(ours32, ours, atol=1e-6, what="float32 ms_ssim vs float64")  # measured 1.0e-7 (piq's: 1.5e-6)


def test_ms_ssim_against_torchmetrics_odd_size(tm):
    """One channel (torchmetrics averages cs over channels before the product), odd size (both drop
    the odd row/column when pooling). torchmetrics' last-scale SSIM averages its reflection-padded
    map; built from its cropped maps, the value is ours."""
    x, y, _, _ = pairs(181, 199, every=False)
    x, y = gray(x), gray(y)
    ours = iqa.ms_ssim(x, y)
    # the border positions of the 11 x 12 last scale (measured 2.5e-4)
    assert_close(ours, tm.multiscale_structural_similarity_index_measure(x, y, data_range=1.0, reduction="none"),
                 atol=1e-3, what="ms_ssim vs torchmetrics default")
    terms = []
    for j, w in enumerate(iqa.MS_SSIM_WEIGHTS):
        if j:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
        if j < 4:
            _, cs = tm.structural_similarity_index_measure(x, y, data_range=1.0, reduction="none",
                                                           return_contrast_sensitivity=True)
        else:
            _, full = tm.structural_similarity_index_measure(x, y, data_range=1.0, reduction="none",
                                                             return_full_image=True)
            cs = full[..., 5:-5, 5:-5].mean(dim=(1, 2, 3))
        terms.append(torch.relu(cs) ** w)
    assert_close(ours, torch.stack(terms).prod(dim=0), atol=1e-12, what="ms_ssim vs torchmetrics' cropped maps")


def test_ms_ssim_minimum_size():
    assert iqa.ms_ssim_min_size() == 176
    x = torch.rand(1, 1, 176, 180, dtype=torch.float64)
    assert iqa.ms_ssim(x, x).item() == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match=r"175x180 is too small for MS-SSIM .* at least 176x176"):
        iqa.ms_ssim(x[..., :175, :], x[..., :175, :])
    with pytest.raises(ValueError, match="at least 48x48"):
        iqa.ms_ssim(x[..., :47, :47], x[..., :47, :47], win_size=3)
    assert iqa.ms_ssim(x[..., :12, :12], x[..., :12, :12], win_size=3, weights=(0.5, 0.3, 0.2)).item() == \
        pytest.approx(1.0)


# --- GMSD --------------------------------------------------------------------------------------

def _gmsd_matlab(a: np.ndarray, b: np.ndarray) -> float:
    """The authors' GMSD.m (Xue et al.) in numpy, on 0..255 data with T = 170 and std2 (n - 1)."""
    def lum(im):
        return (im * 255.0) @ np.array([0.299, 0.587, 0.114])

    def down(im):  # conv2(Y, ones(2) / 4, 'same'), then Y(1:2:end, 1:2:end)
        p = np.pad(im, ((0, 1), (0, 1)))
        return ((p[:-1, :-1] + p[1:, :-1] + p[:-1, 1:] + p[1:, 1:]) / 4.0)[::2, ::2]

    def grad(im):  # conv2 with [1 0 -1; 1 0 -1; 1 0 -1] / 3 and its transpose, 'same' (zero padding)
        p = np.pad(im, 1)
        gx = sum(p[i:i + im.shape[0], 2:] - p[i:i + im.shape[0], :-2] for i in range(3)) / 3.0
        gy = sum(p[2:, i:i + im.shape[1]] - p[:-2, i:i + im.shape[1]] for i in range(3)) / 3.0
        return np.sqrt(gx ** 2 + gy ** 2)

    g1, g2 = grad(down(lum(a))), grad(down(lum(b)))
    q = (2 * g1 * g2 + 170.0) / (g1 ** 2 + g2 ** 2 + 170.0)
    return float(np.std(q, ddof=1))


@pytest.mark.parametrize("size", [(64, 72), (63, 71)])
def test_gmsd_matches_piq_and_matlab(piq, size):
    x, y, xs, ys = pairs(*size)
    ours = iqa.gmsd(x, y)
    assert ours.shape == (9,) and 0.01 < ours.min() and ours.max() < 0.3
    # float64 rounding (measured 2.8e-17; the GMSD.m port below: 9.7e-17)
    assert_close(ours, piq.gmsd(x, y, data_range=1.0, reduction="none"), atol=1e-14, what="gmsd vs piq")
    assert_close(iqa.gmsd(gray(x), gray(y)), piq.gmsd(gray(x), gray(y), reduction="none"), atol=1e-14,
                 what="one-channel gmsd vs piq")
    # the MATLAB code's std2 divides by n - 1 (n = the downsampled map's size)
    n = math.ceil(size[0] / 2) * math.ceil(size[1] / 2)
    matlab = [_gmsd_matlab(a, b) for a, b in zip(xs, ys)]
    assert_close(ours * math.sqrt(n / (n - 1)), matlab, atol=1e-12, what="gmsd vs GMSD.m")
    # float32: measured 3e-8
    assert_close(iqa.gmsd(x.float(), y.float()), ours, atol=1e-6, what="float32 gmsd vs float64")


# --- shared properties -----------------------------------------------------------------------------

METRICS = {
    "psnr": (iqa.psnr, {}),
    "ssim": (iqa.ssim, {}),
    "ms_ssim": (iqa.ms_ssim, {"win_size": 3, "weights": (0.3, 0.4, 0.3)}),
    "gmsd": (iqa.gmsd, {}),
    "uqi": (iqa.uqi, {}),
}


@pytest.mark.parametrize("chunk", [None, 1], ids=["one-pass", "per-image-passes"])
@pytest.mark.parametrize("name", list(METRICS))
def test_batch_equals_single_images_and_broadcasts(name, chunk, monkeypatch):
    """Also with the SSIM passes cut into one image each (``_SSIM_CHUNK_BYTES``, the path of large images)."""
    if chunk is not None:
        monkeypatch.setattr(iqa, "_SSIM_CHUNK_BYTES", chunk)
    fn, kw = METRICS[name]
    x, y, _, _ = pairs(40, 44)
    batch = fn(x, y, **kw)
    single = torch.cat([fn(x[i:i + 1], y[i:i + 1], **kw) for i in range(len(x))])
    assert_close(batch, single, atol=1e-12, what=f"{name}: batch vs per image")
    # a batch of 1 broadcasts against N (both ways)
    assert_close(fn(x[:1], y, **kw), torch.cat([fn(x[:1], y[i:i + 1], **kw) for i in range(len(y))]), atol=1e-12,
                 what=f"{name}: broadcast x")
    assert_close(fn(x, y[:1], **kw), torch.cat([fn(x[i:i + 1], y[:1], **kw) for i in range(len(x))]), atol=1e-12,
                 what=f"{name}: broadcast y")
    assert_close(fn(x, y, reduction="mean", **kw), batch.mean(), atol=1e-12, what=f"{name}: mean")
    assert_close(fn(x, y, reduction="sum", **kw), batch.sum(), atol=1e-12, what=f"{name}: sum")
    # data_range: 0..255 images with data_range=255 give the same numbers
    assert_close(fn(x * 255, y * 255, 255.0, **kw), batch, atol=1e-9, what=f"{name}: data_range=255")


@pytest.mark.parametrize("name", list(METRICS))
def test_gradcheck(name):
    fn, kw = METRICS[name]
    g = torch.Generator().manual_seed(0)
    # ms_ssim (the slowest): 3 scales of a 3 x 3 window need 12 x 12; one image of 2 channels
    shape = (1, 2, 13, 14) if name == "ms_ssim" else (2, 3, 11, 12)
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    # y near x keeps every MS-SSIM term positive (a clamped term has a zero gradient)
    y = (x + 0.1 * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    small = {"win_size": 5} if name == "ssim" else {}
    x.requires_grad_(True)
    y.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: fn(a, b, **kw, **small), (x, y), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_gradients_are_finite_at_degenerate_points():
    x = torch.rand(1, 3, 24, 26, dtype=torch.float64)
    flat = torch.full_like(x, 0.5)
    for fn, a, b, kw in [
        (iqa.gmsd, x, x, {}),  # identical images: GMSD = 0 (sqrt at 0)
        (iqa.gmsd, flat, flat + 0.1, {}),  # flat images: zero gradient magnitudes (sqrt at 0)
        (iqa.ms_ssim, x, 1 - x, {"win_size": 3, "weights": (0.5, 0.5)}),  # negative cs: clamped to 0
        (iqa.ssim, x, x, {}),
    ]:
        a = a.clone().requires_grad_(True)
        v = fn(a, b, **kw)
        assert torch.isfinite(v).all()
        (g,) = torch.autograd.grad(v.sum(), a)
        assert torch.isfinite(g).all(), fn.__name__
    assert iqa.gmsd(x, x).item() == 0.0
    assert iqa.ms_ssim(x, 1 - x, win_size=3, weights=(0.5, 0.5)).item() == 0.0


@pytest.mark.parametrize("name", list(METRICS))
def test_dtypes_empty_batch_and_device(name, device):
    fn, kw = METRICS[name]
    x, y, _, _ = pairs(40, 44, every=False)
    ref = fn(x, y, **kw)
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # float32 convolutions in full precision on CUDA (see iqa's docstring)
    try:
        out = fn(x.to(device, torch.float32), y.to(device, torch.float32), **kw)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    assert out.device.type == device.type and out.dtype == torch.float32
    assert_close(out.cpu(), ref, atol=1e-4, rtol=1e-5, what=f"{name} float32 on {device} vs float64")
    half = fn(x.to(device, torch.bfloat16), y.to(device, torch.bfloat16), **kw)  # computed in float32
    assert half.dtype == torch.bfloat16 and torch.isfinite(half).all()
    empty = fn(x[:0], y[:0], **kw)
    assert empty.shape == (0,) and empty.dtype == torch.float64


def _rand(*shape, dtype=torch.float32):
    return torch.rand(*shape, dtype=dtype)


BAD = [
    # (kwargs of the call, exception, message regex)
    (dict(x=np.zeros((1, 3, 16, 16)), y=_rand(1, 3, 16, 16)), TypeError, r"x must be a torch.Tensor"),
    (dict(x=_rand(3, 16, 16), y=_rand(3, 16, 16)), ValueError, r"x must have 4 dimensions"),
    (dict(x=_rand(1, 3, 16, 16), y=_rand(1, 3, 16, 16).mul(255).to(torch.uint8)), TypeError,
     r"y must be a floating-point tensor, got dtype torch.uint8; .*data_range=255"),
    (dict(x=_rand(1, 3, 16, 16), y=_rand(1, 1, 16, 16)), ValueError, r"same channel count and spatial size"),
    (dict(x=_rand(1, 3, 16, 16), y=_rand(1, 3, 16, 17)), ValueError, r"same channel count and spatial size"),
    (dict(x=_rand(2, 3, 16, 16), y=_rand(3, 3, 16, 16)), ValueError, r"batch sizes 2 and 3"),
    (dict(x=_rand(1, 3, 16, 16), y=_rand(1, 3, 16, 16, dtype=torch.float64)), TypeError, r"different dtypes"),
    (dict(x=_rand(1, 0, 16, 16), y=_rand(1, 0, 16, 16)), ValueError, r"x has no channels"),
    (dict(x=_rand(1, 3, 16, 16), y=_rand(1, 3, 16, 16), data_range=0), ValueError, r"data_range must be > 0, got 0"),
    (dict(x=_rand(1, 3, 16, 16), y=_rand(1, 3, 16, 16), data_range=float("nan")), ValueError, r"data_range"),
    (dict(x=_rand(1, 3, 16, 16), y=_rand(1, 3, 16, 16), reduction="avg"), ValueError, r"reduction must be one of"),
]


@pytest.mark.parametrize("name", list(METRICS))
@pytest.mark.parametrize("kw, exc, msg", BAD)
def test_bad_inputs_common(name, kw, exc, msg):
    fn, options = METRICS[name]
    kw = dict(kw)
    with pytest.raises(exc, match=msg):
        fn(kw.pop("x"), kw.pop("y"), **{**options, **kw})


@pytest.mark.parametrize("fn, kw, exc, msg", [
    (iqa.ssim, dict(win_size=10), ValueError, r"win_size must be an odd integer, got 10"),
    (iqa.ssim, dict(win_size=1.5), TypeError, r"win_size must be an integer"),
    (iqa.ssim, dict(win_size=0), ValueError, r"win_size must be >= 1"),
    (iqa.ssim, dict(sigma=-1.0), ValueError, r"sigma must be > 0"),
    (iqa.ssim, dict(k1=0.0), ValueError, r"k1 must be > 0"),
    (iqa.ssim, dict(k2="0.03"), TypeError, r"k2 must be a number"),
    (iqa.ssim, dict(win_size=17), ValueError, r"16x16 is too small for SSIM with win_size=17 .* at least 17x17"),
    (iqa.ms_ssim, dict(weights=()), ValueError, r"weights must be a non-empty sequence"),
    (iqa.ms_ssim, dict(weights=(0.5, -0.5)), ValueError, r"weights\[1\] must be > 0"),
    (iqa.ms_ssim, dict(), ValueError, r"16x16 is too small for MS-SSIM with 5 scales and win_size=11"),
    (iqa.gmsd, dict(c=0.0), ValueError, r"c must be > 0"),
])
def test_bad_options(fn, kw, exc, msg):
    x = _rand(1, 3, 16, 16)
    with pytest.raises(exc, match=msg):
        fn(x, x, **kw)


def test_gmsd_refuses_other_channel_counts():
    with pytest.raises(ValueError, match=r"1 \(luminance\) or 3 \(RGB\) channels for GMSD"):
        iqa.gmsd(_rand(1, 4, 16, 16), _rand(1, 4, 16, 16))



# --- UQI ---------------------------------------------------------------------------------------

def _uqi_loop(a: np.ndarray, b: np.ndarray, k: int = 8) -> float:
    """Wang & Bovik's definition written out: every k x k window inside the image, population
    statistics, Q = 4 s_xy m_x m_y / ((s_x^2 + s_y^2)(m_x^2 + m_y^2)), img_qi.m's cases where both
    windows are flat (2 m_x m_y / (m_x^2 + m_y^2), or 1 when both are 0); the mean over windows."""
    h, w = a.shape
    vals = []
    for i in range(h - k + 1):
        for j in range(w - k + 1):
            p, q = a[i:i + k, j:j + k].ravel(), b[i:i + k, j:j + k].ravel()
            mp, mq = p.mean(), q.mean()
            if p.min() == p.max() and q.min() == q.max():
                vals.append(2 * mp * mq / (mp * mp + mq * mq) if mp * mp + mq * mq else 1.0)
                continue
            vals.append(4 * ((p - mp) * (q - mq)).mean() * mp * mq / ((p.var() + q.var()) * (mp * mp + mq * mq)))
    return float(np.mean(vals))


def test_uqi_is_the_papers_definition():
    x, y, xs, ys = pairs(24, 27, every=False)
    got = iqa.uqi(x, y)
    want = [np.mean([_uqi_loop(a[..., c], b[..., c]) for c in range(3)]) for a, b in zip(xs, ys)]
    assert_close(got, want, atol=1e-12, what="uqi vs the window loop")
    assert_close(iqa.uqi(x, x), torch.ones(len(x)), atol=1e-12, what="identical")


def test_uqi_flat_regions_inside_textured_images():
    """Saturated and black regions (both images clipped alike) inside a photo: the running sums leave
    rounding noise in those windows' statistics; they must still take img_qi.m's flat cases."""
    x, y, xs, ys = pairs(40, 44, every=False)
    x, y = x.clone(), y.clone()
    x[..., 5:25, 8:30] = 1.0
    y[..., 5:25, 8:30] = 1.0
    x[..., 26:40, 0:12] = 0.0
    y[..., 26:40, 0:12] = 0.0
    got = iqa.uqi(x, y)
    want = [np.mean([_uqi_loop(a[c].numpy(), b[c].numpy()) for c in range(3)]) for a, b in zip(x, y)]
    assert_close(got, want, atol=1e-12, what="uqi with flat regions vs the window loop")


def test_uqi_flat_windows_follow_img_qi():
    flat = torch.full((1, 1, 12, 12), 0.25, dtype=torch.float64)
    assert iqa.uqi(flat, flat).item() == 1.0
    assert iqa.uqi(flat, flat * 2).item() == pytest.approx(2 * 0.25 * 0.5 / (0.25 ** 2 + 0.5 ** 2), rel=1e-12)
    assert iqa.uqi(flat * 0, flat * 0).item() == 1.0


def test_uqi_gaussian_variant_equals_torchmetrics(tm):
    x, y, _, _ = pairs(48, 40)
    want = torch.stack([tm.universal_image_quality_index(y[i:i + 1], x[i:i + 1]) for i in range(len(x))])
    assert_close(iqa.uqi(x, y, window="gaussian", win_size=11, sigma=1.5), want, atol=1e-10,
                 what="uqi gaussian vs torchmetrics (float64: its eps is 2e-16)")


def test_uqi_against_sewar_and_why_it_differs(monkeypatch):
    """sewar's uqi puts window means where img_qi.m puts window sums (scipy's uniform_filter is a
    mean), so its number is not UQI; given the sums it is ours over all windows but the last row and
    column (its 8-wide window is off centre). Both shown here on real photos."""
    full_ref = require("sewar.full_ref", reason="sewar 0.4.10 is a test dependency (requirements-dev.txt)")
    x, y, xs, ys = pairs(40, 44, every=False)
    as_released = [full_ref.uqi(a, b) for a, b in zip(xs, ys)]
    ours = iqa.uqi(x, y)
    assert (torch.tensor(as_released) - ours).abs().min() > 0.1  # not the same number
    sums = functools.partial(lambda f, a, size: f(a, size) * size * size, full_ref.uniform_filter)
    monkeypatch.setattr(full_ref, "uniform_filter", sums)
    with_sums = [full_ref.uqi(a, b) for a, b in zip(xs, ys)]
    # ours without the last window row/column, per channel
    xd, yd = x.double(), y.double()
    g = torch.full((8,), 1 / 8, dtype=torch.float64)
    mx, my, mxx, myy, mxy = iqa._filter_valid(torch.cat((xd, yd, xd * xd, yd * yd, xd * yd), 1), g).split(3, 1)
    q = 4 * (mxy - mx * my) * mx * my / ((mxx - mx * mx + myy - my * my) * (mx * mx + my * my))
    assert_close(with_sums, q[..., :-1, :-1].mean((2, 3)).mean(1), atol=1e-9, what="sewar with sums")


def test_uqi_options():
    x = _rand(1, 3, 16, 16)
    with pytest.raises(ValueError, match="window must be one of"):
        iqa.uqi(x, x, window="box")
    with pytest.raises(ValueError, match=r"too small for UQI's 8 x 8 window"):
        iqa.uqi(x[..., :7, :7], x[..., :7, :7])
    with pytest.raises(ValueError, match="win_size must be an odd integer"):
        iqa.uqi(x, x, window="gaussian", win_size=8)
