"""The metric registry (fastlpips.metrics): every name builds and scores real photo pairs as the
metric's own class does; out-of-range input is refused (and taken with as_loss=True); names,
aliases, options and paths."""
import numpy as np
import pytest
import torch

import fastlpips
from fastlpips import classic, iqa
from fastlpips.elpips import ELPIPS
from fastlpips.ifc import ifc
from fastlpips.metrics import create_metric, list_metrics, metric_info
from fastlpips.model import LPIPS
from helpers import distort, real_images

SIZE = 176  # MS-SSIM's smallest size (5 scales, 11 x 11 window)


@pytest.fixture(scope="module")
def photos():
    """Two real photo crops and a blurred, noisy copy of each, in [0, 1]."""
    x = real_images(SIZE, 2).double()
    return ((x + 1) / 2).float(), ((distort(x, 3) + 1) / 2).float()


@pytest.fixture(scope="module")
def rlpips_checkpoint(tmp_path_factory):
    """An lpips-format state dict with perturbed linear weights (as R-LPIPS' release is)."""
    model = LPIPS(net="alex", verbose=False)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for lin in model.lins:
            lin.weight.mul_(torch.rand(lin.weight.shape, generator=g) + 0.5)
    path = tmp_path_factory.mktemp("rlpips") / "rlpips.pth"
    torch.save(model.state_dict(), path)
    return path


def _own(name, x, y, ckpt):
    """The metric computed by its own class or function, images in [0, 1]."""
    sx, sy = x * 2 - 1, y * 2 - 1
    if name.startswith("lpips") or name == "rlpips":
        net = "alex" if name in ("lpips", "rlpips") else name.split("-")[1]
        torch.manual_seed(0)  # the random SqueezeNet trunk (no ImageNet weights offline)
        m = LPIPS(net=net, version="0.0" if name.endswith("v0.0") else "0.1", verbose=False,
                  pnet_rand=net == "squeeze", model_path=ckpt if name == "rlpips" else None)
        return m(sx, sy).flatten()
    if name.startswith("elpips"):
        torch.manual_seed(0)
        squeeze = name == "elpips-squeeze"
        m = ELPIPS(net="squeeze" if squeeze else "vgg", n_samples=2, pnet_rand=squeeze, max_scale=2)
        return m(x, y, generator=torch.Generator().manual_seed(9))
    if name == "dists":
        from fastlpips.dists import DISTS

        return DISTS()(x, y)
    functions = {"psnr": iqa.psnr, "ssim": iqa.ssim, "ms-ssim": iqa.ms_ssim, "gmsd": iqa.gmsd, "uqi": iqa.uqi,
                 "ifc": lambda out, ref: ifc(ref, out)}
    if name in functions:
        return functions[name](x, y)
    if name in ("l2-lab", "l2-rgb"):
        return classic.l2(sx, sy, "RGB" if name.endswith("rgb") else "Lab")
    if name in ("dssim", "dssim-rgb"):
        return classic.dssim(sx, sy, "RGB" if name.endswith("rgb") else "Lab")
    assert name == "euclidean"
    return torch.linalg.vector_norm((x - y).flatten(1), dim=1)


def _registered(name, ckpt, **kw):
    opts = {}
    if name == "rlpips":
        opts["checkpoint"] = ckpt
    if name.endswith("squeeze") or name == "lpips-squeeze-v0.0":
        opts["pnet_rand"] = True
    if name.startswith("elpips"):
        opts.update(n_samples=2, max_scale=2)
    torch.manual_seed(0)
    return create_metric(name, **opts, **kw)


@pytest.mark.parametrize("name", list_metrics())
def test_every_name_scores_real_photos_as_its_own_class(name, photos, rlpips_checkpoint):
    x, y = photos
    metric = _registered(name, rlpips_checkpoint)
    kw = {"generator": torch.Generator().manual_seed(9)} if name.startswith("elpips") else {}
    with torch.no_grad():
        got = metric(x, y, **kw)
        want = _own(name, x, y, rlpips_checkpoint)
    assert got.shape == (2,)
    torch.testing.assert_close(got, want.to(got.dtype), rtol=1e-6, atol=1e-6)
    info = metric_info(name)
    lo, hi = info.score_range
    assert bool(((got >= lo) & (got <= hi)).all()), f"{name}: {got} outside {info.score_range}"
    # a distortion scores worse than the image against itself
    same = metric(x, x, **({"generator": torch.Generator().manual_seed(9)} if kw else {}))
    worse = (got > same) if info.lower_better else (got < same)
    assert bool(worse.all()), f"{name}: distorted {got} vs identical {same}"


@pytest.mark.parametrize("name", ["lpips-alex", "psnr", "l2-lab", "euclidean"])
def test_out_of_range_input_is_refused_naming_the_range_unless_as_loss(name, photos):
    x, y = photos
    metric = create_metric(name)
    with pytest.raises(ValueError, match=r"x must hold values in \[0, 1\], got \[-1"):
        metric(x * 2 - 1, y)
    with pytest.raises(ValueError, match=r"y must hold values in \[0, 1\].*as_loss=True"):
        metric(x, y * 1.5)
    loss = create_metric(name, as_loss=True)
    assert loss(x * 2 - 1, y).shape == (2,)


