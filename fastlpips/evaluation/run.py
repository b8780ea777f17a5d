"""Dataset-scale evaluation (the run): full-reference metrics of folders of outputs against a reference folder.

``evaluate(ref_dir, out_dirs, metrics, results_dir)`` compares every image of each output folder
(a "method": a super-resolution model, a codec setting, ...) with the reference image of the same
relative path (another image extension is accepted when the name is otherwise unique: ``a.png``
vs ``a.jpg``), with any metric of the registry (``fastlpips.list_metrics()``):

* ``psnr``, ``ssim``, ``ms-ssim``, ``gmsd``, ``uqi``: ``fastlpips.iqa`` (the conventions of scikit-image,
  piq and torchmetrics, checked against them in tests/test_iqa.py), on [0, 1] images; lpips'
  baselines (``l2-lab``, ``dssim``, ...) and ``euclidean`` likewise, through the registry.
* ``lpips`` (= ``lpips-alex``), ``lpips-vgg``, ``lpips-squeeze`` and the ``-v0.0`` forms;
  ``lpips-alex=CKPT`` loads a checkpoint (``LPIPS(model_path=CKPT)``).
* ``rlpips=CKPT``: R-LPIPS, an AlexNet LPIPS checkpoint (the R-LPIPS release's format).
* ``elpips`` (and ``elpips-squeeze``): E-LPIPS-VGG to a confidence interval (``elpips_estimate``'s
  default 'auto' design: stratified scale levels, control variates, cost-aware allocation with the
  deterministic area cost model as the chunk's seed asks; samples until the 95% half-width is below
  2.5% of the mean and below 0.01, at most ``elpips_samples``); the columns ``elpips`` and
  ``elpips_ci`` (the half-width). Scale levels by the release's rule for the
  image size.

Work plan and determinism: the (method, file) items are sorted by the reference's image size,
then file, then method, and cut into chunks of ``batch_size`` outputs of one size. A chunk is the
unit of work: its reference images are read once and their LPIPS features computed once for all
methods. The chunks, and so every batch's composition, depend only on the inputs, never on what
was done before or on the number of processes, so a resumed or a sharded run computes the same
numbers as one uninterrupted run.

Resume: results are appended per image to ``results_dir/records/rank-<r>.jsonl`` (one JSON line
per (method, file), flushed after each chunk), each value with the key of what it was computed
from: the sha256 of the reference and the output file, and of the metric (its name, its
checkpoint's sha256, E-LPIPS' seed and sample budget). A rerun reads them and skips every chunk
whose items already have every requested column under the current key; a chunk with anything
missing (or computed from files that have changed since) is recomputed as a whole (same
composition, same numbers) and only those values are appended. A torn last line (a killed run)
is ignored. Errors are not results: they are retried by every run. One run at a time uses a
results folder: a second one is refused while the first runs (a lock the system releases when
the process ends, killed or not).

Scale: under ``torchrun`` (``WORLD_SIZE`` > 1) process r takes chunks r, r + W, ...; rank 0 merges
the records of all processes into ``results.csv``, ``results.json`` and ``report.html``.

Bad input never stops the run: a missing counterpart (either way), an unreadable image, a size
mismatch, an image too small for a metric or an unknown metric becomes an error entry naming the
file (and metric); the rest is computed and ``EvaluationResult.errors`` lists them (the CLI exits
non-zero).
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union, cast

import numpy as np
import torch

from .. import distributed as D
from .. import validation as V
from ..utils import IMAGE_EXTS, atomic_write, file_sha256, read_image_tensor
from .specs import EvaluationResult, Item, MetricSpec, parse_metric

__all__ = ["evaluate", "match_files", "method_names", "CONFIG_FILE", "RECORDS_DIR"]

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

CONFIG_FILE = "evaluation.json"
RECORDS_DIR = "records"


def _images(folder: Path) -> Dict[str, Path]:
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a directory")
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*"))
            if p.suffix.lower() in IMAGE_EXTS and p.is_file()}


def match_files(ref_dir: PathLike, out_dir: PathLike, method: str) -> Tuple[List[Item], List[Tuple[Item, str]]]:
    """The (reference, output) pairs of one method and the unmatched files as (item, message).

    An output matches the reference of the same relative path, or of the same path up to the
    image extension when exactly one output has that stem."""
    refs, outs = _images(Path(ref_dir)), _images(Path(out_dir))
    by_stem: Dict[str, List[str]] = defaultdict(list)
    for rel in outs:
        by_stem[rel.rsplit(".", 1)[0]].append(rel)
    items, errors, used = [], [], set()
    for rel, ref in refs.items():
        if rel in outs:
            match: Optional[str] = rel
        else:
            cands = by_stem.get(rel.rsplit(".", 1)[0], [])
            if len(cands) > 1:
                errors.append((Item(method, rel, ref), f"{len(cands)} outputs could be its counterpart in {out_dir}: "
                               f"{', '.join(cands)}"))
                used.update(cands)
                continue
            match = cands[0] if cands else None
        if match is None:
            errors.append((Item(method, rel, ref), f"no counterpart in {out_dir}"))
            continue
        used.add(match)
        items.append(Item(method, rel, ref, outs[match]))
    for rel in sorted(set(outs) - used):
        errors.append((Item(method, rel, None, outs[rel]), f"{outs[rel]} has no reference in {ref_dir}"))
    return items, errors


def _header_size(path: Path) -> Tuple[int, int]:
    """(H, W) from the file's header (EXIF rotation applied where the header holds it); (0, 0) when
    unreadable (the load reports it)."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            w, h = im.size
            # formats whose EXIF sits in the header (a PNG's can follow the pixels: reading it decodes
            # the file; a rotated PNG lands in its own group when loaded)
            if im.format in ("JPEG", "MPO", "TIFF", "WEBP") and im.getexif().get(0x0112, 1) in (5, 6, 7, 8):
                w, h = h, w
            return h, w
    except Exception:  # the real read reports the error for this file
        return 0, 0


