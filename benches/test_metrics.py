"""Counter increments: ours vs prometheus_client, plain and per tool."""

from __future__ import annotations

from typing import Any

import pytest

import llm_agent_runtime as ar

N_INCREMENTS = 100_000
PROM = "prometheus-client"
"""Its labels() looked up at each call, as our tool name is: the row the target names."""
PROM_CHILD = "prometheus-client (child kept)"
"""Its labelled child looked up once and kept, as many of its users write it (informational)."""


def _plain(lib: str) -> tuple[Any, Any]:
    """Returns (increment function, read-back of the count) for one library."""
    if lib == "llm_agent_runtime":
        m = ar.RuntimeMetrics()
        return m.record_step, lambda: m.snapshot().total_steps
    from prometheus_client import CollectorRegistry, Counter

    c = Counter("steps", "steps", registry=CollectorRegistry())
    return c.inc, lambda: int(c._value.get())


def _per_tool(lib: str) -> tuple[Any, Any]:
    """The same for one tool's counter."""
    if lib == "llm_agent_runtime":
        m = ar.RuntimeMetrics()
        return (lambda: m.record_tool_call("search")), (
            lambda: m.snapshot().tool_call_count("search")
        )
    from prometheus_client import CollectorRegistry, Counter

    c = Counter("tool_calls", "tool calls", ["tool"], registry=CollectorRegistry())
    read = lambda: int(c.labels("search")._value.get())  # noqa: E731
    if lib == PROM_CHILD:
        return c.labels("search").inc, read
    # Positional labels: its faster form (keywords are matched to label names first).
    return (lambda: c.labels("search").inc()), read


CASES = [
    ("increment", "llm_agent_runtime"),
    ("increment", PROM),
    ("per-tool increment", "llm_agent_runtime"),
    ("per-tool increment", PROM),
    ("per-tool increment", PROM_CHILD),
]


@pytest.mark.parametrize(("kind", "lib"), CASES)
def test_increment(benchmark: Any, kind: str, lib: str) -> None:
    inc, read = (_plain if kind == "increment" else _per_tool)(lib)
    benchmark.group = f"metrics: {N_INCREMENTS:,} x {kind}"

    rounds_run = 0  # the warm-up's included; one round under --benchmark-disable

    def run() -> None:
        nonlocal rounds_run
        rounds_run += 1
        for _ in range(N_INCREMENTS):
            inc()

    benchmark.pedantic(run, rounds=7, iterations=1, warmup_rounds=1)
    benchmark.extra_info["lib"] = lib
    benchmark.extra_info["correct"] = rounds_run > 0 and read() == N_INCREMENTS * rounds_run
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["ns_per_increment"] = round(
            benchmark.stats.stats.median / N_INCREMENTS * 1e9, 1
        )
