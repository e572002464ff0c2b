"""OpenTelemetry spans per run, LLM call and tool call (the `otel` extra)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import asyncio

    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    import llm_agent_runtime as ar

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)

    @ar.tool
    async def add(a: int, b: int) -> int:
        '''Adds.'''
        return a + b

    replies = iter([
        'Thought: t\\nAction: add {"a": 1, "b": 2}',
        "Thought: t\\nAction: FINAL_ANSWER 3",
    ])

    async def infer(prompt: str) -> str:
        return next(replies)

    runtime = ar.AgentRuntime(ar.AgentConfig(), tools=[add])
    asyncio.run(runtime.run_agent("agent-1", "add", infer))
    for span in exporter.get_finished_spans():
        parent = span.parent.span_id if span.parent else None
        print(span.name, dict(span.attributes or {}), parent is not None)
    """
)


def test_spans_for_the_run_each_llm_call_and_each_tool_call() -> None:
    # A subprocess: the global tracer provider can be set only once per process.
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out == [
        "agent.llm {} True",
        "agent.tool {'tool': 'add'} True",
        "agent.llm {} True",
        "agent.run {'agent_id': 'agent-1'} False",
    ]


def test_no_tracer_without_a_configured_provider() -> None:
    from llm_agent_runtime.runtime import _load_tracer

    # opentelemetry-api is installed, but no SDK provider is set in this process: no spans.
    assert _load_tracer() is None
