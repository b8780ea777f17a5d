"""Image helpers with the names and semantics of the ``lpips`` package (0.1.4)."""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import struct
import tempfile
import warnings
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Optional, Sized, Union, cast

import numpy as np
import torch
from numpy.typing import DTypeLike

from .reference import normalize_channels, spatial_average, upsample

__all__ = ["im2tensor", "tensor2im", "load_image", "read_image", "read_image_tensor", "normalize_tensor",
           "takes_channels_last", "spatial_average", "upsample",
           "l2", "psnr"]

if TYPE_CHECKING:
    from PIL import Image

PathLike = Union[str, os.PathLike]  # a file name: str or pathlib.Path

IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm"})  # what folder commands read


def reduce_batch(values: torch.Tensor, reduction: Optional[str]) -> torch.Tensor:
    """Per-image values (N,) reduced over the batch: 'mean', 'sum', or 'none' / None (as they are)."""
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    return values


def channels_last(t: torch.Tensor) -> torch.Tensor:
    """A 4-D batch in channels_last memory format (the convolutions' fast layout on CPU: 1.5-3x
    for the small convolutions of 32x32 classifiers here); anything else, and tensors inside vmap
    (torch.func.jacfwd), which cannot change layout, as is. Values are unchanged."""
    if t.dim() != 4:
        return t
    try:
        return t.contiguous(memory_format=torch.channels_last)
    except RuntimeError:
        return t


def takes_channels_last(net: torch.nn.Module, x: torch.Tensor) -> bool:
    """Whether ``net`` runs on a channels_last batch (one image, eval mode, no graph); models that
    ``.view`` a feature map flat cannot, and run (train, are attacked) in the layout they are given."""
    was = net.training
    net.eval()
    try:
        with torch.no_grad():
            net(channels_last(x[:1]))
        return True
    except RuntimeError as e:
        logging.getLogger(__name__).info("running in the input's memory layout: the model fails on channels_last "
                                         "batches (%s)", str(e).splitlines()[0] if str(e) else type(e).__name__)
        return False
    finally:
        net.train(was)


