"""Robust classifiers: ``example-data`` (the worked example's image folders), ``pat-train``
(Perceptual Adversarial Training, resumable, torchrun) and ``robust-eval`` (accuracy under each
threat model, union, unseen mean)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import List

import torch

from ..nets.classifiers import ARCHS, build_classifier
from . import common as C


def register(sub, parents: C.Parents) -> None:
    s = sub.add_parser("example-data", parents=[parents.common], help="write the worked example's image folders "
                       "(32x32 crops of scikit-image photos, one class per photo) for pat-train / robust-eval")
    s.add_argument("dir", help="DIR/train and DIR/val are written")
    s.add_argument("--train-per-class", type=int, default=200)
    s.add_argument("--val-per-class", type=int, default=50)
    s.add_argument("--size", type=int, default=32)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=run_example_data, validate=validate, batch_size=1)
    s = sub.add_parser("pat-train", parents=[parents.common, parents.progress],
                       help="Perceptual Adversarial Training of a classifier "
                       "on DATA/<class>/<images> (runs under torchrun too)")
    s.add_argument("data", help="training image folder, one subfolder per class")
    s.add_argument("--out-dir", required=True, help="checkpoint.pt, model.pt, model.json and log.csv go here")
    s.add_argument("--val", help="validation image folder (accuracies after every epoch)")
    s.add_argument("--val-attack", action="append", help="attack spec evaluated on --val after every epoch (repeat)")
    s.add_argument("--arch", default="resnet18", choices=ARCHS, help="resnet18 (32x32 ResNet-18) or tiny")
    s.add_argument("--norm", default="batch", choices=["batch", "group", "none"])
    s.add_argument("--size", type=int, help="resize every image to SIZE x SIZE")
    s.add_argument("--attack", action="append", help="training attack spec, e.g. fast-lpa:self=0.5 (default), "
                   "fast-lpa:alexnet=1.0, linf=8/255 (repeat to mix); none: clean training")
    s.add_argument("--attack-iterations", type=int, help="steps of each training attack (Fast-LPA: 10)")
    s.add_argument("--init", help="start from these weights (e.g. another run's model.pt)")
    s.add_argument("--objective", default="ce", choices=["ce", "trades"], help="ce: cross-entropy on the attacks' "
                   "examples (PAT, adversarial training); trades: TRADES, clean cross-entropy + beta KL against "
                   "its own L_inf KL attack (--attack trades=BOUND, default trades=0.031)")
    s.add_argument("--beta", type=float, default=6.0, help="TRADES' weight of the KL term (6)")
    s.add_argument("--mix", default="all", choices=["all", "random", "max"], help="how several attacks combine")
    s.add_argument("--only-attack-correct", action="store_true", help="attack only correctly classified inputs")
    s.add_argument("--epochs", type=int, default=100)
    s.add_argument("--batch-size", type=int, default=128, help="global batch (split across torchrun processes)")
    s.add_argument("--lr", type=float, default=0.1)
    s.add_argument("--weight-decay", type=float, default=2e-4)
    s.add_argument("--warmup-epochs", type=int, default=5)
    s.add_argument("--lr-drops", type=int, nargs="*", default=[75, 90], help="epochs where the rate is x0.1")
    s.add_argument("--clip-grad", type=float, default=1.0, help="gradient value clip (1.0)")
    s.add_argument("--no-augment", action="store_true", help="no random crop / flip")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--workers", type=int, default=0, help="data loader processes (0)")
    s.add_argument("--checkpoint-every", type=int, default=0, help="also checkpoint every N steps (0: per epoch)")
    C.run_folder_arguments(s)
    s.add_argument("--stop-after-steps", type=int, help="stop after this many steps in total (resume later)")
    s.set_defaults(func=run_pat_train, validate=validate)
    s = sub.add_parser("robust-eval", parents=[parents.common, parents.progress],
                       help="accuracy of pat-train models under L_inf, "
                       "L_2, JPEG, StAdv, ReColorAdv, PPGD and LPA (or AutoAttack, metric-bounded PPGD/LPA, the "
                       "paper's CIFAR-10 table); union and unseen mean")
    s.add_argument("data", help="evaluation image folder, one subfolder per class")
    s.add_argument("--model-dir", action="append", required=True, help="a pat-train --out-dir (repeat to compare)")
    s.add_argument("--attack", action="append", help="attack spec (repeat; default: the paper's seven): linf=8/255, "
                   "l2, jpeg, stadv, recolor, ppgd, lpa, linf-aa / l2-aa (AutoAttack), ppgd:METRIC=BOUND (a metric-"
                   "bounded attack: rlpips=CKPT, lpips-vgg, elpips, dists, ...)")
    s.add_argument("--paper-table", choices=["cifar"], help="run the attacks of the PAT paper's CIFAR-10 table "
                   "(L_inf/L_2 AutoAttack, StAdv, ReColorAdv, PPGD, LPA) and write its layout: one row per model "
                   "with union, unseen mean, clean and each attack; --attack adds columns after them")
    s.add_argument("--seen", nargs="*", help="threat models seen in training (default: from model.json)")
    s.add_argument("--iterations", type=int, help="steps of every attack (default: each attack's own)")
    s.add_argument("--max-examples", type=int, help="evaluate the first N examples only")
    s.add_argument("--batch-size", type=int, default=100)
    s.add_argument("--seed", type=int, default=0, help="seed of the random starts")
    s.add_argument("--plot", metavar="OUT.png", help="save a bar chart of the accuracies")
    s.add_argument("--per-example", metavar="FILE.json", help="also write every example's results (.json or .csv)")
    s.set_defaults(func=run_robust_eval, validate=validate)


def validate(args) -> List[Path]:
    C.check_minimum(args, ("epochs", "iterations", "max_examples", "attack_iterations", "train_per_class",
                           "val_per_class", "size", "stop_after_steps"), 1)
    C.check_minimum(args, ("workers", "checkpoint_every", "warmup_epochs"), 0)
    if args.command == "pat-train" and not (math.isfinite(args.beta) and args.beta >= 0):
        raise C.CLIError(f"--beta must be a finite number >= 0, got {args.beta}")
    if args.command == "robust-eval":
        if args.plot:
            C.check_output_path(args.plot, "--plot", [])
        if args.per_example:
            if Path(args.per_example).suffix.lower() not in (".json", ".csv"):
                raise C.CLIError(f"--per-example {args.per_example}: write .json or .csv")
            C.check_output_path(args.per_example, "--per-example", [])
            if args.plot and C.same_file(Path(args.plot), Path(args.per_example)):
                raise C.CLIError("--plot and --per-example name the same file")
    return []


# -- running -------------------------------------------------------------------------------------------
def run_pat_train(args) -> C.Result:
    """Perceptual Adversarial Training of a classifier on a class-per-subfolder image folder."""
    from .. import distributed as D
    from ..pat import PATConfig, train_pat

    data = C.image_folder(args.data, args.size)
    val = C.image_folder(args.val, args.size) if args.val else None
    out = Path(args.out_dir)
    meta = {"arch": args.arch, "norm": args.norm, "classes": data.classes, "size": args.size,
            "attacks": args.attack or (["trades=0.031"] if args.objective == "trades" else ["fast-lpa:self=0.5"])}
    torch.manual_seed(args.seed)  # the initial weights (every process builds the same ones)
    model = build_classifier(args.arch, data.num_classes, args.norm)
    cfg = PATConfig(attacks=tuple(meta["attacks"]), attack_iterations=args.attack_iterations, mix=args.mix,
                    only_attack_correct=args.only_attack_correct, epochs=args.epochs, batch_size=args.batch_size,
                    lr=args.lr, weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs,
                    lr_drops=tuple(args.lr_drops), clip_grad=args.clip_grad, augment=not args.no_augment,
                    seed=args.seed, workers=args.workers, checkpoint_every=args.checkpoint_every,
                    objective=args.objective, beta=args.beta)
    train_pat(model, data, out, cfg, val_dataset=val, val_attacks=args.val_attack or [], device=args.device,
              init=args.init, metadata=meta, resume=args.resume, overwrite=args.overwrite,
              allow_other_data=args.allow_other_data, stop_after_steps=args.stop_after_steps, progress=args.progress)
    res = C.Result([])
    log_path = out / "log.csv"
    lines = log_path.read_text().splitlines() if D.is_main() and log_path.is_file() else []
    if lines:  # none before the first epoch ends (--stop-after-steps)
        res.columns = lines[0].split(",")
        res.rows = [dict(zip(res.columns, line.split(","))) for line in lines[1:]]
    res.summary = {"checkpoint": str(out / "checkpoint.pt"), "weights": str(out / "model.pt")}
    res.quiet = not D.is_main()
    return res


def _load_classifier(model_dir: str, device):
    """A pat-train folder's model (``pat.load_classifier``), its errors as one-line CLI errors."""
    from ..pat import load_classifier

    try:
        return load_classifier(model_dir, device)
    except (OSError, ValueError, RuntimeError) as e:
        raise C.CLIError(str(e)) from None


