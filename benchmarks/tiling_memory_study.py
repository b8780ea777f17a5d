"""Peak memory and time of LPIPS-VGG on large images: fastlpips' exact tiled trunk pass
(``memory_budget``) vs its untiled pass, ``lpips`` 0.1.4 and torchmetrics' LPIPS.

Every measurement runs in a fresh child process (this script with ``--child``): it builds the model,
allocates a pair of random images in [-1, 1] of shape (1, 3, S, S), runs one 64x64 warm-up call of
the same mode, then one timed call (``forward``: under ``torch.no_grad``; ``forward+backward``: the
first image requires grad, ``.sum().backward()``) and reports ``ru_maxrss``. A second child does the
same without the timed call: its peak is the baseline. As building ``lpips``' and torchmetrics' VGG
peaks above what small calls take, the child also resets its peak after the warm-up (``5`` into
/proc/self/clear_refs) and reports "call MB": the peak during the call less the RSS before it. A
child is stopped past ``--cap-gb`` of resident memory (the parent polls its RSS; the child also sets
RLIMIT_AS to the cap plus the address space mapped but not resident before the call, so one huge
allocation fails cleanly) and past ``--timeout`` seconds.

Offline, ``lpips`` and torchmetrics cannot download torchvision's ImageNet VGG: the failure is
recorded in the row's note and their trunk is built with random weights (same shapes, so the same
memory and time). ``--check-equal`` adds, per size and mode, fastlpips' tiled vs untiled values
(and input gradients) with their relative differences. ``--only ''`` with it runs the check alone.

    .venv/bin/python benchmarks/tiling_memory_study.py --sizes 1024,2048,4096 --budget 1073741824
"""
import argparse
import datetime
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

IMPLS = ("fastlpips-tiled", "fastlpips-untiled", "lpips", "torchmetrics")
MODES = ("forward", "forward+backward")
UNTILED = 1 << 50


def _proc_kb(field, pid="self"):
    """A ``Vm*`` field of /proc/PID/status in kB (None when the process is gone)."""
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None


def _build(impl, budget):
    """(module, fn(x, y) -> distances, note) for one implementation, its parameters frozen."""
    note = None
    if impl.startswith("fastlpips"):
        import fastlpips

        m = fastlpips.LPIPS(net="vgg", verbose=False, memory_budget=budget if impl == "fastlpips-tiled" else UNTILED)
        fn = lambda x, y: m(x, y, normalize=False)  # noqa: E731
    elif impl == "lpips":
        import lpips

        try:
            m = lpips.LPIPS(net="vgg", verbose=False)
        except Exception as e:  # offline: torchvision's weights need a download
            note = f"pretrained trunk failed ({type(e).__name__}: {str(e)[:120]}); random trunk weights"
            m = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False)
        fn = lambda x, y: m(x, y, normalize=False)  # noqa: E731
    elif impl == "torchmetrics":
        import torchmetrics.functional.image.lpips as tmf
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity as TM

        try:
            m = TM(net_type="vgg")
        except Exception as e:
            note = f"pretrained trunk failed ({type(e).__name__}: {str(e)[:120]}); random trunk weights"
            original = tmf._get_tv_model_features
            tmf._get_tv_model_features = lambda net, pretrained=False: original(net, pretrained=False)
            m = TM(net_type="vgg")
        fn = m
    else:
        raise ValueError(f"unknown implementation {impl!r}; expected one of {', '.join(IMPLS)}")
    m.requires_grad_(False)  # the loss use: gradients for the input only
    return m, fn, note


def _call(fn, x, y, grad):
    import torch

    with torch.set_grad_enabled(grad):
        d = fn(x, y).sum()
    if grad:
        d.backward()
    return float(d.detach())


