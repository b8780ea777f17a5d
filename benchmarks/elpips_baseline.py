"""The baseline the E-LPIPS engine is measured against: a faithful per-sample loop, written the
way a port of the release would be: one ``sample_official`` transformation per forward pass,
applied with plain torch ops (``fastlpips.transforms.apply_transform``), dropout masks from
``torch.rand``, the average-pool VGG in NCHW fp32 with autograd-style ops, the head as the plain
reference op sequence (``fastlpips.reference.lpips_head``). Same weights as ``fastlpips.ELPIPS``."""
import torch
from torch import nn

from fastlpips.reference import lpips_head
from fastlpips.transforms import apply_transform, sample_official


class FaithfulLoop(nn.Module):
    def __init__(self, engine):
        super().__init__()
        self.layers = nn.ModuleList()
        for m in engine.net.layers:  # same modules, weights copied to NCHW fp32
            if isinstance(m, nn.Conv2d):
                c = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, padding=m.padding)
                c.load_state_dict({k: v.float().contiguous() for k, v in m.state_dict().items()})
                self.layers.append(c)
            else:
                self.layers.append(m)
        self.shift = engine.scaling_layer.shift.clone()
        self.scale = engine.scaling_layer.scale.clone()
        self.weights = [w.clone() for w in engine.layer_weights()]
        self.keep, self.max_scale = engine.keep_prob, engine.max_scale

    def sample(self, x, y, g):
        p = sample_official(x.shape[0], generator=g, max_scale=self.max_scale)
        h = torch.cat([apply_transform(x, p), apply_transform(y, p)]) * 2 - 1
        h = (h - self.shift) / self.scale
        n = x.shape[0]
        feats = [h]
        for m in self.layers:
            if isinstance(m, nn.Conv2d):
                mask = (torch.rand((n,) + tuple(h.shape[1:]), generator=g) < self.keep).float() / self.keep
                h = h * torch.cat([mask, mask])
            h = m(h)
            if isinstance(m, nn.ReLU):
                feats.append(h)
        return sum(lpips_head(f[:n], f[n:], w) for f, w in zip(feats, self.weights))

    def forward(self, x, y, samples, g):
        with torch.no_grad():
            return torch.stack([self.sample(x, y, g) for _ in range(samples)])


def stratified_pilot(metric, x, y, per_level, seed=2024):
    """``per_level`` samples on every scale level: distances (levels, per_level, pairs) in float64."""
    from fastlpips.transforms import TransformSet, sample_batched

    g = torch.Generator().manual_seed(seed)
    t = TransformSet.cat([sample_batched(per_level, x.shape[0], generator=g, scale=s)
                          for s in range(1, metric.max_scale + 1)])
    with torch.no_grad():
        d = metric.sample_distances((x,), y, t.samples, generator=g, transforms=t)[0].double()
    return d.view(metric.max_scale, per_level, -1)


def samples_needed(d, rtol, atol, z):
    """From a stratified pilot ``d`` (levels, samples, pairs): the i.i.d. variance per pair (law of
    total variance) and the stratified one with proportional allocation (sum_s P(s) var_s), and the
    samples each needs for z * sd / sqrt(n) < min(rtol * mean, atol) on every pair (the maximum over
    the pairs). Returns dict(iid=..., stratified=..., variance_ratio=[...], mean=[...])."""
    from fastlpips.transforms import scale_probabilities

    pw = scale_probabilities(d.shape[0])[:, None]
    mean_s, var_s = d.mean(1), d.var(1)
    mean = (pw * mean_s).sum(0)
    var_strat = (pw * var_s).sum(0)
    var_iid = var_strat + (pw * (mean_s - mean) ** 2).sum(0)
    width = torch.minimum(rtol * mean, torch.full_like(mean, atol))
    return dict(iid=(z**2 * var_iid / width**2).max().item(), stratified=(z**2 * var_strat / width**2).max().item(),
                variance_ratio=(var_strat / var_iid).tolist(), mean=mean.tolist())