def _matched_paths(it: Item) -> Tuple[Path, Path]:
    """A matched item's (reference, output) files: ``match_files``' items have both."""
    assert it.ref is not None and it.out is not None
    return it.ref, it.out


def _plan(items: Sequence[Item], batch_size: int) -> List[List[Item]]:
    sizes = {it.file: _header_size(_matched_paths(it)[0]) for it in items}
    order = {m: k for k, m in enumerate(dict.fromkeys(it.method for it in items))}
    items = sorted(items, key=lambda it: (sizes[it.file], it.file, order[it.method]))
    chunks: List[List[Item]] = []
    for it in items:
        if chunks and len(chunks[-1]) < batch_size and sizes[chunks[-1][0].file] == sizes[it.file]:
            chunks[-1].append(it)
        else:
            chunks.append([it])
    return chunks


def _chunk_seed(seed: int, chunk: Sequence[Item]) -> int:
    h = hashlib.sha256(f"{seed}|" .encode() + "|".join(f"{it.method}/{it.file}" for it in chunk).encode())
    return int.from_bytes(h.digest()[:7], "little")


# -- metrics ---------------------------------------------------------------------------------------
class _Metrics:
    """The metric modules, built once, and one chunk's computation."""

    def __init__(self, specs: Sequence[MetricSpec], device: torch.device, elpips_samples: int, seed: int,
                 labels: Optional[Dict[str, str]] = None, labels_file: Optional[Path] = None) -> None:
        self.specs, self.device, self.elpips_samples, self.seed = list(specs), device, elpips_samples, seed
        self.labels, self.labels_file = labels, labels_file
        self._models: Dict[object, Union[torch.nn.Module, Exception]] = {}
        self._classifiers: Dict[str, Any] = {}

    def classifier(self, spec: MetricSpec):
        """(model, metadata) of a ``top1=`` spec, loaded once: a pat-train folder
        (``pat.load_classifier``) or an ImageNet ResNet-50's weights file
        (``nets.classifiers.load_imagenet_classifier``); one that does not load raises the same
        error for every batch."""
        if spec.key not in self._classifiers:
            from ..nets.classifiers import load_imagenet_classifier
            from ..pat import load_classifier

            path = cast(str, spec.path)
            try:
                load = load_classifier if Path(path).is_dir() else load_imagenet_classifier
                self._classifiers[spec.key] = load(path, self.device)
            except (OSError, ValueError, RuntimeError) as e:
                self._classifiers[spec.key] = e
        got = self._classifiers[spec.key]
        if isinstance(got, Exception):
            raise got
        return got

    def label(self, spec: MetricSpec, file: str) -> Union[int, str]:
        """The class index of reference ``file`` for the classifier of ``spec``, or why there is none:
        from the labels file (a class name of the classifier or an index), else the reference's
        class subfolder (its first path component)."""
        classes = self.classifier(spec)[1]["classes"]
        if self.labels is not None:
            text = self.labels.get(file)
            if text is None:
                return f"no label for {file} in {self.labels_file}"
            where = f"label {text!r} of {file} in {self.labels_file}"
        else:
            if "/" not in file:
                return (f"no label for {file}: it is not in a class subfolder of the reference folder and no labels "
                        "file was given")
            text = file.split("/", 1)[0]
            where = f"class folder {text!r} of {file}"
        if text in classes:
            return classes.index(text)
        if text.isdigit() and int(text) < len(classes):
            return int(text)
        shown = classes if len(classes) <= 10 else classes[:5] + ["..."] + classes[-2:]
        return f"{where} is not one of the classifier's classes {shown} (or an index below {len(classes)})"

    def classify(self, spec: MetricSpec, refs: torch.Tensor, outs: torch.Tensor, idx: torch.Tensor,
                 labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Top-1 errors (1.0 wrong, 0.0 right) of the outputs and of their references; images are
        resized to the classifier's size (bilinear, antialiased) when it has one."""
        model, meta = self.classifier(spec)
        size = meta.get("size")

        def errors(x: torch.Tensor) -> torch.Tensor:
            if size is not None and tuple(x.shape[2:]) != (size, size):
                x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                                                    align_corners=False)
            return (model(x).argmax(1) != labels).double()

        return {spec.key: errors(outs), spec.key + "_ref": errors(refs[idx])}

    def lpips(self, spec: MetricSpec, spatial: bool = False):
        key = (spec.key, spatial)
        if key not in self._models:
            from ..model import LPIPS

            try:
                # check_inputs=False: images decoded from files are finite and in [0, 1] by construction
                m = LPIPS(**spec.params, model_path=spec.path, spatial=spatial, verbose=False, check_inputs=False)
                self._models[key] = m.requires_grad_(False).to(self.device)
            except Exception as e:  # a bad checkpoint: the same error for every batch, without rereading it
                self._models[key] = e
        model = self._models[key]
        if isinstance(model, Exception):
            raise model
        return model

    def elpips(self, spec: MetricSpec, levels: int):
        key = (spec.key, levels)
        if key not in self._models:
            from ..elpips import ELPIPS

            self._models[key] = ELPIPS(**spec.params, max_scale=levels, device=self.device)
        return self._models[key]

    def score(self, spec: MetricSpec):
        """The registry's metric (built once): ``metric(outputs, references)`` -> (N,)."""
        key = (spec.key, "score")
        if key not in self._models:
            from ..metrics import create_metric

            self._models[key] = create_metric(spec.key, device=self.device)
        return self._models[key]

    def compute(self, spec: MetricSpec, refs: torch.Tensor, outs: torch.Tensor, idx: torch.Tensor,
                seed: int) -> Dict[str, torch.Tensor]:
        """Columns of ``spec`` for outputs ``outs`` (N, 3, H, W) vs ``refs[idx]``, images in [0, 1]."""
        if spec.kind == "lpips":
            return {spec.key: self.lpips(spec).distances_to(refs, outs, idx, normalize=True).reshape(-1)}
        if spec.kind == "elpips":
            from ..elpips import scale_levels_for_size
            from ..estimator import elpips_estimate

            levels = scale_levels_for_size(*outs.shape[2:])
            est = elpips_estimate(outs, refs[idx], metric=self.elpips(spec, levels), seed=seed,
                                  max_samples=self.elpips_samples, min_samples=min(10, self.elpips_samples))
            return {spec.key: est.mean, spec.key + "_ci": est.half_width}
        return {spec.key: self.score(spec)(outs, refs[idx])}

    def heatmap(self, spec: Optional[MetricSpec], ref: torch.Tensor, out: torch.Tensor) -> np.ndarray:
        """An (H, W) map of where ``out`` differs from ``ref``: the LPIPS distance map of ``spec``
        (an LPIPS metric), else the mean absolute difference over channels."""
        with torch.no_grad():
            if spec is not None and spec.spatial:
                m = self.lpips(spec, spatial=True)
                return m(ref.to(self.device), out.to(self.device), normalize=True)[0, 0].float().cpu().numpy()
            return (ref - out).abs().mean(1)[0].float().cpu().numpy()


