"""OpenTelemetry spans per run, LLM call and tool call (the `otel` extra)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SETUP = textwrap.dedent(
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
    """
)

SCRIPT = SETUP + textwrap.dedent(
    """
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
    session = asyncio.run(runtime.run_agent("agent-1", "add", infer))
    for span in exporter.get_finished_spans():
        parent = span.parent.span_id if span.parent else None
        attributes = dict(span.attributes or {})
        assert attributes.pop("session_id", session.session_id) == session.session_id
        print(span.name, attributes, parent is not None, span.status.status_code.name)
    """
)

FAILURES = SETUP + textwrap.dedent(
    """
    @ar.tool
    async def broken() -> int:
        '''Fails.'''
        raise ValueError("tool broke")

    class NoFinal(ar.InMemoryBackend):
        async def batch_save(self, items):
            if any(key.count(":") == 1 for key in items):  # the final record
                raise OSError("disk full")
            await super().batch_save(items)

    replies = iter(["Thought: t\\nAction: broken {}", "Thought: t\\nAction: FINAL_ANSWER no"])

    async def infer(prompt: str) -> str:
        return next(replies)

    runtime = ar.AgentRuntime(ar.AgentConfig(), tools=[broken], checkpoint_backend=NoFinal())
    try:
        asyncio.run(runtime.run_agent("agent-1", "q", infer))
    except ar.PersistenceError:
        pass
    for span in exporter.get_finished_spans():
        print(span.name, span.status.status_code.name, span.status.description or "")
    """
)


def _run(script: str) -> list[str]:
    # A subprocess: the global tracer provider can be set only once per process.
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.splitlines()


def test_spans_for_the_run_each_llm_call_and_each_tool_call() -> None:
    assert _run(SCRIPT) == [
        "agent.llm {} True UNSET",
        "agent.tool {'tool': 'add'} True UNSET",
        "agent.llm {} True UNSET",
        "agent.run {'agent_id': 'agent-1'} False UNSET",
    ]


def test_a_failed_tool_call_and_a_failed_final_checkpoint_mark_their_spans() -> None:
    out = _run(FAILURES)
    assert out[1] == "agent.tool ERROR error: tool broke"  # absorbed into an observation
    assert out[-1].startswith("agent.run ERROR PersistenceError: final checkpoint failed")


def test_no_tracer_without_a_configured_provider() -> None:
    from llm_agent_runtime.runtime import _load_tracer

    # opentelemetry-api is installed, but no SDK provider is set in this process: no spans.
    assert _load_tracer() is None


NATIVE = SETUP + textwrap.dedent(
    """
    from llm_agent_runtime.providers.base import ChatResponse, Usage

    class Eager:
        '''Starts its request when called (a task), as some wrappers do.'''

        def chat(self, messages, tools=None, model=None, **params):
            return asyncio.ensure_future(self.answer())

        async def answer(self):
            print("inside", trace.get_current_span().name)
            return ChatResponse(text="done", usage=Usage(3, 1))

    class FailsAtCall:
        def chat(self, messages, tools=None, model=None, **params):
            raise ar.ProviderError("refused before sending")

    runtime = ar.AgentRuntime(ar.AgentConfig(mode="tools"))
    asyncio.run(runtime.run_agent_with_provider("a", "q", Eager()))
    exporter.clear()
    try:
        asyncio.run(runtime.run_agent_with_provider("a", "q", FailsAtCall()))
    except ar.ProviderError:
        pass
    for span in exporter.get_finished_spans():
        print(span.name, span.status.status_code.name)
    """
)


def test_a_native_model_call_is_made_inside_its_span() -> None:
    # The call was made before the span was entered: work a provider starts when called ran
    # under the run's span, and a call that failed at once left no `agent.llm` span.
    assert _run(NATIVE) == ["inside agent.llm", "agent.llm ERROR", "agent.run ERROR"]


