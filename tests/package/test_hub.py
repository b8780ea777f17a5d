"""torch.hub: hubconf.py at the repository root loads the models from a checkout (source='local')."""
from pathlib import Path

import pytest
import torch

import fastlpips

ROOT = Path(__file__).resolve().parents[2]


def _load(entry, **kw):
    return torch.hub.load(str(ROOT), entry, source="local", trust_repo=True, **kw)


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_local_hub_load_equals_the_package_model(net):
    model = _load("lpips", net=net)
    ref = fastlpips.LPIPS(net=net, verbose=False)
    assert isinstance(model, fastlpips.LPIPS) and not model.training
    assert model.state_dict().keys() == ref.state_dict().keys()
    for k, v in ref.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(2, 3, 64, 64, generator=g), torch.rand(2, 3, 64, 64, generator=g)
    torch.testing.assert_close(model(x, y, normalize=True), ref(x, y, normalize=True), rtol=0, atol=0)


def test_entry_points_have_docstrings_and_the_others_load(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("hubconf_under_test", ROOT / "hubconf.py")
    hub = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hub)
    assert hub.dependencies == ["torch", "numpy"]  # what torch.hub checks before loading
    for e in ("lpips", "elpips", "rlpips"):
        assert callable(getattr(hub, e)) and len(getattr(hub, e).__doc__.strip()) > 40, e
    el = _load("elpips", net="squeeze", pnet_rand=True)
    assert isinstance(el, fastlpips.ELPIPS) and el.net_name == "squeeze" and not el.training
    ckpt = tmp_path / "rlpips.pth"
    base = fastlpips.LPIPS(net="alex", verbose=False)
    with torch.no_grad():
        base.lin0.weight.mul_(2)
    torch.save(base.state_dict(), ckpt)
    rl = _load("rlpips", checkpoint=str(ckpt))
    assert torch.equal(rl.lin0.weight, base.lin0.weight)
    with pytest.raises(TypeError):
        _load("rlpips")  # the checkpoint is required: nothing is downloaded
