"""The E-LPIPS paper's studies on real photos, LPIPS-VGG vs E-LPIPS side by side:

* ``hessian``: the spectrum of J^T J (the distance Hessian / 2 at y = x) at 64x64 crops:
  lambda_max and lambda_min (Lanczos Ritz values) over the mean eigenvalue (Hutchinson), the
  condition number, the normalized moments and a density plot (stochastic Lanczos quadrature);
  the ratios E-LPIPS / LPIPS next to the paper's (lambda_max 0.058-0.146, condition 2e-4-5e-4).
* ``attacks``: A2 (maximize d within ||a - x||_2^2 <= eps) and A1 (pull towards another photo
  within d(a, x) <= eps) against LPIPS-VGG and against E-LPIPS with fresh draws every step (EoT)
  and with one fixed draw; every E-LPIPS value measured with many fresh draws. Reported as the
  paper does: the relative L2 of the perturbation, the distances before/after, both metrics.
* ``ablation``: A2 with EoT against E-LPIPS with one of the seven random families switched off
  at a time (and all off): how much each family contributes to the robustness (Fig. 3's study).

    .venv/bin/python benchmarks/elpips_paper_study.py hessian attacks ablation --out benchmarks/results

Writes ``elpips-study-<part>.json`` and PNGs into ``--out``; prints a markdown summary.
"""
import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fastlpips import ELPIPS, LPIPS
from fastlpips.attacks import ELPIPSDistance, LPIPSDistance, estimate_distance, pull_to_target, push_within_l2
from fastlpips.geometry import hessian_study, plot_spectrum
from fastlpips.imagefolder import example_photos
from fastlpips.precision import cpu_info
from fastlpips.transforms import FAMILIES

PAPER = {"lambda_max_ratio": (0.058, 0.146), "condition_ratio": (2e-4, 5e-4)}