GUARDED = SETUP + textwrap.dedent(
    """
    @ar.tool
    async def add(a: int, b: int) -> int:
        '''Adds.'''
        return a + b

    replies = iter([
        'Thought: t\\nAction: add {"a": 1, "b": 2}',
        'Thought: t\\nAction: dda {"a": 1, "b": 2}',
        "Thought: t\\nAction: FINAL_ANSWER 3",
    ])

    async def infer(prompt: str) -> str:
        return next(replies)

    def deny(session, name, arguments):
        return ar.ApprovalDecision("deny", reason="not today")

    runtime = ar.AgentRuntime(ar.AgentConfig(), tools=[add], approval_handler=deny)
    asyncio.run(runtime.run_agent("agent-1", "add", infer))
    for span in exporter.get_finished_spans():
        if span.name == "agent.tool":
            print(span.name, span.status.status_code.name, span.status.description or "")
    """
)


def test_calls_that_never_run_have_failed_tool_spans_too() -> None:
    """A denied call and a made-up tool name are in the trace, as the calls that ran are."""
    assert _run(GUARDED) == [
        "agent.tool ERROR error: tool call 'add' denied: not today",
        "agent.tool ERROR error: unknown tool 'dda' (known: add)",
    ]


CUT_OFF = SETUP + textwrap.dedent(
    """
    @ar.tool
    async def slow() -> int:
        '''Takes its time.'''
        await asyncio.sleep(10)
        return 1

    async def infer(prompt: str) -> str:
        return "Thought: t\\nAction: slow {}"

    async def hang(prompt: str) -> str:
        await asyncio.sleep(10)
        return "never"

    async def main() -> None:
        timed = ar.AgentRuntime(ar.AgentConfig(loop_timeout_ms=200), tools=[slow])
        try:
            await timed.run_agent("agent-1", "q", infer)
        except ar.AgentLoopError:
            pass
        run = asyncio.ensure_future(ar.AgentRuntime().run_agent("agent-1", "q", hang))
        await asyncio.sleep(0.1)
        run.cancel()
        try:
            await run
        except asyncio.CancelledError:
            pass

    asyncio.run(main())
    for span in exporter.get_finished_spans():
        kind = dict(span.attributes or {}).get("tool.error_kind", "")
        names = [event.name for event in span.events]
        print(span.name, span.status.status_code.name, kind, names)
    """
)


def test_calls_cut_off_by_the_loop_timeout_or_a_cancel_have_failed_spans() -> None:
    # A cancellation is no Exception: OpenTelemetry left such spans successful, while the
    # events and metrics counted the call as failed.
    assert _run(CUT_OFF) == [
        "agent.llm UNSET  []",
        "agent.tool ERROR transient ['exception']",
        "agent.run ERROR  ['exception']",
        "agent.llm ERROR  ['exception']",
        "agent.run ERROR  ['exception']",
    ]


FAILED_RUN_SAVES = SETUP + textwrap.dedent(
    """
    db_tracer = trace.get_tracer("db")

    class Instrumented(ar.InMemoryBackend):
        '''A span per write, as a database driver's instrumentation makes them.'''

        async def batch_save(self, items):
            with db_tracer.start_as_current_span("db.write"):
                return await super().batch_save(items)

    @ar.tool
    async def step() -> int:
        '''A step.'''
        return 1

    replies = iter(['Thought: t\\nAction: step {}'])

    async def infer(prompt: str) -> str:
        try:
            return next(replies)
        except StopIteration:
            raise ar.ProviderError("down") from None

    runtime = ar.AgentRuntime(
        ar.AgentConfig(), tools=[step], checkpoint_backend=Instrumented()
    )
    runtime.events.on(
        lambda event: isinstance(event, ar.ErrorEvent)
        and db_tracer.start_span("on.error").end()
    )
    try:
        asyncio.run(runtime.run_agent("agent-1", "q", infer))
    except ar.ProviderError:
        pass
    spans = exporter.get_finished_spans()
    run = next(span for span in spans if span.name == "agent.run")
    for span in spans:
        if span.name in ("db.write", "on.error"):
            parent = span.parent.span_id if span.parent else None
            print(span.name, parent == run.context.span_id, span.end_time <= run.end_time)
    """
)


