"""Event streams ended while runs on other threads emit, async callback failures, approvals."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

import llm_agent_runtime as ar
from llm_agent_runtime.providers.offline import ScriptedProvider


@ar.tool
def add(a: int, b: int) -> int:
    """Adds."""
    return a + b


async def _waiting_reader(stream: ar.Subscription) -> asyncio.Task[list[ar.Event]]:
    """A task iterating `stream`, once it waits for the first event on this loop."""

    async def read() -> list[ar.Event]:
        return [event async for event in stream]

    task = asyncio.create_task(read())
    await asyncio.sleep(0.01)
    return task


@pytest.mark.parametrize("max_buffered", [None, 1, 5])
async def test_close_keeps_an_event_another_thread_emitted_before_it(
    max_buffered: int | None,
) -> None:
    # A run on a worker thread hands its event to the reader's loop; `close()` on that loop
    # right after must not overtake it: the reader gets the event, then its iteration ends
    # (it used to lose the event, and with `max_buffered=1` push the end out and hang).
    bus = ar.EventBus()
    stream = bus.subscribe(max_buffered=max_buffered)
    reader = await _waiting_reader(stream)
    event = ar.RunStarted("s", "a", "p")
    emitter = threading.Thread(target=bus.emit, args=(event,))
    emitter.start()
    emitter.join()  # emitted, its hand-over not yet run by this (blocked) loop
    bus.close()
    assert await asyncio.wait_for(reader, 2) == [event]
    assert stream.dropped == 0


async def test_an_event_arriving_after_the_end_does_not_push_the_end_out() -> None:
    # A run's fan-out that took the queue just before `close()` cleared the subscribers puts
    # its event after the end: it is not read, and the end stays (no hang, nothing dropped).
    bus = ar.EventBus()
    stream = bus.subscribe(max_buffered=1)
    reader = await _waiting_reader(stream)
    queue = stream._queue
    assert queue is not None
    bus.close()
    late = threading.Thread(target=queue.put_nowait, args=(ar.RunStarted("s", "a", "p"),))
    late.start()
    late.join()
    assert await asyncio.wait_for(reader, 2) == []
    assert stream.dropped == 0


def _callback_failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "llm_agent_runtime" and "async event callback failed" in r.getMessage()
    ]


async def test_an_async_callback_failing_after_a_cancelled_run_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A cancelled run does not wait for its callbacks; one that then fails is still logged
    # (logger `llm_agent_runtime`), not left to asyncio's "never retrieved" at collection.
    caplog.set_level(logging.ERROR, "llm_agent_runtime")
    rt = ar.AgentRuntime()

    async def failing(event: ar.Event) -> None:
        await asyncio.sleep(0.01)
        raise RuntimeError(f"failed on {type(event).__name__}")

    rt.events.on(failing)
    model_called = asyncio.Event()

    async def infer(prompt: str) -> str:
        model_called.set()
        await asyncio.sleep(10)
        return "Action: FINAL_ANSWER 1"

    run = asyncio.create_task(rt.run_agent("a", "q", infer, session=rt.create_session("a", "s")))
    await model_called.wait()
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    await asyncio.sleep(0.05)
    assert sorted(_callback_failures(caplog)) == [
        "an async event callback failed on ErrorEvent of session s: "
        "RuntimeError('failed on ErrorEvent')",
        "an async event callback failed on RunStarted of session s: "
        "RuntimeError('failed on RunStarted')",
    ]


async def test_an_async_callback_failing_is_logged_once_by_a_finished_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, "llm_agent_runtime")
    rt = ar.AgentRuntime()

    async def failing(event: ar.Event) -> None:
        if isinstance(event, ar.RunFinished):
            raise RuntimeError("failed")

    rt.events.on(failing)

    async def infer(prompt: str) -> str:
        return "Action: FINAL_ANSWER 1"

    session = await rt.run_agent("a", "q", infer)
    assert session.final_answer == "1"
    assert _callback_failures(caplog) == [
        f"an async event callback failed on RunFinished of session {session.session_id}: "
        "RuntimeError('failed')"
    ]


async def test_a_parallel_round_approved_denied_and_edited_into_invalid_arguments() -> None:
    # Each call of the round is asked about before any runs; a denial and an edit the tool
    # refuses are observations (`permanent`) like a model's bad call, each start finished.
    async def handler(
        session: ar.AgentSession, tool: str, arguments: dict[str, int]
    ) -> ar.ApprovalDecision:
        if arguments["a"] == 2:
            return ar.ApprovalDecision("deny", reason="not two")
        if arguments["a"] == 3:
            return ar.ApprovalDecision("edit", arguments={"a": "three", "b": 1})
        return ar.ApprovalDecision("approve")

    rt = ar.AgentRuntime(ar.AgentConfig(mode="tools"), tools=[add], approval_handler=handler)
    seen: list[ar.Event] = []
    rt.events.on(seen.append)
    calls = [("add", {"a": n, "b": 1}) for n in (1, 2, 3)]
    provider = ScriptedProvider([ScriptedProvider.tool_call_reply(calls), "done"])
    session = await rt.run_agent_with_provider("a", "q", provider)
    steps = session.steps[:3]
    assert [(s.action_input, s.error_kind) for s in steps] == [
        ({"a": 1, "b": 1}, None),
        ({"a": 2, "b": 1}, "permanent"),
        ({"a": "three", "b": 1}, "permanent"),
    ]
    assert steps[0].observation == "2"
    assert steps[1].observation == "error: tool call 'add' denied: not two"
    assert steps[2].observation.startswith("error: invalid arguments: a:")
    started = {e.step: e.arguments for e in seen if isinstance(e, ar.ToolCallStarted)}
    finished = {e.step: e.error_kind for e in seen if isinstance(e, ar.ToolCallFinished)}
    assert started == {i: s.action_input for i, s in enumerate(steps)}
    assert finished == {i: s.error_kind for i, s in enumerate(steps)}
    kinds = [type(e).__name__ for e in seen]
    assert kinds[:2] == ["RunStarted", "LlmResponse"]
    assert kinds[-3:] == ["LlmTextDelta", "LlmResponse", "RunFinished"]


@pytest.mark.parametrize("mode", ["react", "tools"])
async def test_text_deltas_carry_the_models_text_and_the_response_the_rewrite(mode: str) -> None:
    # As `Middleware.on_post_llm` documents: a redacting hook does not redact text deltas.
    class Redact(ar.Middleware):
        def on_post_llm(self, session: ar.AgentSession, text: str) -> str:
            return text.replace("secret", "[redacted]")

    reply = "Thought: t\nAction: FINAL_ANSWER the secret" if mode == "react" else "the secret"
    runtime = ar.AgentRuntime(ar.AgentConfig(mode=mode), middlewares=[Redact()])
    seen: list[ar.Event] = []
    runtime.events.on(seen.append)
    session = await runtime.run_agent_with_provider("a", "q", ScriptedProvider([reply]))
    deltas = [e.text for e in seen if isinstance(e, ar.LlmTextDelta)]
    responses = [e.text for e in seen if isinstance(e, ar.LlmResponse)]
    assert "".join(deltas) == reply
    assert responses == [reply.replace("secret", "[redacted]")]
    assert session.final_answer == "the [redacted]"
