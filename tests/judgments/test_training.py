"""lpips' trainer semantics (ranking head, BCE, Adam, clamp, dropout order, lr schedule),
checkpoints and resume, R-LPIPS' attack and adversarial training, on a generated BAPPS-layout set."""

import numpy as np
import pytest
import torch

import fastlpips
from fastlpips import bapps, scoring, training
from helpers import model_pair, require, torchrun


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    require("skimage")
    return bapps.make_synthetic_bapps(tmp_path_factory.mktemp("bapps"), train=40, val=10, jnd=0, seed=7)


def test_ranking_head_is_lpips(lpips_ref):
    torch.manual_seed(0)
    theirs = lpips_ref.BCERankingLoss()
    ours = training.BCERankingLoss()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    d0, d1 = torch.rand(6, 1, 1, 1), torch.rand(6, 1, 1, 1)
    h = torch.rand(6, 1, 1, 1) * 2 - 1
    torch.testing.assert_close(ours(d0, d1, h), theirs(d0, d1, h), rtol=0, atol=0)
    assert fastlpips.BCERankingLoss is training.BCERankingLoss and fastlpips.Trainer is training.Trainer


@pytest.mark.slow
def test_trainer_matches_lpips_trainer_for_20_steps(synth, lpips_ref):
    """Same initial weights, data order and seed: lpips' Trainer and ours (features once per
    triplet, fused heads; dropout masks drawn in lpips' order) give the same lin weights after 20
    steps, to 1e-5 relative; the weights stay >= 0."""
    real, _ = model_pair("alex")  # a real AlexNet trunk
    theirs = lpips_ref.Trainer()
    theirs.initialize(model="lpips", net="alex", use_gpu=False, is_train=True, pnet_rand=True)
    theirs.net.net.load_state_dict({k: v.contiguous() for k, v in real.net.state_dict().items()})
    ours = fastlpips.Trainer()
    ours.initialize(model="lpips", net="alex", use_gpu=False, is_train=True, pnet_rand=True)
    ours.net.load_state_dict(theirs.net.state_dict())
    ours.rankLoss.net.load_state_dict(theirs.rankLoss.net.state_dict())
    assert any(bool((lin.model[1].weight < 0).any()) for lin in ours.net.lins)  # the clamp has work to do
    loader = torch.utils.data.DataLoader(bapps.TwoAFCDataset(synth["2afc/train"]), batch_size=8)
    batches = [b for _ in range(4) for b in loader][:20]  # 40 triplets, 5 batches per pass
    for trainer in (theirs, ours):
        torch.manual_seed(11)
        for b in batches:
            trainer.set_input(b)
            trainer.optimize_parameters()
    for k in range(5):
        w_ours = ours.net.lins[k].model[1].weight.detach()
        w_theirs = theirs.net.lins[k].model[1].weight.detach()
        assert float(w_ours.min()) >= 0
        rel = float((w_ours - w_theirs).norm() / w_theirs.norm())
        assert rel <= 1e-5, (k, rel)
    e = ours.get_current_errors()
    assert set(e) == {"loss_total", "acc_r"} and np.isfinite(e["loss_total"])
    for p, q in zip(ours.rankLoss.parameters(), theirs.rankLoss.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)


