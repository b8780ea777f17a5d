"""Exact tiled passes of local feature stacks: a trunk's features of a large image computed tile by
tile, in memory bounded by a tile instead of the image, with the same numbers.

Every layer of the trunks (convolutions, ReLUs, max/average/L2 pooling, SqueezeNet's fire modules)
is local: output pixel ``o`` of a layer with window ``k``, stride ``s`` and padding ``p`` reads
the input pixels ``o*s - p .. o*s - p + k - 1`` along each axis, those outside the map being the
layer's padding (zeros for a convolution, -inf for a max pooling). So the features of a block of
output pixels are those of the block of input pixels this interval arithmetic gives, with the
padding applied only where the block touches the image's border: a tile's features equal the
whole image's, for any tile size (smaller than the receptive field included) and any image size
(not a multiple of the stride included).

A plan (``LocalStack.plan``) cuts every compared layer ("output", by its position in the stack:
0 is the input, ``i + 1`` the output of layer ``i``) into a grid of owned blocks, one per tile
(the input's tile boundaries divided by the layer's total stride), and walks the layers backwards
to find the block each layer must compute for the owned blocks after it (the bounding box of what
they read: the halo, from the layer list, never written per net). ``LocalStack.run`` computes one
tile and hands each owned block to ``emit`` as soon as it exists, so a metric reduces it (LPIPS'
head sums, DISTS' moments) before the next layer overwrites anything. ``run_tiles`` runs a tile
function over the plan, under ``torch.utils.checkpoint`` when a graph is recorded: the backward
recomputes one tile at a time (memory bounded with ``requires_grad`` inputs too).

``LocalStack.choose_tile`` picks the largest square tile whose activations fit a byte budget
(``estimate``: the layers' maps at the tile's extents, the largest pair of consecutive maps
without a graph, every map plus that pair with one), None when the untiled pass fits, and raises
``TileBudgetError`` naming the smallest budget that fits one tile.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .trunks import Fire, L2Pool, _window_output

__all__ = ["LocalStack", "Tile", "TileBudgetError", "run_tiles", "default_budget", "budget_or_default", "CPU_BUDGET",
           "FREE_FRACTION", "assemble", "apply_padded"]

Span = Tuple[int, int]  # [start, stop) along one axis; start == stop: empty

#: The fraction of the free memory (a GPU's, or the system's available memory for the CPU, at call
#: time) a pass may take before it is tiled, and the CPU's floor (also its budget where the available
#: memory is unknown).
FREE_FRACTION = 0.5
CPU_BUDGET = 4 << 30


class TileBudgetError(ValueError):
    """A memory budget below what one tile of the trunk needs; ``minimum`` holds that need (bytes)."""

    def __init__(self, message: str, minimum: int) -> None:
        super().__init__(message)
        self.minimum = minimum


def default_budget(device: Union[str, torch.device]) -> int:
    """Activation bytes a pass may take on ``device`` when no budget is given: ``FREE_FRACTION`` of
    the memory free now (a CUDA device's ``mem_get_info``; on the CPU the system's available
    memory, /proc/meminfo's MemAvailable), at least ``CPU_BUDGET`` on the CPU, and ``CPU_BUDGET``
    where the available memory is unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * FREE_FRACTION)
    available = _available_bytes()
    return CPU_BUDGET if available is None else max(CPU_BUDGET, int(available * FREE_FRACTION))


def budget_or_default(budget: Optional[int], device: Union[str, torch.device]) -> int:
    """``budget``, or ``default_budget(device)`` when it is None (a metric's ``memory_budget``)."""
    return budget if budget is not None else default_budget(device)


def _available_bytes() -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


@dataclass(frozen=True)
class _Window:
    """One layer's window along both axes: kernel, stride, padding, ceil rounding; the value its
    padding stands for; the channels it outputs (None: those of its input)."""

    k: Tuple[int, int]
    s: Tuple[int, int]
    p: Tuple[int, int]
    ceil: bool
    pad_value: float
    channels: Optional[int]
    pads_input: bool = True  # False: the layer pads inside (a fire module pads its squeeze output)


def _pair(v: Union[int, Tuple[int, ...]]) -> Tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, tuple) else (int(v), int(v))


