"""R-LPIPS Table 1 layout on a generated BAPPS-layout set: natural vs adversarially trained lin layers.

Both start from LPIPS v0.1 alex lin weights and train the same number of steps on the same triplets
(lr 1e-2, batch 25); 'robust' trains on L_inf PGD examples on x0 (eps 8/255 on the [-1, 1] scale).
The table: 2AFC on the validation splits without attack and under L_inf (8/255) / L_2 (1.0) PGD
(the 2AFC margin objective) on x0, x1 and ref.

Run: .venv/bin/python benchmarks/rlpips_table.py [--train 100] [--val 25] [--epochs 8] [--steps 10]
(about 10 minutes on a 2-core CPU with the defaults). Prints a markdown table.
"""
import argparse
import tempfile
import time
from pathlib import Path

import torch

from fastlpips import LPIPS, bapps, training


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=100, help="training triplets")
    ap.add_argument("--val", type=int, default=25, help="validation triplets per distortion (4 distortions)")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--train-steps", type=int, default=3, help="PGD steps per training batch")
    ap.add_argument("--steps", type=int, default=10, help="PGD steps of the evaluation attack")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="rlpips-table-"))
    data = bapps.make_synthetic_bapps(root / "data", train=args.train, val=args.val, jnd=0, seed=args.seed)
    init = root / "init.pth"
    torch.save(LPIPS(net="alex", verbose=False).state_dict(), init)
    models = {}
    for name, adv in (("natural", None), ("robust", training.AdversarialConfig(eps=8 / 255, steps=args.train_steps))):
        cfg = training.TrainConfig(epochs=args.epochs, decay_epochs=0, batch_size=25, lr=1e-2, seed=0,
                                   init=str(init), adversarial=adv)
        t = time.time()
        models[name] = training.train_lpips(data["2afc/train"], root / name, cfg, progress=False)
        print(f"{name}: trained in {time.time() - t:.0f} s")
    rows = training.robust_2afc_table(models, data["2afc/val"], steps=args.steps, progress=False)
    print(f"\n{args.train} training triplets, {4 * args.val} validation triplets, {args.epochs} epochs; "
          f"attack: {args.steps} PGD steps, 2AFC margin objective\n")
    print("| model | no attack | " + " | ".join(f"{r['attack']} {r['target']}" for r in rows[1:7]) + " |")
    print("|---" * 8 + "|")
    for name in models:
        mine = [r for r in rows if r["model"] == name]
        print(f"| {name} | " + " | ".join(f"{100 * r['2afc']:.1f}" for r in mine) + " |")


if __name__ == "__main__":
    main()
