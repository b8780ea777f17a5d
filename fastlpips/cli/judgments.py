"""Human judgments: ``score-2afc`` / ``score-jnd`` (a metric's agreement on BAPPS splits), ``train``
(lpips' trainer; R-LPIPS with ``--adversarial``) and ``robust-2afc`` (2AFC under attack, R-LPIPS'
Table 1). Each runs under torchrun too; rank 0 writes."""
from __future__ import annotations

import os
from pathlib import Path
from typing import List

import torch

from ..utils import atomic_write
from . import common as C


def register(sub, parents: C.Parents) -> None:
    for name, what in (("score-2afc", "2AFC agreement with human judgments"), ("score-jnd", "JND mAP")):
        s = sub.add_parser(name, parents=[parents.common, parents.progress],
                           help=f"{what} of a metric on BAPPS split folders (runs under torchrun too)")
        s.add_argument("dirs", nargs="+", metavar="DIR", help="split folders (e.g. dataset/2afc/val/cnn)")
        C.metric_argument(s, "--metric", default="lpips-alex")
        s.add_argument("--baseline", action="store_true", help="LPIPS without the calibrated lin layers")
        s.add_argument("--model-path", help="an LPIPS checkpoint (e.g. R-LPIPS' latest_net_linf_x0.pth; "
                       "required by --metric rlpips)")
        s.add_argument("--draws", type=int, default=50, help="E-LPIPS samples per item (50, as the paper)")
        s.add_argument("--sampling", default="iid", choices=["iid", "stratified"],
                       help="E-LPIPS draws: i.i.d. as the paper (default) or with the scale level stratified "
                            "(the same expectation; 20 stratified draws are about as precise as 50 i.i.d.)")
        s.add_argument("--batch-size", type=int, default=50, help="items per batch (50)")
        s.add_argument("--workers", type=int, default=0, help="data loader processes (0: read in this process)")
        s.add_argument("--seed", type=int, default=0, help="seed of the E-LPIPS draws (0)")
        s.add_argument("--items", metavar="FILE.csv", help="also write every item's distances and judgment")
        s.set_defaults(func=run_score, validate=validate_score)
    s = sub.add_parser("train", parents=[parents.common, parents.progress],
                       help="train LPIPS' lin layers on BAPPS 2AFC splits "
                       "(lpips' trainer; --adversarial: R-LPIPS; runs under torchrun too)")
    s.add_argument("dirs", nargs="+", metavar="DIR", help="2AFC training split folders (e.g. dataset/2afc/train/mix)")
    s.add_argument("--out-dir", required=True, help="checkpoint, lpips-format weights and log.csv go here")
    s.add_argument("--net", default="alex", choices=["alex", "vgg", "squeeze"])
    s.add_argument("--version", default="0.1", choices=["0.1", "0.0"])
    s.add_argument("--epochs", type=int, default=5, help="epochs at the base learning rate (5)")
    s.add_argument("--decay-epochs", type=int, default=5, help="epochs with the rate falling linearly to 0 (5)")
    s.add_argument("--batch-size", type=int, default=50, help="triplets per step and process (50)")
    s.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (1e-4)")
    s.add_argument("--tune-trunk", action="store_true", help="train the trunk too")
    s.add_argument("--from-scratch", action="store_true", help="a random trunk")
    s.add_argument("--init", help="start from these lin weights (an lpips state dict) instead of random ones")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--workers", type=int, default=0, help="data loader processes (0)")
    C.run_folder_arguments(s)
    s.add_argument("--stop-after", type=int, default=None, help="stop after this many epochs in total (resume later)")
    s.add_argument("--adversarial", choices=["linf", "l2"], help="R-LPIPS: train on PGD examples of this norm")
    s.add_argument("--eps", type=C.parse_eps, default=None,
                   help="attack radius on the [-1, 1] scale (8/255 linf, 3.0 l2)")
    s.add_argument("--target", default="x0", choices=["x0", "x1", "ref", "x0_x1"], help="attacked image (x0)")
    s.add_argument("--attack-steps", type=int, default=50, help="PGD steps (50, as R-LPIPS)")
    s.set_defaults(func=run_train, validate=validate_train)
    s = sub.add_parser("robust-2afc", parents=[parents.common, parents.progress],
                       help="2AFC of LPIPS checkpoints without and under PGD (the R-LPIPS Table 1 layout)")
    s.add_argument("dirs", nargs="+", metavar="DIR", help="2AFC split folders (scored together)")
    s.add_argument("--model-path", action="append", required=True, help="an LPIPS checkpoint (repeat for each)")
    s.add_argument("--names", nargs="+", help="a name per checkpoint (default: the file names)")
    s.add_argument("--net", default="alex", choices=["alex", "vgg", "squeeze"])
    s.add_argument("--eps-linf", type=C.parse_eps, default=8 / 255, help="L_inf radius on [-1, 1] (8/255)")
    s.add_argument("--eps-l2", type=C.parse_eps, default=1.0, help="L_2 radius on [-1, 1] (1.0)")
    s.add_argument("--targets", nargs="+", default=["x0", "x1", "ref"], choices=["x0", "x1", "ref", "x0_x1"])
    s.add_argument("--steps", type=int, default=50, help="PGD steps (50)")
    s.add_argument("--batch-size", type=int, default=50)
    s.set_defaults(func=run_robust_2afc, validate=validate_train)


