"""The functional API and the frozen public surface (drop-in signatures)."""
import inspect

import numpy as np
import pytest
import torch

import fastlpips
from helpers import FP32_VS_FP32, assert_close, distort, rand_images, real_images, require

# normalize_tensor vs lpips' on one float32 input: the same formula, so every element agrees to 1e-6
# relative with no absolute slack (tighter than the table's float32 entry)
NORMALIZE_VS_LPIPS = dict(rtol=1e-6, atol=0)


def test_functional_matches_module_and_reductions():
    x, y = real_images(64, 3), distort(real_images(64, 3))
    m = fastlpips.LPIPS(net="alex", verbose=False)
    with torch.no_grad():
        ref = m(x, y).reshape(-1)
    d = fastlpips.lpips(x, y, net="alex")
    assert d.shape == (3,)
    assert_close(d, ref, **FP32_VS_FP32, what="functional vs module")
    assert_close(fastlpips.lpips(x, y, reduction="mean"), ref.mean(), **FP32_VS_FP32, what="reduction mean")
    assert_close(fastlpips.lpips(x, y, reduction="sum"), ref.sum(), **FP32_VS_FP32, what="reduction sum")
    assert_close(fastlpips.lpips((x + 1) / 2, (y + 1) / 2, normalize=True), ref, **FP32_VS_FP32,
                 what="normalize=True")
    with pytest.raises(ValueError, match="reduction must be one of"):
        fastlpips.lpips(x, y, reduction="avg")
    with pytest.raises(TypeError, match="img1 must be a torch.Tensor"):
        fastlpips.lpips(x.numpy(), y)


def test_functional_cache_and_gradients():
    a = fastlpips.get_model("alex")
    assert fastlpips.get_model("alex") is a
    assert fastlpips.get_model("alex", dtype=torch.float64) is not a
    assert not any(p.requires_grad for p in a.parameters())
    x = real_images(64, 2).requires_grad_()
    fastlpips.lpips(x, distort(real_images(64, 2)), reduction="sum").backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert a.lin0.weight.grad is None  # the cached model accumulates nothing
    d64 = fastlpips.lpips(x.detach().double(), distort(real_images(64, 2)).double())
    assert d64.dtype == torch.float64


def test_distance_matrix():
    x = torch.cat([real_images(64, 3), distort(real_images(64, 3))])
    D = fastlpips.distance_matrix(x)
    d = fastlpips.lpips(x[0:1], x[4:5])
    assert D.shape == (6, 6)
    assert_close(D[0, 4], d[0], **FP32_VS_FP32, what="distance_matrix vs lpips")


