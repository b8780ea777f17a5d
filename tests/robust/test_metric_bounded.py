"""Perceptual attacks bounded by registry metrics (R-LPIPS, E-LPIPS, DISTS, LPIPS-VGG) in robust
evaluation and PAT: specs, side-by-side accuracy, every output checked with the bounding metric
(E-LPIPS: with fresh draws and an interval)."""
import math
import types

import pytest
import torch

from fastlpips import LPIPS, bapps, create_metric, pat, robust, training
from fastlpips.estimator import elpips_estimate
from fastlpips.imagefolder import ImageFolder, make_example_folder
from fastlpips.nets.classifiers import ResNet32


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    """An R-LPIPS checkpoint from adversarial training on the synthetic BAPPS set (50 triplets, 1
    epoch, L_inf PGD on x0) and a PAT-trained tiny ResNet (self-bounded Fast-LPA, 2 epochs) of the
    example data, with its validation crops."""
    __import__("helpers").require("skimage")
    root = tmp_path_factory.mktemp("metric-bounded")
    data = bapps.make_synthetic_bapps(root / "bapps", train=50, val=0, jnd=0, seed=1, patch=32)
    init = root / "init.pth"
    torch.save(LPIPS(net="alex", verbose=False).state_dict(), init)
    cfg = training.TrainConfig(epochs=1, decay_epochs=0, batch_size=25, lr=1e-2, seed=1, init=str(init),
                               adversarial=training.AdversarialConfig(eps=8 / 255, steps=2))
    training.train_lpips(data["2afc/train"], root / "rlpips", cfg, progress=False)
    make_example_folder(root / "ex", train_per_class=8, val_per_class=4, seed=0)
    torch.manual_seed(0)
    net = pat.train_pat(ResNet32(5, blocks=(1, 1, 1, 1), width=8, norm="group"), ImageFolder(root / "ex" / "train"),
                        root / "pat", pat.PATConfig(attacks=("fast-lpa:self=0.5",), attack_iterations=2, epochs=2,
                                                    batch_size=20, lr=0.05, warmup_epochs=0), progress=False)
    return types.SimpleNamespace(root=root, ckpt=root / "rlpips" / "latest_net_.pth", net=net,
                                 val=ImageFolder(root / "ex" / "val"))


def test_rlpips_bounded_ppgd_beside_alexnet_bounded(setting):
    """ppgd:alexnet=0.5 and ppgd:rlpips=CKPT=0.5 side by side; the R-LPIPS outputs are checked with
    the R-LPIPS metric itself (its own forward pass), which the test repeats."""
    spec = f"ppgd:rlpips={setting.ckpt}=0.5"
    r = robust.evaluate_robustness(setting.net, setting.val, ["ppgd:alexnet=0.5", spec], iterations=3,
                                   progress=False, batch_size=20)
    rows = {row["attack"]: row for row in r.rows()}
    assert list(rows) == ["clean", "ppgd:alexnet", "ppgd:rlpips"]
    assert rows["ppgd:rlpips"]["checked_with"] == "rlpips" and rows["ppgd:alexnet"]["checked_with"] == "attack"
    for name in ("ppgd:alexnet", "ppgd:rlpips"):
        assert r.violations[name] == 0 and rows[name]["max_size"] <= 0.5 * (1 + 1e-5)
        assert rows[name]["accuracy"] <= rows["clean"]["accuracy"]
    # the check repeated by hand: R-LPIPS of every output, from a metric built independently
    x = torch.stack([setting.val[i][0] for i in range(8)])
    y = torch.tensor([setting.val[i][1] for i in range(8)])
    attack = robust.make_attack(spec, setting.net, iterations=3, image_size=(32, 32))
    adv = attack(x, y, generator=torch.Generator().manual_seed(0))
    ok, size, half, how = robust.verify_outputs(attack, x, adv)
    direct = create_metric("rlpips", checkpoint=str(setting.ckpt))(adv, x)
    torch.testing.assert_close(size, direct, rtol=1e-6, atol=1e-7)
    assert half is None and how == "rlpips" and bool(ok.all()) and bool((direct <= 0.5 * (1 + 1e-5)).all())
    assert direct.max().item() > 0.05  # the attack moved the images (the bound is not vacuous)


