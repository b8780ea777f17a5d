"""Command line: ``fastlpips pair A B``, ``fastlpips dirs D0 D1``, ``fastlpips allpairs D``, ``fastlpips demo``.

Mirrors the reference scripts (lpips_2imgs.py, lpips_2dirs.py, lpips_1dir_allpairs.py) with
batching, table/CSV/JSON output, a progress bar for folders and a spatial heat map.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from .model import LPIPS, LPIPSFeatures
from .utils import im2tensor, load_image

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm"}


class Progress:
    """A minimal progress bar on stderr (shown when stderr is a terminal, or when forced)."""

    def __init__(self, total: int, label: str, enabled: Optional[bool] = None, stream=None) -> None:
        self.total, self.label, self.done = max(total, 1), label, 0
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.t0 = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.enabled:
            frac = min(self.done / self.total, 1.0)
            bar = "#" * int(30 * frac) + "-" * (30 - int(30 * frac))
            rate = self.done / max(time.perf_counter() - self.t0, 1e-9)
            self.stream.write(f"\r{self.label} [{bar}] {self.done}/{self.total} ({rate:.1f}/s)")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def _list_images(folder: Path) -> List[Path]:
    if not folder.is_dir():
        raise SystemExit(f"error: {folder} is not a directory")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())


def _load(path: Path) -> torch.Tensor:
    try:
        return im2tensor(load_image(path))
    except FileNotFoundError:
        raise SystemExit(f"error: image {path} does not exist")
    except Exception as e:  # PIL's UnidentifiedImageError and friends
        raise SystemExit(f"error: cannot read image {path}: {e}")


def _model(args, spatial: bool = False) -> LPIPS:
    model = LPIPS(net=args.net, version=args.version, spatial=spatial, verbose=False)
    model.requires_grad_(False)
    return model.to(args.device)


def _emit(rows: List[Dict], fmt: str, out, summary: Optional[Dict] = None) -> None:
    if fmt == "json":
        json.dump({"results": rows, **({"summary": summary} if summary else {})}, out, indent=2)
        out.write("\n")
        return
    if not rows:
        out.write("(no image pairs)\n")
        return
    cols = list(rows[0])
    if fmt == "csv":
        w = csv.DictWriter(out, fieldnames=cols, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        return
    cells = [[_fmt(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
    out.write("  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip() + "\n")
    for x in cells:
        out.write("  ".join(v.ljust(w) for v, w in zip(x, widths)).rstrip() + "\n")
    if summary:
        out.write("  ".join(f"{k}: {_fmt(v)}" for k, v in summary.items()) + "\n")


def _fmt(v) -> str:
    return f"{v:.6f}" if isinstance(v, float) else str(v)


def save_heatmap(dmap: torch.Tensor, path: str, title: str = "", images: Sequence[torch.Tensor] = ()) -> None:
    """Save an (H, W) distance map as a picture with a colour bar, after the compared images
    (each (3, H, W) in [-1, 1]) when given."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("error: --heatmap needs matplotlib (pip install matplotlib)")
    arr = dmap.detach().float().cpu().numpy()
    h, w = arr.shape
    n = len(images) + 1
    side = 3.6
    fig, axes = plt.subplots(1, n, figsize=(side * n * w / max(h, w) + 0.8, side * h / max(h, w) + 0.6), squeeze=False)
    for ax, im, name in zip(axes[0], images, ("image 0", "image 1")):
        ax.imshow(((im.detach().float().cpu().permute(1, 2, 0).numpy() + 1) / 2).clip(0, 1))
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    ax = axes[0][-1]
    shown = ax.imshow(arr, cmap="magma", interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title or "LPIPS map", fontsize=9)
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="LPIPS per pixel")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- commands ------------------------------------------------------------------------------------
def cmd_pair(args, out) -> int:
    a, b = _load(Path(args.a)), _load(Path(args.b))
    if a.shape != b.shape:
        raise SystemExit(f"error: {args.a} is {a.shape[3]}x{a.shape[2]} but {args.b} is {b.shape[3]}x{b.shape[2]}")
    dev = torch.device(args.device)
    with torch.no_grad():
        if args.heatmap:
            dmap = _model(args, spatial=True)(a.to(dev), b.to(dev))
            dist = _model(args)(a.to(dev), b.to(dev)).item()
            save_heatmap(dmap[0, 0], args.heatmap, f"LPIPS {args.net} v{args.version}: {dist:.4f}", (a[0], b[0]))
        else:
            dist = _model(args)(a.to(dev), b.to(dev)).item()
    _emit([{"image0": args.a, "image1": args.b, "distance": dist}], args.format, out)
    return 0