def normalize_tensor(in_feat: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Channel-normalize features: ``f / (sqrt(sum_c f^2) + eps)`` (finite gradient at f = 0)."""
    return normalize_channels(in_feat, eps)


def im2tensor(image: np.ndarray, imtype: DTypeLike = np.uint8, cent: float = 1.0,
              factor: float = 255.0 / 2.0) -> torch.Tensor:
    """H x W x 3 array (0..255) -> 1 x 3 x H x W float32 tensor in [-1, 1]."""
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"im2tensor expects an H x W x C image, got shape {image.shape}")
    return torch.from_numpy(np.ascontiguousarray((image / factor - cent).transpose(2, 0, 1)[None]).astype(np.float32))


def tensor2im(image_tensor: torch.Tensor, imtype: DTypeLike = np.uint8, cent: float = 1.0,
              factor: float = 255.0 / 2.0) -> np.ndarray:
    """First image of an N x 3 x H x W tensor in [-1, 1] -> H x W x 3 array (0..255, ``imtype``)."""
    image_numpy = image_tensor[0].detach().cpu().float().numpy()
    image_numpy = (np.transpose(image_numpy, (1, 2, 0)) + cent) * factor
    return image_numpy.astype(imtype)


# --- image files -------------------------------------------------------------------------------

# 8-bit modes: PIL's own ``convert`` gives the RGB bytes, which are returned unchanged by ``load_image``
# (bit-identical to ``np.asarray(Image.open(p).convert("RGB"))``) and divided by 255 by ``read_image``.
_EIGHT_BIT_MODES = ("1", "L", "P", "RGB", "RGBX", "RGBA", "LA", "PA", "RGBa", "La",
                    "CMYK", "YCbCr", "LAB", "HSV")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_TIFF_BITS_PER_SAMPLE = 258
_TIFF_SAMPLE_FORMAT = 339


def _tiff_tag(im, tag):
    """First value of a TIFF tag (``im.tag_v2``), or None when the file is no TIFF or lacks the tag."""
    tags = getattr(im, "tag_v2", None)
    if tags is None or tag not in tags:
        return None
    value = tags[tag]
    if isinstance(value, (tuple, list)):
        if not value or any(v != value[0] for v in value):
            return None  # per-sample values that differ: not a layout read here
        value = value[0]
    return int(value)


def _integer_scale(im: "Image.Image", path: str) -> tuple[float, bool, bool]:
    """Full-scale value of an integer image's samples from the file format (never from the pixels).

    Returns ``(scale, signed, unsigned32)``: samples are divided by ``scale``; ``signed`` says negative
    values are possible (and refused); ``unsigned32`` says PIL's int32 holds uint32 bits."""
    mode, fmt = im.mode, im.format
    bits = _tiff_tag(im, _TIFF_BITS_PER_SAMPLE) if fmt == "TIFF" else None
    if mode in _SIXTEEN_BIT_MODES:
        if bits is not None and 0 < bits < 16:  # e.g. 12-bit TIFF: PIL keeps 0..4095 in an I;16 image
            return float(2**bits - 1), False, False
        return 65535.0, False, False
    # mode "I" (PIL's 32-bit signed container): the depth is a property of the file
    if fmt == "PNG":  # PNG has no deeper grey than 16 bits (older Pillow opens it as "I")
        return 65535.0, False, False
    if fmt == "PPM":  # PIL rescales a PGM/PPM with maxval > 255 to 0..65535 in mode "I"
        return 65535.0, False, False
    if fmt == "TIFF" and bits in (8, 16, 32):
        sample_format = _tiff_tag(im, _TIFF_SAMPLE_FORMAT)
        sample_format = 1 if sample_format is None else sample_format
        if sample_format == 1:  # unsigned integer
            return float(2**bits - 1), False, bits == 32
        if sample_format == 2:  # two's complement signed integer
            return float(2 ** (bits - 1) - 1), True, False
    raise ValueError(f"{path}: cannot tell the bit depth of this {fmt or 'unknown-format'} image in PIL mode "
                     f"{mode!r} (BitsPerSample={bits}); convert it to an 8- or 16-bit PNG or TIFF")


def _alpha(im: "Image.Image") -> np.ndarray | None:
    """Alpha of an 8-bit image: its alpha band, or the one PIL derives from a colour key / palette
    transparency (``im.info['transparency']``); None when the image has none."""
    if im.mode in ("RGBA", "LA", "PA"):
        return np.asarray(im.getchannel("A"))
    if "transparency" in im.info and im.mode in ("1", "L", "P", "RGB"):
        try:
            return np.asarray(im.convert("RGBA").getchannel("A"))
        except (ValueError, OSError):  # a transparency entry PIL cannot apply: nothing to ignore
            return None
    return None


# 16-bit colour PNGs: PIL opens RGB / RGBA / grey+alpha PNGs of 16 bits per sample as 8-bit images
# (it drops the low byte), so they are decoded here from the PNG chunks (zlib and numpy): the
# filters of the PNG specification reconstructed along anti-diagonals (each pixel needs only its
# left, upper and upper-left neighbours), Adam7 interlacing, tRNS and eXIf.
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _png_header(path: PathLike) -> tuple | None:
    """(width, height, bit depth, colour type, interlace) of a PNG file, None for other files."""
    with open(path, "rb") as f:
        head = f.read(33)
    if len(head) < 33 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        return None
    w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", head[16:29])
    return w, h, depth, ctype, interlace


def _png_unfilter(rows: np.ndarray, bpp: int, path: PathLike, band: int = 1024) -> np.ndarray:
    """Reconstruct filtered scanlines ``rows`` (H, 1 + W * bpp) uint8 -> (H, W, bpp) uint8.

    None / Sub / Up rows alone: row by row, each row at once (Sub as a running sum). With Average or
    Paeth rows (each pixel needs its reconstructed left neighbour): bands of ``band`` rows, each
    skewed so that an anti-diagonal of the band (pixels whose left, upper and upper-left
    neighbours are all on the two diagonals before) is one contiguous slice."""
    h = rows.shape[0]
    w = (rows.shape[1] - 1) // bpp
    kinds = rows[:, 0].astype(np.int16)
    if kinds.size and int(kinds.max()) > 4:
        raise ValueError(f"{path}: corrupt PNG data (unknown filter type {int(kinds.max())})")
    f = rows[:, 1:].reshape(h, w, bpp)
    recon = np.empty((h, w, bpp), np.uint8)
    prev = np.zeros((w, bpp), np.int32)
    if not kinds.size or int(kinds.max()) <= 2:
        for y in range(h):
            fy = f[y].astype(np.int32)
            row = fy if kinds[y] == 0 else np.cumsum(fy, axis=0) if kinds[y] == 1 else fy + prev
            prev = row & 255
            recon[y] = prev
        return recon
    above = np.zeros((w, bpp), np.int16)  # the reconstructed row above the band
    for top in range(0, h, band):
        k = min(band, h - top)
        diag = k + w - 1
        ys, xs = np.meshgrid(np.arange(k, dtype=np.int32), np.arange(w, dtype=np.int32), indexing="ij")
        skew = np.zeros((diag, k, bpp), np.int16)  # skew[d, y] = f[top + y, d - y]
        skew[ys + xs, ys] = f[top:top + k]
        # out[d + 2, y + 1] = recon[top + y, d - y]; out[., 0] is the row above the band (its pixel
        # x = d - y + ... is stored at the diagonal it would have as row -1: d = x - 1); zeros elsewhere
        out = np.zeros((diag + 2, k + 1, bpp), np.int16)
        out[np.arange(w) + 1, 0] = above
        kk = kinds[top:top + k]
        for d in range(diag):
            y0, y1 = max(0, d - w + 1), min(k, d + 1)
            a = out[d + 1, y0 + 1:y1 + 1]  # left: (y, x - 1) is on diagonal d - 1
            b = out[d + 1, y0:y1]          # up: (y - 1, x) is on diagonal d - 1
            c = out[d, y0:y1]              # upper left: (y - 1, x - 1) is on diagonal d - 2
            t = kk[y0:y1, None]
            pred = np.where(t == 1, a, np.where(t == 2, b, np.where(t == 3, (a + b) >> 1, 0)))
            paeth = t == 4
            if paeth.any():
                p = a + b - c
                pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
                pred = np.where(paeth, np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c)), pred)
            out[d + 2, y0 + 1:y1 + 1] = (skew[d, y0:y1] + pred) & 255
        band_rows = out[ys + xs + 2, ys + 1].astype(np.uint8)  # (k, w, bpp)
        recon[top:top + k] = band_rows
        above = band_rows[-1].astype(np.int16)
    return recon


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation to an (H, W, C) array as PIL's ``ImageOps.exif_transpose`` does."""
    ops = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1),
           7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
           8: lambda a: np.rot90(a, 1)}
    return np.ascontiguousarray(ops[orientation](arr)) if orientation in ops else arr


