"""Reliability of the Python API: the probe's cases kept as tables.

1. NaN / Inf pixels raise ValueError naming the argument, for every metric (one rule:
   ``validation.NONFINITE_RULE``), and every metric refuses images below its minimum size;
2. E-LPIPS scoring is stateless: a split scores the same alone and after another;
3. 2AFC / JND scoring refuse NaN distances and judgments outside [0, 1];
4. robust evaluation refuses unknown seen names; union accuracy takes booleans only;
5. empty spec fields are refused, not defaulted;
6. geometry checks the distance contract, the learning rate, the start and the loss;
7. ranking_pgd's step, PAT's attack list and an empty evaluation set are checked;
and errors from the public functions come from fastlpips' own checks, naming the argument.
"""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import fastlpips
from fastlpips import classic, estimator, evaluation, geometry, iqa, losses, pat, robust, scoring, training
from fastlpips.validation import NONFINITE_RULE
from helpers import require

PACKAGE = Path(fastlpips.__file__).resolve().parent


def _raised_by_fastlpips(excinfo) -> bool:
    """The innermost frame of the exception is fastlpips' own code (a check), not torch's or numpy's."""
    tb = excinfo.tb
    while tb.tb_next is not None:
        tb = tb.tb_next
    return Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(PACKAGE)


# -- 1. non-finite inputs and minimum sizes ----------------------------------------------------------------
_MODELS = {}


def _model(key, build):
    if key not in _MODELS:
        torch.manual_seed(0)
        _MODELS[key] = build()
    return _MODELS[key]


def _lpips():
    return _model("lpips", lambda: fastlpips.LPIPS(net="alex", pnet_rand=True, verbose=False))


def _elpips():
    return _model("elpips", lambda: fastlpips.ELPIPS(pnet_rand=True, max_scale=1))


def _vgg19():
    from fastlpips.nets.trunks import build_trunk

    return build_trunk("vgg19")


# name -> (function of (x, y) on [0, 1] images, working size, a size below its minimum or None)
METRICS = {
    "iqa.psnr": (iqa.psnr, 16, None),
    "iqa.ssim": (iqa.ssim, 16, 10),
    "iqa.ms_ssim": (iqa.ms_ssim, 176, 160),
    "iqa.gmsd": (iqa.gmsd, 16, 2),
    "classic.l2": (lambda x, y: classic.l2(x * 2 - 1, y * 2 - 1), 16, None),
    "classic.dssim": (lambda x, y: classic.dssim(x * 2 - 1, y * 2 - 1), 16, 6),
    "classic.ssim": (lambda x, y: classic.ssim(x, y, 1.0), 16, 6),
    "LPIPS": (lambda x, y: _lpips()(x, y, normalize=True), 32, 16),
    "functional.lpips": (lambda x, y: fastlpips.lpips(x * 2 - 1, y * 2 - 1, net="alex"), 32, 16),
    "ELPIPS": (lambda x, y: _elpips()(x, y, n_samples=1), 32, 8),
    "elpips_estimate": (lambda x, y: estimator.elpips_estimate(
        x, y, metric=_elpips(), max_samples=4, min_samples=2, seed=0), 32, 8),
    "PixelLoss": (lambda x, y: losses.PixelLoss()(x, y), 16, None),
    "LPIPSLoss": (lambda x, y: _model("lpipsloss", lambda: losses.LPIPSLoss(net="alex", pnet_rand=True))(x, y),
                  32, 16),
    "ELPIPSLoss": (lambda x, y: _model("elpipsloss", lambda: losses.ELPIPSLoss(pnet_rand=True, max_scale=1))(x, y),
                   32, 8),
    "PerceptualLoss": (lambda x, y: _model("perceptual", lambda: losses.PerceptualLoss(trunk=_vgg19()))(x, y),
                       32, 8),
}


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("where", ["x", "y"])
@pytest.mark.parametrize("name", list(METRICS))
def test_nonfinite_pixels_raise_for_every_metric(name, where, bad):
    fn, size, _ = METRICS[name]
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(2, 3, size, size, generator=g), torch.rand(2, 3, size, size, generator=g)
    (x if where == "x" else y)[1, 0, 3, 4] = float(bad)
    with pytest.raises(ValueError, match="NaN or Inf") as e:
        fn(x, y)
    assert _raised_by_fastlpips(e), name
    assert NONFINITE_RULE == "NaN or Inf values raise ValueError"