def test_as_loss_metric_is_differentiable_and_elpips_takes_one_draw():
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    y = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    loss = create_metric("lpips-alex", as_loss=True)
    loss(x, y).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert create_metric("elpips", as_loss=True).module.n_samples == 1
    assert create_metric("elpips").module.n_samples == metric_info("elpips").options["n_samples"]


def test_unknown_and_ambiguous_names_list_the_known_ones():
    with pytest.raises(ValueError, match="unknown metric 'lpips-resnet'; known: lpips-alex, .*euclidean") as e:
        create_metric("lpips-resnet")
    for name in list_metrics():
        assert name in str(e.value)
    with pytest.raises(ValueError, match="'l2' is ambiguous: use 'l2-lab'.*'euclidean'"):
        create_metric("l2")
    with pytest.raises(ValueError, match="unknown metric 'alex': its name is 'lpips-alex'"):
        create_metric("alex")
    with pytest.raises(TypeError, match="metric name must be a string"):
        metric_info(3)


def test_aliases_case_and_info():
    assert metric_info("LPIPS ").name == "lpips-alex"
    assert create_metric("lpips").info.name == "lpips-alex"
    info = metric_info("psnr")
    assert (info.lower_better, info.higher_better, info.differentiable) == (False, True, True)
    assert metric_info("l2-lab").differentiable is False  # 8-bit quantization: piecewise constant
    assert metric_info("rlpips").checkpoint == "required"
    assert metric_info("lpips-vgg").spatial and not metric_info("ssim").spatial
    assert set(metric_info("lpips-vgg").as_dict()) >= {"name", "lower_better", "score_range", "input_range",
                                                       "description", "differentiable"}
    # every entry says what it is
    for name in list_metrics():
        info = metric_info(name)
        assert info.description and info.family in fastlpips.metrics.FAMILIES
        assert info.input_range == (0.0, 1.0)


def test_list_metrics_filters():
    names = list_metrics()
    assert len(names) == len(set(names)) and "lpips" not in names  # aliases are not listed
    assert list_metrics("lpips-*") == [n for n in names if n.startswith("lpips-")]
    assert list_metrics("ssim") == ["ssim", "ms-ssim", "dssim", "dssim-rgb"]
    assert list_metrics("nothing*") == []
    with pytest.raises(TypeError, match="filter"):
        list_metrics(3)


def test_options_are_checked_per_metric(rlpips_checkpoint):
    with pytest.raises(TypeError, match=r"metric 'psnr' takes no option 'win_size' \(its options: none\)"):
        create_metric("psnr", win_size=7)
    with pytest.raises(TypeError, match="metric 'lpips-alex' takes no option 'n_samples'.*checkpoint"):
        create_metric("lpips-alex", n_samples=3)
    with pytest.raises(ValueError, match="'rlpips' needs a checkpoint.*checkpoint=PATH"):
        create_metric("rlpips")
    with pytest.raises(FileNotFoundError, match="missing.pth does not exist"):
        create_metric("rlpips", checkpoint="missing.pth")
    with pytest.raises(TypeError, match="as_loss must be True or False"):
        create_metric("psnr", as_loss="yes")
    x64 = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    baseline = create_metric("lpips-vgg", calibrated=False)
    torch.testing.assert_close(baseline(x64, x64.flip(0)),
                               LPIPS(net="vgg", lpips=False, verbose=False)(x64, x64.flip(0), normalize=True).flatten())
    ssim7 = create_metric("ssim", win_size=7)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(ssim7(x, y), iqa.ssim(x, y, win_size=7))
    assert "win_size=7" in repr(ssim7)


def test_paths_score_as_the_tensors_they_hold(tmp_path, photos):
    from PIL import Image

    x, y = photos
    files = []
    for i, im in enumerate((x[0], y[0])):
        arr = (im.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(arr).save(tmp_path / f"{i}.png")
        files.append(tmp_path / f"{i}.png")
    xs, ys = [torch.from_numpy(np.asarray(Image.open(f), dtype=np.float32) / 255).permute(2, 0, 1)[None]
              for f in files]
    metric = create_metric("lpips-alex")
    torch.testing.assert_close(metric(str(files[0]), files[1]), metric(xs, ys))
    torch.testing.assert_close(metric([files[0], files[1]], [files[1], files[0]]).flip(0),
                               metric(torch.cat([ys, xs]), torch.cat([xs, ys])))
    with pytest.raises(FileNotFoundError, match="nope.png"):
        metric(tmp_path / "nope.png", files[1])
    with pytest.raises(TypeError, match="x must be a tensor, an image path or a list of image paths"):
        metric(3, files[1])


def test_signed_scores_lpips_convention_without_a_round_trip(photos):
    """``signed`` takes [-1, 1] images as lpips' L2 does: the 8-bit quantization of exactly those values."""
    x, y = photos
    sx, sy = x * 2 - 1, y * 2 - 1
    torch.testing.assert_close(create_metric("l2-lab").signed(sx, sy), classic.l2(sx, sy, "Lab"), rtol=0, atol=0)
    torch.testing.assert_close(create_metric("psnr").signed(sx, sy), iqa.psnr(x, y), rtol=1e-6, atol=1e-5)