def _child(spec):
    import torch

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    out = {"threads": torch.get_num_threads()}
    grad, s = spec["mode"] == "forward+backward", spec["size"]
    try:
        gen = torch.Generator().manual_seed(0)
        x, y = (torch.rand(1, 3, s, s, generator=gen) * 2 - 1 for _ in range(2))
        x.requires_grad_(grad)
        small = [(torch.rand(1, 3, 64, 64, generator=gen) * 2 - 1) for _ in range(2)]
        small[0].requires_grad_(grad)
        if spec.get("check"):  # tiled vs untiled fastlpips, one model (same weights)
            m, fn, _ = _build("fastlpips-tiled", spec["budget"])
            out["tile"] = m._tile(s, s, 2, grad, x.device)
            tiled = _call(fn, x, y, grad), (x.grad.clone() if grad else None)
            x.grad, m.memory_budget = None, UNTILED
            untiled = _call(fn, x, y, grad), (x.grad if grad else None)
            out["value_tiled"], out["value_untiled"] = tiled[0], untiled[0]
            out["rel_diff"] = abs(tiled[0] - untiled[0]) / abs(untiled[0])
            if grad:
                out["grad_rel_diff"] = float((tiled[1] - untiled[1]).norm() / untiled[1].norm())
        else:
            m, fn, out["note"] = _build(spec["impl"], spec["budget"])
            if spec["impl"] == "fastlpips-tiled":
                out["tile"] = m._tile(s, s, 2, grad, x.device)
            _call(fn, *small, grad)  # warm-up: lazy kernel and thread-pool set-up
            gc.collect()
            out["build_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            out["rss_before_call_mb"] = _proc_kb("VmRSS") / 1024
            try:  # reset the peak (VmHWM, and so ru_maxrss): the build's peak no longer hides the call's
                Path("/proc/self/clear_refs").write_text("5")
                out["hwm_reset"] = True
            except OSError:
                out["hwm_reset"] = False
            if not spec["baseline"]:
                vm, rss = _proc_kb("VmSize"), _proc_kb("VmRSS")
                limit = (vm - rss) * 1024 + spec["cap_bytes"]
                resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
                t0 = time.perf_counter()
                out["value"] = _call(fn, x, y, grad)
                out["seconds"] = time.perf_counter() - t0
        out["status"] = "ok"
    except MemoryError:
        out["status"] = "out of memory"
    except RuntimeError as e:
        out["status"] = "out of memory" if "alloc" in str(e).lower() else f"error: {str(e)[:200]}"
    except Exception as e:
        minimum = getattr(e, "minimum", None)  # TileBudgetError
        out["status"] = (f"budget below one tile ({minimum / 2**20:.0f} MiB)" if minimum
                         else f"error: {type(e).__name__}: {str(e)[:200]}")
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if out.get("hwm_reset"):  # the child's whole peak, and the call's own above the RSS before it
        out["call_mb"] = out["peak_rss_mb"] - out["rss_before_call_mb"]
        out["peak_rss_mb"] = max(out["peak_rss_mb"], out["build_peak_rss_mb"])
    print(json.dumps(out))


def _spawn(spec, cap_bytes, timeout):
    """Run one child; its JSON, or a status when it was stopped or died."""
    proc = subprocess.Popen([sys.executable, __file__, "--child", json.dumps({**spec, "cap_bytes": cap_bytes})],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0, status = time.time(), None
    while proc.poll() is None:
        rss = _proc_kb("VmRSS", proc.pid)
        if rss is not None and rss * 1024 > cap_bytes:
            status = "out of memory"
        elif time.time() - t0 > timeout:
            status = "timeout"
        if status:
            proc.kill()
            break
        time.sleep(0.02)
    stdout, stderr = proc.communicate()
    if status:
        return {"status": status}
    lines = stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, ValueError):
        return {"status": f"died (rc {proc.returncode}): {stderr.strip()[-300:]}"}


def _machine(threads):
    import torch

    flags = set()
    try:
        flags = {f for line in open("/proc/cpuinfo") if line.startswith("flags") for f in line.split(":")[1].split()}
    except OSError:
        pass
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "threads": threads or torch.get_num_threads(),
            "avx2": "avx2" in flags, "avx512f": "avx512f" in flags}


def _fmt(v, spec="{:.1f}"):
    return "" if v is None else spec.format(v)


