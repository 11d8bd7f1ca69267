"""Turn one pytest-benchmark JSON run into Markdown tables for RESULTS.md.

Usage: ``python benchmarks/summarize.py results.json`` (prints Markdown). Every figure and
every ratio comes from the same run, so machine noise affects all sides alike.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def summarize(path: str) -> str:
    with open(path) as f:
        run = json.load(f)
    info = run.get("machine_info", {})
    lines = [
        f"Run of {run.get('datetime', '?')}: {info.get('cpu', {}).get('brand_raw', '?')}, "
        f"{info.get('cpu', {}).get('count', '?')} CPUs, Python {info.get('python_version', '?')}.",
        "",
    ]
    groups: dict[str, list[dict]] = defaultdict(list)
    for bench in run["benchmarks"]:
        groups[bench["fullname"].split("::")[0]].append(bench)
    for module, benches in sorted(groups.items()):
        lines += [f"### {module}", "", "| case | median (s) | MB/s | other figures |", "|---|---|---|---|"]
        for bench in benches:
            extra = dict(bench.get("extra_info", {}))
            mbs = extra.pop("MB/s", "")
            other = "; ".join(f"{k} {_fmt(v)}" for k, v in extra.items())
            lines.append(f"| {bench['name']} | {bench['stats']['median']:.4f} | {_fmt(mbs)} | {other} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(summarize(sys.argv[1]))