def test_a_failed_runs_last_save_and_error_event_are_inside_its_span() -> None:
    # They came after the run's span had ended: a trace of their own, with no parent.
    out = _run(FAILED_RUN_SAVES)
    assert out[-2:] == ["db.write True True", "on.error True True"]
    assert all(line.endswith("True True") for line in out)


LLM_ATTRIBUTES = SETUP + textwrap.dedent(
    """
    from llm_agent_runtime.providers.base import ChatResponse, Usage

    class Provider:
        async def chat(self, messages, tools=None, model=None, **params):
            return ChatResponse(
                text="Thought: t\\nAction: FINAL_ANSWER 3",
                usage=Usage(1234, 56),
                model="gpt-4o-2024-08-06",
            )

    class NoUsage:
        async def chat(self, messages, tools=None, model=None, **params):
            return ChatResponse(text="done")

    async def infer(prompt: str) -> str:
        return "Thought: t\\nAction: FINAL_ANSWER 3"

    for mode, provider in (("tools", Provider()), ("react", Provider()), ("tools", NoUsage())):
        runtime = ar.AgentRuntime(ar.AgentConfig(mode=mode, model="gpt-4o"))
        asyncio.run(runtime.run_agent_with_provider("a", "q", provider))
    asyncio.run(ar.AgentRuntime(ar.AgentConfig()).run_agent("a", "q", infer))
    for span in exporter.get_finished_spans():
        if span.name == "agent.llm":
            print(sorted(dict(span.attributes or {}).items()))
    """
)


def test_llm_spans_name_the_model_and_the_tokens_the_provider_reported() -> None:
    # They had no attributes at all.
    asked = ("gen_ai.request.model", "gpt-4o")
    answered = [
        ("gen_ai.request.model", "gpt-4o"),
        ("gen_ai.response.model", "gpt-4o-2024-08-06"),
        ("gen_ai.usage.input_tokens", 1234),
        ("gen_ai.usage.output_tokens", 56),
    ]
    assert _run(LLM_ATTRIBUTES) == [
        str(answered),  # native tool calls
        str(answered),  # ReAct text through the provider
        str([asked]),  # no usage reported: the run's estimate is not the provider's count
        "[]",  # a plain `infer`, no model configured
    ]


LLM_MODELS = SETUP + textwrap.dedent(
    """
    from llm_agent_runtime.providers.base import ChatResponse, Usage

    class Named:
        model = "qwen3"

        def __init__(self, fails=False):
            self.fails = fails

        async def chat(self, messages, tools=None, model=None, **params):
            if self.fails:
                error = ar.ProviderError("cut off")
                error.usage = Usage(500, 300)
                raise error
            return ChatResponse(text="Thought: t\\nAction: FINAL_ANSWER 3")

    for mode in ("tools", "react"):
        for fails in (False, True):
            runtime = ar.AgentRuntime(ar.AgentConfig(mode=mode))
            try:
                asyncio.run(runtime.run_agent_with_provider("a", "q", Named(fails)))
            except ar.ProviderError:
                pass
    for span in exporter.get_finished_spans():
        if span.name == "agent.llm":
            print(sorted(dict(span.attributes or {}).items()))
    runs = [s for s in exporter.get_finished_spans() if s.name == "agent.run"]
    counted = [s for s in runs if "gen_ai.usage.input_tokens" in (s.attributes or {})]
    print("run spans with tokens:", counted)
    """
)


def test_llm_spans_name_the_providers_model_and_a_failed_calls_billed_tokens() -> None:
    # Only `AgentConfig.model` was named, and only once a call had succeeded: a provider's
    # own model (the README's `OpenAIProvider(model="qwen3")`) and every failed call had none.
    asked = ("gen_ai.request.model", "qwen3")
    billed = [asked, ("gen_ai.usage.input_tokens", 500), ("gen_ai.usage.output_tokens", 300)]
    # The tokens are the call's, not its run's too (spans summed would count them twice).
    assert _run(LLM_MODELS) == [str([asked]), str(billed)] * 2 + ["run spans with tokens: []"]