@pytest.mark.parametrize("name", [n for n, (_, _, small) in METRICS.items() if small is not None])
def test_every_metric_refuses_images_below_its_minimum(name):
    fn, _, small = METRICS[name]
    x = torch.rand(1, 3, small, small)
    with pytest.raises(ValueError, match=r"(too small|at least).*\d+x\d+|\d+x\d+.*(too small|at least)") as e:
        fn(x, x.clone())
    assert _raised_by_fastlpips(e), name


def test_gmsd_of_different_tiny_images_is_not_zero():
    g = torch.Generator().manual_seed(3)
    for size in (3, 4, 5):  # the smallest accepted sizes, odd and even: textured images differ
        x, y = torch.rand(4, 3, size, size, generator=g), torch.rand(4, 3, size, size, generator=g)
        assert (iqa.gmsd(x, y) > 0).all(), size
        assert (iqa.gmsd(x, x) == 0).all()
    with pytest.raises(ValueError, match="at least 3x3"):
        iqa.gmsd(torch.zeros(1, 3, 2, 2), torch.ones(1, 3, 2, 2))


# -- 2. stateless E-LPIPS scoring --------------------------------------------------------------------
@pytest.mark.parametrize("sampling", ["iid", "stratified"])
@pytest.mark.slow
def test_elpips_scoring_is_stateless(sampling, tmp_path):
    """The same batch gives the same distances whatever was scored before; a split scores the same
    alone and after another split; p0 == p1 gives d0 == d1 exactly (shared draws)."""
    from fastlpips import bapps

    require("skimage")
    root = bapps.make_synthetic_bapps(tmp_path, train=0, val=6, jnd=0, seed=2)
    splits = root["2afc/val"][:2]
    metric = fastlpips.ELPIPS(pnet_rand=True, max_scale=2)

    def dist():
        return scoring.make_distance("elpips", model=metric, draws=2, seed=3, sampling=sampling)

    g = torch.Generator().manual_seed(0)
    ref, p0 = torch.rand(3, 3, 64, 64, generator=g) * 2 - 1, torch.rand(3, 3, 64, 64, generator=g) * 2 - 1
    d = dist()
    with torch.no_grad():
        first = d(ref, [p0, p0])
        second = d(ref, [p0, p0])
    assert torch.equal(first[0], second[0]) and torch.equal(first[0], first[1])
    alone = scoring.score_2afc(dist(), splits[1], progress=False, batch_size=4)
    d = dist()
    scoring.score_2afc(d, splits[0], progress=False, batch_size=4)
    after = scoring.score_2afc(d, splits[1], progress=False, batch_size=4)
    np.testing.assert_array_equal(alone.distances["d0"], after.distances["d0"])
    np.testing.assert_array_equal(alone.distances["d1"], after.distances["d1"])
    assert alone.score == after.score
    other = scoring.score_2afc(scoring.make_distance("elpips", model=metric, draws=2, seed=4, sampling=sampling),
                               splits[1], progress=False, batch_size=4)
    assert not np.array_equal(other.distances["d0"], alone.distances["d0"])  # the seed matters


# -- 3. scoring formulas ------------------------------------------------------------------------------------
@pytest.mark.parametrize("call,match", [
    (lambda: scoring.two_afc_scores([0.1, math.nan], [0.2, 0.3], [0.5, 0.5]), r"d0 holds 1 NaN distance"),
    (lambda: scoring.two_afc_scores([0.1], [math.nan], [0.5]), r"d1 holds 1 NaN"),
    (lambda: scoring.two_afc_scores([0.1], [0.2], [1.5]), r"judge .* must hold finite values in \[0, 1\]"),
    (lambda: scoring.two_afc_scores([0.1], [0.2], [-0.1]), r"judge .* \[0, 1\]"),
    (lambda: scoring.two_afc_scores([0.1], [0.2], [math.nan]), r"judge .* \[0, 1\]"),
    (lambda: scoring.jnd_map([0.1, math.nan], [1, 0]), r"ds holds 1 NaN"),
    (lambda: scoring.jnd_map([0.1, 0.2], [1, 2]), r"sames .* \[0, 1\]"),
    (lambda: scoring.two_afc_scores(["a"], [0.2], [0.5]), r"d0 must be numbers"),
])
def test_scoring_refuses_nan_distances_and_bad_judgments(call, match):
    with pytest.raises((ValueError, TypeError), match=match) as e:
        call()
    assert _raised_by_fastlpips(e)


