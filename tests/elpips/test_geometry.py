"""E-LPIPS geometry (issue 12, first part): barycenters and discrete geodesics under a distance,
with the release's optimizer (REFERENCE.md section 7)."""
import math

import numpy as np
import pytest
import torch

from fastlpips import geometry
from helpers import require


def test_release_lr_schedule():
    """lr / (1 + 0.02 t'^0.75), t' = sqrt(100^2 + t^2) - 100 (written out, not from the code)."""
    assert geometry.release_lr(0) == pytest.approx(0.03)
    t = math.sqrt(100 ** 2 + 1000 ** 2) - 100
    assert geometry.release_lr(1000) == pytest.approx(0.03 / (1 + 0.02 * t ** 0.75))
    assert geometry.release_lr(500, lr=0.1) < 0.1


def test_l2_barycenter_is_the_pixel_mean():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(5, 3, 12, 12, generator=g)
    r = geometry.barycenter(images, "euclidean", steps=1500)
    torch.testing.assert_close(r.images, images.mean(0, keepdim=True), rtol=0, atol=1e-5)
    assert r.losses[-1] < r.losses[0]
    # the release's one random input per step still lands near the mean (a stochastic estimate)
    s = geometry.barycenter(images, "euclidean", steps=1500, inputs_per_step=1, seed=1)
    assert float((s.images - images.mean(0, keepdim=True)).abs().mean()) < 0.05


def test_l2_geodesic_is_the_cross_fade():
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(3, 12, 12, generator=g), torch.rand(3, 12, 12, generator=g)
    r = geometry.geodesic(a, b, "euclidean", frames=4, steps=1500)
    w = torch.arange(6, dtype=torch.float32).view(-1, 1, 1, 1) / 5
    torch.testing.assert_close(r.images, (1 - w) * a + w * b, rtol=0, atol=1e-5)
    assert torch.equal(r.images[0], a) and torch.equal(r.images[-1], b)


@pytest.mark.slow
def test_elpips_barycenter_beats_the_pixel_mean():
    """Four noisy copies (sigma 0.07, as the paper) of a 64x64 photo crop: starting from their
    pixel mean, 20 steps of the E-LPIPS barycenter lower sum_i E-LPIPS(x, n_i)^2, measured with 32 draws on
    common random numbers at both points (measured: 1.81e-4 vs 2.79e-4)."""
    skimage = require("skimage.data")
    from fastlpips import ELPIPS

    photo = torch.from_numpy(np.ascontiguousarray(skimage.astronaut()[200:264, 180:244])).permute(2, 0, 1).float() / 255
    g = torch.Generator().manual_seed(0)
    noisy = (photo[None] + 0.07 * torch.randn(4, 3, 64, 64, generator=g)).clamp(0, 1)
    metric = ELPIPS().requires_grad_(False)
    r = geometry.barycenter(noisy, "elpips", steps=20, lr=0.01, init="mean", draws=1)  # the fused-head path

    def objective(x):
        with torch.no_grad():
            d = metric(x.expand_as(noisy), noisy, n_samples=32, generator=torch.Generator().manual_seed(5))
        return float(d.square().sum())
    at_mean, at_bary = objective(noisy.mean(0, keepdim=True)), objective(r.images)
    assert at_bary < at_mean, (at_bary, at_mean)


def test_bad_inputs():
    x = torch.rand(3, 3, 16, 16)
    with pytest.raises(ValueError, match="at least 2 images"):
        geometry.barycenter(x[:1])
    with pytest.raises(ValueError, match=r"images must hold values in \[0, 1\]"):
        geometry.barycenter(x * 2)
    with pytest.raises(ValueError, match="inputs_per_step must be None or an int in"):
        geometry.barycenter(x, inputs_per_step=4)
    with pytest.raises(ValueError, match="single images of one size"):
        geometry.geodesic(x[0], torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="frames must be an int >= 1"):
        geometry.geodesic(x[0], x[1], frames=0)
    with pytest.raises(ValueError, match="distance 'ssim' cannot be minimized: higher is better"):
        geometry.barycenter(x, "ssim")
    with pytest.raises(ValueError, match="distance 'l2-lab' cannot be minimized: it is piecewise constant"):
        geometry.barycenter(x, "l2-lab")
    with pytest.raises(ValueError, match="'l2' is ambiguous"):
        geometry.barycenter(x, "l2")
    with pytest.raises(ValueError, match="init must be"):
        geometry.geodesic(x[0], x[1], init="mean")


