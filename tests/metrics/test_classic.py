"""fastlpips.classic (the BAPPS classic baselines L2 / DSSIM, Lab and RGB) against scikit-image and lpips.

References: ``skimage.color.rgb2lab``, ``skimage.metrics.structural_similarity`` and lpips 0.1.4's
own ``lpips.L2`` (batch 1). ``lpips.DSSIM`` calls ``skimage.measure.compare_ssim``, which current
scikit-image no longer has, so its formula is rebuilt here from lpips' own helpers
(``tensor2im`` / ``tensor2tensorlab`` / ``tensor2np``) and ``structural_similarity``.

Tolerances (absolute unless said; measured worst errors in brackets, 64 x 64 images):

* rgb_to_lab vs rgb2lab: float64 1e-10 [2e-13]; float32 2e-4 on values up to 100 [6e-5].
* ssim vs structural_similarity: float64 1e-12 [5e-16]; float32 1e-6 [1.2e-7].
* l2 / dssim vs lpips: lpips stores the Lab images as float32 (and its SSIM of them then runs in
  float32), so even float64 inputs agree only to float32 rounding: Lab l2 rtol 1e-6 in float64
  [8.5e-8] and 1e-5 in float32 [2.4e-7]; Lab dssim 1e-6 [1.5e-7]. RGB: float64 1e-12 [6e-15],
  float32 rtol 1e-5 (l2) [1e-7] / 1e-6 (dssim) [7e-8].
* float64 against the same pipeline kept in float64 by scikit-image (uint8 -> rgb2lab -> SSIM):
  1e-12 relative for l2 and 1e-12 for dssim.
"""
import numpy as np
import pytest
import torch

from fastlpips import classic
from fastlpips.classic import DSSIM, L2, dssim, l2, quantize_uint8, rgb_to_lab, ssim
from helpers import distort, real_images, require

skimage = require("skimage")
from skimage.color import rgb2lab as sk_rgb2lab  # noqa: E402
from skimage.metrics import structural_similarity as sk_ssim  # noqa: E402

DTYPES = [torch.float64, torch.float32]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # these images are small: one intra-op thread is faster than two on a busy shared machine
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _np(img: torch.Tensor) -> np.ndarray:
    """C x H x W tensor -> H x W x C array."""
    return img.detach().cpu().permute(1, 2, 0).numpy()


def _pairs(dtype=torch.float64):
    """4 real crops with a real distortion plus 4 random pairs, in [-1, 1] (float64 first, then cast)."""
    g = torch.Generator().manual_seed(7)
    xr = real_images(64, 4).double()
    yr = distort(xr)
    xn = torch.rand(4, 3, 64, 64, generator=g, dtype=torch.float64) * 2 - 1
    yn = (xn + 0.2 * torch.randn(xn.shape, generator=g, dtype=torch.float64)).clamp(-1, 1)
    return torch.cat([xr, xn]).to(dtype), torch.cat([yr, yn]).to(dtype)


def _unit_images(dtype):
    """Real and random images in [0, 1]."""
    x, y = _pairs(torch.float64)
    return ((torch.cat([x, y]) + 1) / 2).to(dtype)


# --- rgb_to_lab ------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-10), (torch.float32, 2e-4)])
def test_rgb_to_lab_matches_skimage(dtype, atol):
    x = _unit_images(dtype)
    ours = rgb_to_lab(x)
    assert ours.dtype == dtype and ours.shape == x.shape
    ref = torch.stack([torch.from_numpy(sk_rgb2lab(_np(im))).permute(2, 0, 1) for im in x])
    torch.testing.assert_close(ours.double(), ref.double(), rtol=0, atol=atol)