def _save(args, rows, checks):
    """The study so far as JSON at ``--out`` (with each row's time over the untiled pass's)."""
    for r in rows:
        ref = [u for u in rows if u["impl"] == "fastlpips-untiled" and (u["mode"], u["size"]) == (r["mode"], r["size"])
               and u["seconds"]]
        r["time_vs_untiled"] = r["seconds"] / ref[0]["seconds"] if ref and r["seconds"] else None
    doc = {"machine": _machine(args.threads), "date": datetime.datetime.now().isoformat(timespec="seconds"),
           "cap_gb": args.cap_gb, "timeout_s": args.timeout, "rows": rows, "check_equal": checks}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")  # whole file or none: a study killed mid-write keeps the last one
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, out)
    return doc


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1024,2048,4096", help="image sides, comma-separated")
    ap.add_argument("--budget", type=int, default=1 << 30, help="fastlpips-tiled memory_budget (bytes)")
    ap.add_argument("--budget-grad", type=int, help="its budget in forward+backward (default: --budget)")
    ap.add_argument("--only", default=",".join(IMPLS), help=f"implementations, of {','.join(IMPLS)}")
    ap.add_argument("--modes", default=",".join(MODES), help=f"modes, of {','.join(MODES)}")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in the children (default: all)")
    ap.add_argument("--cap-gb", type=float, default=20.0, help="resident memory cap of a child (GB)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per child")
    ap.add_argument("--check-equal", action="store_true", help="also compare tiled and untiled fastlpips")
    ap.add_argument("--out", default="benchmarks/results/tiling-memory.json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return _child(json.loads(args.child))
    os.environ.setdefault("FASTLPIPS_OFFLINE", "1")
    sizes = [int(s) for s in args.sizes.split(",") if s]
    impls, modes = [i for i in args.only.split(",") if i], [m for m in args.modes.split(",") if m]
    for name, given, known in (("--only", impls, IMPLS), ("--modes", modes, MODES)):
        if set(given) - set(known):
            ap.error(f"{name}: unknown {sorted(set(given) - set(known))}; expected {', '.join(known)}")
    cap = int(args.cap_gb * 1e9)
    budget = {"forward": args.budget, "forward+backward": args.budget_grad or args.budget}
    rows, checks = [], []
    for size in sizes:
        for mode in modes:
            common = {"mode": mode, "size": size, "threads": args.threads, "budget": budget[mode]}
            for impl in impls:
                base = _spawn({**common, "impl": impl, "baseline": True}, cap, args.timeout)
                meas = _spawn({**common, "impl": impl, "baseline": False}, cap, args.timeout)
                row = {"impl": impl, "mode": mode, "size": size, "peak_rss_mb": meas.get("peak_rss_mb"),
                       "baseline_rss_mb": base.get("peak_rss_mb"), "call_mb": meas.get("call_mb"),
                       "rss_before_call_mb": meas.get("rss_before_call_mb"), "seconds": meas.get("seconds"),
                       "status": meas["status"], "tile": meas.get("tile"), "note": meas.get("note")}
                if impl == "fastlpips-tiled":
                    row["budget"] = budget[mode]
                if meas["status"] == "out of memory":
                    row["cap_gb"] = args.cap_gb
                rows.append(row)
                print(f"{impl} {mode} {size}: {row['status']} {_fmt(row['seconds'], '{:.2f} s')} "
                      f"peak {_fmt(row['peak_rss_mb'])} MB", flush=True)
                _save(args, rows, checks)  # after every row: an interrupted study keeps what it measured
            if args.check_equal:
                res = _spawn({**common, "check": True}, cap, args.timeout)
                checks.append({"size": size, "mode": mode, "budget": budget[mode], **res})
                print(f"check {mode} {size}: {res['status']} rel diff {res.get('rel_diff')}", flush=True)
    doc = _save(args, rows, checks)
    m = doc["machine"]
    print(f"\nLPIPS-VGG, one pair (1, 3, S, S); {m['cpu']}, {m['cores']} cores, {m['threads']} threads, torch "
          f"{m['torch']}, avx2 {m['avx2']}, avx512f {m['avx512f']}; {doc['date']}\n")
    print("| impl | mode | size | peak RSS MB | baseline RSS MB | peak - baseline MB | call MB | seconds "
          "| time / untiled fastlpips | tile | status |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        delta = r["peak_rss_mb"] - r["baseline_rss_mb"] if r["status"] == "ok" and r["baseline_rss_mb"] else None
        tile = "x".join(map(str, r["tile"])) if r["tile"] else ("untiled" if r["impl"] == "fastlpips-tiled" else "")
        print(f"| {r['impl']} | {r['mode']} | {r['size']} | {_fmt(r['peak_rss_mb'], '{:.0f}')} | "
              f"{_fmt(r['baseline_rss_mb'], '{:.0f}')} | {_fmt(delta, '{:.0f}')} | {_fmt(r['call_mb'], '{:.0f}')} | "
              f"{_fmt(r['seconds'], '{:.2f}')} | "
              f"{_fmt(r['time_vs_untiled'], '{:.2f}x')} | {tile} | {r['status']} |")
    print("\ncall MB: the child's peak RSS during the call (its peak reset after the build) less its RSS before.")
    for n in sorted({f"{r['impl']}: {r['note']}" for r in rows if r["note"]}):
        print(f"Note — {n}")
    if checks:
        print("\n| check: tiled vs untiled fastlpips | size | tile | value tiled | value untiled | rel. diff "
              "| grad rel. diff | status |\n|---|---|---|---|---|---|---|---|")
        for c in checks:
            tile = "x".join(map(str, c["tile"])) if c.get("tile") else "untiled"
            print(f"| {c['mode']} | {c['size']} | {tile} | {_fmt(c.get('value_tiled'), '{:.6g}')} | "
                  f"{_fmt(c.get('value_untiled'), '{:.6g}')} | {_fmt(c.get('rel_diff'), '{:.1e}')} | "
                  f"{_fmt(c.get('grad_rel_diff'), '{:.1e}')} | {c['status']} |")
    print(f"\nwritten {args.out}")


if __name__ == "__main__":
    main()
