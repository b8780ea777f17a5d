"""Command line: ``fastlpips <command>`` (``python -m fastlpips`` the same).

Each command group lives in one module beside its options, checks and run (``register(sub,
parents)``, ``validate(args) -> inputs``, ``run(args) -> Result``): ``distances`` (pair, dirs,
allpairs, elpips, demo), ``judgments`` (score-2afc, score-jnd, train, robust-2afc), ``geometry``
(barycenter, geodesic), ``robust`` (example-data, pat-train, robust-eval), ``evaluate`` and
``check``; ``common`` holds what they share (the result and its rendering, output paths, pictures,
image loading, the common options).

Nothing is lost or destroyed: outputs (``-o``, ``--heatmap`` ...) are written only after the
command succeeded, through a temporary file in the same folder renamed over the target; an output
path that is one of the inputs is refused before any work; when an output cannot be written the
results still reach stdout. Errors are one line on stderr and exit code 1 (``--debug`` shows the
traceback).
"""
from __future__ import annotations

import argparse
import os  # noqa: F401  (tests patch cli.os.replace: the one os module)
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from ..nets.weights import WeightError
from ..utils import atomic_write
from . import check, distances, evaluate, geometry, judgments, metrics, robust
from .common import CLIError, Picture, Result, check_device, check_output_path, render, same_file

__all__ = ["main", "build_parser", "CLIError", "Result", "Picture", "render"]

GROUPS = (distances, judgments, geometry, robust, evaluate, check, metrics)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastlpips",
                                description="LPIPS perceptual distances (fast, exact drop-in for lpips)")
    sub = p.add_subparsers(dest="command", required=True)
    from .common import Parents

    parents = Parents()
    for group in GROUPS:
        group.register(sub, parents)
    return p


def _validate(args) -> List[Path]:
    """The checks every command shares, then the command's own; returns the input files an output
    must not overwrite."""
    check_device(args.device)
    if getattr(args, "allow_other_data", False) and not args.resume:
        raise CLIError("--allow-other-data applies to --resume (a new run reads whatever data it is given)")
    if getattr(args, "batch_size", None) is not None and args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
    return args.validate(args)


def _run(args, stdout, stderr) -> int:
    inputs = _validate(args)
    out_path = check_output_path(args.out, "-o", inputs) if args.out else None
    heat = getattr(args, "heatmap", None)
    if heat:
        check_output_path(heat, "--heatmap", inputs)
        if out_path is not None and same_file(Path(heat), out_path):
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
        def write_text(tmp: str) -> None:
            Path(tmp).write_text(text)

        try:
            atomic_write(out_path, write_text)
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
        from .. import distributed as D

        D.shutdown()  # leave a torchrun process group before exiting


