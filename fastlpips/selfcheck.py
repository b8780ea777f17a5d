"""Self-check: every backend this installation has, on one device, against the reference.

GPU users: run ``fastlpips check --device cuda`` first (it takes seconds). It tells whether the
compiled CUDA kernels, Triton and CuPy compute what the pure-PyTorch reference computes on *your*
GPU, driver and build, before any number of theirs is trusted. ``fastlpips check`` (CPU) checks
the C++ kernels and, through Triton's interpreter, the Triton kernels.

For every backend of ``fastlpips.backends(device)`` (torch, cpp, triton, cuda, cupy) one row per
check; a backend that cannot run here gives a ``skip`` row with the reason, an exception from a
backend that reports itself available a ``FAIL`` row with the exception text. The checks:

``head <dtype>``
    The fused per-layer head ``ops.head.lpips_head_map`` against ``reference.lpips_head`` (plain
    autograd, evaluated in float64 on the same inputs): the forward map, the gradients of f0, f1
    and the channel weights for one random grad_output, and the jvp (``torch.func.jvp``, tangents
    for all three). Shapes (N0 vs N1, C, H, W): 1 vs 3 (batch 1 broadcast), 13, 5, 7 with f1
    channels_last; unless ``quick``: unit weights 2, 7, 3, 5; AlexNet layer 1 at 64 px
    2, 64, 15, 15 and a VGG layer 2, 256, 16, 16 (channels_last, as the trunks produce them).
``transform <dtype>``
    The fused E-LPIPS transform ``ops.transform.batched_transform`` against
    ``transforms.apply_transform`` applied sample by sample (float64): forward values and the
    adjoint (the gradient with respect to the images for a random grad_output). Images (B, 3, H, W)
    and scale level: 2x19x23 at level 2 (3 samples, both swap groups); unless ``quick`` also
    1x33x40 at level 4 and 2x20x20 at level 1 (4 samples).
``stats <dtype>``
    DISTS' per-stage statistics op ``ops.stats.dists_stage_term`` against ``reference.dists_stage``
    (plain autograd, float64): the terms, the gradients of both feature maps and of alpha and beta
    for one random grad_output, and the jvp. Shapes (N0 vs N1, C, H, W): 1 vs 3 (batch 1
    broadcast), 3, 9, 7 with fy channels_last; unless ``quick`` 2, 70, 11, 13 (C not a multiple of
    the kernels' channel blocks) and a VGG stage 2, 128, 16, 16 (channels_last).
``lpips <dtype>``
    ``LPIPS(net='alex', pnet_rand=True, backend=b)`` with one seeded random trunk for every backend,
    on 2 random 64x64 pairs: distances and the gradients of both inputs against the unfused
    reference path of the same model (``features`` + ``compare_features``: reference
    normalization, no fused head).
``elpips <dtype>``
    ``ELPIPS(pnet_rand=True, max_scale=1)`` (one seeded VGG trunk, copied with ``backend=b``) on 2
    random 32x32 [0, 1] pairs, 2 transformation samples: (i) without dropout, ``sample_distances``
    and the gradients of both images against the release's order (``apply_transform`` per sample,
    the trunk, ``reference.lpips_head``); (ii) unless ``quick``, with dropout and one generator
    seed, against backend 'torch' (the same draws).

``max_error`` is the largest relative error ``max|a - b| / max|b|`` over the tensors a check
compares; it passes when at most the tolerance of the check's dtype (``TOLERANCES``); a FAIL's
detail names the components over it. Dtypes: the ops in float64 on CPU, float32 on CUDA, and
unless ``quick`` in the other one too; the models in float32 and, unless ``quick``, LPIPS in float64
(E-LPIPS too on CUDA: its float64 VGG trunk is slow on CPU). TF32 is switched off while the checks
run on CUDA. No weight files are read: the trunks are random.
"""
from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

__all__ = ["CheckResult", "run_checks", "TOLERANCES"]

# Largest relative error (max|a - b| / max|b|) a check accepts, by the dtype it runs in. The
# backends agree with the reference to ~1e-15 in float64 and ~1e-6 in float32 (the unit tests
# hold them to rtol 1e-12 / 2e-5); these leave room for reductions in another order, not for bugs.
TOLERANCES: Dict[torch.dtype, float] = {torch.float64: 1e-10, torch.float32: 1e-4}

