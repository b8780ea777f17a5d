"""Perceptual attacks on the fastlpips engine: distances, exact J^T J products, PPGD, LPA, Fast-LPA,
attacks on the metrics themselves (E-LPIPS A1/A2, R-LPIPS OPT, 2AFC PGD), and the narrow threat
models of robust evaluation (L_inf / L_2 PGD, JPEG, StAdv, ReColorAdv) on one protocol (``threat``)."""
from .autoattack import AutoAttack
from .distances import ClassifierFeatureDistance, DISTSDistance, ELPIPSDistance, FeatureDistance, LPIPSDistance
from .linalg import (
    JTJ,
    CGResult,
    conjugate_gradient,
    hutchinson_moments,
    jtj_matvec,
    lanczos_extremes,
    lanczos_spectrum,
    power_iteration,
)
from .metric_attacks import (
    MetricAttackResult,
    certify_ball,
    estimate_distance,
    feature_mse_attack,
    pull_to_target,
    push_within_l2,
    twoafc_pgd,
)
from .narrow import L2PGD, JPEGLinf, LinfPGD, TradesLinf, trades_loss
from .perceptual import (
    FastLagrangePerceptualAttack,
    LagrangePerceptualAttack,
    PerceptualPGD,
    Projected,
    margin_loss,
    project_bisection,
    project_newton,
)
from .recolor import ReColorAdv
from .stadv import StAdv
from .threat import NoAttack, ThreatAttack, draw_noise

__all__ = ["FeatureDistance", "LPIPSDistance", "ELPIPSDistance", "ClassifierFeatureDistance", "DISTSDistance",
           "JTJ", "CGResult",
           "conjugate_gradient", "jtj_matvec", "lanczos_extremes", "lanczos_spectrum", "power_iteration",
           "hutchinson_moments", "PerceptualPGD",
           "LagrangePerceptualAttack", "FastLagrangePerceptualAttack", "Projected", "margin_loss",
           "project_bisection", "project_newton", "pull_to_target", "push_within_l2", "feature_mse_attack",
           "twoafc_pgd", "MetricAttackResult", "estimate_distance", "certify_ball", "ThreatAttack", "NoAttack",
           "draw_noise", "LinfPGD", "L2PGD", "JPEGLinf", "TradesLinf", "trades_loss", "AutoAttack",
           "StAdv", "ReColorAdv"]
