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
from conftest import distort, real_images


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


def test_cli_errors(folders, tmp_path):
    d0, d1 = folders
    with pytest.raises(SystemExit, match="does not exist"):
        cli.main(["pair", str(d0 / "nope.png"), str(d1 / "im0.png")])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(SystemExit, match="cannot read image"):
        cli.main(["pair", str(bad), str(d1 / "im0.png")])
    Image.new("RGB", (70, 64)).save(tmp_path / "wide.png")
    with pytest.raises(SystemExit, match="70x64"):
        cli.main(["pair", str(tmp_path / "wide.png"), str(d1 / "im0.png")])
    with pytest.raises(SystemExit, match="not a directory"):
        cli.main(["dirs", str(tmp_path / "none"), str(d1)])
    with pytest.raises(SystemExit, match="batch-size"):
        cli.main(["dirs", str(d0), str(d1), "--batch-size", "0"])
    with pytest.raises(SystemExit, match="only for the demo"):
        cli.main(["pair", str(d0 / "im0.png"), str(d1 / "im0.png"), "--net", "both"])


def test_demo_and_module_entry_point(tmp_path):
    heat = tmp_path / "demo.png"
    proc = subprocess.run([sys.executable, "-m", "fastlpips", "demo", "--heatmap", str(heat), "--format", "json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["results"]
    assert {r["net"] for r in rows} == {"alex", "vgg"} and len(rows) == 6
    assert all(0.01 < r["distance"] < 1.5 for r in rows)
    assert heat.is_file()


def test_elpips_command(folders, capsys):
    d0, d1 = folders
    res = _run(["elpips", str(d0 / "im0.png"), str(d1 / "im0.png"), "--rtol", "0.2", "--atol", "0.05",
                "--seed", "1", "--format", "json", "--no-progress"], capsys)
    row = json.loads(res.out)["results"][0]
    assert row["converged"] and row["samples"] >= 10 and row["scale_levels"] == 1
    assert 0 < row["elpips"] < 1 and row["half_width"] < 0.2 * row["elpips"]
    again = _run(["elpips", str(d0 / "im0.png"), str(d1 / "im0.png"), "--rtol", "0.2", "--atol", "0.05",
                  "--seed", "1", "--format", "json", "--no-progress"], capsys)
    assert json.loads(again.out)["results"][0] == row  # seeded: reproducible
    res = _run(["elpips", str(d0), str(d1), "--rtol", "0.5", "--atol", "0.5", "--seed", "0", "--format", "csv",
                "--no-progress"], capsys)
    assert len(list(csv.DictReader(io.StringIO(res.out)))) == 4
    with pytest.raises(SystemExit, match="--net does not apply"):
        cli.main(["elpips", str(d0 / "im0.png"), str(d1 / "im0.png"), "--net", "squeeze"])