class _ChunkImages(torch.utils.data.Dataset):
    """Chunk k -> (chunk index, [(refs, outs, ref index per output, items)] per image size, {item: load error})."""

    def __init__(self, chunks: Sequence[Sequence[Item]], todo: Sequence[int]) -> None:
        self.chunks, self.todo = chunks, list(todo)

    def __len__(self) -> int:
        return len(self.todo)

    def __getitem__(self, k: int):
        ci = self.todo[k]
        refs: Dict[str, torch.Tensor] = {}
        ref_err: Dict[str, str] = {}
        kept, outs, idx, errors = [], [], [], {}
        for it in self.chunks[ci]:
            if it.file not in refs and it.file not in ref_err:
                try:
                    refs[it.file] = read_image_tensor(cast(Path, it.ref))  # chunks hold matched items: ref, out set
                except Exception as e:
                    ref_err[it.file] = f"cannot read reference {it.ref}: {e}"
            if it.file in ref_err:
                errors[it] = ref_err[it.file]
                continue
            try:
                out = read_image_tensor(cast(Path, it.out))
            except Exception as e:
                errors[it] = f"cannot read {it.out}: {e}"
                continue
            r = refs[it.file]
            if out.shape != r.shape:
                errors[it] = (f"{it.out} is {out.shape[2]}x{out.shape[1]} but its reference {it.ref} is "
                              f"{r.shape[2]}x{r.shape[1]}")
                continue
            kept.append(it)
            outs.append(out)
            idx.append(it.file)
        # one group per image size: the plan's sizes come from file headers, which can disagree
        # with the decoded image (an EXIF rotation the header check skips)
        groups = []
        for shape in dict.fromkeys(refs[n].shape for n in idx):
            sel = [k for k, n in enumerate(idx) if refs[n].shape == shape]
            names = list(dict.fromkeys(idx[k] for k in sel))
            pos = {n: i for i, n in enumerate(names)}
            groups.append((torch.stack([refs[n] for n in names]), torch.stack([outs[k] for k in sel]),
                           torch.tensor([pos[idx[k]] for k in sel], dtype=torch.long), [kept[k] for k in sel]))
        return ci, groups, errors


