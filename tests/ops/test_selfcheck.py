"""``fastlpips check`` (issue 9): every backend against the reference, failures that are found,
and the command line around it."""
import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fastlpips
from fastlpips import cli, selfcheck
from fastlpips.ops import table
from fastlpips.selfcheck import CheckResult, run_checks

CPU = torch.device("cpu")
REPORT = fastlpips.backends("cpu")
AVAILABLE = [b for b, why in REPORT.items() if why == "available"]
KINDS = ("head", "transform", "stats", "lpips", "elpips")
# the fastest non-torch backend here, for the failure-injection tests
NATIVE = next((b for b in ("cpp", "triton") if b in AVAILABLE), None)


@pytest.fixture(scope="module")
def quick_rows():
    return run_checks(CPU, quick=True)


def _by(rows, backend):
    return [r for r in rows if r.backend == backend]


def _kind(row):
    return row.check.split()[0]


@pytest.mark.slow
def test_quick_cpu_run_passes(quick_rows):
    assert {r.status for r in quick_rows} <= {"pass", "skip"}, [r.as_row() for r in quick_rows if r.status != "pass"]
    assert {_kind(r) for r in quick_rows} >= set(KINDS)
    assert {r.backend for r in quick_rows} == set(table.BACKENDS)
    for b in ("torch", "cpp", "triton"):
        rows = _by(quick_rows, b)
        if b in AVAILABLE:  # every check ran and passed on every available CPU backend
            assert {_kind(r) for r in rows} == set(KINDS)
            for r in rows:
                assert r.available and r.status == "pass", r.as_row()
                assert 0 <= r.max_error <= r.tolerance and r.seconds >= 0
        else:
            assert all(r.status == "skip" and REPORT[b] in r.detail for r in rows)
    for b in ("cuda", "cupy"):  # CUDA-only backends: skipped with the reason, never an error
        rows = _by(quick_rows, b)
        assert rows and all(r.status == "skip" and not r.available and r.detail == REPORT[b] for r in rows)
        assert all(r.as_row()["status"] == f"skip ({REPORT[b]})" for r in rows)
    tol = {r.check: r.tolerance for r in quick_rows}
    assert tol["head float64"] == selfcheck.TOLERANCES[torch.float64] == 1e-10
    assert tol["lpips float32"] == selfcheck.TOLERANCES[torch.float32] == 1e-4


def test_rows_are_json_safe(quick_rows):
    rows = [r.as_row() for r in quick_rows]
    json.dumps(rows, allow_nan=False)
    assert list(rows[0]) == ["check", "backend", "available", "max_error", "tolerance", "status", "seconds"]
    bad = CheckResult("head float64", "cpp", True, math.nan, 1e-10, "FAIL", 0.5, "grad_f0: non-finite values")
    row = bad.as_row()
    assert row["max_error"] is None and row["status"] == "FAIL (grad_f0: non-finite values)"
    json.dumps(row, allow_nan=False)
    assert CheckResult("x", "torch", True, 1e-16, 1e-10, "pass", 0.1, "").as_row()["status"] == "pass"


def _patch_native_head_fwd(monkeypatch, change):
    """Make the NATIVE backend's head forward return change(m) for its map m (r0, r1 untouched)."""
    real = table.kernels

    def patched(op, backend):
        if op != "head" or backend != NATIVE:
            return real(op, backend)
        fwd, bwd, jvp = real(op, backend)

        def bad_fwd(*args):
            m, r0, r1 = fwd(*args)
            return change(m), r0, r1

        return bad_fwd, bwd, jvp

    monkeypatch.setattr(table, "kernels", patched)


@pytest.mark.skipif(NATIVE is None, reason="neither the cpp nor the triton backend is available")
def test_perturbed_statistics_gradient_fails(monkeypatch):
    """The statistics op's backward kernel 0.1% off: only its stats row FAILs, naming the gradients."""
    real = table.kernels

    def patched(op, backend):
        if op != "stats" or backend != NATIVE:
            return real(op, backend)
        fwd, bwd = real(op, backend)

        def bad_bwd(*args):
            gx, gy = bwd(*args)
            return gx * 1.001, gy
        return fwd, bad_bwd

    monkeypatch.setattr(table, "kernels", patched)
    rows = run_checks(CPU, quick=True, backends=(NATIVE,))
    for r in rows:
        if _kind(r) == "stats":
            assert r.status == "FAIL" and "grad_fx" in r.detail and "grad_fy" not in r.detail, r.as_row()
        else:
            assert r.status == "pass", r.as_row()


@pytest.mark.skipif(NATIVE is None, reason="neither the cpp nor the triton backend is available")
def test_perturbed_head_kernel_fails(monkeypatch):
    """A head kernel 1e-3 off: its head, LPIPS and E-LPIPS rows FAIL, everything else passes."""
    _patch_native_head_fwd(monkeypatch, lambda m: m + 1e-3)
    rows = run_checks(CPU, quick=True, backends=("torch", NATIVE))
    assert {r.backend for r in rows} == {"torch", NATIVE}
    for r in _by(rows, "torch"):
        assert r.status == "pass", r.as_row()
    for r in _by(rows, NATIVE):
        if _kind(r) in ("transform", "stats"):
            assert r.status == "pass", r.as_row()
        else:
            assert r.status == "FAIL" and r.max_error > r.tolerance, r.as_row()
            assert "forward" in r.detail or "distance" in r.detail, r.detail
    head = next(r for r in rows if r.backend == NATIVE and _kind(r) == "head")
    assert "forward: error" in head.detail and "grad_f0" not in head.detail  # only what is wrong is named