_SEED = 20240917
_TINY = 1e-300

Pairs = Dict[str, Tuple[torch.Tensor, torch.Tensor]]  # component -> (got, want)


@dataclass
class CheckResult:
    """One row of ``fastlpips check``: one check of one backend."""

    check: str
    backend: str
    available: bool
    max_error: Optional[float]
    tolerance: Optional[float]
    status: str  # 'pass' | 'FAIL' | 'skip'
    seconds: float
    detail: str = ""  # why skipped / what failed

    def as_row(self) -> Dict[str, object]:
        """The seven output columns, JSON-safe (no NaN/Inf); ``detail`` follows a non-pass status."""
        def num(v):
            return float(v) if v is not None and math.isfinite(v) else None

        status = self.status if self.status == "pass" or not self.detail else f"{self.status} ({self.detail})"
        return {"check": self.check, "backend": self.backend, "available": bool(self.available),
                "max_error": num(self.max_error), "tolerance": num(self.tolerance), "status": status,
                "seconds": round(float(self.seconds), 4)}


# -- helpers ---------------------------------------------------------------------------------------
def _rel_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max|got - want| / max|want| in float64 (inf for a shape mismatch or non-finite values)."""
    if tuple(got.shape) != tuple(want.shape):
        return math.inf
    a, b = got.detach().double(), want.detach().double()
    if not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())):
        return math.inf
    if a.numel() == 0:
        return 0.0
    return float((a - b).abs().max()) / (float(b.abs().max()) + _TINY)


def _judge(pairs: Pairs, tol: float) -> Tuple[float, str]:
    """(max error, what exceeded the tolerance: '' when everything is within it)."""
    worst, bad = 0.0, []
    for name, (got, want) in pairs.items():
        if tuple(got.shape) != tuple(want.shape):
            bad.append(f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}")
            err = math.inf
        else:
            err = _rel_error(got, want)
            if not math.isfinite(err):
                bad.append(f"{name}: non-finite values")
            elif err > tol:
                bad.append(f"{name}: error {err:.3g} > {tol:g}")
        worst = max(worst, err)
    return worst, "; ".join(bad)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rand(shape, g: torch.Generator, dtype: torch.dtype, device: torch.device, normal: bool = False) -> torch.Tensor:
    """Seeded random values drawn on CPU in float64 (the same numbers on every device)."""
    draw = torch.randn if normal else torch.rand
    return draw(tuple(shape), generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


def _grads(out: torch.Tensor, inputs: Sequence[torch.Tensor], seed: int) -> List[torch.Tensor]:
    """Gradients of <out, g> for a seeded random g (the same g for every backend)."""
    g = _rand(out.shape, _gen(seed), out.dtype, out.device)
    return list(torch.autograd.grad(out, list(inputs), g))


def _dtypes(device: torch.device, quick: bool) -> Tuple[torch.dtype, ...]:
    if device.type == "cpu":
        return (torch.float64,) if quick else (torch.float64, torch.float32)
    return (torch.float32,) if quick or device.type != "cuda" else (torch.float32, torch.float64)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


@dataclass
class _Check:
    """A check: ``reference()`` once (shared by all backends), then ``compare(backend, ref)``."""

    name: str
    dtype: torch.dtype
    reference: Callable[[], object]
    compare: Callable[[str, object], Pairs]
    skip: Callable[[str], Optional[str]] = lambda backend: None


def _differentiable_op_check(title: str, dtype: torch.dtype, labels: List[str], inputs: Callable,
                              reference_fn: Callable, backend_fn: Callable[[str], Callable],
                              names: Callable[[int], List[str]],
                              skip: Optional[Callable[[str], Optional[str]]] = None) -> _Check:
    """A check of a differentiable op: per label, its value, the gradients of all its inputs for
    one random grad_output and its jvp (``inputs(label)`` -> (args, tangents)), through
    ``reference_fn`` (plain autograd) on float64 copies and through ``backend_fn(backend)``."""
    def run(fn, args, tangents) -> List[torch.Tensor]:
        out = fn(*args)
        grads = _grads(out, args, _SEED + 5)
        tout = torch.func.jvp(fn, tuple(a.detach() for a in args), tuple(tangents))[1]
        return [out] + grads + [tout]

    def reference():
        ref = {}
        for label in labels:
            args, tangents = inputs(label)
            args = [a.detach().double().contiguous().requires_grad_() for a in args]
            ref[label] = [t.detach() for t in run(reference_fn, args, [t.double().contiguous() for t in tangents])]
        return ref

    def compare(backend, ref) -> Pairs:
        pairs: Pairs = {}
        fn = backend_fn(backend)
        for label in labels:
            args, tangents = inputs(label)
            got = run(fn, [a.requires_grad_() for a in args], tangents)
            for name, value, want in zip(names(len(args)), got, ref[label]):
                pairs[f"{label} {name}"] = (value, want)
        return pairs

    return _Check(title, dtype, reference, compare, skip or (lambda backend: None))


def _skip_without(op: str, what: str, caller: str) -> Callable[[str], Optional[str]]:
    """A check's skip rule: a backend without kernels for ``op`` (its caller hands the op on)."""
    from .ops import table

    def skip(backend: str) -> Optional[str]:
        if op not in table.BACKENDS[backend].ops:
            return f"no {backend} {what} kernels ({caller} hands it to the next backend of 'auto')"
        return None
    return skip