def photos(n: int, size: int = 64) -> torch.Tensor:
    """Centre crops of the scikit-image photos (downscaled by 4 first: natural 64x64 content)."""
    out = []
    for im in example_photos()[:n]:
        t = torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1).float()[None] / 255
        t = torch.nn.functional.interpolate(t, scale_factor=0.25, mode="area")
        h, w = t.shape[2:]
        out.append(t[..., (h - size) // 2:(h - size) // 2 + size, (w - size) // 2:(w - size) // 2 + size])
    return torch.cat(out).clamp(0, 1)


def machine() -> dict:
    return {"cpu": platform.processor() or platform.machine(), "isa": cpu_info(), "threads": torch.get_num_threads(),
            "torch": torch.__version__}


def run_hessian(args, x):
    studies, out = {}, {}
    dists = {"LPIPS-VGG": LPIPSDistance(LPIPS(net="vgg", verbose=False)),
             f"E-LPIPS ({args.hessian_draws} draws)": ELPIPSDistance(ELPIPS(), samples=args.hessian_draws, seed=0)}
    for name, d in dists.items():
        t = time.perf_counter()
        st = hessian_study(d, x, iterations=args.iterations, probes=args.probes, order=4, seed=0, progress=True)
        studies[name] = st
        out[name] = dict(st.summary(), seconds=time.perf_counter() - t)
    lp, el = (studies[k] for k in dists)
    ratio_max = ((el.lambda_max / el.mean) / (lp.lambda_max / lp.mean)).tolist()
    ratio_cond = (el.condition / lp.condition).tolist()
    out["ratios"] = {"lambda_max_over_mean": ratio_max, "condition": ratio_cond, "paper": PAPER}
    plot_spectrum(studies, Path(args.out) / "elpips-study-spectrum.png",
                  title=f"J^T J spectrum at {x.shape[0]} real 64x64 crops (Lanczos {args.iterations} it.)")
    lines = ["| metric | lambda_max / mean | lambda_min / mean (Ritz) | condition (lower bound) | m2 / m1^2 |",
             "|---|---|---|---|---|"]
    for name in dists:
        s = out[name]
        f = lambda v: ", ".join(f"{a:.3g}" for a in v)  # noqa: E731
        lines.append(f"| {name} | {f(s['lambda_max_over_mean'])} | {f(s['lambda_min_over_mean'])} | "
                     f"{f(s['condition'])} | {f([m[1] for m in s['normalized_moments']])} |")
    lines.append(f"\nE-LPIPS / LPIPS per image: lambda_max/mean {', '.join(f'{r:.3g}' for r in ratio_max)} "
                 f"(paper {PAPER['lambda_max_ratio'][0]}-{PAPER['lambda_max_ratio'][1]}); condition "
                 f"{', '.join(f'{r:.3g}' for r in ratio_cond)} (paper {PAPER['condition_ratio'][0]:g}-"
                 f"{PAPER['condition_ratio'][1]:g})")
    return out, "\n".join(lines)


def _noise_like(x, eps_sq, seed):
    r = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    return (x + math.sqrt(eps_sq) * r / r.flatten(1).norm(dim=1).view(-1, 1, 1, 1)).clamp(0, 1)


def _rel(a, b):
    return ((a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)).tolist()


def _measure(lp, el_metric, a, x, samples):
    """LPIPS-VGG exactly and E-LPIPS with ``samples`` fresh draws (one fixed seed: common draws)."""
    with torch.no_grad():
        v_lp = lp(a, x).tolist()
    v_el, _ = estimate_distance(ELPIPSDistance(el_metric), a, x, samples=samples, seed=12345)
    return v_lp, v_el.tolist()


def run_attacks(args, x):
    el_metric, lp = ELPIPS(), LPIPSDistance(LPIPS(net="vgg", verbose=False))
    attackers = {"LPIPS-VGG": lambda: lp,
                 f"E-LPIPS EoT ({args.draws} fresh draws/step)": lambda: ELPIPSDistance(el_metric, samples=args.draws),
                 f"E-LPIPS fixed draw ({args.draws} draws)": lambda: ELPIPSDistance(el_metric, samples=args.draws)}
    out, lines, images = {"a2": {}, "a1": {}}, [], {}
    n_pix = x[0].numel()
    lines += ["**A2**: maximize d(a, x) within ||a - x||_2^2 <= eps (RMS per pixel given); d after / d of random "
              "noise of the same norm (>1: the attack found a direction the metric over-reacts to).", "",
              "| attacked metric | RMS | rel. L2 | LPIPS after / noise | E-LPIPS after / noise "
              "|", "|---|---|---|---|---|"]
    for rms in args.rms:
        eps = (rms ** 2) * n_pix
        noise = _noise_like(x, eps, 7)
        base_lp, base_el = _measure(lp, el_metric, noise, x, args.check)
        for name, make in attackers.items():
            t = time.perf_counter()
            res = push_within_l2(make(), x, eps, steps=args.steps, fixed_draw="fixed" in name, check_samples=args.check,
                                 generator=torch.Generator().manual_seed(1))
            v_lp, v_el = _measure(lp, el_metric, res.images, x, args.check)
            row = {"rms": rms, "eps": eps, "rel_l2": _rel(res.images, x), "lpips": v_lp, "elpips": v_el,
                   "lpips_noise": base_lp, "elpips_noise": base_el, "seconds": time.perf_counter() - t}
            out["a2"].setdefault(name, []).append(row)
            g_lp = np.mean(np.array(v_lp) / np.array(base_lp))
            g_el = np.mean(np.array(v_el) / np.array(base_el))
            lines.append(f"| {name} | {rms:.3g} | {np.mean(row['rel_l2']):.3f} | {g_lp:.2f} "
                         f"({np.mean(v_lp):.3f} vs {np.mean(base_lp):.3f}) | {g_el:.2f} "
                         f"({np.mean(v_el):.4f} vs {np.mean(base_el):.4f}) |")
            if rms == args.rms[-1]:
                images[f"A2 vs {name.split(' (')[0]}"] = res.images
    target = x.roll(1, 0)
    lines += ["", "**A1**: pull towards another photo within d(a, x) <= eps, eps = the attacked metric's distance "
              f"of Gaussian noise sigma {args.a1_sigma}; remaining = ||a - target|| / ||x - target|| (lower: the "
              "metric was fooled further).", "",
              "| attacked metric | eps | rel. L2 of a - x | remaining to target | LPIPS(a, x) | E-LPIPS(a, x) |",
              "|---|---|---|---|---|---|"]
    noisy = (x + args.a1_sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(3))).clamp(0, 1)
    n_lp, n_el = _measure(lp, el_metric, noisy, x, args.check)
    for name, make in attackers.items():
        eps = float(np.mean(n_lp if name.startswith("LPIPS") else n_el))
        t = time.perf_counter()
        res = pull_to_target(make(), x, target, eps, steps=args.steps, step_size=0.1, fixed_draw="fixed" in name,
                             check_samples=args.check)
        v_lp, v_el = _measure(lp, el_metric, res.images, x, args.check)
        remaining = ((res.images - target).flatten(1).norm(dim=1) / (x - target).flatten(1).norm(dim=1)).tolist()
        out["a1"][name] = {"eps": eps, "rel_l2": _rel(res.images, x), "remaining": remaining, "lpips": v_lp,
                           "elpips": v_el, "ok": res.ok.tolist(), "seconds": time.perf_counter() - t}
        lines.append(f"| {name} | {eps:.4f} | {np.mean(_rel(res.images, x)):.3f} | {np.mean(remaining):.3f} | "
                     f"{np.mean(v_lp):.4f} | {np.mean(v_el):.4f} |")
        images[f"A1 vs {name.split(' (')[0]}"] = res.images
    _grid(x, target, images, Path(args.out) / "elpips-study-attacks.png")
    return out, "\n".join(lines)


def _grid(x, target, images, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = {"original": x, **images, "A1 target": target}
    fig, axes = plt.subplots(x.shape[0], len(cols), figsize=(1.6 * len(cols), 1.7 * x.shape[0]), squeeze=False)
    for j, (name, imgs) in enumerate(cols.items()):
        for i in range(x.shape[0]):
            ax = axes[i][j]
            ax.imshow(imgs[i].permute(1, 2, 0).clamp(0, 1).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def run_ablation(args, x):
    rms = args.rms[-1]
    eps = rms ** 2 * x[0].numel()
    noise = _noise_like(x, eps, 7)
    configs = {"all seven (E-LPIPS)": FAMILIES}
    configs.update({f"without {f}": [g for g in FAMILIES if g != f] for f in FAMILIES})
    configs["none (VGG, average pooling)"] = []
    out, lines = {}, ["| ensemble | A2 gain: d(attack) / d(noise), each under its own ensemble | d(attack) | d(noise) "
                      "|",
                      "|---|---|---|---|"]
    for name, fams in configs.items():
        metric = ELPIPS(families=fams)
        t = time.perf_counter()
        res = push_within_l2(ELPIPSDistance(metric, samples=args.draws), x, eps, steps=args.steps,
                             check_samples=args.check, generator=torch.Generator().manual_seed(1))
        base, _ = estimate_distance(ELPIPSDistance(metric), noise, x, samples=args.check, seed=12345)
        gain = (res.distance / base).tolist()
        out[name] = {"families": list(fams), "gain": gain, "attack": res.distance.tolist(), "noise": base.tolist(),
                     "seconds": time.perf_counter() - t}
        lines.append(f"| {name} | {np.mean(gain):.2f} ({', '.join(f'{g:.2f}' for g in gain)}) | "
                     f"{float(res.distance.mean()):.4f} | {float(base.mean()):.4f} |")
    return out, f"A2 with EoT ({args.draws} draws/step, {args.steps} steps), RMS {rms} per pixel\n\n" + "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("parts", nargs="+", choices=["hessian", "attacks", "ablation"])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=30, help="Lanczos iterations (hessian)")
    ap.add_argument("--probes", type=int, default=2, help="Lanczos starts and Hutchinson probes (hessian)")
    ap.add_argument("--hessian-draws", type=int, default=8, help="E-LPIPS draws averaged in J^T J (hessian)")
    ap.add_argument("--draws", type=int, default=4, help="E-LPIPS draws per attack step")
    ap.add_argument("--steps", type=int, default=40, help="attack steps")
    ap.add_argument("--check", type=int, default=128, help="fresh draws measuring every E-LPIPS value")
    ap.add_argument("--rms", type=float, nargs="+", default=[0.01, 0.03], help="A2 budgets, RMS per pixel")
    ap.add_argument("--a1-sigma", type=float, default=0.03)
    args = ap.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    x = photos(args.images)
    for part in args.parts:
        t = time.perf_counter()
        data, table = {"hessian": run_hessian, "attacks": run_attacks, "ablation": run_ablation}[part](args, x)
        meta = {"part": part, "args": vars(args), "machine": machine(), "seconds": time.perf_counter() - t,
                "date": time.strftime("%Y-%m-%d")}
        (Path(args.out) / f"elpips-study-{part}.json").write_text(json.dumps({"meta": meta, "results": data}, indent=1))
        sys.stdout.write(f"\n## {part} ({meta['seconds']:.0f} s)\n\n{table}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