def _decode_png16(path: PathLike, stacklevel: int) -> np.ndarray:
    """A 16-bit RGB, RGBA or grey+alpha PNG as H x W x 3 float32 in [0, 1] (``v / 65535``), alpha
    dropped with a warning when not opaque (also a tRNS colour key that some pixel matches)."""
    from PIL import Image

    with open(path, "rb") as f:
        data = f.read()
    pos, idat, trns, exif, header = 8, [], None, None, None
    while pos + 12 <= len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        crc = data[pos + 8 + length:pos + 12 + length]
        if len(body) < length or len(crc) < 4 or zlib.crc32(kind + body) != struct.unpack(">I", crc)[0]:
            raise ValueError(f"{path}: cannot decode the image data (PNG chunk {kind!r} is truncated or corrupt)")
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body[:13])
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"tRNS":
            trns = body
        elif kind == b"eXIf":
            exif = body
        elif kind == b"IEND":
            break
    if header is None or not idat:
        raise ValueError(f"{path}: cannot decode the image data (no IHDR or IDAT chunk)")
    w, h, depth, ctype, _, _, interlace = header
    channels = _PNG_CHANNELS[ctype]
    bpp = 2 * channels
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error as e:
        raise ValueError(f"{path}: cannot decode the image data ({e})") from None
    img = np.zeros((h, w, bpp), np.uint8)
    passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
    at = 0
    for x0, y0, dx, dy in passes:
        pw, ph = -(-(w - x0) // dx) if w > x0 else 0, -(-(h - y0) // dy) if h > y0 else 0
        if pw == 0 or ph == 0:
            continue
        n = ph * (1 + pw * bpp)
        if at + n > len(raw):
            raise ValueError(f"{path}: cannot decode the image data (the pixel data is truncated)")
        rows = np.frombuffer(raw, np.uint8, n, at).reshape(ph, 1 + pw * bpp)
        img[y0::dy, x0::dx] = _png_unfilter(rows, bpp, path)
        at += n
    samples = img.view(">u2").reshape(h, w, channels).astype(np.uint16)
    alpha = None
    if ctype in (4, 6):
        alpha = samples[:, :, -1]
    elif ctype == 2 and trns is not None and len(trns) >= 6:
        key = np.frombuffer(trns[:6], ">u2")
        alpha = np.where((samples == key).all(axis=2), 0, 65535)
    if alpha is not None and alpha.min() < 65535:
        warnings.warn(f"{path}: the image has transparent pixels; its alpha is ignored (the colour values are used "
                      "as they are, not composited onto a background)", UserWarning, stacklevel=stacklevel + 1)
    colour = samples[:, :, :3] if channels >= 3 else np.repeat(samples[:, :, :1], 3, axis=2)
    if exif is not None:
        info = Image.Exif()
        try:
            info.load(exif)
            colour = _orient(colour, int(info.get(0x0112, 1)))
        except Exception:  # unreadable EXIF: PIL ignores it too
            pass
    return (colour.astype(np.float64) / 65535.0).astype(np.float32)


def _ppm_maxval(path: PathLike) -> int:
    """The maximum sample value in a binary or ASCII PPM/PGM header (255 when unreadable)."""
    with open(path, "rb") as f:
        head = f.read(512)
    tokens = []
    for line in head.split(b"\n"):
        tokens += line.split(b"#", 1)[0].split()
        if len(tokens) >= 4:
            break
    try:
        return int(tokens[3])
    except (IndexError, ValueError):
        return 255


def _decode(path: PathLike, stacklevel: int) -> tuple[np.ndarray, bool]:
    """Read ``path`` as H x W x 3. Returns ``(array, exact8)``: with ``exact8`` the array is the file's
    uint8 RGB data (0..255), otherwise float32 in [0, 1]. ``stacklevel`` is that of the public caller's
    caller, for the alpha warning."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file {path} does not exist (or is not a file)")
    try:
        im_file = Image.open(path)
    except UnidentifiedImageError as e:
        raise ValueError(f"{path}: not an image file PIL can read ({e})") from e
    except OSError as e:  # e.g. a truncated header
        raise ValueError(f"{path}: cannot read the image file ({e})") from e
    with im_file as im:
        if im.format == "PNG":
            header = _png_header(path)
            if header is not None and header[2] == 16 and header[3] in (2, 4, 6):
                return _decode_png16(path, stacklevel), False  # PIL would keep 8 of the 16 bits
        deep = None
        if im.format == "TIFF" and im.mode in ("RGB", "RGBA", "RGBX", "CMYK", "LA", "YCbCr"):
            bits = getattr(im, "tag_v2", {}).get(_TIFF_BITS_PER_SAMPLE)
            bits = bits if isinstance(bits, (tuple, list)) else (bits,)
            deep = max((int(b) for b in bits if b is not None), default=8)
        elif im.format == "PPM" and im.mode == "RGB":
            deep = 16 if _ppm_maxval(path) > 255 else 8
        if deep is not None and deep > 8:
            raise ValueError(f"{path}: a colour {im.format} image of {deep} bits per sample, which PIL reads at 8 "
                             "bits: refused rather than read at lower precision; convert it to a 16-bit PNG")
        try:
            if im.tell() != 0:  # multi-frame files (GIF, APNG, TIFF pages): the first frame
                im.seek(0)
            mode = im.mode
            if mode not in _EIGHT_BIT_MODES + _SIXTEEN_BIT_MODES + ("I", "F"):
                raise ValueError(f"{path}: unsupported PIL image mode {mode!r}")
            # The depth comes from the file's format / TIFF tags, which the transposed copy has lost.
            scale = _integer_scale(im, path) if mode in _SIXTEEN_BIT_MODES + ("I",) else None
            im.load()
            # EXIF orientation, as OpenCV's imread (used by the lpips package) applies it by default.
            ImageOps.exif_transpose(im, in_place=True)  # no copy when there is nothing to turn
        except OSError as e:  # truncated or corrupt data
            raise ValueError(f"{path}: cannot decode the image data ({e})") from e

        if mode in _EIGHT_BIT_MODES:
            pic: Image.Image = im
            if mode == "RGBa":  # premultiplied alpha: PIL un-premultiplies when converting to RGBA
                pic = im.convert("RGBA")
            elif mode == "La":
                pic = im.convert("LA")
            alpha = _alpha(pic)
            if alpha is not None and alpha.min() < 255:
                warnings.warn(f"{path}: the image has transparent pixels; its alpha is ignored (the colour "
                              "values are used as they are, not composited onto a background)",
                              UserWarning, stacklevel=stacklevel)
            try:
                rgb = pic if pic.mode == "RGB" else pic.convert("RGB")
            except (ValueError, OSError) as e:  # e.g. a colour space PIL cannot convert
                raise ValueError(f"{path}: cannot convert PIL image mode {mode!r} to RGB ({e})") from e
            return np.array(rgb, dtype=np.uint8), True

        if mode == "F":
            grey = np.array(im, dtype=np.float32)
            finite = np.isfinite(grey)
            if not finite.all() or grey.min() < 0 or grey.max() > 1:
                seen = (f"min {grey[finite].min():g}, max {grey[finite].max():g}" if finite.any()
                        else "no finite values")
                extra = "" if finite.all() else f", {int((~finite).sum())} NaN/Inf values"
                raise ValueError(f"{path}: float image has values outside [0, 1] ({seen}{extra}); float "
                                 "images must hold finite values in [0, 1]")
        else:  # 16-bit modes and "I"
            assert scale is not None  # set above for every 16-bit mode and "I"
            full, signed, unsigned32 = scale
            grey = np.array(im)
            if unsigned32:
                grey = grey.view(np.uint32)  # PIL stores uint32 TIFF samples bit for bit in its int32
            if signed and grey.min() < 0:
                raise ValueError(f"{path}: signed integer image has negative values (min {int(grey.min())}); "
                                 "only values 0..max of the format are accepted")
            grey = (grey.astype(np.float64) / full).astype(np.float32)
        return np.repeat(grey[:, :, None], 3, axis=2), False


def read_image(path: PathLike) -> np.ndarray:
    """Read an image file as an H x W x 3 float32 RGB array in [0, 1], at the file's full precision.

    Samples are divided by the full-scale value of the file's sample format, never by the image's
    own content (a darker image stays darker). Per PIL mode of the (first) frame:

    * ``"1"``: 0 or 1; ``"L"``, ``"RGB"``, ``"RGBX"``: ``v / 255``; ``"P"`` (palette): palette colour / 255.
    * ``"RGBA"``, ``"LA"``, ``"PA"``: the colour / 255, alpha dropped; ``"RGBa"``, ``"La"`` (premultiplied)
      are un-premultiplied by PIL first. A warning (naming the file) says so when some alpha is below
      255, also for a colour-key / palette ``transparency`` entry.
    * ``"CMYK"``, ``"YCbCr"``, ``"LAB"``, ``"HSV"``: PIL's ``convert("RGB")`` / 255 (ValueError if PIL
      cannot convert).
    * ``"I;16"``, ``"I;16L"``, ``"I;16B"``, ``"I;16N"``: ``v / 65535``; a TIFF with fewer bits per sample
      (e.g. 12) uses ``v / (2**bits - 1)``.
    * ``"I"``: a PNG or PGM/PPM is 16-bit data, ``v / 65535``; a TIFF is read from its BitsPerSample and
      SampleFormat tags: unsigned ``v / (2**bits - 1)`` (16 bits: 65535, 32 bits: 4294967295), signed
      ``v / (2**(bits-1) - 1)`` (32 bits: 2147483647) with negative values refused. Any other
      file in mode ``"I"`` raises ValueError rather than guessing.
    * ``"F"`` (32-bit float): taken as it is; NaN/Inf or values outside [0, 1] raise ValueError.

    Grey is repeated into 3 channels; the EXIF orientation is applied (as OpenCV's ``imread`` does).
    Raises FileNotFoundError for a missing file and ValueError for an unreadable file or an
    unsupported mode, each naming the file.
    """
    arr, exact8 = _decode(path, stacklevel=3)
    if exact8:
        return arr.astype(np.float32) / np.float32(255)
    return arr


def read_image_tensor(path: PathLike) -> torch.Tensor:
    """``read_image(path)`` as a (3, H, W) float32 tensor in [0, 1] (contiguous)."""
    return torch.from_numpy(np.ascontiguousarray(read_image(path).transpose(2, 0, 1)))


def load_image(path: PathLike) -> np.ndarray:
    """Read an image file as an H x W x 3 uint8 RGB array (0..255), as the ``lpips`` package does.

    8-bit files (modes ``1``, ``L``, ``P``, ``RGB``, ``RGBA``, ``LA``, ``CMYK``, ...) give exactly
    ``np.asarray(Image.open(path).convert("RGB"))`` (alpha dropped, grey expanded). Deeper or float
    files give ``np.round(read_image(path) * 255)``: scaled by the format's range (see ``read_image``
    for the formula per mode), never by the image's own maximum.
    """
    arr, exact8 = _decode(path, stacklevel=3)
    if exact8:
        return arr
    return np.round(arr * np.float32(255)).astype(np.uint8)


def l2(p0: np.ndarray, p1: np.ndarray, range: float = 255.0) -> float:
    return float(0.5 * np.mean((p0 / range - p1 / range) ** 2))


def psnr(p0: np.ndarray, p1: np.ndarray, peak: float = 255.0) -> float:
    return 10 * np.log10(peak**2 / np.mean((1.0 * p0 - 1.0 * p1) ** 2))


def atomic_write(path: PathLike, write: Callable[[str], None]) -> None:
    """Write ``path`` through ``write(tmp_name)`` on a temporary file in the same folder, renamed
    over ``path`` only when ``write`` succeeded; the temporary file never survives a failure."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix or ".tmp")
    os.close(fd)
    try:
        write(tmp)
        if path.exists():
            mode = path.stat().st_mode & 0o7777
        else:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_save(obj: Any, path: PathLike) -> None:
    """``torch.save(obj, path)`` through ``atomic_write`` (the folder is created): a crash or an
    error leaves the previous file, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def file_sha256(path: PathLike) -> str:
    """The sha256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --- data loading ---------------------------------------------------------------------------------