# -- records ---------------------------------------------------------------------------------------
Records = Dict[Tuple[str, str], Dict[str, Tuple[float, str]]]


def _read_records(folder: Path) -> Records:
    """{(method, file): {column: (value, key)}} from every records file (later lines win; torn
    lines skipped; lines of an older fastlpips, without keys, count as computed from unknown files)."""
    done: Records = defaultdict(dict)
    for path in sorted(folder.glob("rank-*.jsonl")):
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.endswith("\n"):
                    continue  # the torn last line of a killed run
                try:
                    rec = json.loads(line)
                    keys = rec.get("keys", {})
                    done[(rec["method"], rec["file"])].update(
                        {k: (float(v), str(keys.get(k, ""))) for k, v in rec["values"].items()})
                except (ValueError, KeyError, TypeError, AttributeError):
                    log.warning("%s: skipped a malformed line", path)
    return done


class _Keys:
    """What each value is computed from: the files' sha256 (each file hashed once per run) and the
    metric's identity (name, checkpoint sha256, E-LPIPS seed and sample budget)."""

    def __init__(self, specs: Sequence[MetricSpec], seed: int, elpips_samples: int,
                 labels: Optional[Path] = None) -> None:
        self._files: Dict[Path, str] = {}
        self.columns: Dict[str, str] = {}
        for s in specs:
            if s.kind == "classifier":  # its weights and where the labels come from
                assert s.path is not None  # parse_metric requires the folder or file
                weights = Path(s.path) / "model.pt" if Path(s.path).is_dir() else Path(s.path)
                # (a folder without model.pt fails per file, when computed)
                ident = [s.key, file_sha256(weights) if weights.is_file() else "missing",
                         file_sha256(labels) if labels else "folders"]
            else:
                ident = [s.key, file_sha256(s.path) if s.path else ""]
            if s.kind == "elpips":
                ident += [str(seed), str(elpips_samples)]
            for c in s.columns:
                self.columns[c] = hashlib.sha256("|".join(ident + [c]).encode()).hexdigest()[:16]

    def file(self, path: Path) -> str:
        if path not in self._files:
            try:
                self._files[path] = file_sha256(path)
            except OSError:
                self._files[path] = "unreadable"  # its read fails and is reported; nothing is reused
        return self._files[path]

    def key(self, item: Item, column: str) -> str:
        ref, out = _matched_paths(item)
        return hashlib.sha256(f"{self.file(ref)}|{self.file(out)}|{self.columns[column]}".encode()
                              ).hexdigest()[:24]