def test_drop_in_signatures_match_lpips(lpips_ref):
    ours = inspect.signature(fastlpips.LPIPS.__init__).parameters
    theirs = inspect.signature(lpips_ref.LPIPS.__init__).parameters
    positional = [p for p in ours.values() if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert [(p.name, p.default) for p in positional] == [(p.name, p.default) for p in theirs.values()]
    assert all(p.kind is p.KEYWORD_ONLY for p in ours.values() if p.name not in theirs)
    assert [(p.name, p.default) for p in inspect.signature(fastlpips.LPIPS.forward).parameters.values()] == \
        [(p.name, p.default) for p in inspect.signature(lpips_ref.LPIPS.forward).parameters.values()]
    for name in ("im2tensor", "tensor2im", "normalize_tensor", "spatial_average", "upsample", "l2", "psnr"):
        o = inspect.signature(getattr(fastlpips, name)).parameters
        t = inspect.signature(getattr(lpips_ref, name)).parameters
        assert [(p.name, p.default) for p in o.values()] == [(p.name, p.default) for p in t.values()], name


def test_helpers_match_lpips(lpips_ref):
    img = (np.random.default_rng(0).random((20, 24, 3)) * 255).astype(np.uint8)
    assert torch.equal(fastlpips.im2tensor(img), lpips_ref.im2tensor(img))
    t = rand_images(2, 8, 9)
    assert np.array_equal(fastlpips.tensor2im(t), lpips_ref.tensor2im(t))
    assert torch.equal(fastlpips.spatial_average(t), lpips_ref.spatial_average(t))
    assert torch.equal(fastlpips.upsample(t, out_HW=(17, 19)), lpips_ref.upsample(t, out_HW=(17, 19)))
    f = torch.randn(2, 5, 3, 3)
    assert_close(fastlpips.normalize_tensor(f), lpips_ref.normalize_tensor(f), **NORMALIZE_VS_LPIPS,
                 what="normalize_tensor")
    assert fastlpips.psnr(img, img // 2) == pytest.approx(lpips_ref.psnr(img, img // 2))
    assert fastlpips.l2(img, img // 2) == pytest.approx(lpips_ref.l2(img, img // 2))


def test_public_api_surface():
    assert sorted(fastlpips.__all__) == sorted([
        "lpips", "distance_matrix", "get_model", "backends", "BackendUnavailable", "ELPIPS", "ELPIPSDraw",
        "ELPIPSEstimate", "elpips_estimate", "LPIPS", "LPIPSFeatures", "NetLinLayer", "ScalingLayer",
        "WeightError", "RangeWarning", "PrecisionWarning", "im2tensor", "tensor2im", "load_image", "read_image",
        "normalize_tensor",
        "spatial_average", "upsample", "l2", "psnr",
        # lpips' trainer / scoring names (issue 10)
        "score_2afc_dataset", "score_jnd_dataset", "voc_ap", "L2", "DSSIM", "Trainer", "BCERankingLoss",
        "Dist2LogitLayer",
        # losses and dataset evaluation (issue 13)
        "PerceptualLoss", "TextureLoss", "PixelLoss", "LPIPSLoss", "ELPIPSLoss", "CombinedLoss", "evaluate",
        "EvaluationResult",
        # the metric registry and DISTS
        "create_metric", "list_metrics", "metric_info", "DISTS",
        # tiled passes on large images: a budget below one tile
        "TileBudgetError",
    ])
    lpips = require("lpips")
    for name in ("Trainer", "BCERankingLoss", "Dist2LogitLayer", "score_2afc_dataset", "score_jnd_dataset",
                 "voc_ap", "L2", "DSSIM"):
        assert hasattr(lpips, name), name  # each is an lpips name
    for name in fastlpips.__all__:
        assert hasattr(fastlpips, name), name


def test_typical_user_code_with_import_as_lpips(tmp_path):
    """The README snippet of the lpips package, with `import fastlpips as lpips`."""
    import fastlpips as lpips

    loss_fn_alex = lpips.LPIPS(net="alex")
    loss_fn_vgg = lpips.LPIPS(net="vgg")
    img0 = torch.zeros(1, 3, 64, 64)
    img1 = torch.zeros(1, 3, 64, 64)
    d = loss_fn_alex(img0, img1)
    assert d.shape == (1, 1, 1, 1) and d.item() == 0.0
    assert loss_fn_vgg(img0, img1 + 0.5).item() > 0


def test_load_image_formats(tmp_path):
    from PIL import Image

    Image.new("RGBA", (5, 4), (10, 20, 30, 40)).save(tmp_path / "a.png")
    Image.new("L", (5, 4), 77).save(tmp_path / "g.png")
    with pytest.warns(UserWarning, match="alpha"):
        a = fastlpips.load_image(tmp_path / "a.png")
    g = fastlpips.load_image(str(tmp_path / "g.png"))
    assert a.shape == (4, 5, 3) and a.dtype == np.uint8 and tuple(a[0, 0]) == (10, 20, 30)
    assert g.shape == (4, 5, 3) and tuple(g[0, 0]) == (77, 77, 77)
    with pytest.raises(FileNotFoundError):
        fastlpips.load_image(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="H x W x C"):
        fastlpips.im2tensor(np.zeros((4, 5)))