def test_trainer_save_round_trips_through_lpips(tmp_path, lpips_ref):
    ours = fastlpips.Trainer()
    ours.initialize(model="lpips", net="alex", use_gpu=False, is_train=True, pnet_rand=True)
    ours.clamp_weights()
    ours.save(str(tmp_path), "latest")
    assert {p.name for p in tmp_path.iterdir()} == {"latest_net_.pth", "latest_net_rank.pth"}
    theirs = lpips_ref.LPIPS(net="alex", pnet_rand=True, model_path=str(tmp_path / "latest_net_.pth"), verbose=False)
    again = fastlpips.LPIPS(net="alex", model_path=str(tmp_path / "latest_net_.pth"), verbose=False)
    x, y = torch.rand(2, 3, 64, 64) * 2 - 1, torch.rand(2, 3, 64, 64) * 2 - 1
    ours.net.eval()
    with torch.no_grad():
        want = ours.net(x, y)
        torch.testing.assert_close(again(x, y), want, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(theirs(x, y), want, rtol=1e-5, atol=1e-7)
    gpu = fastlpips.Trainer()
    if torch.cuda.is_available():  # a GPU machine: use_gpu=True trains there
        gpu.initialize(model="lpips", net="alex", use_gpu=True, is_train=True, pnet_rand=True)
        assert next(gpu.net.parameters()).is_cuda and next(gpu.rankLoss.parameters()).is_cuda
    else:
        with pytest.raises(ValueError, match="CUDA is not available"):
            gpu.initialize(use_gpu=True)


def test_lr_schedule_is_lpips_train_py():
    cfg = training.TrainConfig(epochs=2, decay_epochs=4, lr=1.0)
    # lpips lowers the rate by lr / n_decay at the end of each epoch after the first n
    assert [training._lr(cfg, e) for e in range(1, 7)] == [1.0, 1.0, 1.0, 0.75, 0.5, 0.25]


def _lins(net):
    return [lin.model[1].weight.detach().clone() for lin in net.lins]


def test_train_resume_equals_uninterrupted_and_checkpoint_loads(synth, tmp_path, lpips_ref):
    cfg = training.TrainConfig(epochs=1, decay_epochs=1, batch_size=10, seed=3)
    full = training.train_lpips(synth["2afc/train"], tmp_path / "full", cfg, progress=False)
    training.train_lpips(synth["2afc/train"], tmp_path / "split", cfg, stop_after=1, progress=False)
    ckpt = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=False)
    assert ckpt["epoch"] == 1
    resumed = training.train_lpips(synth["2afc/train"], tmp_path / "split", cfg, resume=True, progress=False)
    for a, b in zip(_lins(full), _lins(resumed)):
        assert torch.equal(a, b)
        assert float(a.min()) >= 0
    log = (tmp_path / "split" / "log.csv").read_text().splitlines()
    assert log[0] == "epoch,lr,loss,acc" and len(log) == 3
    ref = lpips_ref.LPIPS(net="alex", pnet_rand=True, model_path=str(tmp_path / "full" / "latest_net_.pth"),
                          verbose=False)
    full.eval()
    x, y = torch.rand(2, 3, 64, 64) * 2 - 1, torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(ref(x, y), full(x, y), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="another configuration"):
        training.train_lpips(synth["2afc/train"], tmp_path / "split", training.TrainConfig(epochs=2, decay_epochs=1),
                             resume=True, progress=False)
    with pytest.raises(FileNotFoundError, match="checkpoint.pt does not exist"):
        training.train_lpips(synth["2afc/train"], tmp_path / "none", cfg, resume=True, progress=False)


def test_ranking_pgd_stays_in_the_ball_and_raises_the_loss(synth):
    torch.manual_seed(0)
    model = fastlpips.LPIPS(net="alex", verbose=False)
    rank = training.BCERankingLoss()
    batch = next(iter(torch.utils.data.DataLoader(bapps.TwoAFCDataset(synth["2afc/val"][:1]), batch_size=6)))
    ref, p0, p1, h = batch["ref"], batch["p0"], batch["p1"], batch["judge"]

    def loss(im):
        with torch.no_grad():
            d0, d1 = model.distances(im["ref"], [im["p0"], im["p1"]])
            return float(rank(d0, d1, h.view(-1, 1, 1, 1) * 2 - 1))

    clean = loss({"ref": ref, "p0": p0, "p1": p1})
    for norm, eps in (("linf", 8 / 255), ("l2", 1.0)):
        for target in training.ATTACK_TARGETS:
            adv = training.ranking_pgd(model, rank, ref, p0, p1, h, eps=eps, norm=norm, target=target, steps=5)
            moved = {"x0": ["p0"], "x1": ["p1"], "ref": ["ref"], "x0_x1": ["p0", "p1"]}[target]
            for k, orig in (("ref", ref), ("p0", p0), ("p1", p1)):
                delta = (adv[k] - orig).flatten(1)
                size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
                assert bool((size <= eps * (1 + 1e-5)).all()) and (k in moved or float(size.max()) == 0)
                assert float(adv[k].min()) >= -1 and float(adv[k].max()) <= 1
            assert loss(adv) > clean, (norm, target)
    assert all(p.requires_grad for p in rank.parameters())  # restored after the attack
    fresh = training.ranking_pgd(model, "fresh", ref, p0, p1, h, eps=8 / 255, steps=2)
    again = training.ranking_pgd(model, "fresh", ref, p0, p1, h, eps=8 / 255, steps=2)
    assert torch.equal(fresh["p0"], again["p0"])  # the re-initialized heads are seeded
    # the margin objective moves the metric's choice against the humans': the 2AFC score drops
    with torch.no_grad():
        before = scoring.two_afc_scores(*model.distances(ref, [p0, p1]), h).mean()
        adv = training.ranking_pgd(model, None, ref, p0, p1, h, eps=8 / 255, steps=5)
        after = scoring.two_afc_scores(*model.distances(adv["ref"], [adv["p0"], adv["p1"]]), h).mean()
    assert after < before
    with pytest.raises(ValueError, match="target must be one of"):
        training.ranking_pgd(model, rank, ref, p0, p1, h, eps=0.1, target="p2")


