"""The prepared GPU check (scripts/gpu_check.sh) cannot rot: its dry run executes every step that
needs no GPU on the CPU (the bundle built offline and its size checked, the install command, the
self-check, the GPU test selection collected, the GPU report's code at tiny sizes)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import require

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.subprocess
def test_gpu_check_dry_run(tmp_path):
    if shutil.which("bash") is None or shutil.which("timeout") is None:
        pytest.skip("bash and coreutils' timeout are needed")
    require("lpips", reason="the bundle carries the reference lpips package")
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "FASTLPIPS_CACHE"}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(out), "--dry-run", "--python",
                           sys.executable], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    steps = [line.split("\t") for line in (out / "steps.tsv").read_text().splitlines()]
    assert [s[0] for s in steps] == ["environment", "bundle", "install", "check", "gpu_tests", "report"]
    assert all(s[1] == "pass" for s in steps), steps
    manifest = json.loads((out / "bundle" / "MANIFEST.json").read_text())
    assert "cache/alexnet-owt-7be5be79.npz" in manifest["files"] and "python/lpips/__init__.py" in manifest["files"]
    assert manifest["bundle_bytes"] + manifest["tree_bytes"] <= 64 * 2**20
    assert "TORCH_CUDA_ARCH_LIST=" in (out / "install.log").read_text()
    assert "collected" in (out / "gpu_tests.log").read_text()
    report = json.loads((out / "gpu-report.json").read_text())
    sections = ["copy_bandwidth", "head", "transform", "lpips_alex", "lpips_vgg", "elpips_300_samples_256", "ppgd_step"]
    assert all(report[s]["status"] == "ok" for s in sections), {s: report[s].get("error") for s in sections}
    assert report["dry_run"] is True
    check = json.loads((out / "check.json").read_text())
    assert check["summary"]["failed"] == 0
    assert "| report | pass |" in (out / "gpu-check.md").read_text()
