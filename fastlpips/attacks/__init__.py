"""Perceptual attacks on the fastlpips engine: distances, exact J^T J products, PPGD, LPA, Fast-LPA,
and attacks on the metrics themselves (E-LPIPS A1/A2, R-LPIPS OPT, 2AFC PGD)."""
from .distances import ClassifierFeatureDistance, ELPIPSDistance, FeatureDistance, LPIPSDistance
from .linalg import JTJ, CGResult, conjugate_gradient, jtj_matvec, lanczos_extremes, power_iteration
from .metric_attacks import MetricAttackResult, feature_mse_attack, pull_to_target, push_within_l2, twoafc_pgd
from .perceptual import (FastLagrangePerceptualAttack, LagrangePerceptualAttack, PerceptualPGD, Projected,
                         margin_loss, project_bisection, project_newton)

__all__ = ["FeatureDistance", "LPIPSDistance", "ELPIPSDistance", "ClassifierFeatureDistance", "JTJ", "CGResult",
           "conjugate_gradient", "jtj_matvec", "lanczos_extremes", "power_iteration", "PerceptualPGD",
           "LagrangePerceptualAttack", "FastLagrangePerceptualAttack", "Projected", "margin_loss",
           "project_bisection", "project_newton", "pull_to_target", "push_within_l2", "feature_mse_attack",
           "twoafc_pgd", "MetricAttackResult"]
