"""Trunks without torchvision: identical to torchvision's `.features` slices, same geometry."""
import pytest
import torch

from fastlpips.nets.trunks import build_trunk
from helpers import rand_images, require

TV = {"alex": "alexnet", "vgg": "vgg16", "squeeze": "squeezenet1_1"}
BOUNDS = {"alex": [(0, 2), (2, 5), (5, 8), (8, 10), (10, 12)],
          "vgg": [(0, 4), (4, 9), (9, 16), (16, 23), (23, 30)],
          "squeeze": [(0, 2), (2, 5), (5, 8), (8, 10), (10, 11), (11, 12), (12, 13)]}


@pytest.mark.parametrize("net", ["alex", "vgg", "squeeze"])
def test_trunk_equals_torchvision_features(net):
    tv = require("torchvision.models")
    torch.manual_seed(0)
    ref = getattr(tv, TV[net])(weights=None).features.double().eval()
    ours = build_trunk(net).double().eval()
    state = {}
    for k, v in ref.state_dict().items():
        idx = int(k.split(".")[0])
        for s, (a, b) in enumerate(BOUNDS[net], start=1):
            if a <= idx < b:
                state[f"slice{s}.{k}"] = v
    ours.load_state_dict(state, strict=True)
    x = rand_images(2, 67, 45, dtype=torch.float64)
    outs = list(ours(x))
    h = x
    for (a, b), o in zip(BOUNDS[net], outs):
        for i in range(a, b):
            h = ref[i](h)
        assert torch.equal(o, h), f"slice ending at {b}"
    assert [o.shape[1] for o in outs] == list(ours.channels)


@pytest.mark.parametrize("net,minimum", [("alex", 31), ("vgg", 16), ("squeeze", 17)])
def test_geometry(net, minimum):
    t = build_trunk(net)
    assert t.min_input_size() == minimum
    for size in (minimum, minimum + 1, 64, 97):
        outs = t(torch.zeros(1, 3, size, size + 3))
        assert [o.shape[2] for o in outs] == t.output_size(size)
    with pytest.raises(RuntimeError):
        t(torch.zeros(1, 3, minimum - 1, minimum - 1))


def test_random_init_matches_torchvision_scale():
    tv = require("torchvision.models")
    torch.manual_seed(0)
    ours = dict(build_trunk("vgg").named_parameters())["slice3.10.weight"]
    ref = tv.vgg16(weights=None).features[10].weight
    assert abs(ours.std().item() / ref.std().item() - 1) < 0.05