# -- 1. the head op --------------------------------------------------------------------------------
# label -> (N0, N1, C, H, W, weighted, f0 channels_last, f1 channels_last)
_HEAD_QUICK = {"1v3x13x5x7": (1, 3, 13, 5, 7, True, False, True)}
_HEAD_FULL = {
    "unit-w 2x7x3x5": (2, 2, 7, 3, 5, False, False, False),
    "alex1 2x64x15x15": (2, 2, 64, 15, 15, True, True, True),
    "vgg 2x256x16x16": (2, 2, 256, 16, 16, True, True, True),
}


def _features(n, c, h, w, seed, dtype, device, cl) -> torch.Tensor:
    """Post-ReLU-like features with no all-zero vector (whose 1/eps gradients would swamp the scale)."""
    g, f64, cpu = _gen(seed), torch.float64, torch.device("cpu")
    f = _rand((n, c, h, w), g, f64, cpu, normal=True).relu() + 0.01 * _rand((n, c, h, w), g, f64, cpu)
    f = f.to(device=device, dtype=dtype)
    return f.contiguous(memory_format=torch.channels_last) if cl else f


def _head_check(device: torch.device, dtype: torch.dtype, quick: bool) -> _Check:
    from .ops import head as head_op
    from .reference import lpips_head

    shapes = dict(_HEAD_QUICK, **({} if quick else _HEAD_FULL))

    def inputs(label):
        n0, n1, c, h, w, weighted, cl0, cl1 = shapes[label]
        seed = _SEED + 10 * list(shapes).index(label)
        args = [_features(n0, c, h, w, seed, dtype, device, cl0), _features(n1, c, h, w, seed + 1, dtype, device, cl1)]
        if weighted:
            args.append(_rand((c,), _gen(seed + 2), dtype, device))
        g = _gen(seed + 3)
        return args, [_rand(a.shape, g, dtype, device, normal=True) for a in args]

    def reference_fn(*a):
        return lpips_head(a[0], a[1], a[2] if len(a) > 2 else None, spatial=True)

    def backend_fn(backend):
        return lambda *a: head_op.lpips_head_map(a[0], a[1], a[2] if len(a) > 2 else None, backend=backend)

    def names(count):
        return ["forward", "grad_f0", "grad_f1", "grad_w"][:1 + count] + ["jvp"]

    return _differentiable_op_check(f"head {_dtype_name(dtype)}", dtype, list(shapes), inputs, reference_fn,
                                    backend_fn, names)


# -- 2. the transform op ---------------------------------------------------------------------------
# label -> (B, H, W, scale level, samples)
_TRANSFORM_QUICK = {"2x19x23 s2": (2, 19, 23, 2, 3)}
_TRANSFORM_FULL = {"1x33x40 s4": (1, 33, 40, 4, 2), "2x20x20 s1": (2, 20, 20, 1, 4)}


