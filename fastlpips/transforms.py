"""E-LPIPS random image transformations: sampling and the plain-PyTorch reference application.

Semantics of the official E-LPIPS release (shared/docs/REFERENCE.md section 2), N images per call:

* offsets ``dy, dx`` in 0..7 per image;
* scale level ``s`` in 1..8 with P(s) proportional to 1/s^2 and scale offsets ``oy, ox`` in 0..s-1,
  one of each per call ("official" mode);
* flips (0: flip W, 1: flip H, 2: both, 3: none), stratified over the batch and shuffled;
* one H<->W swap coin per call;
* colour permutations (the 6 of 3 channels), stratified over the batch and shuffled;
* colour scale per channel ``0.2 + 0.8 u``, u stratified over the batch ((U_i + i) / N, shuffled).

Applied in this order: (1) if s > 1, reflect-pad to a multiple of s (left/top pad = ox/oy, padded
size ((s-1) + W + (s-1)) // s * s) and box-downscale by s; (2) reflect-pad each image by
(top 7-dy, bottom dy, left 7-dx, right dx); (3) flip; (4) swap H/W; (5) permute channels;
(6) scale channels. ``apply_transform`` is the plain reference (one sample at a time).

Two sampling modes, both drawing from the same distribution per sample:

* ``sample_official(n)``: one transformation for a batch of n images, exactly as the release draws
  it once per forward pass (scale level, scale offsets and swap shared by the batch);
* ``sample_batched(S, n)``: S independent such draws at once (vectorized), each sample with its
  own scale level, scale offsets and swap, flips/permutations/colours stratified over the n images
  within each sample as in the release. ``TransformSet.groups`` splits the S samples by scale
  level (and by swap when the downscaled image is not square) into ``TransformBatch`` groups, each
  one pass of the fused op ``fastlpips.ops.transform.batched_transform`` and of the trunk.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

__all__ = ["TransformParams", "TransformSet", "TransformBatch", "sample_official", "sample_batched",
           "scale_probabilities", "apply_transform", "check_families", "PERMUTATIONS", "MAX_SCALE", "MAX_OFFSET",
           "FAMILIES", "TRANSFORM_FAMILIES", "transforms_from_uniform", "SobolTransformSampler", "SAMPLE_DIMS",
           "IMAGE_DIMS", "control_features"]

PERMUTATIONS = torch.tensor(list(itertools.permutations(range(3))))  # (6, 3)
MAX_SCALE = 8
MAX_OFFSET = 7
# The E-LPIPS ensemble's seven random families (for ablations such as the paper's Fig. 3). A family
# switched off takes its identity value: scale level 1; offsets dy = dx = 0 (the op's fixed 7-px
# reflect pad at the top/left, no random shift); no flip; no swap; the identity channel order;
# colour factors 1; no dropout.
TRANSFORM_FAMILIES = ("scale", "translation", "flip", "swap", "permutation", "color")
FAMILIES = TRANSFORM_FAMILIES + ("dropout",)


def check_families(families: Union[str, Iterable[str], None]) -> frozenset:
    """``families`` (None: all seven; else an iterable of names from ``FAMILIES``) -> a frozenset;
    unknown names raise, naming them and the valid ones."""
    if families is None:
        return frozenset(FAMILIES)
    if isinstance(families, str):
        families = [f for f in families.split(",") if f]
    out = frozenset(families)
    unknown = sorted(str(f) for f in out - set(FAMILIES))
    if unknown:
        raise ValueError(f"unknown E-LPIPS transform families {unknown}; valid: {', '.join(FAMILIES)}")
    return out


def _neutralize(families: Optional[frozenset], scales: torch.Tensor, scale_offsets: torch.Tensor,
                offsets: torch.Tensor, flips: torch.Tensor, swap: torch.Tensor, perms: torch.Tensor,
                colors: torch.Tensor) -> None:
    """The disabled families of a draw set to their identity values (tensors changed in place; the
    random stream is drawn in full first, so enabled families are distributed as always)."""
    if families is None:
        return
    if "scale" not in families:
        scales.fill_(1)
        scale_offsets.zero_()
    if "translation" not in families:
        offsets.zero_()
    if "flip" not in families:
        flips.fill_(3)
    if "swap" not in families:
        swap.fill_(False)
    if "permutation" not in families:
        perms.copy_(PERMUTATIONS[0].expand_as(perms))
    if "color" not in families:
        colors.fill_(1.0)


@dataclass
class TransformParams:
    """One random transformation for a batch of N images."""

    scale: int                 # s in 1..8 (shared by the batch)
    scale_offset: tuple        # (oy, ox), each in 0..s-1
    offsets: torch.Tensor      # (N, 2) long: dy, dx in 0..7
    flips: torch.Tensor        # (N,) long: 0 flip W, 1 flip H, 2 both, 3 none
    swap: bool                 # transpose H and W
    perms: torch.Tensor        # (N, 3) long: channel permutation per image
    colors: torch.Tensor       # (N, 3) float: channel factors in [0.2, 1)

    @property
    def n(self) -> int:
        return int(self.offsets.shape[0])


def _stratified_codes(n: int, k: int, g: torch.Generator) -> torch.Tensor:
    """n codes in 0..k-1, each used n/k times (up to one), in random order."""
    start = int(torch.randint(k, (1,), generator=g))  # which codes get the leftover slots
    codes = (torch.arange(n) + start) % k
    return codes[torch.randperm(n, generator=g)]


def scale_probabilities(max_scale: int = MAX_SCALE) -> torch.Tensor:
    """P(s) for s = 1..max_scale, proportional to 1/s^2 (float64)."""
    levels = torch.arange(1, max_scale + 1, dtype=torch.float64)
    p = 1.0 / levels**2
    return p / p.sum()


def sample_official(n: int, *, generator: Optional[torch.Generator] = None, max_scale: int = MAX_SCALE,
                    brightness: bool = False, scale: Optional[int] = None,
                    families: Optional[Iterable[str]] = None) -> TransformParams:
    """Draw one transformation for ``n`` images as the official release does (scale level and swap
    shared by the batch). ``max_scale`` limits the scale levels (see ``scale_levels_for_size``);
    ``scale`` fixes the level (a draw conditioned on it, for stratified sampling); ``families``
    (default all) leaves the others at their identity values (``FAMILIES``)."""
    if n < 1:
        raise ValueError(f"need at least one image, got n={n}")
    if not 1 <= max_scale <= MAX_SCALE:
        raise ValueError(f"max_scale must be in 1..{MAX_SCALE}, got {max_scale}")
    g = generator if generator is not None else torch.Generator().manual_seed(int(torch.randint(2**62, (1,))))
    if scale is not None and not 1 <= scale <= max_scale:
        raise ValueError(f"scale must be in 1..{max_scale}, got {scale}")
    s = scale if scale is not None else int(torch.multinomial(scale_probabilities(max_scale), 1, generator=g)) + 1
    oy, ox = (int(v) for v in torch.randint(s, (2,), generator=g))
    offsets = torch.randint(MAX_OFFSET + 1, (n, 2), generator=g)
    flips = _stratified_codes(n, 4, g)
    swap = bool(torch.randint(2, (1,), generator=g))
    perms = PERMUTATIONS[_stratified_codes(n, 6, g)]
    ch = 1 if brightness else 3
    u = (torch.rand(n, ch, generator=g, dtype=torch.float64) + torch.arange(n, dtype=torch.float64)[:, None]) / n
    u = torch.stack([u[torch.randperm(n, generator=g), c] for c in range(ch)], 1)
    colors = (0.2 + 0.8 * u).float().expand(n, 3).contiguous()
    if families is not None:
        fam = check_families(families)
        sc, so, sw = torch.tensor([s]), torch.tensor([oy, ox]), torch.tensor([swap])
        _neutralize(fam, sc, so, offsets, flips, sw, perms, colors)
        s, (oy, ox), swap = int(sc), (int(so[0]), int(so[1])), bool(sw)
    return TransformParams(s, (oy, ox), offsets, flips, swap, perms, colors)


def _generator(generator: Optional[torch.Generator]) -> torch.Generator:
    return generator if generator is not None else torch.Generator().manual_seed(int(torch.randint(2**62, (1,))))


def _stratified_rows(rows: int, n: int, k: int, g: torch.Generator) -> torch.Tensor:
    """(rows, n) codes in 0..k-1: in every row each code n/k times (up to one), in random order."""
    start = torch.randint(k, (rows, 1), generator=g)
    codes = (torch.arange(n) + start) % k
    return codes.gather(1, torch.rand(rows, n, generator=g).argsort(1))


@dataclass
class TransformSet:
    """S independent transformations for a batch of n images (``sample_batched``)."""

    scales: torch.Tensor         # (S,) long, 1..8
    scale_offsets: torch.Tensor  # (S, 2) long: oy, ox in 0..s-1
    offsets: torch.Tensor        # (S, n, 2) long
    flips: torch.Tensor          # (S, n) long
    swap: torch.Tensor           # (S,) bool
    perms: torch.Tensor          # (S, n, 3) long
    colors: torch.Tensor         # (S, n, 3) float32

    @property
    def samples(self) -> int:
        return int(self.scales.shape[0])

    @property
    def n(self) -> int:
        return int(self.offsets.shape[1])

    def sample(self, k: int) -> TransformParams:
        """Sample k as a ``TransformParams`` (for ``apply_transform``)."""
        return TransformParams(int(self.scales[k]), tuple(int(v) for v in self.scale_offsets[k]), self.offsets[k],
                               self.flips[k], bool(self.swap[k]), self.perms[k], self.colors[k])

    @classmethod
    def cat(cls, sets: Sequence["TransformSet"]) -> "TransformSet":
        """The samples of several sets, in order."""
        return cls(*(torch.cat([getattr(t, f) for t in sets]) for f in
                     ("scales", "scale_offsets", "offsets", "flips", "swap", "perms", "colors")))

    def groups(self, height: int, width: int) -> List[Tuple[torch.Tensor, "TransformBatch"]]:
        """[(sample indices, TransformBatch)]: one group per scale level, split by swap when the
        downscaled image is not square (output shapes must agree within a group)."""
        out = []
        for s in torch.unique(self.scales).tolist():
            hd, wd = downscaled_size(height, s), downscaled_size(width, s)
            keys = [None] if hd == wd else [False, True]
            for key in keys:
                sel = self.scales == s
                if key is not None:
                    sel = sel & (self.swap == key)
                idx = sel.nonzero().flatten()
                if len(idx):
                    out.append((idx, TransformBatch.from_set(self, idx)))
        return out


def sample_batched(samples: int, n: int, *, generator: Optional[torch.Generator] = None,
                   max_scale: int = MAX_SCALE, scale: Optional[int] = None, brightness: bool = False,
                   families: Optional[Iterable[str]] = None) -> TransformSet:
    """Draw ``samples`` independent transformations for ``n`` images at once (vectorized); each is
    distributed as one ``sample_official(n)`` draw. ``scale`` fixes every sample's level;
    ``families`` (default all) leaves the others at their identity values (``FAMILIES``)."""
    if samples < 1 or n < 1:
        raise ValueError(f"need samples >= 1 and n >= 1, got samples={samples}, n={n}")
    if not 1 <= max_scale <= MAX_SCALE:
        raise ValueError(f"max_scale must be in 1..{MAX_SCALE}, got {max_scale}")
    if scale is not None and not 1 <= scale <= max_scale:
        raise ValueError(f"scale must be in 1..{max_scale}, got {scale}")
    g = _generator(generator)
    if scale is None:
        scales = torch.multinomial(scale_probabilities(max_scale), samples, replacement=True, generator=g) + 1
    else:
        scales = torch.full((samples,), scale, dtype=torch.long)
    scale_offsets = (torch.rand(samples, 2, generator=g, dtype=torch.float64) * scales[:, None]).long()
    offsets = torch.randint(MAX_OFFSET + 1, (samples, n, 2), generator=g)
    flips = _stratified_rows(samples, n, 4, g)
    swap = torch.rand(samples, generator=g) < 0.5
    perms = PERMUTATIONS[_stratified_rows(samples, n, 6, g)]
    ch = 1 if brightness else 3
    u = (torch.rand(samples, ch, n, generator=g, dtype=torch.float64) + torch.arange(n, dtype=torch.float64)) / n
    u = u.gather(2, torch.rand(samples, ch, n, generator=g).argsort(2)).transpose(1, 2)
    colors = (0.2 + 0.8 * u).float().expand(samples, n, 3).contiguous()
    if families is not None:
        _neutralize(check_families(families), scales, scale_offsets, offsets, flips, swap, perms, colors)
    return TransformSet(scales, scale_offsets, offsets, flips, swap, perms, colors)


# The random choices of one transformation as uniforms on [0, 1) (for quasi-Monte Carlo sampling):
# per sample (shared by the images of a draw, as the release shares them) the scale offsets oy, ox
# and the swap coin; per image the offsets dy, dx, the flip, the channel permutation and the three
# channel scales.
SAMPLE_DIMS = 3
IMAGE_DIMS = 7


def _index(u: torch.Tensor, k: Union[int, torch.Tensor]) -> torch.Tensor:
    """floor(k u) for u in [0, 1), kept in 0..k-1 (k a number or a broadcastable tensor)."""
    return torch.minimum((u * k).floor().long(), torch.as_tensor(k, dtype=torch.long) - 1).clamp_min(0)


def transforms_from_uniform(scales: torch.Tensor, u_sample: torch.Tensor, u_image: torch.Tensor, *,
                            families: Optional[Iterable[str]] = None) -> TransformSet:
    """The transformations whose random choices are the given uniforms: ``scales`` (S,) levels,
    ``u_sample`` (S, SAMPLE_DIMS) and ``u_image`` (S, n, IMAGE_DIMS) in [0, 1).

    oy, ox = floor(s u), swap = u < 1/2; dy, dx = floor(8 u), flip = floor(4 u), permutation
    floor(6 u) (of ``PERMUTATIONS``), colour scale 0.2 + 0.8 u per channel. With independent U[0, 1)
    inputs every (sample, image) transformation has exactly the distribution of one
    ``sample_batched`` draw at its level (the release's balancing of flips, permutations and colours
    across the images of a draw is not applied: with low-discrepancy inputs the point set gives the
    balance, across samples). ``families`` as for ``sample_batched``."""
    scales = torch.as_tensor(scales, dtype=torch.long)
    u_sample, u_image = torch.as_tensor(u_sample, dtype=torch.float64), torch.as_tensor(u_image, dtype=torch.float64)
    s_count = scales.shape[0]
    if u_sample.shape != (s_count, SAMPLE_DIMS) or u_image.dim() != 3 or u_image.shape[0] != s_count \
            or u_image.shape[2] != IMAGE_DIMS:
        raise ValueError(f"expected u_sample ({s_count}, {SAMPLE_DIMS}) and u_image ({s_count}, n, {IMAGE_DIMS}), got "
                         f"{tuple(u_sample.shape)} and {tuple(u_image.shape)}")
    for name, u in (("u_sample", u_sample), ("u_image", u_image)):
        if u.numel() and not bool(((u >= 0) & (u < 1)).all()):
            raise ValueError(f"{name} must lie in [0, 1)")
    if s_count and not bool(((scales >= 1) & (scales <= MAX_SCALE)).all()):
        raise ValueError(f"scales must be in 1..{MAX_SCALE}")
    scale_offsets = _index(u_sample[:, :2], scales[:, None])
    swap = u_sample[:, 2] < 0.5
    offsets = _index(u_image[..., :2], MAX_OFFSET + 1)
    flips = _index(u_image[..., 2], 4)
    perms = PERMUTATIONS[_index(u_image[..., 3], len(PERMUTATIONS))]
    colors = (0.2 + 0.8 * u_image[..., 4:]).float().contiguous()
    scales = scales.clone()
    if families is not None:
        _neutralize(check_families(families), scales, scale_offsets, offsets, flips, swap, perms, colors)
    return TransformSet(scales, scale_offsets, offsets, flips, swap, perms, colors)


_SOBOL_BITS = 52  # the points as integers of this many bits (exact in float64)
_SOBOL_POINTS: dict = {}  # dims -> the first points of the unscrambled Sobol sequence, as integers


def _sobol_integers(dims: int, start: int, count: int) -> torch.Tensor:
    """Points start .. start + count - 1 of the unscrambled Sobol sequence in ``dims`` dimensions as
    (count, dims) int64 multiples of 2**-_SOBOL_BITS (torch's points are multiples of 2**-30:
    exact); computed once per process and extended by doubling."""
    pts = _SOBOL_POINTS.get(dims)
    if pts is None or pts.shape[0] < start + count:
        m = max(start + count, 64, 0 if pts is None else 2 * pts.shape[0])
        f = torch.quasirandom.SobolEngine(dims, scramble=False).draw(m, dtype=torch.float64)
        pts = (f * 2.0**_SOBOL_BITS).long()
        _SOBOL_POINTS[dims] = pts
    return pts[start:start + count]


class SobolTransformSampler:
    """Randomized quasi-Monte Carlo streams of transformations at one scale level for ``n`` images.

    ``replicates`` independent streams over the SAMPLE_DIMS + IMAGE_DIMS uniforms of
    ``transforms_from_uniform``: the points of the Sobol sequence, each stream under its own random
    digital shift (the bits XORed with independent uniform random bits), and each image's
    IMAGE_DIMS coordinates under a further shift of its own, so the images get different point sets.
    A digital shift keeps the sequence's balance exactly (per image, the first 2^k points of a
    stream put the same number of points in every dyadic interval of every coordinate: over 64 draws
    each flip 16 times) and makes every point uniform on [0, 1)^d, so each single transformation is
    distributed exactly as a ``sample_batched`` draw at this level and means are unbiased. The
    streams are independent given the shared points; errors come from the spread of their means.
    Successive ``draw`` calls continue the streams."""

    def __init__(self, n: int, *, scale: int = 1, replicates: int = 1, generator: Optional[torch.Generator] = None,
                 families: Optional[Iterable[str]] = None) -> None:
        if n < 1:
            raise ValueError(f"need at least one image, got n={n}")
        if not 1 <= scale <= MAX_SCALE:
            raise ValueError(f"scale must be in 1..{MAX_SCALE}, got {scale}")
        if replicates < 1:
            raise ValueError(f"need replicates >= 1, got {replicates}")
        g = _generator(generator)
        self.n, self.scale, self.replicates, self.families = n, scale, replicates, families
        top = 2**_SOBOL_BITS
        self.sample_shift = torch.randint(top, (replicates, 1, SAMPLE_DIMS), generator=g)
        self.image_shift = torch.randint(top, (replicates, 1, n, IMAGE_DIMS), generator=g)
        self.drawn = 0

    def draw(self, samples: int) -> TransformSet:
        """The next ``samples`` points of every stream: a TransformSet of replicates x samples
        transformations, stream by stream (stream r's points at r * samples ... (r + 1) * samples - 1)."""
        if samples < 1:
            raise ValueError(f"need samples >= 1, got {samples}")
        pts = _sobol_integers(SAMPLE_DIMS + IMAGE_DIMS, self.drawn, samples)  # (S, d)
        self.drawn += samples
        scale = 2.0**-_SOBOL_BITS
        u_sample = (pts[None, :, :SAMPLE_DIMS] ^ self.sample_shift).double() * scale  # (R, S, SAMPLE_DIMS)
        u_image = (pts[None, :, None, SAMPLE_DIMS:] ^ self.image_shift).double() * scale  # (R, S, n, IMAGE_DIMS)
        total = self.replicates * samples
        return transforms_from_uniform(torch.full((total,), self.scale, dtype=torch.long),
                                       u_sample.reshape(total, SAMPLE_DIMS), u_image.reshape(total, self.n, IMAGE_DIMS),
                                       families=self.families)


def control_features(t: TransformSet, families: Optional[Iterable[str]] = None) -> torch.Tensor:
    """Control variates of a set of transformations: (S, n, k) float64 functions of each (sample,
    image) transformation whose expectation under the sampling distribution is exactly 0 (each is a
    function of the choices minus its known mean), for ``elpips_estimate(method='cv')``.

    With v_j = (c - 0.2) / 0.8 the uniform behind the colour factor that lands on input channel j
    (the factor of output channel k applies to input channel perm[k]): the permutation one-hot
    times (v_j - 1/2) (18; it spans v itself), the squares and products v_j^2 - 1/3, v_j v_l - 1/4
    (6), the permutation (5), flip (3) one-hots minus 1/6, 1/4, and the swap coin minus 1/2 (1):
    33 with every family on. Measured on real 64x64 photo pairs at scale level 1 (cross-fitted
    regression, 8 folds), they leave 0.19-0.28 of the variance at 1024 samples and 0.19-0.39 at 128;
    the translation offsets and their interactions removed < 0.01 more. The uniforms v_j are
    independent of the permutation and of each other for every image (``sample_batched`` and
    ``SobolTransformSampler`` alike), so the means hold whatever the stratification across images.
    A family that is off (``families``, as for ``sample_batched``) contributes no feature; the
    colour factors are float32, so the means hold to ~1e-7 relative."""
    fam = check_families(families)
    s_count, n = t.offsets.shape[:2]
    feats = []
    perm_on, color_on = "permutation" in fam, "color" in fam
    if color_on:
        u = (t.colors.double() - 0.2) / 0.8  # (S, n, 3) per output channel
        v = u.gather(-1, torch.argsort(t.perms, -1)) if perm_on else u  # per input channel
    if perm_on:
        codes = (t.perms[..., 0] * 3 + t.perms[..., 1])  # a permutation is fixed by its first two entries
        table = PERMUTATIONS[:, 0] * 3 + PERMUTATIONS[:, 1]
        onehot = (codes[..., None] == table).double()  # (S, n, 6)
        feats.append(onehot[..., :-1] - 1.0 / len(PERMUTATIONS))
        if color_on:
            feats.append((onehot[..., :, None] * (v[..., None, :] - 0.5)).reshape(s_count, n, 18))
    elif color_on:
        feats.append(v - 0.5)
    if color_on:
        feats += [v**2 - 1.0 / 3, torch.stack([v[..., 0] * v[..., 1], v[..., 0] * v[..., 2], v[..., 1] * v[..., 2]], -1)
                  - 0.25]
    if "flip" in fam:
        feats.append(torch.nn.functional.one_hot(t.flips, 4).double()[..., :-1] - 0.25)
    if "swap" in fam:
        feats.append((t.swap.double() - 0.5).view(s_count, 1, 1).expand(s_count, n, 1))
    if not feats:
        return torch.zeros(s_count, n, 0, dtype=torch.float64)
    return torch.cat(feats, -1)


def downscaled_size(side: int, s: int) -> int:
    """Side after the mirror pad (s - 1 on each end) and the s x s box downscale."""
    return (2 * (s - 1) + side) // s


@dataclass
class TransformBatch:
    """Kernel-ready parameters of S samples of one scale level for a batch of ``batch`` images:
    ``params`` (S*batch, 9) int32 rows (dy, dx, flip, swap, oy, ox, perm0, perm1, perm2) and
    ``colors`` (S*batch, 3) float32, sample-major (row n belongs to image n % batch)."""

    scale: int
    params: torch.Tensor
    colors: torch.Tensor
    batch: int

    @property
    def samples(self) -> int:
        return int(self.params.shape[0]) // self.batch

    @classmethod
    def from_set(cls, t: TransformSet, idx: torch.Tensor) -> "TransformBatch":
        scales = t.scales[idx]
        if len(idx) == 0 or bool((scales != scales[0]).any()):
            raise ValueError("a TransformBatch holds one or more samples of a single scale level")
        k, n = len(idx), t.n
        params = torch.cat([t.offsets[idx], t.flips[idx][..., None], t.swap[idx].long()[:, None, None].expand(k, n, 1),
                            t.scale_offsets[idx][:, None, :].expand(k, n, 2), t.perms[idx]], dim=2)
        return cls(int(scales[0]), params.reshape(k * n, 9).to(torch.int32).contiguous(),
                   t.colors[idx].reshape(k * n, 3).float().contiguous(), n)

    @classmethod
    def from_params(cls, ps: Sequence[TransformParams]) -> "TransformBatch":
        """Stack official draws (``sample_official``) of one scale level."""
        if not ps:
            raise ValueError("need at least one TransformParams")
        t = TransformSet(torch.tensor([p.scale for p in ps]), torch.tensor([p.scale_offset for p in ps]),
                         torch.stack([p.offsets for p in ps]), torch.stack([p.flips for p in ps]),
                         torch.tensor([p.swap for p in ps]), torch.stack([p.perms for p in ps]),
                         torch.stack([p.colors for p in ps]))
        return cls.from_set(t, torch.arange(len(ps)))

    def select(self, start: int, stop: int) -> "TransformBatch":
        """Samples start..stop-1 (a chunk of this group)."""
        rows = slice(start * self.batch, stop * self.batch)
        return TransformBatch(self.scale, self.params[rows], self.colors[rows], self.batch)

    def downscaled(self, height: int, width: int) -> Tuple[int, int]:
        return downscaled_size(height, self.scale), downscaled_size(width, self.scale)

    def check_size(self, height: int, width: int) -> None:
        if min(height, width) < min_size_for_scale(self.scale):
            raise ValueError(f"images of {height}x{width} are too small for scale level {self.scale}: reflect "
                             f"padding needs the downscaled image to be >= 8 px, i.e. sides >= "
                             f"{min_size_for_scale(self.scale)}")

    def out_size(self, height: int, width: int) -> Tuple[int, int]:
        """(h, w) of every transformed image; the swaps must agree unless the result is square."""
        hd, wd = self.downscaled(height, width)
        swaps = self.params[:, 3]
        if hd != wd and bool((swaps != swaps[0]).any()):
            raise ValueError("samples with and without the H/W swap give different shapes for non-square "
                             "images; split them (TransformSet.groups does)")
        if hd != wd and bool(swaps[0]):
            hd, wd = wd, hd
        return hd + MAX_OFFSET, wd + MAX_OFFSET


def min_size_for_scale(scale: int) -> int:
    """Smallest image side that scale level ``scale`` accepts (the downscaled image >= 8 px)."""
    return 8 * scale


def apply_transform(x: torch.Tensor, p: TransformParams) -> torch.Tensor:
    """Reference application of ``p`` to images ``x`` (N, 3, H, W) -> (N, 3, h+7, w+7) (H/W
    swapped when ``p.swap``), differentiable with respect to ``x``."""
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"images must be (N, 3, H, W), got {tuple(x.shape)}")
    if x.shape[0] != p.n:
        raise ValueError(f"the transform was drawn for {p.n} images, got {x.shape[0]}")
    s = p.scale
    h, w = x.shape[2], x.shape[3]
    if min(h, w) < min_size_for_scale(s):
        raise ValueError(f"images of {h}x{w} are too small for scale level {s}: reflect padding needs the "
                         f"downscaled image to be >= 8 px, i.e. sides >= {min_size_for_scale(s)}")
    if s > 1:
        oy, ox = p.scale_offset
        hp = ((s - 1) + h + (s - 1)) // s * s
        wp = ((s - 1) + w + (s - 1)) // s * s
        x = F.pad(x, (ox, wp - w - ox, oy, hp - h - oy), mode="reflect")
        x = F.avg_pool2d(x, s)
    out = []
    for i in range(p.n):
        dy, dx = (int(v) for v in p.offsets[i])
        y = F.pad(x[i:i + 1], (MAX_OFFSET - dx, dx, MAX_OFFSET - dy, dy), mode="reflect")
        code = int(p.flips[i])
        if code in (0, 2):
            y = y.flip(-1)
        if code in (1, 2):
            y = y.flip(-2)
        out.append(y)
    x = torch.cat(out)
    if p.swap:
        x = x.transpose(-1, -2)
    x = x[torch.arange(p.n)[:, None], p.perms.to(x.device)]
    return x * p.colors.to(device=x.device, dtype=x.dtype)[:, :, None, None]
