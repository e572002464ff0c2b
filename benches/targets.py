"""Speed targets the issues set, checked by report.py against one run's medians."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

OURS = "llm_agent_runtime"
"""The `extra_info["lib"]` value of our own benchmarks."""


@dataclass(frozen=True)
class Target:
    """`peer` in `group` must take at least `min_ratio` times our median."""

    description: str
    group: str
    peer: str
    min_ratio: float

    def evaluate(self, groups: dict[str, dict[str, dict[str, Any]]]) -> tuple[str, str]:
        """Returns (measured ratio, 'yes' / 'NO' / 'not measured')."""
        rows = groups.get(self.group, {})
        if OURS not in rows or self.peer not in rows:
            return "—", "not measured"
        ratio = rows[self.peer]["median"] / rows[OURS]["median"]
        ok = ratio >= self.min_ratio and rows[OURS]["correct"]
        return f"{ratio:.2f}x (need {self.min_ratio:g}x)", "yes" if ok else "NO"


TARGETS: list[Target] = [
    # Each capability appends its targets here.
]
