"""BAPPS readers, 2AFC/JND scoring and the score commands, against lpips' own functions on a
generated BAPPS-layout set (fastlpips.bapps.make_synthetic_bapps) read by an independent
torchvision reader (lpips' data loader: PIL, Resize(64), ToTensor, Normalize(0.5, 0.5))."""
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from fastlpips import bapps, scoring
from helpers import model_pair, require, torchrun, vgg16_with_weights_of

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    require("skimage")
    root = tmp_path_factory.mktemp("bapps")
    return bapps.make_synthetic_bapps(root, train=0, val=15, jnd=15, seed=3)


class _LpipsReader(torch.utils.data.Dataset):
    """lpips' TwoAFCDataset / JNDDataset (PerceptualSimilarity data/dataset/*.py) with torchvision."""

    def __init__(self, roots, kinds, label):
        tv = require("torchvision.transforms")
        from PIL import Image

        self.Image = Image
        self.t = tv.Compose([tv.Resize(64), tv.ToTensor(), tv.Normalize((0.5,) * 3, (0.5,) * 3)])
        def walk(d, ext):
            return [os.path.join(r, f) for r, _, fs in sorted(os.walk(d)) for f in fs if f.endswith(ext)]
        self.paths = {k: sorted(p for root in roots for p in walk(os.path.join(root, k),
                                                                  ".npy" if k == label else ".png"))
                      for k in kinds}
        self.kinds, self.label = kinds, label

    def __len__(self):
        return len(self.paths[self.kinds[0]])

    def __getitem__(self, i):
        out = {}
        for k in self.kinds:
            p = self.paths[k][i]
            out[k] = (torch.FloatTensor(np.load(p).reshape((1, 1, 1))) if k == self.label
                      else self.t(self.Image.open(p).convert("RGB")))
        return out


def _lpips_loader(roots, kind):
    kinds, label = (("ref", "p0", "p1", "judge"), "judge") if kind == "2afc" else (("p0", "p1", "same"), "same")
    dl = torch.utils.data.DataLoader(_LpipsReader(roots, kinds, label), batch_size=7)
    return types.SimpleNamespace(load_data=lambda: dl)


# -- formulas ------------------------------------------------------------------------------------------
def test_two_afc_formula_by_hand():
    """REFERENCE.md's worked case: agreements 1, 0.8, 0.5 (tie), 1 -> 0.825."""
    d0, d1, h = [.1, .5, .3, .2], [.2, .4, .3, .1], [0, .8, .4, 1]
    np.testing.assert_allclose(scoring.two_afc_scores(d0, d1, h), [1, .8, .5, 1], rtol=0, atol=1e-15)
    assert float(np.mean(scoring.two_afc_scores(d0, d1, h))) == pytest.approx(0.825, abs=1e-15)
    with pytest.raises(ValueError, match="3, 3 and 2"):
        scoring.two_afc_scores([1, 2, 3], [1, 2, 3], [0, 1])


def test_jnd_map_and_voc_ap_by_hand(lpips_ref):
    """ds=[.3,.1,.2], same=[1,1,0]: sorted sames 1,0,1 -> precision 1,.5,2/3 at recall .5,.5,1 ->
    AP = .5 * 1 + .5 * 2/3 = 0.8333; voc_ap (both forms) equals lpips.voc_ap on random curves."""
    assert scoring.jnd_map([.3, .1, .2], [1, 1, 0]) == pytest.approx(0.5 + 0.5 * 2 / 3, abs=1e-15)
    assert scoring.voc_ap([0.5, 0.5, 1.0], [1.0, 0.5, 2 / 3]) == pytest.approx(5 / 6, abs=1e-15)
    g = np.random.default_rng(0)
    for _ in range(20):
        rec, prec = np.sort(g.random(9)), g.random(9)
        for v07 in (False, True):
            assert scoring.voc_ap(rec, prec, v07) == pytest.approx(float(lpips_ref.voc_ap(rec, prec, v07)), abs=1e-15)
    with pytest.raises(ValueError, match="no JND pairs"):
        scoring.jnd_map([], [])


# -- against lpips' scoring on the same files ---------------------------------------------------------
def test_readers_equal_lpips_loader(synth):
    ours = bapps.TwoAFCDataset(synth["2afc/val"])
    ref = _LpipsReader(synth["2afc/val"], ("ref", "p0", "p1", "judge"), "judge")
    assert len(ours) == len(ref) == 60
    for i in (0, 17, 59):
        a, b = ours[i], ref[i]
        for k in ("ref", "p0", "p1", "judge"):
            assert torch.equal(a[k], b[k]), (i, k)
    j = bapps.JNDDataset(synth["jnd/val"])[5]
    assert j["p0"].shape == (3, 64, 64) and j["same"].shape == (1, 1, 1) and j["p0_path"].endswith(".png")