class ItemFailure(NamedTuple):
    """An item a DataLoader worker could not load, handed to the main process: the exception (when
    it pickles), its type and message, and the worker's traceback."""

    kind: str
    message: str
    traceback: str
    exception: Optional[BaseException] = None


_FAILURE_TYPES = {t.__name__: t for t in (ValueError, FileNotFoundError, OSError, KeyError, TypeError, RuntimeError,
                                          IndexError, PermissionError, IsADirectoryError, NotADirectoryError)}


class ReportItemErrors(torch.utils.data.Dataset):
    """``dataset`` (its attributes reachable through this wrapper) whose failing items become
    ``ItemFailure`` values instead of exceptions: a DataLoader worker would wrap the exception in
    its own multi-line text; ``CheckedDataLoader`` re-raises the item's own exception instead."""

    def __init__(self, dataset: torch.utils.data.Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(cast(Sized, self.dataset))  # a map-style dataset (torch's Dataset type declares no __len__)

    def __getattr__(self, name):
        if name == "dataset":  # not set yet (unpickling in a worker)
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index):
        try:
            return self.dataset[index]
        except Exception as e:  # re-raised in the main process by CheckedDataLoader
            import pickle
            import traceback

            try:
                pickle.loads(pickle.dumps(e))
                exc: Optional[BaseException] = e
            except Exception:  # an exception that does not survive the trip: its type name and message
                exc = None
            return ItemFailure(type(e).__name__, str(e), traceback.format_exc(), exc)


