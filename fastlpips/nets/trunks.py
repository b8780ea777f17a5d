"""ImageNet trunks (AlexNet, VGG16, VGG19, SqueezeNet1.1 feature stacks) without torchvision.

Each trunk is laid out exactly like the ``net`` module of ``lpips.LPIPS`` 0.1.4: ``slice{k}``
``nn.Sequential`` blocks whose children keep the index they have in torchvision's ``.features``,
so state-dict keys (``slice2.3.weight`` ...) are interchangeable with ``lpips`` checkpoints and
torchvision's ``features.3.weight`` maps one-to-one. The forward pass returns the ReLU output at
the end of every slice as a namedtuple with ``lpips``' field names (VGG19, which ``lpips`` lacks,
follows VGG16: one slice per block, ``relu1_2, relu2_2, relu3_4, relu4_4, relu5_4``).
``relu_outputs(x, names)`` returns any ReLU output by name (``relu_indices``: every ReLU of the
VGGs, ``relu2_1`` ...; the slice outputs of the others), running the trunk only as deep as needed.
"""
from __future__ import annotations

from collections import OrderedDict, namedtuple
from typing import Any, Dict, List, Mapping, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AlexNet", "VGG16", "VGG19", "SqueezeNet", "Fire", "TRUNKS", "build_trunk", "TransformConv2d",
           "nnpack_enabled", "L2Pool"]