def validate_score(args) -> List[Path]:
    if args.draws < 1:
        raise C.CLIError(f"--draws must be >= 1, got {args.draws}")
    if args.workers < 0:
        raise C.CLIError(f"--workers must be >= 0, got {args.workers}")
    from ..metrics import metric_info

    info = metric_info(args.metric)
    if args.model_path is not None and info.family != "lpips":
        raise C.CLIError(f"--model-path is an LPIPS checkpoint; --metric {args.metric} does not read one")
    if args.baseline and info.family != "lpips":
        raise C.CLIError(f"--baseline is LPIPS without its calibrated weights; --metric {args.metric} has none")
    if info.checkpoint == "required" and args.model_path is None:
        raise C.CLIError(f"--metric {args.metric} needs --model-path (its checkpoint; nothing is downloaded)")
    for d in args.dirs:
        if not Path(d).is_dir():
            raise C.CLIError(f"{d}: no such split folder")
    inputs = C.files_in(args.dirs, recursive=True)
    if args.items:
        C.check_output_path(args.items, "--items", inputs)
    return inputs


def validate_train(args) -> List[Path]:
    """train and robust-2afc: counts and split folders."""
    C.check_minimum(args, ("epochs",), 0)
    C.check_minimum(args, ("decay_epochs", "steps", "attack_steps"), 1)
    for d in args.dirs:
        if not Path(d).is_dir():
            raise C.CLIError(f"{d}: no such split folder")
    return C.files_in(args.dirs, recursive=True)


# -- running -------------------------------------------------------------------------------------------
def run_score(args) -> C.Result:
    """2AFC score or JND mAP of a metric on BAPPS split folders, one row per split and their mean."""
    from .. import distributed as D
    from ..scoring import make_distance, mean_score, score_splits

    kind = "2afc" if args.command == "score-2afc" else "jnd"
    D.init_from_env(torch.device(args.device))
    options = {"checkpoint": args.model_path} if args.model_path else {}
    if args.baseline:
        options["calibrated"] = False
    distance = make_distance(args.metric, draws=args.draws, device=args.device, seed=args.seed,
                             sampling=args.sampling, **options)
    results = score_splits(distance, args.dirs, kind, batch_size=args.batch_size, workers=args.workers,
                           device=args.device, progress=args.progress)
    name = "2afc" if kind == "2afc" else "jnd_map"
    res = C.Result(["split", "items", name])
    res.rows = [{"split": r.split, "items": r.count, name: r.score} for r in results]
    res.summary = {"metric": args.metric, "splits": len(results), "items": sum(r.count for r in results),
                   f"mean {name}": mean_score(results)}
    res.quiet = not D.is_main()  # under torchrun only rank 0 writes the results
    if args.items and D.is_main():
        def write_items(tmp: str) -> None:
            import csv

            with open(tmp, "w", newline="") as f:
                w = csv.writer(f)
                keys = list(results[0].distances)
                w.writerow(["split", "item"] + keys + ["judge" if kind == "2afc" else "same"])
                for r in results:
                    for i, path in enumerate(r.paths):
                        w.writerow([r.split, os.path.basename(path)] + [repr(float(r.distances[k][i])) for k in keys]
                                   + [repr(float(r.judgments[i]))])
        atomic_write(args.items, write_items)
        res.notes.append(f"per-item distances written to {args.items}")
    return res


def run_train(args) -> C.Result:
    """Train LPIPS' lin layers on BAPPS 2AFC splits (lpips' trainer; --adversarial: R-LPIPS)."""
    from .. import distributed as D
    from ..training import AdversarialConfig, TrainConfig, train_lpips

    adv = None
    if args.adversarial:
        eps = args.eps if args.eps is not None else (8 / 255 if args.adversarial == "linf" else 3.0)
        adv = AdversarialConfig(eps=eps,
                                norm=args.adversarial, target=args.target, steps=args.attack_steps)
    cfg = TrainConfig(net=args.net, version=args.version, epochs=args.epochs, decay_epochs=args.decay_epochs,
                      batch_size=args.batch_size, lr=args.lr, tune_trunk=args.tune_trunk,
                      from_scratch=args.from_scratch, init=args.init, seed=args.seed, workers=args.workers,
                      adversarial=adv)
    train_lpips(args.dirs, args.out_dir, cfg, device=args.device, resume=args.resume, overwrite=args.overwrite,
                allow_other_data=args.allow_other_data, stop_after=args.stop_after, progress=args.progress)
    res = C.Result(["epoch", "lr", "loss", "acc"])
    log_path = Path(args.out_dir) / "log.csv"
    if D.is_main() and log_path.is_file():
        lines = log_path.read_text().splitlines()[1:]
        res.rows = [dict(zip(res.columns, line.split(","))) for line in lines]
    res.summary = {"checkpoint": str(Path(args.out_dir) / "checkpoint.pt"),
                   "weights": str(Path(args.out_dir) / "latest_net_.pth")}
    res.quiet = not D.is_main()
    return res


def run_robust_2afc(args) -> C.Result:
    """2AFC without and under L_inf / L_2 PGD on each image role, per checkpoint (R-LPIPS Table 1)."""
    from ..model import LPIPS
    from ..training import robust_2afc_table

    names = args.names or [Path(p).stem for p in args.model_path]
    if len(names) != len(args.model_path):
        raise C.CLIError(f"--names gives {len(names)} names for {len(args.model_path)} --model-path files")
    models = {n: LPIPS(net=args.net, model_path=p, verbose=False).to(args.device)
              for n, p in zip(names, args.model_path)}
    rows = robust_2afc_table(models, args.dirs, eps_linf=args.eps_linf, eps_l2=args.eps_l2, targets=args.targets,
                             steps=args.steps, batch_size=args.batch_size, device=args.device, progress=args.progress)
    res = C.Result(["model", "attack", "target", "eps", "2afc"])
    res.rows = rows
    return res


