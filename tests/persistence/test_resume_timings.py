"""A resumed step's timings: what an earlier run's model call and tools took stays theirs, and
the overhead is the time this run spent beyond them (never negative)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import llm_agent_runtime as ar
from llm_agent_runtime.providers.base import ChatResponse, ToolCall, Usage

HANG = {9}
"""The values of `x` `pay` waits for for good (until cancelled)."""


@ar.tool
async def pay(x: int, idempotency_key: str = "") -> int:
    """Takes 100 ms, or hangs for an `x` in `HANG`."""
    await asyncio.sleep(3600 if x in HANG else 0.1)
    return x * 2


def _slow_model(*replies: str) -> Any:
    queue = list(replies)

    async def infer(prompt: str) -> str:
        await asyncio.sleep(0.03)
        return queue.pop(0)

    return infer


async def _cancelled_when(runtime: ar.AgentRuntime, run: Any, seen: type[Any]) -> None:
    """Cancels `run` (a coroutine) once `runtime` emitted an event of type `seen`."""
    started = asyncio.Event()
    runtime.events.on(lambda event: isinstance(event, seen) and started.set())
    task = asyncio.ensure_future(run)
    await started.wait()
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize("reprompted", [False, True], ids=["reply", "re-prompted reply"])
async def test_a_react_step_resumed_with_its_journaled_reply_has_no_negative_overhead(
    reprompted: bool,
) -> None:
    # Its overhead was the wall time less the earlier run's model time: -50 ms for a 50 ms
    # model, -100 ms with a re-prompt before the reply.
    backend = ar.InMemoryBackend()
    config = ar.AgentConfig(corrective_reprompt=True)
    first = ar.AgentRuntime(config, tools=[pay], checkpoint_backend=backend)
    session = first.create_session("a")
    replies = ["no step here"] if reprompted else []
    infer = _slow_model(*replies, 'Thought: t\nAction: pay {"x": 1}')
    await _cancelled_when(
        first, first.run_agent("a", "q", infer, session=session), ar.ToolCallStarted
    )
    second = ar.AgentRuntime(config, tools=[pay], checkpoint_backend=backend)
    resumed = await second.resume(session.session_id, _slow_model("Final Answer: 2"))
    paid = resumed.steps[0]
    assert paid.model_ms >= (60 if reprompted else 30)  # the earlier run's calls, kept
    assert paid.tool_ms >= 100  # run again in this run
    assert all(step.overhead_ms >= 0.0 for step in resumed.steps)
    assert paid.overhead_ms < paid.model_ms  # this run's time only


async def test_a_call_reused_from_the_journal_keeps_the_time_it_took() -> None:
    # It reported 0 ms (in its step, and in the ToolCallFinished event a resume after a
    # process's death emits for it).
    backend = ar.InMemoryBackend()
    config = ar.AgentConfig(mode="tools")
    first = ar.AgentRuntime(config, tools=[pay], checkpoint_backend=backend)
    finished: list[ar.ToolCallFinished] = []
    first.events.on(lambda event: isinstance(event, ar.ToolCallFinished) and finished.append(event))
    calls = [ToolCall("c0", "pay", {"x": 1}), ToolCall("c1", "pay", {"x": 9})]
    round_one = ChatResponse(tool_calls=calls, usage=Usage(10, 5), stop_reason="tool_calls")
    session = first.create_session("a")
    run = first.run_agent_with_provider("a", "q", ar.ScriptedProvider([round_one]), session=session)
    await _cancelled_when(first, run, ar.ToolCallFinished)  # call 0 ended, call 1 runs
    took = finished[0].tool_ms
    assert took >= 100
    second = ar.AgentRuntime(config, tools=[pay], checkpoint_backend=backend)
    done = ChatResponse(text="done", usage=Usage(1, 1), stop_reason="stop")
    HANG.clear()  # call 1 (cancelled; `pay` takes its key) is run again, and ends
    try:
        resumed = await second.resume(session.session_id, ar.ScriptedProvider([done]))
    finally:
        HANG.add(9)
    assert resumed.steps[0].observation == "2"
    assert resumed.steps[0].tool_ms == took
    assert all(step.overhead_ms >= 0.0 for step in resumed.steps)
