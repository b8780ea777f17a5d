"""What every command shares: the user-facing error, the result and its rendering (table, CSV,
JSON), output paths checked before the work and written atomically after it, the pictures (heat
map, PNG, GIF, MP4), progress bars, image and model loading, and the common options."""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import torch

from ..model import LPIPS
from ..utils import IMAGE_EXTS, atomic_write, read_image_tensor


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
    save: Callable[[], object]  # its return value (e.g. the path written) is ignored
    note: Optional[str] = None


def progress_bar(total: int, desc: str, enabled: Optional[bool]):
    from tqdm.auto import tqdm

    # enabled=None: shown when stderr is a terminal (tqdm's disable=None), --progress forces it
    return tqdm(total=total, desc=desc, unit="img", disable=None if enabled is None else not enabled,
                file=sys.stderr, dynamic_ncols=True, leave=False if enabled is None else True)


def list_images(folder: Path) -> List[Path]:
    if not folder.is_dir():
        raise CLIError(f"{folder} is not a directory")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())


def load_unit(path: Path) -> torch.Tensor:
    """An image file as a (1, 3, H, W) float32 tensor in [0, 1] (16-bit and float files at full precision)."""
    try:
        return read_image_tensor(path)[None]
    except FileNotFoundError:
        raise CLIError(f"image {path} does not exist") from None
    except Exception as e:  # PIL's errors, unsupported modes, out-of-range float images
        raise CLIError(f"cannot read image {path}: {e}") from e


def load_lpips(path: Path) -> torch.Tensor:
    """An image file as (1, 3, H, W) in [-1, 1], LPIPS' input range."""
    return load_unit(path) * 2 - 1