@pytest.mark.slow
def test_elpips_bound_is_checked_with_fresh_draws(setting):
    """E-LPIPS-bounded PPGD: the reported sizes are an E-LPIPS estimate from draws independent of
    the attack's (another seed), with an interval; an output violates only when its whole interval
    lies above the bound."""
    x = torch.stack([setting.val[i][0] for i in range(2)])
    y = torch.tensor([setting.val[i][1] for i in range(2)])
    attack = robust.make_attack("ppgd:elpips=0.02", setting.net, iterations=1, image_size=(32, 32))
    assert attack.distance.metric.max_scale == 4  # the largest scale level 32 x 32 images fit
    adv = attack(x, y, generator=torch.Generator().manual_seed(0))
    ok, size, half, how = robust.verify_outputs(attack, x, adv, seed=123, samples=32)
    est = elpips_estimate(adv, x, metric=attack.distance.bounding_metric.module, seed=123, min_samples=32,
                          max_samples=32)
    torch.testing.assert_close(size, est.mean)
    torch.testing.assert_close(half, est.half_width)
    assert how == "elpips (fresh draws)" and bool((half > 0).all())
    assert not torch.allclose(size, attack.last["size"].cpu())  # not the attack's own draws
    torch.testing.assert_close(ok, size - half <= 0.02 * (1 + 1e-5) + 1e-6)
    data = torch.utils.data.TensorDataset(x[:1], y[:1])
    r = robust.evaluate_robustness(setting.net, data, ["ppgd:elpips=0.02"], iterations=1, progress=False,
                                   check_samples=32)
    row = r.rows()[1]
    assert row["checked_with"] == "elpips (fresh draws)" and math.isfinite(row["max_size_ci"])
    assert row["max_size_ci"] > 0 and r.sizes["ppgd"].shape == (1,)


@pytest.mark.slow
def test_dists_bounded_lpa_and_pat_with_a_metric_bound(setting, tmp_path):
    """LPA bounded by DISTS: outputs within the bound by DISTS itself; PAT trains against Fast-LPA
    bounded by the R-LPIPS checkpoint (the R-LPIPS paper's follow-up experiment), one step."""
    x = torch.stack([setting.val[i][0] for i in range(4)])
    y = torch.tensor([setting.val[i][1] for i in range(4)])
    attack = robust.make_attack("lpa:dists=0.05", setting.net, iterations=2, image_size=(32, 32))
    adv = attack(x, y, generator=torch.Generator().manual_seed(0))
    ok, size, _, how = robust.verify_outputs(attack, x, adv)
    torch.testing.assert_close(size, create_metric("dists")(adv, x), rtol=1e-5, atol=1e-6)
    assert how == "dists" and bool(ok.all())
    torch.manual_seed(0)
    cfg = pat.PATConfig(attacks=(f"fast-lpa:rlpips={setting.ckpt}=0.5",), attack_iterations=2, epochs=1,
                        batch_size=20, lr=0.05, warmup_epochs=0)
    pat.train_pat(ResNet32(5, blocks=(1, 1, 1, 1), width=8, norm="group"), ImageFolder(setting.root / "ex" / "train"),
                  tmp_path / "run", cfg, progress=False, stop_after_steps=1)
    assert (tmp_path / "run" / "checkpoint.pt").is_file()


def test_metric_specs_are_refused_naming_the_choices(setting):
    for spec, msg in (("ppgd:ssim=0.1", r"'ssim' cannot bound a perceptual attack .*distances: self, alexnet, "
                                        r"lpips-alex.*elpips.*dists"),
                      ("ppgd:nope=0.1", r"unknown metric 'nope'.*distances: self, alexnet"),
                      ("lpa:rlpips=0.5", "rlpips needs a checkpoint"),
                      (f"lpa:rlpips={setting.root / 'missing.pth'}=0.5", "does not exist"),
                      ("fast-lpa:dists", "give the bound on the scale of dists")):
        with pytest.raises(ValueError, match=msg):
            robust.parse_attack_spec(spec)
    with pytest.raises(ValueError, match="cannot bound a perceptual attack"):
        pat.PATConfig(attacks=("fast-lpa:psnr=1",)) and pat._check_config(pat.PATConfig(attacks=("fast-lpa:psnr=1",)))
