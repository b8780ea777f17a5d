"""Command line: ``fastlpips pair A B``, ``dirs D0 D1``, ``allpairs D``, ``elpips A B``, ``check``, ``demo``.

Mirrors the reference scripts (lpips_2imgs.py, lpips_2dirs.py, lpips_1dir_allpairs.py) with
batching, table/CSV/JSON output, a progress bar (tqdm) for long work and a spatial heat map.

Nothing is lost or destroyed: outputs (``-o``, ``--heatmap``) are written only after the command
succeeded, through a temporary file in the same folder renamed over the target; an output path
that is one of the inputs is refused before any work; when an output cannot be written the
results still reach stdout. Errors are one message on stderr and exit code 1 (``--debug`` shows
the traceback).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from .model import LPIPS
from .nets.classifiers import ARCHS, build_classifier
from .nets.weights import WeightError
from .utils import IMAGE_EXTS, atomic_write, read_image_tensor


class CLIError(Exception):
    """A user-facing error: printed as one message, exit code 1."""


@dataclass
class Result:
    """What a command produced: rows for the table/CSV/JSON output, and pictures to save after it."""

    columns: List[str]
    rows: List[Dict] = field(default_factory=list)
    summary: Optional[Dict] = None
    pictures: List["Picture"] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    exit_code: int = 0
    quiet: bool = False  # write nothing (a torchrun rank other than 0)


@dataclass
class Picture:
    """A picture to save after the results are out: ``what`` names it in an error (the option and
    file), ``note`` is printed once it is written."""

    what: str
    save: Callable[[], None]
    note: Optional[str] = None


def _progress(total: int, desc: str, enabled: Optional[bool]):
    from tqdm.auto import tqdm

    # enabled=None: shown when stderr is a terminal (tqdm's disable=None), --progress forces it
    return tqdm(total=total, desc=desc, unit="img", disable=None if enabled is None else not enabled,
                file=sys.stderr, dynamic_ncols=True, leave=False if enabled is None else True)


def _list_images(folder: Path) -> List[Path]:
    if not folder.is_dir():
        raise CLIError(f"{folder} is not a directory")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())


def _load01(path: Path) -> torch.Tensor:
    """An image file as a (1, 3, H, W) float32 tensor in [0, 1] (16-bit and float files at full precision)."""
    try:
        return read_image_tensor(path)[None]
    except FileNotFoundError:
        raise CLIError(f"image {path} does not exist") from None
    except Exception as e:  # PIL's errors, unsupported modes, out-of-range float images
        raise CLIError(f"cannot read image {path}: {e}") from e


def _load(path: Path) -> torch.Tensor:
    """An image file as (1, 3, H, W) in [-1, 1], LPIPS' input range."""
    return _load01(path) * 2 - 1


def _model(args, spatial: bool = False, net: Optional[str] = None) -> LPIPS:
    model = LPIPS(net=net or args.net, version=args.version, spatial=spatial, verbose=False)
    model.requires_grad_(False)
    return model.to(args.device)


def _same_size(p0, t0, p1, t1) -> None:
    if t0.shape != t1.shape:
        raise CLIError(f"{p0} is {t0.shape[3]}x{t0.shape[2]} but {p1} is {t1.shape[3]}x{t1.shape[2]}; "
                       "LPIPS compares images of one size")


