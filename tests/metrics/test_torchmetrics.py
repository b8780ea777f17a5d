"""fastlpips.torchmetrics against torchmetrics 1.9.0's LPIPS on the same images and trunk weights:
numbers, argument and input errors, Metric behaviour (MetricCollection, forward, reset, state
memory), the cached functional form and the fallback without torchmetrics."""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

import fastlpips
from fastlpips import torchmetrics as FT
from fastlpips.reference import normalize_channels_root
from helpers import FP32_VS_FP32, distort, real_images, require

NETS = ("alex", "vgg", "squeeze")
REDUCTIONS = ("mean", "sum", "none")


def _tm_key(key: str, net: str) -> str:
    """Our trunk's state-dict key -> torchmetrics' (its SqueezeNet holds ``slices.i``, not ``slice{i+1}``)."""
    if net != "squeeze":
        return key
    head, rest = key.split(".", 1)
    return f"slices.{int(head[len('slice'):]) - 1}.{rest}"


@pytest.fixture
def pair(monkeypatch):
    """make(net, reduction, eps) -> (ours, torchmetrics'), sharing our trunk weights (offline:
    torchmetrics' own trunk would be downloaded through torchvision)."""
    require("torchvision")
    tmf = require("torchmetrics.functional.image.lpips")
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity as TM

    original = tmf._get_tv_model_features
    monkeypatch.setattr(tmf, "_get_tv_model_features", lambda net, pretrained=False: original(net, pretrained=False))

    def make(net, reduction="mean", eps="lpips", scale_first=None):
        torch.manual_seed(0)
        ours = FT.LearnedPerceptualImagePatchSimilarity(net, reduction, eps=eps,
                                                        net_kwargs={"pnet_rand": net == "squeeze"})
        if scale_first is not None:  # tiny first-layer features: where the two normalizations part
            first = next(m for m in ours.net.net.modules() if isinstance(m, torch.nn.Conv2d))
            with torch.no_grad():
                first.weight.mul_(scale_first)
                first.bias.mul_(scale_first)
        theirs = TM(net_type=net, reduction=reduction)
        theirs.net.net.load_state_dict({_tm_key(k, net): v for k, v in ours.net.net.state_dict().items()})
        return ours, theirs
    return make


@pytest.fixture(scope="module")
def images():
    x = real_images(64, 4)
    return x, distort(x, 1)


@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_equals_torchmetrics_with_its_normalization(pair, images, net, reduction):
    x, y = images
    ours, theirs = pair(net, reduction, eps="torchmetrics")
    for i in (0, 2):  # two updates
        ours.update(x[i:i + 2], y[i:i + 2])
        theirs.update(x[i:i + 2], y[i:i + 2])
    a, b = ours.compute(), theirs.compute()
    assert a.shape == b.shape and a.dtype == b.dtype
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    # the default (lpips 0.1.4's normalization) agrees within the lpips-parity tolerance
    default, _ = pair(net, reduction)
    default.update(x, y)
    torch.testing.assert_close(default.compute(), b, **FP32_VS_FP32)


def test_the_two_normalizations_part_near_zero_features(pair, images):
    """Where features are tiny, eps='torchmetrics' follows torchmetrics and the default follows lpips."""
    tmf = require("torchmetrics.functional.image.lpips")
    f = torch.randn(2, 8, 3, 3, generator=torch.Generator().manual_seed(0)) * 1e-5
    torch.testing.assert_close(normalize_channels_root(f), tmf._normalize_tensor(f), rtol=1e-6, atol=0)
    x, y = images
    tm_mode, theirs = pair("alex", "none", eps="torchmetrics", scale_first=1e-6)
    lpips_mode, _ = pair("alex", "none", scale_first=1e-6)
    want = theirs(x, y)
    torch.testing.assert_close(tm_mode(x, y), want, rtol=1e-5, atol=1e-7)
    assert (lpips_mode(x, y) - want).abs().max() > 1e-3  # lpips' eps keeps tiny features at unit norm


@pytest.mark.parametrize("kwargs", [dict(net_type="resnet"), dict(reduction="max"), dict(normalize=1)])
def test_bad_arguments_raise_torchmetrics_error(pair, kwargs):
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity as TM

    with pytest.raises(ValueError) as theirs:
        TM(**kwargs)
    with pytest.raises(ValueError) as ours:
        FT.LearnedPerceptualImagePatchSimilarity(**kwargs)
    assert str(ours.value) == str(theirs.value)
    with pytest.raises(ValueError, match="Argument `eps` must be one of"):
        FT.LearnedPerceptualImagePatchSimilarity(eps="1e-8")


