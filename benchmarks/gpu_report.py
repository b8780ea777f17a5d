"""The GPU report: what every GPU path of fastlpips does on the device at hand, in one short run.

    python benchmarks/gpu_report.py --out OUT_DIR [--device cuda] [--dry-run]

Writes OUT_DIR/gpu-report.json and OUT_DIR/gpu-report.md:

* the device: name, capability, multiprocessors, memory, driver, CUDA, torch, triton, cupy;
* device-to-device copy bandwidth (bytes read + written per second): the reference for the kernels;
* the fused head per backend (cuda, triton, cupy, torch): forward and forward+backward on an
  AlexNet-layer-sized map, time and effective bandwidth (the bytes the kernel must move) as a
  fraction of the copy bandwidth;
* the batched E-LPIPS transform op per backend (forward);
* LPIPS alex / vgg forward and forward+backward vs the reference ``lpips`` package on the same
  device and the same trunk weights, fp32 and fastlpips' bf16 (with its largest relative error);
* E-LPIPS: 300 samples of one 256x256 pair (fp32);
* one PPGD step (5 CG iterations) against a small ResNet, alex distance, 32x32, batch 50.

Every measurement is in its own try block: a failing kernel is a row with its error, and the run
goes on. ``--dry-run`` runs the same code on the CPU with tiny sizes and few repetitions (the test
suite does, so the script cannot rot); its numbers mean nothing. Trunk weights are random
(``pnet_rand``) unless the ImageNet ones resolve offline: timings do not depend on them, and the
``lpips`` comparisons load the same trunk into both.
"""
import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

import fastlpips
from fastlpips.ops import table as backend_table


class Timer:
    def __init__(self, device: torch.device, reps: int, warmup: int) -> None:
        self.device, self.reps, self.warmup = device, reps, warmup

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, fn) -> float:
        """Median milliseconds of ``fn()`` (CUDA events on a GPU)."""
        for _ in range(self.warmup):
            fn()
        self.sync()
        times = []
        for _ in range(self.reps):
            if self.device.type == "cuda":
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fn()
                b.record()
                b.synchronize()
                times.append(a.elapsed_time(b))
            else:
                t = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t) * 1e3)
        return statistics.median(times)