# -- output ----------------------------------------------------------------------------------------
def _json_value(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def render(res: Result, fmt: str) -> str:
    """The results as text in ``fmt`` ('table' | 'csv' | 'json'); valid for zero rows (no NaN in JSON)."""
    out = io.StringIO()
    if fmt == "json":
        doc = {"results": [{k: _json_value(v) for k, v in r.items()} for r in res.rows]}
        if res.summary is not None:
            doc["summary"] = {k: _json_value(v) for k, v in res.summary.items()}
        json.dump(doc, out, indent=2, allow_nan=False)
        out.write("\n")
    elif fmt == "csv":
        w = csv.DictWriter(out, fieldnames=res.columns, lineterminator="\n")
        w.writeheader()
        w.writerows(res.rows)
    else:
        if not res.rows:
            out.write("(no image pairs)\n")
        else:
            cells = [[_fmt(r[c]) for c in res.columns] for r in res.rows]
            widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(res.columns)]
            out.write("  ".join(c.ljust(w) for c, w in zip(res.columns, widths)).rstrip() + "\n")
            for x in cells:
                out.write("  ".join(v.ljust(w) for v, w in zip(x, widths)).rstrip() + "\n")
        if res.summary:
            out.write("  ".join(f"{k}: {_fmt(v)}" for k, v in res.summary.items()) + "\n")
    return out.getvalue()


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if v and abs(v) < 1e-3 else f"{v:.6f}"
    return str(v)


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def check_output_path(path: str, option: str, inputs: Sequence[Path]) -> Path:
    """Refuse, before any work, an output that is a folder, whose folder is missing or read-only,
    or that is one of the command's input files."""
    p = Path(path)
    if p.is_dir():
        raise CLIError(f"{option} {path} is a directory; give a file name")
    parent = p.parent
    if not parent.is_dir():
        raise CLIError(f"{option} {path}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CLIError(f"{option} {path}: the folder {parent} is not writable")
    for inp in inputs:
        if _same_file(p, Path(inp)):
            raise CLIError(f"{option} {path} is one of the input images; refusing to overwrite it")
    return p


# -- heat map ----------------------------------------------------------------------------------------
def save_heatmap(dmap: torch.Tensor, path: str, title: str = "", images: Sequence[torch.Tensor] = ()) -> None:
    """Save an (H, W) distance map as a picture with a colour bar, after the compared images
    (each (3, H, W) in [-1, 1]) when given. The file appears only once complete."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CLIError("--heatmap needs matplotlib (pip install matplotlib)") from None
    arr = dmap.detach().float().cpu().numpy()
    h, w = arr.shape
    n = len(images) + 1
    side = 3.6
    fig, axes = plt.subplots(1, n, figsize=(side * n * w / max(h, w) + 0.8, side * h / max(h, w) + 0.6), squeeze=False)
    try:
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
        fmt = Path(path).suffix.lstrip(".").lower() or None
        if fmt is not None and fmt not in fig.canvas.get_supported_filetypes():
            raise CLIError(f"--heatmap {path}: unknown picture format {fmt!r}; use one of "
                           f"{', '.join(sorted(fig.canvas.get_supported_filetypes()))}")
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format=fmt or "png"))
    finally:
        plt.close(fig)


# -- commands ------------------------------------------------------------------------------------
def cmd_pair(args) -> Result:
    a, b = _load(Path(args.a)), _load(Path(args.b))
    _same_size(args.a, a, args.b, b)
    dev = torch.device(args.device)
    res = Result(["image0", "image1", "distance"])
    with torch.no_grad():
        dist = _model(args)(a.to(dev), b.to(dev)).item()
        if args.heatmap:
            dmap = _model(args, spatial=True)(a.to(dev), b.to(dev))
            title = f"LPIPS {args.net} v{args.version}: {dist:.4f}"
            res.pictures.append(Picture(f"the heat map --heatmap {args.heatmap}",
                                        lambda: save_heatmap(dmap[0, 0], args.heatmap, title, (a[0], b[0]))))
    res.rows.append({"image0": args.a, "image1": args.b, "distance": dist})
    return res


def _batched(model: LPIPS, pairs: Sequence, batch_size: int, device, progress) -> List[float]:
    """Distances for (path0, path1) pairs, batching images of equal size."""
    loaded = []
    for p0, p1 in pairs:
        t0, t1 = _load(p0), _load(p1)
        _same_size(p0, t0, p1, t1)
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


def cmd_dirs(args) -> Result:
    d0, d1 = Path(args.dir0), Path(args.dir1)
    listed = _list_images(d0)
    _list_images(d1)
    files = [p for p in listed if (d1 / p.name).is_file()]
    res = Result(["file", "distance"])
    missing = len(listed) - len(files)
    if missing:
        res.notes.append(f"warning: {missing} file(s) of {d0} have no counterpart in {d1}")
    dists: List[float] = []
    if files:
        with _progress(len(files), "dirs", args.progress) as bar:
            dists = _batched(_model(args), [(p, d1 / p.name) for p in files], args.batch_size,
                             torch.device(args.device), bar)
    res.rows = [{"file": p.name, "distance": d} for p, d in zip(files, dists)]
    res.summary = {"pairs": len(res.rows), "mean": float(np.mean(dists)) if dists else None}
    return res


def cmd_allpairs(args) -> Result:
    files = _list_images(Path(args.dir))
    if len(files) < 2:
        raise CLIError(f"{args.dir} holds fewer than two images")
    ims = [_load(p) for p in files]
    for p, t in zip(files[1:], ims[1:]):
        _same_size(files[0], ims[0], p, t)
    model = _model(args)
    x = torch.cat(ims).to(args.device)
    with torch.no_grad(), _progress(len(files), "features", args.progress) as bar:
        D = model.pairwise(x, batch_size=args.batch_size, progress=bar.update).cpu()
    res = Result(["image0", "image1", "distance"])
    res.rows = [{"image0": files[i].name, "image1": files[j].name, "distance": float(D[i, j])}
                for i in range(len(files)) for j in range(i + 1, len(files))]
    res.summary = {"pairs": len(res.rows), "mean": float(np.mean([r["distance"] for r in res.rows]))}
    return res


def cmd_demo(args) -> Result:
    """LPIPS between scikit-image's bundled astronaut photo and three real distortions."""
    try:
        from skimage import data
    except ImportError:
        raise CLIError("the demo uses scikit-image's bundled photos (pip install scikit-image); "
                       "or run `fastlpips pair A.png B.png` on your own images") from None
    from PIL import Image, ImageFilter

    from .utils import im2tensor

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
    res = Result(["image", "distortion", "net", "distance"])
    with torch.no_grad():
        for net in (["alex", "vgg"] if args.net == "both" else [args.net]):
            d = _model(args, net=net)(ref, batch).reshape(-1).tolist()
            res.rows += [{"image": "astronaut 256x256", "distortion": k, "net": net, "distance": v}
                         for k, v in zip(variants, d)]
        if args.heatmap:
            net = "alex" if args.net == "both" else args.net
            dmap = _model(args, spatial=True, net=net)(ref, batch[:1])
            res.pictures.append(Picture(f"the heat map --heatmap {args.heatmap}",
                                        lambda: save_heatmap(dmap[0, 0], args.heatmap, f"JPEG q=10, LPIPS {net}",
                                                             (ref[0], batch[0])),
                                        f"heat map written to {args.heatmap}"))
    return res


def _elpips_pairs(args) -> List:
    a, b = Path(args.a), Path(args.b)
    if a.is_dir() != b.is_dir():
        raise CLIError(f"give two image files or two folders, got {a} and {b}")
    if not a.is_dir():
        return [(a, b)]
    pairs = [(p, b / p.name) for p in _list_images(a) if (b / p.name).is_file()]
    if not pairs:
        raise CLIError(f"no same-named images in {a} and {b}")
    return pairs


def cmd_elpips(args) -> Result:
    """E-LPIPS of two images (or same-named images of two folders) to a confidence interval."""
    from .elpips import ELPIPS, scale_levels_for_size
    from .estimator import elpips_estimate

    pairs = _elpips_pairs(args)
    metrics: Dict[int, ELPIPS] = {}
    res = Result(["image0", "image1", "elpips", "half_width", "samples", "converged", "scale_levels", "method"])
    with _progress(len(pairs) * args.max_samples, "elpips", args.progress) as bar:
        for p0, p1 in pairs:
            x, y = _load01(p0), _load01(p1)  # E-LPIPS takes [0, 1] images
            _same_size(p0, x, p1, y)
            levels = args.scales or scale_levels_for_size(x.shape[2], x.shape[3])
            if levels not in metrics:
                metrics[levels] = ELPIPS(net=args.net, max_scale=levels, families=args.families).to(args.device)
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


def cmd_check(args) -> Result:
    """Every available backend of the head and transform ops against the reference, and LPIPS /
    E-LPIPS parity across backends (fastlpips.selfcheck)."""
    from .selfcheck import run_checks

    rows = run_checks(torch.device(args.device), quick=args.quick)
    res = Result(["check", "backend", "available", "max_error", "tolerance", "status", "seconds"])
    res.rows = [r.as_row() for r in rows]
    failed = sum(r.status == "FAIL" for r in rows)
    res.summary = {"checks": len(rows), "passed": sum(r.status == "pass" for r in rows), "failed": failed,
                   "skipped": sum(r.status == "skip" for r in rows)}
    res.exit_code = 1 if failed else 0
    from .precision import describe_auto

    res.notes += describe_auto(args.device)
    if failed:
        res.notes.append(f"fastlpips check: {failed} check(s) FAILED on {args.device}")
    return res


def cmd_score(args) -> Result:
    """2AFC score or JND mAP of a metric on BAPPS split folders, one row per split and their mean."""
    from . import distributed as D
    from .scoring import make_distance, mean_score, score_splits

    kind = "2afc" if args.command == "score-2afc" else "jnd"
    D.init_from_env(torch.device(args.device))
    distance = make_distance(args.metric, version=args.version, lpips=not args.baseline, model_path=args.model_path,
                             draws=args.draws, colorspace=args.colorspace, device=args.device, seed=args.seed,
                             sampling=args.sampling)
    results = score_splits(distance, args.dirs, kind, batch_size=args.batch_size, workers=args.workers,
                           device=args.device, progress=args.progress)
    name = "2afc" if kind == "2afc" else "jnd_map"
    res = Result(["split", "items", name])
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


def _eps(text: str) -> float:
    """'8/255' or '0.03' -> float (argparse type)."""
    try:
        if "/" in text:
            a, b = text.split("/", 1)
            return float(a) / float(b)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a number or fraction: {text!r}") from None


def cmd_train(args) -> Result:
    """Train LPIPS' lin layers on BAPPS 2AFC splits (lpips' trainer; --adversarial: R-LPIPS)."""
    from . import distributed as D
    from .training import AdversarialConfig, TrainConfig, train_lpips

    adv = None
    if args.adversarial:
        adv = AdversarialConfig(eps=args.eps if args.eps is not None else (8 / 255 if args.adversarial == "linf" else 3.0),
                                norm=args.adversarial, target=args.target, steps=args.attack_steps)
    cfg = TrainConfig(net=args.net, version=args.version, epochs=args.epochs, decay_epochs=args.decay_epochs,
                      batch_size=args.batch_size, lr=args.lr, tune_trunk=args.tune_trunk,
                      from_scratch=args.from_scratch, init=args.init, seed=args.seed, workers=args.workers,
                      adversarial=adv)
    train_lpips(args.dirs, args.out_dir, cfg, device=args.device, resume=args.resume, overwrite=args.overwrite,
                allow_other_data=args.allow_other_data, stop_after=args.stop_after, progress=args.progress)
    res = Result(["epoch", "lr", "loss", "acc"])
    log_path = Path(args.out_dir) / "log.csv"
    if D.is_main() and log_path.is_file():
        lines = log_path.read_text().splitlines()[1:]
        res.rows = [dict(zip(res.columns, line.split(","))) for line in lines]
    res.summary = {"checkpoint": str(Path(args.out_dir) / "checkpoint.pt"),
                   "weights": str(Path(args.out_dir) / "latest_net_.pth")}
    res.quiet = not D.is_main()
    return res


def cmd_robust(args) -> Result:
    """2AFC without and under L_inf / L_2 PGD on each image role, per checkpoint (R-LPIPS Table 1)."""
    from .model import LPIPS
    from .training import robust_2afc_table

    names = args.names or [Path(p).stem for p in args.model_path]
    if len(names) != len(args.model_path):
        raise CLIError(f"--names gives {len(names)} names for {len(args.model_path)} --model-path files")
    models = {n: LPIPS(net=args.net, model_path=p, verbose=False).to(args.device)
              for n, p in zip(names, args.model_path)}
    rows = robust_2afc_table(models, args.dirs, eps_linf=args.eps_linf, eps_l2=args.eps_l2, targets=args.targets,
                             steps=args.steps, batch_size=args.batch_size, device=args.device, progress=args.progress)
    res = Result(["model", "attack", "target", "eps", "2afc"])
    res.rows = rows
    return res


def _image_folder(path: str, size: Optional[int]):
    from .imagefolder import ImageFolder

    try:
        return ImageFolder(path, size=size)
    except (FileNotFoundError, ValueError) as e:
        raise CLIError(str(e)) from None


def cmd_pat_train(args) -> Result:
    """Perceptual Adversarial Training of a classifier on a class-per-subfolder image folder."""
    from . import distributed as D
    from .pat import PATConfig, train_pat

    data = _image_folder(args.data, args.size)
    val = _image_folder(args.val, args.size) if args.val else None
    out = Path(args.out_dir)
    meta = {"arch": args.arch, "norm": args.norm, "classes": data.classes, "size": args.size,
            "attacks": args.attack or ["fast-lpa:self=0.5"]}
    torch.manual_seed(args.seed)  # the initial weights (every process builds the same ones)
    model = build_classifier(args.arch, data.num_classes, args.norm)
    cfg = PATConfig(attacks=tuple(meta["attacks"]), attack_iterations=args.attack_iterations, mix=args.mix,
                    only_attack_correct=args.only_attack_correct, epochs=args.epochs, batch_size=args.batch_size,
                    lr=args.lr, weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs,
                    lr_drops=tuple(args.lr_drops), clip_grad=args.clip_grad, augment=not args.no_augment,
                    seed=args.seed, workers=args.workers, checkpoint_every=args.checkpoint_every)
    train_pat(model, data, out, cfg, val_dataset=val, val_attacks=args.val_attack or [], device=args.device,
              init=args.init, metadata=meta, resume=args.resume, overwrite=args.overwrite,
              allow_other_data=args.allow_other_data, stop_after_steps=args.stop_after_steps, progress=args.progress)
    res = Result([])
    log_path = out / "log.csv"
    lines = log_path.read_text().splitlines() if D.is_main() and log_path.is_file() else []
    if lines:  # none before the first epoch ends (--stop-after-steps)
        res.columns = lines[0].split(",")
        res.rows = [dict(zip(res.columns, line.split(","))) for line in lines[1:]]
    res.summary = {"checkpoint": str(out / "checkpoint.pt"), "weights": str(out / "model.pt")}
    res.quiet = not D.is_main()
    return res


def _load_classifier(model_dir: str, device):
    """A pat-train folder's model: model.json checked field by field, model.pt pickle-free and
    checked to be the weights model.json describes."""
    from .nets.classifiers import ARCHS, NORMS
    from .nets.weights import check_state
    from .pat import read_model_folder

    try:
        meta, state = read_model_folder(model_dir)
    except (OSError, ValueError, RuntimeError) as e:
        raise CLIError(str(e)) from None
    where = Path(model_dir) / "model.json"
    expected = {"arch": f"one of {', '.join(ARCHS)}", "norm": f"one of {', '.join(NORMS)}",
                "classes": "a list of two or more class names", "size": "null or an image side >= 1",
                "attacks": "a list of attack specs"}
    checks = {"arch": lambda v: v in ARCHS, "norm": lambda v: v in NORMS,
              "classes": lambda v: isinstance(v, list) and len(v) >= 2 and all(isinstance(c, str) for c in v),
              "size": lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1),
              "attacks": lambda v: isinstance(v, list) and all(isinstance(a, str) for a in v)}
    for key, ok in checks.items():
        if key not in meta:
            raise CLIError(f"{where} lacks {key!r} ({expected[key]}); it was not written by fastlpips pat-train")
        if not ok(meta[key]):
            raise CLIError(f"{where}: {key} must be {expected[key]}, got {meta[key]!r}")
    model = build_classifier(meta["arch"], len(meta["classes"]), meta["norm"])
    try:
        check_state(model, state, f"model file {Path(model_dir) / 'model.pt'}")
    except RuntimeError as e:
        raise CLIError(str(e)) from None
    model.load_state_dict(state)
    return model.to(device).eval(), meta


