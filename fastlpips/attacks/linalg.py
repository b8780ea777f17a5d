"""Exact J^T J products of a feature map phi at an image batch, conjugate gradients with
per-sample convergence, and extremal eigenvalues (Lanczos) of the distance Hessian.

J = d phi / d x. For d(x', x)^2 = ||phi(x') - phi(x)||^2 the Hessian at x' = x is 2 J^T J
(the residual vanishes there), so the eigenvalues of J^T J are the E-LPIPS paper's sensitivity
analysis up to that factor. Products are exact: J^T u by reverse mode on a graph kept once per
point (``torch.func.vjp``), J v by forward-mode AD, either ``mode='jvp'`` (default: one
forward pass carrying the tangent per product) or ``mode='linearize'`` (``torch.func.linearize``
traces the linearization once, then each product is a tangent-only pass: worth it for many
products, e.g. Lanczos; the trace costs ~100 forwards on CPU). Images are batched: phi acts per
image, so J^T J is block-diagonal and one product handles the whole batch (and, for E-LPIPS, every sample in it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple, cast

import torch

__all__ = ["JTJ", "jtj_matvec", "conjugate_gradient", "CGResult", "lanczos_extremes", "lanczos_spectrum",
           "power_iteration",
           "hutchinson_moments"]


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample inner product over all but the first dimension."""
    return (a * b).flatten(1).sum(1)


