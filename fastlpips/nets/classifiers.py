"""Classifiers for Perceptual Adversarial Training without torchvision: the (post-activation)
ResNet for 32x32 inputs that perceptual-advex (through the ``robustness`` library) trains on
CIFAR-10 (3x3 stem, no max-pool, BasicBlocks in four stages of 64/128/256/512 channels, global
average pool, linear head), with the input normalization inside the model so it takes images in
[0, 1] like every attack here.

``resnet18_32(num_classes)`` is the ResNet-18 of that family (the paper trains ResNet-50s);
``ResNet32(blocks=(1, 1, 1, 1), width=8)`` is the tiny one the tests and the worked example train
in seconds. The stage outputs ``layer1`` ... ``layer4`` are the self-bounded distance's layers
(``SELF_BOUND_LAYERS``, as perceptual-advex's CifarResNetFeatureModel).

``ResNet50`` is torchvision's ImageNet ResNet-50 (v1.5: the stride in the 3x3 convolution) with the
same parameter names, and ImageNet's input normalization inside, so it takes [0, 1] images;
``load_imagenet_classifier(path)`` reads its weights pickle-free from a torchvision state dict,
a DataParallel or ``{'model' | 'state_dict': ...}`` checkpoint, or the robustness library's
``AttackerModel`` checkpoints (Uelwer et al.'s robust and standard ResNet-50s).
"""
from __future__ import annotations

import os
from typing import Any, Dict, Sequence, Tuple, Union, cast

import torch
from torch import nn
from torch.nn import functional as F

from .. import validation as V

__all__ = ["ResNet32", "resnet18_32", "SELF_BOUND_LAYERS", "CIFAR_MEAN", "CIFAR_STD", "ARCHS", "NORMS",
           "build_classifier", "ResNet50", "load_imagenet_classifier"]

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
SELF_BOUND_LAYERS = ("layer1", "layer2", "layer3", "layer4")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be 'batch', 'group' or 'none', got {kind!r}")


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = _norm(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = _norm(norm, cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _norm(norm, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet32(nn.Module):
    """ResNet for 32x32 images in [0, 1] -> logits (N, num_classes). ``blocks`` per stage,
    ``width`` channels in the first stage (doubling per stage), ``norm`` 'batch' (the paper's),
    'group' or 'none' (per-sample models: their training under torchrun does not depend on how
    the batch is split across processes). Other input sizes work (global average pooling)."""

    mean: torch.Tensor  # (1, 3, 1, 1) buffers: the normalization in front of the network
    std: torch.Tensor

    def __init__(self, num_classes: int = 10, *, blocks: Sequence[int] = (2, 2, 2, 2), width: int = 64,
                 norm: str = "batch", mean: Sequence[float] = CIFAR_MEAN, std: Sequence[float] = CIFAR_STD) -> None:
        super().__init__()
        V.check_positive_int(num_classes, "num_classes", minimum=2)
        if len(blocks) != 4:
            raise ValueError(f"blocks must be four ints >= 1, got {tuple(blocks)!r}")
        for i, b in enumerate(blocks):
            V.check_positive_int(b, f"blocks[{i}]")
        V.check_positive_int(width, "width")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = _norm(norm, width)
        stages, cin = [], width
        for i, n in enumerate(blocks):
            cout = width * 2**i
            layers = [BasicBlock(cin, cout, 1 if i == 0 else 2, norm)]
            layers += [BasicBlock(cout, cout, 1, norm) for _ in range(n - 1)]
            stages.append(nn.Sequential(*layers))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(cin, num_classes)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        h = F.relu(self.bn1(self.conv1(h)))
        h = self.layer4(self.layer3(self.layer2(self.layer1(h))))
        return self.linear(F.adaptive_avg_pool2d(h, 1).flatten(1))


def resnet18_32(num_classes: int = 10, **kw: Any) -> ResNet32:
    """ResNet-18 for 32x32 inputs (11.2 M parameters at 10 classes)."""
    return ResNet32(num_classes, blocks=(2, 2, 2, 2), width=64, **kw)


ARCHS = ("tiny", "resnet18")
NORMS = ("batch", "group", "none")


def build_classifier(arch: str, num_classes: int, norm: str = "batch") -> ResNet32:
    """The classifiers of ``fastlpips pat-train``: 'resnet18' (the paper's 32x32 ResNet-18) or
    'tiny' (one block per stage, 16 channels: the worked example's)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown classifier architecture {arch!r}; known: {', '.join(ARCHS)}")
    if norm not in NORMS:
        raise ValueError(f"unknown normalization {norm!r}; known: {', '.join(NORMS)}")
    V.check_positive_int(num_classes, "num_classes", minimum=2)
    if arch == "resnet18":
        return resnet18_32(num_classes, norm=norm)
    return ResNet32(num_classes, blocks=(1, 1, 1, 1), width=16, norm=norm)


class _Bottleneck(nn.Module):
    """torchvision's Bottleneck: 1x1, 3x3 (carrying the stride), 1x1 x4, batch norms, a projection
    of the shortcut where the shape changes."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes * 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet50(nn.Module):
    """torchvision's ResNet-50 (same parameter names) taking [0, 1] images: ImageNet's mean and
    standard deviation are applied inside (non-persistent buffers: the state dict is torchvision's)."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        from .weights import IMAGENET_MEAN, IMAGENET_STD

        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = 64
        for i, (planes, blocks, stride) in enumerate(((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)), start=1):
            layer = []
            for b in range(blocks):
                layer.append(_Bottleneck(inplanes, planes, stride if b == 0 else 1))
                inplanes = planes * 4
            setattr(self, f"layer{i}", nn.Sequential(*layer))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def load_imagenet_classifier(path: Union[str, os.PathLike],
                             device: Union[str, torch.device] = "cpu") -> Tuple[nn.Module, Dict[str, Any]]:
    """``(model, metadata)`` of a ResNet-50 weights file (see the module docstring), in eval mode on
    ``device``; metadata ``{'arch': 'resnet50', 'classes': ['0', ..., 'K-1'], 'size': None}`` (class
    indices as names; the number of classes from the file's ``fc``). Loaded strictly: WeightError
    names the file and the keys that do not fit."""
    from .weights import load_module

    def build(entry):
        fc = entry("fc.weight")  # the number of classes from the file's head (checked strictly below)
        return ResNet50(int(fc.shape[0]) if fc is not None and fc.dim() == 2 else 1000)

    model = cast(ResNet50, load_module(build, path, "classifier file"))
    classes = model.fc.out_features
    return model.to(device).eval(), {"arch": "resnet50", "classes": [str(i) for i in range(classes)], "size": None}