def _try_lock(f) -> None:
    """A non-blocking exclusive lock on the open file ``f`` (POSIX flock, Windows msvcrt)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        import msvcrt

        f.seek(0)
        msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined,unused-ignore]  # Windows only
        return
    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def _lock(results: Path):
    """An exclusive lock on ``results/.lock`` (released by the system when this process ends,
    killed or not): the open file. BlockingIOError naming the holder when another run has it; a
    file system that cannot lock is warned about and the run goes on."""
    results.mkdir(parents=True, exist_ok=True)
    f = open(results / ".lock", "a+")
    try:
        _try_lock(f)
    except OSError as e:
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):  # a file system without locks
            log.warning("cannot lock %s (%s): two evaluate runs on it would both compute", results / ".lock", e)
            return f
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise BlockingIOError(f"results folder {results} is in use by another evaluate run ({holder}); wait for it "
                              "to finish or use another --results folder") from None
    f.seek(0)
    f.truncate()
    f.write(f"process {os.getpid()}\n")
    f.flush()
    return f


def _check_config(results: Path, ref_dir: Path, methods: Dict[str, Path], restart: bool) -> None:
    """Refuse to mix runs of another reference folder, or a method name used for another folder."""
    cfg_path = results / CONFIG_FILE
    cfg: Dict[str, Any] = {"reference": str(ref_dir.resolve()), "methods": {}}
    if cfg_path.exists() and not restart:
        try:
            old = json.loads(cfg_path.read_text())
            old_ref, old_methods = old["reference"], dict(old["methods"])
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{cfg_path} is not an evaluation record ({e}); remove it or use another results folder")
        if old_ref != cfg["reference"]:
            raise ValueError(f"{results} holds an evaluation against {old_ref}, not {cfg['reference']}: "
                             "use another results folder or restart")
        for m, d in methods.items():
            if m in old_methods and old_methods[m] != str(d.resolve()):
                raise ValueError(f"{results}: method {m!r} was {old_methods[m]}, now {d.resolve()}: "
                                 "use another results folder or restart")
        cfg["methods"] = old_methods
    if restart and (results / RECORDS_DIR).is_dir():
        for p in (results / RECORDS_DIR).glob("rank-*.jsonl"):
            p.unlink()
    cfg["methods"].update({m: str(d.resolve()) for m, d in methods.items()})
    results.mkdir(parents=True, exist_ok=True)

    def write_cfg(tmp: str) -> None:
        Path(tmp).write_text(json.dumps(cfg, indent=2) + "\n")

    atomic_write(cfg_path, write_cfg)


def method_names(out_dirs: Sequence[PathLike]) -> Dict[str, Path]:
    """{method name: folder}: the folder's name, or the path as given where two names collide."""
    dirs = [Path(d) for d in out_dirs]
    base = [d.resolve().name or str(d) for d in dirs]
    names = [b if base.count(b) == 1 else str(d) for b, d in zip(base, dirs)]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"output folders given twice: {', '.join(dup)}")
    return dict(zip(names, dirs))