def _window(m: nn.Module) -> _Window:
    """The geometry of a layer the tiled pass knows, else TypeError naming it."""
    if isinstance(m, nn.Conv2d):
        if _pair(m.dilation) != (1, 1) or m.padding_mode != "zeros" or isinstance(m.padding, str):
            raise TypeError(f"cannot tile {m}: only undilated convolutions with numeric zero padding")
        return _Window(_pair(m.kernel_size), _pair(m.stride), _pair(m.padding), False, 0.0, m.out_channels)
    if isinstance(m, nn.MaxPool2d):
        if _pair(m.dilation) != (1, 1):
            raise TypeError(f"cannot tile {m}: dilated pooling")
        return _Window(_pair(m.kernel_size), _pair(m.stride if m.stride is not None else m.kernel_size),
                       _pair(m.padding), bool(m.ceil_mode), -math.inf, None)
    if isinstance(m, nn.AvgPool2d):
        if _pair(m.padding) != (0, 0) or m.ceil_mode:
            raise TypeError(f"cannot tile {m}: average pooling with padding or ceil rounding")
        return _Window(_pair(m.kernel_size), _pair(m.stride if m.stride is not None else m.kernel_size),
                       (0, 0), False, 0.0, None)
    if isinstance(m, L2Pool):
        return _Window(_pair(m.kernel_size), _pair(m.stride), _pair(m.padding), False, 0.0, None)
    if isinstance(m, Fire):
        return _Window((3, 3), (1, 1), (1, 1), False, 0.0, m.expand1x1.out_channels + m.expand3x3.out_channels,
                       pads_input=False)
    if isinstance(m, (nn.ReLU, nn.Identity)) or (isinstance(m, nn.Dropout) and (not m.training or m.p == 0)):
        return _Window((1, 1), (1, 1), (0, 0), False, 0.0, None)
    raise TypeError(f"cannot tile a {type(m).__name__} layer: the tiled pass knows convolutions, ReLUs, "
                    "max/average/L2 pooling and fire modules")


def _back(w: _Window, axis: int, out: Span) -> Span:
    """The input pixels (unclipped: may reach into the padding) output pixels ``out`` read."""
    k, s, p = w.k[axis], w.s[axis], w.p[axis]
    return out[0] * s - p, (out[1] - 1) * s - p + k


def _extent(span: Optional[Span]) -> int:
    return 0 if span is None else span[1] - span[0]


def _hull(a: Optional[Span], b: Span) -> Span:
    return b if a is None else (min(a[0], b[0]), max(a[1], b[1]))


@dataclass(frozen=True)
class _AxisTile:
    needed: Tuple[Optional[Span], ...]  # per position: the pixels computed (None: nothing)
    owned: Tuple[Span, ...]  # per output (the stack's ``outputs`` order): the pixels this tile reduces


@dataclass(frozen=True)
class Tile:
    """One tile of a plan: per position the rows and columns computed (``needed``; None past the
    deepest layer the tile owns pixels of) and per output the rows and columns it owns."""

    rows: _AxisTile
    cols: _AxisTile

    def needed(self, i: int) -> Optional[Tuple[Span, Span]]:
        r, c = self.rows.needed[i], self.cols.needed[i]
        return None if r is None or c is None else (r, c)

    def owned(self, j: int) -> Tuple[Span, Span]:
        return self.rows.owned[j], self.cols.owned[j]