def run_robust_eval(args) -> C.Result:
    """Clean, per-attack, union and unseen-mean accuracy of classifiers (Laidlaw et al.'s evaluation)."""
    from .. import distributed as D
    from ..robust import (
        NARROW,
        PAPER_EVALUATION,
        PAPER_TABLES,
        evaluate_robustness,
        paper_table_rows,
        parse_attack_spec,
        plot_robustness,
    )

    D.init_from_env(torch.device(args.device))
    table = PAPER_TABLES[args.paper_table] if args.paper_table else None
    # a paper table: its attacks, then any --attack as extra columns (e.g. R-LPIPS-bounded PPGD / LPA)
    attacks = list(table.attacks) + (args.attack or []) if table else (args.attack or list(PAPER_EVALUATION))
    for a in attacks + (args.seen or []):
        try:
            parse_attack_spec(a)
        except ValueError as e:
            raise C.CLIError(str(e)) from None
    results, res = {}, C.Result(["model", "attack", "spec", "accuracy", "violations", "max_size", "max_size_ci",
                                 "checked_with", "seconds", "images_per_s"])
    for model_dir in args.model_dir:
        model, meta = _load_classifier(model_dir, args.device)
        data = C.image_folder(args.data, meta.get("size"))
        if data.classes != meta["classes"]:
            raise C.CLIError(f"{args.data} has classes {data.classes} but {model_dir} was trained on {meta['classes']}")
        seen = [parse_attack_spec(a).name for a in (args.seen if args.seen is not None else meta.get("attacks", []))]
        r = evaluate_robustness(model, data, attacks, batch_size=args.batch_size, device=args.device,
                                iterations=args.iterations, seen=seen, seed=args.seed, max_examples=args.max_examples,
                                progress=args.progress, narrow=table.narrow if table else NARROW)
        name = Path(model_dir).name
        results[name] = r
        res.rows += [dict(model=name, **row) for row in r.rows()]
        if args.per_example and D.is_main():
            path = Path(args.per_example)
            target = path if len(args.model_dir) == 1 else path.with_name(f"{path.stem}-{name}{path.suffix}")
            r.save(target)
            res.notes.append(f"per-example results written to {target}")
    if table is not None:
        res.notes.append("accuracies as fractions; union and unseen mean over " + ", ".join(table.narrow))
        res.notes += [f"{row['model']}: {row['violations']} output(s) of {row['attack']} exceeded the bound (the clean "
                      "images were scored)" for row in res.rows if row["violations"]]
        res.rows = paper_table_rows(results, table, extra=True)
        res.columns = list(res.rows[0]) if res.rows else ["model", *table.columns]
    if args.plot and D.is_main():
        res.pictures.append(C.Picture(f"the plot --plot {args.plot}", lambda: plot_robustness(results, args.plot),
                                    f"plot written to {args.plot}"))
    res.quiet = not D.is_main()
    return res


def run_example_data(args) -> C.Result:
    """The worked example's image folders: crops of scikit-image photos, one class per photo."""
    from ..imagefolder import make_example_folder

    root = make_example_folder(args.dir, train_per_class=args.train_per_class, val_per_class=args.val_per_class,
                               size=args.size, seed=args.seed)
    res = C.Result(["split", "folder", "images"])
    for split in ("train", "val"):
        n = sum(1 for _ in (root / split).rglob("*.png"))
        res.rows.append({"split": split, "folder": str(root / split), "images": n})
    return res


