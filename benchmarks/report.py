"""Turn a pytest-benchmark JSON into the same-run ratio tables of benchmarks/README.md.

Usage: python benchmarks/report.py benchmarks/results/latest.json [more.json ...] [--readme benchmarks/README.md]
Ratios are baseline median / provider median, from the same run on the same machine; the goals
come from the issues and are checked here, not in the tests (machines are noisy).
"""
import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

START, END = "<!-- results:start -->", "<!-- results:end -->"
BASELINES = ("lpips", "reference", "faithful-loop", "perceptual-advex", "fp32", "per-draw-loop")
P_START, P_END = "<!-- precision:start -->", "<!-- precision:end -->"
E_START, E_END = "<!-- estimator:start -->", "<!-- estimator:end -->"

# (group regex, provider) -> minimum speed-up vs the baseline (issues 2 and 3)
GOALS = [
    (r"^forward vgg 256x256", "fastlpips", 2.0),
    (r"^forward vgg 64x64", "fastlpips", 1.6),
    (r"^forward alex 64x64", "fastlpips", 1.3),
    (r"^forward ", "fastlpips", 1.2),
    (r"^forward vgg", "fastlpips-bf16", 3.0),
    (r"^forward\+backward ", "fastlpips", 1.5),
    (r"^all-pairs ", "fastlpips", 10.0),
    (r"^head forward .*\[cpu\]", "cpp", 3.0),
    (r"^ppgd step", "fastlpips", 1.3),
    (r"^lpa ", "fastlpips", 1.2),
    (r"^fast-lpa ", "fastlpips", 1.2),
    (r"^head forward\+backward .*\[cpu\]", "cpp", 2.0),
    (r"^pat epoch ", "fastlpips", 1.3),
    (r"^(barycenter|geodesic) step ", "fastlpips", 2.0),
    (r"^perceptual\+texture ", "fastlpips", 1.3),
    (r"^evaluate ", "fastlpips", 2.0),
    (r"^precision ", "auto", 0.95),  # 'auto' never slower than fp32 (0.95: this VM's noise)
]


def goal_for(group, provider):
    for pattern, prov, g in GOALS:
        if prov == provider and re.search(pattern, group):
            return g
    return None


def _ms(stats):
    return f"{stats['median'] * 1e3:.1f} ms (IQR {stats['iqr'] * 1e3:.1f})"


def base_info(entry, base_name):
    return entry[base_name]["extra_info"]


def table(data, precision=False):
    by_group = defaultdict(dict)
    for b in data["benchmarks"]:
        if b["group"]:
            by_group[b["group"]][b["extra_info"]["provider"]] = b
    lines = ["| benchmark | baseline | provider | median | vs baseline | goal | met | notes |",
             "|---|---|---|---|---|---|---|---|"]
    for group in sorted(by_group):
        if group.startswith("precision ") != precision:
            continue
        entry = by_group[group]
        base_name = next((b for b in BASELINES if b in entry), None)
        if base_name is None:
            continue
        base = entry[base_name]["stats"]
        lines.append(f"| {group} | {base_name} | {base_name} | {_ms(base)} | 1.00x | | | |")
        for prov, b in sorted(entry.items()):
            if prov == base_name:
                continue
            ratio = base["median"] / b["stats"]["median"]
            goal = goal_for(group, prov)
            met = "" if goal is None else ("yes" if ratio >= goal else "**no**")
            notes = []
            info = b["extra_info"]
            if "max_rel_error_real_pairs" in info:
                notes.append(f"max rel. error {100 * info['max_rel_error_real_pairs']:.2f}% on {info['real_pairs']} "
                             f"real pairs")
            if prov == "fastlpips" and "trunk-only" in entry:
                notes.append(f"{b['stats']['median'] / entry['trunk-only']['stats']['median']:.3f}x the trunk alone")
            for key, label in (("success_rate", "success"), ("trunk_forward_passes_per_step", "trunk forward passes")):
                for side, src in (("ours", info), ("theirs", base_info(entry, base_name))):
                    if key in src:
                        val = f"{100 * src[key]:.0f}%" if key == "success_rate" else str(src[key])
                        notes.append(f"{label} {side} {val}")
            if "chosen" in info:
                notes.append(f"computes in {info['chosen'].replace('torch.', '')}")
            if "jtj_passes" in info:
                notes.append(f"J^T J passes {info['jtj_passes']}")
            if "gbytes_per_s" in info and info.get("device") == "cuda":
                notes.append(f"{info['gbytes_per_s']:.0f} GB/s")
            lines.append(f"| {group} | {base_name} | {prov} | {_ms(b['stats'])} | {ratio:.2f}x | "
                         f"{'' if goal is None else f'>= {goal:g}x'} | {met} | {'; '.join(notes)} |")
    return _header(data) + "\n\n" + "\n".join(lines)


def _header(data):
    m = data.get("machine_info", {})
    cpu = m.get("cpu", {}).get("brand_raw", "?")
    isa = m.get("cpu_isa", {}).get("isa", "not recorded")
    head = (f"Run of {data.get('datetime', '?')[:19]} on {cpu}, {m.get('cpu_count', '?')} cores, torch "
            f"{m.get('torch', '?')} ({m.get('torch_threads', '?')} threads), python {m.get('python_version', '?')}, "
            f"CUDA device: {m.get('cuda', False)}, CPU ISA: {isa}.")
    return head


