"""Perceptual attacks on the fastlpips engine: distances, exact J^T J products, PPGD, LPA, Fast-LPA."""
from .distances import ClassifierFeatureDistance, ELPIPSDistance, FeatureDistance, LPIPSDistance
from .linalg import JTJ, CGResult, conjugate_gradient, jtj_matvec, lanczos_extremes, power_iteration
from .perceptual import (FastLagrangePerceptualAttack, LagrangePerceptualAttack, PerceptualPGD, Projected,
                         margin_loss, project_bisection, project_newton)

__all__ = ["FeatureDistance", "LPIPSDistance", "ELPIPSDistance", "ClassifierFeatureDistance", "JTJ", "CGResult",
           "conjugate_gradient", "jtj_matvec", "lanczos_extremes", "power_iteration", "PerceptualPGD",
           "LagrangePerceptualAttack", "FastLagrangePerceptualAttack", "Projected", "margin_loss",
           "project_bisection", "project_newton"]
