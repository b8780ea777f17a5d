"""Bad input raises an error naming the problem; suspicious ranges warn once."""
import argparse
import re
import warnings

import pytest
import torch

import fastlpips
from fastlpips import validation as V
from helpers import rand_images


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return fastlpips.LPIPS(net="alex", pnet_rand=True)


GOOD = rand_images(2, 64, 64)

CASES = [
    ("numpy-array", lambda: (GOOD.numpy(), GOOD), TypeError, "in0 must be a torch.Tensor"),
    ("3-d", lambda: (GOOD[0], GOOD[0]), ValueError, r"4 dimensions .* got shape \(3, 64, 64\)"),
    ("5-d", lambda: (GOOD[None], GOOD[None]), ValueError, "4 dimensions"),
    ("grey-1-channel", lambda: (GOOD[:, :1], GOOD[:, :1]), ValueError, r"3 channels .* got shape \(2, 1, 64, 64\)"),
    ("rgba-4-channels", lambda: (GOOD, torch.cat([GOOD, GOOD[:, :1]], 1)), ValueError, "in1 must have 3 channels"),
    ("channels-last-axis", lambda: (GOOD.permute(0, 2, 3, 1), GOOD.permute(0, 2, 3, 1)), ValueError, "3 channels"),
    ("spatial-mismatch", lambda: (GOOD, rand_images(2, 64, 48)), ValueError, "same channel count and spatial size"),
    ("batch-mismatch", lambda: (GOOD, rand_images(3, 64, 64)), ValueError, "batch sizes 2 and 3"),
    ("uint8", lambda: ((GOOD * 127 + 128).to(torch.uint8),) * 2, TypeError, "floating-point .* torch.uint8"),
    ("int64", lambda: (GOOD.long(), GOOD.long()), TypeError, "floating-point"),
    ("bool", lambda: (GOOD > 0, GOOD > 0), TypeError, "torch.bool"),
    ("complex", lambda: (GOOD.to(torch.complex64),) * 2, TypeError, "floating-point"),
    ("nan", lambda: (GOOD.clone().index_fill_(2, torch.tensor([3]), float("nan")), GOOD), ValueError,
     r"in0 contains 384 NaN or Inf"),
    ("inf", lambda: (GOOD, GOOD.clone().index_fill_(3, torch.tensor([0]), float("inf"))), ValueError,
     "in1 contains .* NaN or Inf"),
    ("too-small-alex", lambda: (rand_images(1, 30, 64), rand_images(1, 30, 64)), ValueError,
     "30x64 is too small for the alex trunk: it needs at least 31x31"),
    ("dtype-pair-mismatch", lambda: (GOOD, GOOD.double()), TypeError, "different dtypes"),
    ("dtype-vs-model", lambda: (GOOD.double(), GOOD.double()), TypeError,
     "has dtype torch.float64 but the model has dtype torch.float32"),
    ("device-vs-model", lambda: (GOOD.to("meta"), GOOD.to("meta")), ValueError, "is on meta but the model is on cpu"),
    ("device-pair-mismatch", lambda: (GOOD, GOOD.to("meta")), ValueError, "different devices"),
]


@pytest.mark.parametrize("name,make,exc,match", CASES, ids=[c[0] for c in CASES])
def test_bad_input(model, name, make, exc, match):
    in0, in1 = make()
    with pytest.raises(exc, match=match):
        model(in0, in1)


def test_too_small_for_vgg_and_squeeze():
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="15x15 is too small for the vgg trunk: it needs at least 16x16"):
        fastlpips.LPIPS(net="vgg", pnet_rand=True)(rand_images(1, 15, 15), rand_images(1, 15, 15))
    with pytest.raises(ValueError, match="at least 17x17"):
        fastlpips.LPIPS(net="squeeze", pnet_rand=True)(rand_images(1, 16, 40), rand_images(1, 16, 40))
    # the smallest valid sizes do run
    fastlpips.LPIPS(net="squeeze", pnet_rand=True)(rand_images(1, 17, 17), rand_images(1, 17, 17))


