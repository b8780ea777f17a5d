"""Tiled trunk passes (``fastlpips.nets.tiling``): a large image tile by tile equals the untiled pass
(LPIPS alex/vgg/squeeze: value, spatial map, input gradient; DISTS; E-LPIPS with a fixed draw) in
float64 to 1e-10 and in float32 to 1e-5 on real photos, for image sizes that are not multiples of
the strides and tiles smaller than the trunks' halo; the budget picks tiles whose tensors stay
within it; a budget below one tile is refused naming the minimum."""
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import fastlpips
from fastlpips import cli
from fastlpips.dists import DISTS
from fastlpips.elpips import ELPIPS
from fastlpips.nets import tiling
from fastlpips.nets.trunks import build_trunk
from helpers import distort, real_images

skdata = pytest.importorskip("skimage.data")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _photo_pair(h: int, w: int, dtype=torch.float32):
    """A real photo resized to h x w (scikit-image's coffee; astronaut at 512 x 512) and a blurred,
    noisy copy, in [-1, 1]."""
    im = skdata.astronaut() if (h, w) == (512, 512) else skdata.coffee()
    x = torch.from_numpy(np.ascontiguousarray(im[..., :3])).permute(2, 0, 1)[None].double() / 127.5 - 1
    if tuple(x.shape[2:]) != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False).clamp(-1, 1)
    return x.to(dtype), distort(x, 3).to(dtype)


def _small_pair(h=50, w=43, dtype=torch.float64):
    x = real_images(64, 2).double()[:, :, :h, :w]
    return x.to(dtype), distort(x, 5).to(dtype)


def _value_and_grad(metric, x, y, **kw):
    xx = x.clone().requires_grad_()
    d = metric(xx, y, **kw)
    return d.detach(), torch.autograd.grad(d.sum(), xx)[0]


@pytest.fixture(scope="module")
def lpips_models():
    torch.manual_seed(0)
    return {net: fastlpips.LPIPS(net=net, pnet_rand=(net == "squeeze"), verbose=False) for net in
            ("alex", "vgg", "squeeze")}


def _tiled_and_untiled(model, tile, fn):
    """fn() with the model untiled, then with ``max_tile=tile``."""
    model.max_tile = None
    model.memory_budget = 1 << 50
    try:
        ref = fn()
        model.max_tile = tile
        return fn(), ref
    finally:
        model.max_tile, model.memory_budget = None, None


# -- the tiled stack itself ----------------------------------------------------------------------------
def _stack_of(trunk):
    layers, ends = [], []
    for s in trunk.slices:
        layers += list(s)
        ends.append(len(layers))
    return tiling.LocalStack(layers, ends)


@pytest.mark.parametrize("net", ["alex", "vgg", "squeeze"])
def test_tile_blocks_assemble_to_the_whole_feature_maps(net):
    torch.manual_seed(1)
    trunk = build_trunk(net).double().eval()
    stack = _stack_of(trunk)
    x = torch.randn(1, 3, 45, 38, dtype=torch.float64)
    with torch.no_grad():
        whole = list(trunk(x))
    sizes = stack.sizes(45, 38)
    assert [s for j, s in enumerate(sizes) if j in stack.outputs] == [tuple(f.shape[2:]) for f in whole]
    for tile in [(7, 11), (16, 16)]:  # both smaller than the trunks' halos
        plan = stack.plan(45, 38, tile)
        blocks = [[] for _ in stack.outputs]
        for t in plan:
            got = {}
            with torch.no_grad():
                stack.run(t, lambda r, c: x[:, :, r[0]:r[1], c[0]:c[1]], lambda j, b: got.__setitem__(j, b.clone()),
                          sizes)
            for j in range(len(stack.outputs)):
                blocks[j].append(got.get(j))
        for j, f in enumerate(whole):
            assert _rel(tiling.assemble(plan, j, blocks[j]), f) < 1e-12, (net, tile, j)


def test_unknown_layers_and_bad_outputs_are_refused():
    with pytest.raises(TypeError, match="cannot tile a Linear layer"):
        tiling.LocalStack([torch.nn.Linear(3, 3)], [1])
    with pytest.raises(TypeError, match="dilated"):
        tiling.LocalStack([torch.nn.Conv2d(3, 3, 3, dilation=2)], [1])
    with pytest.raises(ValueError, match="increasing positions"):
        tiling.LocalStack([torch.nn.ReLU()], [1, 0])


