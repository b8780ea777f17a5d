"""``fastlpips.LPIPS``: a drop-in replacement for ``lpips.LPIPS`` (PyPI lpips 0.1.4).

Same constructor, forward signature, defaults, output shapes, module names and state-dict keys;
the same numbers up to floating-point rounding. What differs, on purpose (each one tested):

* ``use_dropout=False`` still loads the calibrated weights (``lpips`` silently keeps random ones);
* gradients stay finite where a feature vector is exactly zero (``lpips`` gives NaN);
* weights load strictly (missing, unexpected or mis-shaped keys raise ``WeightError``);
* nothing is printed (``verbose=True`` logs to the ``fastlpips`` logger at INFO level);
* bad inputs raise errors naming the problem; values outside the expected range warn once;
* no torchvision: the trunks are defined here and their weights found as ``nets/weights.py`` says.

Speed without changing the numbers: both inputs go through the trunk in one batched pass, the
trunk runs in channels_last memory format, an input that needs no gradient is run without an
autograd graph, and ``features`` / ``compare_features`` / ``pairwise`` reuse trunk passes.
"""
from __future__ import annotations

import logging
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union, cast

import torch
from torch import nn

from . import validation as V
from ._backend import resolve
from .nets import tiling
from .nets.trunks import build_trunk
from .nets.weights import WeightError, load_lin_weights, load_trunk_state, read_state_dict
from .ops.head import lpips_head_map
from .precision import resolve_dtype, warn_if_slow
from .reference import normalize_channels, normalize_channels_root, upsample, weighted_channel_sum

logger = logging.getLogger("fastlpips")

__all__ = ["LPIPS", "ScalingLayer", "NetLinLayer", "LPIPSFeatures"]


class ScalingLayer(nn.Module):
    """``(x - shift) / scale``: maps [-1, 1] images to ImageNet-normalized trunk input."""

    shift: torch.Tensor  # buffers, registered in __init__
    scale: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        return (inp - self.shift) / self.scale


