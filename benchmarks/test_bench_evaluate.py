"""Dataset evaluation: ``fastlpips.evaluate`` with LPIPS + SSIM + PSNR vs running the
``lpips`` package and scikit-image per image, same run, same machine. Goal >= 2x images/s.

Data: ``N`` reference crops (``SIZE`` x ``SIZE``) of the scikit-image photos and 2 or 4 methods
(noisy, 4x blurred, JPEG quality 25, 2x down-and-up-sampled versions of each), written as PNG
files; ``M N`` (reference, output) pairs. The number of methods matters: fastlpips reads each
reference and runs its trunk once for all M methods (M + 1 trunk images per reference where the
per-pair loop runs 2 M), so the trunk alone bounds the speed-up at 2M / (M + 1) (1.33x for 2
methods, 1.6x for 4) and the rest comes from SSIM (scikit-image ~16 ms per 256x256 pair here)
and the loop's overheads.

* ``reference``: what one writes today, per pair: ``lpips.load_image`` of both files,
  ``lpips.im2tensor``, ``lpips.LPIPS(net='alex')`` forward (model built once, outside the timing),
  ``skimage.metrics.structural_similarity`` (Gaussian window, sigma 1.5, population statistics:
  the convention ``fastlpips.iqa.ssim`` follows) and ``peak_signal_noise_ratio``, the values
  collected in a list.
* ``fastlpips``: ``fastlpips.evaluate(ref, [noisy, blur], ['psnr', 'ssim', 'lpips'], ...,
  restart=True, report=False)``: everything the CLI does but the HTML report, model construction
  and the CSV/JSON files included (records, file matching, batches of 16, each reference read and
  its trunk features computed once for both methods).

The values are checked equal before timing (PSNR/SSIM 1e-4 relative: float32 vs scikit-image's
float64; LPIPS 1e-4). Run: ``FASTLPIPS_OFFLINE=1 .venv/bin/python -m pytest -q
benchmarks/test_bench_evaluate.py --benchmark-json=benchmarks/results/evaluate.json``;
``FASTLPIPS_BENCH_SMOKE=1``: 4 crops of 64x64.
"""
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import models
from PIL import Image

SMOKE = os.environ.get("FASTLPIPS_BENCH_SMOKE") == "1"
N, SIZE = (4, 64) if SMOKE else (24, 256)
ROUNDS = 1 if SMOKE else 3
_DATA = {}


METHODS = ("noisy", "blur", "jpeg", "half")  # the first M are the methods of a case


def data() -> Path:
    if "root" not in _DATA:
        import io

        from fastlpips.imagefolder import example_photos

        root = Path(tempfile.mkdtemp(prefix="bench-evaluate-"))
        rng = np.random.default_rng(0)
        photos = [p if p.dtype == np.uint8 else np.round(np.clip(p, 0, 1) * 255).astype(np.uint8)
                  for p in example_photos()]
        for d in ("ref",) + METHODS:
            (root / d).mkdir()
        for k in range(N):
            p = photos[k % len(photos)]
            y, x = rng.integers(0, p.shape[0] - SIZE + 1), rng.integers(0, p.shape[1] - SIZE + 1)
            crop = p[y:y + SIZE, x:x + SIZE]
            im = Image.fromarray(crop)
            im.save(root / "ref" / f"{k:03d}.png")
            noisy = np.clip(crop + rng.normal(0, 12, crop.shape), 0, 255).astype(np.uint8)
            Image.fromarray(noisy).save(root / "noisy" / f"{k:03d}.png")
            im.resize((SIZE // 4, SIZE // 4), Image.BOX).resize((SIZE, SIZE),
                                                                Image.BICUBIC).save(root / "blur" / f"{k:03d}.png")
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=25)
            Image.open(buf).convert("RGB").save(root / "jpeg" / f"{k:03d}.png")
            im.resize((SIZE // 2, SIZE // 2), Image.BOX).resize((SIZE, SIZE),
                                                                Image.BILINEAR).save(root / "half" / f"{k:03d}.png")
        _DATA["root"] = root
    return _DATA["root"]


def reference_run(root: Path, methods=2):
    import lpips
    import torch
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    model = models("alex")[1]
    out = []
    for method in METHODS[:methods]:
        for ref_path in sorted((root / "ref").iterdir()):
            a, b = lpips.load_image(str(ref_path)), lpips.load_image(str(root / method / ref_path.name))
            with torch.no_grad():
                d = float(model(lpips.im2tensor(b), lpips.im2tensor(a)))
            s = structural_similarity(b, a, channel_axis=2, data_range=255, gaussian_weights=True, sigma=1.5,
                                      use_sample_covariance=False)
            p = peak_signal_noise_ratio(a, b, data_range=255)
            out.append((method, ref_path.name, p, s, d))
    return out


def fastlpips_run(root: Path, methods=2):
    import fastlpips

    res = fastlpips.evaluate(root / "ref", [root / m for m in METHODS[:methods]], ["psnr", "ssim", "lpips"],
                             root / "results", batch_size=16, restart=True, report=False)
    return [(r["method"], r["file"], r["psnr"], r["ssim"], r["lpips-alex"]) for r in res.rows]


@pytest.mark.parametrize("methods", [2, 4])
@pytest.mark.parametrize("provider", ["reference", "fastlpips"])
def test_evaluate_images_per_second(benchmark, provider, methods):
    root = data()
    ref, ours = reference_run(root, methods), fastlpips_run(root, methods)
    assert [r[:2] for r in ref] == [o[:2] for o in ours]
    for r, o in zip(ref, ours):
        for k in (2, 3, 4):
            assert o[k] == pytest.approx(r[k], rel=1e-4, abs=1e-6), (r, o)
    run = reference_run if provider == "reference" else fastlpips_run
    benchmark.group = f"evaluate psnr+ssim+lpips-alex {SIZE}x{SIZE} {methods} methods x {N} images"
    benchmark.extra_info.update(provider=provider, pairs=methods * N,
                                torch_threads=__import__("torch").get_num_threads())
    benchmark.pedantic(run, args=(root, methods), rounds=ROUNDS, iterations=1, warmup_rounds=1)
