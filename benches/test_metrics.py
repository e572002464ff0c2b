"""Counter increments: ours vs prometheus_client, plain and per tool."""

from __future__ import annotations

from typing import Any

import pytest

import llm_agent_runtime as ar

N_INCREMENTS = 100_000


def _plain(lib: str) -> tuple[Any, Any]:
    """Returns (increment function, read-back of the count) for one library."""
    if lib == "llm_agent_runtime":
        m = ar.RuntimeMetrics()
        return m.record_step, lambda: m.snapshot().total_steps
    from prometheus_client import CollectorRegistry, Counter

    c = Counter("steps", "steps", registry=CollectorRegistry())
    return c.inc, lambda: int(c._value.get())


def _per_tool(lib: str) -> tuple[Any, Any]:
    if lib == "llm_agent_runtime":
        m = ar.RuntimeMetrics()
        return (lambda: m.record_tool_call("search")), (
            lambda: m.snapshot().tool_call_count("search")
        )
    from prometheus_client import CollectorRegistry, Counter

    c = Counter("tool_calls", "tool calls", ["tool"], registry=CollectorRegistry())
    return (lambda: c.labels(tool="search").inc()), (
        lambda: int(c.labels(tool="search")._value.get())
    )


@pytest.mark.parametrize("lib", ["llm_agent_runtime", "prometheus-client"])
@pytest.mark.parametrize("kind", ["increment", "per-tool increment"])
def test_increment(benchmark: Any, lib: str, kind: str) -> None:
    inc, read = (_plain if kind == "increment" else _per_tool)(lib)
    benchmark.group = f"metrics: {N_INCREMENTS:,} x {kind}"

    def run() -> None:
        for _ in range(N_INCREMENTS):
            inc()

    benchmark.pedantic(run, rounds=7, iterations=1, warmup_rounds=1)
    benchmark.extra_info["lib"] = lib
    benchmark.extra_info["correct"] = read() == N_INCREMENTS * 8
    benchmark.extra_info["ns_per_increment"] = round(
        benchmark.stats.stats.median / N_INCREMENTS * 1e9, 1
    )
