"""``fastlpips evaluate`` / ``fastlpips.evaluate``: values against direct computations, resume after an
interruption (same CSV), torchrun with 2 processes (same per-image values as 1), bad input (per-file
errors, the rest computed, exit code 1), and the HTML report rendered in headless Chromium (no
external requests; screenshot in the test artifacts)."""
import csv
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fastlpips
from fastlpips import iqa
from fastlpips.evaluation import evaluate, match_files, parse_metric
from fastlpips.imagefolder import example_photos

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("FASTLPIPS_TEST_ARTIFACTS", ROOT / "test-artifacts"))
_ENV = {**os.environ, "FASTLPIPS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
SIZE = 64


def _write(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """ref/ (7 crops of real photos, one in a subfolder), noisy/ and blur/ with every counterpart."""
    root = tmp_path_factory.mktemp("evaluate")
    rng = np.random.default_rng(0)
    photos = [p if p.dtype == np.uint8 else np.round(np.clip(p, 0, 1) * 255).astype(np.uint8) for p in example_photos()]
    for k in range(7):
        p = photos[k % len(photos)]
        y, x = rng.integers(0, p.shape[0] - SIZE), rng.integers(0, p.shape[1] - SIZE)
        crop = p[y:y + SIZE, x:x + SIZE]
        name = f"sub/img{k}.png" if k == 6 else f"img{k}.png"
        _write(root / "ref" / name, crop)
        _write(root / "noisy" / name, np.clip(crop + rng.normal(0, 10 + 3 * k, crop.shape), 0, 255).astype(np.uint8))
        small = Image.fromarray(crop).resize((SIZE // 4, SIZE // 4), Image.BOX)
        _write(root / "blur" / name, np.asarray(small.resize((SIZE, SIZE), Image.BICUBIC)))
    return root


def _t(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)[None]


def _rows(path: Path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _cli(*args, torchrun=0):
    head = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(torchrun), "-m",
             "fastlpips"] if torchrun else [sys.executable, "-m", "fastlpips"])
    return subprocess.run(head + [str(a) for a in args], capture_output=True, text=True, env=_ENV, timeout=600)


def test_values_equal_direct_computations(data, tmp_path):
    """Every CSV value equals the metric run directly on that one pair (batching, the shared
    reference features and the file matching change nothing): PSNR/SSIM/GMSD/UQI from fastlpips.iqa
    (itself checked against scikit-image/piq in test_iqa.py) and LPIPS from the lpips package."""
    r = evaluate(data / "ref", [data / "noisy", data / "blur"], ["psnr", "ssim", "gmsd", "uqi", "lpips"], tmp_path,
                 batch_size=4, report=False, workers=2)  # images read in 2 worker processes
    assert not r.errors and r.methods == ["noisy", "blur"]
    rows = _rows(tmp_path / "results.csv")
    assert [(x["method"], x["file"]) for x in rows][:3] == [("noisy", "img0.png"), ("noisy", "img1.png"),
                                                           ("noisy", "img2.png")]
    assert len(rows) == 14 and {x["file"] for x in rows} >= {"sub/img6.png"}
    from helpers import model_pair

    _, ref_model = model_pair("alex")  # the lpips package's LPIPS-Alex on the same ImageNet trunk
    for x in rows:
        a, b = _t(data / "ref" / x["file"]), _t(data / x["method"] / x["file"])
        for col, fn in (("psnr", iqa.psnr), ("ssim", iqa.ssim), ("gmsd", iqa.gmsd), ("uqi", iqa.uqi)):
            assert float(x[col]) == pytest.approx(float(fn(b, a)), rel=1e-5, abs=1e-7), (col, x["file"])
        with torch.no_grad():
            want = float(ref_model(b, a, normalize=True))
        assert float(x["lpips-alex"]) == pytest.approx(want, rel=1e-4, abs=1e-6), x["file"]
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["summary"]["blur"]["psnr"]["n"] == 7
    assert doc["summary"]["blur"]["psnr"]["mean"] == pytest.approx(np.mean([float(x["psnr"]) for x in rows
                                                                            if x["method"] == "blur"]))


def test_interrupted_run_resumes_to_the_same_csv(data, tmp_path):
    """An uninterrupted run and a run interrupted after one batch (plus a torn last record line, as a
    kill mid-write leaves) then rerun give byte-identical CSVs; the rerun computes only the rest."""
    metrics = ["psnr", "ssim", "lpips-vgg"]
    full = evaluate(data / "ref", [data / "noisy", data / "blur"], metrics, tmp_path / "full", batch_size=3,
                    report=False)
    assert full.computed == 5 and full.skipped == 0  # 14 items in batches of 3

    class Stop(Exception):
        pass

    def stop(n):
        raise Stop

    with pytest.raises(Stop):
        evaluate(data / "ref", [data / "noisy", data / "blur"], metrics, tmp_path / "cut", batch_size=3, progress=stop)
    records = tmp_path / "cut" / "records" / "rank-0.jsonl"
    assert len(records.read_text().splitlines()) == 3  # one batch recorded
    with open(records, "a") as f:
        f.write('{"method": "noisy", "file": "img3.png", "values": {"psnr": 1.0')  # torn: ignored
    again = evaluate(data / "ref", [data / "noisy", data / "blur"], metrics, tmp_path / "cut", batch_size=3,
                     report=False)
    assert again.computed == 4 and again.skipped == 1
    assert (tmp_path / "cut" / "results.csv").read_bytes() == (tmp_path / "full" / "results.csv").read_bytes()
    third = evaluate(data / "ref", [data / "noisy", data / "blur"], metrics, tmp_path / "cut", batch_size=3,
                     report=False)
    assert third.computed == 0 and third.skipped == 5
    # a new metric on a finished run computes only that metric; the old columns are kept as they were
    more = evaluate(data / "ref", [data / "noisy", data / "blur"], metrics + ["gmsd"], tmp_path / "cut", batch_size=3,
                    report=False)
    assert more.computed == 5
    old, new = _rows(tmp_path / "full" / "results.csv"), _rows(tmp_path / "cut" / "results.csv")
    assert [{k: v for k, v in x.items() if k != "gmsd"} for x in new] == old
    assert all(float(x["gmsd"]) > 0 for x in new)


@pytest.mark.subprocess
def test_torchrun_two_processes_give_the_values_of_one(data, tmp_path):
    """Two gloo processes (batches dealt round-robin, records per rank, merged by rank 0) give the
    per-image values of one process: the batches are the same, so the values are bit-identical
    (asserted exactly); the report and exit code come from rank 0."""
    args = ["evaluate", data / "ref", data / "noisy", data / "blur", "--metrics", "psnr,ssim,lpips", "--batch-size",
            "3", "--no-progress", "--format", "csv"]
    one = _cli(*args, "--results", tmp_path / "one")
    assert one.returncode == 0, one.stderr[-3000:]
    two = _cli(*args, "--results", tmp_path / "two", torchrun=2)
    assert two.returncode == 0, two.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "two" / "records").iterdir()) == ["rank-0.jsonl", "rank-1.jsonl"]
    assert all(len(p.read_text().splitlines()) > 0 for p in (tmp_path / "two" / "records").iterdir())
    assert _rows(tmp_path / "one" / "results.csv") == _rows(tmp_path / "two" / "results.csv")
    assert two.stdout == one.stdout  # the summary table, printed once (rank 0)
    assert (tmp_path / "two" / "report.html").is_file()


@pytest.mark.subprocess
def test_bad_input_is_reported_per_file_and_the_rest_is_computed(data, tmp_path):
    """Missing counterpart, an output without reference, a size mismatch, an unreadable file and an
    unknown metric: each an error naming the file (or metric) in the CSV, JSON and report; every
    other pair computed; exit code 1."""
    bad = tmp_path / "bad"
    shutil.copytree(data / "noisy", bad)
    (bad / "img0.png").unlink()  # missing counterpart
    (bad / "img1.png").write_bytes(b"not a png at all")  # unreadable
    _write(bad / "img2.png", np.zeros((SIZE, SIZE + 8, 3), np.uint8))  # size mismatch
    _write(bad / "extra.png", np.zeros((SIZE, SIZE, 3), np.uint8))  # no reference
    proc = _cli("evaluate", data / "ref", bad, data / "blur", "--metrics", "psnr,lpips,sharpness", "--results",
                tmp_path / "res", "--no-progress")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "5 error(s)" in proc.stderr
    rows = {(x["method"], x["file"]): x for x in _rows(tmp_path / "res" / "results.csv")}
    assert "no counterpart" in rows[("bad", "img0.png")]["error"]
    assert "cannot read" in rows[("bad", "img1.png")]["error"] and "img1.png" in rows[("bad", "img1.png")]["error"]
    assert "72x64" in rows[("bad", "img2.png")]["error"] and "64x64" in rows[("bad", "img2.png")]["error"]
    assert "no reference" in rows[("bad", "extra.png")]["error"]
    for k in (0, 1, 2):
        assert rows[("bad", f"img{k}.png")]["psnr"] == ""
    computed = [x for x in rows.values() if not x["error"]]
    assert len(computed) == 4 + 7 and all(float(x["psnr"]) > 0 and float(x["lpips-alex"]) > 0 for x in computed)
    doc = json.loads((tmp_path / "res" / "results.json").read_text())
    assert any(e["metric"] == "sharpness" and "unknown metric" in e["message"] for e in doc["errors"])
    html = (tmp_path / "res" / "report.html").read_text()
    assert "unknown metric" in html and "no counterpart" in html and "extra.png" in html
    # nothing usable at all is an error before any work
    proc = _cli("evaluate", data / "ref", data / "blur", "--metrics", "sharpness", "--results", tmp_path / "r2")
    assert proc.returncode == 1 and "unknown metric 'sharpness'" in proc.stderr
    proc = _cli("evaluate", data / "ref", tmp_path / "nowhere", "--results", tmp_path / "r3")
    assert proc.returncode == 1 and "nowhere is not a directory" in proc.stderr


def test_parse_metric_and_matching(data, tmp_path):
    assert parse_metric("lpips").key == "lpips-alex" and parse_metric("LPIPS-VGG").net == "vgg"
    assert parse_metric("elpips").columns == ["elpips", "elpips_ci"]
    assert parse_metric("psnr").higher_is_better and not parse_metric("gmsd").higher_is_better
    for text, msg in (("rlpips", "needs a checkpoint"), ("psnr=3", "takes no argument"),
                      (f"rlpips={tmp_path / 'none.pth'}", "does not exist"), ("ssim2", "unknown metric")):
        with pytest.raises(ValueError, match=msg):
            parse_metric(text)
    out = tmp_path / "jpg"
    out.mkdir()
    Image.open(data / "blur" / "img0.png").save(out / "img0.jpg")
    Image.open(data / "blur" / "img1.png").save(out / "img1.jpg")
    Image.open(data / "blur" / "img1.png").save(out / "img1.webp")  # two candidates: ambiguous
    items, errors = match_files(data / "ref", out, "jpg")
    assert [(i.file, i.out.name) for i in items] == [("img0.png", "img0.jpg")]
    msgs = {it.file: m for it, m in errors}
    assert "2 outputs could be its counterpart" in msgs["img1.png"] and "no counterpart" in msgs["img2.png"]


@pytest.mark.slow
def test_rlpips_and_elpips_columns(data, tmp_path):
    """R-LPIPS reads a checkpoint (here LPIPS-Alex with altered lin weights, as the release saves a
    full state dict) and equals LPIPS(model_path=...) on each pair; E-LPIPS comes with its interval
    (``elpips_ci``) and agrees with an independent estimate within the two intervals (scale levels by
    the release's rule for the image size: 1 level at 64x64)."""
    model = fastlpips.LPIPS(net="alex", verbose=False)
    sd = model.state_dict()
    g = torch.Generator().manual_seed(0)
    for k in range(5):  # the lin layers are saved twice (lin{k} and lins.{k}), as lpips does
        w = torch.rand(sd[f"lin{k}.model.1.weight"].shape, generator=g) * 0.2
        sd[f"lin{k}.model.1.weight"], sd[f"lins.{k}.model.1.weight"] = w, w.clone()
    ckpt = tmp_path / "rlpips.pth"
    torch.save(sd, ckpt)
    r = evaluate(data / "ref", [data / "noisy"], [f"rlpips={ckpt}", "elpips"], tmp_path / "res", batch_size=4,
                 elpips_samples=16, report=False)
    assert not r.errors
    rl = fastlpips.LPIPS(net="alex", model_path=str(ckpt), verbose=False)
    from fastlpips.elpips import scale_levels_for_size

    metric = fastlpips.ELPIPS(max_scale=scale_levels_for_size(SIZE, SIZE))  # the release's rule, as evaluate
    for k, row in enumerate(r.rows):
        a, b = _t(data / "ref" / row["file"]), _t(data / "noisy" / row["file"])
        with torch.no_grad():
            assert row["rlpips"] == pytest.approx(float(rl(b, a, normalize=True)), rel=1e-4)
            assert row["rlpips"] != pytest.approx(float(model(b, a, normalize=True)), rel=1e-2)
        assert row["elpips_ci"] > 0
        if k >= 3:
            continue
        with torch.no_grad():
            est = fastlpips.elpips_estimate(b, a, seed=123, max_samples=48, min_samples=48, metric=metric)
        assert abs(row["elpips"] - float(est.mean[0])) < 1.5 * (row["elpips_ci"] + float(est.half_width[0])), row


def _chromium():
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if importlib.util.find_spec("playwright") is None:
        exe = None
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("CI must render the report: .ci/run installs Debian's chromium and requirements-dev.txt "
                        "playwright")
        pytest.skip("headless Chromium (Debian's chromium) and playwright are needed to render the report")
    return exe


@pytest.mark.slow
def test_report_renders_in_headless_chromium(data, tmp_path):
    """The report opens in headless Chromium (driven by playwright), every picture decodes, the
    summary and error tables are there, and the page makes no request but for its own file (no
    script, style sheet, font or picture from anywhere else). Screenshot: test-artifacts/."""
    exe = _chromium()
    bad = tmp_path / "bad"
    shutil.copytree(data / "blur", bad)
    (bad / "img3.png").unlink()
    r = evaluate(data / "ref", [data / "noisy", bad], ["psnr", "ssim", "lpips"], tmp_path / "res", batch_size=8,
                 worst=3)
    html_path = r.files["html"]
    text = html_path.read_text()
    assert "http://" not in text and "https://" not in text and "<script" not in text
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "evaluate-report.png"
    requests = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("request", lambda req: requests.append(req.url))
            page.goto(html_path.as_uri())
            images = page.evaluate("() => [...document.images].map(i => [i.alt, i.complete && i.naturalWidth > 0])")
            summary = page.locator("table").first.inner_text()
            errors = page.locator("#errors + table").inner_text()
            heading = page.locator("h1").inner_text()
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert requests == [html_path.as_uri()]
    assert heading == "fastlpips evaluation report"
    assert len(images) == 1 + 2 * 3 * 3 and all(ok for _, ok in images), images  # plot + 2 methods x 3 worst x 3
    assert "noisy" in summary and "bad" in summary and "lpips-alex" in summary
    assert "img3.png" in errors and "no counterpart" in errors
    im = Image.open(shot)
    assert im.size[0] == 1400 and im.size[1] > 1000
    assert np.asarray(im.convert("L")).std() > 10  # not a blank page


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_distances_to_equals_forward_on_the_indexed_references(net):
    """``LPIPS.distances_to(refs, images, index)`` (one trunk pass, each reference once, gathered on
    the channels-last view) equals ``forward(refs[index], images)``; bad indices are refused."""
    from helpers import distort, real_images

    model = fastlpips.LPIPS(net=net, verbose=False)
    refs = real_images(48, 3)
    index = torch.tensor([2, 0, 0, 1, 2])
    images = distort(refs[index], seed=3)
    with torch.no_grad():
        want = model(refs[index], images)
        got = model.distances_to(refs, images, index)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert got.shape == (5, 1, 1, 1) and float(got.std()) > 0
    for bad, msg in ((torch.tensor([0, 1, 3, 0, 0]), "outside 0..2"), (torch.tensor([0, 1]), "shape \\(5,\\)"),
                     (index.float(), "integer tensor")):
        with pytest.raises(ValueError, match=msg):
            model.distances_to(refs, images, bad)
    with pytest.raises(ValueError, match="one size"):
        model.distances_to(refs[..., :40], images, index)


def test_a_rotated_png_batched_with_unrotated_ones(tmp_path):
    """A PNG whose EXIF rotation changes its size (its header says 48x32, it decodes 32x48, as
    read_image applies the orientation) planned into one batch with a plain 48x32 PNG: the batch is
    split by decoded size and both are computed against outputs of their decoded sizes."""
    rng = np.random.default_rng(1)
    a = rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)  # stored 48 wide, 32 high; rotated on reading
    b = rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)
    (tmp_path / "ref").mkdir()
    (tmp_path / "out").mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(a).save(tmp_path / "ref" / "a.png", exif=exif)
    Image.fromarray(b).save(tmp_path / "ref" / "b.png")
    decoded = fastlpips.read_image(tmp_path / "ref" / "a.png")
    assert decoded.shape == (48, 32, 3)
    Image.fromarray(np.round(decoded * 255).astype(np.uint8)).save(tmp_path / "out" / "a.png")
    Image.fromarray(b).save(tmp_path / "out" / "b.png")
    r = evaluate(tmp_path / "ref", [tmp_path / "out"], ["psnr", "ssim"], tmp_path / "res", report=False)
    assert r.computed == 1 and not r.errors, r.errors  # one planned batch
    assert [row["psnr"] for row in r.rows] == [math.inf, math.inf] and [row["ssim"] for row in r.rows] == [1.0, 1.0]
