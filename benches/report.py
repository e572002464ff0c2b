"""Turns a pytest-benchmark JSON file into median tables with ratios, and checks targets.

Usage: python benches/report.py RESULTS.json RESULTS.md

Each benchmark records `extra_info["lib"]` (who ran) and `extra_info["correct"]` (whether its
answer matched the reference); `benchmark.group` names the dataset. Ratios are
`peer median / our median`, so a ratio above 1 means we are faster. Wrong answers, and
answers never checked (no `correct` recorded), are reported but left out of the ratios.
"""

from __future__ import annotations

import json
import platform
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from targets import OURS, TARGETS


def fmt_time(seconds: float) -> str:
    """Formats a duration with a unit that keeps 3-4 significant digits."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        # Compared once rounded: 999.7 ms is "1 s", not "1e+03 ms".
        if float(f"{seconds / scale:.3g}") >= 1.0:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def load(
    path: Path,
) -> tuple[dict[str, dict[str, dict[str, Any]]], dict[str, Any], dict[str, Any]]:
    """Returns {group: {lib: row}}, the machine info and the commit info of a
    pytest-benchmark JSON file."""
    data = json.loads(path.read_text())
    groups: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for bench in data["benchmarks"]:
        info = bench.get("extra_info", {})
        lib = info.get("lib", bench["name"])
        # Benchmarks of one group may time different amounts of work (`units`, e.g. steps);
        # medians are then compared per unit.
        units = info.get("units", 1)
        groups[bench["group"] or bench["name"]][lib] = {
            "median": bench["stats"]["median"] / units,
            "rounds": bench["stats"]["rounds"],
            # Correctness never recorded is not vouched for: "NO", and out of the ratios.
            "correct": info.get("correct", False),
            "notes": {k: v for k, v in info.items() if k not in ("lib", "correct", "units")},
        }
    return groups, data.get("machine_info", {}), data.get("commit_info") or {}


def commit_line(commit: dict[str, Any]) -> str:
    """`Commit: <short id>` (with `(dirty)` for uncommitted changes), or "" without an id."""
    if not commit.get("id"):
        return ""
    return f" Commit: {commit['id'][:12]}{' (dirty)' if commit.get('dirty') else ''}."


def render(
    groups: dict[str, dict[str, dict[str, Any]]],
    machine: dict[str, Any],
    commit: dict[str, Any] | None = None,
) -> str:
    """Renders the Markdown report: one table per group, then the targets."""
    lines = [
        "# Benchmark results",
        "",
        "Medians of several rounds, all libraries measured side by side in one run on the same "
        "data. `ratio` = peer median / our median (above 1: we are faster). Absolute times on "
        "a shared machine are noise; ratios within one run are not.",
        "",
        # With the commit measured, so a table can be traced back to its code.
        f"Machine: {machine.get('cpu', {}).get('brand_raw', platform.processor())}, "
        f"{machine.get('cpu', {}).get('count', '?')} cores, Python "
        f"{machine.get('python_version', platform.python_version())}." + commit_line(commit or {}),
        "",
    ]
    for group in sorted(groups):
        rows = groups[group]
        ours = rows.get(OURS)
        lines += [
            f"## {group}",
            "",
            "| library | median | ratio | correct | notes |",
            "|---|---|---|---|---|",
        ]
        for lib, row in sorted(rows.items(), key=lambda kv: kv[1]["median"]):
            ratio = "—"
            if ours and lib != OURS and row["correct"] and ours["correct"]:
                ratio = f"{row['median'] / ours['median']:.2f}x"
            notes = ", ".join(f"{k}={v}" for k, v in sorted(row["notes"].items()))
            name = f"**{lib}**" if lib == OURS else lib
            lines.append(
                f"| {name} | {fmt_time(row['median'])} | {ratio} | "
                f"{'yes' if row['correct'] else 'NO'} | {notes} |"
            )
        lines.append("")
    lines += ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
    for target in TARGETS:
        measured, met = target.evaluate(groups)
        lines.append(f"| {target.description} | {measured} | {met} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    """Reads the JSON named on the command line, prints the report and writes it."""
    src, dst = Path(sys.argv[1]), Path(sys.argv[2])
    groups, machine, commit = load(src)
    text = render(groups, machine, commit)
    dst.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
