"""Reliability of the training, PAT and evaluation commands: what a kill, a rerun, a failure or a
crafted file leaves behind. One test (or more) per problem a black-box probe found:

1. a failed pat-train never leaves weights and description of two runs side by side;
2. evaluate recomputes what was computed from files that changed since;
3. a kill just after a checkpoint loses no log row (real SIGKILL of a real process);
4. a finished out-dir is refused without --resume / --overwrite; --overwrite gives one clean log;
5. 16-bit RGB PNGs are read at full precision;
6. no file the package reads is unpickled with code (a crafted pickle creates no file);
7. worker processes report an unreadable file as in-process reading does;
8. bad --init, model.pt, checkpoint.pt and model.json give one line naming the file;
9. output paths are checked before the work;
10. resume on other data is refused; one evaluate run per results folder; failed pictures named.
"""
import contextlib
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from fastlpips import bapps, cli, iqa
from fastlpips.imagefolder import make_example_folder
from fastlpips.utils import read_image
from helpers import require

_ENV = {**os.environ, "FASTLPIPS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
PAT = ["--arch", "tiny", "--batch-size", "20", "--attack", "none", "--warmup-epochs", "0", "--no-progress"]
TRAIN = ["--from-scratch", "--batch-size", "8", "--epochs", "1", "--decay-epochs", "1", "--no-progress"]


def _cli(*args):
    return [sys.executable, "-m", "fastlpips"] + [str(a) for a in args]


def _run(*args, **kw):
    return subprocess.run(_cli(*args), capture_output=True, text=True, env=_ENV, timeout=900, **kw)


def _main(*args):
    """The CLI in this process (no interpreter start-up: for the checks that need no real process)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([str(a) for a in args])
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def _kill_hook(suffix: str, nth: int = 0) -> str:
    """A script running the CLI that kills itself (SIGKILL) right after the ``nth`` (0-based) file
    ending in ``suffix`` is renamed into place: the moment before anything written after it."""
    return f"""
import os, signal, sys
real = os.replace
seen = [0]
def replace(src, dst):
    real(src, dst)
    if str(dst).endswith({suffix!r}):
        if seen[0] == {nth}:
            os.kill(os.getpid(), signal.SIGKILL)
        seen[0] += 1
os.replace = replace
from fastlpips import cli
sys.exit(cli.main(sys.argv[1:]))
"""


_KILL_AFTER_CHECKPOINT = _kill_hook("checkpoint.pt")


def _one_error_line(proc, *needles):
    """Exit code 1, stderr one 'fastlpips: error:' line holding every needle, no traceback."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "\x1b[" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in lines if line.startswith("fastlpips: error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    for n in needles:
        assert str(n) in errors[0], (n, errors[0])
    return errors[0]


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability-example")
    make_example_folder(root, train_per_class=8, val_per_class=4, seed=0)
    return root


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    require("skimage")
    return bapps.make_synthetic_bapps(tmp_path_factory.mktemp("reliability-bapps"), train=16, val=4, jnd=0, seed=3)


@pytest.fixture(scope="module")
def pat_run(example, tmp_path_factory):
    """A finished pat-train folder (tiny net, clean, 1 epoch)."""
    out = tmp_path_factory.mktemp("pat-run") / "run"
    proc = _main("pat-train", example / "train", *PAT, "--epochs", "1", "--out-dir", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _snapshot(folder: Path):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _corrupt_copy(src: Path, dst: Path, rename: bool = False) -> Path:
    """A copy of an image folder (classes renamed with rename) holding one file that is no image."""
    shutil.copytree(src, dst)
    if rename:
        for d in sorted(dst.iterdir()):
            d.rename(d.with_name("new-" + d.name))
    victim = sorted(p for p in dst.rglob("*.png"))[3]
    victim.write_bytes(b"\x89PNG\r\n\x1a\nthis is not image data")
    return victim


# -- 1 and 4: run folders --------------------------------------------------------------------------
@pytest.mark.slow
def test_failed_pat_train_leaves_the_old_run_whole(example, pat_run, tmp_path):
    """A second pat-train into a finished folder, on other classes and a corrupt image: refused
    without --overwrite (nothing touched); with --overwrite it fails on the image before its first
    checkpoint, and the old run is still whole: robust-eval scores it on its own classes."""
    before = _snapshot(pat_run)
    other = tmp_path / "other"
    _corrupt_copy(example / "train", other, rename=True)
    proc = _main("pat-train", other, *PAT, "--epochs", "1", "--out-dir", pat_run)
    _one_error_line(proc, str(pat_run), "already holds a run", "--resume", "--overwrite")
    assert _snapshot(pat_run) == before
    proc = _main("pat-train", other, *PAT, "--epochs", "1", "--out-dir", pat_run, "--overwrite")
    assert proc.returncode == 1 and "not an image file" in proc.stderr, proc.stderr[-2000:]
    assert _snapshot(pat_run) == before
    meta = json.loads((pat_run / "model.json").read_text())
    assert not any(c.startswith("new-") for c in meta["classes"])
    proc = _main("robust-eval", example / "val", "--model-dir", pat_run, "--attack", "linf", "--iterations", "1",
                "--format", "json", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.subprocess
def test_robust_eval_refuses_weights_of_another_run(example, pat_run, tmp_path):
    """model.json records model.pt's sha256: weights from another run beside it are refused."""
    mixed = tmp_path / "mixed"
    shutil.copytree(pat_run, mixed)
    other = tmp_path / "other"
    proc = _main("pat-train", example / "train", *PAT, "--epochs", "1", "--seed", "5", "--out-dir", other)
    assert proc.returncode == 0, proc.stderr[-2000:]
    shutil.copy(other / "model.pt", mixed / "model.pt")
    proc = _main("robust-eval", example / "val", "--model-dir", mixed, "--attack", "linf", "--no-progress")
    _one_error_line(proc, str(mixed / "model.pt"), "is not the model", "model.json")


@pytest.mark.slow
def test_finished_out_dir_is_refused_and_overwrite_starts_clean(synth, tmp_path):
    out = tmp_path / "train"
    proc = _main("train", *synth["2afc/train"], *TRAIN, "--out-dir", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    before = _snapshot(out)
    proc = _main("train", *synth["2afc/train"], *TRAIN, "--out-dir", out)
    _one_error_line(proc, str(out), "already holds a run", "--resume", "--overwrite")
    assert _snapshot(out) == before
    proc = _main("train", *synth["2afc/train"], *TRAIN, "--lr", "2e-4", "--out-dir", out, "--overwrite")
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = (out / "log.csv").read_text().splitlines()
    assert log[0] == "epoch,lr,loss,acc" and [r.split(",")[0] for r in log[1:]] == ["1", "2"]
    assert log[1].split(",")[1] == "0.0002"  # the new run's rows only
    assert torch.load(out / "checkpoint.pt", weights_only=True)["config"]["lr"] == 2e-4


def test_pat_overwrite_starts_a_clean_log(example, pat_run, tmp_path):
    out = tmp_path / "pat"
    shutil.copytree(pat_run, out)
    proc = _main("pat-train", example / "train", *PAT, "--epochs", "2", "--out-dir", out, "--overwrite")
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = (out / "log.csv").read_text().splitlines()
    assert log[0].startswith("epoch,lr,loss") and [r.split(",")[0] for r in log[1:]] == ["1", "2"]


# -- 3: a kill just after a checkpoint ---------------------------------------------------------------
@pytest.mark.subprocess
@pytest.mark.parametrize("command", ["train", "pat-train"])
def test_kill_just_after_a_checkpoint_loses_no_log_row(command, synth, example, tmp_path):
    """SIGKILL right after the first checkpoint.pt is renamed into place (before anything written
    after it); --resume then ends with the log.csv of an uninterrupted run, row for row."""
    if command == "train":
        args = ["train", *synth["2afc/train"], *TRAIN]
    else:
        args = ["pat-train", example / "train", *PAT, "--epochs", "2"]
    full = _run(*args, "--out-dir", tmp_path / "full")
    assert full.returncode == 0, full.stderr[-2000:]
    killed = subprocess.run([sys.executable, "-c", _KILL_AFTER_CHECKPOINT] + [str(a) for a in args]
                            + ["--out-dir", str(tmp_path / "killed")], capture_output=True, text=True, env=_ENV,
                            timeout=900)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)["epoch"] == 1
    resumed = _run(*args, "--out-dir", tmp_path / "killed", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    want = (tmp_path / "full" / "log.csv").read_text()
    assert (tmp_path / "killed" / "log.csv").read_text() == want
    assert len(want.splitlines()) == 3
    if command == "train":  # the command's own table: both epochs
        assert resumed.stdout.count("\n") == full.stdout.count("\n")


@pytest.mark.subprocess
def test_kill_between_weights_and_description(example, tmp_path):
    """SIGKILL right after the second model.pt is in place, before its model.json: robust-eval
    refuses the folder (weights of epoch 2, description of epoch 1) instead of scoring a mix, and
    --resume repairs it."""
    args = ["pat-train", example / "train", *PAT, "--epochs", "3"]
    hook = _kill_hook("model.pt", nth=1)
    out = tmp_path / "run"
    killed = subprocess.run([sys.executable, "-c", hook] + [str(a) for a in args] + ["--out-dir", str(out)],
                            capture_output=True, text=True, env=_ENV, timeout=900)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 2
    proc = _main("robust-eval", example / "val", "--model-dir", out, "--attack", "linf", "--iterations", "1")
    _one_error_line(proc, "is not the model", "model.json")
    proc = _main(*args, "--out-dir", out, "--resume")
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = _main("robust-eval", example / "val", "--model-dir", out, "--attack", "linf", "--iterations", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.slow
def test_stop_after_steps_before_the_first_epoch_ends(example, tmp_path):
    out = tmp_path / "run"
    proc = _main("pat-train", example / "train", *PAT, "--epochs", "2", "--stop-after-steps", "1", "--out-dir", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not (out / "log.csv").exists()  # no epoch finished: no log yet
    proc = _main("pat-train", example / "train", *PAT, "--epochs", "2", "--out-dir", out, "--resume")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len((out / "log.csv").read_text().splitlines()) == 3


def test_numpy_numbers_in_a_config_resume(synth, tmp_path):
    from fastlpips.training import TrainConfig, train_lpips

    cfg = TrainConfig(lr=np.float64(1e-4), epochs=1, decay_epochs=1, batch_size=8, from_scratch=True)
    train_lpips(synth["2afc/train"], tmp_path, cfg, stop_after=1, progress=False)
    train_lpips(synth["2afc/train"], tmp_path, cfg, resume=True, progress=False)
    assert len((tmp_path / "log.csv").read_text().splitlines()) == 3
    torch.save({"lr": np.float64(0.1), "steps": np.int64(3)}, tmp_path / "np.pt")  # an older checkpoint's numbers
    from fastlpips.nets.weights import load_torch_file

    assert load_torch_file(tmp_path / "np.pt") == {"lr": 0.1, "steps": 3}


@pytest.mark.slow
def test_api_resume_keeps_the_cli_description(example, pat_run, tmp_path):
    from fastlpips.imagefolder import ImageFolder
    from fastlpips.nets.classifiers import build_classifier
    from fastlpips.pat import PATConfig, read_model_folder, train_pat

    out = tmp_path / "run"
    proc = _main("pat-train", example / "train", *PAT, "--epochs", "2", "--stop-after-steps", "2", "--out-dir", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    meta = torch.load(out / "checkpoint.pt", weights_only=True)["metadata"]
    cfg = PATConfig(**{k: v for k, v in torch.load(out / "checkpoint.pt", weights_only=True)["config"].items()})
    torch.manual_seed(0)
    train_pat(build_classifier("tiny", 5, "batch"), ImageFolder(example / "train"), out, cfg, resume=True,
              progress=False)
    got, _ = read_model_folder(out)
    assert {k: v for k, v in got.items() if k != "weights_sha256"} == meta


def test_worker_exceptions_keep_their_type_and_traceback(tmp_path):
    from fastlpips.utils import CheckedDataLoader

    class Odd(torch.utils.data.Dataset):
        paths = ["a", "b"]

        def __len__(self):
            return 4

        def __getitem__(self, i):
            if i == 2:
                raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, f"item {i} is not text")
            return torch.zeros(2)

    for workers in (0, 1):
        loader = CheckedDataLoader(Odd(), batch_size=1, num_workers=workers)
        assert loader.dataset.paths == ["a", "b"]
        with pytest.raises(UnicodeDecodeError, match="item 2 is not text") as e:
            list(loader)
        if workers:
            assert any("DataLoader worker" in n for n in getattr(e.value, "__notes__", []))


@pytest.mark.slow
def test_a_file_system_without_locks_warns_and_evaluates(tmp_path, monkeypatch, caplog):
    import errno
    import fcntl

    from fastlpips.evaluation import evaluate

    ref, out = _eval_folders(tmp_path)

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with caplog.at_level("WARNING"):
        r = evaluate(ref, [out], ["psnr"], tmp_path / "res", report=False)
    assert r.computed == 1 and len(r.rows) == 3 and "cannot lock" in caplog.text


# -- 5: 16-bit colour PNGs ---------------------------------------------------------------------------
def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else (b if pb <= pc else c)


def _filter_rows(raw: np.ndarray, bpp: int, kinds) -> bytes:
    """PNG filtering (the specification's five filters, byte by byte), filter kinds[y % len] per row."""
    out, prev = [], [0] * raw.shape[1]
    for y, row in enumerate(raw.astype(int).tolist()):
        k = kinds[y % len(kinds)]
        line = [k]
        for x, v in enumerate(row):
            a = row[x - bpp] if x >= bpp else 0
            b, c = prev[x], (prev[x - bpp] if x >= bpp else 0)
            pred = (0, a, b, (a + b) // 2, _paeth(a, b, c))[k]
            line.append((v - pred) % 256)
        out.append(bytes(line))
        prev = row
    return b"".join(out)


def write_png16(path: Path, arr: np.ndarray, kinds=(0, 1, 2, 3, 4), interlace=False, extra=b""):
    """A 16-bit PNG of an (H, W, C) uint16 array (C = 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA), written
    here from the specification (PIL cannot write 16-bit colour PNGs)."""
    h, w, c = arr.shape
    ctype = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    bpp = 2 * c
    if interlace:
        passes = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
        data = b""
        for x0, y0, dx, dy in passes:
            sub = arr[y0::dy, x0::dx]
            if sub.size:
                data += _filter_rows(sub.astype(">u2").view(np.uint8).reshape(sub.shape[0], -1), bpp, kinds)
    else:
        data = _filter_rows(arr.astype(">u2").view(np.uint8).reshape(h, -1), bpp, kinds)
    png = (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, ctype, 0, 0, int(interlace)))
           + extra + _chunk(b"IDAT", zlib.compress(data)) + _chunk(b"IEND", b""))
    path.write_bytes(png)
    return path


@pytest.mark.parametrize("channels,kinds,interlace", [(3, (0, 1, 2, 3, 4), False), (3, (1, 2, 0), False),
                                                       (3, (4, 3), True), (4, (3, 4, 1), False), (2, (2, 4), True)])
def test_16_bit_colour_png_is_read_at_full_precision(tmp_path, channels, kinds, interlace):
    rng = np.random.default_rng(channels)
    arr = rng.integers(0, 65536, (13, 19, channels)).astype(np.uint16)
    if channels in (2, 4):
        arr[..., -1] = 65535  # opaque: no alpha warning
    got = read_image(write_png16(tmp_path / "a.png", arr, kinds, interlace))
    want = arr[..., :3] if channels >= 3 else np.repeat(arr[..., :1], 3, axis=2)
    np.testing.assert_allclose(got, want / 65535, rtol=0, atol=1e-7)


def test_16_bit_rgb_png_psnr_equals_the_grey_case(tmp_path):
    """ref x 257 and ref x 257 + 128 differ by 128/65535 everywhere: 20 log10(65535 / 128) dB, in
    grey (which PIL reads right) and in RGB (which PIL reads at 8 bits: 48.71 dB)."""
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 255, (32, 32, 3)).astype(np.uint16)  # 254 * 257 + 128 < 65536
    grey = ref[..., :1]
    psnr = {}
    for name, a in (("rgb", ref), ("grey", grey)):
        x = read_image(write_png16(tmp_path / f"{name}0.png", a * 257))
        y = read_image(write_png16(tmp_path / f"{name}1.png", a * 257 + 128))
        psnr[name] = float(iqa.psnr(torch.from_numpy(y).permute(2, 0, 1)[None].double(),
                                    torch.from_numpy(x).permute(2, 0, 1)[None].double()))
    assert psnr["grey"] == pytest.approx(20 * np.log10(65535 / 128), abs=1e-4)
    assert psnr["rgb"] == pytest.approx(psnr["grey"], abs=1e-6)


def test_16_bit_png_alpha_exif_and_damage(tmp_path):
    arr = np.random.default_rng(1).integers(0, 65536, (6, 9, 4)).astype(np.uint16)
    arr[0, 0, 3] = 0
    with pytest.warns(UserWarning, match="transparent pixels"):
        read_image(write_png16(tmp_path / "alpha.png", arr))
    rgb = arr[..., :3]
    key = _chunk(b"tRNS", rgb[1, 1].astype(">u2").tobytes())
    with pytest.warns(UserWarning, match="transparent pixels"):
        read_image(write_png16(tmp_path / "key.png", rgb, extra=key))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise, as PIL's exif_transpose turns it
    eight = Image.fromarray((rgb >> 8).astype(np.uint8))
    eight.save(tmp_path / "eight.png", exif=exif.tobytes())
    tiff = exif.tobytes()
    tiff = tiff[6:] if tiff.startswith(b"Exif\x00\x00") else tiff  # a PNG's eXIf chunk holds the TIFF part
    turned = read_image(write_png16(tmp_path / "turned.png", (rgb >> 8) * 257, extra=_chunk(b"eXIf", tiff)))
    np.testing.assert_allclose(turned, read_image(tmp_path / "eight.png"), rtol=0, atol=1e-7)
    assert turned.shape == (9, 6, 3)
    data = bytearray((tmp_path / "alpha.png").read_bytes())
    data[-20] ^= 0xFF  # inside IDAT: the chunk's CRC no longer matches
    (tmp_path / "bad.png").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"bad\.png: cannot decode"):
        read_image(tmp_path / "bad.png")


def test_deep_colour_tiff_and_ppm_are_refused_not_truncated(tmp_path):
    arr = np.random.default_rng(2).integers(0, 65536, (4, 5, 3)).astype(np.uint16)
    (tmp_path / "a.ppm").write_bytes(b"P6 5 4 65535\n" + arr.astype(">u2").tobytes())
    with pytest.raises(ValueError, match=r"a\.ppm: a colour PPM image of 16 bits per sample"):
        read_image(tmp_path / "a.ppm")
    tifffile = require("tifffile")
    tifffile.imwrite(tmp_path / "a.tif", arr, photometric="rgb")
    with pytest.raises(ValueError, match=r"a\.tif: a colour TIFF image of 16 bits per sample"):
        read_image(tmp_path / "a.tif")


# -- 6 and 8: files the package reads ----------------------------------------------------------------
class _Creates:
    """Unpickling this creates ``path`` (what a crafted checkpoint could do: run any code)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _crafted(path: Path, target: Path, wrap=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    obj = {"payload": _Creates(target)}
    torch.save(wrap(obj) if wrap else obj, path)
    return path


def test_a_crafted_pickle_runs_no_code_anywhere(synth, example, pat_run, tmp_path):
    """Offered as every file a command reads, a pickle whose loading would create a file: no file
    is created, one error line names the file."""
    target = tmp_path / "created-by-unpickling"
    evil = _crafted(tmp_path / "evil.pth", target)
    cases = {
        "train --init": ["train", *synth["2afc/train"], *TRAIN, "--out-dir", tmp_path / "t1", "--init", evil],
        "pat-train --init": ["pat-train", example / "train", *PAT, "--epochs", "1", "--out-dir", tmp_path / "p1",
                             "--init", evil],
        "score-2afc --model-path": ["score-2afc", synth["2afc/val"][0], "--model-path", evil, "--no-progress"],
        "robust-2afc --model-path": ["robust-2afc", synth["2afc/val"][0], "--model-path", evil, "--steps", "1"],
    }
    run_t = tmp_path / "t2"
    _crafted(run_t / "checkpoint.pt", target)
    cases["train --resume"] = ["train", *synth["2afc/train"], *TRAIN, "--out-dir", run_t, "--resume"]
    run_p = tmp_path / "p2"
    shutil.copytree(pat_run, run_p)
    _crafted(run_p / "checkpoint.pt", target)
    cases["pat-train --resume"] = ["pat-train", example / "train", *PAT, "--epochs", "1", "--out-dir", run_p,
                                   "--resume"]
    model_dir = tmp_path / "m"
    shutil.copytree(pat_run, model_dir)
    _crafted(model_dir / "model.pt", target)
    meta = json.loads((model_dir / "model.json").read_text())
    import hashlib

    meta["weights_sha256"] = hashlib.sha256((model_dir / "model.pt").read_bytes()).hexdigest()
    (model_dir / "model.json").write_text(json.dumps(meta))
    cases["robust-eval model.pt"] = ["robust-eval", example / "val", "--model-dir", model_dir, "--attack", "linf"]
    for what, args in cases.items():
        proc = _main(*args)
        named = {"train --resume": run_t / "checkpoint.pt", "pat-train --resume": run_p / "checkpoint.pt",
                 "robust-eval model.pt": model_dir / "model.pt"}.get(what, evil)
        _one_error_line(proc, str(named), "pickled code")
        assert not target.exists(), what
    # evaluate with an R-LPIPS checkpoint: a per-file error naming it, the run goes on
    ref, out = tmp_path / "ref", tmp_path / "out"
    for d in (ref, out):
        d.mkdir()
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(d / "a.png")
    proc = _main("evaluate", ref, out, "--metrics", f"psnr,rlpips={evil}", "--results", tmp_path / "res", "--no-report")
    assert proc.returncode == 1 and str(evil) in proc.stderr and "pickled code" in proc.stderr
    assert not target.exists()


def test_bad_files_give_one_line_naming_them(example, pat_run, synth, tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 256, dtype=np.uint8).tobytes())
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    # --init: random bytes, a state dict of another model
    proc = _main("pat-train", example / "train", *PAT, "--epochs", "1", "--out-dir", tmp_path / "a", "--init", junk)
    _one_error_line(proc, str(junk), "not a torch checkpoint")
    proc = _main("pat-train", example / "train", *PAT, "--epochs", "1", "--out-dir", tmp_path / "a", "--init", foreign)
    _one_error_line(proc, str(foreign), "does not fit")
    # checkpoint.pt: random bytes, a torch file of something else
    for bad, needle in ((junk, "not a torch checkpoint"), (foreign, "is not a fastlpips PAT checkpoint")):
        d = tmp_path / f"ck-{bad.stem}"
        shutil.copytree(pat_run, d)
        shutil.copy(bad, d / "checkpoint.pt")
        proc = _main("pat-train", example / "train", *PAT, "--epochs", "1", "--out-dir", d, "--resume")
        _one_error_line(proc, str(d / "checkpoint.pt"), needle)
    d = tmp_path / "ck-train"
    d.mkdir()
    shutil.copy(foreign, d / "checkpoint.pt")
    proc = _main("train", *synth["2afc/train"], *TRAIN, "--out-dir", d, "--resume")
    _one_error_line(proc, str(d / "checkpoint.pt"), "is not a fastlpips LPIPS training checkpoint")
    # model.json: not JSON, wrong types, an unknown architecture, missing keys
    meta = json.loads((pat_run / "model.json").read_text())
    for name, text, needle in (("notjson", "{arch: tiny", "is not valid JSON"),
                               ("list", "[1, 2]", "holds a JSON list"),
                               ("arch", json.dumps(dict(meta, arch="vit")), "arch must be one of tiny, resnet18"),
                               ("classes", json.dumps(dict(meta, classes="cat")), "classes must be a list"),
                               ("missing", json.dumps({k: v for k, v in meta.items() if k != "norm"}), "lacks 'norm'")):
        d = tmp_path / f"meta-{name}"
        shutil.copytree(pat_run, d)
        (d / "model.json").write_text(text)
        proc = _main("robust-eval", example / "val", "--model-dir", d, "--attack", "linf")
        _one_error_line(proc, "model.json", needle)
    # model.pt: random bytes (recorded as such in model.json)
    d = tmp_path / "junk-model"
    shutil.copytree(pat_run, d)
    shutil.copy(junk, d / "model.pt")
    import hashlib

    (d / "model.json").write_text(json.dumps(dict(meta, weights_sha256=hashlib.sha256(junk.read_bytes()).hexdigest())))
    proc = _main("robust-eval", example / "val", "--model-dir", d, "--attack", "linf")
    _one_error_line(proc, str(d / "model.pt"), "not a torch checkpoint")


# -- 7: worker processes -----------------------------------------------------------------------------
@pytest.mark.slow
def test_worker_errors_are_the_in_process_error(example, synth, tmp_path):
    data = tmp_path / "data"
    victim = _corrupt_copy(example / "train", data)
    errors = []
    for workers in ("0", "1"):
        proc = _main("pat-train", data, *PAT, "--epochs", "1", "--out-dir", tmp_path / f"p{workers}", "--workers",
                    workers)
        errors.append(_one_error_line(proc, str(victim), "not an image file"))
    assert errors[0] == errors[1]
    bad = tmp_path / "bapps"
    shutil.copytree(synth["2afc/train"][0], bad)
    victim = sorted((bad / "p0").iterdir())[2]
    victim.write_bytes(b"not an image")
    errors = []
    for workers in ("0", "2"):
        proc = _main("train", bad, *TRAIN, "--out-dir", tmp_path / f"t{workers}", "--workers", workers)
        errors.append(_one_error_line(proc, str(victim)))
    assert errors[0] == errors[1]


# -- 9 and 10 -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_per_example_output_is_checked_before_the_evaluation(example, pat_run, tmp_path):
    missing = tmp_path / "no-such-folder" / "r.json"
    proc = _main("robust-eval", example / "val", "--model-dir", pat_run, "--attack", "linf", "--per-example", missing)
    _one_error_line(proc, "--per-example", "does not exist")
    assert proc.stdout == ""  # refused before any work


def test_resume_on_other_data_is_refused_unless_allowed(synth, tmp_path):
    out = tmp_path / "run"
    proc = _main("train", *synth["2afc/train"], *TRAIN, "--out-dir", out, "--stop-after", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    other = synth["2afc/val"]
    proc = _main("train", *other, *TRAIN, "--out-dir", out, "--resume")
    _one_error_line(proc, "was trained on", "--allow-other-data")
    proc = _main("train", *other, *TRAIN, "--out-dir", out, "--resume", "--allow-other-data")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert torch.load(out / "checkpoint.pt", weights_only=True)["data"]["roots"] == [str(Path(r).resolve())
                                                                                      for r in other]


def _eval_folders(root: Path, n=3, size=32):
    rng = np.random.default_rng(0)
    for d in ("ref", "out"):
        (root / d).mkdir(parents=True)
    for k in range(n):
        a = rng.integers(0, 256, (size, size, 3)).astype(np.uint8)
        Image.fromarray(a).save(root / "ref" / f"{k}.png")
        Image.fromarray(np.clip(a + rng.integers(-20, 20, a.shape), 0,
                                255).astype(np.uint8)).save(root / "out" / f"{k}.png")
    return root / "ref", root / "out"


def test_evaluate_recomputes_changed_files(tmp_path):
    from fastlpips.evaluation import evaluate

    ref, out = _eval_folders(tmp_path)
    res = tmp_path / "res"
    first = evaluate(ref, [out], ["psnr"], res, report=False, batch_size=1)
    assert first.computed == 3
    again = evaluate(ref, [out], ["psnr"], res, report=False, batch_size=1)
    assert again.computed == 0 and [r["psnr"] for r in again.rows] == [r["psnr"] for r in first.rows]
    a = np.asarray(Image.open(ref / "1.png"))
    Image.fromarray(a).save(out / "1.png")  # the output of image 1 now equals its reference
    changed = evaluate(ref, [out], ["psnr"], res, report=False, batch_size=1)
    assert changed.computed == 1
    assert [r["psnr"] for r in changed.rows][1] == float("inf")
    assert [r["psnr"] for r in changed.rows][0] == [r["psnr"] for r in first.rows][0]
    Image.fromarray(255 - a).save(ref / "1.png")  # a changed reference
    assert evaluate(ref, [out], ["psnr"], res, report=False, batch_size=1).computed == 1


@pytest.mark.subprocess
def test_one_evaluate_run_per_results_folder(tmp_path):
    """While one run holds the results folder, another is refused at once (and computes nothing)."""
    ref, out = _eval_folders(tmp_path)
    res = tmp_path / "res"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time\n"
        "from fastlpips.evaluation import evaluate\n"
        "import fastlpips.evaluation.run as E\n"
        "real = E._evaluate\n"
        "def slow(*a, **k):\n"
        "    print('holding', flush=True); time.sleep(60); return real(*a, **k)\n"
        "E._evaluate = slow\n"
        f"evaluate({str(ref)!r}, [{str(out)!r}], ['psnr'], {str(res)!r}, report=False)\n")],
        stdout=subprocess.PIPE, text=True, env=_ENV)
    try:
        assert holder.stdout.readline().strip() == "holding"
        proc = _main("evaluate", ref, out, "--metrics", "psnr", "--results", res, "--no-report")
        _one_error_line(proc, str(res), "is in use by another evaluate run", f"process {holder.pid}")
        assert not (res / "records" / "rank-0.jsonl").exists() or not (res / "records" / "rank-0.jsonl").read_text()
    finally:
        holder.kill()
        holder.wait()
    proc = _main("evaluate", ref, out, "--metrics", "psnr", "--results", res, "--no-report")
    assert proc.returncode == 0, proc.stderr[-2000:]  # the lock went with the killed process


def test_a_failed_picture_is_named(tmp_path, capsys, monkeypatch):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(a)
    Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(b)
    real = Image.Image.save

    def no_gif(self, fp, format=None, **kw):
        if format == "GIF":
            raise OSError(28, "No space left on device")
        return real(self, fp, format=format, **kw)

    monkeypatch.setattr(Image.Image, "save", no_gif)
    gif = tmp_path / "chain.gif"
    code = cli.main(["geodesic", str(a), str(b), "--distance", "euclidean", "--steps", "2", "--frames", "2",
                     "--save", str(tmp_path / "chain.png"), "--gif", str(gif)])
    err = capsys.readouterr().err
    assert code == 1
    assert f"the animation --gif {gif} could not be written" in err and "No space left" in err
    assert "heat map" not in err and (tmp_path / "chain.png").exists() and not gif.exists()