# -- the run ---------------------------------------------------------------------------------------

def evaluate(ref_dir: PathLike, out_dirs: Sequence[PathLike], metrics: Iterable[str], results_dir: PathLike, *,
             batch_size: int = 16, device: Union[str, torch.device] = "cpu", workers: int = 0,
             elpips_samples: int = 200, seed: int = 0, restart: bool = False, report: bool = True,
             worst: int = 6, progress: Optional[Callable[[int], None]] = None,
             total: Optional[Callable[[int], None]] = None, labels: Optional[PathLike] = None) -> EvaluationResult:
    """Evaluate ``out_dirs`` against ``ref_dir`` with ``metrics`` (registry names, see
    ``parse_metric``), writing ``results_dir/results.csv``, ``results.json`` and (``report``)
    ``report.html`` with the ``worst`` images per method. ``progress(n)`` is called after each
    chunk with its number of items; ``total(n)`` once with the number of items to compute here.
    Under torchrun, call it in every process (``distributed.init_from_env`` first). ``out_dirs``
    may be one folder (a path) and ``metrics`` one comma-separated string. ``labels``: a CSV file
    (columns ``file``, the reference's path relative to ``ref_dir``, and ``label``, a class name of
    the classifier or its index) for the ``top1=MODEL_DIR`` metrics; without it, each reference's
    class is its subfolder (``ref_dir/<class>/...``)."""
    if isinstance(out_dirs, (str, os.PathLike)):
        out_dirs = [out_dirs]
    if isinstance(metrics, str):
        metrics = [m for m in metrics.split(",") if m.strip()]
    batch_size = V.check_positive_int(batch_size, "batch_size")
    workers = V.check_positive_int(workers, "workers", minimum=0)
    worst = V.check_positive_int(worst, "worst", minimum=0)
    seed = V.check_seed(seed, allow_none=False)
    ref_dir = Path(ref_dir)
    if not ref_dir.is_dir():
        raise NotADirectoryError(f"reference folder {ref_dir} is not a directory")
    if not out_dirs:
        raise ValueError("no output folders to evaluate")
    methods = method_names(out_dirs)
    for m, d in methods.items():
        if not d.is_dir():
            raise NotADirectoryError(f"output folder {d} is not a directory")
    elpips_samples = V.check_positive_int(elpips_samples, "elpips_samples (2 per scale level)", minimum=16)
    label_map = read_labels(labels) if labels is not None else None
    device = torch.device(device)
    errors: List[Dict[str, str]] = []
    specs: List[MetricSpec] = []
    for text in metrics:
        try:
            spec = parse_metric(text)
        except ValueError as e:
            errors.append({"method": "", "file": "", "metric": str(text), "message": str(e)})
            continue
        if spec.key in {s.key for s in specs}:
            errors.append({"method": "", "file": "", "metric": str(text), "message": f"metric {spec.key} given twice"})
            continue
        specs.append(spec)
    if not specs:
        why = "; ".join(e["message"] for e in errors)
        raise ValueError("no usable metric: " + why if errors else "no metrics given")
    results = Path(results_dir)
    if results.exists() and not results.is_dir():
        raise NotADirectoryError(f"results folder {results} is a file")
    lock, failure = None, None
    if D.is_main():
        try:
            lock = _lock(results)
            _check_config(results, ref_dir, methods, restart)
        except (OSError, ValueError) as e:
            failure = e
    failure = D.broadcast_object(failure)  # every process stops on the main one's refusal
    if failure is not None:
        if lock is not None:
            lock.close()
        raise failure
    try:
        return _evaluate(ref_dir, methods, specs, errors, results, batch_size=batch_size, device=device,
                         workers=workers, elpips_samples=elpips_samples, seed=seed, report=report, worst=worst,
                         progress=progress, total=total, labels=label_map,
                         labels_file=Path(labels) if labels is not None else None)
    finally:
        if lock is not None:
            lock.close()