def _transform_check(device: torch.device, dtype: torch.dtype, quick: bool) -> _Check:
    from .ops import transform as transform_op
    from .transforms import apply_transform, sample_batched

    cases = dict(_TRANSFORM_QUICK, **({} if quick else _TRANSFORM_FULL))

    def inputs(label):
        b, h, w, scale, samples = cases[label]
        seed = _SEED + 10 * list(cases).index(label)
        tset = sample_batched(samples, b, generator=_gen(seed), scale=scale)
        tset.swap[: max(1, samples // 2)] = True  # both swap values (two groups when not square)
        tset.swap[-1] = False
        x = _rand((b, 3, h, w), _gen(seed + 1), dtype, device)
        return tset, tset.groups(h, w), x

    def reference():
        ref = {}
        for label in cases:
            tset, groups, x = inputs(label)
            x = x.double().requires_grad_()
            for k, (idx, _) in enumerate(groups):
                out = torch.cat([apply_transform(x, tset.sample(int(i))) for i in idx])
                (gx,) = _grads(out, [x], _SEED + 7 + k)
                ref[(label, k)] = (out.detach(), gx)
        return ref

    def compare(backend, ref) -> Pairs:
        pairs: Pairs = {}
        for label in cases:
            tset, groups, x = inputs(label)
            x.requires_grad_()
            for k, (_, tb) in enumerate(groups):
                out = transform_op.batched_transform(x, tb, backend=backend)
                (gx,) = _grads(out, [x], _SEED + 7 + k)
                want_out, want_gx = ref[(label, k)]
                pairs[f"{label} group{k} forward"] = (out, want_out)
                pairs[f"{label} group{k} adjoint"] = (gx, want_gx)
        return pairs

    return _Check(f"transform {_dtype_name(dtype)}", dtype, reference, compare,
                  _skip_without("transform", "transform", "batched_transform"))


# -- 3. DISTS' statistics op -----------------------------------------------------------------------
# label -> (N0, N1, C, H, W, fx channels_last, fy channels_last)
_STATS_QUICK = {"1v3x3x9x7": (1, 3, 3, 9, 7, False, True)}
_STATS_FULL = {"2x70x11x13": (2, 2, 70, 11, 13, False, False), "vgg 2x128x16x16": (2, 2, 128, 16, 16, True, True)}


def _stats_check(device: torch.device, dtype: torch.dtype, quick: bool) -> _Check:
    from .ops.stats import dists_stage_term
    from .reference import dists_stage

    shapes = dict(_STATS_QUICK, **({} if quick else _STATS_FULL))

    def inputs(label):
        n0, n1, c, h, w, cl0, cl1 = shapes[label]
        seed = _SEED + 10 * list(shapes).index(label)
        w_ = _rand((2, c), _gen(seed + 2), torch.float64, torch.device("cpu"))
        w_ = (w_ / w_.sum()).to(device=device, dtype=dtype)
        args = [_features(n0, c, h, w, seed, dtype, device, cl0), _features(n1, c, h, w, seed + 1, dtype, device, cl1),
                w_[0], w_[1]]
        g = _gen(seed + 3)
        return args, [_rand(a.shape, g, dtype, device, normal=True) for a in args]

    def backend_fn(backend):
        return lambda *a: dists_stage_term(*a, backend=backend)

    return _differentiable_op_check(f"stats {_dtype_name(dtype)}", dtype, list(shapes), inputs, dists_stage,
                                    backend_fn, lambda count: ["forward", "grad_fx", "grad_fy", "grad_alpha",
                                                               "grad_beta", "jvp"],
                                    _skip_without("stats", "statistics", "DISTS"))


# -- 4. LPIPS --------------------------------------------------------------------------------------
def _lpips_check(device: torch.device, dtype: torch.dtype, quick: bool) -> _Check:
    from .model import LPIPS

    def build(backend):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_SEED)
            return LPIPS(net="alex", pnet_rand=True, backend=backend, verbose=False)

    base: List[LPIPS] = []

    def images():
        g = _gen(_SEED + 11)
        return [(_rand((2, 3, 64, 64), g, dtype, device) * 2 - 1).requires_grad_() for _ in range(2)]

    def reference():
        base.append(build(None).to(device=device, dtype=dtype))
        model = base[0]
        x0, x1 = images()
        d = model.compare_features(model.features(x0), model.features(x1))
        return [d.detach()] + _grads(d, [x0, x1], _SEED + 13)

    def compare(backend, ref) -> Pairs:
        model = build(backend)
        model.load_state_dict(base[0].state_dict())  # the same trunk whatever the backend
        model.to(device=device, dtype=dtype)
        x0, x1 = images()
        d = model(x0, x1)
        got = [d] + _grads(d, [x0, x1], _SEED + 13)
        return dict(zip(["distance", "grad_in0", "grad_in1"], zip(got, ref)))

    return _Check(f"lpips {_dtype_name(dtype)}", dtype, reference, compare)


# -- 5. E-LPIPS ------------------------------------------------------------------------------------
def _elpips_reference_distances(metric, x: torch.Tensor, y: torch.Tensor, tset) -> torch.Tensor:
    """(samples, N) E-LPIPS distances without dropout, in the release's order: ``apply_transform``
    per sample, the trunk, ``reference.lpips_head`` per layer (``metric`` has dropout off)."""
    if metric.keep is not None:
        raise ValueError("the E-LPIPS reference distances are computed without dropout")
    from .reference import lpips_head
    from .transforms import apply_transform

    n = x.shape[0]
    rows = []
    for k in range(tset.samples):
        p = tset.sample(k)
        z = metric.scaling_layer(torch.cat([apply_transform(x, p), apply_transform(y, p)]) * 2 - 1)
        weights = iter(metric.layer_weights())
        total: List[Any] = [0.0]  # 0.0, then a tensor: every layer's head added

        def consume(f, total=total, weights=weights):
            total[0] = total[0] + lpips_head(f[:n], f[n:], next(weights))

        metric.run_trunk(z.contiguous(memory_format=torch.channels_last), None, consume, groups=2)
        rows.append(total[0])
    return torch.stack(rows)


def _elpips_check(device: torch.device, dtype: torch.dtype, quick: bool) -> _Check:
    from .elpips import ELPIPS
    from .transforms import sample_batched

    samples, n = 2, 2

    base: list = []

    def inputs():
        g = _gen(_SEED + 21)
        images = [_rand((n, 3, 32, 32), g, dtype, device).requires_grad_() for _ in range(2)]
        return images, sample_batched(samples, n, generator=_gen(_SEED + 22), max_scale=1)

    def run(metric, dropout: bool):
        (x, y), tset = inputs()
        metric.dropout = dropout
        d = metric.sample_distances([x], y, samples, generator=_gen(_SEED + 23), transforms=tset)[0]
        return [d] + _grads(d, [x, y], _SEED + 24)

    def reference():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_SEED + 1)
            # dropout off for the reference distances (run() switches it per comparison)
            metric = ELPIPS(pnet_rand=True, backend="torch", max_scale=1, dropout=False)
            base.append(metric.to(device=device, dtype=dtype))
        (x, y), tset = inputs()
        d = _elpips_reference_distances(base[0], x, y, tset)
        plain = [d.detach()] + _grads(d, [x, y], _SEED + 24)
        dropped = None if quick else [t.detach() for t in run(copy.deepcopy(base[0]), True)]
        return plain, dropped

    def compare(backend, ref) -> Pairs:
        metric = copy.deepcopy(base[0])  # the same trunk (a VGG16 is slow to initialize again)
        metric.backend = backend
        plain, dropped = ref
        names = ["distances", "grad_image", "grad_reference"]
        pairs: Pairs = {f"no-dropout {k}": v for k, v in zip(names, zip(run(metric, False), plain))}
        if dropped is not None and backend != "torch":  # with dropout, against backend 'torch' (same draws)
            pairs.update({f"dropout {k}": v for k, v in zip(names, zip(run(metric, True), dropped))})
        return pairs

    return _Check(f"elpips {_dtype_name(dtype)}", dtype, reference, compare)


