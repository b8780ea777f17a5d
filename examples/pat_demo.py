"""Worked example: Perceptual Adversarial Training and union evaluation on real photos, on CPU.

    .venv/bin/python examples/pat_demo.py --out pat_demo            # ~10 min on 2 CPU cores

The same with the command line (what this script runs, step by step):

    fastlpips example-data pat_demo/data
    fastlpips pat-train pat_demo/data/train --arch tiny --attack none --out-dir pat_demo/undefended ...
    fastlpips pat-train pat_demo/data/train --arch tiny --attack fast-lpa:self=0.5 --out-dir pat_demo/pat ...
    fastlpips robust-eval pat_demo/data/val --model-dir pat_demo/undefended --model-dir pat_demo/pat \\
        --plot pat_demo/robustness.png -o pat_demo/robustness.csv --format csv

Data: 32x32 crops of five scikit-image photos, one class per photo (train crops from the left 70%
of each photo, validation crops from the right 30%). Models: the tiny ResNet (one block per
stage, width 16). Three runs with the same steps and seed: undefended (clean examples), PAT
(self-bounded Fast-LPA, bound 0.5) and PAT attacking only correctly classified inputs; then the
paper's evaluation (L_inf, L_2, JPEG, StAdv, ReColorAdv, PPGD, LPA; union and unseen mean) on
the validation crops, written as CSV, JSON and a bar chart.
"""
import argparse
import json
import logging
import time
from pathlib import Path

import torch

from fastlpips.imagefolder import ImageFolder, make_example_folder
from fastlpips.nets.classifiers import ResNet32
from fastlpips.pat import PATConfig, train_pat
from fastlpips.robust import PAPER_EVALUATION, evaluate_robustness, plot_robustness

RUNS = {"undefended": dict(attacks=("none",)),
        "pat-self": dict(attacks=("fast-lpa:self=0.5",)),
        "pat-self-only-correct": dict(attacks=("fast-lpa:self=0.5",), only_attack_correct=True)}


def model(classes: int, seed: int = 0) -> ResNet32:
    torch.manual_seed(seed)
    return ResNet32(classes, blocks=(1, 1, 1, 1), width=16)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="pat_demo", help="folder for data, runs and results")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--train-per-class", type=int, default=100)
    ap.add_argument("--val-per-class", type=int, default=20)
    ap.add_argument("--eval-iterations", type=int, default=None, help="steps of every evaluation attack "
                    "(default: each attack's own: 20 narrow, 40 PPGD/LPA)")
    ap.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out)
    if not (out / "data" / "train").is_dir():
        make_example_folder(out / "data", train_per_class=args.train_per_class, val_per_class=args.val_per_class)
    train, val = ImageFolder(out / "data" / "train"), ImageFolder(out / "data" / "val")
    results, seconds = {}, {}
    for name in args.runs:
        cfg = PATConfig(epochs=args.epochs, batch_size=50, lr=0.1, warmup_epochs=2,
                        lr_drops=(int(args.epochs * 0.75),), seed=0, **RUNS[name])
        t = time.perf_counter()
        net = train_pat(model(train.num_classes), train, out / name, cfg,
                        resume=(out / name / "checkpoint.pt").is_file())
        seconds[name] = time.perf_counter() - t
        seen = [] if name == "undefended" else ["fast-lpa"]
        results[name] = evaluate_robustness(net, val, PAPER_EVALUATION, batch_size=50, iterations=args.eval_iterations,
                                            seen=[s for s in seen if s in ("linf", "l2", "jpeg", "stadv", "recolor")])
        results[name].save(out / f"{name}.json")
        logging.info("%s: %s", name, json.dumps({k: round(v, 3) for k, v in results[name].summary.items()}))
    rows = [dict(model=n, **r) for n, res in results.items() for r in res.rows()]
    with open(out / "robustness.csv", "w") as f:
        f.write(",".join(rows[0]) + "\n")
        for r in rows:
            f.write(",".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in r.values()) + "\n")
    plot_robustness(results, out / "robustness.png")
    (out / "train_seconds.json").write_text(json.dumps(seconds, indent=1))
    logging.info("wrote %s, %s and the per-run JSON files", out / "robustness.csv", out / "robustness.png")


if __name__ == "__main__":
    main()