@pytest.mark.parametrize("kind", ["2afc", "jnd"])
def test_scores_equal_lpips_functions(synth, lpips_ref, kind):
    """Our batched scoring (features once per item) equals lpips.score_2afc_dataset /
    score_jnd_dataset run with lpips' model on the same files, per split and together."""
    ours, ref = model_pair("alex")
    dist = scoring.make_distance(model=ours)
    roots = synth["2afc/val" if kind == "2afc" else "jnd/val"]
    with torch.no_grad():
        for split in (roots[:1], roots):
            if kind == "2afc":
                want, info = lpips_ref.score_2afc_dataset(_lpips_loader(split, kind), ref.forward)
                got = scoring.score_2afc(dist, split, batch_size=5, progress=False)
                np.testing.assert_allclose(got.distances["d0"], info["d0s"], rtol=1e-5, atol=1e-7)
                np.testing.assert_allclose(got.distances["d1"], info["d1s"], rtol=1e-5, atol=1e-7)
            else:  # lpips' docstring: func returns N distances (see the scramble test below for (N,1,1,1))
                want, info = lpips_ref.score_jnd_dataset(_lpips_loader(split, kind), lambda a, b: ref(a, b).flatten())
                got = scoring.score_jnd(dist, split, batch_size=5, progress=False)
                np.testing.assert_allclose(got.distances["d"], info["ds"], rtol=1e-5, atol=1e-7)
            assert abs(got.score - want) <= 1e-6, (split, got.score, want)
            assert got.count == len(got.judgments) == 15 * len(split)
    # lpips' functions under our names (import fastlpips as lpips) on lpips' loader: same numbers
    import fastlpips

    fn = fastlpips.score_2afc_dataset if kind == "2afc" else fastlpips.score_jnd_dataset
    with torch.no_grad():
        mine = fn(_lpips_loader(roots, kind), ours.forward)[0]
        theirs = (lpips_ref.score_2afc_dataset(_lpips_loader(roots, kind), ref.forward)[0] if kind == "2afc" else
                  lpips_ref.score_jnd_dataset(_lpips_loader(roots, kind), lambda a, b: ref(a, b).flatten())[0])
    assert abs(mine - theirs) <= 1e-6


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # lpips' 0/0 when scrambled
def test_lpips_jnd_scrambles_n111_distances_ours_does_not(synth, lpips_ref):
    """lpips.score_jnd_dataset argsorts an (N, 1, 1, 1) output along its last axis (every index 0),
    so with lpips' own model.forward the score is that of one repeated pair; ours flattens."""
    ours, ref = model_pair("alex")
    roots = synth["jnd/val"]
    with torch.no_grad():
        flat = lpips_ref.score_jnd_dataset(_lpips_loader(roots, "jnd"), lambda a, b: ref(a, b).flatten())[0]
        scrambled = lpips_ref.score_jnd_dataset(_lpips_loader(roots, "jnd"), ref.forward)[0]
        mine = scoring.score_jnd_dataset(_lpips_loader(roots, "jnd"), ours.forward)[0]
    assert abs(mine - flat) <= 1e-6
    assert not abs(scrambled - flat) <= 1e-3  # lpips: another number, or NaN when the first pair is "different"


def test_lpips_distances_method_equals_forward():
    ours, _ = model_pair("alex")
    g = torch.Generator().manual_seed(0)
    r, a, b = (torch.rand(3, 3, 64, 64, generator=g) * 2 - 1 for _ in range(3))
    with torch.no_grad():
        d0, d1 = ours.distances(r, [a, b])
        assert torch.equal(d0, ours(r, a)) and torch.equal(d1, ours(r, b))
    with pytest.raises(ValueError, match=r"images\[1\] has shape"):
        ours.distances(r, [a, b[:2]])


