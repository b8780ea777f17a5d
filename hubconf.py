"""torch.hub entry points of fastlpips.

    import torch
    lpips = torch.hub.load("<owner>/fastlpips", "lpips", net="vgg")      # or source="local" on a checkout
    d = lpips(x, y, normalize=True)                                     # x, y: (N, 3, H, W) in [0, 1]

The pure-torch path runs from the checkout as it is; the compiled CPU kernels run where the package
was built (``pip install -e .``). Weights: the linear layers ship with the code; ImageNet trunk
weights resolve offline from the caches ``fastlpips.nets.weights`` names (torch.hub's own
checkpoint folder among them), else they are downloaded once from torchvision's URLs.
"""
dependencies = ["torch", "numpy"]


def lpips(net: str = "alex", version: str = "0.1", **kwargs):
    """LPIPS (Zhang et al. 2018), ``fastlpips.LPIPS(net=net, version=version, **kwargs)`` in eval
    mode: ``model(x, y)`` on images in [-1, 1] (``normalize=True`` for [0, 1]) -> (N, 1, 1, 1).
    ``net``: 'alex' | 'vgg' | 'squeeze'; the keywords of ``fastlpips.LPIPS`` (``spatial``,
    ``model_path``, ``trunk_path``, ``backend``, ``dtype``, ``device``...)."""
    from fastlpips import LPIPS

    return LPIPS(net=net, version=version, verbose=False, **kwargs).eval()


def elpips(net: str = "vgg", n_samples: int = 1, **kwargs):
    """E-LPIPS (Kettunen et al. 2019), ``fastlpips.ELPIPS(net=net, n_samples=n_samples, **kwargs)``
    in eval mode: ``model(x, y)`` on images in [0, 1] -> (N,) averaged over ``n_samples`` random
    transformations (1: a loss; use more draws, or ``fastlpips.elpips_estimate``, for a metric)."""
    from fastlpips import ELPIPS

    return ELPIPS(net=net, n_samples=n_samples, **kwargs).eval()


def rlpips(checkpoint: str, **kwargs):
    """R-LPIPS (Ghazanfari et al. 2023): LPIPS-AlexNet with the adversarially trained weights of
    ``checkpoint`` (a path to an lpips-format state dict such as the R-LPIPS release's; nothing is
    downloaded), in eval mode; ``model(x, y)`` as for ``lpips``."""
    from fastlpips import LPIPS

    return LPIPS(net="alex", model_path=checkpoint, verbose=False, **kwargs).eval()


def dists(**kwargs):
    """DISTS (Ding et al. 2020), ``fastlpips.DISTS(**kwargs)`` in eval mode: ``model(x, y)`` on
    images in [0, 1] -> (N,) distances. Its alpha/beta weights are the release's, read from the
    copy torchmetrics bundles or ``weights_path=...`` (sha256 checked; nothing is downloaded)."""
    from fastlpips import DISTS

    return DISTS(**kwargs).eval()