class Fire(nn.Module):
    """SqueezeNet fire module (squeeze 1x1 -> expand 1x1 and 3x3, concatenated)."""

    def __init__(self, inplanes: int, squeeze: int, expand1x1: int, expand3x3: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(inplanes, squeeze, kernel_size=1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, kernel_size=1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, kernel_size=3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat(
            [self.expand1x1_activation(self.expand1x1(x)), self.expand3x3_activation(self.expand3x3(x))], 1
        )


_NNPACK = None  # None: not probed yet; then True / False


def nnpack_enabled() -> bool:
    """Whether ``TransformConv2d`` may use NNPACK here: the torch build has it (probing also
    initializes it; its convolution fails before that) and ``FASTLPIPS_NNPACK`` is not ``0``."""
    global _NNPACK
    if _NNPACK is None:
        import os

        _NNPACK = os.environ.get("FASTLPIPS_NNPACK", "1") != "0" and bool(torch._nnpack_available())
    return _NNPACK


class TransformConv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters and state-dict keys) whose gradient-free CPU float32 forward
    on batches of >= 4 maps of >= 24x24 runs NNPACK's transform-domain (FFT) convolution instead
    of oneDNN's direct one: AlexNet's 5x5 conv2 on 31x31 maps (256x256 images) in 2.3 ms instead
    of 5.3 ms per image (batch 24, 2-core AVX2), layout conversions included; slower on small maps
    and batches, hence the bounds. Differences from the direct convolution: ~2e-6 of the output's
    scale (LPIPS parity with ``lpips`` stays within its 1e-5, tested at 200x200). Anything else
    (a graph, forward-mode AD, other devices or dtypes) takes ``nn.Conv2d``'s path; the choice
    depends only on shapes, so results do not depend on timing. ``FASTLPIPS_NNPACK=0`` turns it off."""

    def _transform_domain(self, x: torch.Tensor) -> bool:
        return (x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4 and x.shape[0] >= 4
                and x.shape[2] * x.shape[3] >= 576 and self.groups == 1 and self.dilation == (1, 1)
                and self.padding_mode == "zeros" and isinstance(self.padding, tuple)
                and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))
                and not torch._C._functorch.is_functorch_wrapped_tensor(x)
                and not torch._C._functorch.is_functorch_wrapped_tensor(self.weight)
                and torch.autograd.forward_ad.unpack_dual(x).tangent is None
                and not torch.compiler.is_compiling()
                and nnpack_enabled())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._transform_domain(x):
            return super().forward(x)
        padding: Tuple[int, int] = self.padding  # type: ignore[assignment]  # a tuple here (never 'same')
        y = torch._nnpack_spatial_convolution(x.contiguous(), self.weight.contiguous(), self.bias,
                                              list(padding), list(self.stride))
        return y.contiguous(memory_format=torch.channels_last) if x.is_contiguous(
            memory_format=torch.channels_last) and not x.is_contiguous() else y


def _alexnet_features() -> List[nn.Module]:
    return [
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        TransformConv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
    ]


# torchvision's VGG configurations up to the last conv+ReLU (the final max pool is not part of the trunk).
_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
_VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512)


def _vgg_features(cfg: Sequence) -> List[nn.Module]:
    layers: List[nn.Module] = []
    in_ch = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_ch, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            in_ch = v
    return layers


def _vgg_relu_indices(cfg: Sequence) -> Dict[str, int]:
    """``relu{block}_{k}`` -> its index in torchvision's ``.features`` (conv1_1 is 0, relu1_1 is 1)."""
    names: Dict[str, int] = {}
    idx, block, k = 0, 1, 0
    for v in cfg:
        if v == "M":
            idx, block, k = idx + 1, block + 1, 0
        else:
            k += 1
            names[f"relu{block}_{k}"] = idx + 1
            idx += 2
    return names


def _squeezenet1_1_features() -> List[nn.Module]:
    return [
        nn.Conv2d(3, 64, kernel_size=3, stride=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
        Fire(64, 16, 64, 64), Fire(128, 16, 64, 64),
        nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
        Fire(128, 32, 128, 128), Fire(256, 32, 128, 128),
        nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
        Fire(256, 48, 192, 192), Fire(384, 48, 192, 192), Fire(384, 64, 256, 256), Fire(512, 64, 256, 256),
    ]


class L2Pool(nn.Module):
    """DISTS' L2 pooling: sqrt(conv(x^2, g) + 1e-12), g the normalized outer product of
    (0.5, 1, 0.5) per channel, stride 2, padding 1 (out = ceil(in / 2)). A depthwise convolution:
    in channels_last it is 2x faster on the CPU than separable strided sums (measured here)."""

    kernel_size, stride, padding = 3, 2, 1  # its window (``nets.tiling`` reads it)

    def __init__(self) -> None:
        super().__init__()
        a = torch.tensor([0.5, 1.0, 0.5], dtype=torch.float64)
        g = a[:, None] * a[None, :]
        self.register_buffer("filter", (g / g.sum()).float()[None, None], persistent=False)
        self.filter: torch.Tensor

    def forward(self, x: torch.Tensor, padding: int = 1) -> torch.Tensor:
        """The pooling; ``padding=0`` for a tiled pass, which pads its crops itself."""
        c = x.shape[1]
        half = x.dtype == torch.float16  # 1e-12 underflows to 0 (sqrt(0): infinite gradients), x*x overflows
        h = x.float() if half else x
        w = self.filter.to(h.dtype).expand(c, 1, 3, 3)
        out = (F.conv2d(h * h, w, stride=2, padding=padding, groups=c) + 1e-12).sqrt()
        return out.to(x.dtype) if half else out


class _Trunk(nn.Module):
    """Feature stack cut into slices; subclasses define the layers and slice bounds."""

    # (start, stop) indices into torchvision's ``.features`` for every slice.
    slice_bounds: Sequence[Tuple[int, int]] = ()
    channels: Sequence[int] = ()
    output_names: Sequence[str] = ()
    torchvision_name: str = ""
    # name -> torchvision ``.features`` index of every ReLU output ``relu_outputs`` can return;
    # by default the slice outputs (filled in by __init_subclass__ when a subclass sets none).
    relu_indices: Mapping[str, int] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "relu_indices" not in cls.__dict__:
            cls.relu_indices = {n: b - 1 for n, (_, b) in zip(cls.output_names, cls.slice_bounds)}

    def __init__(self, features: List[nn.Module]) -> None:
        super().__init__()
        for k, (a, b) in enumerate(self.slice_bounds, start=1):
            self.add_module(f"slice{k}", nn.Sequential(OrderedDict((str(i), features[i]) for i in range(a, b))))
        self.N_slices = len(self.slice_bounds)
        self._outputs = namedtuple(type(self).__name__ + "Outputs", list(self.output_names))  # type: ignore[misc]
        self.reset_parameters()

    @property
    def slices(self) -> List[nn.Sequential]:
        return [getattr(self, f"slice{k}") for k in range(1, self.N_slices + 1)]

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                m.reset_parameters()

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        outs = []
        for s in self.slices:
            x = s(x)
            outs.append(x)
        return self._outputs(*outs)

    def relu_outputs(self, x: torch.Tensor, names: Sequence[str]) -> Dict[str, torch.Tensor]:
        """The outputs of the named ReLUs (e.g. ``('relu2_2', 'relu5_4')``), as a dict in the order
        of ``names``; the trunk runs only up to the deepest one. Names: ``relu_indices``."""
        names = [names] if isinstance(names, str) else list(names)
        unknown = [n for n in names if n not in self.relu_indices]
        if not names:
            raise ValueError(f"no layer names given; {type(self).__name__} has {list(self.relu_indices)}")
        if unknown:
            raise ValueError(f"unknown layer names {unknown} for {type(self).__name__}; "
                             f"expected some of {list(self.relu_indices)}")
        wanted = {self.relu_indices[n]: n for n in names}
        last = max(wanted)
        got: Dict[str, torch.Tensor] = {}
        for s in self.slices:
            for key, m in s.named_children():
                x = m(x)  # in-place ReLUs rewrite a conv output, never a kept ReLU output
                idx = int(key)
                if idx in wanted:
                    got[wanted[idx]] = x
                if idx == last:
                    return {n: got[n] for n in names}
        raise AssertionError("unreachable: every relu index lies inside the trunk")  # pragma: no cover

    # -- geometry -------------------------------------------------------------------------
    def output_size(self, size: int) -> List[int]:
        """Spatial size of every slice output for an input side of ``size`` pixels (0 = empty)."""
        sizes = []
        for s in self.slices:
            for m in s.modules():
                if isinstance(m, (nn.Conv2d, nn.MaxPool2d)):
                    size = _window_output(size, _int(m.kernel_size), _int(m.stride), _int(m.padding),
                                          getattr(m, "ceil_mode", False))
            sizes.append(size)
        return sizes

    def min_input_size(self) -> int:
        """Smallest input side for which every slice output is non-empty."""
        for n in range(1, 1024):
            if min(self.output_size(n)) >= 1:
                return n
        raise RuntimeError("trunk geometry has no valid input size below 1024")  # pragma: no cover


def _int(v: Union[int, str, Tuple[int, ...]]) -> int:  # torch's types of kernel_size/stride/padding (str: never here)
    return int(v[0]) if isinstance(v, tuple) else int(v)


def _window_output(size: int, k: int, stride: int, pad: int, ceil_mode: bool) -> int:
    """Output length of a conv/pool window along one axis, PyTorch's formula (0 when empty)."""
    if size <= 0:
        return 0
    num = size + 2 * pad - (k - 1) - 1 + (stride - 1 if ceil_mode else 0)
    if num < 0:
        return 0
    out = num // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:  # last window would start in the right padding
        out -= 1
    return max(out, 0)


class AlexNet(_Trunk):
    slice_bounds = ((0, 2), (2, 5), (5, 8), (8, 10), (10, 12))
    channels = (64, 192, 384, 256, 256)
    output_names = ("relu1", "relu2", "relu3", "relu4", "relu5")
    torchvision_name = "alexnet"

    def __init__(self) -> None:
        super().__init__(_alexnet_features())


class _VGG(_Trunk):
    """A VGG ``.features`` stack (no batch norm) with torchvision's initialisation."""

    def reset_parameters(self) -> None:
        # torchvision's VGG initialisation.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)


class VGG16(_VGG):
    slice_bounds = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))
    channels = (64, 128, 256, 512, 512)
    output_names = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
    torchvision_name = "vgg16"
    relu_indices = _vgg_relu_indices(_VGG16_CFG)

    def __init__(self) -> None:
        super().__init__(_vgg_features(_VGG16_CFG))


