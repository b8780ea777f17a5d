"""Perceptual Adversarial Training vs perceptual-advex 0.2.6, same run, same machine.

* one PAT epoch on the worked example's data (examples/pat_demo.py: 500 training crops 32x32 of
  five scikit-image photos; the tiny ResNet, one block per stage, width 16; batch 50; 10 steps),
  Fast-LPA with 10 iterations, self-bounded (bound 0.5) and AlexNet-bounded (bound 1.0):
  perceptual-advex's ``adv_train.py`` iteration (model.eval(); its FastLagrangePerceptualAttack
  with ``lpips_model`` the classifier's own FeatureModel or its AlexNetFeatureModel with our
  AlexNet weights; model.train(); cross-entropy; ``clip_grad_value_(1.0)``; SGD step) over the
  epoch's batches, vs ``fastlpips.pat.train_pat(epochs=1)`` (its data loading and the end-of-epoch
  checkpoint included). Same initial weights, data, bound, batch, optimizer; no augmentation on
  either side. Goal >= 1.3x;
* robust evaluation: images/s of each attack of the paper's suite (L_inf, L_2, JPEG, StAdv,
  ReColorAdv with 20 steps; PPGD and LPA with 40, AlexNet bound 0.5) on the 100 validation crops
  of the PAT model trained here.

perceptual-advex no longer imports with current torchvision; its removed ``torchvision.models.utils``
is aliased to torch.hub before the import (``make bench-deps`` installs it).
"""
import tempfile
import time
from pathlib import Path

import pytest
import torch
from conftest import perceptual_advex
from torch import nn
from torch.nn import functional as F

EPOCH_BATCH = 50
_CACHE = {}


def _padv():
    pa, _, models = perceptual_advex()
    return pa, models.FeatureModel, models.AlexNetFeatureModel


def data():
    if "data" not in _CACHE:
        pytest.importorskip("skimage")
        from fastlpips.imagefolder import ImageFolder, make_example_folder

        root = Path(tempfile.mkdtemp(prefix="fastlpips-bench-pat-"))
        make_example_folder(root, train_per_class=100, val_per_class=20)
        _CACHE["data"] = (ImageFolder(root / "train"), ImageFolder(root / "val"))
    return _CACHE["data"]


def tiny(classes=5):
    from fastlpips.nets.classifiers import ResNet32

    torch.manual_seed(0)
    return ResNet32(classes, blocks=(1, 1, 1, 1), width=16)


def their_models(net, distance):
    """perceptual-advex FeatureModels around our ResNet (self) and our AlexNet weights."""
    import torchvision

    pa, FeatureModel, AlexNetFeatureModel = _padv()

    class Classifier(FeatureModel):  # perceptual-advex's CifarResNetFeatureModel, on our ResNet32
        def __init__(self, resnet):
            super().__init__()
            self.net = resnet
            self.allow_train()

        def features(self, x):
            m = self.net
            h = F.relu(m.bn1(m.conv1((x - m.mean) / m.std)))
            outs = []
            for layer in (m.layer1, m.layer2, m.layer3, m.layer4):
                h = layer(h)
                outs.append(h)
            return tuple(outs)

        def classifier(self, last):
            return self.net.linear(F.adaptive_avg_pool2d(last, 1).flatten(1))

    clf = Classifier(net)
    if distance == "self":
        return pa, clf, clf
    import fastlpips

    alex = torchvision.models.alexnet(weights=None)
    ours = fastlpips.LPIPS(net="alex", lpips=False, verbose=False)
    alex.features.load_state_dict({k.split(".", 1)[1]: v for k, v in ours.net.state_dict().items()})
    lp = AlexNetFeatureModel(alex)
    lp.eval()
    return pa, clf, lp


def their_epoch(distance):
    """perceptual-advex's adv_train.py run_iter over one epoch (its own loop, our data)."""
    train, _ = data()
    net = tiny(train.num_classes)
    pa, clf, lp = their_models(net, distance)
    bound = 0.5 if distance == "self" else 1.0
    attack = pa.FastLagrangePerceptualAttack(clf, bound=bound, num_iterations=10, lpips_model=lp)
    opt = torch.optim.SGD(clf.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
    loader = torch.utils.data.DataLoader(train, batch_size=EPOCH_BATCH, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(0))

    def run():
        for x, y in loader:
            clf.eval()
            adv = attack(x, y)
            opt.zero_grad()
            clf.train()
            loss = F.cross_entropy(clf(adv), y)
            loss.backward()
            nn.utils.clip_grad_value_(clf.parameters(), 1.0)
            opt.step()
    return run


def our_epoch(distance):
    from fastlpips.pat import PATConfig, train_pat

    train, _ = data()
    spec = "fast-lpa:self=0.5" if distance == "self" else "fast-lpa:alexnet=1.0"
    cfg = PATConfig(attacks=(spec,), epochs=1, batch_size=EPOCH_BATCH, lr=0.1, warmup_epochs=0, lr_drops=(),
                    augment=False)

    def run():
        out = tempfile.mkdtemp(prefix="fastlpips-bench-pat-run-")
        _CACHE[f"model-{distance}"] = train_pat(tiny(train.num_classes), train, out, cfg, progress=False)
    return run


@pytest.mark.parametrize("distance", ["self", "alexnet"])
@pytest.mark.parametrize("provider", ["perceptual-advex", "fastlpips"])
def test_pat_epoch(benchmark, provider, distance):
    train, _ = data()
    run = their_epoch(distance) if provider == "perceptual-advex" else our_epoch(distance)
    steps = len(train) // EPOCH_BATCH
    benchmark.group = f"pat epoch fast-lpa {distance} tiny-resnet 32x32 B={EPOCH_BATCH} ({steps} steps)"
    benchmark.extra_info.update(provider=provider)
    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=0)


def test_robust_eval_throughput(benchmark):
    from fastlpips.pat import PATConfig, train_pat
    from fastlpips.robust import PAPER_EVALUATION, evaluate_robustness

    train, val = data()
    model = _CACHE.get("model-self")
    if model is None:
        cfg = PATConfig(epochs=1, batch_size=EPOCH_BATCH, lr=0.1, warmup_epochs=0, lr_drops=(), augment=False)
        model = train_pat(tiny(train.num_classes), train, tempfile.mkdtemp(), cfg, progress=False)
    out = {}

    def run():
        t = time.perf_counter()
        out["r"] = evaluate_robustness(model, val, PAPER_EVALUATION, batch_size=50, progress=False)
        out["t"] = time.perf_counter() - t

    benchmark.group = "robust-eval paper suite tiny-resnet 32x32"
    benchmark.pedantic(run, rounds=1, iterations=1)
    r = out["r"]
    benchmark.extra_info.update(provider="fastlpips-robust-eval", images=r.n,
                                images_per_s={row["attack"]: row["images_per_s"] for row in r.rows()
                                              if row["attack"] not in ("union", "unseen_mean")},
                                accuracy={row["attack"]: row["accuracy"] for row in r.rows()})
