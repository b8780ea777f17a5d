"""IFC and UQI per image, and ``evaluate`` with the robust-perceptual-loss paper's metrics.

* ``test_ifc``: ``fastlpips.ifc.ifc`` on 256x256 RGB pairs (luma, float64), batches of 1 and 16:
  time per image. The authors' ``ifcvec.m`` under GNU Octave on the same size is timed apart (it
  is not part of the project: tests/data/ifc/README.md says how to run it) and compared in
  benchmarks/README.md.
* ``test_uqi``: ``fastlpips.iqa.uqi`` on the same pairs vs sewar's ``uqi`` (numpy, per image), the
  package people use today; the values differ by definition (sewar puts window means where the
  authors put sums), so only times are compared.
* ``test_evaluate_paper_metrics``: ``fastlpips.evaluate`` with PSNR, SSIM, UQI, IFC, GMSD,
  LPIPS-Alex, R-LPIPS and an ImageNet ResNet-50's top-1 error (outputs and references) on ``N``
  256x256 references and one method (x4 bicubic down-and-up: the SR setting): images/s of the
  whole call (file matching, records, CSV/JSON; no HTML report).

Run: ``FASTLPIPS_OFFLINE=1 .venv/bin/python -m pytest -q benchmarks/test_bench_ifc.py
--benchmark-json=benchmarks/results/ifc.json``; ``FASTLPIPS_BENCH_SMOKE=1``: 4 images.
"""
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

SMOKE = os.environ.get("FASTLPIPS_BENCH_SMOKE") == "1"
N, SIZE = (4, 96) if SMOKE else (100, 256)
_DATA = {}


def _crops(n):
    from fastlpips.imagefolder import example_photos

    rng = np.random.default_rng(0)
    photos = [p if p.dtype == np.uint8 else np.round(np.clip(p, 0, 1) * 255).astype(np.uint8)
              for p in example_photos()]
    out = []
    for k in range(n):
        p = photos[k % len(photos)]
        y, x = rng.integers(0, p.shape[0] - SIZE + 1), rng.integers(0, p.shape[1] - SIZE + 1)
        out.append(np.ascontiguousarray(p[y:y + SIZE, x:x + SIZE, :3]))
    return out


def _sr4(a):
    im = Image.fromarray(a)
    return np.asarray(im.resize((SIZE // 4, SIZE // 4), Image.BICUBIC).resize((SIZE, SIZE), Image.BICUBIC))


def data() -> Path:
    if "root" not in _DATA:
        root = Path(tempfile.mkdtemp(prefix="bench-ifc-"))
        (root / "ref").mkdir()
        (root / "sr4").mkdir()
        for k, a in enumerate(_crops(N)):
            Image.fromarray(a).save(root / "ref" / f"{k:03d}.png")
            Image.fromarray(_sr4(a)).save(root / "sr4" / f"{k:03d}.png")
        _DATA["root"] = root
    return _DATA["root"]


def _pairs(n):
    crops = _crops(n)
    x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).double() / 255
    y = torch.from_numpy(np.stack([_sr4(a) for a in crops])).permute(0, 3, 1, 2).double() / 255
    return x, y


@pytest.mark.parametrize("batch", [1, 16])
def test_ifc(benchmark, batch):
    from fastlpips.ifc import ifc

    x, y = _pairs(batch)
    benchmark.group = f"IFC {SIZE}x{SIZE}"
    benchmark.extra_info.update(provider="fastlpips", batch=batch, size=SIZE)
    out = benchmark.pedantic(lambda: ifc(x, y), rounds=3 if batch > 1 else 5, iterations=1, warmup_rounds=1)
    assert out.shape == (batch,) and torch.isfinite(out).all()


@pytest.mark.parametrize("provider", ["sewar", "fastlpips"])
def test_uqi(benchmark, provider):
    from fastlpips.iqa import uqi

    x, y = _pairs(16)
    if provider == "sewar":
        full_ref = pytest.importorskip("sewar.full_ref")
        xs = [a.permute(1, 2, 0).numpy() for a in x]
        ys = [a.permute(1, 2, 0).numpy() for a in y]

        def run():
            return [full_ref.uqi(a, b) for a, b in zip(xs, ys)]
    else:
        def run():
            return uqi(x.float(), y.float())
    benchmark.group = f"UQI 16 images {SIZE}x{SIZE}"
    benchmark.extra_info.update(provider=provider, batch=16, size=SIZE)
    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)


def _paper_models(tmp: Path):
    """An R-LPIPS-format checkpoint (LPIPS-Alex with scaled lin weights) and an ImageNet ResNet-50
    weights file (random weights: times only; the classes come from a labels file)."""
    import fastlpips
    from fastlpips.nets.classifiers import ResNet50

    lp = fastlpips.LPIPS(net="alex", verbose=False)
    with torch.no_grad():
        for lin in lp.lins:
            lin.weight.mul_(1.1)
    torch.save(lp.state_dict(), tmp / "rlpips.pth")
    torch.manual_seed(0)
    torch.save(ResNet50().state_dict(), tmp / "resnet50.pth")
    with open(tmp / "labels.csv", "w") as f:
        f.write("file,label\n" + "".join(f"{k:03d}.png,{k % 1000}\n" for k in range(N)))
    return tmp / "rlpips.pth", tmp / "resnet50.pth", tmp / "labels.csv"


def test_evaluate_paper_metrics(benchmark, tmp_path):
    """All of Uelwer et al.'s columns: PSNR, SSIM, UQI, IFC, GMSD, LPIPS, R-LPIPS and a ResNet-50's
    top-1 error on outputs and references."""
    from fastlpips.evaluation import evaluate

    root = data()
    rlpips, resnet, labels = _paper_models(tmp_path)
    metrics = ["psnr", "ssim", "uqi", "ifc", "gmsd", "lpips", f"rlpips={rlpips}", f"top1={resnet}"]

    def run():
        return evaluate(root / "ref", [root / "sr4"], metrics, tmp_path / "res", restart=True, report=False,
                        labels=labels)

    benchmark.group = f"evaluate {N} images {SIZE}x{SIZE}"
    benchmark.extra_info.update(provider="fastlpips", images=N, size=SIZE, metrics=",".join(metrics))
    r = benchmark.pedantic(run, rounds=1 if not SMOKE else 1, iterations=1, warmup_rounds=0)
    assert not r.errors and len(r.rows) == N