def _collate_items(batch):
    """The DataLoader's default collation, or the batch's first ``ItemFailure``."""
    for item in batch:
        if isinstance(item, ItemFailure):
            return item
    return torch.utils.data.default_collate(batch)


def _raise_failures(batches):
    for batch in batches:
        if isinstance(batch, ItemFailure):
            exc = batch.exception
            if exc is None:
                exc = _FAILURE_TYPES.get(batch.kind, RuntimeError)(batch.message)
            if hasattr(exc, "add_note"):  # Python >= 3.11: --debug shows where the worker raised it
                exc.add_note(f"raised in a DataLoader worker process:\n{batch.traceback}")
            raise exc
        yield batch


class CheckedDataLoader(torch.utils.data.DataLoader):
    """A DataLoader (same arguments; default collation) whose failing items raise their own
    exception, with their own one-line message, whether read in worker processes or not (in this
    process, ``num_workers=0``, it is a plain DataLoader; with workers the exception comes back
    as it was raised, the worker's traceback attached as a note)."""

    def __init__(self, dataset: torch.utils.data.Dataset, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("collate_fn") is not None:
            raise ValueError("CheckedDataLoader collates with the default collation")
        self._wrapped = kwargs.get("num_workers", 0) > 0
        if self._wrapped:
            kwargs["collate_fn"] = _collate_items
            dataset = ReportItemErrors(dataset)
        super().__init__(dataset, *args, **kwargs)

    def __iter__(self):
        it = super().__iter__()
        return _raise_failures(it) if self._wrapped else it
