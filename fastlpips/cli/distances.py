"""LPIPS and E-LPIPS distances of image files: ``pair``, ``dirs``, ``allpairs``, ``elpips``, ``demo``
(the reference scripts lpips_2imgs.py, lpips_2dirs.py, lpips_1dir_allpairs.py, with batching, a
progress bar and a spatial heat map)."""
from __future__ import annotations

import io
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch

from . import common as C


def register(sub, parents: C.Parents) -> None:
    lp = [parents.common, parents.lpips]
    s = sub.add_parser("pair", parents=lp, help="distance between two images")
    s.add_argument("a")
    s.add_argument("b")
    s.add_argument("--heatmap", metavar="OUT.png", help="save the spatial distance map as a picture")
    _metric_option(s)
    s.set_defaults(func=run_pair, validate=validate)
    s = sub.add_parser("dirs", parents=lp, help="distances between same-named images of two folders")
    s.add_argument("dir0")
    s.add_argument("dir1")
    _metric_option(s)
    s.set_defaults(func=run_dirs, validate=validate)
    s = sub.add_parser("allpairs", parents=lp, help="distances between all pairs of images in a folder")
    s.add_argument("dir")
    _metric_option(s)
    s.set_defaults(func=run_allpairs, validate=validate)
    s = sub.add_parser("elpips", parents=lp, help="E-LPIPS of two images (or two folders) to a confidence interval")
    s.add_argument("a")
    s.add_argument("b")
    s.add_argument("--rtol", type=float, default=0.025, help="stop when the interval half-width < rtol * mean (0.025)")
    s.add_argument("--atol", type=float, default=0.01, help="... and < atol (0.01), as the release does")
    s.add_argument("--confidence", type=float, default=0.95, help="interval confidence (0.95)")
    s.add_argument("--max-samples", type=int, default=2000, help="sample budget per pair (2000)")
    s.add_argument("--scales", type=int, default=None,
                   help="scale levels 1..8 (default: the release's rule, min(H, W) // 64)")
    s.add_argument("--method", default=None, choices=["auto", "cv", "qmc", "stratified", "iid"],
                   help="sampling design (auto: control variates with cost-aware allocation where they apply; "
                        "see elpips_estimate)")
    s.add_argument("--iid", action="store_true", help="same as --method iid (the release's i.i.d. sampling)")
    s.add_argument("--seed", type=int, default=None, help="random seed (reproducible results)")
    C.families_argument(s)
    s.set_defaults(func=run_elpips, validate=validate_elpips)
    s = sub.add_parser("demo", parents=lp, help="LPIPS on a bundled sample photo and three distortions")
    s.add_argument("--heatmap", metavar="OUT.png", help="save the JPEG distortion's distance map as a picture")
    s.set_defaults(func=run_demo, validate=validate)


def _metric_option(s) -> None:
    s.add_argument("--metric", default=None, type=C.metric_name, metavar="NAME",
                   help="any name of `fastlpips metrics` (dists, psnr, elpips, ...) instead of LPIPS --net/--version; "
                        "the column is then named after the metric")


def validate(args) -> List[Path]:
    """pair, dirs, allpairs, demo: the LPIPS options; the inputs an output must not overwrite."""
    if getattr(args, "metric", None) is not None:
        if args.net is not None or args.version is not None:
            raise C.CLIError(f"--metric {args.metric} replaces --net/--version (give one or the other; LPIPS is "
                             f"--metric lpips-vgg, lpips-alex-v0.0, ...)")
        from ..metrics import metric_info

        info = metric_info(args.metric)
        if getattr(args, "heatmap", None) and not info.spatial:
            raise C.CLIError(f"--heatmap draws LPIPS' distance map; --metric {args.metric} has none")
        if info.family == "lpips":  # the heat map's model and title
            args.net, args.version = info.params["net"], info.params["version"]
    args.version = args.version or "0.1"
    if args.net is None:
        args.net = "both" if args.command == "demo" else "alex"
    elif args.net == "both" and args.command != "demo":
        raise C.CLIError("--net both is only for the demo; choose alex, vgg or squeeze")
    if args.command == "pair":
        return [Path(args.a), Path(args.b)]
    if args.command == "dirs":
        return C.files_in([args.dir0, args.dir1])
    if args.command == "allpairs":
        return C.files_in([args.dir])
    return []