# -- running ---------------------------------------------------------------------------------------
def _plan(device: torch.device, quick: bool) -> List[_Check]:
    ops = _dtypes(device, quick)
    checks = [make(device, dtype, quick) for make in (_head_check, _transform_check, _stats_check) for dtype in ops]
    # The models in float32, the dtype they run in (float64 convolutions are slow on CPU); unless
    # quick also LPIPS in float64, and E-LPIPS (a VGG16 trunk) in float64 on CUDA.
    f64 = () if quick else (torch.float64,)
    checks += [_lpips_check(device, dtype, quick) for dtype in (torch.float32,) + f64]
    elpips_dtypes = (torch.float32,) + (f64 if device.type == "cuda" else ())
    checks += [_elpips_check(device, dtype, quick) for dtype in elpips_dtypes]
    return checks


def _availability(device: torch.device) -> Dict[str, Optional[str]]:
    """{backend: None if it can run on ``device`` else the reason}; a probe that raises is recorded
    as 'probe failed: ...' (the backend's rows then FAIL: it could not even tell)."""
    from .ops import table

    out: Dict[str, Optional[str]] = {}
    for name in table.BACKENDS:
        try:
            out[name] = table.why_not(name, device.type)
        except Exception as e:  # noqa: BLE001 - an installation problem is a result here
            out[name] = f"probe failed: {type(e).__name__}: {e}"
    return out