@pytest.mark.subprocess
def test_cli_barycenter_and_geodesic(tmp_path):
    """`fastlpips barycenter` / `geodesic` on small PNGs under L2: files written, the barycenter
    equal to the mean of the 8-bit inputs within a grey level, clear errors for bad input."""
    import subprocess
    import sys

    from PIL import Image

    g = np.random.default_rng(0)
    arrays = [g.integers(0, 256, (12, 12, 3), dtype=np.uint8) for _ in range(3)]
    paths = []
    for i, a in enumerate(arrays):
        paths.append(tmp_path / f"in{i}.png")
        Image.fromarray(a).save(paths[-1])
    Image.fromarray(g.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "small.png")

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "fastlpips", *map(str, args)], capture_output=True, text=True)
    p = cli("barycenter", *paths, "--distance", "euclidean", "--steps", "1500", "--save", tmp_path / "b.png",
            "--grid", tmp_path / "grid.png", "--format", "csv")
    assert p.returncode == 0, p.stderr
    got = np.asarray(Image.open(tmp_path / "b.png")).astype(float)
    assert np.abs(got - np.mean(arrays, axis=0)).max() <= 1.0
    assert Image.open(tmp_path / "grid.png").size == (48, 12)
    p = cli("geodesic", paths[0], paths[1], "--distance", "euclidean", "--frames", "3", "--steps", "800",
            "--save", tmp_path / "g.png", "--gif", tmp_path / "g.gif", "--mp4", tmp_path / "g.mp4")
    assert p.returncode == 0, p.stderr
    assert Image.open(tmp_path / "g.png").size == (60, 12)
    assert Image.open(tmp_path / "g.gif").n_frames == 8  # 5 frames forth, 3 back
    # the video: the same 8 frames, enlarged 22x (12 px -> 264 >= 256), decoded back by ffmpeg
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(tmp_path / "g.mp4"))
    meta = next(reader)
    frames = [np.frombuffer(f, np.uint8).reshape(264, 264, 3) for f in reader]
    assert meta["size"] == (264, 264) and meta["codec"] == "h264" and len(frames) == 8
    gif = Image.open(tmp_path / "g.gif")
    for k in (0, 2, 4):
        gif.seek(k)
        want = np.asarray(gif.convert("RGB")).astype(float).repeat(22, 0).repeat(22, 1)
        assert np.abs(frames[k].astype(float) - want).mean() < 6  # lossy H.264 of the same frame
    for args, msg in ((("barycenter", paths[0], "--save", tmp_path / "x.png"), "at least 2 images"),
                      (("barycenter", paths[0], tmp_path / "small.png", "--save", tmp_path / "x.png"),
                       "must have one size"),
                      (("geodesic", paths[0], paths[1], "--frames", "0", "--save", tmp_path / "x.png"),
                       "--frames must be >= 1"),
                      (("geodesic", paths[0], paths[1], "--save", paths[0]), "input")):
        p = cli(*args)
        assert p.returncode == 1 and msg in p.stderr, (args, p.stderr)
    p = cli("geodesic", paths[0], paths[1], "--families", "flip", "--distance", "euclidean", "--save",
            tmp_path / "x.png")
    assert p.returncode == 1 and "--families applies to --distance elpips" in p.stderr, p.stderr
    p = cli("elpips", paths[0], paths[1], "--families", "flip,colour")
    assert p.returncode == 2 and "unknown E-LPIPS transform families ['colour']" in p.stderr, p.stderr