# -- LPIPS ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("net", ["alex", "vgg", "squeeze"])
def test_lpips_tiled_equals_untiled_in_float64(net, lpips_models):
    model = lpips_models[net].double()
    try:
        x, y = _small_pair()
        for spatial in (False, True):
            model.spatial = spatial

            # tiles smaller than every trunk's halo (VGG's: 90 px), fewer for VGG (time)
            (dt, gt), (du, gu) = _tiled_and_untiled(model, (24, 30) if net == "vgg" else (13, 21),
                                                    lambda: _value_and_grad(model, x, y))
            assert dt.shape == du.shape
            assert _rel(dt, du) < 1e-10 and _rel(gt, gu) < 1e-10, (net, spatial, _rel(dt, du), _rel(gt, gu))
    finally:
        model.spatial = False
        model.float()


@pytest.mark.slow
@pytest.mark.parametrize("net,size", [("alex", (512, 512)), ("alex", (750, 1000)), ("squeeze", (512, 512)),
                                      ("squeeze", (750, 1000)), ("vgg", (512, 512))])
def test_lpips_tiled_equals_untiled_on_real_photos_in_float32(net, size, lpips_models):
    """(VGG at 750 x 1000 and larger: benchmarks/tiling_memory_study.py --check-equal, for time.)"""
    model = lpips_models[net]
    x, y = _photo_pair(*size)
    tile = (size[0] // 2 + 11, size[1] // 2 + 7)  # 2 x 2 tiles, off the strides (small tiles: float64 above)
    with torch.no_grad():
        for spatial in (False, True):
            model.spatial = spatial
            try:
                (dt, du) = _tiled_and_untiled(model, tile, lambda: model(x, y))
            finally:
                model.spatial = False
            assert _rel(dt, du) < 1e-5, (net, size, spatial, _rel(dt, du))
    if net != "vgg":  # the input gradient (VGG's: in float64 above)
        def run():
            xx = x.clone().requires_grad_()
            return torch.autograd.grad(model(xx, y).sum(), xx)[0]
        gt, gu = _tiled_and_untiled(model, tile, run)
        assert _rel(gt, gu) < 1e-5


def test_distances_to_tiles_each_pair(lpips_models):
    model = lpips_models["alex"]
    x, y = _small_pair(dtype=torch.float32)
    refs, outs, idx = x, torch.cat([y[:1], x[1:].flip(-1), y[1:]]), torch.tensor([0, 1, 1])
    with torch.no_grad():
        dt, du = _tiled_and_untiled(model, (20, 16), lambda: model.distances_to(refs, outs, idx))
        direct = model(refs[idx], outs)
    assert dt.shape == du.shape == direct.shape and _rel(dt, du) < 1e-5 and _rel(du, direct) < 1e-5


def test_lin_weight_gradients_flow_through_tiles(lpips_models):
    model = lpips_models["alex"]
    x, y = _small_pair(dtype=torch.float32)

    def run():
        model.zero_grad()
        model(x, y).sum().backward()
        return model.lin2.weight.grad.clone()

    gt, gu = _tiled_and_untiled(model, (20, 20), run)
    model.zero_grad()
    assert gu.abs().max() > 0 and _rel(gt, gu) < 1e-5


# -- DISTS and E-LPIPS ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def unit_metrics():
    return {"dists": DISTS(), "elpips": ELPIPS(max_scale=2)}


def _fixed(metric, samples: int, n: int) -> dict:
    """E-LPIPS' call options for one fixed draw (transformations and dropout masks); none for DISTS."""
    return {"draw": metric.new_draw(samples, n, seed=11)} if isinstance(metric, ELPIPS) else {}


@pytest.mark.parametrize("name,size,tile", [("dists", (45, 38), (20, 24)), ("elpips", (48, 41), (17, 23))])
def test_dists_and_elpips_tiled_equal_untiled_in_float64(unit_metrics, name, size, tile):
    metric = unit_metrics[name]
    x, y = (t.add(1).div(2) for t in _small_pair(*size))
    extra = _fixed(metric, 3, 2)
    metric.double()
    try:
        (dt, gt), (du, gu) = _tiled_and_untiled(metric, tile, lambda: _value_and_grad(metric, x, y, **extra))
        assert _rel(dt, du) < 1e-10 and _rel(gt, gu) < 1e-10
    finally:
        metric.float()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dists", "elpips"])
def test_dists_and_elpips_tiled_equal_untiled_on_a_real_photo_in_float32(unit_metrics, name):
    metric = unit_metrics[name]
    x, y = (t.add(1).div(2).clamp(0, 1) for t in _photo_pair(512, 512))
    extra = _fixed(metric, 1, 1)
    with torch.no_grad():
        dt, du = _tiled_and_untiled(metric, (300, 260), lambda: metric(x, y, **extra))
    assert _rel(dt, du) < 1e-5


def test_elpips_squeeze_refuses_tiles():
    with pytest.raises(ValueError, match="E-LPIPS-VGG"):
        ELPIPS(net="squeeze", pnet_rand=True, max_tile=64)


# -- budgets -------------------------------------------------------------------------------------------
class _LargestTensor(TorchDispatchMode):
    """The largest tensor any aten op returns while active (bytes)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel() * t.element_size())
        return out


def test_a_budget_tiles_the_pass_and_bounds_its_tensors(lpips_models):
    model = lpips_models["alex"]
    h, w = 400, 360
    x, y = _photo_pair(h, w)
    stack = model.local_stack()
    untiled = stack.estimate(h, w, None, 2, 4, False)
    budget = untiled // 3
    with torch.no_grad():
        model.memory_budget = 1 << 50
        with _LargestTensor() as whole:
            ref = model(x, y)
        model.memory_budget = budget
        try:
            with _LargestTensor() as tiled:
                got = model(x, y)
        finally:
            model.memory_budget = None
    tile = stack.choose_tile(h, w, 2, 4, False, budget)
    assert tile is not None and stack.estimate(h, w, tile, 2, 4, False) <= budget
    assert _rel(got, ref) < 1e-5
    # the largest activation (the input pair excepted) shrinks with the tile
    assert tiled.largest < whole.largest / 2 and tiled.largest <= budget / 2, (tiled.largest, whole.largest, budget)
    assert stack.choose_tile(h, w, 2, 4, False, untiled) is None  # fits: untiled


def test_a_budget_below_one_tile_names_the_minimum(lpips_models):
    stack = lpips_models["vgg"].local_stack()
    with pytest.raises(fastlpips.TileBudgetError, match=r"at least \d+ bytes") as e:
        stack.choose_tile(512, 512, 2, 4, False, 1000, "the vgg trunk")
    assert "memory_budget=1000" in str(e.value) and "the vgg trunk" in str(e.value)
    assert stack.choose_tile(512, 512, 2, 4, False, e.value.minimum) is not None  # the minimum fits
    model = fastlpips.LPIPS(net="alex", verbose=False, memory_budget=1000)
    x, y = _small_pair(dtype=torch.float32)
    with pytest.raises(fastlpips.TileBudgetError, match="the alex trunk needs on 50x43 images"):
        model(x, y)


def test_the_default_budget_is_half_the_available_memory_on_the_cpu(monkeypatch):
    for available, want in [(100 << 30, 50 << 30), (1 << 30, tiling.CPU_BUDGET), (None, tiling.CPU_BUDGET)]:
        monkeypatch.setattr(tiling, "_available_bytes", lambda a=available: a)
        assert tiling.default_budget("cpu") == want
    monkeypatch.undo()
    avail = []  # the real reading, where the system has one (Linux)
    if os.path.exists("/proc/meminfo"):
        with open("/proc/meminfo") as f:
            avail = [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    got = tiling.default_budget("cpu")
    assert got >= tiling.CPU_BUDGET and (not avail or abs(got - max(tiling.CPU_BUDGET, avail[0] // 2)) < 1 << 28)


@pytest.mark.parametrize("bad", [0, -3, (4,), (4, 0), "64", True, 2.5])
def test_bad_tile_and_budget_options_are_refused(bad):
    with pytest.raises((ValueError, TypeError), match="max_tile"):
        fastlpips.LPIPS(net="alex", verbose=False, max_tile=bad)
    if not isinstance(bad, tuple) and bad != "64":
        with pytest.raises((ValueError, TypeError), match="memory_budget"):
            DISTS(pnet_rand=True, memory_budget=bad)


def test_registry_metrics_take_the_budget():
    m = fastlpips.create_metric("lpips-alex", memory_budget=1 << 20, max_tile=96)
    assert m.module.memory_budget == 1 << 20 and m.module.max_tile == (96, 96)
    assert fastlpips.create_metric("dists", memory_budget=1 << 20, pnet_rand=True).module.memory_budget == 1 << 20


def test_pair_command_tiles_under_a_budget(tmp_path, capsys):
    from PIL import Image

    x, y = _photo_pair(200, 168)
    for t, name in ((x, "a.png"), (y, "b.png")):
        arr = ((t[0].permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
        Image.fromarray(arr).save(tmp_path / name)
    a, b = str(tmp_path / "a.png"), str(tmp_path / "b.png")
    values = []
    for extra in ([], ["--memory-budget", "8M"]):
        assert cli.main(["pair", a, b, "--format", "csv"] + extra) == 0
        values.append(float(capsys.readouterr().out.strip().splitlines()[-1].split(",")[-1]))
    assert abs(values[0] - values[1]) < 1e-5 * values[0]
    assert cli.main(["pair", a, b, "--memory-budget", "1K"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fastlpips: error: ") and "at least" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        cli.main(["pair", a, b, "--memory-budget", "lots"])
    assert "expected a size such as 2G" in capsys.readouterr().err
