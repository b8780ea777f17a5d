"""R-LPIPS' Table 2 question on the worked example: is a PAT model robust to PPGD / LPA bounded by
AlexNet LPIPS also robust to the same attacks bounded by R-LPIPS (and by DISTS, E-LPIPS)?

Through the command line, as a user would run it:

1. ``fastlpips example-data`` (500 training / 100 validation 32x32 crops of five photos);
2. ``fastlpips pat-train`` a tiny ResNet with self-bounded Fast-LPA (``--epochs``), and an
   undefended one (``--attack none``);
3. an R-LPIPS checkpoint: ``fastlpips train --adversarial linf`` on the synthetic BAPPS set
   (``fastlpips.bapps.make_synthetic_bapps``: 32x32 triplets), from the v0.1 AlexNet weights;
4. ``fastlpips robust-eval`` of both models with ``ppgd:alexnet=0.5``, ``ppgd:rlpips=CKPT=0.5``,
   ``lpa:alexnet=0.5``, ``lpa:rlpips=CKPT=0.5`` (``--iterations``, the paper's 40), and on the
   first ``--small`` crops ``ppgd:dists=BOUND`` and ``ppgd:elpips=BOUND`` with
   ``--small-iterations`` steps (E-LPIPS: 8 draws per step; checked with fresh draws).

Accuracies, violations and the largest verified size per attack go to ``--json``.

    .venv/bin/python benchmarks/metric_bounded_study.py --json benchmarks/results/metric-bounded.json
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def _run(*args):
    cmd = [sys.executable, "-m", "fastlpips", *[str(a) for a in args]]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "FASTLPIPS_OFFLINE": "1"})
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--iterations", type=int, default=40, help="PPGD / LPA steps (the paper's 40)")
    ap.add_argument("--small", type=int, default=8, help="crops for the DISTS- and E-LPIPS-bounded attacks")
    ap.add_argument("--small-iterations", type=int, default=5, help="their PPGD steps (E-LPIPS: 8 draws per step)")
    ap.add_argument("--root", help="work folder (default: a new temporary one); steps whose output exists are "
                    "skipped, so an interrupted study continues")
    ap.add_argument("--dists-bound", type=float, default=0.05)
    ap.add_argument("--elpips-bound", type=float, default=0.05)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="metric-bounded-"))
    t0 = time.time()
    if not (root / "data").is_dir():
        _run("example-data", root / "data")
    common = ["--arch", "tiny", "--epochs", args.epochs, "--batch-size", 50, "--no-progress"]
    for name, attack in (("pat", "fast-lpa:self=0.5"), ("undefended", "none")):
        if not (root / name / "model.json").is_file():
            _run("pat-train", root / "data" / "train", "--out-dir", root / name, "--attack", attack, "--overwrite",
                 *common)
    from fastlpips import LPIPS, bapps

    if not (root / "rlpips" / "latest_net_.pth").is_file():
        sets = bapps.make_synthetic_bapps(root / "bapps", train=200, val=0, jnd=0, seed=0, patch=32)
        init = root / "init.pth"
        torch.save(LPIPS(net="alex", verbose=False).state_dict(), init)
        train = sets["2afc/train"] if isinstance(sets["2afc/train"], list) else [sets["2afc/train"]]
        _run("train", *train, "--out-dir", root / "rlpips", "--adversarial", "linf", "--init", init,
             "--epochs", 4, "--decay-epochs", 1, "--overwrite", "--no-progress")
    ckpt = root / "rlpips" / "latest_net_.pth"
    results = {}
    for attacks, extra, key in (
            (["ppgd:alexnet=0.5", f"ppgd:rlpips={ckpt}=0.5", "lpa:alexnet=0.5", f"lpa:rlpips={ckpt}=0.5"], [], "all"),
            ([f"ppgd:dists={args.dists_bound}", f"ppgd:elpips={args.elpips_bound}"],
             ["--max-examples", args.small], "small")):
        out = root / f"{key}.json"
        steps = args.iterations if key == "all" else args.small_iterations
        if not out.is_file():
            _run("robust-eval", root / "data" / "val", "--model-dir", root / "undefended", "--model-dir", root / "pat",
                 *sum((["--attack", a] for a in attacks), []), "--iterations", steps, *extra,
                 "--format", "json", "-o", out, "--no-progress")
        results[key] = json.loads(out.read_text())["results"]
    doc = {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__, "epochs": args.epochs,
           "iterations": args.iterations, "seconds": round(time.time() - t0, 1), "rows": results}
    for key, rows in results.items():
        for r in rows:
            print(f"{key:5s} {r['model']:10s} {r['attack']:14s} acc {r['accuracy']:.3f} viol {r['violations']} "
                  f"max {r['max_size']} ci {r['max_size_ci']} ({r['checked_with']})")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
