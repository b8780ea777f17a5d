"""DISTS (Ding, Ma, Wang, Simoncelli, "Image Quality Assessment: Unifying Structure and Texture
Similarity", TPAMI 2020) as the authors' release (dists-pytorch 0.1) computes it.

For images x, y in [0, 1], standardized by the ImageNet mean and standard deviation, the VGG16
trunk with every max pooling replaced by an L2 pooling (the squared map filtered by the normalized
outer product of hanning(5)[1:-1] = (0.5, 1, 0.5), stride 2, padding 1, then sqrt(. + 1e-12))
gives six stages: the image itself and relu1_2, relu2_2, relu3_3, relu4_3, relu5_3. Per stage k
and channel c, with spatial means mu, variances sigma^2 and the covariance sigma_xy (population
statistics):

    S1 = (2 mu_x mu_y + c1) / (mu_x^2 + mu_y^2 + c1)              (structure of the means: "texture")
    S2 = (2 sigma_xy + c2) / (sigma_x^2 + sigma_y^2 + c2)         (correlation: "structure")
    DISTS(x, y) = 1 - sum_{k,c} (alpha_kc S1 + beta_kc S2),   c1 = c2 = 1e-6,

alpha and beta (1475 weights each) divided by their joint sum. Each stage's statistics and term
run as one op of the op table (``fastlpips.ops.stats``: torch, cpp, triton and cuda kernels;
``reference.dists_stage`` is its ground truth). The weights are the release's
(``nets.weights.load_dists_weights``: the copy bundled with torchmetrics, or a path; sha256
checked, read pickle-free), the trunk's the ImageNet VGG16 LPIPS-VGG uses.
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from . import validation as V
from .nets import tiling
from .nets.trunks import VGG16, L2Pool
from .nets.weights import (
    DISTS_CHANNELS,
    DISTS_SHA256,
    IMAGENET_MEAN,
    IMAGENET_STD,
    load_dists_weights,
    load_trunk_state,
)
from .ops.stats import dists_stage_term
from .ops.torch_kernels import stage_term
from .precision import resolve_dtype, warn_if_slow
from .reference import DISTS_C1 as C1
from .reference import DISTS_C2 as C2
from .reference import dists_stage
from .utils import channels_last, reduce_batch

__all__ = ["DISTS", "L2Pool", "dists_stage", "C1", "C2", "MIN_SIZE"]

#: The smallest image side: the deepest stage (relu5_3, after four poolings that halve rounding up)
#: keeps 2x2 pixels, so each of its channels has a variance and a covariance.
MIN_SIZE = 17


class DISTS(nn.Module):
    """DISTS: ``forward(x, y)`` -> (N,) distances of images (N, 3, H, W) in [0, 1] (a batch of 1
    broadcasts against N); 0 for identical images, lower is closer.

    Args (keyword-only):
        weights_path: DISTS' alpha/beta (default: the release's, bundled with torchmetrics; see
            ``nets.weights.load_dists_weights``); ``weights_sha256``: the file's expected sha256
            (the release's by default; None accepts other weights of the same shapes).
        trunk_path, pnet_rand: the VGG16 trunk's weights, as for ``fastlpips.LPIPS`` (``pnet_rand``:
            a random trunk, for tests).
        check_inputs: scan the values (NaN/Inf and values outside [0, 1] raise ValueError; one
            device sync per input); shape, dtype and device checks always run.
        backend: the statistics kernels, 'auto' (default; or ``$FASTLPIPS_BACKEND``) | 'torch' |
            'cpp' | 'triton' | 'cuda' (see ``fastlpips.backends()``).
        dtype: reduced precision for the trunk, as ``fastlpips.LPIPS``: ``'bf16'`` / ``'fp16'``
            (the convolutions in that dtype, the statistics accumulated in fp32, inputs and result
            fp32), ``'auto'`` (bf16 only where it is measured faster on ``device``, else fp32;
            ``fastlpips.precision``), None / ``'fp32'`` (default).
        device: move the metric there; also the device ``dtype='auto'`` decides for.
        memory_budget, max_tile: as for ``fastlpips.LPIPS``: a pair whose trunk pass would take
            more than ``memory_budget`` bytes of activations (default ``nets.tiling.default_budget``),
            or whose images are larger than ``max_tile``, runs tiled: each tile's stage maps are
            reduced to per-channel sums (float64) from which the statistics and the terms follow,
            the same DISTS to rounding; gradients through per-tile recomputation.
    ``forward(x, y, reduction='none')``: 'mean' / 'sum' reduce over the batch.
    """

    def __init__(self, *, weights_path: Union[str, os.PathLike, None] = None,
                 weights_sha256: Optional[str] = DISTS_SHA256, trunk_path: Union[str, os.PathLike, None] = None,
                 pnet_rand: bool = False, check_inputs: bool = True, backend: Optional[str] = None,
                 dtype: Union[torch.dtype, str, None] = None,
                 device: Union[str, torch.device, None] = None, memory_budget: Optional[int] = None,
                 max_tile: Union[int, Tuple[int, int], None] = None) -> None:
        super().__init__()
        self.memory_budget = V.check_budget(memory_budget)
        self.max_tile = V.check_tile(max_tile)
        self._stack: Optional[tiling.LocalStack] = None
        self.compute_dtype = resolve_dtype(dtype, device, net="vgg")
        trunk = VGG16()
        if not pnet_rand:
            load_trunk_state(trunk, "vgg", trunk_path)
        layers: List[nn.Module] = []
        stages: List[int] = []  # the layer index after which each trunk stage ends (relu1_2 ... relu5_3)
        for s in trunk.slices:
            for m in s:
                layers.append(L2Pool() if isinstance(m, nn.MaxPool2d) else m)
            stages.append(len(layers))
        self.layers = nn.ModuleList(layers)
        self.layers.to(memory_format=torch.channels_last)  # the convolutions' fast layout (utils.channels_last)
        if self.compute_dtype is not None:
            self.layers.to(self.compute_dtype)
        self.stage_ends = stages
        self.requires_grad_(False)
        w = load_dists_weights(weights_path, weights_sha256)
        self.register_buffer("alpha", w["alpha"].reshape(-1))
        self.register_buffer("beta", w["beta"].reshape(-1))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.alpha: torch.Tensor
        self.beta: torch.Tensor
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.channels = DISTS_CHANNELS
        self.check_inputs = check_inputs
        self.backend = backend
        self.eval()
        if device is not None:
            self.to(device)

    def stage_weights(self) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """(alpha_k, beta_k) per stage, divided by the joint sum (what ``forward`` uses)."""
        total = self.alpha.sum() + self.beta.sum()
        return list(zip(torch.split(self.alpha / total, list(self.channels)),
                        torch.split(self.beta / total, list(self.channels))))

    def features(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The six stages of ``x`` (in [0, 1]): the image and relu1_2 .. relu5_3."""
        out = [x]
        h = channels_last((x - self.mean.to(x.dtype)) / self.std.to(x.dtype))
        if self.compute_dtype is not None:
            h = h.to(self.compute_dtype)
        for i, m in enumerate(self.layers):
            h = m(h)
            if i + 1 in self.stage_ends:
                out.append(h)
        return out

    def check_size(self, x: torch.Tensor, name: str) -> None:
        """Both sides of ``x`` at least ``MIN_SIZE`` (ValueError naming ``name``)."""
        V.check_size(x, MIN_SIZE, "DISTS (its deepest stage needs 2x2 pixels)", name)

    def _check(self, x: torch.Tensor, name: str) -> None:
        V.check_image(x, name, hint=V.UNIT_HINT)
        self.check_size(x, name)
        V.check_model_match(x, self.alpha.device, self.mean.dtype, name)
        if self.check_inputs and x.shape[0]:
            V.check_unit_images(x, name)

    def forward(self, x: torch.Tensor, y: torch.Tensor, reduction: str = "none") -> torch.Tensor:
        reduction = V.check_reduction(reduction)
        if self.compute_dtype is not None:
            warn_if_slow(self.compute_dtype, x.device, net="vgg")
        self._check(x, "x")
        self._check(y, "y")
        V.check_pair(x, y, "x", "y")
        grad = torch.is_grad_enabled()
        graph = grad and (x.requires_grad or y.requires_grad)
        tile = self._tile(x.shape[2], x.shape[3], 2 * max(x.shape[0], y.shape[0]), graph, x.device)
        if tile is not None:
            return reduce_batch(self._tiled(x, y, tile, graph), reduction)
        if x.shape == y.shape and (grad and x.requires_grad) == (grad and y.requires_grad):
            # one trunk pass for both; an input without a gradient never joins one that has one
            n = x.shape[0]
            both = self.features(torch.cat([x, y]))
            fx, fy = [f[:n] for f in both], [f[n:] for f in both]
        else:
            fx, fy = self.features(x), self.features(y)
        return reduce_batch(self.from_features(fx, fy), reduction)

    # -- tiled passes (large images) --------------------------------------------------------------
    def local_stack(self) -> tiling.LocalStack:
        """The trunk as ``nets.tiling`` runs it; compared: the input (stage 0) and the stage ends."""
        if self._stack is None:  # made once: it remembers its tile choices
            self._stack = tiling.LocalStack(list(self.layers), [0] + list(self.stage_ends), reduce=6.0)
        return self._stack

    def _tile(self, height: int, width: int, batch: int, grad: bool, device) -> Optional[Tuple[int, int]]:
        return self.local_stack().tile_for(height, width, batch, (self.compute_dtype or self.mean.dtype).itemsize,
                                           grad, max_tile=self.max_tile, budget=self.memory_budget, device=device,
                                           what="the DISTS trunk")

    def _tiled(self, x: torch.Tensor, y: torch.Tensor, tile: Tuple[int, int], grad: bool) -> torch.Tensor:
        """DISTS (N,) from per-tile sums of every stage's maps and their products (float64)."""
        n = max(x.shape[0], y.shape[0])
        x, y = x.expand(n, -1, -1, -1), y.expand(n, -1, -1, -1)
        stack = self.local_stack()
        sizes, tiles = stack.sizes(x.shape[2], x.shape[3]), stack.plan(x.shape[2], x.shape[3], tile)

        def one_tile(t: tiling.Tile, a: torch.Tensor, b: torch.Tensor) -> List[torch.Tensor]:
            sums: List[Optional[torch.Tensor]] = [None] * len(stack.outputs)

            def source(r, c) -> torch.Tensor:
                h = torch.cat([a[:, :, r[0]:r[1], c[0]:c[1]], b[:, :, r[0]:r[1], c[0]:c[1]]])
                h = channels_last((h - self.mean.to(h.dtype)) / self.std.to(h.dtype))
                return h.to(self.compute_dtype) if self.compute_dtype is not None else h

            def emit(j: int, f: torch.Tensor) -> None:
                if j == 0:  # stage 0 is the image itself, not the standardized trunk input
                    (r0, r1), (c0, c1) = t.owned(0)
                    f = torch.cat([a[:, :, r0:r1, c0:c1], b[:, :, r0:r1, c0:c1]])
                f = f.double()
                fa, fb = f[:n], f[n:]
                sums[j] = torch.stack([fa.sum((2, 3)), fb.sum((2, 3)), fa.square().sum((2, 3)),
                                       fb.square().sum((2, 3)), (fa * fb).sum((2, 3))], -1)

            stack.run(t, source, emit, sizes)
            return [s if s is not None else x.new_zeros((n, self.channels[j], 5), dtype=torch.float64)
                    for j, s in enumerate(sums)]

        parts = tiling.run_tiles(tiles, one_tile, [x, y], grad, self.memory_budget)
        total = x.new_zeros((n,), dtype=torch.float64)
        for j, (al, be) in enumerate(self.stage_weights()):
            h, w = sizes[stack.outputs[j]]
            mx, my, sxx, syy, sxy = (torch.stack([p[j] for p in parts]).sum(0) / (h * w)).unbind(-1)
            total = total + stage_term(mx, my, sxx - mx * mx, syy - my * my, sxy - mx * my,
                                       al.double()[None], be.double()[None], C1, C2)
        return (1 - total).to(x.dtype)

    def from_features(self, fx: Sequence[torch.Tensor], fy: Sequence[torch.Tensor]) -> torch.Tensor:
        """DISTS (N,) of two images' six stages (``features``; a batch of 1 broadcasts)."""
        terms = [dists_stage_term(a, b, al, be, backend=self.backend)
                 for (a, b), (al, be) in zip(zip(fx, fy), self.stage_weights())]
        return (1 - torch.stack(terms).sum(0)).to(fx[0].dtype)
