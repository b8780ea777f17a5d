"""AutoAttack standard (``linf-aa``) against the reference implementation, and its strength
against 20-step PGD.

* ``test_autoattack_speed``: images/s of ``fastlpips.attacks.AutoAttack`` (L_inf, 8/255 ... here
  ``EPS``, AutoAttack's standard budgets: 100 steps, 9 (here 3: 4 classes) target classes, 5000
  queries) vs torchattacks 3.5.1's ``MultiAttack`` of its ``APGD``, ``APGDT``, ``FAB`` and
  ``Square`` with the same budgets and seed (what its ``AutoAttack(version='standard')`` builds,
  at the original budgets; its own default runs 10 steps), on the same model and images: the
  examples/attack_demo.py CNN (4 classes, 32x32 crops). ``EPS`` 2/255 leaves part of the batch
  robust after APGD-CE, so every component runs. ``fastlpips`` attacks in channels_last (the
  default), ``fastlpips-as-given`` in the caller's layout (torchattacks' arithmetic); the verdicts
  of both are compared with the reference's per example (``same_verdicts``).
* ``test_autoattack_vs_pgd``: robust accuracy under ``linf-aa`` and under ``linf`` (20-step PGD)
  at the same bound, seeds 0-2, on the demo CNN and on a PAT-trained tiny ResNet of the example
  data (self-bounded Fast-LPA, 10 epochs); recorded in ``extra_info`` (``accuracy``), one round.

Run: ``FASTLPIPS_OFFLINE=1 .venv/bin/python -m pytest -q benchmarks/test_bench_autoattack.py
--benchmark-json=benchmarks/results/autoattack.json``; ``FASTLPIPS_BENCH_SMOKE=1``: 8 images, budgets / 10.
"""
import os
import sys
import tempfile
from pathlib import Path

import pytest
import torch

SMOKE = os.environ.get("FASTLPIPS_BENCH_SMOKE") == "1"
N = 8 if SMOKE else 64
STEPS, QUERIES = (10, 500) if SMOKE else (100, 5000)
EPS = 2 / 255
_CACHE = {}


def _demo():
    if "demo" not in _CACHE:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
        import attack_demo

        torch.manual_seed(0)
        model = attack_demo.train_classifier(0).eval()
        x, y = attack_demo.crops(N // 4, 1)
        _CACHE["demo"] = (model, x, y)
    return _CACHE["demo"]


def _pat_resnet():
    if "pat" not in _CACHE:
        from fastlpips import pat
        from fastlpips.imagefolder import ImageFolder, make_example_folder
        from fastlpips.nets.classifiers import ResNet32

        root = Path(tempfile.mkdtemp(prefix="bench-aa-"))
        make_example_folder(root, train_per_class=40, val_per_class=N // 5 + 1, seed=0)
        torch.manual_seed(0)
        cfg = pat.PATConfig(attacks=("fast-lpa:self=0.5",), attack_iterations=3, epochs=2 if SMOKE else 10,
                            batch_size=20, lr=0.1, warmup_epochs=1, lr_drops=(7,), seed=0)
        net = pat.train_pat(ResNet32(5, blocks=(1, 1, 1, 1), width=8, norm="batch"), ImageFolder(root / "train"),
                            root / "run", cfg, progress=False)
        _CACHE["pat"] = (net.eval(), ImageFolder(root / "val"))
    return _CACHE["pat"]


@pytest.mark.parametrize("provider", ["fastlpips", "fastlpips-as-given", "torchattacks"])
def test_autoattack_speed(benchmark, provider):
    model, x, y = _demo()
    if provider.startswith("fastlpips"):
        from fastlpips.attacks import AutoAttack

        attack = AutoAttack(model, "linf", EPS, num_iterations=STEPS, seed=0,
                            layout="as_given" if provider.endswith("as-given") else "channels_last")
        run = lambda: attack(x, y)  # noqa: E731
    else:
        ta = pytest.importorskip("torchattacks")
        ref = ta.MultiAttack([ta.APGD(model, norm="Linf", eps=EPS, steps=STEPS, seed=0, loss="ce"),
                              ta.APGDT(model, norm="Linf", eps=EPS, steps=STEPS, seed=0, n_classes=4),
                              ta.FAB(model, norm="Linf", eps=EPS, steps=STEPS, seed=0, multi_targeted=True,
                                     n_classes=4),
                              ta.Square(model, norm="Linf", eps=EPS, n_queries=QUERIES, seed=0)])
        run = lambda: ref(x, y).detach()  # noqa: E731
    benchmark.group = f"AutoAttack L_inf {EPS:.4f}, {N} images"
    adv = benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=0)
    with torch.no_grad():
        robust = model(adv).argmax(1) == y
    _CACHE.setdefault("verdicts", {})[provider] = robust
    benchmark.extra_info.update(provider=provider, images=N, steps=STEPS, queries=QUERIES,
                                robust_accuracy=float(robust.float().mean()),
                                images_per_s=N / benchmark.stats.stats.mean)
    if provider == "torchattacks":
        benchmark.extra_info["same_verdicts"] = {k: bool(torch.equal(v, robust)) for k, v in _CACHE["verdicts"].items()
                                                 if k != provider}


@pytest.mark.parametrize("which", ["demo-cnn", "pat-resnet"])
def test_autoattack_vs_pgd(benchmark, which):
    from torch.utils.data import TensorDataset

    from fastlpips import robust

    if which == "demo-cnn":
        model, x, y = _demo()
        data, eps = TensorDataset(x, y), EPS
    else:
        model, data = _pat_resnet()
        eps = 8 / 255
    rows = []

    def run():
        rows.clear()
        for seed in (0, 1, 2):
            r = robust.evaluate_robustness(model, data, [f"linf={eps}", f"linf-aa={eps}"], seed=seed, progress=False,
                                           max_examples=N, batch_size=N,
                                           iterations=None if not SMOKE else STEPS)
            acc = r.accuracy()
            rows.append({"seed": seed, "clean": acc["clean"], "pgd20": acc["linf"], "aa": acc["linf-aa"],
                         "violations": sum(r.violations.values())})
    benchmark.group = "AutoAttack vs PGD-20 (robust accuracy)"
    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(model=which, eps=eps, accuracy=rows)
    assert all(r["aa"] <= r["pgd20"] and r["violations"] == 0 for r in rows), rows