def test_range_warning_once_with_hint(model):
    m = fastlpips.LPIPS(net="alex", pnet_rand=True)
    x = torch.rand(1, 3, 64, 64) * 255
    with pytest.warns(fastlpips.RangeWarning, match=r"outside the expected \[-1, 1\].*0\.\.255 images"):
        m(x, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m(x, x)  # once per model: no second warning


def test_range_warning_with_normalize():
    m = fastlpips.LPIPS(net="alex", pnet_rand=True)
    with pytest.warns(fastlpips.RangeWarning, match=r"outside the expected \[0, 1\]"):
        m(GOOD, GOOD, normalize=True)
    m2 = fastlpips.LPIPS(net="alex", pnet_rand=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m2((GOOD + 1) / 2, (GOOD + 1) / 2, normalize=True)  # in range: silent


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(net="resnet"), ValueError, "unknown net='resnet'"),
    (dict(version="0.2"), ValueError, "unknown version='0.2'"),
    (dict(pretrained=False, model_path="x.pth"), ValueError, "model_path is only read with pretrained=True"),
    (dict(model_path="/nonexistent/weights.pth"), FileNotFoundError, "does not exist"),
])
def test_bad_constructor_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        fastlpips.LPIPS(pnet_rand=True, **kwargs)


def test_bad_weight_files(tmp_path):
    torch.manual_seed(0)
    good = fastlpips.LPIPS(net="alex", pnet_rand=True).state_dict()
    cases = {
        "extra": ({**good, "lin9.model.1.weight": torch.ones(1, 8, 1, 1)},
                  r"unexpected keys \['lin9.model.1.weight'\]"),
        "missing": ({k: v for k, v in good.items() if "lin3" not in k and "lins.3" not in k},
                    r"missing keys \['lin3.model.1.weight'\]"),
        "shape": ({**{k: v for k, v in good.items() if "lins." not in k},
                   "lin0.model.1.weight": torch.ones(1, 65, 1, 1)},
                  r"wrong shapes lin0.model.1.weight: \(1, 65, 1, 1\) \(expected \(1, 64, 1, 1\)\)"),
        "partial-trunk": ({k: v for k, v in good.items() if k != "net.slice2.3.bias"}, r"partial trunk.*slice2.3.bias"),
        "duplicates-disagree": ({**good, "lins.0.model.1.weight": good["lin0.model.1.weight"] + 1}, "disagrees"),
        "not-a-dict": ([1, 2, 3], "does not hold a state dict"),
    }
    for name, (obj, match) in cases.items():
        p = tmp_path / f"{name}.pth"
        torch.save(obj, p)
        with pytest.raises(fastlpips.WeightError, match=match):
            fastlpips.LPIPS(net="alex", model_path=p, pnet_rand=True)
    p = tmp_path / "garbage.pth"
    p.write_bytes(b"not a checkpoint")
    with pytest.raises(fastlpips.WeightError, match=r"garbage\.pth: not a torch checkpoint"):
        fastlpips.LPIPS(net="alex", model_path=p, pnet_rand=True)


def test_pickled_code_in_model_path_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (eval, ("1+1",))

    p = tmp_path / "evil.pth"
    torch.save({"lin0.model.1.weight": Evil()}, p)
    with pytest.raises(fastlpips.WeightError, match=r"evil\.pth: it holds pickled code \(eval\)"):
        fastlpips.LPIPS(net="alex", model_path=p, pnet_rand=True)


def test_lpips_false_with_lin_weights_file(tmp_path):
    p = tmp_path / "lin.pth"
    torch.save({"lin0.model.1.weight": torch.ones(1, 64, 1, 1)}, p)
    with pytest.raises(fastlpips.WeightError, match="lpips=False: no lin layers"):
        fastlpips.LPIPS(net="alex", lpips=False, model_path=p, pnet_rand=True)


def test_features_and_pairwise_checks(model):
    f64 = model.features(GOOD)
    f48 = model.features(rand_images(2, 64, 48))
    with pytest.raises(ValueError, match="different sizes"):
        model.compare_features(f64, f48)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        model.pairwise(GOOD, batch_size=0)
    spatial = fastlpips.LPIPS(net="alex", pnet_rand=True, spatial=True)
    with pytest.raises(ValueError, match="spatial=False"):
        spatial.pairwise(GOOD)
    with pytest.raises(ValueError, match="4 dimensions"):
        model.features(GOOD[0])


def test_check_inputs_off_skips_value_checks(model):
    m = fastlpips.LPIPS(net="alex", pnet_rand=True, check_inputs=False)
    out = m(GOOD.clone().fill_(float("nan")), GOOD)
    assert torch.isnan(out).all()  # the caller opted out: NaN propagates, no error


