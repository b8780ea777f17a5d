#!/usr/bin/env bash
# The GPU check: one prepared call that installs fastlpips on a lent GPU machine (no network), builds
# the CUDA extension for the GPU present, runs `fastlpips check --device cuda`, the GPU test
# selection and the GPU report (benchmarks/gpu_report.py), and writes everything to OUT_DIR:
#   steps.tsv (step, status, seconds), <step>.log, check.json, gpu-report.json/.md, gpu-check.md.
#
#   scripts/gpu_check.sh OUT_DIR [--dry-run] [--bundle DIR] [--python PY]
#
# On the machine: `make gpu-bundle` here first (writes .gpu-bundle/: the lpips package and the AlexNet
# weights, ~10 MiB), then the device tool's run with carry [".gpu-bundle"] and the command
# `scripts/gpu_check.sh $OUT` (about 5-8 minutes; each step has its own time limit).
# --dry-run: every step that needs no GPU, on the CPU (the test suite runs it): the bundle is built
# into OUT_DIR/bundle and its size checked, the install is printed instead of run, `fastlpips check
# --quick` runs on the CPU, the GPU tests are collected (not run) and the report runs tiny on the CPU.
# Exit status: 0 when every step passed, 1 otherwise (the summary names the failed steps).
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=""
DRY=0
BUNDLE="$ROOT/.gpu-bundle"
PY=python3
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --bundle) BUNDLE=$2; shift ;;
        --python) PY=$2; shift ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        -*) echo "gpu_check: unknown option $1" >&2; exit 2 ;;
        *) OUT=$1 ;;
    esac
    shift
done
if [ -z "$OUT" ]; then
    echo "usage: scripts/gpu_check.sh OUT_DIR [--dry-run] [--bundle DIR] [--python PY]" >&2
    exit 2
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
: > "$OUT/steps.tsv"
cd "$ROOT"
export FASTLPIPS_OFFLINE=1 PYTHONUNBUFFERED=1
DEVICE=cuda
[ $DRY = 1 ] && DEVICE=cpu

# step NAME LIMIT_SECONDS COMMAND...: run it with its output in OUT/NAME.log, record the status
step() {
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    echo "[gpu_check] $name ..." >&2
    timeout "$limit" bash -c '"$@"' step "$@" > "$OUT/$name.log" 2>&1  # bash -c: the exported functions too
    local rc=$?
    local status=pass
    [ $rc -eq 124 ] && status="timeout(${limit}s)"
    [ $rc -ne 0 ] && [ $rc -ne 124 ] && status="fail(rc=$rc)"
    printf '%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - t0))" >> "$OUT/steps.tsv"
    echo "[gpu_check] $name: $status ($((SECONDS - t0)) s)" >&2
    tail -n 3 "$OUT/$name.log" >&2
    return 0
}

environment() {
    "$PY" - <<'EOF'
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
for m in ("triton", "cupy", "torchvision", "pytest", "skimage"):
    try:
        print(m, __import__(m).__version__)
    except Exception as e:
        print(m, "unavailable:", type(e).__name__, e)
EOF
    command -v nvidia-smi > /dev/null && nvidia-smi || echo "nvidia-smi: not here"
    command -v nvcc > /dev/null && nvcc --version | tail -n 2 || echo "nvcc: not here"
}

bundle() {
    if [ $DRY = 1 ]; then
        "$PY" scripts/gpu_bundle.py --out "$OUT/bundle" || return 1
    fi
    [ -f "$BUNDLE/MANIFEST.json" ] || { echo "no bundle at $BUNDLE: run make gpu-bundle and carry .gpu-bundle"; return 1; }
    "$PY" - "$BUNDLE" <<'EOF'
import hashlib, json, sys
from pathlib import Path
root = Path(sys.argv[1])
m = json.loads((root / "MANIFEST.json").read_text())
for name, f in m["files"].items():
    data = (root / name).read_bytes()
    assert len(data) == f["bytes"] and hashlib.sha256(data).hexdigest() == f["sha256"], f"{name} damaged"
total = m["bundle_bytes"] + m["tree_bytes"]
print(f"bundle {m['bundle_bytes'] / 2**20:.1f} MiB + tree {m['tree_bytes'] / 2**20:.1f} MiB = {total / 2**20:.1f} MiB "
      f"(limit {m['limit_bytes'] / 2**20:.0f} MiB); {len(m['files'])} files verified")
sys.exit(0 if total <= m["limit_bytes"] else 1)
EOF
}

install() {
    local arch
    arch=$("$PY" -c "import torch; c = torch.cuda.get_device_capability(0) if torch.cuda.is_available() else (9, 0); print(f'{c[0]}.{c[1]}')")
    local cmd=("$PY" -m pip install --no-index --no-build-isolation --no-deps -e .)
    echo "TORCH_CUDA_ARCH_LIST=$arch ${cmd[*]}"
    if [ $DRY = 1 ]; then
        echo "(dry run: not built)"
        return 0
    fi
    TORCH_CUDA_ARCH_LIST=$arch "${cmd[@]}" && "$PY" -c "from fastlpips import _C; print(_C.build_info())"
}

gpu_tests() {
    if [ $DRY = 1 ]; then
        local collected
        collected=$("$PY" -m pytest -q -p no:cacheprovider --device "$DEVICE" -m device --collect-only tests) || return 1
        echo "$collected" | tail -n 5
        echo "$collected" | grep -q "tests collected\|test collected"
    else
        "$PY" -m pytest -q -p no:cacheprovider --device "$DEVICE" -m device tests
    fi
}

[ $DRY = 1 ] && BUNDLE="$OUT/bundle"
export -f environment bundle install gpu_tests
export ROOT OUT DRY BUNDLE PY DEVICE
step environment 120 environment
step bundle 300 bundle
export PYTHONPATH="$BUNDLE/python${PYTHONPATH:+:$PYTHONPATH}" FASTLPIPS_CACHE="$BUNDLE/cache"
step install 420 install
if [ $DRY = 1 ]; then
    step check 300 "$PY" -m fastlpips check --device cpu --quick --format json -o "$OUT/check.json"
else
    step check 300 "$PY" -m fastlpips check --device cuda --format json -o "$OUT/check.json"
fi
step gpu_tests 300 gpu_tests
if [ $DRY = 1 ]; then
    step report 300 "$PY" benchmarks/gpu_report.py --out "$OUT" --dry-run
else
    step report 300 "$PY" benchmarks/gpu_report.py --out "$OUT" --device cuda
fi

{
    echo "# fastlpips GPU check$([ $DRY = 1 ] && echo ' (dry run on the CPU)')"
    echo
    echo "| step | status | seconds |"
    echo "|---|---|---|"
    awk -F'\t' '{print "| " $1 " | " $2 " | " $3 " |"}' "$OUT/steps.tsv"
    echo
    [ -f "$OUT/gpu-report.md" ] && cat "$OUT/gpu-report.md"
} > "$OUT/gpu-check.md"
failed=$(awk -F'\t' '$2 != "pass" {printf "%s ", $1}' "$OUT/steps.tsv")
if [ -n "$failed" ]; then
    echo "[gpu_check] failed: $failed(see $OUT/<step>.log)" >&2
    exit 1
fi
echo "[gpu_check] all steps passed; summary in $OUT/gpu-check.md" >&2