def _batched(model: LPIPS, pairs: Sequence, batch_size: int, device, progress: Progress) -> List[float]:
    """Distances for (path0, path1) pairs, batching images of equal size."""
    loaded = [(_load(p0), _load(p1)) for p0, p1 in pairs]
    by_size = defaultdict(list)
    for i, (t0, t1) in enumerate(loaded):
        if t0.shape != t1.shape:
            raise SystemExit(f"error: {pairs[i][0]} and {pairs[i][1]} have different sizes")
        by_size[tuple(t0.shape[2:])].append(i)
    dists = [0.0] * len(pairs)
    with torch.no_grad():
        for idx in by_size.values():
            for s in range(0, len(idx), batch_size):
                chunk = idx[s:s + batch_size]
                x0 = torch.cat([loaded[i][0] for i in chunk]).to(device)
                x1 = torch.cat([loaded[i][1] for i in chunk]).to(device)
                for i, d in zip(chunk, model(x0, x1).reshape(-1).tolist()):
                    dists[i] = d
                progress.update(len(chunk))
    return dists


def cmd_dirs(args, out) -> int:
    d0, d1 = Path(args.dir0), Path(args.dir1)
    files = [p for p in _list_images(d0) if (d1 / p.name).is_file()]
    missing = [p.name for p in _list_images(d0) if not (d1 / p.name).is_file()]
    if missing:
        print(f"warning: {len(missing)} file(s) of {d0} have no counterpart in {d1}", file=sys.stderr)
    progress = Progress(len(files), "dirs", args.progress)
    dists = _batched(_model(args), [(p, d1 / p.name) for p in files], args.batch_size, torch.device(args.device), progress)
    progress.close()
    rows = [{"file": p.name, "distance": d} for p, d in zip(files, dists)]
    summary = {"pairs": len(rows), "mean": float(np.mean(dists)) if dists else float("nan")}
    _emit(rows, args.format, out, summary)
    return 0


def cmd_allpairs(args, out) -> int:
    files = _list_images(Path(args.dir))
    if len(files) < 2:
        raise SystemExit(f"error: {args.dir} holds fewer than two images")
    ims = [_load(p) for p in files]
    if len({t.shape for t in ims}) != 1:
        raise SystemExit("error: allpairs needs images of one size (the distance matrix batches them)")
    model = _model(args)
    progress = Progress(len(files), "features", args.progress)
    x = torch.cat(ims).to(args.device)
    parts = []
    with torch.no_grad():
        for s in range(0, len(files), args.batch_size):
            parts.append(model.features(x[s:s + args.batch_size]))
            progress.update(len(parts[-1]))
        D = model.pairwise_features(LPIPSFeatures.cat(parts)).cpu()
    progress.close()
    rows = [{"image0": files[i].name, "image1": files[j].name, "distance": float(D[i, j])}
            for i in range(len(files)) for j in range(i + 1, len(files))]
    summary = {"pairs": len(rows), "mean": float(np.mean([r["distance"] for r in rows]))}
    _emit(rows, args.format, out, summary)
    return 0


def cmd_demo(args, out) -> int:
    """LPIPS between scikit-image's bundled astronaut photo and three real distortions."""
    try:
        from skimage import data
    except ImportError:
        raise SystemExit("error: the demo uses scikit-image's bundled photos (pip install scikit-image); "
                         "or run `fastlpips pair A.png B.png` on your own images")
    from PIL import Image, ImageFilter

    photo = Image.fromarray(data.astronaut()).resize((256, 256), Image.BICUBIC)
    buf = io.BytesIO()
    photo.save(buf, format="JPEG", quality=10)
    rng = np.random.default_rng(0)
    noisy = np.clip(np.asarray(photo, np.float64) + rng.normal(0, 12, (256, 256, 3)), 0, 255).astype(np.uint8)
    variants = {
        "jpeg-q10": np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")),
        "gaussian-blur-r2": np.asarray(photo.filter(ImageFilter.GaussianBlur(2))),
        "gaussian-noise-s12": noisy,
    }
    ref = im2tensor(np.asarray(photo)).to(args.device)
    batch = torch.cat([im2tensor(v) for v in variants.values()]).to(args.device)
    rows = []
    with torch.no_grad():
        for net in (["alex", "vgg"] if args.net == "both" else [args.net]):
            args_net = argparse.Namespace(**{**vars(args), "net": net})
            d = _model(args_net)(ref, batch).reshape(-1).tolist()
            rows += [{"image": "astronaut 256x256", "distortion": k, "net": net, "distance": v}
                     for k, v in zip(variants, d)]
        if args.heatmap:
            net = "alex" if args.net == "both" else args.net
            args_net = argparse.Namespace(**{**vars(args), "net": net})
            dmap = _model(args_net, spatial=True)(ref, batch[:1])
            save_heatmap(dmap[0, 0], args.heatmap, f"JPEG q=10, LPIPS {net}", (ref[0], batch[0]))
    _emit(rows, args.format, out)
    if args.heatmap:
        print(f"heat map written to {args.heatmap}", file=sys.stderr)
    return 0