@pytest.mark.slow
def test_elpips_and_classic_distances_score(synth):
    """E-LPIPS averages its draws with p0 and p1 under the same transformations (the same seed gives
    the same score); L2 and DSSIM score too; all agree with the synthetic judge above chance."""
    roots = synth["2afc/val"][:2]
    from fastlpips import ELPIPS

    torch.manual_seed(0)
    metric = ELPIPS(pnet_rand=True, max_scale=1)
    d = scoring.make_distance(model=metric, draws=3, seed=5)
    first = scoring.score_2afc(d, roots, batch_size=16, progress=False)
    again = scoring.score_2afc(scoring.make_distance(model=metric, draws=3, seed=5), roots, batch_size=16,
                               progress=False)
    np.testing.assert_array_equal(first.distances["d0"], again.distances["d0"])
    assert np.isfinite(first.distances["d0"]).all()
    # p0 and p1 share the draws: the same image twice gives the same distance, exactly ...
    g = torch.Generator().manual_seed(1)
    ref, p0, p1 = (torch.rand(4, 3, 64, 64, generator=g) * 2 - 1 for _ in range(3))
    with torch.no_grad():
        d_same = d(ref, [p0, p0])
        d0, d1 = d(ref, [p0, p1])
    assert torch.equal(d_same[0], d_same[1]) and torch.equal(d_same[0], d0)
    # ... and the distances are the mean of sample_distances under the generator the seed and the batch give
    with torch.no_grad():
        samples = metric.sample_distances(((p0 + 1) / 2, (p1 + 1) / 2), (ref + 1) / 2, 3,
                                          generator=torch.Generator().manual_seed(scoring._batch_seed(5, ref)))
    torch.testing.assert_close(d0, samples[0].mean(0).to(d0.dtype), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(d1, samples[1].mean(0).to(d1.dtype), rtol=1e-6, atol=1e-7)
    assert not torch.equal(d0, d1)
    for name in ("l2-lab", "dssim", "l2-rgb", "euclidean", "psnr", "ssim"):
        r = scoring.score_2afc(scoring.make_distance(name), roots, batch_size=16, progress=False)
        assert 0.5 < r.score <= 1.0, (name, r.score)
    # lpips' baselines score the [-1, 1] patches as lpips.L2 / lpips.DSSIM do; higher-better metrics negated
    from fastlpips import classic, iqa

    ref, p0 = torch.rand(2, 3, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    assert torch.equal(scoring.make_distance("l2-lab")(ref, [p0])[0], classic.l2(ref, p0, "Lab"))
    torch.testing.assert_close(scoring.make_distance("psnr")(ref, [p0])[0], -iqa.psnr((ref + 1) / 2, (p0 + 1) / 2))
    with pytest.raises(ValueError, match="unknown metric 'nope'"):
        scoring.make_distance("nope")
    with pytest.raises(ValueError, match="unknown metric 'alex': its name is 'lpips-alex'"):
        scoring.make_distance("alex")


def test_dists_2afc_equals_the_scorer_fed_torchmetrics_distances(synth, monkeypatch):
    """score_2afc with the registry's DISTS = the same scorer fed torchmetrics 1.9.0's DISTS (same trunk)."""
    tmd = require("torchmetrics.functional.image.dists")
    require("torchvision")
    from fastlpips.dists import DISTS

    roots = synth["2afc/val"][:1]
    ours = scoring.score_2afc(scoring.make_distance("dists"), roots, batch_size=16, progress=False)
    monkeypatch.setattr(tmd, "vgg16", vgg16_with_weights_of(DISTS()))

    def theirs(ref, images):
        with torch.no_grad():
            return [tmd.deep_image_structure_and_texture_similarity((x + 1) / 2, (ref + 1) / 2, reduction="none")
                    .reshape(-1) for x in images]
    want = scoring.score_2afc(theirs, roots, batch_size=16, progress=False)
    assert ours.count == want.count == 15
    assert abs(ours.score - want.score) <= 1e-6
    np.testing.assert_allclose(ours.distances["d0"], want.distances["d0"], rtol=1e-5)


def test_elpips_stratified_sampling_scores(synth):
    """sampling='stratified' (issue 10 via 16): scores with one draw per scale level and the rest
    at level 1, reproducibly from the seed; refused for LPIPS and below one draw per level."""
    roots = synth["2afc/val"][:1]
    from fastlpips import ELPIPS

    torch.manual_seed(0)
    metric = ELPIPS(net="squeeze", pnet_rand=True, max_scale=2)
    d = scoring.make_distance(model=metric, draws=3, seed=5, sampling="stratified")
    first = scoring.score_2afc(d, roots, batch_size=16, progress=False)
    again = scoring.score_2afc(scoring.make_distance(model=metric, draws=3, seed=5, sampling="stratified"), roots,
                               batch_size=16, progress=False)
    np.testing.assert_array_equal(first.distances["d0"], again.distances["d0"])
    assert np.isfinite(first.distances["d0"]).all() and (first.distances["d0"] > 0).all()
    with pytest.raises(ValueError, match="needs one draw per scale level: draws=1 < 2"):
        scoring.make_distance(model=metric, draws=1, sampling="stratified")
    with pytest.raises(ValueError, match="applies to E-LPIPS draws, not to metric 'lpips-alex'"):
        scoring.make_distance("lpips-alex", sampling="stratified")
    with pytest.raises(ValueError, match="sampling must be"):
        scoring.make_distance(model=metric, sampling="qmc")


# -- bad input -----------------------------------------------------------------------------------------
def _split(tmp_path, n=3):
    from PIL import Image

    root = tmp_path / "split"
    for k in ("ref", "p0", "p1"):
        (root / k).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((64, 64, 3), 40 * i, np.uint8)).save(root / k / f"{i:06d}.png")
    (root / "judge").mkdir()
    for i in range(n):
        np.save(root / "judge" / f"{i:06d}.npy", np.array([0.5], np.float32))
    return root


def test_bad_folders_name_the_file(tmp_path):
    from PIL import Image

    root = _split(tmp_path)
    assert len(bapps.TwoAFCDataset(root)) == 3
    (root / "p1" / "000002.png").unlink()
    with pytest.raises(ValueError, match=r"000002\.png: has no partner in .*p1"):
        bapps.TwoAFCDataset(root)
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(root / "p1" / "000002.png")
    (root / "ref" / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"notes\.txt: not a"):
        bapps.TwoAFCDataset(root)
    (root / "ref" / "notes.txt").unlink()
    (root / "ref" / ".DS_Store").write_text("")  # hidden files are ignored
    assert len(bapps.TwoAFCDataset(root)) == 3
    for f in (root / "judge").iterdir():
        f.unlink()
    (root / "judge").rmdir()
    with pytest.raises(FileNotFoundError, match=r"judge: missing folder"):
        bapps.TwoAFCDataset(root)
    with pytest.raises(FileNotFoundError, match="no such 2AFC split folder"):
        bapps.TwoAFCDataset(tmp_path / "absent")
    empty = tmp_path / "empty"
    for k in ("ref", "p0", "p1", "judge"):
        (empty / k).mkdir(parents=True)
    with pytest.raises(ValueError, match="empty 2AFC split"):
        bapps.TwoAFCDataset(empty)
    with pytest.raises(FileNotFoundError, match=r"same: missing folder"):
        bapps.JNDDataset(_split(tmp_path / "jnd"))


def test_bad_files_name_the_file(tmp_path):
    from PIL import Image

    root = _split(tmp_path)
    ds = bapps.TwoAFCDataset(root)
    (root / "p0" / "000001.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ValueError, match=r"p0.000001\.png"):
        ds[1]
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "p0" / "000001.png")
    with pytest.raises(ValueError, match=r"differ in size: .*000001\.png is 64x64.*000001\.png is 32x32"):
        ds[1]
    np.save(root / "judge" / "000002.npy", np.array([1.5]))
    with pytest.raises(ValueError, match=r"000002\.npy: judgment 1\.5 is not a fraction"):
        ds[2]
    np.save(root / "judge" / "000002.npy", np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"000002\.npy: a judgment file holds one number"):
        ds[2]
    (root / "judge" / "000002.npy").write_bytes(b"not numpy")
    with pytest.raises(ValueError, match=r"000002\.npy: unreadable"):
        ds[2]
    # through a DataLoader with a worker process the message still names the file
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(root / "p0" / "000001.png")
    with pytest.raises(ValueError, match=r"000002\.npy"):
        scoring.score_2afc(lambda r, ims: [x.mean((1, 2, 3)) for x in ims], root, batch_size=2, workers=1,
                           progress=False)


def test_resize_to_load_size(tmp_path):
    """Non-64 patches: the short side to 64 (as torchvision's Resize), antialiased bilinear."""
    from PIL import Image

    p = tmp_path / "big.png"
    Image.fromarray((np.random.default_rng(0).random((96, 128, 3)) * 255).astype(np.uint8)).save(p)
    x = bapps.load_patch(str(p), 64)
    assert x.shape == (3, 64, 85) and float(x.min()) >= -1 and float(x.max()) <= 1
    tv = require("torchvision.transforms")
    want = tv.Compose([tv.Resize(64), tv.ToTensor()])(Image.open(p).convert("RGB")) * 2 - 1
    assert want.shape == x.shape and float((x - want).abs().max()) < 2.5 / 255  # PIL rounds to 8 bits


# -- the command and torchrun ----------------------------------------------------------------------------
def _cli(args, env=None, **kw):
    return subprocess.run([sys.executable, "-m", "fastlpips"] + args, capture_output=True, text=True,
                          env={**os.environ, "FASTLPIPS_OFFLINE": "1", **(env or {})}, timeout=600, **kw)


@pytest.mark.subprocess
def test_score_command_matches_api(synth, tmp_path):
    out = tmp_path / "s.json"
    items = tmp_path / "items.csv"
    proc = _cli(["score-2afc", *synth["2afc/val"][:2], "--no-progress", "--format", "json", "-o", str(out),
                 "--batch-size", "9", "--items", str(items)])
    assert proc.returncode == 0, proc.stderr
    lines = items.read_text().splitlines()
    assert lines[0] == "split,item,d0,d1,judge" and len(lines) == 1 + 30
    rows = json.loads(out.read_text())["results"]
    from fastlpips import LPIPS

    dist = scoring.make_distance(model=LPIPS(net="alex", verbose=False))
    for row, root in zip(rows, synth["2afc/val"][:2]):
        assert row["split"] == "val/" + Path(root).name
        assert row["2afc"] == pytest.approx(scoring.score_2afc(dist, root, progress=False).score, abs=1e-12)
    bad = _cli(["score-jnd", str(tmp_path / "nope")])
    assert bad.returncode == 1 and "no such split folder" in bad.stderr
    wrong = _cli(["score-2afc", synth["2afc/val"][0], "--sampling", "stratified", "--no-progress"])
    assert wrong.returncode == 1 and "sampling='stratified' applies to E-LPIPS draws" in wrong.stderr, wrong.stderr


@pytest.mark.subprocess
def test_torchrun_two_processes_give_the_one_process_score(synth, tmp_path):
    """2 processes (gloo, DistributedSampler over an odd count: padded items dropped) = 1 process."""
    roots = synth["2afc/val"][:2]
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    proc = _cli(["score-2afc", *roots, "--no-progress", "--format", "json", "-o", str(one), "--batch-size", "5"])
    assert proc.returncode == 0, proc.stderr
    proc = torchrun("-m", "fastlpips", "score-2afc", *roots, "--no-progress", "--format", "json", "-o", two,
                    "--batch-size", "5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert [r["items"] for r in b["results"]] == [15, 15]
    for ra, rb in zip(a["results"], b["results"]):
        assert rb["2afc"] == pytest.approx(ra["2afc"], abs=1e-12)


_RANK_SHARE = """
import json, sys, torch
from fastlpips import distributed as D, scoring
from fastlpips.model import LPIPS

D.init_from_env(torch.device("cpu"))
lpips = scoring.make_distance(model=LPIPS(net="alex", verbose=False))
seen = []

def distance(ref, images):  # records which reference patches this rank scored
    seen.extend(round(float(r.double().sum()), 6) for r in ref)
    return lpips(ref, images)

res = scoring.score_2afc(distance, sys.argv[2:], batch_size=4, progress=False)
with open(f"{sys.argv[1]}.{D.rank()}.json", "w") as f:
    json.dump({"seen": seen, "score": res.score, "items": res.count}, f)
D.shutdown()
"""


@pytest.mark.subprocess
def test_torchrun_ranks_share_the_items(synth, tmp_path):
    """Under torchrun each rank scores its own half (DistributedSampler: 8 + 8 items for 15, one
    repeated to even out), not every item: the two ranks' reference patches together are the
    split's, each rank has 8 and they share at most the one padding item."""
    script = tmp_path / "share.py"
    script.write_text(_RANK_SHARE)
    root = synth["2afc/val"][0]
    proc = torchrun(script, tmp_path / "seen", root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"seen.{k}.json").read_text()) for k in (0, 1))
    from fastlpips.bapps import TwoAFCDataset

    data = TwoAFCDataset(root)
    everything = {round(float(data[i]["ref"].double().sum()), 6) for i in range(len(data))}
    assert len(data) == 15 and len(everything) == 15  # distinct patches: a patch names its item
    assert len(r0["seen"]) == len(r1["seen"]) == 8
    assert set(r0["seen"]) | set(r1["seen"]) == everything
    assert len(set(r0["seen"]) & set(r1["seen"])) <= 1
    assert r0["items"] == r1["items"] == 15 and r0["score"] == r1["score"]  # every rank gets the whole result