@pytest.mark.parametrize("normalize", [False, True])
def test_bad_inputs_raise_torchmetrics_error(pair, images, normalize):
    x, y = images
    ours, theirs = pair("alex")
    ours.normalize = theirs.normalize = normalize
    for a, b in [(x[:, :2], y[:, :2]), (x[0], y[0]), (x - 1, y), (x, y + 1) if normalize else (x * 3, y)]:
        with pytest.raises(ValueError) as t:
            theirs.update(a, b)
        with pytest.raises(ValueError) as o:
            ours.update(a, b)
        assert str(o.value) == str(t.value)
    if not normalize:  # torchmetrics checks only the lower end without normalize: > 1 is scored
        ours.update((x + 1) * 1.01 - 1, y)


def test_metric_collection_with_torchmetrics_psnr(images):
    tm = require("torchmetrics")
    x, y = images
    coll = tm.MetricCollection({"lpips": FT.LearnedPerceptualImagePatchSimilarity(normalize=True),
                                "psnr": tm.image.PeakSignalNoiseRatio(data_range=1.0)})
    a, b = (x + 1) / 2, (y + 1) / 2
    coll.update(a[:2], b[:2])
    coll.update(a[2:], b[2:])
    out = coll.compute()
    torch.testing.assert_close(out["lpips"], fastlpips.lpips(a, b, normalize=True, reduction="mean"), **FP32_VS_FP32)
    torch.testing.assert_close(out["psnr"], tm.functional.peak_signal_noise_ratio(a, b, data_range=1.0))
    coll.reset()
    assert FT.HAVE_TORCHMETRICS and isinstance(coll["lpips"], tm.Metric)


def test_forward_returns_the_batch_value_with_gradients_and_accumulates(images):
    x, y = images
    m = FT.LearnedPerceptualImagePatchSimilarity()
    xg = x[:2].clone().requires_grad_(True)
    first = m(xg, y[:2])
    first.backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0
    second = m(x[2:], y[2:])
    torch.testing.assert_close(m.compute(), (first.detach() + second.detach()) / 2, **FP32_VS_FP32)
    m.reset()
    m.update(x, y)
    torch.testing.assert_close(m.compute(), fastlpips.lpips(x, y, reduction="mean"), **FP32_VS_FP32)
    m.train()
    assert m.training and not m.net.training  # lpips' dropout never runs in the metric


def _state_numel(m) -> int:
    total = 0
    for name in m._defaults:
        v = getattr(m, name)
        total += sum(t.numel() for t in v) if isinstance(v, list) else v.numel()
    return total


def test_state_memory_is_constant_over_1000_updates_for_mean():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(1000, 3, 32, 32, generator=g) * 2 - 1
    y = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    ours = FT.LearnedPerceptualImagePatchSimilarity()
    none = FT.LearnedPerceptualImagePatchSimilarity(reduction="none")
    sizes = []
    with torch.no_grad():
        for i in range(1000):
            ours.update(x[i:i + 1], y[i:i + 1])
            if i < 10:
                none.update(x[i:i + 1], y[i:i + 1])
            if i in (0, 9, 999):
                sizes.append(_state_numel(ours))
    assert sizes == [2, 2, 2]  # a sum and a count, however many updates
    assert _state_numel(none) == 10  # 'none' keeps the scores it must return
    want = fastlpips.lpips(x, y, reduction="none").double().mean()
    torch.testing.assert_close(ours.compute().double(), want, rtol=1e-6, atol=0)


def test_state_keeps_no_graph(images):
    """Calling the metric as a loss: each batch value has its graph, the state holds none (its
    memory stays constant under autograd; torchmetrics' keeps every batch's graph)."""
    x, y = images
    for reduction in REDUCTIONS:
        m = FT.LearnedPerceptualImagePatchSimilarity(reduction=reduction)
        xs = x.clone().requires_grad_(True)
        values = [m(xs[i:i + 1], y[i:i + 1]) for i in range(4)]
        assert all(v.requires_grad for v in values)
        states = [getattr(m, n) for n in m._defaults]
        flat = [t for v in states for t in (v if isinstance(v, list) else [v])]
        assert flat and not any(t.requires_grad for t in flat), reduction
        want = torch.stack([v.detach().reshape(()) for v in values])
        expect = {"mean": want.mean(), "sum": want.sum(), "none": want}[reduction]
        torch.testing.assert_close(m.compute(), expect, **FP32_VS_FP32)