STREAMED_REACT = SETUP + textwrap.dedent(
    """
    from llm_agent_runtime.providers.base import ChatResponse, StreamEnd, TextDelta, Usage

    class Streams:
        model = "qwen3"

        async def chat(self, messages, tools=None, model=None, **params):
            raise AssertionError("a listened run streams")

        async def chat_stream(self, messages, tools=None, model=None, **params):
            text = "Thought: t\\nAction: FINAL_ANSWER 3"
            for start in range(0, len(text), 8):
                yield TextDelta(text[start : start + 8])
            usage = Usage(1234, 56)
            yield StreamEnd(ChatResponse(text=text, usage=usage, model="qwen3-8b"))

    runtime = ar.AgentRuntime(ar.AgentConfig())
    deltas = []
    runtime.events.on(lambda e: deltas.append(e) if isinstance(e, ar.LlmTextDelta) else None)
    asyncio.run(runtime.run_agent_with_provider("a", "q", Streams()))
    print("deltas:", len(deltas))
    for span in exporter.get_finished_spans():
        if span.name == "agent.llm":
            print(sorted(dict(span.attributes or {}).items()))
    """
)


def test_a_streamed_react_call_names_its_model_and_tokens_on_its_span() -> None:
    assert _run(STREAMED_REACT) == [
        "deltas: 5",
        str(
            [
                ("gen_ai.request.model", "qwen3"),
                ("gen_ai.response.model", "qwen3-8b"),
                ("gen_ai.usage.input_tokens", 1234),
                ("gen_ai.usage.output_tokens", 56),
            ]
        ),
    ]


UNREADABLE = SETUP + textwrap.dedent(
    """
    from llm_agent_runtime.providers.base import ChatResponse, ToolCall, Usage

    @ar.tool
    async def add(a: int, b: int) -> int:
        '''Adds.'''
        return a + b

    class Slipped:
        '''Raises as the built-in providers do for a call whose arguments are not JSON.'''

        calls = 0

        async def chat(self, messages, tools=None, model=None, **params):
            self.calls += 1
            if self.calls > 1:
                return ChatResponse(text="done", usage=Usage(3, 1))
            call = ToolCall("c1", "add", {}, "tool call 'add' arguments are not valid JSON")
            reply = ChatResponse(tool_calls=[call], usage=Usage(50, 20))
            raise ar.UnreadableArgumentsError(reply)

    runtime = ar.AgentRuntime(ar.AgentConfig(mode="tools"), tools=[add])
    asyncio.run(runtime.run_agent_with_provider("a", "q", Slipped()))
    for span in exporter.get_finished_spans():
        usage = span.attributes.get("gen_ai.usage.input_tokens")
        print(span.name, span.status.status_code.name, usage)
    """
)


def test_a_reply_with_a_call_written_wrong_is_a_model_call_that_worked() -> None:
    # The reply was used (and charged): its span says so, with its usage; the call's own
    # span is the failed one.
    assert _run(UNREADABLE) == [
        "agent.llm UNSET 50",
        "agent.tool ERROR None",
        "agent.llm UNSET 3",
        "agent.run UNSET None",
    ]


BAD_STR = SETUP + textwrap.dedent(
    """
    class Denied(ar.PolicyDeniedError):
        def __init__(self, rule=None):
            super().__init__()
            self.rule = rule

        def __str__(self):  # a library's message that reads an attribute left unset
            return "denied by rule " + self.rule["name"]

    def transfer(arguments):
        raise Denied()

    class Interrupt(KeyboardInterrupt):
        def __str__(self):
            raise RuntimeError("no message")

    def stop(arguments):
        raise Interrupt()

    tools = [ar.ToolSpec("transfer", "Moves.", transfer), ar.ToolSpec("stop", "Stops.", stop)]
    runtime = ar.AgentRuntime(tools=tools)
    for name, error in (("transfer", Denied), ("stop", Interrupt)):
        exporter.clear()
        model = ar.ScriptedProvider([f"Thought: go\\nAction: {name} {{}}", "Final Answer: no"])
        try:
            asyncio.run(runtime.run_agent_with_provider("agent-1", "go", model))
        except error:
            print("raised", error.__name__)
        for span in exporter.get_finished_spans():
            if span.name != "agent.llm":
                kinds = [e.attributes["exception.type"] for e in span.events]
                print(span.name, span.status.status_code.name, span.status.description, kinds)
    """
)


