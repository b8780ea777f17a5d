"""The main paths on ``--device`` (cpu here; ``pytest --device cuda -m device`` on a GPU, which the GPU
check runs): each against the same computation in float64 on the CPU, with the default ('auto')
backend the device picks (cpp on the CPU; cuda / triton / cupy on a GPU)."""
import pytest
import torch

import fastlpips
from fastlpips.ops.transform import batched_transform
from fastlpips.transforms import apply_transform, sample_batched
from helpers import real_images


@pytest.fixture(autouse=True)
def no_tf32():
    """Float32 means float32 on a GPU too (cuDNN's TF32 convolutions would be 1e-3 off)."""
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def _images(n, size, seed, lo=0.0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g, dtype=torch.float64) * (1 - lo) + lo


@pytest.mark.parametrize("net", ["alex", "vgg", "squeeze"])
def test_lpips_forward_and_gradient_on_device(device, net):
    torch.manual_seed(0)
    ref = fastlpips.LPIPS(net=net, pnet_rand=True, verbose=False).double()
    dev = fastlpips.LPIPS(net=net, pnet_rand=True, verbose=False)
    dev.load_state_dict({k: v.float() for k, v in ref.state_dict().items()})
    dev = dev.to(device)
    x = real_images(48, 3).double()  # photo crops: fewer max-pool near-ties than noise
    y = (x + 0.1 * (_images(3, 48, 2) - 0.5)).clamp(-1, 1)
    xr = x.clone().requires_grad_()
    want = ref(xr, y)
    (gw,) = torch.autograd.grad(want.sum(), xr)
    xd = x.float().to(device).requires_grad_()
    got = dev(xd, y.float().to(device))
    (gd,) = torch.autograd.grad(got.sum(), xd)
    torch.testing.assert_close(got.double().cpu(), want, rtol=2e-4, atol=2e-6)
    # gradients as a whole: in float32 a near-tie in a max-pool window can route one element's
    # gradient to its neighbour (README: parity and its limits)
    assert float((gd.double().cpu() - gw).norm() / gw.norm()) < 1e-3  # measured 1.3e-5 - 2.6e-5 on the CPU


def test_transform_op_on_device(device):
    x = _images(2, 64, 3)
    t = sample_batched(4, 2, generator=torch.Generator().manual_seed(4), max_scale=3)
    for idx, tb in t.groups(64, 64):
        got = batched_transform(x.float().to(device), tb).double().cpu()
        want = torch.cat([apply_transform(x, t.sample(int(i))) for i in idx])
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_elpips_same_draw_on_device(device):
    torch.manual_seed(0)
    ref = fastlpips.ELPIPS(pnet_rand=True, max_scale=2).double()
    dev = fastlpips.ELPIPS(pnet_rand=True, max_scale=2)
    dev.load_state_dict({k: v.float() for k, v in ref.state_dict().items()})
    dev = dev.to(device)
    x, y = _images(2, 64, 5), _images(2, 64, 6)
    want = ref.sample_distances((x,), y, 6, generator=torch.Generator().manual_seed(7))[0]
    got = dev.sample_distances((x.float().to(device),), y.float().to(device), 6,
                               generator=torch.Generator().manual_seed(7))[0]
    torch.testing.assert_close(got.double().cpu(), want, rtol=5e-4, atol=1e-6)


def test_ppgd_on_device_stays_in_its_bound(device):
    from fastlpips.attacks import LPIPSDistance, PerceptualPGD
    from fastlpips.nets.classifiers import build_classifier

    torch.manual_seed(0)
    clf = build_classifier("tiny", 5, "group").to(device).eval()
    dist = LPIPSDistance(fastlpips.LPIPS(net="alex", pnet_rand=True, lpips=False, verbose=False).to(device),
                         calibrated=False)
    x = _images(4, 32, 8).float().to(device)
    y = torch.arange(4, device=device) % 5
    adv = PerceptualPGD(clf, dist, 0.3, num_iterations=2, cg_iterations=3, projection="newton")(x, y)
    assert adv.device.type == device.type and torch.isfinite(adv).all()
    assert float((adv - x).abs().max()) > 0
    with torch.no_grad():
        d = dist(x, adv)
    assert float(d.max()) <= 0.3 * 1.02  # the projection's tolerance