def test_scoring_keeps_infinite_distances():
    assert scoring.two_afc_scores([math.inf], [0.2], [0.0]).tolist() == [0.0]


# -- 4. robust evaluation ------------------------------------------------------------------------------------
class _Fixed(nn.Module):
    """A parameter-free 'classifier' (the mean colour as 3 logits)."""

    def forward(self, x):
        return x.mean((2, 3))


class _Data(torch.utils.data.Dataset):
    def __init__(self, n):
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.rand(n, 3, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


@pytest.mark.parametrize("call,exc,match", [
    (lambda: robust.evaluate_robustness(_Fixed(), _Data(4), ["linf"], seen=["linf8"], progress=False), ValueError,
     r"seen names threat models \['linf8'\] that do not exist"),
    (lambda: robust.evaluate_robustness(_Fixed(), _Data(0), ["linf"], progress=False), ValueError, "dataset is empty"),
    (lambda: robust.evaluate_robustness(_Fixed(), _Data(4), ["linf"], batch_size=0, progress=False), ValueError,
     "batch_size must be >= 1"),
    (lambda: robust.evaluate_robustness("model", _Data(4), ["linf"], progress=False), TypeError, "model must be"),
    (lambda: robust.union_accuracy({"linf": [0.4, 1.0]}, ["linf"]), ValueError, r"must hold booleans"),
    (lambda: robust.union_accuracy({"linf": [[1, 0]]}, ["linf"]), ValueError, r"1-D sequence"),
    (lambda: robust.union_accuracy({"linf": []}, ["linf"]), ValueError, "no examples"),
    (lambda: robust.union_accuracy({"linf": [1, 0], "l2": [1]}, ["linf", "l2"]), ValueError,
     r"different numbers of examples: \{'linf': 2, 'l2': 1\}"),
    (lambda: robust.unseen_mean({"linf": 1.0}, narrow=()), ValueError, "narrow must be a non-empty"),
])
def test_robust_arguments(call, exc, match):
    with pytest.raises(exc, match=match) as e:
        call()
    assert _raised_by_fastlpips(e)


def test_union_accepts_booleans_and_0_1_and_a_parameter_free_model_evaluates():
    assert robust.union_accuracy({"a": [True, False], "b": np.array([1, 1])}, ["a", "b"]) == 0.5
    r = robust.evaluate_robustness(_Fixed(), _Data(6), ["linf=0.01"], iterations=1, progress=False, seen=["linf"])
    assert r.n == 6 and 0 <= r.summary["linf"] <= r.summary["clean"] + 1e-9


# -- 5. spec fields ------------------------------------------------------------------------------------
@pytest.mark.parametrize("call,match", [
    (lambda: robust.parse_attack_spec("linf="), r"'=' without a bound"),
    (lambda: robust.parse_attack_spec("lpa:=0.5"), r"':' without a distance"),
    (lambda: robust.parse_attack_spec("lpa:"), r"':' without a distance"),
    (lambda: robust.parse_attack_spec("linf=1e999"), r"bound '1e999' is not a finite number"),
    (lambda: evaluation.parse_metric("lpips-alex="), r"'=' without a checkpoint path"),
    (lambda: evaluation.parse_metric("rlpips="), r"needs a checkpoint|without a checkpoint"),
])
def test_empty_spec_fields_are_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# -- 6. geometry ----------------------------------------------------------------------------------------
def _imgs(n=2, size=8):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("distance,match", [
    (lambda x, y: (x - y).square().sum(), r"shape \(2,\) for 2 pair\(s\); <lambda> returned a scalar"),
    (lambda x, y: (x - y).square().sum().reshape(1), r"returned shape \(1,\)"),
    (lambda x, y: torch.cdist(x.flatten(1), y.flatten(1)), r"returned shape \(2, 2\)"),
    (lambda x, y: (x - y).flatten(1).norm(dim=1).tolist(), r"returned a list"),
])
def test_geometry_checks_the_distance_contract(distance, match):
    with pytest.raises(ValueError, match=match):
        geometry.barycenter(_imgs(), distance, steps=2)
    with pytest.raises(ValueError, match=match.replace("2", "3") if "cdist" not in match else match):
        geometry.geodesic(_imgs()[0], _imgs()[1], distance, frames=2, steps=2)


def test_geometry_takes_lpips_shaped_distances():
    lp = _lpips()
    r = geometry.geodesic(_imgs(size=32)[0], _imgs(size=32)[1], lambda x, y: lp(x, y, normalize=True), frames=1,
                          steps=1)
    assert r.images.shape == (3, 3, 32, 32)


@pytest.mark.parametrize("kwargs,match", [
    (dict(lr=0.0), "lr must be > 0"), (dict(lr=-1.0), "lr must be > 0"), (dict(lr=math.nan), "lr must be a finite"),
    (dict(init=torch.full((1, 3, 8, 8), math.nan)), "init contains 64 NaN or Inf|init contains 192 NaN"),
    (dict(seed=1.5), "seed must be an int"), (dict(draws=0), "draws must be >= 1"),
])
def test_barycenter_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match) as e:
        geometry.barycenter(_imgs(), "euclidean", steps=2, **kwargs)
    assert _raised_by_fastlpips(e)