def _section(report: dict, name: str):
    """A decorator running one measurement into report[name] (its error recorded, never raised)."""
    def wrap(fn):
        t = time.perf_counter()
        try:
            report[name] = {"status": "ok", **fn()}
        except Exception as e:  # a failing kernel is a result too
            report[name] = {"status": "error",
                            "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                            "traceback": traceback.format_exc(limit=6)}
        report[name]["seconds"] = round(time.perf_counter() - t, 2)
        print(f"[gpu_report] {name}: {report[name]['status']} ({report[name]['seconds']} s)", flush=True)
        return fn
    return wrap


def _versions(device: torch.device) -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "fastlpips": getattr(fastlpips, "__version__", "?"), "device": str(device),
           "backends": backend_table.report(device.type), "cpu": platform.processor() or platform.machine()}
    for mod in ("triton", "cupy", "lpips"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception as e:  # not installed, or fails to import
            out[mod] = f"unavailable ({type(e).__name__})"
    try:
        from fastlpips import _C

        out["extension"] = _C.build_info()
    except Exception as e:
        out["extension"] = f"unavailable ({type(e).__name__}: {e})"
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        out.update(gpu=p.name, capability=f"{p.major}.{p.minor}", multiprocessors=p.multi_processor_count,
                   memory_gib=round(p.total_memory / 2**30, 1))
        try:
            out["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out["driver"] = "unknown (no nvidia-smi)"
    return out


def _lpips_pair(net: str, device: torch.device):
    """(fastlpips fp32, fastlpips bf16, lpips) with one trunk (ImageNet if it resolves offline)."""
    try:
        ours = fastlpips.LPIPS(net=net, verbose=False)
    except fastlpips.WeightError:
        torch.manual_seed(0)
        ours = fastlpips.LPIPS(net=net, pnet_rand=True, verbose=False)
    bf = fastlpips.LPIPS(net=net, pnet_rand=True, verbose=False, dtype=torch.bfloat16)
    bf.load_state_dict(ours.state_dict())
    import lpips

    ref = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
    ref.net.load_state_dict({k: v.contiguous() for k, v in ours.net.state_dict().items()})
    ref.load_state_dict({k: v for k, v in ref.state_dict().items()})  # lins: the same v0.1 weights
    return ours.to(device).eval(), bf.to(device).eval(), ref.to(device).eval()


def run(device: torch.device, dry: bool) -> dict:
    timer = Timer(device, reps=1 if dry else 20, warmup=0 if dry else 5)
    report: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "dry_run": dry, "versions": _versions(device)}
    g = torch.Generator().manual_seed(0)
    copy_gbs = {}

    @_section(report, "copy_bandwidth")
    def _():
        n = (1 << 20) if dry else (1 << 28)  # floats: 4 MiB / 1 GiB
        a = torch.empty(n, device=device)
        b = torch.empty_like(a)
        ms = timer(lambda: b.copy_(a))
        copy_gbs["v"] = 2 * a.numel() * 4 / (ms * 1e-3) / 1e9
        return {"bytes": 2 * a.numel() * 4, "ms": ms, "gbytes_per_s": copy_gbs["v"]}

    @_section(report, "head")
    def _():
        from fastlpips.ops.head import lpips_head_map

        n, c, h, w = (2, 16, 9, 9) if dry else (64, 192, 27, 27)  # AlexNet relu2 at 224x224, batch 64
        f0 = torch.randn(n, c, h, w, generator=g).relu().to(device)
        f1 = torch.randn(n, c, h, w, generator=g).relu().to(device)
        wt = torch.rand(c, generator=g).to(device)
        ref = None
        rows = {}
        for b in ("torch", "cuda", "triton", "cupy") if device.type == "cuda" else ("torch", "cpp", "triton"):
            if backend_table.why_not(b, device.type) is not None:
                rows[b] = {"available": False, "reason": backend_table.why_not(b, device.type)}
                continue
            try:
                out = lpips_head_map(f0, f1, wt, backend=b)
                ref = out if ref is None else ref
                err = float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
                fwd = timer(lambda: lpips_head_map(f0, f1, wt, backend=b))
                x0, x1 = f0.clone().requires_grad_(), f1.clone().requires_grad_()

                def fb():
                    lpips_head_map(x0, x1, wt, backend=b).sum().backward()
                both = timer(fb)
                elem = f0.element_size()
                fwd_bytes = (2 * f0.numel() + c + 3 * n * h * w) * elem
                bwd_bytes = (4 * f0.numel() + c + 3 * n * h * w) * elem
                rows[b] = {"available": True, "fwd_ms": fwd, "fwd_bwd_ms": both, "max_rel_diff_vs_torch": err,
                           "fwd_gbytes_per_s": fwd_bytes / (fwd * 1e-3) / 1e9,
                           "bwd_gbytes_per_s": bwd_bytes / (max(both - fwd, 1e-6) * 1e-3) / 1e9}
                if copy_gbs.get("v"):
                    rows[b]["fwd_fraction_of_copy"] = rows[b]["fwd_gbytes_per_s"] / copy_gbs["v"]
            except Exception as e:
                rows[b] = {"available": True,
                           "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
        return {"shape": [n, c, h, w], "backends": rows}

    @_section(report, "transform")
    def _():
        from fastlpips.ops.transform import batched_transform
        from fastlpips.transforms import sample_batched

        s, n, side = (4, 2, 32) if dry else (64, 8, 256)
        x = torch.rand(n, 3, side, side, generator=g).to(device)
        t = sample_batched(s, n, generator=torch.Generator().manual_seed(1), max_scale=1)
        _, tb = t.groups(side, side)[0]
        rows = {}
        for b in ("torch", "cuda", "triton") if device.type == "cuda" else ("torch", "cpp", "triton"):
            if backend_table.why_not(b, device.type, "transform") is not None:
                rows[b] = {"available": False, "reason": backend_table.why_not(b, device.type, "transform")}
                continue
            try:
                rows[b] = {"available": True, "fwd_ms": timer(lambda: batched_transform(x, tb, backend=b))}
            except Exception as e:
                rows[b] = {"available": True,
                           "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
        return {"samples": s, "images": n, "side": side, "backends": rows}

    for net in ("alex", "vgg"):
        @_section(report, f"lpips_{net}")
        def _(net=net):
            ours, bf, ref = _lpips_pair(net, device)
            n, side = (2, 32) if dry else ((64, 224) if net == "alex" else (16, 224))
            x = (torch.rand(n, 3, side, side, generator=g) * 2 - 1).to(device)
            y = (torch.rand(n, 3, side, side, generator=g) * 2 - 1).to(device)
            with torch.no_grad():
                a, b, c = ours(x, y), bf(x, y), ref(x, y)
            out = {"batch": n, "side": side, "max_rel_diff_vs_lpips": float(((a - c).abs() / c.abs()).max()),
                   "bf16_max_rel_error": float(((b - a).abs() / a.abs()).max())}
            for name, m in (("lpips", ref), ("fastlpips", ours), ("fastlpips_bf16", bf)):
                with torch.no_grad():
                    out[f"{name}_fwd_ms"] = timer(lambda m=m: m(x, y))
                xg = x.clone().requires_grad_()
                out[f"{name}_fwd_bwd_ms"] = timer(lambda m=m: m(xg, y).sum().backward())
            for kind in ("fwd", "fwd_bwd"):
                out[f"speedup_{kind}"] = out[f"lpips_{kind}_ms"] / out[f"fastlpips_{kind}_ms"]
                out[f"speedup_bf16_{kind}"] = out[f"lpips_{kind}_ms"] / out[f"fastlpips_bf16_{kind}_ms"]
            return out

    @_section(report, "elpips_300_samples_256")
    def _():
        samples, side = (4, 64) if dry else (300, 256)
        try:
            metric = fastlpips.ELPIPS(device=device)
        except fastlpips.WeightError:
            metric = fastlpips.ELPIPS(pnet_rand=True, device=device)
        x = torch.rand(1, 3, side, side, generator=g).to(device)
        y = (x + 0.05 * torch.randn(x.shape, generator=g).to(device)).clamp(0, 1)
        single = Timer(device, reps=1 if dry else 3, warmup=1)
        ms = single(lambda: metric.sample_distances((x,), y, samples, generator=torch.Generator().manual_seed(0)))
        return {"samples": samples, "side": side, "ms": ms, "samples_per_s": samples / (ms * 1e-3)}

    @_section(report, "ppgd_step")
    def _():
        from fastlpips.attacks import LPIPSDistance, PerceptualPGD
        from fastlpips.nets.classifiers import build_classifier

        n = 4 if dry else 50
        torch.manual_seed(0)
        clf = build_classifier("tiny", 10, "batch").to(device).eval()
        dist = LPIPSDistance(fastlpips.LPIPS(net="alex", pnet_rand=True, lpips=False, verbose=False).to(device),
                             calibrated=False)
        x = torch.rand(n, 3, 32, 32, generator=g).to(device)
        y = torch.randint(0, 10, (n,), generator=g).to(device)
        attack = PerceptualPGD(clf, dist, 0.5, num_iterations=1, cg_iterations=5, projection="newton")
        return {"batch": n, "ms": Timer(device, reps=2 if dry else 10, warmup=1)(lambda: attack(x.clone(), y))}

    return report


def markdown(report: dict) -> str:
    v = report["versions"]
    dry = ", DRY RUN on CPU: numbers mean nothing" if report["dry_run"] else ""
    lines = [f"# fastlpips GPU report ({report['date']}{dry})",
             "", f"Device: {v.get('gpu', v['device'])} (capability {v.get('capability', '-')}, "
             f"{v.get('multiprocessors', '-')} SMs, {v.get('memory_gib', '-')} GiB), driver {v.get('driver', '-')}, "
             f"CUDA {v['cuda']}, torch {v['torch']}, triton {v['triton']}, cupy {v['cupy']}, lpips {v['lpips']}, "
             f"python {v['python']}. Extension: {v['extension']}.", "",
             "| section | status | result |", "|---|---|---|"]
    for name, sec in report.items():
        if not isinstance(sec, dict) or "status" not in sec:
            continue
        if sec["status"] != "ok":
            lines.append(f"| {name} | **{sec['status']}** | {sec['error']} |")
            continue
        if name in ("head", "transform"):
            for b, row in sec["backends"].items():
                if not row.get("available"):
                    res = f"unavailable: {row.get('reason')}"
                elif "error" in row:
                    res = f"**error**: {row['error']}"
                else:
                    res = ", ".join(f"{k} {val:.4g}" for k, val in row.items() if isinstance(val, float))
                lines.append(f"| {name} {b} | {'error' if 'error' in row else 'ok'} | {res} |")
        else:
            res = ", ".join(f"{k} {val:.4g}" if isinstance(val, float) else f"{k} {val}" for k, val in sec.items()
                            if k not in ("status", "seconds"))
            lines.append(f"| {name} | ok | {res} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="folder for gpu-report.json and gpu-report.md")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dry-run", action="store_true", help="the same code on the CPU with tiny sizes")
    args = ap.parse_args(argv)
    device = torch.device("cpu" if args.dry_run else args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.stderr.write("gpu_report: no CUDA device here (use --dry-run to exercise the script on the CPU)\n")
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = run(device, args.dry_run)
    (out / "gpu-report.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (out / "gpu-report.md").write_text(markdown(report))
    failed = [k for k, s in report.items() if isinstance(s, dict) and s.get("status") == "error"]
    failed += [f"{k}/{b}" for k in ("head", "transform") if report.get(k, {}).get("status") == "ok"
               for b, row in report[k]["backends"].items() if "error" in row]
    if failed:
        sys.stderr.write(f"gpu_report: failed: {', '.join(failed)}\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