class NetLinLayer(nn.Module):
    """1x1 convolution C -> 1 without bias (the learned per-channel weights), optional dropout.

    The conv is always ``model.1`` (with ``nn.Identity`` at ``model.0`` when ``use_dropout=False``)
    so that the published weight files, whose keys are ``model.1.weight``, always load; state
    dicts saved by ``lpips`` with ``use_dropout=False`` (``model.0.weight``) load too.
    """

    def __init__(self, chn_in: int, chn_out: int = 1, use_dropout: bool = False) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout() if use_dropout else nn.Identity(),
                                   nn.Conv2d(chn_in, chn_out, 1, stride=1, padding=0, bias=False))
        self._register_load_state_dict_pre_hook(_rename_model0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    @property
    def weight(self) -> torch.Tensor:
        return cast(nn.Conv2d, self.model[1]).weight


def _rename_model0(state_dict, prefix, *args) -> None:
    old, new = prefix + "model.0.weight", prefix + "model.1.weight"
    if old in state_dict and new not in state_dict:
        state_dict[new] = state_dict.pop(old)


class LPIPSFeatures:
    """Channel-normalized trunk features of a batch of images, reusable across comparisons.

    ``maps[k]`` has shape (N, C_k, H_k, W_k); ``size`` is the (H, W) of the images.
    """

    def __init__(self, maps: List[torch.Tensor], size: Sequence[int], source: Optional[str] = None) -> None:
        self.maps, self.size, self.source = maps, tuple(size), source  # source: e.g. 'alex v0.1'

    def __len__(self) -> int:
        return self.maps[0].shape[0]

    @staticmethod
    def cat(parts: Sequence["LPIPSFeatures"]) -> "LPIPSFeatures":
        """Concatenate feature batches of images of one size."""
        if not parts:
            raise ValueError("no feature batches to concatenate")
        if len({p.size for p in parts}) != 1:
            raise ValueError(f"cannot concatenate features of images of sizes {sorted({p.size for p in parts})}")
        if len({p.source for p in parts}) > 1:
            raise ValueError(f"cannot combine features of different trunks: {sorted({str(p.source) for p in parts})}")
        return LPIPSFeatures([torch.cat(ms) for ms in zip(*(p.maps for p in parts))], parts[0].size, parts[0].source)

    def __getitem__(self, idx) -> "LPIPSFeatures":
        if isinstance(idx, int):
            idx = slice(idx, idx + 1 if idx != -1 else None)
        return LPIPSFeatures([m[idx] for m in self.maps], self.size, self.source)


_NETS = {"alex": [64, 192, 384, 256, 256], "vgg": [64, 128, 256, 512, 512], "vgg16": [64, 128, 256, 512, 512],
         "squeeze": [64, 128, 256, 384, 384, 512, 512]}


class LPIPS(nn.Module):
    """Learned Perceptual Image Patch Similarity (Zhang et al., CVPR 2018).

    Args (those of ``lpips.LPIPS``):
        pretrained: load the calibrated linear weights (only with ``lpips=True``).
        net: trunk, 'alex' | 'vgg' | 'squeeze'.
        version: '0.1' (scaling layer on) or '0.0' (the original release without it).
        lpips: learned per-channel weights; False = unit weights (the "baseline").
        spatial: return a distance map (N, 1, H, W) instead of (N, 1, 1, 1).
        pnet_rand: random trunk instead of ImageNet weights.
        pnet_tune: trunk parameters require grad.
        use_dropout: dropout before the linear layers (active only in train mode).
        model_path: a state dict to load: linear weights only, or a full ``lpips.LPIPS`` state dict
            (trunk + ``lin*`` + ``lins.*``, e.g. R-LPIPS checkpoints); read with ``weights_only=True``.
        eval_mode: put the module in eval mode.
        verbose: log (not print) what is loaded.
    Keyword-only additions:
        trunk_path: explicit trunk weight file; the formats are in ``fastlpips.nets.weights``, among them
            training checkpoints such as an adversarially trained (robust) trunk saved by the
            ``robustness`` library or under ``nn.DataParallel``.
        check_inputs: scan input values on every call (NaN/Inf raise, out-of-range values warn; one
            device sync per input); default True. Shape, dtype, device and size checks always run.
        backend: head kernels, 'auto' (default; or ``$FASTLPIPS_BACKEND``) | 'torch' | 'cpp' |
            'triton' | 'cuda' | 'cupy' (see ``fastlpips.backends()``).
        dtype: reduced-precision mode, ``torch.bfloat16`` / ``'bf16'`` (or fp16): trunk and head run
            in that dtype with fp32 accumulation; inputs of any float dtype are accepted and the
            result is fp32. ``'auto'``: bf16 only where it is faster than fp32 on ``device`` (a GPU
            with bf16, a CPU with AMX confirmed by timing one convolution), else fp32; see
            ``fastlpips.precision``. An explicit bf16 on a CPU without native bf16 warns once
            (``PrecisionWarning``: emulated, several times slower). Error: benchmarks/README.md.
        device: move the model there after construction; also the device ``dtype='auto'`` decides
            for (default CPU: an 'auto' model moved to a GPU later keeps the CPU's choice).
        memory_budget: bytes of trunk activations one ``forward`` may take (default None:
            ``nets.tiling.default_budget``, half the free memory of a GPU, half the system's
            available memory (at least 4 GiB) on the CPU). A pair whose untiled pass would need more
            runs tiled (``fastlpips.nets.tiling``): the trunk tile by tile with the halo its layers
            read, each tile's head maps reduced at once, the same numbers as the untiled pass (to
            rounding); with a graph, each tile is recomputed in the backward (gradient
            checkpointing). A budget below one tile's need raises ``TileBudgetError`` naming the
            minimum.
        max_tile: tile the forward pass whenever an image is larger than this (a side, or
            (height, width), in input pixels), whatever the budget.

    Forward: ``forward(in0, in1, retPerLayer=False, normalize=False)`` with images (N, 3, H, W)
    in [-1, 1] ([0, 1] with ``normalize=True``); batch 1 broadcasts against N. Returns (N, 1, 1, 1)
    (or (N, 1, H, W) with ``spatial=True``), and the per-layer list with ``retPerLayer=True``.

    Example::

        >>> import fastlpips as lpips
        >>> loss_fn = lpips.LPIPS(net='alex')
        >>> d = loss_fn(img0, img1)            # (N, 1, 1, 1)
    """

    lin0: NetLinLayer  # lin0 .. lin{L-1}: set with setattr in __init__ (lpips=True only)

    def __init__(self, pretrained: bool = True, net: str = "alex", version: str = "0.1", lpips: bool = True,
                 spatial: bool = False, pnet_rand: bool = False, pnet_tune: bool = False, use_dropout: bool = True,
                 model_path: Optional[Union[str, os.PathLike]] = None, eval_mode: bool = True, verbose: bool = True,
                 *, trunk_path: Optional[Union[str, os.PathLike]] = None, check_inputs: bool = True,
                 backend: Optional[str] = None, dtype: Union[torch.dtype, str, None] = None,
                 device: Union[str, torch.device, None] = None, memory_budget: Optional[int] = None,
                 max_tile: Union[int, Tuple[int, int], None] = None) -> None:
        super().__init__()
        self.memory_budget = V.check_budget(memory_budget)
        self.max_tile = V.check_tile(max_tile)
        self._stack: Optional[tiling.LocalStack] = None
        if net not in _NETS:
            raise ValueError(f"unknown net={net!r}; expected one of 'alex', 'vgg', 'squeeze'")
        if version not in ("0.0", "0.1"):
            raise ValueError(f"unknown version={version!r}; expected '0.1' or '0.0'")
        if model_path is not None and lpips and not pretrained:
            raise ValueError("model_path is only read with pretrained=True (lpips ignores it otherwise); "
                             "pass pretrained=True or drop model_path")
        if verbose:
            logger.info("Setting up [%s] perceptual loss: trunk [%s], v[%s], spatial [%s]",
                        "LPIPS" if lpips else "baseline", net, version, "on" if spatial else "off")
        self.pnet_type = net
        self.pnet_tune = pnet_tune
        self.pnet_rand = pnet_rand
        self.spatial = spatial
        self.lpips = lpips
        self.version = version
        self.check_inputs = check_inputs
        self.backend = backend
        dtype = resolve_dtype(dtype, device, net=net, grad=pnet_tune)
        self.compute_dtype = dtype
        self.scaling_layer = ScalingLayer()
        self.chns = list(_NETS[net])
        self.L = len(self.chns)
        self.net = build_trunk(net)
        self._net_name = "vgg" if net == "vgg16" else net
        self._min_size = self.net.min_input_size()
        self._warned: dict = {}
        if lpips:
            for k, c in enumerate(self.chns):
                setattr(self, f"lin{k}", NetLinLayer(c, use_dropout=use_dropout))
            self.lins = nn.ModuleList([getattr(self, f"lin{k}") for k in range(self.L)])

        trunk_loaded = False
        if model_path is not None:
            trunk_loaded = self._load_model_path(model_path, verbose)
        if not trunk_loaded and not pnet_rand:
            source = load_trunk_state(self.net, self._net_name, trunk_path)
            if verbose:
                logger.info("Loaded %s trunk weights from %s", net, source)
        elif trunk_path is not None:
            raise ValueError("trunk_path given but the trunk is random (pnet_rand=True) or comes from model_path")
        if lpips and pretrained and model_path is None:
            lin = load_lin_weights("lpips", f"v{version}_{self._net_name}")
            for k in range(self.L):
                cast(NetLinLayer, self.lins[k]).weight.data.copy_(lin[f"lin{k}"])
            if verbose:
                logger.info("Loaded LPIPS v%s %s linear weights (package data)", version, net)

        for p in self.net.parameters():
            p.requires_grad_(pnet_tune)
        self.net.to(memory_format=torch.channels_last)
        if dtype is not None:
            self.net.to(dtype)
        if eval_mode:
            self.eval()
        if device is not None:
            self.to(device)

    # -- loading ----------------------------------------------------------------------------------
    def _load_model_path(self, model_path, verbose: bool) -> bool:
        """Strictly load a lin-only or full lpips state dict; returns whether it held the trunk."""
        if os.path.isdir(model_path):
            raise WeightError(f"model_path {model_path} is a directory; give the state dict file (.pth)")
        if not os.path.isfile(model_path):
            raise FileNotFoundError(f"model_path {model_path} does not exist")
        sd = read_state_dict(model_path)
        canon: Dict[str, torch.Tensor] = {}
        for key, val in sd.items():
            c = key
            if key.startswith("lins."):
                k, rest = key[len("lins."):].split(".", 1)
                c = f"lin{k}.{rest}"
            c = c.replace(".model.0.weight", ".model.1.weight") if c.startswith("lin") else c
            if c in canon and not torch.equal(canon[c], val):
                raise WeightError(f"{model_path}: {key} disagrees with the duplicate entry {c}")
            canon[c] = val
        own = {k: v for k, v in self.state_dict().items() if not k.startswith("lins.")}
        unexpected = sorted(set(canon) - set(own))
        if unexpected:
            what = " (this model has lpips=False: no lin layers)" if not self.lpips and any(
                k.startswith("lin") for k in unexpected) else ""
            raise WeightError(f"{model_path}: unexpected keys {unexpected}{what}")
        lin_keys = {k for k in own if k.startswith("lin")}
        net_keys = {k for k in own if k.startswith("net.")}
        missing_lin = sorted(lin_keys - set(canon))
        if missing_lin:
            raise WeightError(f"{model_path}: missing keys {missing_lin}")
        has_net = net_keys & set(canon)
        if has_net and has_net != net_keys:
            raise WeightError(f"{model_path}: partial trunk, missing keys {sorted(net_keys - has_net)}")
        bad = [f"{k}: {tuple(v.shape)} (expected {tuple(own[k].shape)})" for k, v in canon.items()
               if tuple(v.shape) != tuple(own[k].shape)]
        if bad:
            raise WeightError(f"{model_path}: wrong shapes " + ", ".join(bad))
        result = self.load_state_dict(canon, strict=False)
        assert not result.unexpected_keys, result
        if verbose:
            logger.info("Loading model from: %s", model_path)
        return bool(has_net)

    # -- helpers ----------------------------------------------------------------------------------
    @property
    def _ref(self) -> torch.Tensor:
        return self.scaling_layer.shift

    def _check(self, x: torch.Tensor, name: str, normalize: bool, *, basic: bool = True) -> None:
        """Shape, dtype, device and size checks (always: no device sync); the value scan (NaN/Inf,
        range) only with ``check_inputs=True``."""
        if basic:
            V.check_image(x, name)
        V.check_model_match(x, self._ref.device, x.dtype if self.compute_dtype else self._ref.dtype, name)
        V.check_size(x, self._min_size, f"the {self.pnet_type} trunk", name)
        if self.check_inputs:
            V.check_values(x, name, 0.0 if normalize else -1.0, 1.0, self._warned)

    @property
    def _feature_source(self) -> str:
        return f"{self.pnet_type} v{self.version}"

    def _trunk_input(self, x: torch.Tensor, normalize: bool) -> torch.Tensor:
        if normalize:
            x = 2 * x - 1
        if self.version == "0.1":
            x = self.scaling_layer(x.to(self._ref.dtype) if self.compute_dtype else x)
        if self.compute_dtype is not None:
            x = x.to(self.compute_dtype)
        return x.contiguous(memory_format=torch.channels_last)

    def _needs_graph(self, x: torch.Tensor) -> bool:
        return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.net.parameters()))

    def _trunk(self, x: torch.Tensor, grad: bool) -> List[torch.Tensor]:
        with torch.set_grad_enabled(grad):
            return list(self.net(x))

    def _trunk_pair(self, in0: torch.Tensor, in1: torch.Tensor, normalize: bool):
        x0, x1 = self._trunk_input(in0, normalize), self._trunk_input(in1, normalize)
        g0, g1 = self._needs_graph(in0), self._needs_graph(in1)
        if x0.shape == x1.shape and g0 == g1:
            outs = self._trunk(torch.cat([x0, x1]), g0)
            n = x0.shape[0]
            return [o[:n] for o in outs], [o[n:] for o in outs]
        return self._trunk(x0, g0), self._trunk(x1, g1)

    def _lin_weight(self, k: int) -> Optional[torch.Tensor]:
        return cast(NetLinLayer, self.lins[k]).weight if self.lpips else None

    def _dropout(self) -> float:
        """lpips' dropout before the lin layers: active in train mode with use_dropout=True."""
        if self.lpips and self.training and isinstance(self.lin0.model[0], nn.Dropout):
            return self.lin0.model[0].p
        return 0.0

    def _reduce_map(self, m: torch.Tensor, out_hw) -> torch.Tensor:
        """A layer's (N, 1, h, w) map -> (N, 1, H, W) upsampled (spatial) or (N, 1, 1, 1) mean."""
        return upsample(m, out_HW=out_hw) if self.spatial else m.mean([2, 3], keepdim=True)

    @staticmethod
    def _total(res: List[torch.Tensor], retPerLayer: bool):
        val = res[0]  # summed in layer order, as lpips does
        for r in res[1:]:
            val = val + r
        return (val, res) if retPerLayer else val

    def _combine_normalized(self, n0: Sequence[torch.Tensor], n1: Sequence[torch.Tensor], out_hw, retPerLayer: bool):
        """The layers' distances from channel-normalized features (``LPIPSFeatures``)."""
        return self._total([self._reduce_map(weighted_channel_sum((n0[k] - n1[k]).square(), self._lin_weight(k)),
                                             out_hw) for k in range(self.L)], retPerLayer)

    # -- public -----------------------------------------------------------------------------------
    def forward(self, in0: torch.Tensor, in1: torch.Tensor, retPerLayer: bool = False, normalize: bool = False):
        V.check_image(in0, "in0")
        V.check_image(in1, "in1")
        V.check_pair(in0, in1)
        self._check(in0, "in0", normalize, basic=False)
        self._check(in1, "in1", normalize, basic=False)
        if 0 in (in0.shape[0], in1.shape[0]):  # an empty batch against batch 1 broadcasts to empty
            in0, in1 = in0[:0], in1[:0]
        grad = self._needs_graph(in0) or self._needs_graph(in1)
        tile = self._tile(in0.shape[2], in0.shape[3], 2 * max(in0.shape[0], in1.shape[0]), grad, in0.device)
        if tile is not None:
            return self._tiled_forward(in0, in1, normalize, retPerLayer, tile, grad)
        outs0, outs1 = self._trunk_pair(in0, in1, normalize)
        return self._heads(outs0, outs1, in0.shape[2:], retPerLayer)

    # -- tiled passes (large images) --------------------------------------------------------------
    def local_stack(self) -> tiling.LocalStack:
        """The trunk as ``nets.tiling`` runs it: its layers in order, the slice outputs compared
        (made once: it remembers its tile choices)."""
        if self._stack is None:
            ends, layers = [], []
            for sl in self.net.slices:
                layers += list(sl)
                ends.append(len(layers))
            self._stack = tiling.LocalStack(layers, ends)
        return self._stack

    def _tile(self, height: int, width: int, batch: int, grad: bool, device) -> Optional[Tuple[int, int]]:
        """The tile of a pass over ``batch`` images of height x width: ``max_tile`` when an image is
        larger, else by the memory budget (None: untiled)."""
        return self.local_stack().tile_for(height, width, batch, (self.compute_dtype or self._ref.dtype).itemsize,
                                           grad, max_tile=self.max_tile, budget=self.memory_budget, device=device,
                                           what=f"the {self.pnet_type} trunk")

    def _tiled_forward(self, in0: torch.Tensor, in1: torch.Tensor, normalize: bool, retPerLayer: bool,
                       tile: Tuple[int, int], grad: bool):
        n = max(in0.shape[0], in1.shape[0])
        in0, in1 = in0.expand(n, -1, -1, -1), in1.expand(n, -1, -1, -1)
        height, width = in0.shape[2], in0.shape[3]
        stack = self.local_stack()
        sizes, tiles = stack.sizes(height, width), stack.plan(height, width, tile)
        backend = resolve(in0.device, self.backend)
        if self.compute_dtype is not None:
            warn_if_slow(self.compute_dtype, in0.device)
        dropout = self._dropout()

        def one_tile(t: tiling.Tile, a: torch.Tensor, b: torch.Tensor) -> List[torch.Tensor]:
            maps: List[Optional[torch.Tensor]] = [None] * self.L

            def source(r, c) -> torch.Tensor:
                return torch.cat([self._trunk_input(a[:, :, r[0]:r[1], c[0]:c[1]], normalize),
                                  self._trunk_input(b[:, :, r[0]:r[1], c[0]:c[1]], normalize)])

            def emit(k: int, f: torch.Tensor) -> None:
                m = lpips_head_map(f[:n], f[n:], self._lin_weight(k), backend=backend, dropout=dropout)
                maps[k] = m if self.spatial else m.sum((2, 3), keepdim=True)

            stack.run(t, source, emit, sizes)
            empty = (n, 1, 0, 0) if self.spatial else (n, 1, 1, 1)
            return [m if m is not None else in0.new_zeros(empty) for m in maps]

        # the lin layers' weights may want a gradient too: their head saves the features, so the
        # tiles are recomputed in the backward as for the trunk's (the trunk without a graph)
        heads = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        parts = tiling.run_tiles(tiles, one_tile, [in0, in1], grad or heads, self.memory_budget)
        res = []
        for k in range(self.L):
            blocks = [p[k] for p in parts]
            if self.spatial:
                res.append(upsample(tiling.assemble(tiles, k, blocks), out_HW=(height, width)))
            else:
                h, w = sizes[stack.outputs[k]]
                res.append(torch.stack(blocks).sum(0) / (h * w))
        return self._total(res, retPerLayer)

    def _heads(self, outs0: Sequence[torch.Tensor], outs1: Sequence[torch.Tensor], out_hw, retPerLayer: bool):
        backend = resolve(outs0[0].device, self.backend)
        if self.compute_dtype is not None:
            warn_if_slow(self.compute_dtype, outs0[0].device)
        dropout = self._dropout()
        # one head path: the fused op (fastlpips.ops.head) for every layer, any backend
        return self._total([self._reduce_map(lpips_head_map(outs0[k], outs1[k], self._lin_weight(k), backend=backend,
                                                            dropout=dropout), out_hw)
                            for k in range(self.L)], retPerLayer)

    def distances(self, reference: torch.Tensor, images: Sequence[torch.Tensor], *, normalize: bool = False,
                  retPerLayer: bool = False) -> tuple:
        """``(forward(reference, images[0]), forward(reference, images[1]), ...)`` with one trunk
        pass over all of them: the reference's features are computed once (a 2AFC triplet: 3 trunk
        batches instead of 4). Every image batch has the reference's shape. In train mode the
        dropout masks are drawn in the same order as the separate ``forward`` calls."""
        V.check_image(reference, "reference")
        self._check(reference, "reference", normalize, basic=False)
        for i, x in enumerate(images):
            V.check_image(x, f"images[{i}]")
            if x.shape != reference.shape:
                raise ValueError(f"images[{i}] has shape {tuple(x.shape)}; the reference has {tuple(reference.shape)}")
            self._check(x, f"images[{i}]", normalize, basic=False)
        members = [reference] + list(images)
        grad = any(self._needs_graph(x) for x in members)
        outs = self._trunk(torch.cat([self._trunk_input(x, normalize) for x in members]), grad)
        parts = [o.chunk(len(members)) for o in outs]
        ref = [p[0] for p in parts]
        return tuple(self._heads(ref, [p[i] for p in parts], reference.shape[2:], retPerLayer)
                     for i in range(1, len(members)))

    def distances_to(self, references: torch.Tensor, images: torch.Tensor, index: torch.Tensor, *,
                     normalize: bool = False) -> torch.Tensor:
        """``forward(references[index], images)`` with one trunk pass over the R references and the
        N images: a reference's features are computed once however many images ``index`` points
        at it (several methods' outputs against one ground truth), then the fused heads. ``index``:
        (N,) integer positions in 0..R-1. Returns what ``forward`` returns for that pairing. Images
        too large for the memory budget run as tiled ``forward`` passes of each pair instead."""
        V.check_image(references, "references")
        V.check_image(images, "images")
        if references.shape[1:] != images.shape[1:]:
            raise ValueError(f"references have shape {tuple(references.shape[1:])} per image, images "
                             f"{tuple(images.shape[1:])}; they must be one size")
        if not isinstance(index, torch.Tensor) or index.dtype not in (torch.int64, torch.int32) or \
                index.shape != (images.shape[0],):
            raise ValueError(f"index must be an integer tensor of shape ({images.shape[0]},), got "
                             f"{getattr(index, 'dtype', type(index).__name__)} {tuple(getattr(index, 'shape', ()))}")
        if len(index) and (int(index.min()) < 0 or int(index.max()) >= references.shape[0]):
            raise ValueError(f"index holds positions outside 0..{references.shape[0] - 1}")
        self._check(references, "references", normalize, basic=False)
        self._check(images, "images", normalize, basic=False)
        grad = self._needs_graph(references) or self._needs_graph(images)
        tile = self._tile(images.shape[2], images.shape[3], 2 * images.shape[0], grad, images.device)
        if tile is not None:  # large images: each pair tiled, the reference's tiles recomputed per image
            return self._tiled_forward(references.index_select(0, index.to(references.device, torch.long)), images,
                                       normalize, False, tile, grad)
        r = references.shape[0]
        outs = self._trunk(torch.cat([self._trunk_input(references, normalize), self._trunk_input(images, normalize)]),
                           grad)
        index = index.to(device=outs[0].device, dtype=torch.long)
        # gather on the channels-last (NHWC) view: a row copy (index_select on the NCHW view of a
        # channels-last tensor takes a strided path ~7x slower on the CPU, measured here)
        refs = [o[:r].permute(0, 2, 3, 1).index_select(0, index).permute(0, 3, 1, 2) for o in outs]
        return self._heads(refs, [o[r:] for o in outs], images.shape[2:], False)

    def features(self, x: torch.Tensor, *, normalize: bool = False, name: str = "x",
                 norm: str = "lpips") -> LPIPSFeatures:
        """Channel-normalized trunk features of ``x`` (N, 3, H, W), to compare many times.
        ``norm``: 'lpips' (``f / (||f|| + 1e-10)``, what ``forward`` computes) or 'torchmetrics'
        (``f / sqrt(||f||^2 + 1e-8)``, torchmetrics' LPIPS; see ``fastlpips.torchmetrics``)."""
        if norm not in ("lpips", "torchmetrics"):
            raise ValueError(f"norm must be 'lpips' or 'torchmetrics', got {norm!r}")
        self._check(x, name, normalize)
        outs = self._trunk(self._trunk_input(x, normalize), self._needs_graph(x))
        fn = normalize_channels if norm == "lpips" else normalize_channels_root
        return LPIPSFeatures([fn(o) for o in outs], x.shape[2:], self._feature_source)

    def _check_features(self, f, name: str) -> None:
        """Features made by a model of this trunk and version (``LPIPSFeatures``, layer shapes)."""
        if not isinstance(f, LPIPSFeatures):
            raise TypeError(f"{name} must be LPIPSFeatures from model.features(...), got {type(f).__name__}")
        if f.source is not None and f.source != self._feature_source:
            raise ValueError(f"{name} are features of a {f.source} model; this model is {self._feature_source}")
        chns = [m.shape[1] if m.dim() == 4 else None for m in f.maps]
        if chns != self.chns:
            raise ValueError(f"{name} hold layers with channels {chns}; this {self.pnet_type} model has {self.chns}")

    def compare_features(self, feats0: LPIPSFeatures, feats1: LPIPSFeatures, *, retPerLayer: bool = False):
        """Distances between precomputed features (batch 1 broadcasts): same output as ``forward``."""
        self._check_features(feats0, "feats0")
        self._check_features(feats1, "feats1")
        if feats0.size != feats1.size:
            raise ValueError(f"features come from images of different sizes {feats0.size} and {feats1.size}")
        if len(feats0) != len(feats1) and 1 not in (len(feats0), len(feats1)):
            raise ValueError(f"feature batches of {len(feats0)} and {len(feats1)} differ and neither is 1")
        return self._combine_normalized(feats0.maps, feats1.maps, feats0.size, retPerLayer)

    def pairwise(self, x: torch.Tensor, y: Optional[torch.Tensor] = None, *, normalize: bool = False,
                 batch_size: int = 64, max_elements: int = 1 << 26,
                 progress: Optional[Callable[[int], None]] = None) -> torch.Tensor:
        """Distance matrix D[i, j] = LPIPS(x[i], y[j]) of shape (N, M) (``y=None``: all pairs of x;
        an empty x or y gives an empty matrix).

        Every image goes through the trunk once (in batches of ``batch_size``); the heads of all
        pairs are evaluated in blocks of at most ``max_elements`` elements. With ``y=None`` only
        the upper triangle is computed (D is symmetric with a zero diagonal). ``progress(n)`` is
        called after each trunk batch with the number of images it held (e.g. a tqdm ``update``).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if self.spatial:
            raise ValueError("pairwise() returns mean distances; build the model with spatial=False")
        fx = self._batched_features(x, normalize, batch_size, "x", progress)
        fy = None if y is None else self._batched_features(y, normalize, batch_size, "y", progress)
        return self.pairwise_features(fx, fy, max_elements=max_elements)

    def pairwise_features(self, fx: LPIPSFeatures, fy: Optional[LPIPSFeatures] = None, *,
                          max_elements: int = 1 << 26) -> torch.Tensor:
        """``pairwise`` on precomputed features (``fy=None``: all pairs of fx)."""
        if self.spatial:
            raise ValueError("pairwise() returns mean distances; build the model with spatial=False")
        self._check_features(fx, "fx")
        sym = fy is None
        fy = fx if fy is None else fy
        if not sym:
            self._check_features(fy, "fy")
        if fx.size != fy.size:
            raise ValueError(f"x and y have different spatial sizes {fx.size} and {fy.size}")
        n, m = len(fx), len(fy)
        out = torch.zeros(n, m, dtype=fx.maps[0].dtype, device=fx.maps[0].device)
        if n == 0 or m == 0:  # an empty side: an empty (N, M) matrix
            return out
        per_pair = sum(t[0].numel() for t in fy.maps)
        rows = max(1, min(n, max_elements // max(per_pair * m, 1)))
        for i0 in range(0, n, rows):
            i1 = min(n, i0 + rows)
            j0 = i0 if sym else 0
            block = None
            for k in range(self.L):
                # every (row, column) pair of the block as one batch of squared differences
                d = (fx.maps[k][i0:i1].unsqueeze(1) - fy.maps[k][j0:].unsqueeze(0)).square()
                v = weighted_channel_sum(d.flatten(0, 1), self._lin_weight(k))
                v = v.mean((1, 2, 3)).view(d.shape[:2])
                block = v if block is None else block + v
            assert block is not None  # self.L >= 1 layers
            if sym:
                block = torch.triu(block, diagonal=1)  # row r's diagonal entry sits in column r
            out[i0:i1, j0:] = block
        return out + out.transpose(0, 1) if sym else out

    def _batched_features(self, x: torch.Tensor, normalize: bool, batch_size: int, name: str,
                          progress: Optional[Callable[[int], None]] = None) -> LPIPSFeatures:
        V.check_image(x, name)
        parts = []
        for i in range(0, max(x.shape[0], 1), batch_size):
            parts.append(self.features(x[i:i + batch_size], normalize=normalize, name=name))
            if progress is not None:
                progress(len(parts[-1]))
        return LPIPSFeatures.cat(parts)
