"""IFC (fastlpips.ifc) against the authors' MATLAB release run under GNU Octave on real photo pairs
(grey and colour converted to luma, several sizes and distortions: tests/data/ifc/README.md says
how the values were made), its steerable pyramid against pyrtools', and its contract."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fastlpips.ifc import IFC_MIN_SIZE, ifc, rgb_to_y, steerable_pyramid
from fastlpips.metrics import create_metric, metric_info
from helpers import require

DATA = Path(__file__).resolve().parents[1] / "data" / "ifc"


def _png(name):
    from PIL import Image

    a = np.asarray(Image.open(DATA / name), dtype=np.float64) / 255
    t = torch.from_numpy(a)
    return t[None, None] if t.dim() == 2 else t.permute(2, 0, 1)[None]


@pytest.fixture(scope="module")
def octave():
    return json.loads((DATA / "ifc_octave.json").read_text())


def test_equals_the_release_under_octave(octave):
    assert {p["mode"] for p in octave["pairs"]} == {"grey", "rgb"}
    for p in octave["pairs"]:
        x, y = _png(p["reference"]), _png(p["distorted"])
        got = float(ifc(x, y))
        assert got == pytest.approx(p["ifc"], rel=1e-9), (p["distorted"], got, p["ifc"])


def test_pyramid_equals_pyrtools():
    spaces = require("pyrtools.pyramids", reason="pyrtools is a test dependency (requirements-dev.txt)")
    x = _png("astronaut.png")
    luma = rgb_to_y(x)
    ref = spaces.SteerablePyramidSpace(luma[0, 0].numpy(), height=4, order=5)
    ours = steerable_pyramid(luma)
    assert len(ours) == 4
    for lev in range(4):
        for b in range(6):
            want = torch.from_numpy(np.asarray(ref.pyr_coeffs[(lev, b)]))
            torch.testing.assert_close(ours[lev][0, b], want, rtol=1e-12, atol=1e-9)


def test_contract(octave):
    x, y = _png("coffee.png"), _png("coffee_noise.png")
    one = ifc(x, y)
    assert one.shape == (1,) and one.dtype == torch.float64
    assert float(ifc(x, x)) > float(one) > 0  # identical images carry the most information
    both = ifc(x, torch.cat([y, _png("coffee_sr4.png")]))  # a batch of 1 broadcasts
    torch.testing.assert_close(both[:1], one)
    torch.testing.assert_close(ifc(x * 255, y * 255, 255.0), one)
    torch.testing.assert_close(ifc(x, y, reduction="mean"), one.mean())
    f32 = ifc(x.float(), y.float())
    assert f32.dtype == torch.float32 and float(f32) == pytest.approx(float(one), rel=1e-5)
    assert ifc(x[:0], y[:0]).shape == (0,)


def test_bad_input_raises_clearly():
    x = torch.rand(1, 3, 80, 80, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"71x71 is too small for IFC .* at least 72x72"):
        ifc(x[..., :71, :71], x[..., :71, :71])
    assert IFC_MIN_SIZE == 72
    with pytest.raises(ValueError, match=r"1 \(luminance\) or 3 \(RGB\) channels for IFC"):
        ifc(x[:, :2], x[:, :2])
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="distorted contains 1 NaN"):
        ifc(x, bad)
    with pytest.raises(ValueError, match="same channel count and spatial size"):
        ifc(x, x[..., :76])


def test_registered_for_evaluation(octave):
    info = metric_info("ifc")
    assert not info.lower_better and info.family == "iqa"
    p = next(p for p in octave["pairs"] if p["mode"] == "rgb")  # the registry's metrics take RGB images
    m = create_metric("ifc")
    assert float(m(_png(p["distorted"]), _png(p["reference"]))) == pytest.approx(p["ifc"], rel=1e-9)


def test_evaluate_reports_the_releases_numbers(octave, tmp_path):
    """``evaluate --metrics uqi,ifc`` on the colour pairs: the CSV holds the release's IFC."""
    import csv
    import shutil

    from fastlpips.evaluation import evaluate

    rgb = [p for p in octave["pairs"] if p["mode"] == "rgb"]
    for p in rgb:
        name, kind = p["distorted"][:-4].split("_")
        (tmp_path / "ref").mkdir(exist_ok=True)
        (tmp_path / kind).mkdir(exist_ok=True)
        shutil.copy(DATA / p["reference"], tmp_path / "ref" / p["reference"])
        shutil.copy(DATA / p["distorted"], tmp_path / kind / p["reference"])
    kinds = sorted({p["distorted"][:-4].split("_")[1] for p in rgb})
    r = evaluate(tmp_path / "ref", [tmp_path / k for k in kinds], ["uqi", "ifc"], tmp_path / "res", report=False)
    assert all(e["message"].startswith("no counterpart") for e in r.errors)  # each method has some photos
    with open(tmp_path / "res" / "results.csv") as f:
        rows = {(row["method"], row["file"]): row for row in csv.DictReader(f)}
    for p in rgb:
        name, kind = p["distorted"][:-4].split("_")
        assert float(rows[(kind, p["reference"])]["ifc"]) == pytest.approx(p["ifc"], rel=1e-6)


def test_a_flat_reference_is_nan_and_does_not_stop_the_batch():
    """A flat reference has singular neighbourhood covariances: NaN for that image (the release's
    inv gives Inf, its IFC NaN), the other images of the batch are computed."""
    x, y = _png("coffee.png"), _png("coffee_noise.png")
    flat = torch.full_like(x, 0.5)
    got = ifc(torch.cat([x, flat]), torch.cat([y, y]))
    assert torch.isnan(got[1]) and float(got[0]) == pytest.approx(float(ifc(x, y)), rel=1e-12)
