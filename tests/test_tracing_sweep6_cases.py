"""OpenTelemetry spans: their tree in parallel and concurrent runs, and when tracing is off."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

PROVIDER = textwrap.dedent(
    """
    import asyncio
    import logging
    import time

    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    import llm_agent_runtime as ar

    def install():
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        return exporter

    def calls(*named):
        return ar.ScriptedProvider.tool_call_reply([(name, {}) for name in named])
    """
)


def _run(script: str, **env: str) -> list[str]:
    # A subprocess: the global tracer provider can be set only once per process.
    return subprocess.run(
        [sys.executable, "-c", PROVIDER + textwrap.dedent(script)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **env},
    ).stdout.splitlines()


def test_a_tracer_provider_set_after_the_runtime_is_built_traces_its_next_runs() -> None:
    # The runtime looked for a tracer once, when built: one built at import, before the
    # application configured OpenTelemetry (in its `main`), never made a span.
    out = _run(
        """
        @ar.tool
        async def ping() -> str:
            '''Pings.'''
            return "pong"

        runtime = ar.AgentRuntime(ar.AgentConfig(mode="tools"), tools=[ping])
        asyncio.run(runtime.run_agent_with_provider("a", "q", ar.ScriptedProvider(["x"])))
        exporter = install()
        model = ar.ScriptedProvider([calls("ping"), "done"])
        asyncio.run(runtime.run_agent_with_provider("a", "q", model))
        for span in exporter.get_finished_spans():
            print(span.name, span.parent is not None)
        """
    )
    assert out == ["agent.llm True", "agent.tool True", "agent.llm True", "agent.run False"]


def test_a_disabled_sdk_costs_no_span_per_step() -> None:
    # `OTEL_SDK_DISABLED=true` makes the SDK's provider hand out no-op tracers: each step
    # still paid for no-op spans (a 10-step run took ~3x as long), which the runtime skips
    # for a no-op provider.
    out = _run(
        """
        started = []
        start = trace.NoOpTracer.start_as_current_span

        def counted(self, *args, **kwargs):
            started.append(args[0])
            return start(self, *args, **kwargs)

        trace.NoOpTracer.start_as_current_span = counted
        install()
        runtime = ar.AgentRuntime(ar.AgentConfig(mode="tools"))
        asyncio.run(runtime.run_agent_with_provider("a", "q", ar.ScriptedProvider(["x"])))
        print(started)
        """,
        OTEL_SDK_DISABLED="true",
    )
    assert out == ["[]"]


def test_parallel_sync_and_concurrent_runs_keep_their_own_span_trees() -> None:
    # Each run's model and tool spans are children of its own run span: sync tools (in a
    # worker thread, with and without a timeout) and a parallel round's calls included,
    # with two runs at once on one runtime; the tools' own spans are children of theirs.
    # No attribute is one OpenTelemetry drops (it would log a warning).
    out = _run(
        """
        warnings = []
        logging.getLogger("opentelemetry").addHandler(
            type("H", (logging.Handler,), {"emit": lambda self, r: warnings.append(r)})()
        )
        exporter = install()
        tracer = trace.get_tracer("tools")

        @ar.tool
        async def fetch() -> int:
            '''Async.'''
            with tracer.start_as_current_span("inner"):
                await asyncio.sleep(0.02)
            return 1

        @ar.tool
        def compute() -> int:
            '''Sync, in a thread.'''
            with tracer.start_as_current_span("inner"):
                time.sleep(0.02)
            return 2

        @ar.tool(timeout=5)
        def pooled() -> int:
            '''Sync, on the worker pool.'''
            with tracer.start_as_current_span("inner"):
                time.sleep(0.02)
            return 3

        config = ar.AgentConfig(mode="tools", max_parallel_tool_calls=4)
        runtime = ar.AgentRuntime(config, tools=[fetch, compute, pooled])

        async def main():
            round_ = calls("fetch", "compute", "pooled", "nope")
            await asyncio.gather(*(
                runtime.run_agent_with_provider(f"agent-{n}", "q", ar.ScriptedProvider(
                    [round_, round_, "done"]
                ))
                for n in range(2)
            ))

        asyncio.run(main())
        spans = exporter.get_finished_spans()
        by_id = {span.context.span_id: span for span in spans}
        runs = {}
        for span in spans:
            if span.name == "agent.run":
                runs[span.context.span_id] = span.attributes["agent_id"]
        counts = {}
        for span in spans:
            if span.name == "agent.run":
                continue
            parent = by_id[span.parent.span_id]
            if span.name == "inner":
                assert parent.name == "agent.tool", parent.name
                parent = by_id[parent.parent.span_id]
            assert parent.context.span_id in runs, parent.name
            assert span.context.trace_id == parent.context.trace_id
            key = (runs[parent.context.span_id], span.name, span.status.status_code.name)
            counts[key] = counts.get(key, 0) + 1
        for key in sorted(counts):
            print(*key, counts[key])
        print("warnings", len(warnings))
        """
    )
    assert out == [
        *(
            line
            for agent in ("agent-0", "agent-1")
            for line in (
                f"{agent} agent.llm UNSET 3",
                f"{agent} agent.tool ERROR 2",  # the unknown tool's
                f"{agent} agent.tool UNSET 6",
                f"{agent} inner UNSET 6",
            )
        ),
        "warnings 0",
    ]