ELPIPS_GOALS = {"time": 3.0, "samples": 0.6, "bias": 0.005}


def elpips_table(data):
    """Time to a 95% interval of +-2.5%: samples needed x seconds per sample, engine vs faithful loop."""
    per_sample, needed, actual = {}, {}, None
    for b in data["benchmarks"]:
        info = b["extra_info"]
        if "samples_per_run" in info:
            per_sample[(info["size"], info["provider"])] = (b["stats"]["median"] / info["samples_per_run"], info)
        elif "samples_needed_iid" in info:
            needed[info["size"]] = info
        elif info.get("provider") == "fastlpips-estimate":
            actual = (b["stats"]["median"], info)
    if not needed:
        return ""
    lines = ["| size | pairs | s/sample faithful loop | s/sample engine fp32 (x) | s/sample engine bf16 (x) | bf16 "
             "bias "
             f"(goal < {100 * ELPIPS_GOALS['bias']:g}%) | samples needed i.i.d. | stratified (ratio, goal <= "
             f"{ELPIPS_GOALS['samples']:g}) | time to target faithful | engine fp32 (x, goal >= "
             f"{ELPIPS_GOALS['time']:g}) "
             "| engine bf16 (x) | met |", "|" + "---|" * 12]
    for size in sorted(needed):
        n = needed[size]
        tf, info = per_sample.get((size, "faithful-loop"), (None, {}))
        te, _ = per_sample.get((size, "fastlpips"), (None, {}))
        tb, binfo = per_sample.get((size, "fastlpips-bf16"), (None, {}))
        if tf is None or te is None:
            continue
        ni, ns = n["samples_needed_iid"], n["samples_needed_stratified"]
        base, fp32 = ni * tf, ns * te
        bf16 = ns * tb if tb else None
        bias = binfo.get("bf16_rel_bias")
        met = (base / fp32 >= ELPIPS_GOALS["time"]) and (ns / ni <= ELPIPS_GOALS["samples"]) and \
            (bias is None or bias < ELPIPS_GOALS["bias"])
        lines.append(f"| {size}x{size} | {info.get('pairs', '?')} | {tf:.3f} | {te:.3f} ({tf / te:.2f}x) | "
                     f"{'' if tb is None else f'{tb:.3f} ({tf / tb:.2f}x)'} | "
                     f"{'' if bias is None else f'{100 * bias:.3f}%'} | {ni:.0f} | {ns:.0f} ({ns / ni:.2f}) | "
                     f"{base:.0f} s | {fp32:.0f} s ({base / fp32:.2f}x) | "
                     f"{'' if bf16 is None else f'{bf16:.0f} s ({base / bf16:.2f}x)'} | {'yes' if met else '**no**'} |")
    if actual is not None:
        secs, info = actual
        lines.append("")
        lines.append(f"Actual run at 64x64: `elpips_estimate` (stratified, rounds of 64, fp32) reached +-"
                     f"{100 * info['rel_half_width']:.2f}% on every pair (converged: {info['converged']}) with "
                     f"{info['samples_used']} samples in {secs:.0f} s (projection above: "
                     f"{needed.get(64, {}).get('samples_needed_stratified', float('nan')):.0f} samples).")
    return "\n".join(lines)


ESTIMATOR_GOALS = {"samples": 0.4, "time": {64: 8.0, 256: 25.0}}  # 'auto' vs 'stratified' / faithful loop