def _exc_text(e: BaseException) -> str:
    text = " ".join(str(e).split())
    text = text if len(text) <= 300 else text[:297] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _run_check(check: _Check, avail: Dict[str, Optional[str]], device: torch.device,
               only: Optional[Sequence[str]]) -> List[CheckResult]:
    tol = TOLERANCES[check.dtype]
    rows: List[CheckResult] = []
    ref, ref_error = None, None
    for backend, reason in avail.items():
        if only is not None and backend not in only:
            continue
        probe_failed = reason is not None and reason.startswith("probe failed: ")
        if reason is not None and not probe_failed:
            rows.append(CheckResult(check.name, backend, False, None, tol, "skip", 0.0, reason))
            continue
        if probe_failed:
            assert reason is not None  # probe_failed: a reason was given
            rows.append(CheckResult(check.name, backend, False, None, tol, "FAIL", 0.0, reason))
            continue
        why = check.skip(backend)
        if why is not None:
            rows.append(CheckResult(check.name, backend, True, None, tol, "skip", 0.0, why))
            continue
        start = time.perf_counter()
        with warnings.catch_warnings():
            # Triton's interpreter computes masked-out lanes too (harmless overflow warnings); the
            # first forward-mode AD call makes torch script its jvp decompositions (a FutureWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
            try:
                if ref is None and ref_error is None:
                    try:
                        ref = check.reference()
                    except Exception as e:  # noqa: BLE001
                        ref_error = f"the reference itself failed: {_exc_text(e)}"
                    start = time.perf_counter()  # the reference is not this backend's time
                if ref_error is not None:
                    raise RuntimeError(ref_error)
                pairs = check.compare(backend, ref)
                _sync(device)
                err, bad = _judge(pairs, tol)
                status, detail = ("FAIL", bad) if bad else ("pass", "")
            except Exception as e:  # noqa: BLE001 - a failing backend is a result, not a crash
                err, status = None, "FAIL"
                detail = ref_error if ref_error is not None else _exc_text(e)
        rows.append(CheckResult(check.name, backend, True, err if err is None or math.isfinite(err) else None, tol,
                                status, time.perf_counter() - start, detail))
    return rows


def run_checks(device, *, quick: bool = False, backends: Optional[Sequence[str]] = None) -> List[CheckResult]:
    """Run the self-check on ``device`` (a torch.device or string); one ``CheckResult`` per check
    and backend (see the module docstring). ``quick``: one small shape per op and one dtype.
    ``backends``: only these (default: every backend of ``fastlpips.ops.table.BACKENDS``). Never raises for a
    backend's failure: that is a FAIL row."""
    device = torch.device(device)
    avail = _availability(device)
    if backends is not None:
        unknown = sorted(set(backends) - set(avail))
        if unknown:
            raise ValueError(f"unknown backend(s) {unknown}; expected some of {sorted(avail)}")
    rows: List[CheckResult] = []
    tf32 = None
    if device.type == "cuda":  # TF32 would make the float32 trunk comparisons meaningless
        tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        for check in _plan(device, quick):
            rows.extend(_run_check(check, avail, device, backends))
    finally:
        if tf32 is not None:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    return rows