# -- issue 9, item 8: API messages --------------------------------------------------------------------
def test_empty_batches_are_documented_behaviour(model):
    empty, one = rand_images(0, 64, 64), rand_images(1, 64, 64)
    assert model(empty, one).shape == (0, 1, 1, 1) == model(one, empty).shape  # batch 1 broadcasts to 0
    with pytest.raises(ValueError, match="batch sizes 0 and 2: they must be equal"):
        model(empty, rand_images(2, 64, 64))
    assert model.pairwise(empty).shape == (0, 0)  # used to raise IndexError
    assert model.pairwise(empty, GOOD).shape == (0, len(GOOD))
    assert model.pairwise(GOOD, empty).shape == (len(GOOD), 0)
    assert fastlpips.distance_matrix(empty).shape == (0, 0)


def test_compare_features_refuses_foreign_features(model):
    f = model.features(GOOD)
    vgg = fastlpips.LPIPS(net="vgg", pnet_rand=True, verbose=False)
    with pytest.raises(ValueError, match="features of a alex v0.1 model; this model is vgg v0.1"):
        vgg.compare_features(f, f)
    v0 = fastlpips.LPIPS(net="alex", version="0.0", pnet_rand=True, verbose=False)
    with pytest.raises(ValueError, match="this model is alex v0.0"):
        v0.compare_features(f, f)
    with pytest.raises(TypeError, match="feats1 must be LPIPSFeatures"):
        model.compare_features(f, f.maps)
    with pytest.raises(ValueError, match="channels"):
        vgg.compare_features(fastlpips.LPIPSFeatures(f.maps, f.size), fastlpips.LPIPSFeatures(f.maps, f.size))
    with pytest.raises(ValueError, match="different trunks"):
        fastlpips.LPIPSFeatures.cat([f, vgg.features(GOOD)])


def test_distance_matrix_names_the_right_argument():
    x = rand_images(2, 64, 64)
    with pytest.raises(ValueError, match="^y of spatial size 8x8 is too small"):
        fastlpips.distance_matrix(x, rand_images(2, 8, 8))
    with pytest.raises(ValueError, match="^y must have 3 channels"):
        fastlpips.distance_matrix(x, torch.zeros(2, 1, 64, 64))
    with pytest.raises(TypeError, match="^y must be a torch.Tensor"):
        fastlpips.distance_matrix(x, [1, 2])


def test_model_path_directory(tmp_path):
    with pytest.raises(fastlpips.WeightError, match=f"model_path {tmp_path} is a directory"):
        fastlpips.LPIPS(net="alex", pnet_rand=True, model_path=tmp_path, verbose=False)


def test_check_inputs_off_keeps_shape_checks():
    """check_inputs=False skips only the value scan (as documented), never the shape checks."""
    m = fastlpips.LPIPS(net="alex", pnet_rand=True, check_inputs=False, verbose=False)
    with pytest.raises(ValueError, match="4 dimensions"):
        m(GOOD[0], GOOD[0])
    with pytest.raises(ValueError, match="3 channels"):
        m(GOOD[:, :1], GOOD[:, :1])
    with pytest.raises(ValueError, match="same channel count and spatial size"):
        m(GOOD, rand_images(len(GOOD), 64, 48))
    with pytest.raises(ValueError, match="too small for the alex trunk"):
        m(rand_images(1, 8, 8), rand_images(1, 8, 8))
    with pytest.raises(TypeError, match="floating-point"):
        m((GOOD * 127).to(torch.uint8), GOOD)
    with pytest.raises(ValueError, match="too small"):
        m.features(rand_images(1, 8, 8))


def test_parse_fraction_is_the_one_parser_of_radii_and_bounds():
    from fastlpips.cli.common import parse_eps
    from fastlpips.robust import parse_attack_spec

    assert V.parse_fraction("8/255", "eps") == 8 / 255
    assert V.parse_fraction(" 0.03 ", "eps") == 0.03 and V.parse_fraction("1e-3", "eps") == 1e-3
    for bad, msg in (("x", "is not a number or fraction"), ("1/0", "is not a number or fraction"),
                     ("1e999", "is not a finite number"), ("inf", "is not a number or fraction")):
        with pytest.raises(ValueError, match=f"eps '{re.escape(bad)}' {msg}"):
            V.parse_fraction(bad, "eps")
    # the command line's radii and the attack specs go through it
    assert parse_eps("8/255") == 8 / 255
    with pytest.raises(argparse.ArgumentTypeError, match="value '8/0' is not a number or fraction"):
        parse_eps("8/0")
    assert parse_attack_spec("linf=8/255").bound == 8 / 255
    with pytest.raises(ValueError, match="attack 'linf=1e999': bound '1e999' is not a finite number"):
        parse_attack_spec("linf=1e999")