def test_an_error_whose_str_raises_stays_the_runs_error_in_a_trace() -> None:
    # OpenTelemetry's recording of the error called its `str`, which raised: the run raised
    # that TypeError (a KeyboardInterrupt: a RuntimeError) in place of the tool's error.
    assert _run(BAD_STR) == [
        "raised Denied",
        "agent.tool ERROR Denied: (its str failed) ['Denied']",
        "agent.run ERROR Denied: (its str failed) ['Denied']",
        "raised Interrupt",
        "agent.tool ERROR Interrupt ['Interrupt']",
        "agent.run ERROR Interrupt ['Interrupt']",
    ]


DEADLINE_MID_STREAM = SETUP + textwrap.dedent(
    """
    import time

    from llm_agent_runtime.providers.base import ChatResponse, StreamEnd, TextDelta

    class Slow:
        '''A model whose stream computes in the loop's thread, past the run's deadline.'''

        async def chat(self, messages, tools=None, model=None, **params):
            return ChatResponse(text="hi")

        async def chat_stream(self, messages, tools=None, model=None, **params):
            for i in range(10):
                time.sleep(0.02)
                yield TextDelta(text=f"w{i} ")
            yield StreamEnd(response=ChatResponse(text="done"))

    for mode in ("tools", "react"):
        runtime = ar.AgentRuntime(ar.AgentConfig(mode=mode, loop_timeout_ms=50))
        runtime.events.on(lambda event: None)  # listened to: the reply is streamed
        try:
            asyncio.run(runtime.run_agent_with_provider("a", "q", Slow()))
        except ar.AgentLoopError as error:
            print(error)
    for span in exporter.get_finished_spans():
        events = [(e.name, dict(e.attributes or {}).get("exception.type")) for e in span.events]
        print(span.name, span.status.status_code.name, span.status.description, events)
    """
)


def test_a_deadline_passed_mid_stream_is_said_as_the_runs_timeout_on_its_span() -> None:
    # The span named a private class (`_DeadlinePassed: `, an exception event of its type).
    lines = _run(DEADLINE_MID_STREAM)
    llm = [line for line in lines if line.startswith("agent.llm")]
    assert llm == ["agent.llm ERROR the run's loop_timeout_ms passed []"] * 2
    assert lines[0].startswith("agent loop timed out after 50 ms")


TRACING_SWITCHED_ON_MID_RUN = SETUP.replace("trace.set_tracer_provider(provider)", "") + (
    textwrap.dedent(
        """
        from llm_agent_runtime.providers.base import ChatResponse, ToolCall

        @ar.tool
        async def wait() -> str:
            '''Waits.'''
            inside.set()
            await go.wait()
            return "ok"

        def calls(name):
            return ChatResponse(tool_calls=[ToolCall("c1", name, {})])

        async def main():
            global go, inside
            go, inside = asyncio.Event(), asyncio.Event()
            runtime = ar.AgentRuntime(ar.AgentConfig(mode="tools"), tools=[wait])
            first = asyncio.ensure_future(
                runtime.run_agent_with_provider(
                    "A", "q", ar.ScriptedProvider([calls("wait"), calls("wait"), "done A"])
                )
            )
            await inside.wait()  # the first run waits in its tool
            trace.set_tracer_provider(provider)  # the application switches tracing on now
            await runtime.run_agent_with_provider("B", "q", ar.ScriptedProvider(["done B"]))
            go.set()
            await first
            for span in exporter.get_finished_spans():
                agent = dict(span.attributes or {}).get("agent_id", "")
                print(span.name, agent, span.parent is not None)

        asyncio.run(main())
        """
    )
)


