"""fastlpips: fast, exact learned perceptual image metrics (LPIPS) in PyTorch.

``import fastlpips as lpips`` works for code written against the ``lpips`` package.
"""
from ._backend import BackendUnavailable, backends
from .classic import DSSIM, L2
from .dists import DISTS
from .elpips import ELPIPS, ELPIPSDraw
from .estimator import ELPIPSEstimate, elpips_estimate
from .evaluation import EvaluationResult, evaluate
from .functional import distance_matrix, get_model, lpips
from .losses import CombinedLoss, ELPIPSLoss, LPIPSLoss, PerceptualLoss, PixelLoss, TextureLoss
from .metrics import create_metric, list_metrics, metric_info
from .model import LPIPS, LPIPSFeatures, NetLinLayer, ScalingLayer
from .nets.tiling import TileBudgetError
from .nets.weights import WeightError
from .precision import PrecisionWarning
from .scoring import score_2afc_dataset, score_jnd_dataset, voc_ap
from .training import BCERankingLoss, Dist2LogitLayer, Trainer
from .utils import im2tensor, l2, load_image, normalize_tensor, psnr, read_image, spatial_average, tensor2im, upsample
from .validation import RangeWarning

__version__ = "0.1.0"

__all__ = [
    "lpips", "distance_matrix", "get_model", "backends", "BackendUnavailable", "ELPIPS", "ELPIPSDraw", "ELPIPSEstimate",
    "elpips_estimate", "LPIPS", "LPIPSFeatures", "NetLinLayer", "ScalingLayer", "WeightError", "RangeWarning",
    "PrecisionWarning", "TileBudgetError",
    "im2tensor", "tensor2im", "load_image", "read_image", "normalize_tensor", "spatial_average", "upsample", "l2",
    "psnr",
    "score_2afc_dataset", "score_jnd_dataset", "voc_ap", "L2", "DSSIM", "Trainer",
    "BCERankingLoss", "Dist2LogitLayer",
    # losses for reconstruction, dataset evaluation (PSNR/SSIM/MS-SSIM/GMSD: fastlpips.iqa)
    "PerceptualLoss", "TextureLoss", "PixelLoss", "LPIPSLoss", "ELPIPSLoss", "CombinedLoss", "evaluate",
    "EvaluationResult",
    # the metric registry: every metric by name (the commands take the same names)
    "create_metric", "list_metrics", "metric_info", "DISTS",
]
