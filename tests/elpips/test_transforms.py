"""E-LPIPS transformations: sampling statistics and the reference application (issue 4, part)."""
import numpy as np
import pytest
import torch

from fastlpips.transforms import (
    FAMILIES,
    IMAGE_DIMS,
    MAX_OFFSET,
    PERMUTATIONS,
    SAMPLE_DIMS,
    TRANSFORM_FAMILIES,
    SobolTransformSampler,
    TransformParams,
    TransformSet,
    apply_transform,
    check_families,
    sample_batched,
    sample_official,
    transforms_from_uniform,
)
from helpers import assert_close

# apply_transform vs the numpy implementation on float64 images in [0, 1): the gathers are exact and
# only the box means may round differently, by at most 1e-15 absolute (tighter than the table)
BOX_MEANS64 = dict(rtol=0, atol=1e-15)
# each scale level's frequency over 4000 draws vs its probability: sd <= 0.008, so 0.02 is 2.5 sd
FREQ_ATOL = 0.02


def _numpy_transform(x: np.ndarray, p: TransformParams) -> np.ndarray:
    """Independent per-image implementation with numpy (reflect = mirror without the edge)."""
    out = []
    s = p.scale
    for i in range(p.n):
        im = x[i]  # (3, H, W)
        if s > 1:
            oy, ox = p.scale_offset
            h, w = im.shape[1:]
            hp = ((s - 1) + h + (s - 1)) // s * s
            wp = ((s - 1) + w + (s - 1)) // s * s
            im = np.pad(im, ((0, 0), (oy, hp - h - oy), (ox, wp - w - ox)), mode="reflect")
            c, H, W = im.shape
            im = im.reshape(c, H // s, s, W // s, s).mean(axis=(2, 4))
        dy, dx = (int(v) for v in p.offsets[i])
        im = np.pad(im, ((0, 0), (MAX_OFFSET - dy, dy), (MAX_OFFSET - dx, dx)), mode="reflect")
        code = int(p.flips[i])
        if code in (0, 2):
            im = im[:, :, ::-1]
        if code in (1, 2):
            im = im[:, ::-1, :]
        if p.swap:
            im = im.transpose(0, 2, 1)
        im = im[p.perms[i].numpy()]
        out.append(im * p.colors[i].double().numpy()[:, None, None])
    return np.stack(out)


def _params(n, seed, scale=None, swap=None):
    p = sample_official(n, generator=torch.Generator().manual_seed(seed))
    if scale is not None:
        p.scale = scale
        p.scale_offset = (scale - 1, scale // 2)
    if swap is not None:
        p.swap = swap
    return p


@pytest.mark.parametrize("scale", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("swap", [False, True])
def test_reference_equals_independent_implementation(scale, swap):
    x = torch.rand(9, 3, 67, 71, dtype=torch.float64, generator=torch.Generator().manual_seed(scale))
    p = _params(9, 10 + scale, scale, swap)
    got = apply_transform(x, p).numpy()
    want = _numpy_transform(x.numpy(), p)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, **BOX_MEANS64)


def test_same_seed_same_transform_and_adjoint_identity():
    a = _params(6, 3)
    b = _params(6, 3)
    for f in ("offsets", "flips", "perms", "colors"):
        assert torch.equal(getattr(a, f), getattr(b, f))
    assert (a.scale, a.scale_offset, a.swap) == (b.scale, b.scale_offset, b.swap)
    # linear in x: <A x, y> = <x, A^T y> with A^T from autograd
    p = _params(4, 5, scale=3)
    x = torch.rand(4, 3, 40, 33, dtype=torch.float64, requires_grad=True)
    ax = apply_transform(x, p)
    y = torch.rand_like(ax)
    (aty,) = torch.autograd.grad(ax, x, y)
    assert_close((ax * y).sum(), (x * aty).sum(), what="<A x, y> vs <x, A^T y>")


@pytest.mark.parametrize("mode", ["official", "batched"])
def test_sampling_distributions(mode):
    """Both sampling modes draw every sample from the release's distribution."""
    g = torch.Generator().manual_seed(0)
    if mode == "official":
        draws = [sample_official(10, generator=g) for _ in range(4000)]
    else:
        t = sample_batched(4000, 10, generator=g)
        draws = [t.sample(k) for k in range(4000)]
    scales = torch.tensor([d.scale for d in draws])
    expected = (1 / torch.arange(1, 9, dtype=torch.float64) ** 2)
    expected = expected / expected.sum()
    freq = torch.bincount(scales - 1, minlength=8).double() / len(draws)
    assert torch.allclose(freq, expected, atol=FREQ_ATOL), freq
    for d in draws[:200]:
        assert 0 <= min(d.scale_offset) and max(d.scale_offset) < d.scale
        counts = torch.bincount(d.flips, minlength=4)
        assert counts.max() - counts.min() <= 1  # stratified flips
        perm_idx = [PERMUTATIONS.tolist().index(r) for r in d.perms.tolist()]
        pc = torch.bincount(torch.tensor(perm_idx), minlength=6)
        assert pc.max() - pc.min() <= 1  # stratified permutations
        assert d.colors.min() >= 0.2 and d.colors.max() < 1.0
        u = ((d.colors - 0.2) / 0.8).sort(0).values  # stratified colour factors: one per stratum
        strata = torch.floor(u * 10 + 1e-6).long()
        assert torch.equal(strata, torch.arange(10)[:, None].expand(10, 3))
        assert d.offsets.min() >= 0 and d.offsets.max() <= 7
    assert 0.45 < np.mean([d.swap for d in draws]) < 0.55
    offsets = torch.stack([d.offsets for d in draws]).flatten()
    assert (torch.bincount(offsets, minlength=8).double() / len(offsets) - 1 / 8).abs().max() < 0.01
    level2 = [d.scale_offset for d in draws if d.scale == 2]
    assert 0.4 < np.mean([o[0] for o in level2]) < 0.6  # uniform in {0, 1}


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least one image"):
        sample_official(0)
    with pytest.raises(ValueError, match="max_scale must be in 1..8"):
        sample_official(2, max_scale=9)
    p = _params(2, 0, scale=4)
    with pytest.raises(ValueError, match="too small for scale level 4: .* sides >= 32"):
        apply_transform(torch.rand(2, 3, 31, 64), p)
    with pytest.raises(ValueError, match="drawn for 2 images"):
        apply_transform(torch.rand(3, 3, 64, 64), p)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        apply_transform(torch.rand(2, 1, 64, 64), p)
    # max_scale restricts the levels
    g = torch.Generator().manual_seed(1)
    assert max(sample_official(4, generator=g, max_scale=2).scale for _ in range(200)) == 2


def test_conditioned_scale_level():
    g = torch.Generator().manual_seed(2)
    for s in range(1, 9):
        p = sample_official(3, generator=g, scale=s)
        assert p.scale == s and max(p.scale_offset) < s
    with pytest.raises(ValueError, match="scale must be in 1..4"):
        sample_official(3, max_scale=4, scale=5)
    t = sample_batched(50, 3, generator=g, scale=3)
    assert bool((t.scales == 3).all()) and int(t.scale_offsets.max()) <= 2
    with pytest.raises(ValueError, match="scale must be in 1..4"):
        sample_batched(2, 3, max_scale=4, scale=5)
    with pytest.raises(ValueError, match="samples >= 1"):
        sample_batched(0, 3)


# -- per-family ablation switches (issue 12) -------------------------------------------------------
_FIELDS = {"scale": ("scales", "scale_offsets"), "translation": ("offsets",), "flip": ("flips",), "swap": ("swap",),
           "permutation": ("perms",), "color": ("colors",)}


@pytest.mark.parametrize("off", TRANSFORM_FAMILIES)
def test_a_family_switched_off_takes_its_identity_and_leaves_the_others_drawn(off):
    full = sample_batched(64, 5, generator=torch.Generator().manual_seed(3))
    part = sample_batched(64, 5, generator=torch.Generator().manual_seed(3), families=set(FAMILIES) - {off})
    for fam, fields in _FIELDS.items():
        for f in fields:
            a, b = getattr(full, f), getattr(part, f)
            if fam != off:
                assert torch.equal(a, b), (off, f)  # the same stream: enabled families as always
            else:
                assert not torch.equal(a, b), (off, f)
    identity = {"scale": lambda t: bool((t.scales == 1).all() and (t.scale_offsets == 0).all()),
                "translation": lambda t: bool((t.offsets == 0).all()),
                "flip": lambda t: bool((t.flips == 3).all()),
                "swap": lambda t: not bool(t.swap.any()),
                "permutation": lambda t: bool((t.perms == torch.tensor([0, 1, 2])).all()),
                "color": lambda t: bool((t.colors == 1).all())}
    assert identity[off](part) and not identity[off](full)
    # the official sampler: the same identity values
    p = sample_official(6, generator=torch.Generator().manual_seed(1), families=[f for f in FAMILIES if f != off])
    one = TransformSet(torch.tensor([p.scale]), torch.tensor([p.scale_offset]), p.offsets[None], p.flips[None],
                       torch.tensor([p.swap]), p.perms[None], p.colors[None])
    assert identity[off](one)


def test_no_transform_family_is_the_identity_up_to_the_fixed_pad():
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    t = sample_batched(4, 2, generator=torch.Generator().manual_seed(0), families=["dropout"])
    for k in range(4):
        y = apply_transform(x, t.sample(k))
        assert y.shape == (2, 3, 16 + MAX_OFFSET, 16 + MAX_OFFSET)
        assert torch.equal(y[..., MAX_OFFSET:, MAX_OFFSET:], x)  # dy = dx = 0: 7 px reflected at top/left


def test_check_families():
    assert check_families(None) == frozenset(FAMILIES)
    assert check_families("flip,swap") == {"flip", "swap"}
    assert check_families([]) == frozenset()
    with pytest.raises(ValueError, match=r"unknown E-LPIPS transform families \['colour'\]"):
        check_families(["colour", "flip"])
    with pytest.raises(ValueError, match="unknown"):
        sample_batched(2, 2, families=["rotate"])


# -- quasi-Monte Carlo sampling (issue 16, part 1) ----------------------------------------------------
def _marginals(t: TransformSet):
    """Frequencies of every discrete choice and the colour moments over all (sample, image) pairs."""
    perm_idx = (t.perms[..., 0] * 3 + t.perms[..., 1]).flatten()
    return {"dy": torch.bincount(t.offsets[..., 0].flatten(), minlength=8).double() / t.offsets[..., 0].numel(),
            "dx": torch.bincount(t.offsets[..., 1].flatten(), minlength=8).double() / t.offsets[..., 1].numel(),
            "flip": torch.bincount(t.flips.flatten(), minlength=4).double() / t.flips.numel(),
            "perm": torch.bincount(perm_idx, minlength=9)[[1, 2, 3, 5, 6, 7]].double() / perm_idx.numel(),
            "swap": t.swap.double().mean().view(1),
            "oy": torch.bincount(t.scale_offsets[:, 0], minlength=3).double() / t.samples,
            "color_mean": t.colors.double().mean().view(1), "color_var": t.colors.double().var().view(1)}


def test_transforms_from_uniform_has_the_distribution_of_sample_batched():
    """Independent uniforms through ``transforms_from_uniform`` and ``sample_batched`` at level 3:
    every marginal agrees with the other and with its exact value (4000 samples x 8 images; the
    tolerances are ~4 standard deviations)."""
    g = torch.Generator().manual_seed(0)
    s, n = 4000, 8
    ours = transforms_from_uniform(torch.full((s,), 3), torch.rand(s, SAMPLE_DIMS, generator=g, dtype=torch.float64),
                                   torch.rand(s, n, IMAGE_DIMS, generator=g, dtype=torch.float64))
    theirs = sample_batched(s, n, generator=g, scale=3)
    exact = {"dy": torch.full((8,), 1 / 8), "dx": torch.full((8,), 1 / 8), "flip": torch.full((4,), 1 / 4),
             "perm": torch.full((6,), 1 / 6), "swap": torch.tensor([0.5]), "oy": torch.full((3,), 1 / 3),
             "color_mean": torch.tensor([0.6]), "color_var": torch.tensor([0.8**2 / 12])}
    tol = {"swap": 0.032, "oy": 0.03, "color_mean": 0.004, "color_var": 0.002}
    mo, mt = _marginals(ours), _marginals(theirs)
    for k, v in exact.items():
        atol = tol.get(k, 0.01)
        assert torch.allclose(mo[k], v.double(), atol=atol), (k, mo[k])
        assert torch.allclose(mt[k], v.double(), atol=atol), (k, mt[k])
    # the mapping itself at the ends of [0, 1)
    edge = transforms_from_uniform(torch.tensor([4, 4]), torch.tensor([[0.0, 0.0, 0.0], [1 - 1e-12] * 3],
                                                                      dtype=torch.float64),
                                   torch.tensor([[[0.0] * 7], [[1 - 1e-12] * 7]], dtype=torch.float64))
    assert edge.scale_offsets.tolist() == [[0, 0], [3, 3]] and edge.swap.tolist() == [True, False]
    assert edge.offsets[:, 0].tolist() == [[0, 0], [7, 7]] and edge.flips.flatten().tolist() == [0, 3]
    assert edge.perms[0, 0].tolist() == PERMUTATIONS[0].tolist() and edge.perms[1,
                                                                                0].tolist() == PERMUTATIONS[5].tolist()
    assert torch.allclose(edge.colors[:, 0], torch.tensor([[0.2] * 3, [1.0] * 3]))
    for bad in (torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[-0.1, 0.0, 0.0]])):
        with pytest.raises(ValueError, match="u_sample must lie in"):
            transforms_from_uniform(torch.tensor([1]), bad, torch.zeros(1, 1, IMAGE_DIMS, dtype=torch.float64))
    with pytest.raises(ValueError, match="expected u_sample"):
        transforms_from_uniform(torch.tensor([1]), torch.zeros(1, 2), torch.zeros(1, 1, IMAGE_DIMS))


