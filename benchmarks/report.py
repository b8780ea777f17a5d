"""Turn a pytest-benchmark JSON into the same-run ratio table of benchmarks/README.md.

Usage: python benchmarks/report.py benchmarks/results/latest.json [--readme benchmarks/README.md]
Ratios are reference median / fastlpips median, from the same run on the same machine; the
goals come from the issues and are checked here, not in the tests (machines are noisy).
"""
import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

# group prefix -> goal (minimum ratio vs the reference), from issue 2's acceptance list
GOALS = {"forward ": 1.2, "forward+backward ": 1.1, "all-pairs ": 10.0}
START, END = "<!-- results:start -->", "<!-- results:end -->"


def goal_for(group):
    best = None
    for prefix, g in GOALS.items():
        if group.startswith(prefix) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, g)
    return best[1] if best else None


def table(data):
    by_group = defaultdict(dict)
    for b in data["benchmarks"]:
        by_group[b["group"]][b["extra_info"]["provider"]] = b
    lines = ["| benchmark | lpips 0.1.4 median | fastlpips median | ratio | goal | met |",
             "|---|---|---|---|---|---|"]
    for group in sorted(by_group, key=lambda g: (g.split()[0], g)):
        entry = by_group[group]
        if {"lpips", "fastlpips"} - set(entry):
            continue
        ref, ours = entry["lpips"]["stats"], entry["fastlpips"]["stats"]
        ratio = ref["median"] / ours["median"]
        goal = goal_for(group)
        met = "" if goal is None else ("yes" if ratio >= goal else "**no**")
        lines.append(f"| {group} | {ref['median'] * 1e3:.1f} ms (IQR {ref['iqr'] * 1e3:.1f}) | "
                     f"{ours['median'] * 1e3:.1f} ms (IQR {ours['iqr'] * 1e3:.1f}) | {ratio:.2f}x | "
                     f"{'' if goal is None else f'>= {goal:g}x'} | {met} |")
    m = data.get("machine_info", {})
    cpu = m.get("cpu", {}).get("brand_raw", "?")
    head = (f"Run of {data.get('datetime', '?')[:19]} on {cpu}, {m.get('cpu_count', '?')} cores, torch "
            f"{m.get('torch', '?')} ({m.get('torch_threads', '?')} threads), python {m.get('python_version', '?')}.")
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