@pytest.mark.skipif(NATIVE is None, reason="neither the cpp nor the triton backend is available")
def test_raising_backend_is_a_fail_with_the_message(monkeypatch):
    real = table.kernels

    def broken(op, backend):
        if op == "transform" and backend == NATIVE:
            raise RuntimeError("injected transform kernel failure")
        return real(op, backend)

    monkeypatch.setattr(table, "kernels", broken)
    rows = run_checks(CPU, quick=True, backends=("torch", NATIVE))
    for r in rows:
        if r.backend == NATIVE and _kind(r) in ("transform", "elpips"):
            assert r.status == "FAIL" and r.max_error is None, r.as_row()
            assert "RuntimeError: injected transform kernel failure" in r.detail
            assert "injected transform kernel failure" in r.as_row()["status"]
        else:
            assert r.status == "pass", r.as_row()


def test_nan_from_a_backend_fails_without_nan_in_the_row(monkeypatch):
    if NATIVE is None:
        pytest.skip("neither the cpp nor the triton backend is available")
    _patch_native_head_fwd(monkeypatch, lambda m: m * math.nan)
    rows = [r for r in run_checks(CPU, quick=True, backends=(NATIVE,)) if _kind(r) == "head"]
    assert rows and all(r.status == "FAIL" and "non-finite" in r.detail for r in rows)
    json.dumps([r.as_row() for r in rows], allow_nan=False)


def test_failing_reference_fails_every_backend(monkeypatch):
    def broken(*a, **k):
        raise ValueError("reference broken")

    monkeypatch.setattr("fastlpips.transforms.apply_transform", broken)
    rows = [r for r in run_checks(CPU, quick=True, backends=("torch",)) if _kind(r) == "transform"]
    assert len(rows) == 1 and rows[0].status == "FAIL"
    assert "the reference itself failed: ValueError: reference broken" in rows[0].detail


def test_unavailable_backend_is_skipped_with_its_reason(monkeypatch):
    monkeypatch.setattr(table, "native_reason", lambda: "not built (test)")
    rows = run_checks(CPU, quick=True, backends=("cpp",))
    assert {_kind(r) for r in rows} == set(KINDS)
    assert all(r.status == "skip" and not r.available and r.detail == "not built (test)" for r in rows)


@pytest.mark.skipif(NATIVE is None, reason="neither the cpp nor the triton backend is available")
def test_backend_without_transform_kernels_skips_that_check(monkeypatch):
    """As cupy (head kernels only): the transform row is a skip, the other checks still run."""
    entry = table.BACKENDS[NATIVE]
    monkeypatch.setitem(table.BACKENDS, NATIVE, dataclasses.replace(
        entry, ops={k: v for k, v in entry.ops.items() if k != "transform"}))
    rows = {_kind(r): r for r in run_checks(CPU, quick=True, backends=(NATIVE,))}
    assert rows["transform"].status == "skip" and rows["transform"].available
    assert f"no {NATIVE} transform kernels" in rows["transform"].detail
    assert all(rows[k].status == "pass" for k in ("head", "lpips", "elpips"))


def test_availability_probe_that_raises_is_a_fail(monkeypatch):
    real = table.why_not

    def probe(name, device_type, op=None):
        if name == "cupy":
            raise OSError("libcuda.so: cannot open shared object file")
        return real(name, device_type, op)

    monkeypatch.setattr(table, "why_not", probe)
    rows = run_checks(CPU, quick=True, backends=("cupy",))
    assert rows and all(r.status == "FAIL" and "probe failed: OSError: libcuda.so" in r.detail for r in rows)


def test_unknown_backend_filter_is_an_error():
    with pytest.raises(ValueError, match="unknown backend"):
        run_checks(CPU, quick=True, backends=("fast",))


# -- the command line ------------------------------------------------------------------------------
def test_cli_json(quick_rows, monkeypatch, capsys):
    calls = []

    def fake(device, *, quick=False):  # the real rows of this session's quick run
        calls.append((device, quick))
        return quick_rows

    monkeypatch.setattr(selfcheck, "run_checks", fake)
    assert cli.main(["check", "--quick", "--format", "json"]) == 0
    assert calls == [(CPU, True)]
    doc = json.loads(capsys.readouterr().out)
    assert doc["summary"]["failed"] == 0 and doc["summary"]["checks"] == len(quick_rows)
    assert doc["summary"]["passed"] == sum(r.status == "pass" for r in quick_rows) > 0
    assert doc["results"] == [r.as_row() for r in quick_rows]


def test_cli_exit_code_1_on_a_failure(quick_rows, monkeypatch, capsys):
    failed = quick_rows + [CheckResult("head float64", "cpp", True, 1e-3, 1e-10, "FAIL", 0.1, "forward: error 1e-3")]
    monkeypatch.setattr(selfcheck, "run_checks", lambda device, *, quick=False: failed)
    assert cli.main(["check", "--quick", "--format", "csv"]) == 1
    out, err = capsys.readouterr()
    assert "FAIL (forward: error 1e-3)" in out and "1 check(s) FAILED" in err


@pytest.mark.subprocess
def test_cli_subprocess_table():
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, FASTLPIPS_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "fastlpips", "check", "--quick"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["check", "backend", "available", "max_error", "tolerance", "status", "seconds"]
    assert any(line.startswith("head float64") and " torch " in line and " pass " in line for line in lines)
    assert "failed: 0" in lines[-1]
    assert "FAIL" not in proc.stdout
