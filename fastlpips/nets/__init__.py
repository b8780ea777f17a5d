"""ImageNet trunks (``trunks``), their weights (``weights``), their kept linearization rules
(``linearize``) and the 32x32 classifiers (``classifiers``)."""
from __future__ import annotations

import os
from typing import Optional, Union

from .trunks import _Trunk, build_trunk
from .weights import load_trunk_state

__all__ = ["pretrained_trunk"]


def pretrained_trunk(net: str, path: Optional[Union[str, os.PathLike]] = None) -> _Trunk:
    """``build_trunk(net)`` with its weights loaded strictly (from ``path`` when given: torchvision,
    DataParallel or robustness-library checkpoints of e.g. adversarially trained trunks; else
    resolved as ``fastlpips.nets.weights`` describes), in eval mode with frozen parameters: a
    feature extractor for perceptual losses, e.g.
    ``pretrained_trunk('vgg19').relu_outputs(x, ['relu2_2', 'relu5_4'])``. Its input is an
    ImageNet-normalized image (``(x - IMAGENET_MEAN) / IMAGENET_STD`` for x in [0, 1])."""
    trunk = build_trunk(net)
    load_trunk_state(trunk, net, path)
    trunk.requires_grad_(False)
    return trunk.eval()