def _bcast(s: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return s.view(-1, *([1] * (like.dim() - 1)))


class JTJ:
    """The linearization of ``phi`` at ``x``: ``J(v)``, ``JT(u)`` and ``__call__(v) = J^T J v``.

    ``passes`` counts trunk passes: 'forward' (primal passes), 'jvp' (forward passes carrying a
    tangent, one per J v in 'jvp' mode), 'tangent' (tangent-only passes, 'linearize' mode) and
    'backward' (one per J^T u). Parameters get no gradient (products run under no_grad)."""

    def __init__(self, phi: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *, mode: str = "auto") -> None:
        """``phi``: a feature function, or a distance with ``features`` (and ``linearize``).
        ``mode``: 'auto' (the distance's own exact linearization when it has one, else 'jvp'),
        'jvp', 'linearize' (torch.func.linearize) or 'manual' (the distance's ``linearize``)."""
        from .distances import FeatureDistance

        owner = phi if isinstance(phi, FeatureDistance) else getattr(phi, "__self__", None)
        owner = owner if isinstance(owner, FeatureDistance) else None
        # the kept linearization is of ``features``: not usable for a distance whose lengths come
        # from its own ``metric_features`` (asked for by passing the distance or that method)
        wants_metric = owner is not None and (phi is owner or getattr(phi, "__func__", None)
                                              is type(owner).metric_features)
        own_metric = owner is not None and type(owner).metric_features is not FeatureDistance.metric_features
        manual = owner.linearize if (owner is not None and owner.has_linearization
                                     and not (wants_metric and own_metric)) else None
        if mode == "auto":
            mode = "manual" if manual is not None else "jvp"
        if mode not in ("jvp", "linearize", "manual") or (mode == "manual" and manual is None):
            raise ValueError(f"mode must be 'auto', 'jvp', 'linearize' or 'manual' (with a distance that has "
                             f"linearize), got {mode!r}")
        phi = owner.metric_features if phi is owner else phi
        self.x, self.phi, self.mode = x.detach(), phi, mode
        self.passes = {"forward": 1, "jvp": 0, "tangent": 0, "backward": 0}
        if mode == "manual":  # one primal pass serves both the graph for J^T and the linearization
            assert manual is not None  # mode 'manual' needs the distance's linearize (checked above)
            xg = self.x.clone().requires_grad_(True)
            with torch.enable_grad():
                value, self._lin = manual(xg)
            self._graph = (xg, value)
            self.value = value.detach()
            self._vjp = self._manual_vjp
            return
        with torch.no_grad():
            self.value, self._vjp = cast(Tuple[Any, Callable[..., Any]], torch.func.vjp(phi, self.x))  # no aux
            if mode == "linearize":
                _, self._lin = torch.func.linearize(phi, self.x)
                self.passes["forward"] += 1

    def _manual_vjp(self, u: torch.Tensor):
        xg, value = self._graph
        return torch.autograd.grad(value, xg, u, retain_graph=True)

    def J(self, v: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if self.mode in ("linearize", "manual"):
                self.passes["tangent"] += 1
                return self._lin(v.to(self.x.dtype))
            self.passes["jvp"] += 1
            return torch.func.jvp(self.phi, (self.x,), (v.to(self.x.dtype),))[1]

    def JT(self, u: torch.Tensor) -> torch.Tensor:
        self.passes["backward"] += 1
        if self.mode == "manual":
            return self._vjp(u)[0]
        with torch.no_grad():
            return self._vjp(u)[0]

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        return self.JT(self.J(v))


def jtj_matvec(phi: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """J^T J v at ``x`` (one-off; build a ``JTJ`` to reuse the graph across products)."""
    return JTJ(phi, x)(v)


@dataclass
class CGResult:
    x: torch.Tensor
    residual: torch.Tensor     # (N,) final ||b - A x||
    iterations: torch.Tensor   # (N,) iterations until converged (or the maximum)
    converged: torch.Tensor    # (N,) bool


def conjugate_gradient(matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, *, iterations: int = 5,
                       tol: float = 0.0, x0: Optional[torch.Tensor] = None) -> CGResult:
    """Solve A x = b (A symmetric positive semi-definite, batched: block-diagonal per sample) by CG.

    A sample stops updating once its residual norm is <= ``tol * ||b||`` (relative); the others go
    on. ``x0 = None`` starts from 0 without a product (r0 = b)."""
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b.clone() if x0 is None else b - matvec(x)
    p = r.clone()
    rr = _dot(r, r)
    bnorm = _dot(b, b).sqrt()
    active = rr.sqrt() > tol * bnorm
    iters = torch.zeros(b.shape[0], dtype=torch.long, device=b.device)
    for _ in range(iterations):
        if not bool(active.any()):
            break
        ap = matvec(p)
        pap = _dot(p, ap)
        ok = active & (pap > 0)
        alpha = torch.where(ok, rr / torch.where(ok, pap, torch.ones_like(pap)), torch.zeros_like(rr))
        x = x + _bcast(alpha, x) * p
        r = r - _bcast(alpha, r) * ap
        rr_new = _dot(r, r)
        beta = torch.where(ok, rr_new / torch.where(rr > 0, rr, torch.ones_like(rr)), torch.zeros_like(rr))
        p = torch.where(_bcast(ok, p), r + _bcast(beta, p) * p, p)
        iters = iters + ok.long()
        rr = torch.where(ok, rr_new, rr)
        active = ok & (rr.sqrt() > tol * bnorm)
    return CGResult(x, rr.sqrt(), iters, rr.sqrt() <= tol * bnorm)


def power_iteration(matvec, v0: torch.Tensor, iterations: int = 50) -> torch.Tensor:
    """Largest eigenvalue per sample of a symmetric PSD operator (Rayleigh quotient)."""
    v = v0 / _bcast(_dot(v0, v0).sqrt(), v0)
    lam = torch.zeros(v0.shape[0], dtype=v0.dtype, device=v0.device)
    for _ in range(iterations):
        w = matvec(v)
        lam = _dot(v, w)
        v = w / _bcast(_dot(w, w).sqrt().clamp_min(1e-300), w)
    return lam


def _lanczos_tridiagonal(matvec, v0: torch.Tensor, iterations: int) -> torch.Tensor:
    """Lanczos with full reorthogonalization, per sample: the (batch, m, m) tridiagonal T_m of the
    Krylov space of ``v0`` (m <= ``iterations``; stops early once the space is invariant)."""
    n = v0.shape[0]
    q = v0 / _bcast(_dot(v0, v0).sqrt(), v0)
    basis = [q]
    alphas, betas = [], []
    for j in range(iterations):
        w = matvec(basis[-1])
        a = _dot(w, basis[-1])
        alphas.append(a)
        for b in basis:  # full reorthogonalization (twice is enough)
            w = w - _bcast(_dot(w, b), w) * b
        for b in basis:
            w = w - _bcast(_dot(w, b), w) * b
        beta = _dot(w, w).sqrt()
        if j == iterations - 1 or bool((beta < 1e-12 * alphas[0].abs().clamp_min(1e-30)).all()):
            break
        betas.append(beta)
        basis.append(w / _bcast(beta.clamp_min(1e-300), w))
    m = len(alphas)
    t = torch.zeros(n, m, m, dtype=v0.dtype, device=v0.device)
    for i in range(m):
        t[:, i, i] = alphas[i]
        if i + 1 < m:
            t[:, i, i + 1] = t[:, i + 1, i] = betas[i]
    return t


def lanczos_extremes(matvec, v0: torch.Tensor, iterations: int = 30, k: int = 1):
    """Lanczos with full reorthogonalization, per sample: (smallest k, largest k) Ritz values.

    Extremal eigenvalues converge first; ``iterations`` bounds the Krylov dimension. The smallest
    Ritz value is an upper bound on the smallest eigenvalue (tight only when it has converged)."""
    ev = torch.linalg.eigvalsh(_lanczos_tridiagonal(matvec, v0, iterations))
    return ev[:, :k], ev[:, -k:]


def lanczos_spectrum(matvec, v0: torch.Tensor, iterations: int = 30):
    """Stochastic Lanczos quadrature: (nodes, weights), each (batch, m), the Ritz values of the
    Krylov space of each row of ``v0`` and the squared first components of their eigenvectors.
    For a random start (Rademacher or Gaussian rows), sum_i w_i f(node_i) estimates
    tr(f(A)) / n: the weights describe the spectral density (average them over several starts)."""
    ev, vec = torch.linalg.eigh(_lanczos_tridiagonal(matvec, v0, iterations))
    return ev, vec[:, 0, :].square()


def hutchinson_moments(matvec, shape, *, order: int = 4, probes: int = 16,
                       generator: Optional[torch.Generator] = None, dtype=torch.float32, device=None) -> torch.Tensor:
    """Spectral moments m_j = tr(A^j) / n, j = 1..``order``, of a symmetric operator on tensors of
    ``shape`` = (batch, ...) (one operator per batch row, block-diagonal as ``JTJ``), estimated
    with ``probes`` Rademacher vectors z per row: tr(A^2k) = E ||A^k z||^2 and
    tr(A^(2k+1)) = E <A^k z, A^(k+1) z>, so ``order`` moments cost ceil(order / 2) products per
    probe. Returns (batch, order); ``moments[:, j-1] / moments[:, 0] ** j`` is the j-th moment
    normalized by the mean eigenvalue."""
    if not (isinstance(order, int) and order >= 1) or not (isinstance(probes, int) and probes >= 1):
        raise ValueError(f"order and probes must be positive ints, got {order!r} and {probes!r}")
    batch, n = shape[0], math.prod(shape[1:])
    total = torch.zeros(batch, order, dtype=dtype, device=device)
    for _ in range(probes):
        z = (torch.randint(0, 2, tuple(shape), generator=generator) * 2 - 1).to(dtype=dtype, device=device)
        powers = [z]  # A^k z for k = 0 .. ceil(order / 2)
        for _ in range((order + 1) // 2):
            powers.append(matvec(powers[-1]))
        for j in range(1, order + 1):
            k = j // 2
            total[:, j - 1] += _dot(powers[k], powers[j - k])
    return total / (probes * n)