def cmd_robust_eval(args) -> Result:
    """Clean, per-attack, union and unseen-mean accuracy of classifiers (Laidlaw et al.'s evaluation)."""
    from . import distributed as D
    from .robust import PAPER_EVALUATION, evaluate_robustness, parse_attack_spec, plot_robustness

    D.init_from_env(torch.device(args.device))
    attacks = args.attack or list(PAPER_EVALUATION)
    for a in attacks + (args.seen or []):
        try:
            parse_attack_spec(a)
        except ValueError as e:
            raise CLIError(str(e)) from None
    results, res = {}, Result(["model", "attack", "spec", "accuracy", "violations", "seconds", "images_per_s"])
    for model_dir in args.model_dir:
        model, meta = _load_classifier(model_dir, args.device)
        data = _image_folder(args.data, meta.get("size"))
        if data.classes != meta["classes"]:
            raise CLIError(f"{args.data} has classes {data.classes} but {model_dir} was trained on {meta['classes']}")
        seen = [parse_attack_spec(a).name for a in (args.seen if args.seen is not None else meta.get("attacks", []))]
        r = evaluate_robustness(model, data, attacks, batch_size=args.batch_size, device=args.device,
                                iterations=args.iterations, seen=seen, seed=args.seed, max_examples=args.max_examples,
                                progress=args.progress)
        name = Path(model_dir).name
        results[name] = r
        res.rows += [dict(model=name, **row) for row in r.rows()]
        if args.per_example and D.is_main():
            path = Path(args.per_example)
            target = path if len(args.model_dir) == 1 else path.with_name(f"{path.stem}-{name}{path.suffix}")
            r.save(target)
            res.notes.append(f"per-example results written to {target}")
    if args.plot and D.is_main():
        res.pictures.append(Picture(f"the plot --plot {args.plot}", lambda: plot_robustness(results, args.plot),
                                    f"plot written to {args.plot}"))
    res.quiet = not D.is_main()
    return res


