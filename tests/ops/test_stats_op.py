"""DISTS' per-stage statistics op (fastlpips.ops.stats): every backend against the pure-torch
ground truth (reference.dists_stage, the release's arithmetic), gradcheck and double backward in
fp64, forward-mode AD, broadcasting, the native ops' argument checks, dispatch and the DISTS metric
on each backend."""
import pytest
import torch

from fastlpips import _backend
from fastlpips.ops import table
from fastlpips.ops.stats import dists_stage_term
from fastlpips.reference import dists_stage

CPU_BACKENDS = [b for b in ("torch", "cpp", "triton") if _backend.why_not(b, "cpu") is None]
SHAPES = [(2, 3, 7, 5), (3, 70, 9, 11), (1, 130, 4, 4)]


def _inputs(shape, dtype=torch.float64, seed=0, cl=False):
    g = torch.Generator().manual_seed(seed)
    fx = torch.rand(shape, generator=g, dtype=torch.float64)
    fy = (fx + 0.5 * torch.rand(shape, generator=g, dtype=torch.float64)).relu()
    alpha = torch.rand(shape[1], generator=g, dtype=torch.float64)
    beta = torch.rand(shape[1], generator=g, dtype=torch.float64)
    total = alpha.sum() + beta.sum()
    fx, fy, alpha, beta = (t.to(dtype) for t in (fx, fy, alpha / total, beta / total))
    if cl:
        fx = fx.contiguous(memory_format=torch.channels_last)
    return fx, fy, alpha, beta


def _rel(got, want):
    return float(((got.double() - want.double()).abs().max() / want.double().abs().max().clamp_min(1e-30)))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-6), (torch.bfloat16, 2e-2)])