def test_hutchinson_moments_match_the_dense_spectrum():
    """tr(A^j) / n for A = J^T J of LPIPS features (squeeze, random trunk, one 17x17 image,
    float64) from Rademacher probes agrees with the dense eigenvalues within 5 standard errors
    (the estimator's variance is at most 2 tr(A^2j) per probe); probes are batched as rows."""
    import fastlpips
    from fastlpips.attacks import JTJ, LPIPSDistance
    from fastlpips.attacks.linalg import hutchinson_moments

    torch.manual_seed(0)
    d = LPIPSDistance(fastlpips.LPIPS(net="squeeze", pnet_rand=True, verbose=False).double())
    x = torch.rand(1, 3, 17, 17, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    jac = torch.func.jacfwd(d.features)(x).reshape(-1, x.numel())
    eig = torch.linalg.eigvalsh(jac.T @ jac).clamp_min(0)
    rows, probes, order = 32, 8, 4
    op = JTJ(d.features, x.repeat(rows, 1, 1, 1))
    est = hutchinson_moments(op, (rows,) + tuple(x.shape[1:]), order=order, probes=probes,
                             generator=torch.Generator().manual_seed(2), dtype=torch.float64).mean(0)
    n, samples = x.numel(), rows * probes
    for j in range(1, order + 1):
        true = float((eig ** j).sum()) / n
        se = math.sqrt(2 * float((eig ** (2 * j)).sum()) / samples) / n
        assert abs(float(est[j - 1]) - true) <= 5 * se, (j, float(est[j - 1]), true, se)
    with pytest.raises(ValueError, match="positive ints"):
        hutchinson_moments(op, (rows, 3, 17, 17), order=0)


def test_hessian_study_matches_the_dense_spectrum(tmp_path):
    """hessian_study on a tiny problem (LPIPS features, squeeze random trunk, 17x17, float64):
    the largest Ritz value equals the dense lambda_max, the smallest Ritz value bounds lambda_min
    from above, the mean eigenvalue is within 5 standard errors, the quadrature weights sum to 1
    and their first moments agree with the dense ones; the plot is written."""
    import fastlpips
    from fastlpips.attacks import LPIPSDistance
    from fastlpips.geometry import hessian_study, plot_spectrum

    torch.manual_seed(0)
    d = LPIPSDistance(fastlpips.LPIPS(net="squeeze", pnet_rand=True, verbose=False).double())
    x = torch.rand(2, 3, 17, 17, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    st = hessian_study(d, x, iterations=40, probes=6, order=3, seed=3)
    n = x[0].numel()
    for i in range(2):
        jac = torch.func.jacfwd(d.features)(x[i:i + 1]).reshape(-1, n).detach()
        eig = torch.linalg.eigvalsh(jac.T @ jac).clamp_min(0)
        assert float(st.lambda_max[i]) == pytest.approx(float(eig.max()), rel=1e-6)
        assert float(st.lambda_min[i]) >= float(eig.min()) - 1e-9 * float(eig.max())
        mean = float(eig.mean())
        se = math.sqrt(2 * float((eig ** 2).sum()) / st.probes) / n
        assert abs(float(st.mean[i]) - mean) <= 5 * se
        assert float(st.weights[i].sum()) == pytest.approx(1.0, abs=1e-9)
        slq_mean = float((st.weights[i] * st.nodes[i]).sum())  # quadrature: tr(A)/n from the Lanczos starts
        assert abs(slq_mean - mean) <= 5 * se
        m2 = float((eig ** 2).mean()) / mean ** 2
        assert float(st.moments[i, 1]) == pytest.approx(m2, rel=0.5)
    assert (st.condition >= 1).all()
    summary = st.summary()
    assert len(summary["lambda_max_over_mean"]) == 2 and summary["lanczos_iterations"] == 40
    plot_spectrum({"squeeze (random)": st}, tmp_path / "spectrum.png")
    assert (tmp_path / "spectrum.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="iterations must be >= 2"):
        hessian_study(d, x, iterations=1)


def test_elpips_pairs_equal_the_metric_on_the_shared_draw():
    """The barycenter/geodesic E-LPIPS path (fused heads on ELPIPS.shared_pass layers, fixed images
    without a graph) gives, for every pair, the mean of ELPIPS' own sample distances under the
    step's draw, and the gradient of the shared-draw features path (float64)."""
    import copy

    from fastlpips import ELPIPS
    from fastlpips.attacks import ELPIPSDistance

    metric = copy.deepcopy(ELPIPS(max_scale=2)).double().requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(3, 3, 32, 32, generator=g, dtype=torch.float64)
    x = torch.rand(1, 3, 32, 32, generator=g, dtype=torch.float64).requires_grad_(True)
    frames = torch.rand(2, 3, 32, 32, generator=g, dtype=torch.float64).requires_grad_(True)
    d = ELPIPSDistance(metric, samples=3, seed=2, shared=True)
    pairs = geometry._Pairs(d, 3, 0, None)
    v = pairs.one_to_many(x, imgs, None, 0)
    draw = d.draw
    for i in range(3):
        want = metric.sample_distances((x.detach(),), imgs[i:i + 1], 3, draw=draw)[0].mean()
        assert float(v[i]) == pytest.approx(float(want), rel=1e-9)
    (gx,) = torch.autograd.grad(v.square().sum(), x)
    fx, fn = d.features(x), d.features(imgs)
    (want_gx,) = torch.autograd.grad(d.from_features(fx.expand(3, -1), fn).square().sum(), x)
    torch.testing.assert_close(gx, want_gx, rtol=1e-8, atol=1e-12)
    c = pairs.chain(imgs[:2], frames, 0)  # imgs[0], frames[0], frames[1], imgs[1]
    chain = [imgs[:1], frames[:1].detach(), frames[1:].detach(), imgs[1:2]]
    for i in range(3):
        want = metric.sample_distances((chain[i],), chain[i + 1], 3, draw=draw)[0].mean()
        assert float(c[i]) == pytest.approx(float(want), rel=1e-9)
    (gf,) = torch.autograd.grad(c.square().sum(), frames)
    fc = d.features(torch.cat([imgs[:1], frames, imgs[1:2]]))
    (want_gf,) = torch.autograd.grad(d.from_features(fc[:-1], fc[1:]).square().sum(), frames)
    torch.testing.assert_close(gf, want_gf, rtol=1e-8, atol=1e-12)
    pairs.one_to_many(x, imgs, None, 1)  # the next step: fresh draws
    assert d.seed == 3
    with pytest.raises(ValueError, match="shared=True"):
        geometry.barycenter(imgs.float(), ELPIPSDistance(metric))
