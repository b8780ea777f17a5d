"""Autograd glue for the LPIPS head (kernels know nothing of autograd; modules call these)."""
from .head import lpips_head_map

__all__ = ["lpips_head_map"]
