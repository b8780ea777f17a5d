"""The per-layer head: reference (pure autograd) vs the analytic-derivative Function."""
import pytest
import torch

from fastlpips.ops.head import lpips_head_map
from fastlpips.reference import lpips_head, normalize_channels
from helpers import assert_close

# lpips_head_map vs the reference formula in float64: the same operations, so the values agree to
# a few ulps, far inside the table's float64 entry
HEAD_VALUES64 = dict(rtol=1e-14, atol=1e-15)
# the per-pair mean of the float32 map vs the reference's float32 head: 1e-6 relative (the
# torch.allclose default atol 1e-8 written out), tighter than the table's float32 entry
HEAD_MEAN32 = dict(rtol=1e-6, atol=1e-8)


def _feats(n, c, h, w, seed, channels_last=False, zero_at=()):
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(n, c, h, w, generator=g, dtype=torch.float64).relu() + 0.05
    for idx in zero_at:
        f[idx[0], :, idx[1], idx[2]] = 0
    if channels_last:
        f = f.contiguous(memory_format=torch.channels_last)
    return f.requires_grad_()


@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_gradcheck_forward_and_reverse(weighted, channels_last):
    f0, f1 = _feats(2, 5, 3, 4, 0, channels_last), _feats(2, 5, 3, 4, 1, channels_last)
    args = (f0, f1)
    if weighted:
        args += (torch.rand(5, dtype=torch.float64).requires_grad_(),)
    assert torch.autograd.gradcheck(lambda *a: lpips_head_map(*a), args, check_forward_ad=True)
    assert torch.autograd.gradgradcheck(lambda *a: lpips_head_map(*a), args)


def test_gradcheck_broadcast_batch():
    f0, f1 = _feats(3, 4, 5, 3, 2), _feats(1, 4, 5, 3, 3)
    w = torch.rand(1, 4, 1, 1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: lpips_head_map(a, b, c), (f0, f1, w), check_forward_ad=True)


def test_matches_reference_values_and_gradients_including_zero_vectors():
    """At f = 0 finite differences cannot see the I/eps slope (step >> eps): compare with the
    reference's autograd instead, which takes the same exact one-sided derivative."""
    f0 = _feats(2, 6, 4, 5, 4, zero_at=[(0, 1, 1), (1, 3, 4)])
    f1 = _feats(2, 6, 4, 5, 5, zero_at=[(1, 0, 0), (1, 3, 4)])
    gen = torch.Generator().manual_seed(6)  # seeded: the test does not depend on the tests run before it
    w = torch.rand(6, dtype=torch.float64, generator=gen).requires_grad_()
    a = lpips_head_map(f0, f1, w)
    b = lpips_head(f0, f1, w, spatial=True)
    assert_close(a, b, **HEAD_VALUES64, what="head map vs reference")
    g = torch.randn(a.shape, dtype=a.dtype, generator=gen)
    ga = torch.autograd.grad(a, (f0, f1, w), g)
    gb = torch.autograd.grad(b, (f0, f1, w), g)
    for x, y in zip(ga, gb):
        assert torch.isfinite(x).all()
        assert_close(x, y, what="head gradient vs reference autograd")  # entries near 1e10 at the zero vectors
    assert ga[0][0, :, 1, 1].abs().max() > 1e6  # the I/eps slope is really there (elsewhere gradients are O(1))


def test_mean_matches_reference_unweighted_fp32():
    f0 = _feats(3, 64, 7, 9, 6).float()
    f1 = _feats(3, 64, 7, 9, 7).float()
    assert_close(lpips_head_map(f0, f1).mean((1, 2, 3)), lpips_head(f0, f1), **HEAD_MEAN32, what="fp32 head mean")


def test_normalize_channels_value():
    f = torch.tensor([[[[3.0]], [[4.0]]]], dtype=torch.float64)
    assert_close(normalize_channels(f).flatten(), torch.tensor([0.6, 0.8], dtype=torch.float64) / (1 + 2e-11),
                 what="normalize_channels")
