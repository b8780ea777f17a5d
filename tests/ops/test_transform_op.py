"""The fused E-LPIPS batched transform op (issue 4): every backend against an independent
per-sample implementation, the adjoint identity per parameter family, gradcheck, dispatch."""
import pytest
import torch
import torch.nn.functional as F

from fastlpips import _backend
from fastlpips.ops.transform import batched_transform
from fastlpips.transforms import MAX_OFFSET, TransformBatch, TransformSet, sample_batched, sample_official

CPU_BACKENDS = [b for b in ("torch", "cpp", "triton") if _backend.why_not(b, "cpu") is None]


def _independent(x: torch.Tensor, t: TransformSet) -> torch.Tensor:
    """Six steps per sample and image with torch pad / reshape-mean / flip / transpose / index ops."""
    out = []
    for k in range(t.samples):
        s = int(t.scales[k])
        oy, ox = (int(v) for v in t.scale_offsets[k])
        for i in range(t.n):
            im = x[i:i + 1]
            h, w = im.shape[2:]
            if s > 1:  # (1) mirror pad to a multiple of s, box downscale
                hp, wp = (2 * (s - 1) + h) // s * s, (2 * (s - 1) + w) // s * s
                im = F.pad(im, (ox, wp - w - ox, oy, hp - h - oy), mode="reflect")
                im = im.reshape(1, 3, hp // s, s, wp // s, s).mean((3, 5))
            dy, dx = (int(v) for v in t.offsets[k, i])  # (2) offset padding
            im = F.pad(im, (MAX_OFFSET - dx, dx, MAX_OFFSET - dy, dy), mode="reflect")
            code = int(t.flips[k, i])  # (3) flips
            if code in (0, 2):
                im = im.flip(3)
            if code in (1, 2):
                im = im.flip(2)
            if bool(t.swap[k]):  # (4) swap
                im = im.transpose(2, 3)
            im = im[:, t.perms[k, i]]  # (5) channel permutation
            out.append(im * t.colors[k, i].to(im.dtype).view(1, 3, 1, 1))  # (6) colour scale
    return torch.cat(out)


def _set(samples, n, seed, scale, swap=None):
    t = sample_batched(samples, n, generator=torch.Generator().manual_seed(seed), scale=scale)
    if swap is not None:
        t.swap[:] = swap
    return t


def _dyadic(n, h, w, seed=0, dtype=torch.float32):
    """Images whose box sums are exact in fp32 (multiples of 1/256): results must match bit for bit."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(256, (n, 3, h, w), generator=g).to(dtype) / 256)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("scale", range(1, 9))
def test_equals_independent_per_sample_exactly(backend, scale):
    x = _dyadic(2, 64, 72, seed=scale)
    t = _set(3, 2, seed=10 + scale, scale=scale)
    for swap in (False, True):  # non-square: one group per swap value
        t.swap[:] = swap
        tb = TransformBatch.from_set(t, torch.arange(t.samples))
        got = batched_transform(x, tb, backend=backend)
        want = _independent(x, t)
        assert got.shape == want.shape
        assert torch.equal(got, want), (got - want).abs().max()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_matches_reference_on_real_values(backend):
    x = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = _set(6, 2, seed=3, scale=3)
    t.swap[:3] = True  # square output: swaps may be mixed in one pass
    tb = TransformBatch.from_set(t, torch.arange(6))
    torch.testing.assert_close(batched_transform(x, tb, backend=backend), _independent(x, t), rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_low_precision_inputs(backend, dtype):
    x = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    tb = TransformBatch.from_set(_set(3, 2, seed=4, scale=2), torch.arange(3))
    got = batched_transform(x.to(dtype), tb, backend=backend)
    assert got.dtype == dtype
    want = batched_transform(x.to(dtype).double(), tb, backend="torch")
    torch.testing.assert_close(got.double(), want, rtol=1e-2, atol=1e-2)


def _family_sets():
    """Parameter sets that exercise one family at a time (the others at identity), then all."""
    def base(scale=1):
        t = _set(3, 2, seed=5, scale=scale)
        t.offsets[:] = MAX_OFFSET
        t.flips[:] = 3
        t.swap[:] = False
        t.perms[:] = torch.arange(3)
        t.colors[:] = 1.0
        t.scale_offsets[:] = 0
        return t

    full = _set(3, 2, seed=6, scale=3)
    full.swap[:] = True  # one output shape for the non-square test images
    sets = {"identity": base()}
    t = base(4); t.scale_offsets[:] = torch.tensor([[0, 3], [2, 1], [3, 3]]); sets["scale"] = t  # noqa: E702
    t = base(); t.offsets = full.offsets.clone(); sets["offsets"] = t  # noqa: E702
    t = base(); t.flips = torch.tensor([[0, 1], [2, 3], [1, 0]]); sets["flips"] = t  # noqa: E702
    t = base(); t.swap[:] = True; sets["swap"] = t  # noqa: E702
    t = base(); t.perms = full.perms.clone(); sets["perms"] = t  # noqa: E702
    t = base(); t.colors = full.colors.clone(); sets["colors"] = t  # noqa: E702
    sets["all"] = full
    return sets


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("family", list(_family_sets()))
def test_adjoint_identity(backend, family):
    """<A x, y> = <x, A^T y> to rounding, A^T being the backward kernel."""
    t = _family_sets()[family]
    tb = TransformBatch.from_set(t, torch.arange(t.samples))
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 3, 33, 35, generator=g, dtype=torch.float64, requires_grad=True)
    ax = batched_transform(x, tb, backend=backend)
    y = torch.randn(ax.shape, generator=g, dtype=torch.float64)
    (aty,) = torch.autograd.grad(ax, x, y)
    lhs, rhs = float((ax.detach() * y).sum()), float((x.detach() * aty).sum())
    assert abs(lhs - rhs) <= 1e-12 * float((ax.detach().abs() * y.abs()).sum())
    if family == "identity":  # offsets 7: no top/left padding, the image is the top-left block
        assert torch.equal(ax[:, :, :33, :35], x.detach().repeat(3, 1, 1, 1))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("scale", [1, 2])
def test_gradcheck(backend, scale):
    """Float64 gradcheck (backward and forward AD) and gradgradcheck on tiny images; fast mode
    (random projections of the Jacobian) keeps the interpreted Triton kernels quick."""
    size = 8 * scale + 1
    t = _set(2, 2, seed=8, scale=scale)
    t.swap[:] = torch.tensor([True, False])
    tb = TransformBatch.from_set(t, torch.arange(2))
    x = torch.rand(2, 3, size, size, dtype=torch.float64, requires_grad=True)
    fn = lambda v: batched_transform(v, tb, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,), check_forward_ad=True, fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, (x,), fast_mode=True)


@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b != "torch"])
def test_backends_agree_with_torch(backend):
    x = torch.rand(4, 3, 48, 56, generator=torch.Generator().manual_seed(2))
    t = sample_batched(16, 4, generator=torch.Generator().manual_seed(9), max_scale=6)
    for idx, tb in t.groups(48, 56):
        want = batched_transform(x, tb, backend="torch")
        torch.testing.assert_close(batched_transform(x, tb, backend=backend), want, rtol=1e-6, atol=1e-6)
        gy = torch.randn(want.shape, generator=torch.Generator().manual_seed(int(idx[0])))
        xr = x.clone().requires_grad_(True)
        (g_ref,) = torch.autograd.grad(batched_transform(xr, tb, backend="torch"), xr, gy)
        (g_b,) = torch.autograd.grad(batched_transform(xr, tb, backend=backend), xr, gy)
        torch.testing.assert_close(g_b, g_ref, rtol=1e-5, atol=1e-5)


def test_groups_cover_every_sample_once():
    t = sample_batched(64, 3, generator=torch.Generator().manual_seed(1))
    for h, w in ((64, 64), (64, 80)):
        groups = t.groups(h, w)
        seen = torch.cat([idx for idx, _ in groups]).sort().values
        assert torch.equal(seen, torch.arange(64))
        for idx, tb in groups:
            assert tb.samples == len(idx) and bool((t.scales[idx] == tb.scale).all())
            tb.out_size(h, w)  # one shape per group
    assert len(t.groups(64, 80)) > len(t.groups(64, 64))  # swap splits the non-square groups


def test_official_draws_stack_into_a_batch():
    g = torch.Generator().manual_seed(3)
    ps = [sample_official(2, generator=g, scale=2) for _ in range(3)]
    tb = TransformBatch.from_params(ps)
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    from fastlpips.transforms import apply_transform

    want = torch.cat([apply_transform(x, p) for p in ps])
    torch.testing.assert_close(batched_transform(x, tb), want, rtol=1e-14, atol=1e-14)


def test_bad_input_is_named():
    t = TransformBatch.from_set(_set(2, 2, seed=1, scale=4), torch.arange(2))
    with pytest.raises(ValueError, match="too small for scale level 4"):
        batched_transform(torch.rand(2, 3, 31, 40), t)
    with pytest.raises(ValueError, match="batches of 2 images"):
        batched_transform(torch.rand(3, 3, 40, 40), t)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        batched_transform(torch.rand(2, 1, 40, 40), t)
    with pytest.raises(TypeError, match="floating point"):
        batched_transform(torch.zeros(2, 3, 40, 40, dtype=torch.uint8), t)
    mixed = _set(2, 2, seed=1, scale=1)
    mixed.swap[:] = torch.tensor([True, False])
    with pytest.raises(ValueError, match="different shapes"):
        batched_transform(torch.rand(2, 3, 40, 48), TransformBatch.from_set(mixed, torch.arange(2)))
    with pytest.raises(ValueError, match="single scale level"):
        TransformBatch.from_set(sample_batched(40, 1, generator=torch.Generator().manual_seed(0)), torch.arange(40))


@pytest.mark.skipif("cpp" not in CPU_BACKENDS, reason="native extension not built")
def test_native_op_checks_its_arguments():
    x = torch.rand(2, 3, 16, 16)
    ops = torch.ops.fastlpips_native
    with pytest.raises(RuntimeError, match="int32"):
        ops.transform_fwd(x, torch.zeros(2, 9, dtype=torch.long), torch.ones(2, 3), 1, 23, 23)
    with pytest.raises(RuntimeError, match="not a multiple"):
        ops.transform_fwd(x, torch.zeros(3, 9, dtype=torch.int32), torch.ones(3, 3), 1, 23, 23)


@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b != "torch"])
def test_opcheck(backend):
    from fastlpips.ops import table

    fwd, bwd = table.kernels("transform", backend)
    tb = TransformBatch.from_set(_set(2, 2, seed=2, scale=2), torch.arange(2))
    x = torch.rand(2, 3, 20, 20)
    torch.library.opcheck(fwd, (x, tb.params, tb.colors, 2, 17, 17))
    torch.library.opcheck(bwd, (torch.rand(4, 3, 17, 17), tb.params, tb.colors, 2, 2, 20, 20))