def test_rgb_to_lab_special_values_and_extended_range():
    # both branches of both nonlinearities, their thresholds, black, white, and values outside [0, 1]
    v = torch.tensor([0.0, 1e-4, 0.04045, 0.0405, 0.2, 0.5, 1.0, -0.05, 1.05], dtype=torch.float64)
    grid = torch.cartesian_prod(v, v, v).T.reshape(1, 3, 27, 27)
    ref = torch.from_numpy(sk_rgb2lab(_np(grid[0]))).permute(2, 0, 1)[None]
    torch.testing.assert_close(rgb_to_lab(grid), ref, rtol=0, atol=1e-10)
    white = rgb_to_lab(torch.ones(1, 3, 1, 1, dtype=torch.float64)).flatten()
    torch.testing.assert_close(white, torch.tensor([100.0, 0.0, 0.0], dtype=torch.float64), rtol=0, atol=1e-2)


def test_rgb_to_lab_gradient_is_finite():
    x = torch.tensor([0.0, 0.01, 0.04045, 0.5, 1.0], dtype=torch.float64).view(1, 1, 1, 5).repeat(1, 3, 1, 1)
    x.requires_grad_(True)
    rgb_to_lab(x).sum().backward()
    assert torch.isfinite(x.grad).all()


# --- ssim ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
@pytest.mark.parametrize("data_range", [1.0, 255.0])
def test_ssim_matches_skimage(dtype, atol, data_range):
    x, y = _pairs(torch.float64)
    x, y = ((x + 1) / 2 * data_range).to(dtype), ((y + 1) / 2 * data_range).to(dtype)
    ours = ssim(x, y, data_range)
    assert ours.dtype == dtype and ours.shape == (x.shape[0],)
    ref = torch.tensor([sk_ssim(_np(a), _np(b), data_range=data_range, channel_axis=-1) for a, b in zip(x, y)],
                       dtype=torch.float64)
    torch.testing.assert_close(ours.double(), ref, rtol=0, atol=atol)


@pytest.mark.parametrize("shape,win_size", [((2, 1, 20, 33), 7), ((2, 3, 9, 16), 3), ((1, 2, 11, 11), 11),
                                            ((2, 3, 13, 17), 5)])