def test_functional_builds_its_network_once_and_matches_the_class(images, monkeypatch):
    import fastlpips.functional as F

    built = []
    original = F.LPIPS

    def counting(*args, **kwargs):
        built.append(kwargs.get("net"))
        return original(*args, **kwargs)
    monkeypatch.setattr(F, "LPIPS", counting)
    x, y = images
    a = FT.learned_perceptual_image_patch_similarity(x, y, "alex", reduction="none")
    b = FT.learned_perceptual_image_patch_similarity(x[:2], y[:2], "alex", reduction="sum")
    assert len(built) <= 1  # at most the first call builds (fastlpips.get_model's cache)
    F.get_model("alex", device="cpu", dtype=torch.float32)
    assert len(built) <= 1  # ... and it is the network the functional form uses
    torch.testing.assert_close(b, a[:2].sum(), **FP32_VS_FP32)
    m = FT.LearnedPerceptualImagePatchSimilarity(reduction="none")
    torch.testing.assert_close(m(x, y), a, **FP32_VS_FP32)
    with pytest.raises(ValueError, match="Argument `net_type` must be one of"):
        FT.learned_perceptual_image_patch_similarity(x, y, "resnet")
    with pytest.raises(ValueError, match="Expected both input arguments"):
        FT.learned_perceptual_image_patch_similarity(x, y, normalize=True)


def test_functional_equals_torchmetrics_functional(pair, images):
    """Same images, same trunk: torchmetrics' functional builds its network per call (from
    torchvision); ours with eps='torchmetrics' gives its numbers."""
    tmf = require("torchmetrics.functional.image.lpips")
    x, y = images
    ours, theirs = pair("alex", "none", eps="torchmetrics")
    want = tmf._lpips_compute(tmf._lpips_update(x, y, theirs.net, False), "mean")
    got = FT.learned_perceptual_image_patch_similarity(x, y, eps="torchmetrics")
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_fallback_without_torchmetrics_works_in_one_process(monkeypatch, images):
    """With torchmetrics hidden, the class is a plain nn.Module with the same update/compute/forward."""
    monkeypatch.setitem(sys.modules, "torchmetrics", None)
    path = Path(FT.__file__)
    spec = importlib.util.spec_from_file_location("fastlpips._tm_fallback_test", path,
                                                  submodule_search_locations=None)
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = "fastlpips"
    spec.loader.exec_module(mod)
    assert mod.HAVE_TORCHMETRICS is False
    x, y = images
    m = mod.LearnedPerceptualImagePatchSimilarity()
    assert not any(c.__module__.startswith("torchmetrics") for c in type(m).__mro__)
    first = m(x[:2], y[:2])
    m.update(x[2:], y[2:])
    want = fastlpips.lpips(x, y, reduction="none")
    torch.testing.assert_close(first, want[:2].mean(), **FP32_VS_FP32)
    torch.testing.assert_close(m.compute(), want.mean(), **FP32_VS_FP32)
    m.reset()
    assert torch.isnan(m.compute())
    with pytest.raises(ValueError, match="Unexpected keyword arguments: sync_on_compute.*need torchmetrics"):
        mod.LearnedPerceptualImagePatchSimilarity(sync_on_compute=False)


_TORCHRUN = """
import json, sys, torch
sys.path.insert(0, sys.argv[2])
from helpers import distort, estimator_stand_in, real_images, stand_in_images
from fastlpips import distributed as D
from fastlpips.torchmetrics import ELPIPSMetric, LearnedPerceptualImagePatchSimilarity

D.init_from_env(torch.device("cpu"))
r = D.rank()
x = real_images(64, 6)
y = distort(x, 1)
mine = slice(3 * r, 3 * r + 3)  # contiguous halves: rank 0's scores come first, as in one process
out = {}
for reduction in ("mean", "sum", "none"):
    m = LearnedPerceptualImagePatchSimilarity(reduction=reduction)
    m.update(x[mine][:2], y[mine][:2])
    m.update(x[mine][2:], y[mine][2:])
    out[reduction] = m.compute().double().tolist()
em = ELPIPSMetric(metric=estimator_stand_in(pair_from_image=True), seed=3, estimate_kwargs=dict(
    method="stratified", min_samples=16, max_samples=16, batch_size=16, rtol=1e-9, atol=1e-9))
s = stand_in_images()
em.update(*(2 * [s[:2]] if r == 0 else 2 * [s[2:]]))
out["elpips"] = {k: float(v) for k, v in em.compute().items()}
with open(f"{sys.argv[1]}.{r}.json", "w") as f:
    json.dump(out, f)
D.shutdown()
"""