class LocalStack:
    """A trunk as a list of local layers with the positions of its compared outputs (0: the input,
    ``i + 1``: the output of ``layers[i]``), for tiled passes.

    ``apply`` overrides how one layer runs on a padded crop (e.g. E-LPIPS' dropout before each
    convolution): ``apply(i, layer, x, origin)`` gets the crop of the layer's input, already
    padded, whose first pixel is the global (row, col) ``origin`` (negative inside the padding),
    and returns the layer's output on it with no padding of its own; None runs the layer itself."""

    def __init__(self, layers: Sequence[nn.Module], outputs: Sequence[int], in_channels: int = 3,
                 reduce: float = 2.0) -> None:
        self.layers = list(layers)
        self.reduce = reduce  # maps of a compared map's size its reduction makes (for ``estimate``)
        self._chosen: Dict[tuple, Optional[Tuple[int, int]]] = {}  # choose_tile's answers
        self.windows = [_window(m) for m in self.layers]
        if list(outputs) != sorted(set(outputs)) or not outputs or outputs[0] < 0 or outputs[-1] > len(self.layers):
            raise ValueError(f"outputs must be increasing positions in 0..{len(self.layers)}, got {list(outputs)}")
        self.outputs = list(outputs)
        self._output_of = {pos: j for j, pos in enumerate(self.outputs)}  # position -> index in outputs
        self._inplace = [isinstance(m, nn.ReLU) for m in self.layers]  # ReLUs: output = input's storage
        ch = [in_channels]
        for w in self.windows:
            ch.append(w.channels if w.channels is not None else ch[-1])
        self.channels = ch
        self.strides = [(1, 1)]
        for w in self.windows:
            self.strides.append((self.strides[-1][0] * w.s[0], self.strides[-1][1] * w.s[1]))

    # -- geometry -------------------------------------------------------------------------------
    def sizes(self, height: int, width: int) -> List[Tuple[int, int]]:
        """(h, w) at every position for an input of height x width (0: empty)."""
        out = [(height, width)]
        for w in self.windows:
            h0, w0 = out[-1]
            out.append((_window_output(h0, w.k[0], w.s[0], w.p[0], w.ceil),
                        _window_output(w0, w.k[1], w.s[1], w.p[1], w.ceil)))
        return out

    def _axis_plan(self, sizes: Sequence[int], axis: int, tile: int) -> List[_AxisTile]:
        n0 = sizes[0]
        bounds = [min(t * tile, n0) for t in range(-(-n0 // tile) + 1)]
        owned_bounds = []
        for j in self.outputs:
            s, n = self.strides[j][axis], sizes[j]
            b = [min(-(-v // s), n) for v in bounds]
            b[-1] = n
            owned_bounds.append(b)
        tiles = []
        for t in range(len(bounds) - 1):
            owned = tuple((b[t], b[t + 1]) for b in owned_bounds)
            needed: List[Optional[Span]] = [None] * len(sizes)
            cur: Optional[Span] = None
            for i in range(len(sizes) - 1, -1, -1):
                if i in self._output_of:
                    o = owned[self._output_of[i]]
                    if o[1] > o[0]:
                        cur = _hull(cur, o)
                needed[i] = cur
                if cur is not None and i > 0:
                    lo, hi = _back(self.windows[i - 1], axis, cur)
                    cur = (max(lo, 0), min(hi, sizes[i - 1]))
            if needed[0] is not None:
                tiles.append(_AxisTile(tuple(needed), owned))
        return tiles

    def plan(self, height: int, width: int, tile: Tuple[int, int]) -> List[Tile]:
        """The tiles of an input of height x width cut into owned blocks of at most ``tile``
        (rows, cols) input pixels, row-major."""
        sizes = self.sizes(height, width)
        if any(h < 1 or w < 1 for h, w in sizes):
            raise ValueError(f"an input of {height}x{width} leaves an empty map in the trunk (sizes {sizes})")
        rows = self._axis_plan([s[0] for s in sizes], 0, tile[0])
        cols = self._axis_plan([s[1] for s in sizes], 1, tile[1])
        return [Tile(r, c) for r in rows for c in cols]

    # -- memory ---------------------------------------------------------------------------------
    def _cost(self, rows: Sequence[int], cols: Sequence[int], batch: int, elem: int, grad: bool,
              tiled: bool) -> int:
        maps = [r * c * ch for r, c, ch in zip(rows, cols, self.channels)]
        inplace = self._inplace
        # a layer: its input, the padded copy of a tile's crop, its output
        layer = max(a if ip else (2 if tiled else 1) * a + b for a, b, ip in zip(maps, maps[1:], inplace))
        emit = (1 + self.reduce) * max(maps[j] for j in self.outputs)
        # a graph keeps every map
        # (tiled: also the padded crops the convolutions read, the pooling indices, and the zero-filled
        # gradients of the crops in the recomputing backward: 4x, measured in benchmarks/README.md)
        kept = (4 if tiled else 1) * sum(b for b, ip in zip(maps[1:], inplace) if not ip) if grad else 0
        return int(batch * elem * (max(layer, emit) + kept))

    def estimate(self, height: int, width: int, tile: Optional[Tuple[int, int]], batch: int, elem: int,
                 grad: bool) -> int:
        """Bytes of activations of the largest tile (``tile`` None: the untiled pass) for ``batch``
        images of ``elem``-byte elements: the largest layer (its input, a tile's padded copy of
        it, its output) or a compared map with the ``reduce`` maps its reduction makes (the
        stack's attribute), plus every map (twice for a tile: the padded crops) when a graph is
        kept. A model of the peak, checked against measured peaks in benchmarks/README.md."""
        sizes = self.sizes(height, width)
        if tile is None:
            return self._cost([s[0] for s in sizes], [s[1] for s in sizes], batch, elem, grad, False)
        rows, cols = self._lengths(sizes, 0, tile[0])[0], self._lengths(sizes, 1, tile[1])[0]
        return self._cost(rows, cols, batch, elem, grad, True)

    def _lengths(self, sizes: Sequence[Tuple[int, int]], axis: int, tile: int) -> Tuple[List[int], List[int]]:
        """Per position along one axis: the largest tile's extent and the tiles' summed extents."""
        plan = self._axis_plan([s[axis] for s in sizes], axis, tile)
        ext = [[_extent(a.needed[i]) for a in plan] for i in range(len(sizes))]
        return [max(e) for e in ext], [sum(e) for e in ext]

    def _work(self, rows: Sequence[int], cols: Sequence[int]) -> float:
        """Multiply-adds of a pass computing rows[i] x cols[i] pixels at every position (the
        convolutions': the rest is negligible)."""
        total = 0.0
        for i, w in enumerate(self.windows):
            if isinstance(self.layers[i], (nn.Conv2d, Fire)):
                total += rows[i + 1] * cols[i + 1] * self.channels[i] * self.channels[i + 1] * w.k[0] * w.k[1]
        return total

    def tile_for(self, height: int, width: int, batch: int, elem: int, grad: bool, *,
                 max_tile: Optional[Tuple[int, int]], budget: Optional[int], device: Union[str, torch.device],
                 what: str) -> Optional[Tuple[int, int]]:
        """A metric's tile for a pass (None: untiled): ``max_tile`` when an image is larger than it,
        else ``choose_tile`` under ``budget`` (None: ``default_budget(device)``)."""
        if max_tile is not None:
            return max_tile if (height > max_tile[0] or width > max_tile[1]) else None
        return self.choose_tile(height, width, batch, elem, grad, budget_or_default(budget, device), what)

    def choose_tile(self, height: int, width: int, batch: int, elem: int, grad: bool, budget: int,
                    what: str = "the trunk") -> Optional[Tuple[int, int]]:
        """None when the untiled pass fits ``budget`` bytes; else the tile (multiples of the
        deepest output's stride) that fits with the least recomputed halo (the fewest
        multiply-adds over all tiles: wide strips or squares, whichever the budget favours);
        TileBudgetError naming the smallest budget when not even the smallest tile fits."""
        key = (height, width, batch, elem, grad, budget)
        if key not in self._chosen:
            self._chosen[key] = self._choose(height, width, batch, elem, grad, budget, what)
        return self._chosen[key]

    def _choose(self, height: int, width: int, batch: int, elem: int, grad: bool, budget: int,
                what: str) -> Optional[Tuple[int, int]]:
        if self.estimate(height, width, None, batch, elem, grad) <= budget:
            return None
        sizes = self.sizes(height, width)
        unit = max(max(self.strides[self.outputs[-1]]), 1)

        def fits(th: int, tw: int) -> bool:
            return self.estimate(height, width, (th, tw), batch, elem, grad) <= budget

        need = self.estimate(height, width, (unit, unit), batch, elem, grad)
        if need > budget:
            raise TileBudgetError(
                f"memory_budget={budget} bytes is below what one tile of {what} needs on {height}x{width} "
                f"images ({batch} images per pass{' with a graph' if grad else ''}): at least {need} bytes "
                f"({need / 2**20:.1f} MiB)", need)
        best: Optional[Tuple[float, Tuple[int, int]]] = None
        cols_top = -(-width // unit)
        widths = sorted({-(-cols_top // k) for k in range(1, min(cols_top, 64) + 1)}, reverse=True)
        for m_w in widths:
            tw = m_w * unit
            if not fits(unit, tw):
                continue
            lo, hi = 1, -(-height // unit)  # the tallest tile of this width that fits
            while lo < hi:
                mid = (lo + hi + 1) // 2
                lo, hi = (mid, hi) if fits(mid * unit, tw) else (lo, mid - 1)
            th = lo * unit
            work = self._work(self._lengths(sizes, 0, th)[1], self._lengths(sizes, 1, tw)[1])
            if best is None or work < best[0]:
                best = (work, (th, tw))
        assert best is not None  # (unit, unit) fits
        return best[1]

    # -- running --------------------------------------------------------------------------------
    def run(self, tile: Tile, source: Callable[[Span, Span], torch.Tensor],
            emit: Callable[[int, torch.Tensor], None], sizes: Sequence[Tuple[int, int]],
            apply: Optional[Callable[[int, nn.Module, torch.Tensor, Tuple[int, int]], torch.Tensor]] = None
            ) -> None:
        """Compute one tile: ``source(rows, cols)`` gives the input crop; ``emit(j, block)`` receives
        the block of output ``j`` (index into ``outputs``) the tile owns, in output order, as soon
        as it exists (a view: reduce it before returning; later layers may reuse its memory)."""
        region = tile.needed(0)
        assert region is not None  # plans hold only tiles that compute something
        x = source(*region)
        for i in range(len(self.layers) + 1):
            j = self._output_of.get(i)
            if j is not None:
                (r0, r1), (c0, c1) = tile.owned(j)
                if r1 > r0 and c1 > c0:
                    emit(j, x[:, :, r0 - region[0][0]:r1 - region[0][0], c0 - region[1][0]:c1 - region[1][0]])
            if i == len(self.layers):
                break
            nxt = tile.needed(i + 1)
            if nxt is None:
                break
            x = self._layer(i, x, region, nxt, sizes[i], apply)
            region = nxt

    def _layer(self, i: int, x: torch.Tensor, region: Tuple[Span, Span], out: Tuple[Span, Span],
               size: Tuple[int, int], apply: Optional[Callable[..., torch.Tensor]]) -> torch.Tensor:
        w, m = self.windows[i], self.layers[i]
        crop, pads, origin = [], [], []
        for axis in (0, 1):
            lo, hi = _back(w, axis, out[axis])
            clo, chi = max(lo, 0), min(hi, size[axis])
            crop.append((clo - region[axis][0], chi - region[axis][0]))
            pads.append((clo - lo, hi - chi))
            origin.append(lo)
        x = x[:, :, crop[0][0]:crop[0][1], crop[1][0]:crop[1][1]]
        if w.pads_input and any(p for pp in pads for p in pp):
            x = F.pad(x, (pads[1][0], pads[1][1], pads[0][0], pads[0][1]), value=w.pad_value)
        if apply is not None:
            y = apply(i, m, x, (origin[0], origin[1]))
        else:
            y = apply_padded(m, x, pads)
        expect = (out[0][1] - out[0][0], out[1][1] - out[1][0])
        if tuple(y.shape[2:]) != expect:  # pragma: no cover - a geometry the windows got wrong
            raise AssertionError(f"layer {i} ({m}) gave {tuple(y.shape[2:])} pixels, expected {expect}")
        return y


_TRIM: Optional[Callable[[int], int]] = None  # glibc's malloc_trim, found on first use
_TRIM_PROBED = False


def release_free_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc's ``malloc_trim``; nothing elsewhere)."""
    global _TRIM, _TRIM_PROBED
    if not _TRIM_PROBED:
        _TRIM_PROBED = True
        try:
            import ctypes

            _TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc (macOS, Windows, musl): nothing to do
            _TRIM = None
    if _TRIM is not None:
        _TRIM(0)


def resident_bytes() -> Optional[int]:
    """This process' resident memory (Linux' /proc/self/statm; None elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def apply_padded(m: nn.Module, x: torch.Tensor, pads: Sequence[Span] = ((0, 0), (0, 0))) -> torch.Tensor:
    """Layer ``m`` on an input already padded as its padding would (``pads``: the rows and columns
    of padding; a fire module gets its input unpadded and pads its squeeze output by them), with
    no padding of its own."""
    if isinstance(m, nn.Conv2d):
        x = x.to(m.weight.dtype)
        return F.conv2d(x, m.weight, m.bias, m.stride, 0, 1, m.groups)
    if isinstance(m, nn.MaxPool2d):
        return F.max_pool2d(x, m.kernel_size, m.stride, 0, 1, False)
    if isinstance(m, nn.AvgPool2d):
        return F.avg_pool2d(x, m.kernel_size, m.stride, 0)
    if isinstance(m, L2Pool):
        return m(x, padding=0)
    if isinstance(m, nn.ReLU):  # in place as the trunks' ReLUs: its input is a fresh layer output
        return F.relu(x, inplace=True)
    if isinstance(m, Fire):
        # unpadded input (its window's pads_input is False): the squeeze (1x1) output is padded
        # with zeros as the 3x3 expansion pads it; the 1x1 expansion's margin is cropped
        (t, b), (lft, r) = pads
        s = m.squeeze_activation(m.squeeze(x))
        e1 = m.expand1x1_activation(m.expand1x1(s))
        e1 = e1[:, :, 1 - t:e1.shape[2] - (1 - b), 1 - lft:e1.shape[3] - (1 - r)]
        e3 = m.expand3x3_activation(F.conv2d(F.pad(s, (lft, r, t, b)), m.expand3x3.weight, m.expand3x3.bias))
        return torch.cat([e1, e3], 1)
    return m(x)  # Identity, Dropout in eval mode


def run_tiles(tiles: Sequence[Tile], fn: Callable[..., List[torch.Tensor]], inputs: Sequence[torch.Tensor],
              grad: bool, budget: Optional[int]) -> List[List[torch.Tensor]]:
    """``fn(tile, *inputs)`` for every tile: without a graph under ``no_grad``; with one under
    ``torch.utils.checkpoint`` (non-reentrant), so each tile's activations are dropped after its
    forward and recomputed, one tile at a time, by the backward.

    ``budget`` (the metric's ``memory_budget``; None: ``default_budget``; the CPU only): before a
    tile, when the process holds more than ``budget`` bytes beyond what
    it held at the start, the C heap's free pages go back to the system (``release_free_memory``):
    tiles of different sizes fragment glibc's heap (its dynamic mmap threshold moves tile-sized
    buffers onto it) and the resident memory would grow to about twice the tile's need (measured:
    1024x1024 LPIPS-VGG, 250 MB budget: 343-362 MB without, 188-212 MB with). Only then: handing
    pages back costs page faults on the next tile."""
    cpu = bool(inputs) and inputs[0].device.type == "cpu"
    limit = budget_or_default(budget, "cpu") if cpu else 0
    start = resident_bytes() if cpu else None

    def one(t: Tile, *args: torch.Tensor) -> List[torch.Tensor]:
        if start is not None:
            now = resident_bytes()
            if now is not None and now - start > limit:
                release_free_memory()
        return fn(t, *args)

    out = []
    for t in tiles:
        if grad:
            out.append(checkpoint(one, t, *inputs, use_reentrant=False))
        else:
            with torch.no_grad():
                out.append(one(t, *inputs))
    return out


def assemble(tiles: Sequence[Tile], j: int, blocks: Sequence[torch.Tensor]) -> torch.Tensor:
    """The whole map of output ``j`` from the tiles' owned blocks (row-major tiles, one block per
    tile, empty ones included as zero-size tensors): rows of blocks concatenated."""
    rows: Dict[Span, List[torch.Tensor]] = {}
    for t, b in zip(tiles, blocks):
        r, c = t.owned(j)
        if r[1] > r[0] and c[1] > c[0]:
            rows.setdefault(r, []).append(b)
    return torch.cat([torch.cat(rows[r], 3) for r in sorted(rows)], 2)