def _evaluate(ref_dir: Path, methods: Dict[str, Path], specs: List[MetricSpec], errors: List[Dict[str, str]],
              results: Path, *, batch_size: int, device: torch.device, workers: int, elpips_samples: int, seed: int,
              report: bool, worst: int, progress, total, labels: Optional[Dict[str, str]] = None,
              labels_file: Optional[Path] = None) -> EvaluationResult:
    records = results / RECORDS_DIR
    records.mkdir(parents=True, exist_ok=True)

    items: List[Item] = []
    for m, d in methods.items():
        found, unmatched = match_files(ref_dir, d, m)
        items += found
        errors += [{"method": it.method, "file": it.file, "metric": "", "message": msg} for it, msg in unmatched]
    chunks = _plan(items, batch_size)
    done = _read_records(records)
    D.barrier()  # every process has read the records before any appends
    columns = [c for s in specs for c in s.columns]
    keys = _Keys(specs, seed, elpips_samples, labels_file)

    def current(it: Item, c: str) -> bool:
        rec = done.get((it.method, it.file), {}).get(c)
        return rec is not None and rec[1] == keys.key(it, c)

    def missing(chunk) -> List[MetricSpec]:
        return [s for s in specs if any(not current(it, c) for it in chunk for c in s.columns)]

    mine = [ci for ci in range(D.rank(), len(chunks), D.world_size())]
    todo = [ci for ci in mine if missing(chunks[ci])]
    res = EvaluationResult(specs, list(methods), [], [], computed=len(todo), skipped=len(mine) - len(todo),
                           paths={(it.method, it.file): _matched_paths(it) for it in items})
    if total is not None:
        total(sum(len(chunks[ci]) for ci in todo))
    computer = _Metrics(specs, device, elpips_samples, seed, labels, labels_file)
    my_errors: List[Dict[str, str]] = []
    dataset = _ChunkImages(chunks, todo)
    if workers > 0:
        loader: Iterable = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers,
                                                       collate_fn=_identity)
    else:  # in this process (a reading thread beside the metrics' threads measured slower on 2 cores)
        loader = (dataset[k] for k in range(len(dataset)))
    part = records / f"rank-{D.rank()}.jsonl"
    with open(part, "a", encoding="utf-8") as log_file, torch.no_grad():
        if part.stat().st_size and not part.read_bytes().endswith(b"\n"):
            log_file.write("\n")  # end a killed run's torn line: it stays unreadable, the new lines don't
        for ci, groups, load_errors in loader:
            my_errors += [{"method": it.method, "file": it.file, "metric": "", "message": msg}
                          for it, msg in load_errors.items()]
            new: Dict[Item, Dict[str, float]] = defaultdict(dict)
            for refs, outs, idx, kept in groups:
                refs, outs = refs.to(device), outs.to(device)
                for spec in missing(kept):
                    these = kept
                    try:
                        if spec.kind == "classifier":  # the images with a label
                            class_of = [computer.label(spec, it.file) for it in kept]
                            my_errors += [{"method": it.method, "file": it.file, "metric": spec.key, "message": lab}
                                          for it, lab in zip(kept, class_of) if isinstance(lab, str)]
                            sel = [k for k, lab in enumerate(class_of) if not isinstance(lab, str)]
                            if not sel:
                                continue
                            these = [kept[k] for k in sel]
                            pick = torch.tensor(sel, dtype=torch.long, device=device)
                            vals = computer.classify(spec, refs, outs[pick], idx.to(device)[pick],
                                                     torch.tensor([class_of[k] for k in sel], device=device))
                        else:
                            vals = computer.compute(spec, refs, outs, idx.to(device), _chunk_seed(seed, chunks[ci]))
                    except Exception as e:  # e.g. an image too small for the metric: per file, the run goes on
                        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                        my_errors += [{"method": it.method, "file": it.file, "metric": spec.key, "message": msg}
                                      for it in these]
                        continue
                    for c, v in vals.items():
                        for it, x in zip(these, v.double().cpu().tolist()):
                            if not current(it, c):
                                new[it][c] = x
            for it, values in new.items():
                log_file.write(json.dumps({"method": it.method, "file": it.file,
                                           "values": {c: _json_float(v) for c, v in values.items()},
                                           "keys": {c: keys.key(it, c) for c in values}}) + "\n")
            log_file.flush()
            os.fsync(log_file.fileno())
            if progress is not None:
                progress(len(chunks[ci]))
    D.barrier()
    errors = errors + [e for part in D.gather_objects(my_errors) for e in part]  # every process: the exit code
    res.errors = errors
    if not D.is_main():
        return res
    done = _read_records(records)
    err_by_item: Dict[Tuple[str, str], List[str]] = defaultdict(list)
    for err in errors:
        if err["file"]:
            err_by_item[(err["method"],
                         err["file"])].append(f"{err['metric']}: {err['message']}" if err["metric"] else err["message"])
    by_key = {(it.method, it.file): it for it in items}
    order = {m: k for k, m in enumerate(methods)}
    for key in sorted(set(by_key) | set(err_by_item), key=lambda k: (order.get(k[0], len(order)), k[1])):
        recorded = done.get(key, {})
        row: Dict[str, object] = {"method": key[0], "file": key[1]}
        it = by_key.get(key)
        row.update({c: recorded[c][0] if it is not None and current(it, c) else None for c in columns})
        row["error"] = "; ".join(err_by_item.get(key, []))
        res.rows.append(row)
    _write_outputs(res, results, ref_dir, methods, computer, report, worst)
    return res