@pytest.mark.subprocess
def test_torchrun_two_processes_compute_the_one_process_value(tmp_path):
    """2 processes (gloo), each updating with its half: compute() on every rank equals one
    process's value over all the images to 1e-7 for 'mean', 'sum' and 'none'; E-LPIPS' interval
    (independent draws per rank) agrees with one process's in expectation."""
    import json

    from helpers import estimator_stand_in, stand_in_images, torchrun

    script = tmp_path / "tm.py"
    script.write_text(_TORCHRUN)
    tests = str(Path(__file__).resolve().parents[1])
    proc = torchrun(script, tmp_path / "out", tests)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"out.{k}.json").read_text()) for k in (0, 1))
    x = real_images(64, 6)
    y = distort(x, 1)
    for reduction in REDUCTIONS:
        one = FT.LearnedPerceptualImagePatchSimilarity(reduction=reduction)
        one.update(x, y)
        want = torch.tensor(one.compute().double().tolist(), dtype=torch.float64)
        for got in (r0, r1):
            torch.testing.assert_close(torch.tensor(got[reduction], dtype=torch.float64), want, rtol=0, atol=1e-7)
    em = FT.ELPIPSMetric(metric=estimator_stand_in(pair_from_image=True), seed=3, estimate_kwargs=dict(
        method="stratified", min_samples=16, max_samples=16, batch_size=16, rtol=1e-9, atol=1e-9))
    em.update(stand_in_images(), stand_in_images())
    one = {k: float(v) for k, v in em.compute().items()}
    two = r0["elpips"]
    assert r1["elpips"] == two and two["count"] == one["count"] == 3
    se = (one["half_width"] ** 2 + two["half_width"] ** 2) ** 0.5 / 1.959964
    assert abs(two["mean"] - one["mean"]) <= 3 * se and two["mean"] != one["mean"]  # other draws, same expectation
    assert two["half_width"] == pytest.approx(one["half_width"], rel=0.5)


@pytest.mark.slow
def test_lightning_logs_the_metric_for_two_epochs(tmp_path):
    """A minimal LightningModule (a 3x3 conv denoiser) logs the metric object with self.log in
    validation for two epochs on CPU; the logged value of the last epoch equals the metric
    computed afresh over the validation data with the trained model."""
    pl = require("pytorch_lightning")
    from torch.utils.data import DataLoader, TensorDataset

    clean = (real_images(32, 8) + 1) / 2
    noisy = (clean + 0.1 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    data = TensorDataset(noisy, clean)

    class Denoiser(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Conv2d(3, 3, 3, padding=1)
            self.val_lpips = FT.LearnedPerceptualImagePatchSimilarity(normalize=True)

        def forward(self, x):
            return (x + self.net(x)).clamp(0, 1)

        def training_step(self, batch, _):
            x, y = batch
            return torch.nn.functional.mse_loss(self(x), y)

        def validation_step(self, batch, _):
            x, y = batch
            self.val_lpips(self(x), y)
            self.log("val_lpips", self.val_lpips, on_epoch=True)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    model = Denoiser()
    logger = pl.loggers.CSVLogger(str(tmp_path))
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=logger, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1)
    trainer.fit(model, DataLoader(data, batch_size=4), DataLoader(data, batch_size=4))
    import csv

    rows = [r for r in csv.DictReader(open(Path(logger.log_dir) / "metrics.csv")) if r.get("val_lpips")]
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    with torch.no_grad():
        want = fastlpips.lpips(model(noisy), clean, normalize=True, reduction="mean")
    assert float(rows[-1]["val_lpips"]) == pytest.approx(float(want), rel=1e-5)
