"""Every CPU-executable backend of the fused head computes exactly the reference op.

Backends here: torch (analytic autograd Function), cpp (the C++ kernels, whose per-element math
is the header the CUDA kernels include) and triton (the Triton kernels, run by Triton's
interpreter on CPU). Compared with ``reference.lpips_head`` (plain autograd) for the forward
value, both input gradients, the weight gradient and the jvp, on awkward shapes and both layouts.
"""
import warnings

import pytest
import torch

import fastlpips
from fastlpips import _backend
from fastlpips.ops.head import lpips_head_map
from fastlpips.reference import lpips_head
from helpers import tolerance

warnings.filterwarnings("ignore", category=RuntimeWarning)  # interpreter: masked lanes compute too


def _available(name):
    return _backend.backends("cpu")[name] == "available"


BACKENDS = [pytest.param(b, marks=pytest.mark.skipif(not _available(b), reason=_backend.backends("cpu")[b]))
            for b in ("torch", "cpp", "triton")]

# label -> (N0, N1, C, H, W): batch 1, broadcast, odd/prime sizes, real LPIPS layer shapes
SHAPES = {
    "batch1-prime": (1, 1, 7, 5, 3),
    "broadcast-1-vs-3": (3, 1, 13, 4, 6),
    "C1": (2, 2, 1, 3, 3),
    "alex-relu1-64px": (2, 2, 64, 15, 15),
    "alex-relu2-64px": (2, 2, 192, 7, 7),
    "vgg-relu5-64px": (2, 2, 512, 4, 4),
    "vgg-relu1-odd": (1, 1, 64, 17, 13),
    "squeeze-relu4": (2, 2, 384, 3, 3),
    "odd-C-37": (2, 2, 37, 5, 7),
}


def _feats(n, c, h, w, seed, dtype=torch.float64, cl=False):
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(n, c, h, w, generator=g, dtype=dtype).relu()
    return f.contiguous(memory_format=torch.channels_last) if cl else f