def test_a_run_started_before_tracing_was_switched_on_makes_no_orphan_spans() -> None:
    # The first run's later calls were spans of traces of their own, with no parent.
    assert _run(TRACING_SWITCHED_ON_MID_RUN) == ["agent.llm  True", "agent.run B False"]


RESUME_CLOSING = SETUP + textwrap.dedent(
    """
    db = trace.get_tracer("db")

    class NoFinal(ar.InMemoryBackend):
        failing = True

        async def batch_save(self, items):
            with db.start_as_current_span("db.write"):
                if self.failing and any(key.count(":") == 1 for key in items):  # final record
                    raise OSError("disk full")
                await super().batch_save(items)

    backend = NoFinal()
    runtime = ar.AgentRuntime(ar.AgentConfig(mode="tools"), checkpoint_backend=backend)
    session = runtime.create_session("a", "s")
    try:
        asyncio.run(runtime.run_turn(session, "q", ar.ScriptedProvider(["answer"])))
    except ar.PersistenceError:
        pass
    for failing in (True, False):  # the answered run is closed: first failing again, then not
        backend.failing = failing
        exporter.clear()
        try:
            asyncio.run(runtime.resume("s", ar.ScriptedProvider(["unused"])))
        except ar.PersistenceError:
            pass
        for span in exporter.get_finished_spans():
            attributes = dict(span.attributes or {})
            print(span.name, span.parent is not None, span.status.status_code.name, attributes)
    """
)


def test_a_resume_closing_an_answered_run_is_a_run_span() -> None:
    # Its writes, and its failure, were outside any run span.
    lines = _run(RESUME_CLOSING)
    run = "{'agent_id': 'a', 'session_id': 's'}"
    assert lines == [
        "db.write True ERROR {}",
        f"agent.run False ERROR {run}",
        "db.write True UNSET {}",
        f"agent.run False UNSET {run}",
    ]


WRONG_REPLIES = SETUP + textwrap.dedent(
    """
    from llm_agent_runtime.providers.base import ChatResponse

    class Wrong:
        async def chat(self, messages, tools=None, model=None, **params):
            return {"text": "done"}

    class WrongUsage:
        async def chat(self, messages, tools=None, model=None, **params):
            response = ChatResponse(text="done")
            object.__setattr__(response, "usage", "many")  # set wrong after it was built
            return response

    async def nothing(prompt):
        return None

    for mode in ("tools", "react"):
        runtime = ar.AgentRuntime(ar.AgentConfig(mode=mode))
        try:
            asyncio.run(runtime.run_agent_with_provider("a", "q", Wrong()))
        except ar.AgentLoopError:
            pass
    try:
        asyncio.run(ar.AgentRuntime().run_agent("a", "q", nothing))
    except ar.AgentLoopError:
        pass
    try:
        runtime = ar.AgentRuntime(ar.AgentConfig(mode="tools"))
        asyncio.run(runtime.run_agent_with_provider("a", "q", WrongUsage()))
    except ar.AgentLoopError:
        pass
    for span in exporter.get_finished_spans():
        print(span.name, span.status.status_code.name, span.status.description)
    """
)


def test_a_reply_of_the_wrong_type_fails_its_llm_span() -> None:
    # In tools mode and from a plain `infer`, the call's span said it worked.
    chat = "AgentLoopError: the provider's chat must return a ChatResponse, got dict"
    text = "AgentLoopError: the model's reply must be a str, got None"
    usage = "AgentLoopError: the provider's reply: usage must be a Usage, got str"
    assert _run(WRONG_REPLIES) == [
        f"agent.llm ERROR {chat}",
        f"agent.run ERROR {chat}",
        f"agent.llm ERROR {chat}",
        f"agent.run ERROR {chat}",
        f"agent.llm ERROR {text}",
        f"agent.run ERROR {text}",
        f"agent.llm ERROR {usage}",
        f"agent.run ERROR {usage}",
    ]
