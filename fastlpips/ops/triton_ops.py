"""The Triton head kernels as torch.library custom ops: ``torch.ops.fastlpips_triton.*``."""
from fastlpips.kernels import head as _k

from .registry import register_head_ops

register_head_ops("fastlpips_triton", _k.head_fwd, _k.head_bwd, _k.head_jvp)