def cmd_elpips(args, out) -> int:
    """E-LPIPS of two images (or same-named images of two folders) to a confidence interval."""
    from .elpips import ELPIPS, elpips_estimate, scale_levels_for_size

    a, b = Path(args.a), Path(args.b)
    pairs = [(p, b / p.name) for p in _list_images(a) if (b / p.name).is_file()] if a.is_dir() else [(a, b)]
    if not pairs:
        raise SystemExit(f"error: no same-named images in {a} and {b}")
    metrics = {}
    rows = []
    progress = Progress(len(pairs) * args.max_samples, "elpips", args.progress)
    for p0, p1 in pairs:
        x, y = (_load(p0) + 1) / 2, (_load(p1) + 1) / 2  # E-LPIPS takes [0, 1] images
        if x.shape != y.shape:
            raise SystemExit(f"error: {p0} and {p1} have different sizes")
        levels = args.scales or scale_levels_for_size(x.shape[2], x.shape[3])
        if levels not in metrics:
            metrics[levels] = ELPIPS(max_scale=levels).to(args.device)
        done = [0]

        def tick(n, est, done=done):
            progress.update(n - done[0])
            done[0] = n

        est = elpips_estimate(x.to(args.device), y.to(args.device), rtol=args.rtol, atol=args.atol,
                              confidence=args.confidence, max_samples=args.max_samples, seed=args.seed,
                              stratified=not args.iid, metric=metrics[levels], callback=tick,
                              batch_size=args.batch_size)
        progress.update(args.max_samples - done[0])
        rows.append({"image0": str(p0), "image1": str(p1), "elpips": float(est.mean[0]),
                     "half_width": float(est.half_width[0]), "samples": est.samples,
                     "converged": bool(est.converged[0]), "scale_levels": levels})
    progress.close()
    _emit(rows, args.format, out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastlpips", description="LPIPS perceptual distances (fast, exact drop-in for lpips)")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--net", default=None, choices=["alex", "vgg", "squeeze", "both"],
                        help="trunk network (default alex; the demo runs alex and vgg: 'both')")
    common.add_argument("--version", default="0.1", choices=["0.1", "0.0"], help="LPIPS version (default 0.1)")
    common.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0 (default cpu)")
    common.add_argument("--batch-size", type=int, default=32, help="images per trunk pass (default 32)")
    common.add_argument("--format", default="table", choices=["table", "csv", "json"], help="output format")
    common.add_argument("-o", "--out", help="write results to this file instead of stdout")
    prog = common.add_mutually_exclusive_group()
    prog.add_argument("--progress", dest="progress", action="store_true", default=None, help="always show progress")
    prog.add_argument("--no-progress", dest="progress", action="store_false", help="never show progress")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("pair", parents=[common], help="distance between two images")
    s.add_argument("a")
    s.add_argument("b")
    s.add_argument("--heatmap", metavar="OUT.png", help="save the spatial distance map as a picture")
    s.set_defaults(func=cmd_pair)
    s = sub.add_parser("dirs", parents=[common], help="distances between same-named images of two folders")
    s.add_argument("dir0")
    s.add_argument("dir1")
    s.set_defaults(func=cmd_dirs)
    s = sub.add_parser("allpairs", parents=[common], help="distances between all pairs of images in a folder")
    s.add_argument("dir")
    s.set_defaults(func=cmd_allpairs)
    s = sub.add_parser("elpips", parents=[common], help="E-LPIPS of two images (or two folders) to a confidence interval")
    s.add_argument("a")
    s.add_argument("b")
    s.add_argument("--rtol", type=float, default=0.025, help="stop when the interval half-width < rtol * mean (0.025)")
    s.add_argument("--atol", type=float, default=0.01, help="... and < atol (0.01), as the release does")
    s.add_argument("--confidence", type=float, default=0.95, help="interval confidence (0.95)")
    s.add_argument("--max-samples", type=int, default=2000, help="sample budget per pair (2000)")
    s.add_argument("--scales", type=int, default=None, help="scale levels (default: the release's rule, min(H, W) // 64)")
    s.add_argument("--iid", action="store_true", help="i.i.d. sampling instead of stratified scale levels")
    s.add_argument("--seed", type=int, default=None, help="random seed (reproducible results)")
    s.set_defaults(func=cmd_elpips)
    s = sub.add_parser("demo", parents=[common], help="LPIPS on a bundled sample photo and three distortions")
    s.add_argument("--heatmap", metavar="OUT.png", help="save the JPEG distortion's distance map as a picture")
    s.set_defaults(func=cmd_demo)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise SystemExit("error: --batch-size must be >= 1")
    if args.net is None:
        args.net = "both" if args.command == "demo" else "alex"
    if args.command == "elpips" and args.net not in ("alex", "vgg"):
        raise SystemExit("error: E-LPIPS uses its own VGG network; --net does not apply")
    elif args.net == "both" and args.command != "demo":
        raise SystemExit("error: --net both is only for the demo; choose alex, vgg or squeeze")
    if args.out:
        with open(args.out, "w", newline="") as f:
            return args.func(args, f)
    return args.func(args, sys.stdout)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
