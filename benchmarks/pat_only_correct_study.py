"""Does attacking only correctly classified inputs raise PAT's clean accuracy (Laidlaw et al.,
Table 6)? Paired runs over several seeds on the worked example's data.

For every seed, two PAT runs that differ only in ``only_attack_correct`` (same initial weights,
order, attack starts), in two settings:

* ``scratch``: from random weights, ``--epochs`` epochs;
* ``finetune``: from a model first trained without attacks for ``--pretrain-epochs`` epochs (a
  classifier that is already accurate, as the regime where adversarial training costs clean
  accuracy), then ``--epochs`` epochs of PAT.

Clean accuracy and AlexNet-bounded LPA accuracy (bound 0.5) on the validation crops; the
per-seed differences (only-correct minus all) with their mean and standard error.

    .venv/bin/python benchmarks/pat_only_correct_study.py --seeds 0 1 2 --json benchmarks/results/pat-only-correct.json
"""
import argparse
import json
import logging
import math
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from fastlpips.imagefolder import ImageFolder, make_example_folder
from fastlpips.nets.classifiers import ResNet32
from fastlpips.pat import PATConfig, train_pat
from fastlpips.robust import evaluate_robustness


def _model(classes: int, seed: int) -> ResNet32:
    torch.manual_seed(seed)
    return ResNet32(classes, blocks=(1, 1, 1, 1), width=16)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--settings", nargs="+", default=["scratch", "finetune"], choices=["scratch", "finetune"])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--pretrain-epochs", type=int, default=15)
    ap.add_argument("--attack-iterations", type=int, default=5)
    ap.add_argument("--eval-iterations", type=int, default=10)
    ap.add_argument("--train-per-class", type=int, default=100)
    ap.add_argument("--val-per-class", type=int, default=20)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    root = Path(tempfile.mkdtemp(prefix="pat-only-correct-"))
    make_example_folder(root / "data", train_per_class=args.train_per_class, val_per_class=args.val_per_class)
    train, val = ImageFolder(root / "data" / "train"), ImageFolder(root / "data" / "val")
    t0 = time.perf_counter()
    runs = []
    for setting in args.settings:
        for seed in args.seeds:
            init = None
            if setting == "finetune":
                cfg = PATConfig(attacks=("none",), epochs=args.pretrain_epochs, batch_size=50, lr=0.1,
                                warmup_epochs=1, lr_drops=(), seed=seed)
                train_pat(_model(train.num_classes, seed), train, root / f"pre-{seed}", cfg, progress=False)
                init = root / f"pre-{seed}" / "model.pt"
            row = {"setting": setting, "seed": seed}
            for only in (False, True):
                cfg = PATConfig(attacks=("fast-lpa:self=0.5",), attack_iterations=args.attack_iterations,
                                epochs=args.epochs, batch_size=50, lr=0.1 if init is None else 0.02,
                                warmup_epochs=1 if init is None else 0, lr_drops=(), seed=seed,
                                only_attack_correct=only)
                net = train_pat(_model(train.num_classes, seed), train, root / f"{setting}-{seed}-{only}", cfg,
                                init=init, progress=False)
                r = evaluate_robustness(net, val, ["lpa"], iterations=args.eval_iterations, batch_size=50,
                                        progress=False)
                acc = r.accuracy()
                key = "only_correct" if only else "all"
                row[key] = {"clean": acc["clean"], "lpa": acc["lpa"]}
            if init is not None:
                r = evaluate_robustness(_load(train.num_classes, seed, init), val, ["lpa"],
                                        iterations=args.eval_iterations, batch_size=50, progress=False)
                row["pretrained"] = {k: r.accuracy()[k] for k in ("clean", "lpa")}
            runs.append(row)
            print(json.dumps(row), flush=True)
    summary = {}
    for setting in args.settings:
        rows = [r for r in runs if r["setting"] == setting]
        out = {}
        for metric in ("clean", "lpa"):
            diffs = [r["only_correct"][metric] - r["all"][metric] for r in rows]
            sd = statistics.stdev(diffs) if len(diffs) > 1 else math.nan
            out[metric] = {"all": statistics.mean(r["all"][metric] for r in rows),
                           "only_correct": statistics.mean(r["only_correct"][metric] for r in rows),
                           "diff_mean": statistics.mean(diffs), "diff_se": sd / math.sqrt(len(diffs)),
                           "diffs": diffs}
        summary[setting] = out
        print(setting, json.dumps(out), flush=True)
    doc = {"args": vars(args), "runs": runs, "summary": summary, "seconds": time.perf_counter() - t0,
           "cpu": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads()}
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")


def _load(classes: int, seed: int, path: Path) -> ResNet32:
    net = _model(classes, seed)
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return net.eval()


if __name__ == "__main__":
    main()
