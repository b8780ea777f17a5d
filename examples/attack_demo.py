"""Worked example: perceptual attacks on a small classifier, with a picture.

    .venv/bin/python examples/attack_demo.py --out attack_demo.png

Trains a small CNN (a few seconds on CPU) to tell 32x32 crops of four scikit-image photos apart,
then attacks correctly classified crops with PPGD and LPA under an AlexNet perceptual bound (0.5 on
perceptual-advex's scale), and saves original / adversarial / difference x4 for a few of them.
"""
import argparse

import numpy as np
import torch
from torch import nn

import fastlpips
from fastlpips.attacks import LagrangePerceptualAttack, LPIPSDistance, PerceptualPGD


def crops(n_per_class, seed):
    from skimage import data

    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    g = np.random.default_rng(seed)
    xs, ys = [], []
    for label, im in enumerate(photos):
        for _ in range(n_per_class):
            y0, x0 = g.integers(0, im.shape[0] - 32), g.integers(0, im.shape[1] - 32)
            xs.append(torch.from_numpy(np.ascontiguousarray(im[y0:y0 + 32, x0:x0 + 32, :3])).permute(2, 0, 1))
            ys.append(label)
    return torch.stack(xs).float() / 255, torch.tensor(ys)


def train_classifier(seed=0):
    torch.manual_seed(seed)
    clf = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1),
                        nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 8 * 8, 4))
    x, y = crops(128, seed)
    opt = torch.optim.Adam(clf.parameters(), 3e-3)
    for _ in range(300):
        idx = torch.randint(len(x), (64,))
        loss = nn.functional.cross_entropy(clf(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return clf.eval().requires_grad_(False)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="attack_demo.png")
    ap.add_argument("--bound", type=float, default=0.5)
    args = ap.parse_args()
    clf = train_classifier()
    x, y = crops(8, 1)
    keep = clf(x).argmax(1) == y
    x, y = x[keep], y[keep]
    dist = LPIPSDistance(fastlpips.LPIPS(net="alex", verbose=False), calibrated=False)
    rows = []
    for name, attack in (("PPGD", PerceptualPGD(clf, dist, args.bound)),
                         ("LPA", LagrangePerceptualAttack(clf, dist, args.bound))):
        torch.manual_seed(0)
        adv = attack(x, y)
        with torch.no_grad():
            d, fooled = dist(x, adv), clf(adv).argmax(1) != y
        print(f"{name}: {int(fooled.sum())}/{len(y)} misclassified, max distance {float(d.max()):.3f} "
              f"(bound {args.bound}), mean L_inf {float((adv - x).abs().flatten(1).amax(1).mean()):.3f}")
        rows.append((name, adv, d))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    show = min(4, len(y))
    fig, axes = plt.subplots(show, 1 + 2 * len(rows), figsize=(2 * (1 + 2 * len(rows)), 2 * show), squeeze=False)
    for i in range(show):
        axes[i, 0].imshow(x[i].permute(1, 2, 0).numpy())
        axes[i, 0].set_title("original")
        for k, (name, adv, d) in enumerate(rows):
            axes[i, 1 + 2 * k].imshow(adv[i].permute(1, 2, 0).numpy())
            axes[i, 1 + 2 * k].set_title(f"{name} d={float(d[i]):.2f}")
            axes[i, 2 + 2 * k].imshow((0.5 + 4 * (adv[i] - x[i])).clamp(0, 1).permute(1, 2, 0).numpy())
            axes[i, 2 + 2 * k].set_title(f"{name} diff x4")
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