def read_labels(path: PathLike) -> Dict[str, str]:
    """{reference file (posix, relative to the reference folder): label} of a labels CSV with the
    header columns ``file`` and ``label`` (other columns ignored). Errors name the file and line:
    missing file, missing columns, an empty field, one file given two labels."""
    import csv

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"labels file {p} does not exist")
    out: Dict[str, str] = {}
    with open(p, newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheets write a byte-order mark
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"file", "label"} <= set(reader.fieldnames):
            raise ValueError(f"labels file {p} needs the header columns 'file' and 'label', got {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            file, label = (row.get("file") or "").strip().replace("\\", "/"), (row.get("label") or "").strip()
            if not file or not label:
                raise ValueError(f"labels file {p}, line {line}: empty file or label")
            if out.get(file, label) != label:
                raise ValueError(f"labels file {p}, line {line}: {file} has two labels, {out[file]!r} and {label!r}")
            out[file] = label
    return out


def _identity(x):
    return x  # the DataLoader's collate_fn: a chunk arrives as the dataset made it (picklable for spawn)


def _json_float(v: float):
    return v if math.isfinite(v) else repr(v)  # 'inf' / 'nan' as strings: JSON has no such numbers


def _write_outputs(res: EvaluationResult, results: Path, ref_dir: Path, methods: Dict[str, Path],
                   computer: _Metrics, report: bool, worst: int) -> None:
    import csv

    def write_csv(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=res.columns, lineterminator="\n")
            w.writeheader()
            for r in res.rows:
                w.writerow({k: ("" if v is None else repr(v) if isinstance(v, float) else v) for k, v in r.items()})

    def finite(v):
        return None if v is None or not math.isfinite(v) else v

    doc = {"reference": str(ref_dir), "methods": {m: str(d) for m, d in methods.items()},
           "metrics": [{"key": s.key, "columns": s.columns, "higher_is_better": s.higher_is_better,
                        "checkpoint": s.path} for s in res.metrics],
           "summary": {m: {c: {k: finite(v) if isinstance(v, float) else v for k, v in st.items()}
                           for c, st in cols.items()} for m, cols in res.summary().items()},
           "results": [{k: (_json_float(v) if isinstance(v, float) else v) for k, v in r.items()} for r in res.rows],
           "errors": res.errors}
    atomic_write(results / "results.csv", write_csv)

    def write_json(tmp: str) -> None:
        Path(tmp).write_text(json.dumps(doc, indent=1) + "\n")

    atomic_write(results / "results.json", write_json)
    res.files.update(csv=results / "results.csv", json=results / "results.json")
    if report:
        from .report import render_report

        html = render_report(res, ref_dir, methods, computer.heatmap, worst=worst)

        def write_html(tmp: str) -> None:
            Path(tmp).write_text(html, encoding="utf-8")

        atomic_write(results / "report.html", write_html)
        res.files["html"] = results / "report.html"