@pytest.mark.subprocess
def test_torchrun_training_resumes_to_the_uninterrupted_weights(synth, tmp_path):
    """2 processes (gloo, DistributedDataParallel): a run split by --stop-after 1 and --resume ends
    with the weights of the uninterrupted run; rank 0 alone writes the files."""
    def run(out, *extra):
        proc = torchrun("-m", "fastlpips", "train", *synth["2afc/train"], "--out-dir", out, "--epochs", "1",
                        "--decay-epochs", "1", "--batch-size", "10", "--no-progress", *extra, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]

    run(tmp_path / "full")
    run(tmp_path / "split", "--stop-after", "1")
    run(tmp_path / "split", "--resume")
    a = torch.load(tmp_path / "full" / "latest_net_.pth", weights_only=True)
    b = torch.load(tmp_path / "split" / "latest_net_.pth", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ckpt = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=False)
    assert ckpt["epoch"] == 2 and len(ckpt["rng"]) == 2
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == [
        "checkpoint.pt", "latest_net_.pth", "latest_net_rank.pth", "log.csv"]


@pytest.mark.slow
def test_robust_training_raises_2afc_under_attack(tmp_path):
    """R-LPIPS on generated sets, three seeds (data, initial order, attacks): from the same (v0.1)
    lin weights, training on L_inf PGD examples on x0 (eps 8/255 on the [-1, 1] scale, 3 steps;
    100 triplets of 32x32 patches, 8 epochs) gives a higher 2AFC score under 5-step L_inf PGD on x0
    than the same training on clean triplets, on 100 validation triplets per seed. Measured here
    (one thread, robust - natural): 0.024, 0.062, 0.026 (mean 0.037; seeds 4 and 5: 0.044, 0.046);
    the L_2 column gains too. The test asks for a mean gain of 0.015 and no seed losing more than
    0.01 (one validation judge's worth); a larger run: benchmarks/README.md."""
    require("skimage")
    gains, scores = [], []
    for seed in (1, 2, 3):
        data = bapps.make_synthetic_bapps(tmp_path / f"data{seed}", train=100, val=25, jnd=0, seed=seed, patch=32)
        init = tmp_path / "init.pth"
        torch.save(fastlpips.LPIPS(net="alex", verbose=False).state_dict(), init)
        models = {}
        for name, adv in (("natural", None), ("robust", training.AdversarialConfig(eps=8 / 255, steps=3))):
            cfg = training.TrainConfig(epochs=8, decay_epochs=0, batch_size=25, lr=1e-2, seed=seed, init=str(init),
                                       adversarial=adv)
            models[name] = training.train_lpips(data["2afc/train"], tmp_path / f"{name}{seed}", cfg, progress=False)
        rows = training.robust_2afc_table(models, data["2afc/val"], steps=5, targets=("x0",), progress=False)
        score = {(r["model"], r["attack"]): r["2afc"] for r in rows}
        assert score[("natural", "linf")] < score[("natural", "none")], score  # the attack works
        gains.append(score[("robust", "linf")] - score[("natural", "linf")])
        scores.append(score)
    assert min(gains) > -0.01, (gains, scores)
    assert sum(gains) / len(gains) >= 0.015, (gains, scores)