def validate_elpips(args) -> List[Path]:
    if args.net is None:
        args.net = "vgg"
    if args.net not in ("vgg", "squeeze"):
        raise C.CLIError(f"--net {args.net}: E-LPIPS has a VGG (default) and an experimental SqueezeNet "
                         "variant: use --net vgg or --net squeeze")
    if args.version is not None:
        raise C.CLIError("--version selects an LPIPS version; E-LPIPS has its own weights (drop --version)")
    if args.scales is not None and not 1 <= args.scales <= 8:
        raise C.CLIError(f"--scales must be in 1..8, got {args.scales}")
    for opt in ("rtol", "atol"):
        v = getattr(args, opt)
        if not v > 0:  # NaN too
            raise C.CLIError(f"--{opt} must be > 0, got {v}")
    if not 0 < args.confidence < 1:
        raise C.CLIError(f"--confidence must be in (0, 1), got {args.confidence}")
    if args.max_samples < 2:
        raise C.CLIError(f"--max-samples must be >= 2, got {args.max_samples}")
    if args.iid and args.method not in (None, "iid"):
        raise C.CLIError(f"--iid and --method {args.method} disagree: give one of them")
    args.method = "iid" if args.iid else (args.method or "auto")
    return [Path(args.a), Path(args.b)] + C.files_in([args.a, args.b])


# -- running -------------------------------------------------------------------------------------------
def _pair_function(args):
    """(column name, f(x0, x1) -> (N,) on [-1, 1] batches, the LPIPS model when the metric is LPIPS)."""
    if args.metric is None:
        model = C.lpips_model(args)
        return "distance", lambda x0, x1: model(x0, x1).reshape(-1), model
    from ..metrics import create_metric, metric_info

    budget = {"memory_budget": args.memory_budget} if args.memory_budget is not None and \
        "memory_budget" in metric_info(args.metric).options else {}
    metric = create_metric(args.metric, device=args.device, **budget)
    metric.requires_grad_(False)
    lpips = metric.module if metric.info.family == "lpips" else None
    return args.metric, metric.signed, lpips


def run_pair(args) -> C.Result:
    a, b = C.load_lpips(Path(args.a)), C.load_lpips(Path(args.b))
    C.check_same_size(args.a, a, args.b, b)
    dev = torch.device(args.device)
    column, fn, _ = _pair_function(args)
    res = C.Result(["image0", "image1", column])
    with torch.no_grad():
        dist = fn(a.to(dev), b.to(dev)).item()
        if args.heatmap:
            dmap = C.lpips_model(args, spatial=True)(a.to(dev), b.to(dev))
            title = f"LPIPS {args.net} v{args.version}: {dist:.4f}"
            res.pictures.append(C.Picture(f"the heat map --heatmap {args.heatmap}",
                                        lambda: C.save_heatmap(dmap[0, 0], args.heatmap, title, (a[0], b[0]))))
    res.rows.append({"image0": args.a, "image1": args.b, column: dist})
    return res


def _batched(model, pairs: Sequence, batch_size: int, device, progress) -> List[float]:
    """Distances for (path0, path1) pairs, batching images of equal size."""
    loaded = []
    for p0, p1 in pairs:
        t0, t1 = C.load_lpips(p0), C.load_lpips(p1)
        C.check_same_size(p0, t0, p1, t1)
        loaded.append((t0, t1))
    by_size = defaultdict(list)
    for i, (t0, _) in enumerate(loaded):
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


def run_dirs(args) -> C.Result:
    d0, d1 = Path(args.dir0), Path(args.dir1)
    listed = C.list_images(d0)
    C.list_images(d1)
    files = [p for p in listed if (d1 / p.name).is_file()]
    column, fn, _ = _pair_function(args)
    res = C.Result(["file", column])
    missing = len(listed) - len(files)
    if missing:
        res.notes.append(f"warning: {missing} file(s) of {d0} have no counterpart in {d1}")
    dists: List[float] = []
    if files:
        with C.progress_bar(len(files), "dirs", args.progress) as bar:
            dists = _batched(fn, [(p, d1 / p.name) for p in files], args.batch_size, torch.device(args.device), bar)
    res.rows = [{"file": p.name, column: d} for p, d in zip(files, dists)]
    res.summary = {"pairs": len(res.rows), "mean": float(np.mean(dists)) if dists else None}
    return res