def test_geometry_stops_on_a_nan_distance_and_names_small_images():
    with pytest.raises(ValueError, match="the distance gave a loss of nan at step 0"):
        geometry.barycenter(_imgs(), lambda x, y: (x - y).flatten(1).norm(dim=1) * math.nan, steps=3)
    with pytest.raises(ValueError, match="too small for the alex trunk: it needs at least 31x31") as e:
        geometry.barycenter(_imgs(size=16), "lpips", steps=1)
    assert _raised_by_fastlpips(e)
    with pytest.raises(ValueError, match="init must be 'noise' or 'linear'"):
        geometry.geodesic(_imgs()[0], _imgs()[1], "euclidean", init="zeros", steps=1)


# -- 7. training, PAT, estimator, evaluation --------------------------------------------------------------
def _triplet(n=2):
    g = torch.Generator().manual_seed(1)
    return [torch.rand(n, 3, 32, 32, generator=g) * 2 - 1 for _ in range(3)], torch.rand(n, generator=g)


def test_ranking_pgd_and_ranking_loss_arguments():
    model = _lpips()
    (ref, p0, p1), judge = _triplet()
    for bad, match in ((-1.0, "step_size must be > 0"), (0.0, "step_size must be > 0"),
                       (math.inf, "step_size must be a finite")):
        with pytest.raises(ValueError, match=match):
            training.ranking_pgd(model, None, ref, p0, p1, judge, eps=0.03, step_size=bad, steps=1)
    for kwargs, exc, match in ((dict(steps=0), ValueError, "steps must be >= 1"),
                               (dict(steps=1.5), TypeError, "steps must be an integer"),
                               (dict(steps=True), TypeError, "steps must be an integer"),
                               (dict(eps=-0.1), ValueError, "eps must be >= 0"),
                               (dict(eps=math.nan), ValueError, "eps must be a finite number"),
                               (dict(eps="0.03"), TypeError, "eps must be a number")):
        with pytest.raises(exc, match=match):
            training.ranking_pgd(model, None, ref, p0, p1, judge, **{"eps": 0.03, "steps": 1, **kwargs})
    with pytest.raises(ValueError, match=r"judge .* \[0, 1\]"):
        training.ranking_pgd(model, None, ref, p0, p1, judge + 2, eps=0.03, steps=1)
    loss = training.BCERankingLoss()
    d = torch.rand(2, 1, 1, 1)
    with pytest.raises(ValueError, match=r"judge must lie in \[-1, 1\]"):
        loss(d, d, torch.tensor([0.5, 3.0]))
    with pytest.raises(ValueError, match=r"one value per pair \(2\)"):
        loss(d, d, torch.zeros(3))
    assert torch.isfinite(loss(d, d, torch.tensor([-1.0, 1.0])))  # the [-1, 1] convention works


def test_trainer_methods_in_the_wrong_order_say_what_to_call():
    t = training.Trainer()
    with pytest.raises(RuntimeError, match=r"call initialize\(\.\.\.\) first"):
        t.optimize_parameters()
    t.initialize(model="lpips", net="alex", use_gpu=False, is_train=True, pnet_rand=True)
    with pytest.raises(RuntimeError, match=r"call set_input\(batch\) first"):
        t.optimize_parameters()
    with pytest.raises(RuntimeError, match="no training step yet"):
        t.get_current_errors()
    with pytest.raises(ValueError, match="set_input needs a 2AFC batch"):
        t.set_input({"ref": torch.zeros(1)})