def test_sobol_sampler_balances_each_image_across_draws_and_keeps_the_marginals():
    """Per image, 64 points of one stream hold every flip exactly 16 times, every permutation 64/6
    times up to one, and exactly one colour factor per 1/64 of [0.2, 1) (a digital shift keeps the
    dyadic strata); i.i.d. draws are far less even. Over 200 independent streams the
    marginals are the exact ones (each draw is distributed as sample_batched's). The stream
    continues across draw calls and is reproducible from its generator."""
    g = torch.Generator().manual_seed(1)
    smp = SobolTransformSampler(5, scale=2, generator=g)
    t = TransformSet.cat([smp.draw(32), smp.draw(32)])
    assert smp.drawn == 64 and torch.equal(t.scales, torch.full((64,), 2))
    for i in range(5):
        assert torch.bincount(t.flips[:, i], minlength=4).tolist() == [16] * 4
        perm_idx = t.perms[:, i, 0] * 3 + t.perms[:, i, 1]
        pc = torch.bincount(perm_idx, minlength=9)[[1, 2, 3, 5, 6, 7]]
        assert int(pc.max() - pc.min()) <= 1, pc
        strata = torch.bincount((((t.colors[:, i, 0].double() - 0.2) / 0.8) * 64).floor().long().clamp(0, 63),
                                minlength=64)
        assert strata.tolist() == [1] * 64
    iid = sample_batched(64, 5, generator=g, scale=2)
    spread = [int(torch.bincount(iid.perms[:, i, 0] * 3 + iid.perms[:, i, 1], minlength=9)[[1, 2, 3, 5, 6, 7]]
                  .max() - torch.bincount(iid.perms[:, i, 0] * 3 + iid.perms[:, i, 1], minlength=9)[[1, 2, 3, 5, 6, 7]]
                  .min()) for i in range(5)]
    assert max(spread) > 2  # the i.i.d. draws of the same size are not that even
    again = SobolTransformSampler(5, scale=2, generator=torch.Generator().manual_seed(1))
    t2 = TransformSet.cat([again.draw(64)])
    assert all(torch.equal(getattr(t, f), getattr(t2, f)) for f in ("scale_offsets", "offsets", "flips", "swap",
                                                                      "perms", "colors"))
    streams = TransformSet.cat([SobolTransformSampler(4, scale=3, generator=g).draw(16) for _ in range(200)]
                               + [SobolTransformSampler(4, scale=3, replicates=8, generator=g).draw(4)
                                  for _ in range(100)])
    m = _marginals(streams)
    assert torch.allclose(m["flip"], torch.full((4,), 0.25, dtype=torch.float64), atol=0.01)
    assert torch.allclose(m["perm"], torch.full((6,), 1 / 6, dtype=torch.float64), atol=0.01)
    assert torch.allclose(m["dy"], torch.full((8,), 1 / 8, dtype=torch.float64), atol=0.01)
    assert torch.allclose(m["oy"], torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.01)
    assert abs(float(m["color_mean"]) - 0.6) < 0.004 and abs(float(m["swap"]) - 0.5) < 0.01
    off = SobolTransformSampler(3, generator=g, families=["color", "dropout"]).draw(8)
    assert (off.flips == 3).all() and (off.offsets == 0).all() and not off.swap.any()
    assert off.colors.std() > 0
    with pytest.raises(ValueError, match="scale must be"):
        SobolTransformSampler(2, scale=9)
    with pytest.raises(ValueError, match="samples >= 1"):
        SobolTransformSampler(2).draw(0)
