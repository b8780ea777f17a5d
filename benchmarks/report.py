"""Turn a pytest-benchmark JSON into the same-run ratio tables of benchmarks/README.md.

Usage: python benchmarks/report.py benchmarks/results/latest.json [--readme benchmarks/README.md]
Ratios are baseline median / provider median, from the same run on the same machine; the goals
come from the issues and are checked here, not in the tests (machines are noisy).
"""
import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

START, END = "<!-- results:start -->", "<!-- results:end -->"
BASELINES = ("lpips", "reference")

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
    (r"^head forward\+backward .*\[cpu\]", "cpp", 2.0),
]


def goal_for(group, provider):
    for pattern, prov, g in GOALS:
        if prov == provider and re.search(pattern, group):
            return g
    return None


def _ms(stats):
    return f"{stats['median'] * 1e3:.1f} ms (IQR {stats['iqr'] * 1e3:.1f})"


def table(data):
    by_group = defaultdict(dict)
    for b in data["benchmarks"]:
        by_group[b["group"]][b["extra_info"]["provider"]] = b
    lines = ["| benchmark | baseline | provider | median | vs baseline | goal | met | notes |",
             "|---|---|---|---|---|---|---|---|"]
    for group in sorted(by_group):
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
                notes.append(f"max rel. error {100 * info['max_rel_error_real_pairs']:.2f}% on {info['real_pairs']} real pairs")
            if prov == "fastlpips" and "trunk-only" in entry:
                notes.append(f"{b['stats']['median'] / entry['trunk-only']['stats']['median']:.3f}x the trunk alone")
            if "gbytes_per_s" in info and info.get("device") == "cuda":
                notes.append(f"{info['gbytes_per_s']:.0f} GB/s")
            lines.append(f"| {group} | {base_name} | {prov} | {_ms(b['stats'])} | {ratio:.2f}x | "
                         f"{'' if goal is None else f'>= {goal:g}x'} | {met} | {'; '.join(notes)} |")
    m = data.get("machine_info", {})
    cpu = m.get("cpu", {}).get("brand_raw", "?")
    head = (f"Run of {data.get('datetime', '?')[:19]} on {cpu}, {m.get('cpu_count', '?')} cores, torch "
            f"{m.get('torch', '?')} ({m.get('torch_threads', '?')} threads), python {m.get('python_version', '?')}, "
            f"CUDA device: {m.get('cuda', False)}.")
    return head + "\n\n" + "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("json")
    ap.add_argument("--readme", default=str(Path(__file__).with_name("README.md")))
    args = ap.parse_args()
    data = json.loads(Path(args.json).read_text())
    text = table(data)
    readme = Path(args.readme)
    body = readme.read_text() if readme.exists() else f"{START}\n{END}\n"
    if START not in body:
        body += f"\n{START}\n{END}\n"
    body = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: f"{START}\n{text}\n{END}", body, flags=re.S)
    readme.write_text(body)
    print(text)


if __name__ == "__main__":
    main()
