"""torch.compile traces a model that uses the fused head ops (fake kernels registered)."""
import pytest
import torch

import fastlpips
from helpers import FP32_VS_FP32, assert_close, distort, real_images


@pytest.mark.slow
def test_torch_compile_lpips_forward_and_backward():
    torch.manual_seed(0)
    model = fastlpips.LPIPS(net="alex", pnet_rand=True, check_inputs=False)
    x0, x1 = real_images(64, 2), distort(real_images(64, 2))

    def loss(a, b):
        return model(a, b).sum()

    compiled = torch.compile(loss)
    a, b = x0.clone().requires_grad_(), x0.clone().requires_grad_()
    eager = loss(a, x1)
    got = compiled(b, x1)
    assert_close(got, eager, **FP32_VS_FP32, what="compiled vs eager value")
    eager.backward()
    got.backward()
    assert_close(b.grad, a.grad, what="compiled vs eager input gradient")