def estimator_table(data):
    """Samples and seconds to the interval per method (median over runs), vs 'stratified' and the faithful loop."""
    import statistics

    runs, per_sample, iid = {}, {}, {}
    for b in data["benchmarks"]:
        info = b["extra_info"]
        if info.get("provider") == "estimator":
            runs.setdefault((info["size"], info["method"]), []).append(info)
        elif info.get("provider") == "faithful-loop" and b["group"].startswith("estimator "):
            per_sample[info["size"]] = b["stats"]["median"] / info["samples_per_run"]
        elif info.get("provider") == "iid-projection":
            iid[info["size"]] = info["samples_needed_iid"]
    if not runs:
        return ""
    lines = ["| size | method | runs | converged | samples (median; runs) | vs stratified | seconds (median) | vs "
             "stratified | time vs faithful loop | goal | met |", "|" + "---|" * 11]
    for size in sorted({k[0] for k in runs}):
        ref = runs.get((size, "stratified"))
        ref_n = statistics.median(r["samples"] for r in ref) if ref else None
        ref_s = statistics.median(r["seconds"] for r in ref) if ref else None
        faithful = iid[size] * per_sample[size] if size in iid and size in per_sample else None
        if faithful is not None:
            lines.append(f"| {size}x{size} | faithful loop (i.i.d., projected) | | | {iid[size]:.0f} | "
                         f"{'' if ref_n is None else f'{iid[size] / ref_n:.2f}x'} | {faithful:.0f} | | 1.00x | | |")
        for method in ("stratified", "qmc", "cv", "auto"):
            rs = runs.get((size, method))
            if not rs:
                continue
            n = statistics.median(r["samples"] for r in rs)
            sec = statistics.median(r["seconds"] for r in rs)
            conv = sum(r["converged"] for r in rs)
            name = method if rs[0]["resolved"] == method else f"{method} (= {rs[0]['resolved']})"
            goal, met = "", ""
            if method == "auto":
                t_goal = ESTIMATOR_GOALS["time"].get(size)
                goal = f"samples <= {ESTIMATOR_GOALS['samples']:g}x stratified" + (
                    f"; time >= {t_goal:g}x faithful" if t_goal else "")
                ok = ref_n is not None and n / ref_n <= ESTIMATOR_GOALS["samples"]
                if t_goal:
                    ok = ok and faithful is not None and faithful / sec >= t_goal
                met = "yes" if ok and conv == len(rs) else "**no**"
            lines.append(f"| {size}x{size} | {name} | {len(rs)} | {conv}/{len(rs)} | {n:.0f} "
                         f"({', '.join(str(r['samples']) for r in rs)}) | "
                         f"{'' if ref_n is None else f'{n / ref_n:.2f}x'} | {sec:.0f} | "
                         f"{'' if ref_s is None else f'{ref_s / sec:.2f}x faster'} | "
                         f"{'' if faithful is None else f'{faithful / sec:.1f}x'} | {goal} | {met} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("json", nargs="+", help="one or more pytest-benchmark JSON files (their benchmarks are merged)")
    ap.add_argument("--readme", default=str(Path(__file__).with_name("README.md")))
    args = ap.parse_args()
    runs = [json.loads(Path(p).read_text()) for p in args.json]
    data = runs[0]
    for other in runs[1:]:
        data["benchmarks"] = data["benchmarks"] + other["benchmarks"]
    text = table(data)
    cg = [b["extra_info"] for b in data["benchmarks"] if "rel_residual_ours" in b["extra_info"]]
    if cg:
        c = cg[0]
        text += (f"\n\nPPGD CG after 5 iterations at the same point (exact products for the measurement): relative "
                 f"residual ||g - J^T J x|| / ||g|| fastlpips {c['rel_residual_ours']:.3f} vs perceptual-advex "
                 f"{c['rel_residual_perceptual_advex']:.3f}; CG objective 1/2 x'Ax - g'x {c['cg_objective_ours']:.4g} "
                 f"vs "
                 f"{c['cg_objective_perceptual_advex']:.4g} (lower is better). Both residuals exceed 1: J^T J is "
                 f"ill-conditioned and CG's residual norm is not monotone; 5 iterations solve it only roughly.")
    ep = [b for b in data["benchmarks"] if b["extra_info"].get("provider") == "fastlpips-elpips"]
    if ep:
        b, i = ep[0], ep[0]["extra_info"]
        text += (f"\n\nE-LPIPS-bounded PPGD step (5 CG iterations, {i['samples']} samples per product, {i['images']} "
                 f"images "
                 f"32x32): {b['stats']['median']:.1f} s per step, {1e3 * i['seconds_per_sample_per_step']:.0f} ms per "
                 f"sample; "
                 f"each product runs all samples batched in {i['trunk_passes_per_product']} trunk passes (one per "
                 f"scale "
                 f"level drawn); passes {i['jtj_passes']}.")
    ev = [b["extra_info"] for b in data["benchmarks"] if b["extra_info"].get("provider") == "fastlpips-robust-eval"]
    if ev:
        i = ev[0]
        cells = ", ".join(f"{k} {v:.1f}" for k, v in i["images_per_s"].items())
        acc = ", ".join(f"{k} {100 * v:.0f}%" for k, v in i["accuracy"].items())
        text += (f"\n\nRobust evaluation of the PAT-trained tiny ResNet on {i['images']} validation crops 32x32 "
                 f"(images/s per attack, the model's forward included): {cells}. Accuracies: {acc}.")
    extra = elpips_table(data)
    if extra:
        text += "\n\nE-LPIPS time to a 95% interval of +-2.5% (and +-0.01), per pair set:\n\n" + extra
    readme = Path(args.readme)
    body = readme.read_text() if readme.exists() else ""
    est = estimator_table(data)
    if est:
        body = _replace(body, E_START, E_END, f"{_header(data)}\n\n{est}")
        print(est)
    if any(not b["group"].startswith(("precision ", "estimator ")) for b in data["benchmarks"] if b["group"]):
        body = _replace(body, START, END, text)
        print(text)
    if any(b["group"].startswith("precision ") for b in data["benchmarks"] if b["group"]):
        ptext = table(data, precision=True)
        body = _replace(body, P_START, P_END, ptext)
        print(ptext)
    readme.write_text(body)


def _replace(body, start, end, text):
    """Put ``text`` between the markers (appended with them when absent)."""
    if start not in body:
        body += f"\n{start}\n{end}\n"
    return re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: f"{start}\n{text}\n{end}", body, flags=re.S)


if __name__ == "__main__":
    main()