def _tol(dtype):
    rtol, atol = tolerance(dtype)  # the one dtype -> tolerance table (tests/helpers.py)
    return dict(rtol=rtol, atol=atol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
@pytest.mark.parametrize("weighted", [True, False], ids=["w", "unit"])
def test_backend_matches_reference(backend, dtype, layout, shape, weighted):
    n0, n1, c, h, w = SHAPES[shape]
    cl = layout == "channels_last"
    f0, f1 = _feats(n0, c, h, w, 1, dtype, cl), _feats(n1, c, h, w, 2, dtype, cl)
    if n0 > 1:
        f0[0, :, 0, 0] = 0  # a zero feature vector: finite gradients, pinned against the reference
    wt = torch.rand(c, dtype=dtype, generator=torch.Generator().manual_seed(3)) if weighted else None
    args = [f0.requires_grad_(), f1.requires_grad_()] + ([wt.requires_grad_()] if weighted else [])
    out = lpips_head_map(*args[:2], args[2] if weighted else None, backend=backend)
    ref = lpips_head(*args[:2], args[2] if weighted else None, spatial=True)
    tol = _tol(dtype)
    assert out.dtype == ref.dtype and out.shape == ref.shape == (n0, 1, h, w)
    torch.testing.assert_close(out, ref, **tol)
    g = torch.rand(ref.shape, generator=torch.Generator().manual_seed(12), dtype=ref.dtype)
    got = torch.autograd.grad(out, args, g)
    want = torch.autograd.grad(ref, args, g)
    for name, a, b in zip(("f0", "f1", "w"), got, want):
        assert torch.isfinite(a).all(), name
        scale = b.abs().max().clamp_min(1)  # entries ~1e10 at the zero vector
        torch.testing.assert_close(a / scale, b / scale, **tol, msg=f"grad {name}")
    gen = torch.Generator().manual_seed(11)
    tangents = [torch.randn(a.shape, generator=gen, dtype=a.dtype) for a in args]
    _, t_out = torch.func.jvp(lambda *a: lpips_head_map(a[0], a[1], a[2] if weighted else None, backend=backend),
                              tuple(a.detach() for a in args), tuple(tangents))
    _, t_ref = torch.func.jvp(lambda *a: lpips_head(a[0], a[1], a[2] if weighted else None, spatial=True),
                              tuple(a.detach().contiguous() for a in args), tuple(t.contiguous() for t in tangents))
    scale = t_ref.abs().max().clamp_min(1)
    torch.testing.assert_close(t_out / scale, t_ref / scale, **tol, msg="jvp")


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_float64(backend):
    f0 = (_feats(2, 5, 3, 4, 4) + 0.05).requires_grad_()
    f1 = (_feats(1, 5, 3, 4, 5, cl=True) + 0.05).requires_grad_()
    w = torch.rand(5, dtype=torch.float64, requires_grad=True)
    fn = lambda a, b, c: lpips_head_map(a, b, c, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (f0, f1, w), check_forward_ad=True, fast_mode=backend == "triton")
    assert torch.autograd.gradgradcheck(fn, (f0, f1, w), fast_mode=backend == "triton")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_low_precision_error_at_most_twice_torch(backend, dtype):
    """|backend(x_lowp) - ref_fp64| <= 2 |torch_lowp - ref_fp64| + atol, with fp32 accumulation."""
    f0, f1 = _feats(2, 64, 9, 11, 6), _feats(2, 64, 9, 11, 7)
    w = torch.rand(64, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    exact = lpips_head(f0, f1, w, spatial=True)
    lp = [t.to(dtype) for t in (f0, f1, w)]
    torch_lowp = lpips_head(*lp[:2], lp[2], spatial=True, eps=1e-10).double()  # PyTorch's own low-precision op
    ours = lpips_head_map(*lp[:2], lp[2], backend=backend)
    assert ours.dtype == torch.float32 and torch.isfinite(ours).all()
    err_ours = (ours.double() - exact).abs().max()
    err_torch = (torch_lowp - exact).abs().max()
    assert err_ours <= 2 * err_torch + 1e-6, (err_ours.item(), err_torch.item())


def test_fp16_eps_never_produces_nan():
    f = torch.zeros(1, 8, 2, 2, dtype=torch.float16)
    g = torch.ones(1, 8, 2, 2, dtype=torch.float16)
    for b in [b for b in ("torch", "cpp") if _available(b)]:  # cpp needs the extension
        m = lpips_head_map(f, g, backend=b)
        assert torch.isfinite(m).all() and torch.allclose(m, torch.ones_like(m), atol=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_input_propagates(backend):
    """NaN features give NaN at their pixel only (no error here: LPIPS validates images, not features)."""
    f0, f1 = _feats(1, 6, 3, 3, 9), _feats(1, 6, 3, 3, 10)
    f0[0, 2, 1, 1] = float("nan")
    m = lpips_head_map(f0, f1, backend=backend)
    assert torch.isnan(m[0, 0, 1, 1]) and torch.isfinite(m).sum() == 8


def test_opcheck_native_ops():
    if not _available("cpp"):
        pytest.skip(_backend.backends("cpu")["cpp"])
    ops = torch.ops.fastlpips_native
    x0 = torch.rand(2, 6, 3, 5).contiguous(memory_format=torch.channels_last)
    x1, w = torch.rand(2, 6, 3, 5), torch.rand(6)
    # the ops are kernels (no autograd of their own: fastlpips.ops.head.HeadMap is the one
    # autograd definition, gradchecked per backend above); opcheck checks schema, fake and dispatch
    for args in [(x0, x1, w, 1e-10), (x0, x1, None, 1e-10)]:
        torch.library.opcheck(ops.head_fwd.default, args)
    m, r0, r1 = ops.head_fwd(x0, x1, w, 1e-10)
    torch.library.opcheck(ops.head_bwd.default, (torch.rand_like(m), x0, x1, w, r0, r1, 1e-10, [True, True, True]))
    torch.library.opcheck(ops.head_jvp.default, (x0, x1, w, r0, r1, torch.rand_like(x1), None, torch.rand(6), 1e-10))


def test_native_kernel_argument_errors():
    if not _available("cpp"):
        pytest.skip(_backend.backends("cpu")["cpp"])
    ops = torch.ops.fastlpips_native
    with pytest.raises(RuntimeError, match="differ in shape"):
        ops.head_fwd(torch.rand(1, 3, 4, 4), torch.rand(1, 4, 4, 4), None, 1e-10)
    with pytest.raises(RuntimeError, match="must be \\(N, C, H, W\\)"):
        ops.head_fwd(torch.rand(3, 4, 4), torch.rand(3, 4, 4), None, 1e-10)
    with pytest.raises(RuntimeError, match="weights must have C = 3"):
        ops.head_fwd(torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 4), torch.rand(4), 1e-10)


def test_deprecated_native_namespace_alias():
    """torch.ops.fastlpips_cpp (the former name of fastlpips_native) still works, with equal results."""
    if not _available("cpp"):
        pytest.skip(_backend.backends("cpu")["cpp"])
    f0, f1, w = torch.rand(2, 6, 3, 5), torch.rand(2, 6, 3, 5), torch.rand(6)
    got = torch.ops.fastlpips_cpp.head_fwd(f0, f1, w, 1e-10)
    want = torch.ops.fastlpips_native.head_fwd(f0, f1, w, 1e-10)
    assert len(got) == 3 and all(torch.equal(a, b) for a, b in zip(got, want))


# -- dispatch ------------------------------------------------------------------------------------
def test_dispatch_auto_named_env(monkeypatch):
    report = fastlpips.backends("cpu")
    assert set(report) == {"torch", "cpp", "triton", "cuda", "cupy"} and report["torch"] == "available"
    assert "CUDA tensors only" in report["cuda"] and "CUDA tensors only" in report["cupy"]
    monkeypatch.delenv("FASTLPIPS_BACKEND", raising=False)
    assert _backend.resolve(torch.device("cpu")) == ("cpp" if _available("cpp") else "torch")
    assert _backend.resolve(torch.device("cpu"), "torch") == "torch"
    with pytest.raises(fastlpips.BackendUnavailable, match="backend 'cuda' \\(backend=\\) cannot run on cpu"):
        _backend.resolve(torch.device("cpu"), "cuda")
    monkeypatch.setenv("FASTLPIPS_BACKEND", "cupy")
    with pytest.raises(fastlpips.BackendUnavailable, match="FASTLPIPS_BACKEND"):
        _backend.resolve(torch.device("cpu"))
    monkeypatch.setenv("FASTLPIPS_BACKEND", "torch")
    assert _backend.resolve(torch.device("cpu")) == "torch"
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        _backend.resolve(torch.device("cpu"), "fast")


def test_auto_falls_back_without_native_extension(monkeypatch):
    from fastlpips.ops import table

    monkeypatch.setattr(table, "native_reason", lambda: "not built (test)")
    monkeypatch.delenv("FASTLPIPS_BACKEND", raising=False)
    assert _backend.resolve(torch.device("cpu")) == "torch"
    with pytest.raises(fastlpips.BackendUnavailable, match="not built \\(test\\)"):
        _backend.resolve(torch.device("cpu"), "cpp")


@pytest.mark.subprocess
@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter is chosen only without a CUDA device")
def test_triton_interpreter_chosen_at_first_use():
    """Importing fastlpips never touches TRITON_INTERPRET; the first use of a Triton kernel picks the
    interpreter without leaving the variable set, and a user's own TRITON_INTERPRET is respected."""
    import os
    import subprocess
    import sys

    pytest.importorskip("triton")
    code = ("import os, sys, fastlpips, torch; assert 'triton' not in sys.modules; "
            "from fastlpips.kernels import head; "
            "print(head.interpreted(), os.environ.get('TRITON_INTERPRET'), fastlpips.backends('cpu')['triton'])")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[:3] == ["True", "None", "available"], out.stdout
    out = subprocess.run([sys.executable, "-c", code], env=dict(env, TRITON_INTERPRET="0"), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("False 0 triton runs CPU tensors only through its interpreter"), out.stdout