def cmd_evaluate(args) -> Result:
    """Metrics of output folders against a reference folder: results.csv/json and report.html."""
    from . import distributed as D
    from .evaluation import evaluate

    D.init_from_env(torch.device(args.device))
    metrics = [m for text in args.metrics for m in text.split(",") if m.strip()]
    with _progress(0, "evaluate", args.progress if D.is_main() else False) as bar:
        def total(n):
            bar.total = n
            bar.refresh()

        try:
            r = evaluate(args.ref_dir, args.out_dirs, metrics, args.results, batch_size=args.batch_size,
                         device=args.device, workers=args.workers, elpips_samples=args.elpips_samples, seed=args.seed,
                         restart=args.restart, report=not args.no_report, worst=args.worst, progress=bar.update,
                         total=total)
        except (ValueError, OSError) as e:  # unusable folders or options: nothing to evaluate
            raise CLIError(str(e)) from None
    summary = r.summary()
    cols = [c for spec in r.metrics for c in spec.columns]
    res = Result(["method", "images", "errors"] + cols, exit_code=1 if r.errors else 0, quiet=not D.is_main())
    for m in r.methods:
        row = {"method": m, "images": max((summary[m][c]["n"] for c in cols), default=0),
               "errors": sum(1 for x in r.rows if x["method"] == m and x["error"])}
        row.update({c: summary[m][c]["mean"] for c in cols})
        res.rows.append(row)
    res.notes.append(f"{r.computed} batch(es) computed, {r.skipped} already done; "
                     + ", ".join(f"{k} {v}" for k, v in r.files.items()))
    if r.errors:
        res.notes.append(f"fastlpips: error: {len(r.errors)} error(s); the first: "
                         + "; ".join(f"{x['method'] or '-'}/{x['file'] or '-'} {x['metric']}: {x['message']}".strip()
                                     for x in r.errors[:3]) + " (all in results.csv and the report)")
    return res


def cmd_example_data(args) -> Result:
    """The worked example's image folders: crops of scikit-image photos, one class per photo."""
    from .imagefolder import make_example_folder

    root = make_example_folder(args.dir, train_per_class=args.train_per_class, val_per_class=args.val_per_class,
                               size=args.size, seed=args.seed)
    res = Result(["split", "folder", "images"])
    for split in ("train", "val"):
        n = sum(1 for _ in (root / split).rglob("*.png"))
        res.rows.append({"split": split, "folder": str(root / split), "images": n})
    return res


