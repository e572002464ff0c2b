from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

import llm_agent_runtime as ar


@ar.tool
def add(a: int, b: int) -> int:
    """Adds."""
    return a + b


async def test_every_event_via_callback_and_stream() -> None:
    rt = ar.AgentRuntime(tools=[add], checkpoint_backend=ar.InMemoryBackend())
    seen: list[ar.Event] = []
    rt.events.on(seen.append)
    async_seen: list[ar.Event] = []

    async def async_callback(event: ar.Event) -> None:
        async_seen.append(event)

    rt.events.on(async_callback)
    stream = rt.events.subscribe()
    provider = ar.ScriptedProvider(
        ['Thought: t\nAction: add {"a": 1, "b": 2}', "Action: FINAL_ANSWER 3"]
    )
    session = await rt.run_agent_with_provider("a", "q", provider)
    rt.events.close()
    streamed = [event async for event in stream]
    await asyncio.sleep(0)
    kinds = [type(e).__name__ for e in seen]
    assert kinds == [
        "RunStarted",
        "LlmResponse",
        "ToolCallStarted",
        "ToolCallFinished",
        "CheckpointSaved",
        "LlmResponse",
        "CheckpointSaved",
        "RunFinished",
        "CheckpointSaved",  # the final checkpoint, event log included, after RunFinished
    ]
    assert streamed == seen and async_seen == seen
    finished = seen[-2]
    assert isinstance(finished, ar.RunFinished) and finished.final_answer == "3"
    assert finished.session_id == session.session_id
    tool_done = seen[3]
    assert isinstance(tool_done, ar.ToolCallFinished) and tool_done.observation == "3"


async def test_error_event_and_off() -> None:
    rt = ar.AgentRuntime()
    seen: list[ar.Event] = []
    rt.events.on(seen.append)

    async def infer(prompt: str) -> str:
        return "not a react step"

    with pytest.raises(ar.AgentLoopError):
        await rt.run_agent("a", "q", infer)
    assert isinstance(seen[-1], ar.ErrorEvent) and isinstance(seen[-1].error, ar.AgentLoopError)
    rt.events.off(seen.append)
    assert not rt.events.active


async def test_native_mode_streams_text_deltas_when_listened_to() -> None:
    rt = ar.AgentRuntime(ar.AgentConfig(mode="tools"), tools=[add])
    seen: list[ar.Event] = []
    rt.events.on(seen.append)
    provider = ar.ScriptedProvider(
        [ar.ScriptedProvider.tool_call_reply([("add", {"a": 1, "b": 1})], text="adding"), "two"]
    )
    session = await rt.run_agent_with_provider("a", "q", provider)
    deltas = [e.text for e in seen if isinstance(e, ar.LlmTextDelta)]
    assert deltas == ["adding", "two"] and session.final_answer == "two"


async def test_bus_delivers_in_order_and_schedules_coroutine_results() -> None:
    bus = ar.EventBus()
    order: list[str] = []
    done: list[object] = []

    async def later(event: object) -> None:
        done.append(event)

    bus.on(lambda event: order.append(f"first {event}"))
    bus.on(lambda event: later(event))  # a sync callable returning a coroutine: scheduled
    bus.on(lambda event: order.append(f"second {event}") or 42)  # other results are ignored
    stream = bus.subscribe()
    bus.emit("e1")  # type: ignore[arg-type]
    bus.close()
    assert order == ["first e1", "second e1"]
    assert [event async for event in stream] == ["e1"]
    await asyncio.sleep(0)
    assert done == ["e1"]


def test_bus_callback_errors_propagate_and_removal_mid_emit_is_safe() -> None:
    bus = ar.EventBus()
    seen: list[str] = []

    def once(event: object) -> None:
        seen.append("once")
        bus.off(once)

    bus.on(once)
    bus.on(lambda event: seen.append("stays"))
    bus.emit("e")  # type: ignore[arg-type]
    bus.emit("e")  # type: ignore[arg-type]
    # As with a Python loop over the list: removing the running callback skips the next one.
    assert seen == ["once", "stays"]

    def broken(event: object) -> None:
        raise RuntimeError("listener failed")

    bus.on(broken)
    with pytest.raises(RuntimeError, match="listener failed"):
        bus.emit("e")  # type: ignore[arg-type]


def test_runtime_listening_to_itself_is_garbage_collected() -> None:
    class Listener:
        def __init__(self) -> None:
            self.runtime = ar.AgentRuntime()
            self.runtime.events.on(self.seen)  # runtime -> bus -> callbacks -> self -> runtime

        def seen(self, event: object) -> None:
            pass

    listener = Listener()
    ref = weakref.ref(listener)
    del listener
    gc.collect()
    assert ref() is None


async def test_listener_joining_while_a_tool_runs_gets_its_finish() -> None:
    seen: list[ar.Event] = []

    @ar.tool
    async def wait() -> str:
        """Lets a listener join mid-call."""
        rt.events.on(seen.append)
        return "done"

    rt = ar.AgentRuntime(ar.AgentConfig(mode="tools"), tools=[wait])
    provider = ar.ScriptedProvider([ar.ScriptedProvider.tool_call_reply([("wait", {})]), "ok"])
    session = await rt.run_agent_with_provider("a", "q", provider)
    assert session.final_answer == "ok"
    finished = [e for e in seen if isinstance(e, ar.ToolCallFinished)]
    assert len(finished) == 1 and finished[0].step == 0 and finished[0].observation == "done"