def test_pat_needs_an_attack_list():
    from fastlpips.nets.classifiers import build_classifier

    with pytest.raises(ValueError, match=r"PATConfig.attacks is empty.*\('none',\)"):
        pat.train_pat(build_classifier("tiny", 3), _Data(4), "unused", pat.PATConfig(attacks=(), batch_size=2),
                      progress=False)
    assert not Path("unused").exists()


def test_estimator_seed_and_evaluate_arguments(tmp_path):
    x = torch.rand(1, 3, 32, 32)
    with pytest.raises(TypeError, match=r"seed must be an int >= 0 or None, got 1.5"):
        estimator.elpips_estimate(x, x, seed=1.5, metric=_elpips(), max_samples=4, min_samples=2)
    from PIL import Image

    for d in ("ref", "out"):
        (tmp_path / d).mkdir()
        Image.fromarray(np.full((16, 16, 3), 100, np.uint8)).save(tmp_path / d / "a.png")
    r = evaluation.evaluate(tmp_path / "ref", str(tmp_path / "out"), "psnr,ssim", tmp_path / "res", report=False)
    assert r.methods == ["out"] and [s.key for s in r.metrics] == ["psnr", "ssim"]
    with pytest.raises(TypeError, match="batch_size must be an integer"):
        evaluation.evaluate(tmp_path / "ref", [tmp_path / "out"], ["psnr"], tmp_path / "res", batch_size=2.5)