def _save_png(x: torch.Tensor, path) -> None:
    """(3, H, W) or (N, 3, H, W) side by side, in [0, 1] -> an 8-bit PNG, atomically."""
    from PIL import Image

    if x.dim() == 4:
        x = torch.cat(list(x), dim=2)
    arr = (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    atomic_write(Path(path), lambda tmp: Image.fromarray(arr).save(tmp, format="PNG"))


def _save_gif(frames: torch.Tensor, path, duration_ms: int = 120) -> None:
    """An animated GIF of (N, 3, H, W) frames, forth and back, atomically."""
    from PIL import Image

    ims = [Image.fromarray((f.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy())
           for f in frames]
    seq = ims + ims[-2:0:-1]
    atomic_write(Path(path), lambda tmp: seq[0].save(tmp, format="GIF", save_all=True, append_images=seq[1:],
                                                      duration=duration_ms, loop=0))


def _save_mp4(frames: torch.Tensor, path, fps: float = 8.0, min_side: int = 256) -> None:
    """An H.264 MP4 of (N, 3, H, W) frames, forth and back, atomically, through the ffmpeg binary of
    ``imageio-ffmpeg`` (pip install imageio-ffmpeg). Small frames are enlarged by an integer factor
    (nearest neighbour) to at least ``min_side`` pixels and padded to even sizes (H.264 4:2:0)."""
    try:
        import imageio_ffmpeg
    except ImportError:
        raise CLIError("--mp4 needs the imageio-ffmpeg package (it carries an ffmpeg binary): "
                       "pip install imageio-ffmpeg; or use --gif") from None
    k = max(1, -(-min_side // min(frames.shape[2:])))
    f = (frames.clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    f = f.repeat_interleave(k, 2).repeat_interleave(k, 3)
    h, w = f.shape[2] + f.shape[2] % 2, f.shape[3] + f.shape[3] % 2
    f = torch.nn.functional.pad(f, (0, w - f.shape[3], 0, h - f.shape[2]), mode="replicate")
    seq = list(f) + list(f)[-2:0:-1]

    def write(tmp: str) -> None:
        gen = imageio_ffmpeg.write_frames(tmp, (w, h), fps=fps, codec="libx264", pix_fmt_out="yuv420p",
                                          macro_block_size=2, quality=8, ffmpeg_log_level="error")
        gen.send(None)
        try:
            for frame in seq:
                gen.send(frame.permute(1, 2, 0).contiguous().numpy().tobytes())
        finally:
            gen.close()
    atomic_write(Path(path), write)


def _same_size_images(paths) -> torch.Tensor:
    xs = [_load01(Path(p)) for p in paths]
    for p, x in zip(paths[1:], xs[1:]):
        if x.shape != xs[0].shape:
            raise CLIError(f"the images must have one size: {paths[0]} is {xs[0].shape[3]}x{xs[0].shape[2]} but {p} "
                           f"is {x.shape[3]}x{x.shape[2]}")
    return torch.cat(xs)


def _geometry_distance(args):
    """--distance, or with --families an E-LPIPS of those families (shared draws per step)."""
    if args.families is None:
        return args.distance
    if args.distance != "elpips":
        raise CLIError(f"--families applies to --distance elpips, not {args.distance}")
    from .attacks.distances import ELPIPSDistance
    from .elpips import ELPIPS

    metric = ELPIPS(families=args.families, device=args.device).requires_grad_(False)
    return ELPIPSDistance(metric, samples=args.draws, seed=args.seed, shared=True)


def cmd_barycenter(args) -> Result:
    """argmin_x sum_i d(x, n_i)^2 of the input images (E-LPIPS paper section 3.3)."""
    from .geometry import barycenter

    images = _same_size_images(args.images).to(args.device)
    r = barycenter(images, _geometry_distance(args), steps=args.steps, lr=args.lr, inputs_per_step=args.inputs_per_step,
                   seed=args.seed, draws=args.draws, progress=args.progress)
    _save_png(r.images[0], args.save)
    res = Result(["inputs", "distance", "steps", "first_loss", "final_loss", "saved"])
    res.rows.append({"inputs": len(args.images), "distance": args.distance, "steps": args.steps,
                     "first_loss": r.losses[0], "final_loss": r.losses[-1], "saved": args.save})
    if args.grid:
        res.pictures.append(Picture(f"the grid --grid {args.grid}",
                                    lambda: _save_png(torch.cat([images.cpu(), r.images.cpu()]), args.grid),
                                    f"inputs and barycenter written to {args.grid}"))
    return res


def cmd_geodesic(args) -> Result:
    """The discrete geodesic between two images (E-LPIPS paper section 3.3)."""
    from .geometry import geodesic

    ab = _same_size_images([args.a, args.b]).to(args.device)
    r = geodesic(ab[0], ab[1], _geometry_distance(args), frames=args.frames, steps=args.steps, lr=args.lr, init=args.init,
                 seed=args.seed, draws=args.draws, progress=args.progress)
    _save_png(r.images.cpu(), args.save)
    res = Result(["frames", "distance", "steps", "first_loss", "final_loss", "saved"])
    res.rows.append({"frames": args.frames, "distance": args.distance, "steps": args.steps,
                     "first_loss": r.losses[0], "final_loss": r.losses[-1], "saved": args.save})
    if args.gif:
        res.pictures.append(Picture(f"the animation --gif {args.gif}", lambda: _save_gif(r.images.cpu(), args.gif),
                                    f"animation written to {args.gif}"))
    if args.mp4:
        res.pictures.append(Picture(f"the video --mp4 {args.mp4}", lambda: _save_mp4(r.images.cpu(), args.mp4),
                                    f"video written to {args.mp4}"))
    return res


# -- parsing and running ----------------------------------------------------------------------------
def _families_argument(s) -> None:
    from .transforms import FAMILIES

    s.add_argument("--families", type=_families, default=None, metavar="F1,F2,...",
                   help="E-LPIPS ablation: the random families kept, comma-separated, from " + ",".join(FAMILIES)
                   + " (default all; an empty string keeps none)")


def _families(text: str):
    from .transforms import check_families

    try:
        return sorted(check_families(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _run_folder_arguments(s) -> None:
    run = s.add_mutually_exclusive_group()
    run.add_argument("--resume", action="store_true", help="continue the run in OUT_DIR from its checkpoint.pt")
    run.add_argument("--overwrite", action="store_true", help="replace the run in OUT_DIR (its files stay until "
                     "the new run's first checkpoint)")
    s.add_argument("--allow-other-data", action="store_true", help="with --resume: continue on other data than "
                   "the checkpoint's (other folders or file count)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastlpips", description="LPIPS perceptual distances (fast, exact drop-in for lpips)")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0 (default cpu)")
    common.add_argument("--format", default="table", choices=["table", "csv", "json"], help="output format")
    common.add_argument("-o", "--out", help="write results to this file (atomically, after success) instead of stdout")
    common.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    progress = argparse.ArgumentParser(add_help=False)
    prog = progress.add_mutually_exclusive_group()
    prog.add_argument("--progress", dest="progress", action="store_true", default=None, help="always show progress")
    prog.add_argument("--no-progress", dest="progress", action="store_false", help="never show progress")
    lp = argparse.ArgumentParser(add_help=False, parents=[progress])
    lp.add_argument("--net", default=None, choices=["alex", "vgg", "squeeze", "both"],
                    help="trunk network (default alex; the demo runs alex and vgg: 'both')")
    lp.add_argument("--version", default=None, choices=["0.1", "0.0"], help="LPIPS version (default 0.1)")
    lp.add_argument("--batch-size", type=int, default=32, help="images per trunk pass (default 32)")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("pair", parents=[common, lp], help="distance between two images")
    s.add_argument("a")
    s.add_argument("b")
    s.add_argument("--heatmap", metavar="OUT.png", help="save the spatial distance map as a picture")
    s.set_defaults(func=cmd_pair)
    s = sub.add_parser("dirs", parents=[common, lp], help="distances between same-named images of two folders")
    s.add_argument("dir0")
    s.add_argument("dir1")
    s.set_defaults(func=cmd_dirs)
    s = sub.add_parser("allpairs", parents=[common, lp], help="distances between all pairs of images in a folder")
    s.add_argument("dir")
    s.set_defaults(func=cmd_allpairs)
    s = sub.add_parser("elpips", parents=[common, lp],
                       help="E-LPIPS of two images (or two folders) to a confidence interval")
    s.add_argument("a")
    s.add_argument("b")
    s.add_argument("--rtol", type=float, default=0.025, help="stop when the interval half-width < rtol * mean (0.025)")
    s.add_argument("--atol", type=float, default=0.01, help="... and < atol (0.01), as the release does")
    s.add_argument("--confidence", type=float, default=0.95, help="interval confidence (0.95)")
    s.add_argument("--max-samples", type=int, default=2000, help="sample budget per pair (2000)")
    s.add_argument("--scales", type=int, default=None, help="scale levels 1..8 (default: the release's rule, min(H, W) // 64)")
    s.add_argument("--method", default=None, choices=["auto", "cv", "qmc", "stratified", "iid"],
                   help="sampling design (auto: control variates with cost-aware allocation where they apply; "
                        "see elpips_estimate)")
    s.add_argument("--iid", action="store_true", help="same as --method iid (the release's i.i.d. sampling)")
    s.add_argument("--seed", type=int, default=None, help="random seed (reproducible results)")
    _families_argument(s)
    s.set_defaults(func=cmd_elpips)
    from .scoring import METRICS

    for name, what in (("score-2afc", "2AFC agreement with human judgments"), ("score-jnd", "JND mAP")):
        s = sub.add_parser(name, parents=[common, progress],
                           help=f"{what} of a metric on BAPPS split folders (runs under torchrun too)")
        s.add_argument("dirs", nargs="+", metavar="DIR", help="split folders (e.g. dataset/2afc/val/cnn)")
        s.add_argument("--metric", default="alex", choices=METRICS, help="LPIPS trunk, E-LPIPS, l2 or dssim (alex)")
        s.add_argument("--version", default="0.1", choices=["0.1", "0.0"], help="LPIPS version (0.1)")
        s.add_argument("--baseline", action="store_true", help="LPIPS without the calibrated lin layers")
        s.add_argument("--model-path", help="an LPIPS checkpoint (e.g. R-LPIPS' latest_net_linf_x0.pth)")
        s.add_argument("--draws", type=int, default=50, help="E-LPIPS samples per item (50, as the paper)")
        s.add_argument("--sampling", default="iid", choices=["iid", "stratified"],
                       help="E-LPIPS draws: i.i.d. as the paper (default) or with the scale level stratified "
                            "(the same expectation; 20 stratified draws are about as precise as 50 i.i.d.)")
        s.add_argument("--colorspace", default="Lab", choices=["Lab", "RGB"], help="for l2 and dssim (Lab)")
        s.add_argument("--batch-size", type=int, default=50, help="items per batch (50)")
        s.add_argument("--workers", type=int, default=0, help="data loader processes (0: read in this process)")
        s.add_argument("--seed", type=int, default=0, help="seed of the E-LPIPS draws (0)")
        s.add_argument("--items", metavar="FILE.csv", help="also write every item's distances and judgment")
        s.set_defaults(func=cmd_score)
    s = sub.add_parser("train", parents=[common, progress], help="train LPIPS' lin layers on BAPPS 2AFC splits "
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
    _run_folder_arguments(s)
    s.add_argument("--stop-after", type=int, default=None, help="stop after this many epochs in total (resume later)")
    s.add_argument("--adversarial", choices=["linf", "l2"], help="R-LPIPS: train on PGD examples of this norm")
    s.add_argument("--eps", type=_eps, default=None, help="attack radius on the [-1, 1] scale (8/255 linf, 3.0 l2)")
    s.add_argument("--target", default="x0", choices=["x0", "x1", "ref", "x0_x1"], help="attacked image (x0)")
    s.add_argument("--attack-steps", type=int, default=50, help="PGD steps (50, as R-LPIPS)")
    s.set_defaults(func=cmd_train)
    s = sub.add_parser("robust-2afc", parents=[common, progress],
                       help="2AFC of LPIPS checkpoints without and under PGD (the R-LPIPS Table 1 layout)")
    s.add_argument("dirs", nargs="+", metavar="DIR", help="2AFC split folders (scored together)")
    s.add_argument("--model-path", action="append", required=True, help="an LPIPS checkpoint (repeat for each)")
    s.add_argument("--names", nargs="+", help="a name per checkpoint (default: the file names)")
    s.add_argument("--net", default="alex", choices=["alex", "vgg", "squeeze"])
    s.add_argument("--eps-linf", type=_eps, default=8 / 255, help="L_inf radius on [-1, 1] (8/255)")
    s.add_argument("--eps-l2", type=_eps, default=1.0, help="L_2 radius on [-1, 1] (1.0)")
    s.add_argument("--targets", nargs="+", default=["x0", "x1", "ref"], choices=["x0", "x1", "ref", "x0_x1"])
    s.add_argument("--steps", type=int, default=50, help="PGD steps (50)")
    s.add_argument("--batch-size", type=int, default=50)
    s.set_defaults(func=cmd_robust)
    for name in ("barycenter", "geodesic"):
        s = sub.add_parser(name, parents=[common, progress], help=(
            "the image minimizing the sum of squared distances to the inputs" if name == "barycenter" else
            "the frames between two images minimizing the sum of squared distances along the chain")
            + " (E-LPIPS paper section 3.3; Adam with the release's schedule)")
        if name == "barycenter":
            s.add_argument("images", nargs="+", help="two or more images of one size")
            s.add_argument("--inputs-per-step", type=int, help="random inputs per step (default all; the release: 1)")
            s.add_argument("--grid", metavar="GRID.png", help="also save the inputs and the barycenter side by side")
        else:
            s.add_argument("a")
            s.add_argument("b")
            s.add_argument("--frames", type=int, default=8, help="free frames between the ends (8)")
            s.add_argument("--init", default="noise", choices=["noise", "linear"], help="start (noise: the release's)")
            s.add_argument("--gif", metavar="OUT.gif", help="also save the chain as an animated GIF")
            s.add_argument("--mp4", metavar="OUT.mp4", help="also save the chain as an H.264 video (needs imageio-ffmpeg)")
        s.add_argument("--save", required=True, metavar="OUT.png",
                       help="the barycenter" if name == "barycenter" else "the chain, ends included, side by side")
        s.add_argument("--distance", default="elpips", choices=["elpips", "lpips", "lpips-vgg", "l2"])
        s.add_argument("--steps", type=int, default=1000)
        s.add_argument("--lr", type=float, default=0.03)
        s.add_argument("--draws", type=int, default=1, help="E-LPIPS draws per distance per step (1, as the release)")
        s.add_argument("--seed", type=int, default=0)
        _families_argument(s)
        s.set_defaults(func=cmd_barycenter if name == "barycenter" else cmd_geodesic, batch_size=1)
    s = sub.add_parser("example-data", parents=[common], help="write the worked example's image folders "
                       "(32x32 crops of scikit-image photos, one class per photo) for pat-train / robust-eval")
    s.add_argument("dir", help="DIR/train and DIR/val are written")
    s.add_argument("--train-per-class", type=int, default=200)
    s.add_argument("--val-per-class", type=int, default=50)
    s.add_argument("--size", type=int, default=32)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_example_data, batch_size=1)
    s = sub.add_parser("pat-train", parents=[common, progress], help="Perceptual Adversarial Training of a classifier "
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
    _run_folder_arguments(s)
    s.add_argument("--stop-after-steps", type=int, help="stop after this many steps in total (resume later)")
    s.set_defaults(func=cmd_pat_train)
    s = sub.add_parser("robust-eval", parents=[common, progress], help="accuracy of pat-train models under L_inf, "
                       "L_2, JPEG, StAdv, ReColorAdv, PPGD and LPA; union and unseen mean")
    s.add_argument("data", help="evaluation image folder, one subfolder per class")
    s.add_argument("--model-dir", action="append", required=True, help="a pat-train --out-dir (repeat to compare)")
    s.add_argument("--attack", action="append", help="attack spec (repeat; default: the paper's seven)")
    s.add_argument("--seen", nargs="*", help="threat models seen in training (default: from model.json)")
    s.add_argument("--iterations", type=int, help="steps of every attack (default: each attack's own)")
    s.add_argument("--max-examples", type=int, help="evaluate the first N examples only")
    s.add_argument("--batch-size", type=int, default=100)
    s.add_argument("--seed", type=int, default=0, help="seed of the random starts")
    s.add_argument("--plot", metavar="OUT.png", help="save a bar chart of the accuracies")
    s.add_argument("--per-example", metavar="FILE.json", help="also write every example's results (.json or .csv)")
    s.set_defaults(func=cmd_robust_eval)
    s = sub.add_parser("evaluate", parents=[common, progress], help="full-reference metrics of output folders "
                       "against a reference folder, resumable, torchrun-sharded; CSV/JSON and an HTML report")
    s.add_argument("ref_dir", help="folder of reference images (searched recursively)")
    s.add_argument("out_dirs", nargs="+", help="folders of outputs, one per method; files matched by relative path")
    s.add_argument("--metrics", nargs="+", default=["psnr,ssim,lpips"],
                   help="comma-separated: psnr, ssim, ms-ssim, gmsd, lpips (=lpips-alex), lpips-vgg, lpips-squeeze, "
                        "elpips, rlpips=CKPT, lpips-NET=CKPT (default psnr,ssim,lpips)")
    s.add_argument("--results", default="evaluation", help="folder for records, results.csv/json, report.html "
                   "(default ./evaluation; a rerun resumes there)")
    s.add_argument("--restart", action="store_true", help="discard the records in --results and start over")
    s.add_argument("--batch-size", type=int, default=16, help="output images per batch (default 16)")
    s.add_argument("--workers", type=int, default=0, help="image-reading worker processes (default 0)")
    s.add_argument("--elpips-samples", type=int, default=200, help="E-LPIPS sample budget per batch (default 200)")
    s.add_argument("--seed", type=int, default=0, help="seed of E-LPIPS' draws (default 0)")
    s.add_argument("--worst", type=int, default=6, help="worst images shown per method in the report (default 6)")
    s.add_argument("--no-report", action="store_true", help="write no report.html")
    s.set_defaults(func=cmd_evaluate)
    s = sub.add_parser("check", parents=[common],
                       help="self-check: every available backend against the reference (run this first on a GPU)")
    s.add_argument("--quick", action="store_true", help="small shapes only")
    s.set_defaults(func=cmd_check)
    s = sub.add_parser("demo", parents=[common, lp], help="LPIPS on a bundled sample photo and three distortions")
    s.add_argument("--heatmap", metavar="OUT.png", help="save the JPEG distortion's distance map as a picture")
    s.set_defaults(func=cmd_demo)
    return p


def _check_device(spec: str) -> str:
    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError):
        raise CLIError(f"--device {spec!r} is not a torch device (use cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CLIError(f"--device {spec}: CUDA is not available here (torch {torch.__version__}); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CLIError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) exist")
    else:
        try:
            torch.empty(1, device=dev)
        except Exception as e:
            raise CLIError(f"--device {spec} cannot be used: {str(e).splitlines()[0]}") from None
    return spec


def _validate(args) -> List[Path]:
    """Option checks that need no work; returns the input files an output must not overwrite."""
    _check_device(args.device)
    cmd = args.command
    if getattr(args, "allow_other_data", False) and not args.resume:
        raise CLIError("--allow-other-data applies to --resume (a new run reads whatever data it is given)")
    if cmd != "check":
        if args.batch_size < 1:
            raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
    if cmd in ("train", "robust-2afc"):
        for opt in ("epochs", "decay_epochs", "steps", "attack_steps"):
            v = getattr(args, opt, None)
            if v is not None and v < (0 if opt == "epochs" else 1):
                raise CLIError(f"--{opt.replace('_', '-')} must be >= {0 if opt == 'epochs' else 1}, got {v}")
        for d in args.dirs:
            if not Path(d).is_dir():
                raise CLIError(f"{d}: no such split folder")
        return [p for d in args.dirs for p in Path(d).rglob("*") if p.is_file()]
    if cmd in ("barycenter", "geodesic"):
        for opt in ("steps", "draws", "frames", "inputs_per_step"):
            v = getattr(args, opt, None)
            if v is not None and v < 1:
                raise CLIError(f"--{opt.replace('_', '-')} must be >= 1, got {v}")
        inputs = [Path(p) for p in (args.images if cmd == "barycenter" else [args.a, args.b])]
        if cmd == "barycenter" and len(inputs) < 2:
            raise CLIError(f"a barycenter needs at least 2 images, got {len(inputs)}")
        for opt, path in (("--save", args.save), ("--grid", getattr(args, "grid", None)),
                          ("--gif", getattr(args, "gif", None)), ("--mp4", getattr(args, "mp4", None))):
            if path:
                check_output_path(path, opt, inputs)
        return inputs
    if cmd == "evaluate":
        for opt, low in (("workers", 0), ("worst", 0), ("elpips_samples", 16)):
            if getattr(args, opt) < low:
                raise CLIError(f"--{opt.replace('_', '-')} must be >= {low}, got {getattr(args, opt)}")
        res_dir = Path(args.results)
        if res_dir.exists() and not res_dir.is_dir():
            raise CLIError(f"--results {res_dir} is a file; give a folder")
        for d in [args.ref_dir] + list(args.out_dirs):
            if res_dir.exists() and Path(d).exists() and _same_file(res_dir, Path(d)):
                raise CLIError(f"--results {res_dir} is an input folder; give another folder")
        return []
    if cmd in ("pat-train", "robust-eval", "example-data"):
        for opt in ("epochs", "iterations", "max_examples", "attack_iterations", "train_per_class", "val_per_class",
                    "size", "stop_after_steps"):
            v = getattr(args, opt, None)
            if v is not None and v < 1:
                raise CLIError(f"--{opt.replace('_', '-')} must be >= 1, got {v}")
        for opt in ("workers", "checkpoint_every", "warmup_epochs"):
            v = getattr(args, opt, None)
            if v is not None and v < 0:
                raise CLIError(f"--{opt.replace('_', '-')} must be >= 0, got {v}")
        if cmd == "robust-eval":
            if args.plot:
                check_output_path(args.plot, "--plot", [])
            if args.per_example:
                if Path(args.per_example).suffix.lower() not in (".json", ".csv"):
                    raise CLIError(f"--per-example {args.per_example}: write .json or .csv")
                check_output_path(args.per_example, "--per-example", [])
                if args.plot and _same_file(Path(args.plot), Path(args.per_example)):
                    raise CLIError("--plot and --per-example name the same file")
        return []
    if cmd in ("score-2afc", "score-jnd"):
        if args.draws < 1:
            raise CLIError(f"--draws must be >= 1, got {args.draws}")
        if args.workers < 0:
            raise CLIError(f"--workers must be >= 0, got {args.workers}")
        if args.model_path is not None and args.metric not in ("alex", "vgg", "squeeze"):
            raise CLIError(f"--model-path is an LPIPS checkpoint; --metric {args.metric} does not read one")
        for d in args.dirs:
            if not Path(d).is_dir():
                raise CLIError(f"{d}: no such split folder")
        inputs = [p for d in args.dirs for p in Path(d).rglob("*") if p.is_file()]
        if args.items:
            check_output_path(args.items, "--items", inputs)
        return inputs
    if cmd == "elpips":
        if args.net is None:
            args.net = "vgg"
        if args.net not in ("vgg", "squeeze"):
            raise CLIError(f"--net {args.net}: E-LPIPS has a VGG (default) and an experimental SqueezeNet "
                           "variant: use --net vgg or --net squeeze")
        if args.version is not None:
            raise CLIError("--version selects an LPIPS version; E-LPIPS has its own weights (drop --version)")
        if args.scales is not None and not 1 <= args.scales <= 8:
            raise CLIError(f"--scales must be in 1..8, got {args.scales}")
        for opt in ("rtol", "atol"):
            v = getattr(args, opt)
            if not v > 0:  # NaN too
                raise CLIError(f"--{opt} must be > 0, got {v}")
        if not 0 < args.confidence < 1:
            raise CLIError(f"--confidence must be in (0, 1), got {args.confidence}")
        if args.max_samples < 2:
            raise CLIError(f"--max-samples must be >= 2, got {args.max_samples}")
        if args.iid and args.method not in (None, "iid"):
            raise CLIError(f"--iid and --method {args.method} disagree: give one of them")
        args.method = "iid" if args.iid else (args.method or "auto")
    elif cmd != "check":
        args.version = args.version or "0.1"
        if args.net is None:
            args.net = "both" if cmd == "demo" else "alex"
        elif args.net == "both" and cmd != "demo":
            raise CLIError("--net both is only for the demo; choose alex, vgg or squeeze")
    if cmd in ("pair", "elpips"):
        return [Path(args.a), Path(args.b)] + [p for d in (args.a, args.b) if Path(d).is_dir()
                                                for p in Path(d).iterdir()]
    if cmd == "dirs":
        return [p for d in (args.dir0, args.dir1) if Path(d).is_dir() for p in Path(d).iterdir()]
    if cmd == "allpairs":
        return list(Path(args.dir).iterdir()) if Path(args.dir).is_dir() else []
    return []


def _run(args, stdout, stderr) -> int:
    inputs = _validate(args)
    out_path = check_output_path(args.out, "-o", inputs) if args.out else None
    heat = getattr(args, "heatmap", None)
    if heat:
        check_output_path(heat, "--heatmap", inputs)
        if out_path is not None and _same_file(Path(heat), out_path):
            raise CLIError("-o and --heatmap name the same file")
    res = args.func(args)
    if res.quiet:
        return res.exit_code
    text = render(res, args.format)
    code = res.exit_code
    if out_path is None:
        stdout.write(text)
        stdout.flush()
    else:
        try:
            atomic_write(out_path, lambda tmp: Path(tmp).write_text(text))
        except OSError as e:  # nothing lost: the results go to stdout instead
            stdout.write(text)
            stdout.flush()
            stderr.write(f"fastlpips: error: cannot write -o {out_path}: {e}; the results are above\n")
            code = 1
    for pic in res.pictures:
        try:
            pic.save()
        except (CLIError, OSError, ValueError, RuntimeError) as e:
            stderr.write(f"fastlpips: error: {pic.what} could not be written: {e}\n")
            code = 1
        else:
            if pic.note:
                res.notes.append(pic.note)
    for note in res.notes:
        stderr.write(note + "\n")
    return code


# errors whose message is the whole story (they name the file or option); others keep their type
_USER_ERRORS = (CLIError, WeightError, FileExistsError, FileNotFoundError, NotADirectoryError)


def _one_line(e: BaseException) -> str:
    """An error as one line: its message's first line (the type's name in front for errors that
    are not a user's input problem), and a hint at --debug for those."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if isinstance(e, _USER_ERRORS):
        return text or type(e).__name__
    return f"{type(e).__name__}: {text} (--debug shows the traceback)" if text else \
        f"{type(e).__name__} (--debug shows the traceback)"


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args, sys.stdout, sys.stderr)
    except KeyboardInterrupt:
        sys.stderr.write("fastlpips: interrupted\n")
        return 130
    except Exception as e:
        if args.debug:
            raise
        sys.stderr.write(f"fastlpips: error: {_one_line(e)}\n")
        return 1
    finally:
        from . import distributed as D

        D.shutdown()  # leave a torchrun process group before exiting


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
