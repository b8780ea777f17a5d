"""Fixtures of the attack tests: the worked example's small CNN, trained once per test run."""
import sys
import types
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="session")
def attack_demo():
    """examples/attack_demo.py (its module, its CNN trained once with one thread, its crops)."""
    __import__("helpers").require("skimage")
    sys.path.insert(0, str(EXAMPLES))
    try:
        import attack_demo as module
    finally:
        sys.path.remove(str(EXAMPLES))
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # small CPU models: one intra-op thread is faster
    try:
        clf = module.train_classifier(0)
    finally:
        torch.set_num_threads(old)
    return types.SimpleNamespace(module=module, clf=clf, crops=module.crops)


@pytest.fixture(scope="module")
def one_thread():
    """Small CPU models: one intra-op thread is faster (on a busy 2-core machine, 3-4x), restored
    after (``pytestmark = pytest.mark.usefixtures("one_thread")`` in a module)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
