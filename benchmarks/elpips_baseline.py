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
