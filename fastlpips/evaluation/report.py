"""The HTML report of ``fastlpips.evaluate``: one self-contained file (styles inline, every picture a
``data:`` URI, no script, no external address), readable offline and safe to mail or attach.

Sections: the summary table (per method: mean ± standard deviation of every metric, the best
method per metric marked, error count; a classifier's error on the references beside its error on
the outputs), the compact table (means only, in the order of Uelwer et al.'s Table 2: PSNR, SSIM,
UQI, IFC, GMSD, LPIPS, R-LPIPS, then the classifier errors; arrows for better), the
distributions (a box plot per metric with every image as a point; matplotlib, when installed),
the worst images per method (reference, output and a heat map of where they differ: the LPIPS
distance map of the report's ranking metric when it is an LPIPS metric, else the absolute
difference), and every error with its file.
"""
from __future__ import annotations

import base64
import datetime
import html
import io
import math
from pathlib import Path
from typing import Callable, Dict, List, Optional, cast

import numpy as np
import torch

from ..utils import read_image_tensor
from .specs import EvaluationResult, MetricSpec

__all__ = ["render_report", "ranking_metric"]

THUMB = 256  # longest side of the report's pictures, in pixels

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#1d1d1f;background:#fff}
h1{font-size:22px;margin:0 0 4px} h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px} .meta{color:#555;font-size:13px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3} td.l,th.l{text-align:left} td.best{background:#dff3df;font-weight:600}
td.err{color:#a00000;text-align:left;font-family:ui-monospace,monospace;font-size:12px}
.worst{display:flex;flex-wrap:wrap;gap:14px} figure{margin:0;border:1px solid #ddd;padding:6px;background:#fafafa}
figure img{display:block;image-rendering:pixelated;max-width:256px;height:auto}
figcaption{font-size:12px;max-width:780px;margin-top:4px} .trio{display:flex;gap:4px}
.trio div{font-size:11px;color:#555;text-align:center} .bad{color:#a00000;font-weight:600}
img.plot{max-width:100%;height:auto}
"""


def ranking_metric(metrics: List["MetricSpec"]) -> Optional["MetricSpec"]:
    """The metric that orders the worst images: the first LPIPS-family metric, else the first one."""
    return next((s for s in metrics if s.spatial), metrics[0] if metrics else None)


def _png(arr: np.ndarray) -> str:
    """An (H, W, 3) float array in [0, 1] (or uint8) as a ``data:image/png`` URI, at most THUMB pixels a side."""
    from PIL import Image

    if arr.dtype != np.uint8:
        arr = np.round(np.clip(arr, 0, 1) * 255).astype(np.uint8)
    im = Image.fromarray(arr)
    scale = THUMB / max(im.size)
    if scale < 1:
        im = im.resize((max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale))), Image.Resampling.BICUBIC)
    elif scale >= 2:  # small crops: enlarge by an integer factor (pixelated, as they are)
        k = int(scale)
        im = im.resize((im.size[0] * k, im.size[1] * k), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _colormap(m: np.ndarray) -> np.ndarray:
    """A heat map (H, W) as RGB in [0, 1] (matplotlib's 'magma' when installed, else grey), scaled to its max."""
    top = float(np.nanmax(m)) if m.size else 0.0
    v = m / top if top > 0 else np.zeros_like(m)
    try:
        from matplotlib import colormaps

        return colormaps["magma"](v)[..., :3]
    except ImportError:  # pragma: no cover - matplotlib is a test dependency
        return np.repeat(v[..., None], 3, axis=2)


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and not math.isfinite(v):
        return "∞" if v > 0 else ("−∞" if v < 0 else "NaN")
    return f"{v:.4g}"


def _distributions(res: "EvaluationResult") -> Optional[str]:
    """A box plot per metric (methods side by side, every image a point) as a PNG data URI."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    cols = [(s, s.key) for s in res.metrics if any(r.get(s.key) is not None for r in res.rows)]
    if not cols:
        return None
    ncol, nrow = min(len(cols), 4), math.ceil(len(cols) / 4)
    fig = Figure(figsize=(4.2 * ncol, 3.4 * nrow))
    FigureCanvasAgg(fig)
    rng = np.random.default_rng(0)
    for k, (spec, c) in enumerate(cols):
        ax = fig.add_subplot(nrow, ncol, k + 1)
        data = []
        for m in res.methods:
            v = np.array([r[c] for r in res.rows if r["method"] == m and r.get(c) is not None], dtype=np.float64)
            data.append(v[np.isfinite(v)])
        shown = [d if len(d) else np.array([np.nan]) for d in data]
        ax.boxplot(shown, showfliers=False, widths=0.5)
        for i, d in enumerate(data):
            ax.plot(i + 1 + rng.uniform(-0.15, 0.15, len(d)), d, ".", alpha=0.5, ms=4, color="tab:blue")
        ax.set_xticks(range(1, len(res.methods) + 1), res.methods, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{c} ({'higher' if spec.higher_is_better else 'lower'} is better)", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def render_report(res: "EvaluationResult", ref_dir: Path, methods: Dict[str, Path],
                  heatmap: Callable[[Optional["MetricSpec"], torch.Tensor, torch.Tensor], np.ndarray], *,
                  worst: int = 6) -> str:
    """The report as one HTML string (see the module docstring); ``heatmap(spec, ref, out)`` gives
    the (H, W) map of one (1, 3, H, W) pair."""
    e = html.escape
    summary = res.summary()
    cols = [c for s in res.metrics for c in s.columns]
    best: Dict[str, Optional[str]] = {}
    for s in res.metrics:
        means = {m: summary[m][s.key]["mean"] for m in res.methods if summary[m][s.key]["n"]}
        means = {m: v for m, v in means.items() if not math.isnan(v)}
        best[s.key] = (max if s.higher_is_better else min)(means, key=means.__getitem__) if len(means) > 1 else None
    n_err = {m: sum(1 for r in res.rows if r["method"] == m and r["error"]) for m in res.methods}
    out: List[str] = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
                      "<title>fastlpips evaluation report</title>", f"<style>{_CSS}</style></head><body>",
                      "<h1>fastlpips evaluation report</h1>",
                      f'<p class="meta">reference <b>{e(str(ref_dir))}</b> · {len(res.methods)} method(s) · '
                      f"{len(res.rows)} rows · {len(res.errors)} error(s) · "
                      f"{e(datetime.datetime.now().strftime('%Y-%m-%d %H:%M'))}</p>"]
    if res.errors:
        out.append(f'<p class="bad">{len(res.errors)} error(s): see <a href="#errors">Errors</a>.</p>')
    # summary
    out += ["<h2>Summary</h2>", "<table><tr><th class=l>method</th><th class=l>folder</th><th>images</th>"]
    for s in res.metrics:
        out.append(f"<th>{e(s.key)} {'↑' if s.higher_is_better else '↓'}</th>")
    out.append("<th>errors</th></tr>")
    for m in res.methods:
        n = max((summary[m][c]["n"] for c in cols), default=0)
        out.append(f"<tr><td class=l>{e(m)}</td><td class=l>{e(str(methods[m]))}</td><td>{n}</td>")
        for s in res.metrics:
            st = summary[m][s.key]
            cell = f"{_fmt(st['mean'])} ± {_fmt(st['std'])}" if st["n"] else "–"
            if s.kind == "elpips" and st["n"]:
                cell += f" <small>(CI ±{_fmt(summary[m][s.key + '_ci']['mean'])})</small>"
            if s.kind == "classifier" and summary[m][s.key + "_ref"]["n"]:
                cell += f" <small>(references {_fmt(summary[m][s.key + '_ref']['mean'])})</small>"
            if st["nonfinite"]:
                cell += f" <small>({st['nonfinite']} non-finite)</small>"
            out.append(f"<td{' class=best' if best[s.key] == m else ''}>{cell}</td>")
        out.append(f"<td{' class=bad' if n_err[m] else ''}>{n_err[m]}</td></tr>")
    out.append("</table><p class=meta>mean ± standard deviation over the images (finite values); best method per "
               "metric in green." + (" E-LPIPS: mean 95% interval half-width in brackets." if any(
                   s.kind == "elpips" for s in res.metrics) else "") + (
                   " Classifier columns: top-1 error on the outputs, on their references in brackets." if any(
                       s.kind == "classifier" for s in res.metrics) else "") + "</p>")
    out += _compact_table(res, summary, best)
    # distributions
    out.append("<h2>Distributions</h2>")
    dist = _distributions(res) if res.rows else None
    out.append(f'<img class=plot alt="distributions" src="{dist}">' if dist else
               "<p class=meta>(matplotlib is not installed or nothing was computed: no plot)</p>")
    # worst images
    rank = ranking_metric(res.metrics)
    if rank is not None and worst > 0:
        out.append(f"<h2>Worst images by {e(rank.key)}</h2>")
        for m in res.methods:
            rows = [r for r in res.rows if r["method"] == m and r.get(rank.key) is not None
                    and math.isfinite(cast(float, r[rank.key]))]
            rows.sort(key=lambda r: cast(float, r[rank.key]), reverse=not rank.higher_is_better)
            out.append(f"<h3>{e(m)}</h3><div class=worst>")
            for r in rows[:worst]:
                out.append(_worst_figure(r, res, rank, heatmap))
            if not rows:
                out.append("<p class=meta>(no values)</p>")
            out.append("</div>")
    # errors
    out.append('<h2 id="errors">Errors</h2>')
    if res.errors:
        out.append("<table><tr><th class=l>method</th><th class=l>file</th><th class=l>metric</th>"
                   "<th class=l>message</th></tr>")
        for x in res.errors:
            out.append(f"<tr><td class=l>{e(x['method'])}</td><td class=l>{e(x['file'])}</td>"
                       f"<td class=l>{e(x['metric'])}</td><td class=err>{e(x['message'])}</td></tr>")
        out.append("</table>")
    else:
        out.append("<p>none</p>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


#: The compact table's column order (Uelwer et al., "Evaluating Robust Perceptual Losses for Image
#: Reconstruction", Table 2), then every other metric, then the classifier errors.
PAPER_ORDER = ("psnr", "ssim", "uqi", "ifc", "gmsd", "lpips-alex", "lpips-vgg", "rlpips")


def _compact_table(res: "EvaluationResult", summary, best: Dict[str, Optional[str]]) -> List[str]:
    """Means only, one row per method, columns in ``PAPER_ORDER`` (the best method per column bold)."""
    rank = {k: i for i, k in enumerate(PAPER_ORDER)}
    specs = sorted(res.metrics, key=lambda s: (s.kind == "classifier", rank.get(s.key, len(rank))))
    cols = []  # (column, title, higher is better, best method)
    for s in specs:
        arrow = "↑" if s.higher_is_better else "↓"
        cols.append((s.key, f"{s.key} {arrow}", best[s.key]))
        if s.kind == "classifier":
            cols.append((s.key + "_ref", f"{s.key} on references {arrow}", None))
    out = ["<h2>Compact table</h2>", "<table><tr><th class=l>method</th>"]
    out += [f"<th>{html.escape(title)}</th>" for _, title, _ in cols]
    out.append("</tr>")
    for m in res.methods:
        out.append(f"<tr><td class=l>{html.escape(m)}</td>")
        for c, _, top in cols:
            st = summary[m][c]
            cell = _fmt(st["mean"]) if st["n"] else "–"
            out.append(f"<td>{'<b>' + cell + '</b>' if top == m else cell}</td>")
        out.append("</tr>")
    out.append("</table><p class=meta>means over the images; the columns in the order of Uelwer et al.'s Table 2 "
               "(PSNR, SSIM, UQI, IFC, GMSD, LPIPS, R-LPIPS), then the other metrics and the classifier errors; best "
               "method per column in bold.</p>")
    return out


def _worst_figure(row, res, rank, heatmap) -> str:
    e = html.escape
    vals = " · ".join(f"{e(c)} {_fmt(row.get(c))}" for s in res.metrics for c in s.columns)
    try:
        ref_path, out_path = res.paths[(row["method"], row["file"])]  # the files the values came from
        t = [read_image_tensor(p)[None] for p in (ref_path, out_path)]
        ref, out = (x[0].permute(1, 2, 0).numpy() for x in t)
        hm = heatmap(rank, t[0], t[1])
        pics = [("reference", _png(ref)), ("output", _png(out)),
                (f"{'LPIPS map' if rank.spatial else '|difference|'} (max {_fmt(float(np.max(hm)))})",
                 _png(_colormap(hm)))]
        trio = "".join(f'<div><img alt="{e(name)}" src="{src}">{e(name)}</div>' for name, src in pics)
    except Exception as err:  # a file changed since it was evaluated: say so, keep the report
        trio = f'<div class="bad">cannot show: {e(str(err))}</div>'
    return (f"<figure><div class=trio>{trio}</div><figcaption><b>{e(row['file'])}</b>: {vals}</figcaption>"
            "</figure>")
