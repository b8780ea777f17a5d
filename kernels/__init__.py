"""Triton kernels of fastlpips, shipped as ``fastlpips.kernels`` (launchers only, no autograd).

The fused-head kernels arrive with the fused-head work (issue 3); nothing is imported at package
import time, so importing fastlpips never requires Triton.
"""