# -- errors name the argument and come from fastlpips' checks --------------------------------------------
_X = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(11))
_API = [
    ("iqa.psnr(data_range)", lambda v: iqa.psnr(_X, _X, data_range=v), "data_range"),
    ("iqa.ssim(win_size)", lambda v: iqa.ssim(_X, _X, win_size=v), "win_size"),
    ("iqa.ssim(x)", lambda v: iqa.ssim(v, _X), "x"),
    ("iqa.gmsd(y)", lambda v: iqa.gmsd(_X, v), "y"),
    ("iqa.ms_ssim(weights)", lambda v: iqa.ms_ssim(_X, _X, weights=v), "weights"),
    ("classic.l2(in0)", lambda v: classic.l2(v, _X), "in0"),
    ("classic.dssim(colorspace)", lambda v: classic.dssim(_X, _X, colorspace=v), "colorspace"),
    ("scoring.make_distance(draws)", lambda v: scoring.make_distance("l2-lab", draws=v), "draws"),
    ("scoring.make_distance(metric)", lambda v: scoring.make_distance(v), "metric"),
    ("robust.parse_attack_spec", lambda v: robust.parse_attack_spec(v), "spec|attack"),
    ("robust.evaluate_robustness(iterations)",
     lambda v: robust.evaluate_robustness(_Fixed(), _Data(2), ["linf"], iterations=v, progress=False), "iterations"),
    ("robust.evaluate_robustness(seed)",
     lambda v: robust.evaluate_robustness(_Fixed(), _Data(2), ["linf"], seed=v, progress=False), "seed"),
    ("geometry.barycenter(steps)", lambda v: geometry.barycenter(_imgs(), "euclidean", steps=v), "steps"),
    ("geometry.geodesic(frames)", lambda v: geometry.geodesic(_imgs()[0], _imgs()[1], "euclidean", frames=v), "frames"),
    ("geometry.barycenter(images)", lambda v: geometry.barycenter(v, "euclidean", steps=1), "images"),
    ("estimator.elpips_estimate(max_samples)",
     lambda v: estimator.elpips_estimate(_X, _X, max_samples=v, metric=_elpips()), "max_samples"),
    ("evaluation.parse_metric", lambda v: evaluation.parse_metric(v), "metric"),
    ("training.ranking_pgd(steps)", lambda v: training.ranking_pgd(
        _lpips(), None, *_triplet()[0], _triplet()[1], eps=0.03, steps=v), "steps"),
    ("training.ranking_pgd(ref)", lambda v: training.ranking_pgd(
        _lpips(), None, v, *_triplet()[0][1:], _triplet()[1], eps=0.03, steps=1), "ref"),
    ("losses.PixelLoss(x)", lambda v: losses.PixelLoss()(v, _X), "x"),
    ("losses.PixelLoss(kind)", lambda v: losses.PixelLoss(v), "kind"),
    ("losses.PerceptualLoss(y)", lambda v: _model("perceptual", lambda: losses.PerceptualLoss(trunk=_vgg19()))(_X, v),
     "y"),
    ("losses.LPIPSLoss(x)", lambda v: _model("lpipsloss", lambda: losses.LPIPSLoss(net="alex", pnet_rand=True))(v, _X),
     "x"),
    ("scoring.score_2afc(batch_size)", lambda v: scoring.score_2afc(scoring.make_distance("l2-lab"), [], batch_size=v),
     "batch_size"),
    ("scoring.two_afc_scores(judge)", lambda v: scoring.two_afc_scores([0.1, 0.2], [0.2, 0.1], v), "judge"),
    ("robust.union_accuracy(correct)", lambda v: robust.union_accuracy(v, ["linf"]), "correct"),
    ("evaluation.evaluate(seed)", lambda v: evaluation.evaluate(".", ["."], ["psnr"], "res", seed=v), "seed"),
    ("geometry.barycenter(distance)", lambda v: geometry.barycenter(_imgs(), v, steps=1), "distance"),
    ("estimator.elpips_estimate(seed)",
     lambda v: estimator.elpips_estimate(_X, _X, seed=v, metric=_elpips(), max_samples=4, min_samples=2), "seed"),
    ("pat.PATConfig(attacks)", lambda v: pat.train_pat(_Fixed(), _Data(4), "unused", pat.PATConfig(
        attacks=v, batch_size=2), progress=False), "attacks|attack"),
]
_BAD = {
    "data_range": [0, -1.0, math.nan, "1", None], "win_size": [4, 0, 2.5, "7"], "x": [None, "img", _X[0], _X.long()],
    "y": [None, _X[:, :2], _X.long(), torch.full_like(_X, math.nan)], "weights": [[], [0.5, -1], "abc", [math.nan]],
    "in0": [None, _X[0], _X.int()], "colorspace": ["XYZ", None, 3], "draws": [0, -2, 1.5, "3"],
    "metric": ["nope", "", None, 3], "spec|attack": ["", "fgsm", "linf=abc", None, "linf:self"],
    "iterations": [0, 1.5, "2"], "seed": [-1, 1.5, "0"], "steps": [0, -1, 2.0, "10"],
    "frames": [0, 1.5, True], "images": [None, _X[:1], _X * 3, torch.full_like(_X, math.nan)],
    "max_samples": [1, 0, 2.5], "ref": [None, _X[0], torch.full((2, 3, 32, 32), math.nan)],
    "kind": ["l3", None], "batch_size": [0, 1.5, "8"], "judge": [[0.5], [2.0, 0.5], [math.nan, 0.5], "ab"],
    "correct": [None, [1, 0], {"linf": [0.3]}], "distance": ["lpipz", None, 3],
    "attacks|attack": [(), "linf", ("fgsm",), ("linf=",)],
}
_CASES = [(name, fn, arg, bad) for name, fn, arg in _API for bad in _BAD[arg]]


def _short(v) -> str:
    if isinstance(v, torch.Tensor):
        kind = "nan" if v.is_floating_point() and bool(torch.isnan(v).any()) else str(v.dtype).replace("torch.", "")
        return f"tensor{tuple(v.shape)}-{kind}"
    return repr(v)


@pytest.mark.parametrize("name,fn,arg,bad", _CASES, ids=[f"{c[0]}={_short(c[3])}"[:70] for c in _CASES])
def test_public_functions_check_their_arguments(name, fn, arg, bad):
    """Bad values of one argument: a TypeError or ValueError raised by fastlpips' own checks (not
    by torch or numpy further in), whose message names the argument."""
    with pytest.raises((TypeError, ValueError)) as e:
        fn(bad)
    assert _raised_by_fastlpips(e), (name, bad, repr(e.value))
    names = arg.split("|")
    msg = str(e.value)
    assert any(n in msg for n in names) or (arg in ("x", "y", "in0", "images", "ref") and "NaN" in msg), (name, msg)
