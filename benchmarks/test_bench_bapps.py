"""Human-judgment scoring and training vs lpips 0.1.4, same run, same machine:

* 2AFC scoring throughput (triplets/s, reading the files included): lpips' ``score_2afc_dataset``
  with lpips' model and a torchvision reader (its data loader) vs ``fastlpips.scoring.score_2afc``
  (one trunk pass per triplet: 3 batches instead of 4); target >= 1.5x;
* one training step (batch 50, alex): lpips' ``Trainer.optimize_parameters`` vs ours; target >= 1.3x;
* E-LPIPS 2AFC with 50 draws per triplet vs 10 LPIPS-VGG scoring passes over the same triplets,
  and with K stratified draws (``sampling='stratified'``, the stratification of the scale
  level); a pilot on the same triplets (6 draws per level) gives, per triplet, the variance of the
  decision statistic d0 - d1 under 50 i.i.d. draws and under K stratified ones.

Data: a generated BAPPS-layout set (fastlpips.bapps.make_synthetic_bapps, 200 val triplets).
"""
import tempfile
import types

import pytest
import torch
from conftest import models

N_VAL = 200
_DATA = {}


def data():
    if not _DATA:
        pytest.importorskip("skimage")
        from fastlpips import bapps

        root = tempfile.mkdtemp(prefix="fastlpips-bench-bapps-")
        _DATA.update(bapps.make_synthetic_bapps(root, train=100, val=N_VAL // 4, jnd=0, seed=0))
    return _DATA


def _lpips_loader(roots, batch_size=50):
    tv = pytest.importorskip("torchvision.transforms")
    import os

    import numpy as np
    from PIL import Image

    t = tv.Compose([tv.Resize(64), tv.ToTensor(), tv.Normalize((0.5,) * 3, (0.5,) * 3)])
    kinds = ("ref", "p0", "p1", "judge")
    paths = {k: sorted(os.path.join(r, k, f) for r in roots for f in os.listdir(os.path.join(r, k))) for k in kinds}

    class TwoAFC(torch.utils.data.Dataset):  # lpips' TwoAFCDataset
        def __len__(self):
            return len(paths["ref"])

        def __getitem__(self, i):
            out = {k: t(Image.open(paths[k][i]).convert("RGB")) for k in kinds[:3]}
            out["judge"] = torch.FloatTensor(np.load(paths["judge"][i]).reshape((1, 1, 1)))
            return out

    dl = torch.utils.data.DataLoader(TwoAFC(), batch_size=batch_size)
    return types.SimpleNamespace(load_data=lambda: dl)


@pytest.mark.parametrize("provider", ["lpips", "fastlpips"])
def test_score_2afc(benchmark, provider):
    from fastlpips import scoring

    lpips = pytest.importorskip("lpips")
    ours, ref = models("alex")
    roots = data()["2afc/val"]
    dist = scoring.make_distance(model=ours)

    def run_ours():
        return scoring.score_2afc(dist, roots, batch_size=50, progress=False).score

    def run_lpips():
        with torch.no_grad():
            return lpips.score_2afc_dataset(_lpips_loader(roots), ref.forward)[0]

    benchmark.group = f"2AFC scoring alex, {N_VAL} triplets (files read included)"
    score = benchmark.pedantic(run_ours if provider == "fastlpips" else run_lpips, rounds=5, iterations=1,
                               warmup_rounds=1)
    other = run_lpips() if provider == "fastlpips" else run_ours()
    assert abs(score - other) <= 1e-6
    benchmark.extra_info.update(provider=provider, net="alex", triplets=N_VAL, mode="score-2afc",
                                triplets_per_second=N_VAL / benchmark.stats.stats.median, score=score)


@pytest.mark.parametrize("provider", ["lpips", "fastlpips"])
def test_train_step(benchmark, provider):
    lpips = pytest.importorskip("lpips")
    import fastlpips
    from fastlpips import bapps

    real, _ = models("alex")
    trainer = (lpips if provider == "lpips" else fastlpips).Trainer()
    trainer.initialize(model="lpips", net="alex", use_gpu=False, is_train=True, pnet_rand=True)
    trainer.net.net.load_state_dict({k: v.contiguous() for k, v in real.net.state_dict().items()})
    batch = next(iter(torch.utils.data.DataLoader(bapps.TwoAFCDataset(data()["2afc/train"]), batch_size=50)))
    trainer.set_input(batch)

    benchmark.group = "training step alex, batch 50 (lin layers + ranking head)"
    benchmark.extra_info.update(provider=provider, net="alex", batch=50, mode="train-step")
    benchmark.pedantic(trainer.optimize_parameters, rounds=10, iterations=1, warmup_rounds=2)


STRATIFIED_DRAWS = 20


@pytest.mark.parametrize("provider", ["elpips-50-draws", f"elpips-{STRATIFIED_DRAWS}-stratified", "lpips-vgg-x10"])
def test_elpips_2afc_vs_lpips_vgg(benchmark, provider):
    """E-LPIPS' 2AFC evaluation (50 draws per triplet, p0 and p1 sharing each draw; or K stratified
    draws) against the cost of 10 LPIPS-VGG scoring passes over the same 50 triplets."""
    from fastlpips import ELPIPS, scoring

    roots = data()["2afc/val"][:1]
    ours_vgg, _ = models("vgg")
    if provider.startswith("elpips"):
        dist = (scoring.make_distance(model=ELPIPS(), draws=50) if provider == "elpips-50-draws" else
                scoring.make_distance(model=ELPIPS(), draws=STRATIFIED_DRAWS, sampling="stratified"))

        def run():
            return scoring.score_2afc(dist, roots, batch_size=50, progress=False).score
    else:
        dist = scoring.make_distance(model=ours_vgg)

        def run():
            return [scoring.score_2afc(dist, roots, batch_size=50, progress=False).score for _ in range(10)][0]

    benchmark.group = "E-LPIPS 2AFC (50 draws) vs 10 LPIPS-VGG passes, 50 triplets"
    score = benchmark.pedantic(run, rounds=2, iterations=1, warmup_rounds=0)
    benchmark.extra_info.update(provider=provider, mode="elpips-2afc", triplets=50, score=score)


def test_elpips_2afc_precision_pilot(benchmark):
    """Per triplet of the same 50, the variance of d0 - d1 (the 2AFC decision statistic) under 50
    i.i.d. draws (law of total variance over the scale levels) and under K stratified draws
    (sum_s P(s)^2 var_s / n_s with ``stratified_mean``'s allocation), from 6 draws per level."""
    from fastlpips import ELPIPS, bapps
    from fastlpips.estimator import _allocation
    from fastlpips.transforms import sample_batched, scale_probabilities

    roots = data()["2afc/val"][:1]
    batch = next(iter(bapps.bapps_loader(bapps.TwoAFCDataset(roots), batch_size=50)))
    ref, p0, p1 = ((batch[k] + 1) / 2 for k in ("ref", "p0", "p1"))
    m = ELPIPS()
    per = 6

    def pilot():
        g = torch.Generator().manual_seed(7)
        out = []
        with torch.no_grad():
            for s in range(1, m.max_scale + 1):
                t = sample_batched(per, ref.shape[0], generator=g, scale=s)
                d0, d1 = m.sample_distances((p0, p1), ref, per, generator=g, transforms=t)
                out.append((d0 - d1).double())
        return torch.stack(out)  # (levels, per, triplets)

    benchmark.group = "E-LPIPS 2AFC precision pilot, 50 triplets"
    diff = benchmark.pedantic(pilot, rounds=1, iterations=1)
    p = scale_probabilities(m.max_scale)[:, None]
    mean_s, var_s = diff.mean(1), diff.var(1)
    mean = (p * mean_s).sum(0)
    var_iid50 = ((p * var_s).sum(0) + (p * (mean_s - mean) ** 2).sum(0)) / 50
    ratios = {}
    for k in (8, 10, 12, 16, 20):
        order = _allocation(p[:, 0], k, minimum=1)
        n_s = torch.tensor([order.count(s) for s in range(m.max_scale)], dtype=torch.float64)[:, None]
        var_k = (p**2 * var_s / n_s).sum(0)
        r = var_k / var_iid50
        ratios[k] = dict(median=float(r.median()), mean_of_variances=float(var_k.sum() / var_iid50.sum()),
                         share_at_most_iid50=float((r <= 1).double().mean()))
    benchmark.extra_info.update(provider="pilot", mode="elpips-2afc-precision", triplets=int(ref.shape[0]),
                                draws_per_level=per, ratio_to_iid50=ratios)