def test_every_backend_equals_the_ground_truth(backend, shape, dtype, tol):
    fx, fy, alpha, beta = _inputs(shape, dtype, cl=shape[1] > 3)
    want = dists_stage(*(t.double() for t in (fx, fy, alpha, beta)))
    got = dists_stage_term(fx, fy, alpha, beta, backend=backend)
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert got.shape == (shape[0],)
    assert _rel(got, want) <= tol
    # gradients of both feature maps against autograd through the ground truth
    fxr, fyr = fx.double().requires_grad_(True), fy.double().requires_grad_(True)
    g = torch.rand(shape[0], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    gx_want, gy_want = torch.autograd.grad((dists_stage(fxr, fyr, alpha.double(), beta.double()) * g).sum(),
                                           (fxr, fyr))
    fxg, fyg = fx.clone().requires_grad_(True), fy.clone().requires_grad_(True)
    gx, gy = torch.autograd.grad((dists_stage_term(fxg, fyg, alpha, beta, backend=backend) * g.to(got.dtype)).sum(),
                                 (fxg, fyg))
    assert gx.dtype == dtype and gx.shape == fx.shape
    assert _rel(gx, gx_want) <= max(tol, 1e-11) * 10 and _rel(gy, gy_want) <= max(tol, 1e-11) * 10


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradcheck_double_backward_and_forward_mode(backend):
    fx, fy, alpha, beta = _inputs((2, 4, 3, 3))
    args = tuple(t.clone().requires_grad_(True) for t in (fx, fy, alpha, beta))

    def f(x, y, a, b):
        return dists_stage_term(x, y, a, b, backend=backend)

    assert torch.autograd.gradcheck(f, args)
    assert torch.autograd.gradgradcheck(f, args)
    assert torch.autograd.gradcheck(f, args, check_forward_ad=True, check_backward_ad=False,
                                    check_undefined_grad=False)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_a_batch_of_one_broadcasts(backend):
    fx, fy, alpha, beta = _inputs((3, 5, 4, 6))
    x1 = fx[:1].clone().requires_grad_(True)
    got = dists_stage_term(x1, fy, alpha, beta, backend=backend)
    torch.testing.assert_close(got, dists_stage(fx[:1].expand_as(fy), fy, alpha, beta), rtol=1e-12, atol=0)
    got2 = dists_stage_term(fy, x1, alpha, beta, backend=backend)  # either side
    torch.testing.assert_close(got2, dists_stage(fy, fx[:1].expand_as(fy), alpha, beta), rtol=1e-12, atol=0)
    assert torch.autograd.gradcheck(lambda x: dists_stage_term(x, fy, alpha, beta, backend=backend), (x1,))


def test_an_empty_batch_against_a_batch_of_one_is_empty():
    fx, fy, alpha, beta = _inputs((1, 4, 3, 3))
    for backend in CPU_BACKENDS:
        assert dists_stage_term(fx[:0], fy, alpha, beta, backend=backend).shape == (0,)
        assert dists_stage_term(fx, fy[:0], alpha, beta, backend=backend).shape == (0,)


def test_identical_maps_score_the_weight_sum_and_constant_maps_stay_finite():
    fx, _, alpha, beta = _inputs((2, 6, 5, 5))
    for backend in CPU_BACKENDS:
        torch.testing.assert_close(dists_stage_term(fx, fx, alpha, beta, backend=backend),
                                   (alpha.sum() + beta.sum()).expand(2), rtol=1e-12, atol=1e-12)
        flat = torch.zeros(2, 6, 5, 5, dtype=torch.float64, requires_grad=True)  # zero variance: c2 keeps S2 finite
        t = dists_stage_term(flat, flat + 1, alpha, beta, backend=backend)
        (g,) = torch.autograd.grad(t.sum(), flat)
        assert torch.isfinite(t).all() and torch.isfinite(g).all()


def test_bad_arguments_raise_clearly():
    fx, fy, alpha, beta = _inputs((2, 4, 3, 3))
    with pytest.raises(ValueError, match="one shape"):
        dists_stage_term(fx, fy[:, :3], alpha, beta)
    with pytest.raises(ValueError, match="one shape"):
        dists_stage_term(fx[:2], torch.cat([fy, fy, fy])[:3], alpha, beta)
    with pytest.raises(ValueError, match="C = 4"):
        dists_stage_term(fx, fy, alpha[:3], beta)
    with pytest.raises(TypeError, match="floating point of one dtype"):
        dists_stage_term(fx, fy.float(), alpha, beta)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        dists_stage_term(fx[0], fy[0], alpha, beta)


@pytest.mark.skipif(_backend.why_not("cpp", "cpu") is not None, reason="the native extension is not built")
def test_native_ops_check_their_arguments():
    fx, fy, alpha, beta = _inputs((2, 4, 3, 3))
    ops = torch.ops.fastlpips_native
    with pytest.raises(RuntimeError, match="alpha and beta must have C = 4"):
        ops.stats_fwd(fx, fy, alpha[:2], beta, 1e-6, 1e-6)
    with pytest.raises(RuntimeError, match="differ in shape"):
        ops.stats_fwd(fx, fy[:1], alpha, beta, 1e-6, 1e-6)
    t, s = ops.stats_fwd(fx, fy, alpha, beta, 1e-6, 1e-6)
    assert s.shape == (2, 4, 5)
    with pytest.raises(RuntimeError, match="statistics must be"):
        ops.stats_bwd(t, fx, fy, alpha, beta, s[:, :3], 1e-6, 1e-6, [True, True])
    gx, gy = ops.stats_bwd(torch.ones(2, dtype=torch.float64), fx, fy, alpha, beta, s, 1e-6, 1e-6, [True, False])
    assert gx.shape == fx.shape and gy.numel() == 0


def test_dispatch_reads_the_op_table(monkeypatch):
    assert "stats" in table.OPS
    for name, b in table.BACKENDS.items():
        assert ("stats" in b.ops) == (name != "cupy")
    assert table.resolve("cpu", None, "stats") == CPU_BACKENDS[1 if "cpp" in CPU_BACKENDS else 0]
    monkeypatch.setenv("FASTLPIPS_BACKEND", "torch")
    assert table.resolve("cpu", None, "stats") == "torch"


@pytest.mark.slow
def test_dists_metric_on_every_backend_agrees():
    from fastlpips.dists import DISTS
    from helpers import distort, real_images

    x = (real_images(64, 2).double() + 1) / 2
    y = ((distort(real_images(64, 2).double(), 2) + 1) / 2).clamp(0, 1)
    ref = DISTS(backend="torch").double()
    want = ref(x, y)
    for backend in CPU_BACKENDS:
        m = DISTS(backend=backend).double()
        assert _rel(m(x, y), want) <= 1e-12, backend