class VGG19(_VGG):
    """torchvision's ``vgg19().features`` up to relu5_4 (conv1_1 .. relu5_4, indices 0..35), one
    slice per block as VGG16; every ReLU by name through ``relu_outputs``."""

    slice_bounds = ((0, 4), (4, 9), (9, 18), (18, 27), (27, 36))
    channels = (64, 128, 256, 512, 512)
    output_names = ("relu1_2", "relu2_2", "relu3_4", "relu4_4", "relu5_4")
    torchvision_name = "vgg19"
    relu_indices = _vgg_relu_indices(_VGG19_CFG)

    def __init__(self) -> None:
        super().__init__(_vgg_features(_VGG19_CFG))


class SqueezeNet(_Trunk):
    slice_bounds = ((0, 2), (2, 5), (5, 8), (8, 10), (10, 11), (11, 12), (12, 13))
    channels = (64, 128, 256, 384, 384, 512, 512)
    output_names = ("relu1", "relu2", "relu3", "relu4", "relu5", "relu6", "relu7")
    torchvision_name = "squeezenet1_1"

    def __init__(self) -> None:
        super().__init__(_squeezenet1_1_features())

    def reset_parameters(self) -> None:
        # torchvision's SqueezeNet initialisation (the classifier conv is not part of the trunk).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)


TRUNKS: Dict[str, type] = {"alex": AlexNet, "vgg": VGG16, "vgg16": VGG16, "vgg19": VGG19, "squeeze": SqueezeNet}


def build_trunk(net: str) -> _Trunk:
    try:
        return TRUNKS[net]()
    except KeyError:
        raise ValueError(f"unknown trunk net={net!r}; expected one of 'alex', 'vgg', 'vgg19', 'squeeze'") from None
