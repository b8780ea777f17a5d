"""The command line: pair, dirs, allpairs, demo; formats, heat map, progress and errors."""
import csv
import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import fastlpips
from fastlpips import cli
from helpers import distort, real_images


def _save(t, path):
    arr = ((t.permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
    Image.fromarray(arr).save(path)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    d0, d1 = root / "d0", root / "d1"
    d0.mkdir()
    d1.mkdir()
    x = real_images(64, 4)
    y = distort(x)
    for i in range(4):
        _save(x[i], d0 / f"im{i}.png")
        _save(y[i], d1 / f"im{i}.png")
    _save(x[0], d0 / "only_here.png")
    return d0, d1


def _run(argv, capsys):
    assert cli.main(argv) == 0
    return capsys.readouterr()


def _expected(p0, p1, net="alex"):
    m = fastlpips.LPIPS(net=net, verbose=False)
    with torch.no_grad():
        return m(fastlpips.im2tensor(fastlpips.load_image(p0)), fastlpips.im2tensor(fastlpips.load_image(p1))).item()


def test_pair_json_and_heatmap(folders, tmp_path, capsys):
    d0, d1 = folders
    heat = tmp_path / "heat.png"
    res = _run(["pair", str(d0 / "im1.png"), str(d1 / "im1.png"), "--format", "json", "--heatmap", str(heat)], capsys)
    data = json.loads(res.out)
    assert abs(data["results"][0]["distance"] - _expected(d0 / "im1.png", d1 / "im1.png")) < 1e-6
    im = Image.open(heat)
    assert im.size[0] > 300 and im.size[1] > 150  # three panels incl. the colour bar
    assert np.asarray(im.convert("L")).std() > 10  # not a blank picture


def test_dirs_csv_with_progress(folders, tmp_path, capsys):
    d0, d1 = folders
    res = _run(["dirs", str(d0), str(d1), "--format", "csv", "--batch-size", "3", "--progress"], capsys)
    rows = list(csv.DictReader(io.StringIO(res.out)))
    assert [r["file"] for r in rows] == [f"im{i}.png" for i in range(4)]
    for r in rows:
        assert abs(float(r["distance"]) - _expected(d0 / r["file"], d1 / r["file"])) < 1e-5
    assert "4/4" in res.err and "only_here.png" not in res.out
    assert "1 file(s)" in res.err  # the unmatched file is reported


def test_dirs_table_to_file(folders, tmp_path, capsys):
    d0, d1 = folders
    out = tmp_path / "dists.txt"
    _run(["dirs", str(d0), str(d1), "--no-progress", "-o", str(out), "--net", "vgg"], capsys)
    text = out.read_text().splitlines()
    assert text[0].split() == ["file", "distance"]
    assert text[-1].startswith("pairs: 4  mean: ")


def test_allpairs_matches_pair(folders, capsys):
    d0, _ = folders
    res = _run(["allpairs", str(d0), "--format", "json", "--batch-size", "2", "--no-progress"], capsys)
    data = json.loads(res.out)
    assert data["summary"]["pairs"] == 10  # 5 images
    for r in data["results"][:3]:
        assert abs(r["distance"] - _expected(d0 / r["image0"], d0 / r["image1"])) < 1e-5
    dup = [r for r in data["results"] if {r["image0"], r["image1"]} == {"im0.png", "only_here.png"}]
    assert dup[0]["distance"] == pytest.approx(0.0, abs=1e-7)


def _unit(path):
    """An image file as (1, 3, H, W) in [0, 1]."""
    return torch.from_numpy(fastlpips.read_image(path)).permute(2, 0, 1)[None]


def test_pair_dirs_allpairs_take_any_registry_metric(folders, tmp_path, capsys):
    """--metric NAME: the registry's metric on the files (column named after it); LPIPS through
    --metric equals --net/--version; --metric with --net, or --heatmap without a map, is refused."""
    d0, d1 = folders
    a, b = d0 / "im1.png", d1 / "im1.png"
    dists = fastlpips.DISTS()
    with torch.no_grad():
        want = float(dists(_unit(a), _unit(b)))
    out = json.loads(_run(["pair", str(a), str(b), "--metric", "dists", "--format", "json"], capsys).out)
    assert out["results"][0]["dists"] == pytest.approx(want, rel=1e-5)
    vgg = json.loads(_run(["pair", str(a), str(b), "--metric", "lpips-vgg", "--format", "json",
                           "--heatmap", str(tmp_path / "h.png")], capsys).out)
    assert vgg["results"][0]["lpips-vgg"] == pytest.approx(_expected(a, b, "vgg"), rel=1e-5)
    rows = list(csv.DictReader(io.StringIO(_run(["dirs", str(d0), str(d1), "--metric", "psnr", "--format", "csv",
                                                 "--batch-size", "3", "--no-progress"], capsys).out)))
    for r in rows:
        want = float(fastlpips.metrics.create_metric("psnr")(_unit(d0 / r["file"]), _unit(d1 / r["file"])))
        assert float(r["psnr"]) == pytest.approx(want, rel=1e-5)
    pairs = json.loads(_run(["allpairs", str(d0), "--metric", "dists", "--format", "json", "--batch-size", "3",
                             "--no-progress"], capsys).out)
    assert pairs["summary"]["pairs"] == 10
    for r in pairs["results"][:4]:
        with torch.no_grad():
            want = float(dists(_unit(d0 / r["image0"]), _unit(d0 / r["image1"])))
        assert r["dists"] == pytest.approx(want, rel=1e-5)
    _fails(["pair", str(a), str(b), "--metric", "dists", "--net", "vgg"], capsys, "replaces --net/--version")
    _fails(["pair", str(a), str(b), "--metric", "psnr", "--heatmap", str(tmp_path / "x.png")], capsys,
           "--metric psnr has none")


def _fails(argv, capsys, match):
    """The command fails cleanly: exit code 1, one error message on stderr, no traceback."""
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith("fastlpips: error: "), err
    assert match in err, err
    return err


def test_cli_errors(folders, tmp_path, capsys):
    d0, d1 = folders
    _fails(["pair", str(d0 / "nope.png"), str(d1 / "im0.png")], capsys, "does not exist")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    _fails(["pair", str(bad), str(d1 / "im0.png")], capsys, "cannot read image")
    Image.new("RGB", (70, 64)).save(tmp_path / "wide.png")
    _fails(["pair", str(tmp_path / "wide.png"), str(d1 / "im0.png")], capsys, "70x64")
    _fails(["dirs", str(tmp_path / "none"), str(d1)], capsys, "not a directory")
    _fails(["dirs", str(d0), str(d1), "--batch-size", "0"], capsys, "batch-size")
    _fails(["pair", str(d0 / "im0.png"), str(d1 / "im0.png"), "--net", "both"], capsys, "only for the demo")


def test_cli_errors_without_traceback(folders, tmp_path, capsys, monkeypatch):
    """Every case the issue lists: one line on stderr, exit code 1; --debug shows the traceback."""
    d0, d1 = folders
    a, b = str(d0 / "im0.png"), str(d1 / "im0.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "s0.png")
    Image.new("RGB", (8, 8), (9, 9, 9)).save(tmp_path / "s1.png")
    _fails(["pair", str(tmp_path / "s0.png"), str(tmp_path / "s1.png")], capsys, "too small")
    # squeeze has no offline weights: the WeightError's message, not a traceback
    monkeypatch.setenv("FASTLPIPS_CACHE", str(tmp_path / "empty-cache"))
    _fails(["pair", a, b, "--net", "squeeze"], capsys, "no ImageNet weights found for the squeeze trunk")
    if not torch.cuda.is_available():
        _fails(["pair", a, b, "--device", "cuda:0"], capsys, "CUDA is not available")
    _fails(["pair", a, b, "--device", "foo"], capsys, "not a torch device")
    _fails(["pair", a, b, "-o", str(tmp_path / "missing-folder" / "o.txt")], capsys, "does not exist")
    _fails(["pair", a, b, "-o", str(tmp_path)], capsys, "is a directory")
    _fails(["pair", a, b, "--heatmap", str(tmp_path / "nope" / "h.png")], capsys, "does not exist")
    for opts, msg in [(["--scales", "0"], "--scales must be in 1..8"), (["--scales", "9"], "--scales must be in 1..8"),
                      (["--rtol", "0"], "--rtol must be > 0"), (["--atol", "-1"], "--atol must be > 0"),
                      (["--rtol", "nan"], "--rtol must be > 0"), (["--confidence", "1.5"], "--confidence"),
                      (["--max-samples", "1"], "--max-samples"), (["--net", "alex"], "--net alex"),
                      (["--version", "0.0"], "--version")]:
        _fails(["elpips", a, b, "--no-progress"] + opts, capsys, msg)
    with pytest.raises(ValueError, match="too small"):
        cli.main(["pair", str(tmp_path / "s0.png"), str(tmp_path / "s1.png"), "--debug"])
    capsys.readouterr()


def test_output_never_destroys_an_input(folders, tmp_path, capsys):
    """-o / --heatmap naming an input image is refused before any work; the image is untouched."""
    d0, d1 = folders
    src = tmp_path / "a.png"
    src.write_bytes((d0 / "im2.png").read_bytes())
    before = src.read_bytes()
    _fails(["pair", str(src), str(d1 / "im2.png"), "-o", str(src)], capsys, "one of the input images")
    assert src.read_bytes() == before
    _fails(["pair", str(src), str(d1 / "im2.png"), "--heatmap", str(src)], capsys, "one of the input images")
    assert src.read_bytes() == before
    _fails(["dirs", str(d0), str(d1), "-o", str(d1 / "im1.png")], capsys, "one of the input images")
    assert Image.open(d1 / "im1.png").size == (64, 64)
    _fails(["pair", str(src), str(d1 / "im2.png"), "-o", str(tmp_path / "x.png"), "--heatmap",
            str(tmp_path / "x.png")], capsys, "same file")


def test_failing_command_keeps_existing_output(folders, tmp_path, capsys):
    """A command that fails leaves an existing -o file as it was and creates no empty file."""
    d0, d1 = folders
    out = tmp_path / "results.csv"
    out.write_text("precious\n")
    _fails(["pair", str(d0 / "nope.png"), str(d1 / "im0.png"), "-o", str(out)], capsys, "does not exist")
    assert out.read_text() == "precious\n"
    fresh = tmp_path / "fresh.csv"
    _fails(["pair", str(d0 / "nope.png"), str(d1 / "im0.png"), "-o", str(fresh)], capsys, "does not exist")
    assert not fresh.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"]  # no temporary file left
    # success replaces it atomically, keeping its permissions
    out.chmod(0o640)
    assert cli.main(["pair", str(d0 / "im0.png"), str(d1 / "im0.png"), "--format", "csv", "-o", str(out)]) == 0
    assert out.read_text().startswith("image0,image1,distance\n") and (out.stat().st_mode & 0o777) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"]


def test_heatmap_failure_still_prints_distance(folders, tmp_path, capsys, monkeypatch):
    d0, d1 = folders
    assert cli.main(["pair", str(d0 / "im0.png"), str(d1 / "im0.png"), "--heatmap", str(tmp_path / "h.xyz"),
                     "--format", "json"]) == 1
    res = capsys.readouterr()
    assert abs(json.loads(res.out)["results"][0]["distance"] - _expected(d0 / "im0.png", d1 / "im0.png")) < 1e-5
    assert f"the heat map --heatmap {tmp_path / 'h.xyz'} could not be written" in res.err
    assert "unknown picture format" in res.err
    assert not any(tmp_path.iterdir())

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    import matplotlib.figure

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", boom)
    assert cli.main(["pair", str(d0 / "im0.png"), str(d1 / "im0.png"), "--heatmap", str(tmp_path / "h.png")]) == 1
    res = capsys.readouterr()
    assert "distance" in res.out and "No space left" in res.err
    assert not any(tmp_path.iterdir())  # no partial picture, no temporary file


def test_unwritable_output_still_prints_results(folders, tmp_path, capsys, monkeypatch):
    d0, d1 = folders

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cli.os, "replace", full_disk)
    out = tmp_path / "o.json"
    assert cli.main(["pair", str(d0 / "im0.png"), str(d1 / "im0.png"), "--format", "json", "-o", str(out)]) == 1
    res = capsys.readouterr()
    assert json.loads(res.out)["results"][0]["distance"] > 0  # the results are not lost
    assert "cannot write -o" in res.err and not out.exists() and not any(tmp_path.iterdir())


@pytest.mark.parametrize("fmt", ["csv", "json", "table"])
def test_dirs_on_empty_folders_is_valid_output(tmp_path, capsys, fmt):
    (tmp_path / "e0").mkdir()
    (tmp_path / "e1").mkdir()
    res = _run(["dirs", str(tmp_path / "e0"), str(tmp_path / "e1"), "--format", fmt], capsys)
    if fmt == "json":
        data = json.loads(res.out)  # strict JSON: no NaN
        assert data == {"results": [], "summary": {"pairs": 0, "mean": None}}
        assert "NaN" not in res.out
    elif fmt == "csv":
        assert res.out == "file,distance\n"
    else:
        assert "(no image pairs)" in res.out and "pairs: 0" in res.out


@pytest.mark.subprocess
def test_demo_and_module_entry_point(tmp_path):
    heat = tmp_path / "demo.png"
    proc = subprocess.run([sys.executable, "-m", "fastlpips", "demo", "--heatmap", str(heat), "--format", "json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["results"]
    assert {r["net"] for r in rows} == {"alex", "vgg"} and len(rows) == 6
    assert all(0.01 < r["distance"] < 1.5 for r in rows)
    assert heat.is_file()


@pytest.mark.slow
def test_elpips_command(folders, capsys):
    d0, d1 = folders
    res = _run(["elpips", str(d0 / "im0.png"), str(d1 / "im0.png"), "--rtol", "0.2", "--atol", "0.05",
                "--seed", "1", "--format", "json", "--no-progress"], capsys)
    row = json.loads(res.out)["results"][0]
    assert row["converged"] and row["samples"] >= 10 and row["scale_levels"] == 1 and row["method"] == "cv"
    assert 0 < row["elpips"] < 1 and row["half_width"] < 0.2 * row["elpips"]
    again = _run(["elpips", str(d0 / "im0.png"), str(d1 / "im0.png"), "--rtol", "0.2", "--atol", "0.05",
                  "--seed", "1", "--format", "json", "--no-progress"], capsys)
    assert json.loads(again.out)["results"][0] == row  # seeded: reproducible
    res = _run(["elpips", str(d0), str(d1), "--rtol", "0.5", "--atol", "0.5", "--seed", "0", "--format", "csv",
                "--no-progress"], capsys)
    assert len(list(csv.DictReader(io.StringIO(res.out)))) == 4
    res = _run(["elpips", str(d0 / "im0.png"), str(d1 / "im0.png"), "--rtol", "0.5", "--atol", "0.5", "--seed", "0",
                "--method", "stratified", "--format", "json", "--no-progress"], capsys)
    assert json.loads(res.out)["results"][0]["method"] == "stratified"
    _fails(["elpips", str(d0 / "im0.png"), str(d1 / "im0.png"), "--iid", "--method", "cv", "--no-progress"], capsys,
           "--iid and --method cv disagree")
    # --net is honoured (the SqueezeNet variant needs its trunk weights: none offline here)
    _fails(["elpips", str(d0 / "im0.png"), str(d1 / "im0.png"), "--net", "squeeze", "--no-progress"], capsys,
           "squeeze")


def test_elpips_identical_images_stop_at_once(folders, capsys):
    """Identical images: every sample is exactly 0; the estimate converges at the first check."""
    d0, _ = folders
    res = _run(["elpips", str(d0 / "im0.png"), str(d0 / "im0.png"), "--format", "json", "--seed", "0"], capsys)
    row = json.loads(res.out)["results"][0]
    assert row["elpips"] == 0 and row["half_width"] == 0 and row["converged"] and row["samples"] <= 32