def run_allpairs(args) -> C.Result:
    files = C.list_images(Path(args.dir))
    if len(files) < 2:
        raise C.CLIError(f"{args.dir} holds fewer than two images")
    ims = [C.load_lpips(p) for p in files]
    for p, t in zip(files[1:], ims[1:]):
        C.check_same_size(files[0], ims[0], p, t)
    column, fn, model = _pair_function(args)
    x = torch.cat(ims).to(args.device)
    pairs = [(i, j) for i in range(len(files)) for j in range(i + 1, len(files))]
    if model is not None:  # LPIPS: every image through the trunk once
        with torch.no_grad(), C.progress_bar(len(files), "features", args.progress) as bar:
            D = model.pairwise(x, batch_size=args.batch_size, progress=bar.update).cpu()
        values = [float(D[i, j]) for i, j in pairs]
    else:  # any other metric, pair by pair in batches
        values = []
        with torch.no_grad(), C.progress_bar(len(pairs), "pairs", args.progress) as bar:
            for s in range(0, len(pairs), args.batch_size):
                chunk = pairs[s:s + args.batch_size]
                i0 = torch.tensor([i for i, _ in chunk], device=x.device)
                i1 = torch.tensor([j for _, j in chunk], device=x.device)
                values += fn(x[i0], x[i1]).reshape(-1).tolist()
                bar.update(len(chunk))
    res = C.Result(["image0", "image1", column])
    res.rows = [{"image0": files[i].name, "image1": files[j].name, column: v} for (i, j), v in zip(pairs, values)]
    res.summary = {"pairs": len(res.rows), "mean": float(np.mean(values))}
    return res


def run_demo(args) -> C.Result:
    """LPIPS between scikit-image's bundled astronaut photo and three real distortions."""
    try:
        from skimage import data
    except ImportError:
        raise C.CLIError("the demo uses scikit-image's bundled photos (pip install scikit-image); "
                       "or run `fastlpips pair A.png B.png` on your own images") from None
    from PIL import Image, ImageFilter

    from ..utils import im2tensor

    photo = Image.fromarray(data.astronaut()).resize((256, 256), Image.Resampling.BICUBIC)
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
    res = C.Result(["image", "distortion", "net", "distance"])
    with torch.no_grad():
        for net in (["alex", "vgg"] if args.net == "both" else [args.net]):
            d = C.lpips_model(args, net=net)(ref, batch).reshape(-1).tolist()
            res.rows += [{"image": "astronaut 256x256", "distortion": k, "net": net, "distance": v}
                         for k, v in zip(variants, d)]
        if args.heatmap:
            net = "alex" if args.net == "both" else args.net
            dmap = C.lpips_model(args, spatial=True, net=net)(ref, batch[:1])
            res.pictures.append(C.Picture(f"the heat map --heatmap {args.heatmap}",
                                        lambda: C.save_heatmap(dmap[0, 0], args.heatmap, f"JPEG q=10, LPIPS {net}",
                                                             (ref[0], batch[0])),
                                        f"heat map written to {args.heatmap}"))
    return res


def _elpips_pairs(args) -> List:
    a, b = Path(args.a), Path(args.b)
    if a.is_dir() != b.is_dir():
        raise C.CLIError(f"give two image files or two folders, got {a} and {b}")
    if not a.is_dir():
        return [(a, b)]
    pairs = [(p, b / p.name) for p in C.list_images(a) if (b / p.name).is_file()]
    if not pairs:
        raise C.CLIError(f"no same-named images in {a} and {b}")
    return pairs


def run_elpips(args) -> C.Result:
    """E-LPIPS of two images (or same-named images of two folders) to a confidence interval."""
    from ..elpips import ELPIPS, scale_levels_for_size
    from ..estimator import elpips_estimate

    pairs = _elpips_pairs(args)
    metrics: Dict[int, ELPIPS] = {}
    res = C.Result(["image0", "image1", "elpips", "half_width", "samples", "converged", "scale_levels", "method"])
    with C.progress_bar(len(pairs) * args.max_samples, "elpips", args.progress) as bar:
        for p0, p1 in pairs:
            x, y = C.load_unit(p0), C.load_unit(p1)  # E-LPIPS takes [0, 1] images
            C.check_same_size(p0, x, p1, y)
            levels = args.scales or scale_levels_for_size(x.shape[2], x.shape[3])
            if levels not in metrics:
                budget = {} if args.memory_budget is None else {"memory_budget": args.memory_budget}
                metrics[levels] = ELPIPS(net=args.net, max_scale=levels, families=args.families,
                                         **budget).to(args.device)
            done = [0]

            def tick(n, est, done=done):
                bar.update(n - done[0])
                done[0] = n

            est = elpips_estimate(x.to(args.device), y.to(args.device), rtol=args.rtol, atol=args.atol,
                                  confidence=args.confidence, max_samples=args.max_samples, seed=args.seed,
                                  method=args.method, metric=metrics[levels], callback=tick,
                                  batch_size=args.batch_size)
            bar.update(args.max_samples - done[0])
            res.rows.append({"image0": str(p0), "image1": str(p1), "elpips": float(est.mean[0]),
                             "half_width": float(est.half_width[0]), "samples": est.samples,
                             "converged": bool(est.converged[0]), "scale_levels": levels, "method": est.method})
    return res