def byte_size(text: str) -> int:
    """An argparse type: a number of bytes, with an optional K/M/G/T suffix (powers of 1024): '2G'."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1] if t and t[-1] in "KMGT" else ""
    try:
        value = float(t[:-1] if unit else t) * units[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size such as 2G, 512M or 1000000 (bytes), got {text!r}") from None
    if not (math.isfinite(value) and value >= 1):
        raise argparse.ArgumentTypeError(f"a size must be at least 1 byte, got {text!r}")
    return int(value)


def lpips_model(args, spatial: bool = False, net: Optional[str] = None) -> LPIPS:
    model = LPIPS(net=net or args.net, version=args.version, spatial=spatial, verbose=False,
                  memory_budget=getattr(args, "memory_budget", None))
    model.requires_grad_(False)
    return model.to(args.device)


def check_same_size(p0, t0, p1, t1) -> None:
    if t0.shape != t1.shape:
        raise CLIError(f"{p0} is {t0.shape[3]}x{t0.shape[2]} but {p1} is {t1.shape[3]}x{t1.shape[2]}; "
                       "LPIPS compares images of one size")


# -- output ----------------------------------------------------------------------------------------
def json_value(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def render(res: Result, fmt: str) -> str:
    """The results as text in ``fmt`` ('table' | 'csv' | 'json'); valid for zero rows (no NaN in JSON)."""
    out = io.StringIO()
    if fmt == "json":
        doc: Dict[str, Any] = {"results": [{k: json_value(v) for k, v in r.items()} for r in res.rows]}
        if res.summary is not None:
            doc["summary"] = {k: json_value(v) for k, v in res.summary.items()}
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
            cells = [[format_value(r[c]) for c in res.columns] for r in res.rows]
            widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(res.columns)]
            out.write("  ".join(c.ljust(w) for c, w in zip(res.columns, widths)).rstrip() + "\n")
            for x in cells:
                out.write("  ".join(v.ljust(w) for v, w in zip(x, widths)).rstrip() + "\n")
        if res.summary:
            out.write("  ".join(f"{k}: {format_value(v)}" for k, v in res.summary.items()) + "\n")
    return out.getvalue()


def format_value(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if v and abs(v) < 1e-3 else f"{v:.6f}"
    return str(v)


def same_file(a: Path, b: Path) -> bool:
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
        if same_file(p, Path(inp)):
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


def save_png(x: torch.Tensor, path) -> None:
    """(3, H, W) or (N, 3, H, W) side by side, in [0, 1] -> an 8-bit PNG, atomically."""
    from PIL import Image

    if x.dim() == 4:
        x = torch.cat(list(x), dim=2)
    arr = (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    atomic_write(Path(path), lambda tmp: Image.fromarray(arr).save(tmp, format="PNG"))


def save_gif(frames: torch.Tensor, path, duration_ms: int = 120) -> None:
    """An animated GIF of (N, 3, H, W) frames, forth and back, atomically."""
    from PIL import Image

    ims = [Image.fromarray((f.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy())
           for f in frames]
    seq = ims + ims[-2:0:-1]
    atomic_write(Path(path), lambda tmp: seq[0].save(tmp, format="GIF", save_all=True, append_images=seq[1:],
                                                      duration=duration_ms, loop=0))


def save_mp4(frames: torch.Tensor, path, fps: float = 8.0, min_side: int = 256) -> None:
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


def same_size_images(paths) -> torch.Tensor:
    xs = [load_unit(Path(p)) for p in paths]
    for p, x in zip(paths[1:], xs[1:]):
        if x.shape != xs[0].shape:
            raise CLIError(f"the images must have one size: {paths[0]} is {xs[0].shape[3]}x{xs[0].shape[2]} but {p} "
                           f"is {x.shape[3]}x{x.shape[2]}")
    return torch.cat(xs)


def parse_eps(text: str) -> float:
    """'8/255' or '0.03' -> float (argparse type; ``validation.parse_fraction``)."""
    from ..validation import parse_fraction

    try:
        return parse_fraction(text, "value")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def image_folder(path: str, size: Optional[int]):
    from ..imagefolder import ImageFolder

    try:
        return ImageFolder(path, size=size)
    except (FileNotFoundError, ValueError) as e:
        raise CLIError(str(e)) from None


def check_device(spec: str) -> str:
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




def check_minimum(args, options: Iterable[str], minimum: int) -> None:
    """Each of ``options`` (argparse dests) that is given must be >= ``minimum``."""
    for opt in options:
        v = getattr(args, opt, None)
        if v is not None and v < minimum:
            raise CLIError(f"--{opt.replace('_', '-')} must be >= {minimum}, got {v}")


def files_in(folders: Iterable[str], recursive: bool = False) -> List[Path]:
    """What the folders hold (files only, every level, with ``recursive``): the inputs an output
    must not overwrite; folders that do not exist are skipped."""
    out: List[Path] = []
    for d in folders:
        p = Path(d)
        if p.is_dir():
            out += [f for f in p.rglob("*") if f.is_file()] if recursive else list(p.iterdir())
    return out


class Parents:
    """The option groups commands share (argparse parents)."""

    def __init__(self) -> None:
        self.common = argparse.ArgumentParser(add_help=False)
        self.common.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0 (default cpu)")
        self.common.add_argument("--format", default="table", choices=["table", "csv", "json"], help="output format")
        self.common.add_argument("-o", "--out", help="write results to this file (atomically, after success) instead "
                                 "of stdout")
        self.common.add_argument("--debug", action="store_true", help="show the full traceback of an error")
        self.progress = argparse.ArgumentParser(add_help=False)
        prog = self.progress.add_mutually_exclusive_group()
        prog.add_argument("--progress", dest="progress", action="store_true", default=None, help="always show progress")
        prog.add_argument("--no-progress", dest="progress", action="store_false", help="never show progress")
        self.lpips = argparse.ArgumentParser(add_help=False, parents=[self.progress])
        self.lpips.add_argument("--net", default=None, choices=["alex", "vgg", "squeeze", "both"],
                                help="trunk network (default alex; the demo runs alex and vgg: 'both')")
        self.lpips.add_argument("--version", default=None, choices=["0.1", "0.0"], help="LPIPS version (default 0.1)")
        self.lpips.add_argument("--batch-size", type=int, default=32, help="images per trunk pass (default 32)")
        self.lpips.add_argument("--memory-budget", type=byte_size, default=None, metavar="SIZE",
                                help="trunk activations a pass may take before large images run tiled (the same "
                                     "numbers), e.g. 2G or 512M (default: half the free memory: a GPU's, or the "
                                     "system's available memory)")


def metric_name(text: str) -> str:
    """An argparse type: a registry name or alias -> the registry's name (ArgumentTypeError names the
    known ones, or the new name of an old one)."""
    from ..metrics import resolve_name

    try:
        return resolve_name(text)
    except (ValueError, TypeError) as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def metric_argument(s, flag: str, *, default: Optional[str] = None, what: str = "the metric") -> None:
    """A metric option (``--metric``, ``--distance``) taking the registry's names and aliases
    (``fastlpips metrics`` lists them)."""
    s.add_argument(flag, default=default, type=metric_name, metavar="NAME",
                   help=f"{what}: a name of `fastlpips metrics` ({default})")


def families_argument(s) -> None:
    """--families: the E-LPIPS random families kept (an ablation)."""
    from ..transforms import FAMILIES

    s.add_argument("--families", type=_families, default=None, metavar="F1,F2,...",
                   help="E-LPIPS ablation: the random families kept, comma-separated, from " + ",".join(FAMILIES)
                   + " (default all; an empty string keeps none)")


def _families(text: str):
    from ..transforms import check_families

    try:
        return sorted(check_families(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def run_folder_arguments(s) -> None:
    """--resume / --overwrite / --allow-other-data of the training commands."""
    run = s.add_mutually_exclusive_group()
    run.add_argument("--resume", action="store_true", help="continue the run in OUT_DIR from its checkpoint.pt")
    run.add_argument("--overwrite", action="store_true", help="replace the run in OUT_DIR (its files stay until "
                     "the new run's first checkpoint)")
    s.add_argument("--allow-other-data", action="store_true", help="with --resume: continue on other data than "
                   "the checkpoint's (other folders or file count)")
