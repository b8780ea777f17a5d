"""Run folders of the trainers (``training.train_lpips``, ``pat.train_pat``): files that belong together.

A run folder holds one checkpoint, the truth of the run (weights, optimizer, position,
configuration, RNG states, the data it trains on and every log row so far), and files derived from
it (weights in other formats, ``log.csv``, metadata), each written atomically *after* the
checkpoint. So a kill at any moment leaves a complete checkpoint and derived files at most one
save behind, which ``resume`` rewrites from the checkpoint before it continues: no log row is
lost, none is written twice.

A folder that already holds a run is refused unless the caller resumes it or asks to overwrite
it; with ``overwrite`` the old files stay until the new run's first checkpoint replaces them, so a
run that fails before that leaves the old one complete.
"""
from __future__ import annotations

import csv
import io
import logging
import os
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .nets.weights import WeightError, load_torch_file
from .utils import atomic_save, atomic_write

__all__ = ["RunFolder", "CheckpointError", "write_log_csv", "read_log_csv", "data_record", "check_data", "plain"]

log = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]


class CheckpointError(WeightError):
    """A checkpoint that cannot be used: unreadable, foreign, or of another kind of run (the message
    names the file)."""


class RunFolder:
    """The files of one run in ``out``: ``checkpoint`` (the truth) and ``files`` derived from it."""

    def __init__(self, out: PathLike, files: Sequence[str], checkpoint: str = "checkpoint.pt",
                 kind: str = "training") -> None:
        self.out = Path(out)
        self.checkpoint = self.out / checkpoint
        self.files = [checkpoint] + [f for f in files if f != checkpoint]
        self.kind = kind
        self._saved = False
        self._overwrite = False

    def existing(self) -> List[str]:
        """The run's files present in the folder."""
        return [f for f in self.files if (self.out / f).exists()]

    def prepare(self, *, resume: bool, overwrite: bool) -> None:
        """Refuse what would mix two runs: resuming without a checkpoint, starting into a folder
        that holds a run without ``overwrite``; ``resume`` and ``overwrite`` together."""
        self._overwrite = bool(overwrite)
        if resume and overwrite:
            raise ValueError("resume and overwrite exclude each other: resume continues the run in the folder, "
                             "overwrite replaces it")
        if self.out.exists() and not self.out.is_dir():
            raise NotADirectoryError(f"output folder {self.out} is a file")
        if resume:
            if not self.checkpoint.is_file():
                raise FileNotFoundError(f"resume=True but {self.checkpoint} does not exist")
            return
        found = self.existing()
        if found and not overwrite:
            raise FileExistsError(f"{self.out} already holds a run ({', '.join(found)}): resume it (resume=True, "
                                  "--resume) or replace it (overwrite=True, --overwrite), or choose another folder")
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OSError(f"cannot create the output folder {self.out}: {e.strerror or e}") from None
        if not os.access(self.out, os.W_OK | os.X_OK):
            raise PermissionError(f"output folder {self.out} is not writable")

    def load(self, required: Sequence[str]) -> dict:
        """The checkpoint, read pickle-free; CheckpointError when it lacks any of ``required``."""
        state = load_torch_file(self.checkpoint, f"{self.kind} checkpoint")
        if not isinstance(state, Mapping):
            raise CheckpointError(f"{self.kind} checkpoint {self.checkpoint} is not a fastlpips checkpoint (it holds "
                                  f"a {type(state).__name__}, not a dict)")
        missing = [k for k in required if k not in state]
        if missing:
            raise CheckpointError(f"{self.kind} checkpoint {self.checkpoint} is not a fastlpips {self.kind} "
                                  f"checkpoint (it lacks {', '.join(missing)})")
        return dict(state)

    def save(self, state: dict, derived: Sequence[Tuple[str, Callable[[str], None]]]) -> None:
        """Write the checkpoint (numpy scalars in it as Python numbers, so it loads pickle-free), then
        each derived file ``(name, write(tmp_path))``, each atomically. The first save of an
        overwriting run also removes the old run's files it does not write."""
        atomic_save(plain(state), self.checkpoint)
        for name, write in derived:
            atomic_write(self.out / name, write)
        if not self._saved and self._overwrite:
            keep = {self.checkpoint.name} | {name for name, _ in derived}
            for f in self.files:
                if f not in keep and (self.out / f).exists():
                    (self.out / f).unlink()
            self._saved = True

    def write_derived(self, derived: Sequence[Tuple[str, Callable[[str], None]]]) -> None:
        """Rewrite derived files from a loaded checkpoint (resume: a kill can leave them one save behind)."""
        for name, write in derived:
            atomic_write(self.out / name, write)


def plain(obj):
    """``obj`` with numpy scalars as Python numbers, through dicts, lists and tuples (tensors and
    everything else as they are): what a checkpoint may hold to load with ``weights_only=True``."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return type(obj)((k, plain(v)) for k, v in obj.items()) if type(obj) is not dict else \
            {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(plain(v) for v in obj)
    return obj


def _cell(v: object, fmt: Optional[str]) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, float):
        return format(v, fmt or ".6g")
    return str(v)


def write_log_csv(rows: Sequence[Mapping[str, object]],
                  formats: Optional[Mapping[str, str]] = None) -> Callable[[str], None]:
    """A writer ``write(tmp_path)`` of the whole log: a header from the first row's keys, then every
    row (floats formatted by ``formats[column]``, default ``.6g``; strings as they are)."""
    formats = formats or {}

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            if rows:
                cols = list(rows[0])
                f.write(",".join(cols) + "\n")
                for r in rows:
                    f.write(",".join(_cell(r.get(c, ""), formats.get(c)) for c in cols) + "\n")
    return write


def read_log_csv(path: PathLike, upto_epoch: Optional[int] = None) -> List[Dict[str, str]]:
    """Rows of a ``log.csv`` as strings (a checkpoint of an older fastlpips holds no rows: they are
    recovered from its log), only those with ``epoch <= upto_epoch``; [] when unreadable."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError:
        return []
    rows: List[Dict[str, str]] = []
    for r in csv.DictReader(io.StringIO(text)):
        try:
            e = int(r.get("epoch", ""))
        except ValueError:
            continue  # a second header or a torn line
        if upto_epoch is None or e <= upto_epoch:
            rows = [x for x in rows if int(x["epoch"]) != e] + [dict(r)]
    return rows


def data_record(roots: Sequence[PathLike], items: int) -> dict:
    """What a run trains on: its data folders (absolute) and item count."""
    return {"roots": [str(Path(r).resolve()) for r in roots], "items": int(items)}


def check_data(saved: Optional[Mapping], mine: Mapping, checkpoint: Path, allow_other_data: bool) -> None:
    """Refuse to resume on other data than the checkpoint's unless ``allow_other_data``."""
    if saved is None:
        warnings.warn(f"{checkpoint} does not record its training data (written by an older fastlpips): "
                      "the data folders were not checked", RuntimeWarning, stacklevel=3)
        return
    if dict(saved) == dict(mine):
        return
    if allow_other_data:
        log.warning("resuming %s on other data: %s (was %s)", checkpoint, mine, dict(saved))
        return
    raise ValueError(f"{checkpoint} was trained on {', '.join(saved['roots'])} ({saved['items']} items); this run "
                     f"reads {', '.join(mine['roots'])} ({mine['items']} items): resume with the same data, or allow "
                     "it (allow_other_data=True, --allow-other-data)")