def test_ssim_shapes_and_windows(shape, win_size):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    y = (x + 0.1 * torch.randn(shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    ours = ssim(x, y, 1.0, win_size=win_size)
    ref = torch.tensor([sk_ssim(_np(a), _np(b), data_range=1.0, channel_axis=-1, win_size=win_size)
                        for a, b in zip(x, y)], dtype=torch.float64)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)


def test_ssim_float32_is_close_to_float64_on_lab_like_data():
    # large offsets (Lab L ~ 50..100) are where E[x^2] - E[x]^2 loses digits in float32
    x, y = _pairs(torch.float64)
    x, y = 75 + 20 * x, 75 + 20 * y
    s64 = ssim(x, y, 100.0)
    s32 = ssim(x.float(), y.float(), 100.0)
    torch.testing.assert_close(s32.double(), s64, rtol=0, atol=1e-6)


# --- quantization ----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_quantization_matches_lpips_tensor2im(dtype, lpips_ref):
    # every 8-bit boundary k / 127.5 - 1 and its float neighbours, plus a dense sweep of [-1, 1]
    k = torch.arange(256, dtype=torch.float64) / 127.5 - 1
    k32 = k.float()
    edges = torch.cat([k, torch.nextafter(k, k - 1), torch.nextafter(k, k + 1),
                       torch.nextafter(k32, k32 - 1).double(), torch.nextafter(k32, k32 + 1).double()])
    v = torch.cat([edges, torch.linspace(-1, 1, 40001, dtype=torch.float64)]).clamp(-1, 1).to(dtype)
    img = v.view(1, 1, 1, -1).expand(1, 3, 1, -1)
    ours = quantize_uint8(img)
    ref = torch.from_numpy(lpips_ref.tensor2im(img).astype(np.float64)).permute(2, 0, 1)[None]
    assert torch.equal(ours.double(), ref)


def test_quantization_saturates_out_of_range():
    x = torch.tensor([-3.0, -1.0001, 1.0001, 5.0]).view(1, 1, 1, 4).expand(1, 3, 1, 4)
    assert quantize_uint8(x)[0, 0, 0].tolist() == [0.0, 0.0, 255.0, 255.0]


# --- l2 / dssim against lpips ----------------------------------------------------------------------

def _lpips_dssim(lp, a, b, colorspace, lab_float64=False):
    """lpips.DSSIM's formula (lpips.dssim), with structural_similarity in place of compare_ssim."""
    if colorspace == "RGB":
        p0, p1, rng = 1.0 * lp.tensor2im(a), 1.0 * lp.tensor2im(b), 255.0
    elif lab_float64:  # the same pipeline without lpips' float32 storage of the Lab image
        p0, p1, rng = sk_rgb2lab(lp.tensor2im(a)), sk_rgb2lab(lp.tensor2im(b)), 100.0
    else:
        p0 = lp.tensor2np(lp.tensor2tensorlab(a, to_norm=False))
        p1 = lp.tensor2np(lp.tensor2tensorlab(b, to_norm=False))
        rng = 100.0
    return (1 - sk_ssim(p0, p1, data_range=rng, channel_axis=-1)) / 2


_L2_TOL = {(torch.float64, "Lab"): dict(rtol=1e-6, atol=1e-12), (torch.float32, "Lab"): dict(rtol=1e-5, atol=1e-9),
           (torch.float64, "RGB"): dict(rtol=1e-12, atol=1e-15), (torch.float32, "RGB"): dict(rtol=1e-5, atol=1e-9)}
_DSSIM_TOL = {(torch.float64, "Lab"): 1e-6, (torch.float32, "Lab"): 1e-6,
              (torch.float64, "RGB"): 1e-12, (torch.float32, "RGB"): 1e-6}


@pytest.mark.parametrize("colorspace", ["Lab", "RGB"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_l2_matches_lpips(dtype, colorspace, lpips_ref):
    x, y = _pairs(dtype)
    ref_net = lpips_ref.L2(use_gpu=False, colorspace=colorspace)
    ref = torch.cat([ref_net(x[i:i + 1], y[i:i + 1]).double().flatten() for i in range(x.shape[0])])
    ours = l2(x, y, colorspace)
    assert ours.dtype == dtype and ours.shape == (x.shape[0],)
    torch.testing.assert_close(ours.double(), ref, **_L2_TOL[dtype, colorspace])
    assert (ours > 0).all()


@pytest.mark.parametrize("colorspace", ["Lab", "RGB"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_dssim_matches_lpips_formula(dtype, colorspace, lpips_ref):
    x, y = _pairs(dtype)
    ref = torch.tensor([_lpips_dssim(lpips_ref, x[i:i + 1], y[i:i + 1], colorspace) for i in range(x.shape[0])],
                       dtype=torch.float64)
    ours = dssim(x, y, colorspace)
    assert ours.dtype == dtype and ours.shape == (x.shape[0],)
    torch.testing.assert_close(ours.double(), ref, rtol=0, atol=_DSSIM_TOL[dtype, colorspace])
    assert (ours > 0).all()


def test_lab_distances_float64_tight(lpips_ref):
    """float64: the lpips pipeline with the Lab images kept in float64 (uint8 -> rgb2lab -> l2 / SSIM)."""
    x, y = _pairs(torch.float64)
    ref_l2, ref_dssim = [], []
    for i in range(x.shape[0]):
        a, b = sk_rgb2lab(lpips_ref.tensor2im(x[i:i + 1])), sk_rgb2lab(lpips_ref.tensor2im(y[i:i + 1]))
        ref_l2.append(lpips_ref.l2(a, b, range=100.0))
        ref_dssim.append(_lpips_dssim(lpips_ref, x[i:i + 1], y[i:i + 1], "Lab", lab_float64=True))
    torch.testing.assert_close(l2(x, y, "Lab"), torch.tensor(ref_l2, dtype=torch.float64), rtol=1e-12, atol=0)
    torch.testing.assert_close(dssim(x, y, "Lab"), torch.tensor(ref_dssim, dtype=torch.float64), rtol=0, atol=1e-12)


# --- batches, modules, devices, dtypes -------------------------------------------------------------

@pytest.mark.parametrize("fn", [l2, dssim])
@pytest.mark.parametrize("colorspace", ["Lab", "RGB"])
def test_batch_equals_per_image_and_broadcast(fn, colorspace):
    x, y = _pairs(torch.float32)
    batch = fn(x, y, colorspace)
    single = torch.cat([fn(x[i:i + 1], y[i:i + 1], colorspace) for i in range(x.shape[0])])
    torch.testing.assert_close(batch, single, rtol=1e-6, atol=1e-9)
    # a batch of 1 against a batch of N, either way round
    one = fn(x[:1], y, colorspace)
    torch.testing.assert_close(one, torch.cat([fn(x[:1], y[i:i + 1], colorspace) for i in range(x.shape[0])]),
                               rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(fn(y, x[:1], colorspace), one, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("colorspace", ["Lab", "RGB"])
def test_modules_match_functions(colorspace, lpips_ref):
    x, y = _pairs(torch.float32)
    for cls, fn, ref_cls in ((L2, l2, lpips_ref.L2), (DSSIM, dssim, lpips_ref.DSSIM)):
        m = cls(use_gpu=False, colorspace=colorspace)
        assert isinstance(m, torch.nn.Module) and m.colorspace == colorspace and m.use_gpu is False
        assert torch.equal(m(x, y), fn(x, y, colorspace))
        assert torch.equal(m(x, y, retPerLayer=False), fn(x, y, colorspace))
        assert cls().colorspace == ref_cls().colorspace == "Lab"  # lpips' defaults
        assert cls(True, colorspace).use_gpu is True  # accepted, runs on the inputs' device
    assert L2(colorspace=colorspace.lower()).colorspace == colorspace


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_device_and_dtype_preserved(dtype, device):
    x, y = _pairs(torch.float32)
    x, y = x[:2].to(device=device, dtype=dtype), y[:2].to(device=device, dtype=dtype)
    for colorspace in ("Lab", "RGB"):
        for fn in (l2, dssim):
            out = fn(x, y, colorspace)
            assert out.dtype == dtype and out.device == x.device and out.shape == (2,)
            assert torch.isfinite(out.float()).all()
    lab = rgb_to_lab((x + 1) / 2)
    assert lab.dtype == dtype and lab.device == x.device
    s = ssim(x, y, 2.0)
    assert s.dtype == dtype and s.device == x.device
    if dtype in (torch.float32, torch.float64) and device.type != "cpu":
        xc, yc = x.cpu(), y.cpu()
        for colorspace in ("Lab", "RGB"):
            torch.testing.assert_close(l2(x, y, colorspace).cpu(), l2(xc, yc, colorspace), rtol=1e-5, atol=1e-9)
            torch.testing.assert_close(dssim(x, y, colorspace).cpu(), dssim(xc, yc, colorspace), rtol=0, atol=1e-6)


@pytest.mark.parametrize("colorspace", ["Lab", "RGB"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_identical_images_give_zero(dtype, colorspace):
    x, _ = _pairs(dtype)
    assert torch.equal(l2(x, x.clone(), colorspace), torch.zeros(x.shape[0], dtype=dtype))
    assert torch.equal(dssim(x, x.clone(), colorspace), torch.zeros(x.shape[0], dtype=dtype))
    assert torch.equal(ssim(x, x.clone(), 2.0), torch.ones(x.shape[0], dtype=dtype))


def test_empty_batch():
    e = torch.zeros(0, 3, 16, 16)
    for fn in (l2, dssim):
        for colorspace in ("Lab", "RGB"):
            assert fn(e, e, colorspace).shape == (0,)


def test_gradients():
    x, y = _pairs(torch.float64)
    x = x[:2].clone().requires_grad_(True)
    l2(x, y[:2], "RGB").sum().backward()
    torch.testing.assert_close(x.grad, 2 * (x - y[:2]).detach() / x[0].numel())
    a = ((x.detach() + 1) / 2).requires_grad_(True)
    ssim(a, (y[:2] + 1) / 2, 1.0).sum().backward()
    assert torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0
    # the 8-bit quantization makes the Lab / DSSIM distances piecewise constant: zero gradient
    z = x.detach().clone().requires_grad_(True)
    (l2(z, y[:2], "Lab") + dssim(z, y[:2], "RGB")).sum().backward()
    assert torch.equal(z.grad, torch.zeros_like(z))


# --- bad inputs ------------------------------------------------------------------------------------

def test_bad_colorspace():
    x = torch.zeros(1, 3, 8, 8)
    for fn in (l2, dssim):
        with pytest.raises(ValueError, match=r"colorspace must be one of \['Lab', 'RGB'\], got 'XYZ'"):
            fn(x, x, "XYZ")
    for cls in (L2, DSSIM):
        with pytest.raises(ValueError, match="colorspace must be one of"):
            cls(use_gpu=False, colorspace="lab2")
        with pytest.raises(ValueError, match="colorspace must be one of"):
            cls(colorspace=None)


@pytest.mark.parametrize("fn", [l2, dssim])
def test_bad_shapes(fn):
    good = torch.zeros(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"in0 must have 4 dimensions \(N, 3, H, W\), got shape \(3, 8, 8\)"):
        fn(torch.zeros(3, 8, 8), good)
    with pytest.raises(ValueError, match=r"in1 must have 3 channels .* got shape \(2, 1, 8, 8\)"):
        fn(good, torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="same channel count and spatial size"):
        fn(good, torch.zeros(2, 3, 8, 9))
    with pytest.raises(ValueError, match="batch sizes 2 and 3"):
        fn(good, torch.zeros(3, 3, 8, 8))
    with pytest.raises(TypeError, match="different dtypes"):
        fn(good, good.double())
    with pytest.raises(TypeError, match="in0 must be a torch.Tensor"):
        fn(np.zeros((2, 3, 8, 8)), good)
    with pytest.raises(TypeError, match="in1 must be a floating-point tensor"):
        fn(good, good.to(torch.uint8))


def test_bad_ssim_arguments():
    x = torch.zeros(1, 3, 8, 8)
    with pytest.raises(ValueError, match="smaller than the SSIM window"):
        ssim(torch.zeros(1, 3, 6, 8), torch.zeros(1, 3, 6, 8), 1.0)
    with pytest.raises(ValueError, match="smaller than the SSIM window"):
        dssim(torch.zeros(1, 3, 6, 6), torch.zeros(1, 3, 6, 6), "RGB")
    for w in (4, 1, 7.0, True):
        with pytest.raises(ValueError, match="win_size must be an odd integer >= 3"):
            ssim(x, x, 1.0, win_size=w)
    for r in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="data_range must be (> 0|a finite number)"):
            ssim(x, x, r)
    for r in ("255", None):
        with pytest.raises(TypeError, match="data_range must be a number"):
            ssim(x, x, r)
    with pytest.raises(ValueError, match="x must have 4 dimensions"):
        ssim(torch.zeros(8, 8), torch.zeros(8, 8), 1.0)
    with pytest.raises(ValueError, match="x must have 4 dimensions"):
        rgb_to_lab(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match=r"x must have 3 channels"):
        rgb_to_lab(torch.zeros(1, 4, 8, 8))


def test_public_names():
    assert set(classic.__all__) >= {"rgb_to_lab", "ssim", "l2", "dssim", "L2", "DSSIM"}
