from __future__ import annotations

import asyncio
import functools
import gc
import sys
import time
import weakref
from typing import Any, NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_runtime import react

import llm_agent_runtime as ar
from llm_agent_runtime._core import tuple_of


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
    replies = ['Thought: t\nAction: add {"a": 1, "b": 2}', "Action: FINAL_ANSWER 3"]
    provider = ar.ScriptedProvider(replies)
    session = await rt.run_agent_with_provider("a", "q", provider)
    rt.events.close()
    streamed = [event async for event in stream]
    await asyncio.sleep(0)
    kinds = [type(e).__name__ for e in seen]
    assert kinds == [
        "RunStarted",
        "LlmTextDelta",  # a text model's reply is whole: one delta
        "LlmResponse",
        "ToolCallStarted",
        "ToolCallFinished",
        "CheckpointSaved",
        "LlmTextDelta",
        "LlmResponse",
        "CheckpointSaved",
        "RunFinished",
        "CheckpointSaved",  # the final checkpoint, event log included, after RunFinished
    ]
    assert streamed == seen and async_seen == seen
    finished = seen[-2]
    assert isinstance(finished, ar.RunFinished) and finished.final_answer == "3"
    assert finished.session_id == session.session_id
    tool_done = seen[4]
    assert isinstance(tool_done, ar.ToolCallFinished) and tool_done.observation == "3"
    assert [e.text for e in seen if isinstance(e, ar.LlmTextDelta)] == replies


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


async def test_a_run_that_fails_before_it_starts_emits_its_error_event_alone() -> None:
    # A user-message hook fails: the run never started, so no RunStarted precedes the error.
    class Breaks(ar.Middleware):
        def on_user_message(self, session: ar.AgentSession, text: str) -> str:
            raise ValueError("no such user")

    rt = ar.AgentRuntime(middlewares=[Breaks()])
    seen: list[ar.Event] = []
    rt.events.on(seen.append)

    async def infer(prompt: str) -> str:
        raise AssertionError("no model call before the run starts")

    with pytest.raises(ValueError, match="no such user"):
        await rt.run_agent("a", "q", infer)
    assert [type(e) for e in seen] == [ar.ErrorEvent]
    assert isinstance(seen[0].error, ValueError)


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


async def test_subscribers_see_an_event_a_callback_emits_after_the_one_it_handles() -> None:
    # Subscribers used to get the follow-up first: callbacks ran before the queues.
    bus = ar.EventBus()
    handled: list[str] = []

    def follow_up(event: object) -> None:
        handled.append(str(event))
        if event == "outer":
            bus.emit("inner")  # type: ignore[arg-type]

    bus.on(follow_up)
    stream = bus.subscribe()
    bus.emit("outer")  # type: ignore[arg-type]
    bus.close()
    assert handled == ["outer", "inner"]
    assert [event async for event in stream] == ["outer", "inner"]


async def test_a_bounded_subscriber_keeps_the_latest_events_and_counts_the_rest() -> None:
    bus = ar.EventBus()
    slow = bus.subscribe(max_buffered=3)
    whole = bus.subscribe()
    for n in range(10):
        bus.emit(n)  # type: ignore[arg-type]
    assert isinstance(slow, ar.Subscription) and slow.dropped == 7 and whole.dropped == 0
    assert await slow.__anext__() == 7
    bus.emit(10)  # type: ignore[arg-type]
    bus.close()  # the end is never pushed out, even from a full queue
    assert [event async for event in slow] == [8, 9, 10]
    assert [event async for event in whole] == list(range(11))
    assert slow.dropped == 7  # still told once the subscription ended


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "3"])
def test_max_buffered_must_be_a_positive_int(bad: object) -> None:
    with pytest.raises(ValueError, match="max_buffered must be an int of at least 1"):
        ar.EventBus().subscribe(max_buffered=bad)  # type: ignore[arg-type]


def test_bus_callback_errors_propagate_and_removal_mid_emit_is_safe() -> None:
    bus = ar.EventBus()
    seen: list[str] = []

    def once(event: object) -> None:
        seen.append("once")
        bus.off(once)

    def late(event: object) -> None:
        seen.append("late")

    def adds_late(event: object) -> None:
        bus.on(late)
        bus.off(adds_late)

    bus.on(once)
    bus.on(lambda event: seen.append("stays"))
    bus.on(adds_late)
    bus.emit("e")  # type: ignore[arg-type]
    bus.emit("e")  # type: ignore[arg-type]
    # Each event goes to the callbacks registered when it was emitted: removing one while
    # it runs skips no other, and one added then starts with the next event.
    assert seen == ["once", "stays", "stays", "late"]

    def broken(event: object) -> None:
        raise RuntimeError("listener failed")

    bus.on(broken)
    with pytest.raises(RuntimeError, match="listener failed"):
        bus.emit("e")  # type: ignore[arg-type]


async def test_a_raising_callback_keeps_the_event_from_no_one() -> None:
    bus = ar.EventBus()
    seen: list[str] = []

    def broken(event: object) -> None:
        raise RuntimeError(f"first failed on {event}")

    def also_broken(event: object) -> None:
        raise ValueError("second failed")

    bus.on(broken)
    bus.on(also_broken)
    bus.on(lambda event: seen.append(f"callback {event}"))
    stream = bus.subscribe()
    with pytest.raises(RuntimeError, match="first failed on e"):  # the first error wins
        bus.emit("e")  # type: ignore[arg-type]
    assert seen == ["callback e"]
    assert await anext(stream) == "e"


async def test_a_callback_raising_on_every_event_hides_no_run_end_from_subscribers() -> None:
    rt = ar.AgentRuntime()

    def broken(event: object) -> None:
        raise RuntimeError("listener failed")

    rt.events.on(broken)
    stream = rt.events.subscribe()

    async def final(prompt: str) -> str:
        return "Thought: t\nAction: FINAL_ANSWER ok"

    with pytest.raises(RuntimeError, match="listener failed"):
        await rt.run_agent("a", "q", final)
    kinds = []
    async for event in stream:
        kinds.append(type(event).__name__)
        if isinstance(event, ar.ErrorEvent):
            break
    assert kinds == ["RunStarted", "ErrorEvent"]


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


async def test_a_subscription_never_iterated_ends_when_dropped() -> None:
    bus = ar.EventBus()
    stream = bus.subscribe()
    assert bus.active
    del stream
    gc.collect()
    assert not bus.active  # nobody listens: the runtime skips building events again
    for _ in range(1000):
        bus.emit("e")  # type: ignore[arg-type]
    kept = bus.subscribe()
    bus.emit("kept")  # type: ignore[arg-type]
    bus.close()
    assert [event async for event in kept] == ["kept"]  # nothing of the dropped one's


async def test_subscriptions_end_on_aclose_cancellation_break_and_close() -> None:
    bus = ar.EventBus()
    closed = bus.subscribe()
    await closed.aclose()  # type: ignore[attr-defined]
    assert not bus.active
    assert [event async for event in closed] == []

    reading = asyncio.Event()

    async def consume() -> None:
        reading.set()
        async for _ in bus.subscribe():
            pass

    task = asyncio.create_task(consume())
    await reading.wait()
    await asyncio.sleep(0)
    assert bus.active
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not bus.active

    async def first() -> object:
        async for event in bus.subscribe():
            return event
        return None

    waiting = asyncio.create_task(first())
    await asyncio.sleep(0)
    bus.emit("one")  # type: ignore[arg-type]
    assert await waiting == "one"
    gc.collect()
    assert not bus.active

    seen: list[object] = []
    bus.on(seen.append)
    pending = bus.subscribe()
    bus.emit("before")  # type: ignore[arg-type]
    bus.close()
    assert bus.active  # the callback still listens
    bus.emit("after")  # type: ignore[arg-type]
    assert [event async for event in pending] == ["before"]
    assert seen == ["before", "after"]
    bus.off(seen.append)
    assert not bus.active


async def test_a_subscription_ended_elsewhere_ends_the_iteration_waiting_on_it() -> None:
    # One task reads; another closes the subscription (a client went away), or a second
    # reader of it is cancelled: the reader waiting for the next event stops, not hangs.
    bus = ar.EventBus()
    for end in ("aclose", "cancel"):
        stream = bus.subscribe()
        read: list[object] = []

        async def consume(stream: Any = stream, read: list[object] = read) -> str:
            async for event in stream:
                read.append(event)
            return "ended"

        reader = asyncio.create_task(consume())
        other = asyncio.create_task(consume())
        bus.emit("one")  # type: ignore[arg-type]
        await asyncio.sleep(0.01)
        if end == "aclose":
            await stream.aclose()  # type: ignore[attr-defined]
            other_ended = await asyncio.wait_for(other, 1.0)
            assert other_ended == "ended"
        else:
            other.cancel()
            with pytest.raises(asyncio.CancelledError):
                await other
        bus.emit("two")  # type: ignore[arg-type]
        assert await asyncio.wait_for(reader, 1.0) == "ended"
        assert read == ["one"]
        assert not bus.active


@pytest.mark.parametrize("callback", [None, "print", 3])
def test_a_callback_that_is_not_callable_is_refused_where_it_is_registered(
    callback: object,
) -> None:
    # Accepted, it failed every later run with a bare TypeError, far from the mistake (say,
    # `on(handler())` for `on(handler)`).
    bus = ar.EventBus()
    with pytest.raises(ar.AgentRuntimeError, match="an event callback must be callable"):
        bus.on(callback)  # type: ignore[arg-type]
    assert not bus.active
    bus.emit(ar.RunStarted("s", "a", "q"))


def test_off_of_a_callback_not_registered_does_nothing() -> None:
    bus = ar.EventBus()
    seen: list[ar.Event] = []
    bus.off(seen.append)  # never registered
    bus.on(seen.append)
    bus.off(seen.append)
    bus.off(seen.append)  # twice
    assert not bus.active
    bus.emit(ar.RunStarted("s", "a", "q"))
    assert seen == []


async def test_a_failed_final_save_comes_after_run_finished_as_an_error_event() -> None:
    """RunFinished precedes the final checkpoint (the event log it writes holds it): when
    that save fails, the run's ErrorEvent follows its RunFinished, in the log too."""

    class FinalFails(ar.InMemoryBackend):
        async def batch_save(self, items: Any) -> None:
            if "session:S" in items:
                raise OSError("disk full")
            await super().batch_save(items)

    backend = FinalFails()
    rt = ar.AgentRuntime(checkpoint_backend=backend)
    seen: list[ar.Event] = []
    rt.events.on(seen.append)

    async def model(prompt: str) -> str:
        return "Thought: t\nAction: FINAL_ANSWER 42"

    with pytest.raises(ar.PersistenceError, match="disk full"):
        await rt.run_agent("a", "q", model, session=ar.AgentSession("S", "a"))
    assert [type(e).__name__ for e in seen][-2:] == ["RunFinished", "ErrorEvent"]
    logged = [e["type"] for e in await rt.session_events("S")]
    assert logged[-2:] == ["RunFinished", "ErrorEvent"]


async def test_a_failed_runs_error_event_is_its_last_even_when_its_unsaved_steps_are_saved() -> (
    None
):
    """A step whose checkpoint failed is saved when the run fails: its CheckpointSaved comes
    before the ErrorEvent (it used to follow it), and the log has the error all the same."""

    class FirstStepFails(ar.InMemoryBackend):
        failed = False

        async def batch_save(self, items: Any) -> None:
            if not self.failed and any(":step:" in key for key in items):
                self.failed = True
                raise OSError("disk hiccup")
            await super().batch_save(items)

    rt = ar.AgentRuntime(tools=[add], checkpoint_backend=FirstStepFails())
    seen: list[ar.Event] = []
    rt.events.on(seen.append)
    replies = iter(['Thought: t\nAction: add {"a": 1, "b": 2}'])

    async def model(prompt: str) -> str:
        return next(replies, "no ReAct step")  # the run fails at its second step

    with pytest.raises(ar.AgentLoopError):
        await rt.run_agent("a", "q", model, session=ar.AgentSession("S", "a"))
    kinds = [type(e).__name__ for e in seen]
    assert kinds[-2:] == ["CheckpointSaved", "ErrorEvent"], kinds
    assert seen[-2].key == "session:S:step:1"  # type: ignore[attr-defined]
    logged = [e["type"] for e in await rt.session_events("S")]
    assert logged[-1] == "ErrorEvent" and "CheckpointSaved" not in logged
    assert not rt._event_log  # nothing left behind in memory


# ------------------------------------------------------------------ async callbacks
FINAL = "Thought: d\nAction: FINAL_ANSWER ok"
ADD = 'Thought: t\nAction: add {"a": 1, "b": 2}'


def test_a_run_waits_for_its_async_callbacks_before_it_returns() -> None:
    rt = ar.AgentRuntime(tools=[add])
    seen: list[str] = []

    async def slow_callback(event: ar.Event) -> None:
        await asyncio.sleep(0.001)  # a database write, a websocket send
        seen.append(type(event).__name__)

    rt.events.on(slow_callback)
    # asyncio.run cancels the tasks still pending when the run returns: none may be.
    asyncio.run(rt.run_agent("a", "q", react(ADD, FINAL)))
    first_step = ["LlmTextDelta", "LlmResponse", "ToolCallStarted", "ToolCallFinished"]
    answer = ["LlmTextDelta", "LlmResponse"]
    assert sorted(seen) == sorted(["RunStarted", *first_step, *answer, "RunFinished"])


def test_a_failed_runs_error_event_reaches_its_async_callbacks() -> None:
    rt = ar.AgentRuntime()
    seen: list[str] = []

    async def callback(event: ar.Event) -> None:
        await asyncio.sleep(0)
        seen.append(type(event).__name__)

    rt.events.on(callback)
    with pytest.raises(ar.AgentLoopError):
        asyncio.run(rt.run_agent("a", "q", react("no action here")))
    assert seen[-1] == "ErrorEvent"


async def test_a_raising_async_callback_is_logged_and_fails_no_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rt = ar.AgentRuntime()

    async def broken(event: ar.Event) -> None:
        await asyncio.sleep(0)
        if isinstance(event, ar.RunFinished):
            raise RuntimeError("the dashboard is down")

    rt.events.on(broken)
    session = await rt.run_agent("a", "q", react(FINAL))
    assert session.final_answer == "ok"
    failures = [r for r in caplog.records if "async event callback failed" in r.getMessage()]
    assert len(failures) == 1 and "the dashboard is down" in failures[0].getMessage()
    # Which session's events the listener lost, and which event.
    assert f"on RunFinished of session {session.session_id}:" in failures[0].getMessage()
    assert failures[0].exc_info is not None


async def test_a_run_waits_for_its_own_callbacks_not_another_runs() -> None:
    rt = ar.AgentRuntime()
    gate = asyncio.Event()
    done: list[str] = []

    async def callback(event: ar.Event) -> None:
        if isinstance(event, ar.RunFinished):
            if event.session_id == "slow":
                await gate.wait()
            done.append(event.session_id)

    rt.events.on(callback)
    slow = asyncio.ensure_future(
        rt.run_agent("a", "q", react(FINAL), session=rt.create_session("a", "slow"))
    )
    await asyncio.sleep(0.01)
    assert not slow.done()  # waiting for its callback
    fast = await rt.run_agent("a", "q", react(FINAL), session=rt.create_session("a", "fast"))
    assert fast.final_answer == "ok" and done == ["fast"]
    gate.set()
    assert (await slow).final_answer == "ok"
    assert done == ["fast", "slow"]


async def test_a_cancelled_run_does_not_wait_for_its_callbacks() -> None:
    rt = ar.AgentRuntime()
    gate = asyncio.Event()

    async def stuck(event: ar.Event) -> None:
        await gate.wait()

    rt.events.on(stuck)

    async def hangs(prompt: str) -> str:
        await asyncio.sleep(3600)
        return FINAL

    run = asyncio.ensure_future(rt.run_agent("a", "q", hangs))
    await asyncio.sleep(0.01)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(run, 1)
    gate.set()


def test_async_callables_of_every_kind_are_waited_for() -> None:
    seen: list[str] = []

    class Sink:
        async def __call__(self, event: ar.Event) -> None:
            await asyncio.sleep(0)
            seen.append("object")

    async def record(tag: str, event: ar.Event) -> None:
        await asyncio.sleep(0)
        seen.append(tag)

    rt = ar.AgentRuntime()
    rt.events.on(Sink())
    rt.events.on(functools.partial(record, "partial"))
    asyncio.run(rt.run_agent("a", "q", react(FINAL)))
    assert sorted(seen) == ["object"] * 4 + ["partial"] * 4  # 4 events a one-step run

    seen.clear()
    later = ar.AgentRuntime()
    later.events.on(lambda event: record("lambda", event))  # sync, returns a coroutine
    asyncio.run(later.run_agent("a", "q", react(FINAL)))
    assert seen == ["lambda"] * 4  # waited for from the first run on


def test_an_async_callback_registered_while_a_run_goes_on_is_waited_for() -> None:
    # The run looked once, as it started, for async callbacks to wait for: one registered
    # later got the run's events, and the program could end before it handled them.
    seen: list[str] = []
    rt = ar.AgentRuntime()

    async def slow(event: ar.Event) -> None:
        await asyncio.sleep(0.01)
        seen.append(type(event).__name__)

    async def infer(prompt: str) -> str:
        rt.events.on(slow)
        return "Thought: t\nAction: FINAL_ANSWER done"

    asyncio.run(rt.run_agent("a", "q", infer))
    assert seen == ["LlmTextDelta", "LlmResponse", "RunFinished"]


async def test_a_callback_may_start_the_sessions_next_turn() -> None:
    """The run waits for its callbacks after it let go of its session (and its slot)."""
    rt = ar.AgentRuntime(backpressure=ar.BackpressureGuard(1))
    session = rt.create_session("a", "S")
    follow_ups: list[str | None] = []
    started: list[str] = []

    async def on_finished(event: ar.Event) -> None:
        if isinstance(event, ar.RunFinished) and not started:  # after the first turn only
            started.append(event.session_id)
            follow_ups.append(await rt.run_turn(session, "and then?", react(FINAL)))

    rt.events.on(on_finished)
    assert await rt.run_turn(session, "hi", react(FINAL)) == "ok"
    assert follow_ups == ["ok"]
    assert [m["role"] for m in session.messages] == ["user", "assistant"] * 2


async def test_the_wait_for_callbacks_ends_at_the_loop_deadline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rt = ar.AgentRuntime(ar.AgentConfig(loop_timeout_ms=200))
    gate = asyncio.Event()

    async def hung_webhook(event: ar.Event) -> None:
        await gate.wait()

    rt.events.on(hung_webhook)
    start = time.perf_counter()
    session = await rt.run_agent("a", "q", react(FINAL))
    assert session.final_answer == "ok"
    assert time.perf_counter() - start < 2
    assert any(
        f"of session {session.session_id} still running at the run's deadline" in r.getMessage()
        for r in caplog.records
    )
    gate.set()
    await asyncio.sleep(0)


async def test_a_run_cancelled_while_it_saves_its_failure_does_not_wait_for_callbacks() -> None:
    class SlowSaves(ar.InMemoryBackend):
        async def save(self, key: str, value: bytes) -> None:
            await asyncio.sleep(0.5)
            await super().save(key, value)

        async def batch_save(self, items: Any) -> None:
            await asyncio.sleep(0.5)
            await super().batch_save(items)

    rt = ar.AgentRuntime(checkpoint_backend=SlowSaves())
    gate = asyncio.Event()

    async def stuck(event: ar.Event) -> None:
        if isinstance(event, ar.ErrorEvent):
            await gate.wait()

    rt.events.on(stuck)

    async def fails(prompt: str) -> str:
        raise RuntimeError("model down")

    run = asyncio.ensure_future(rt.run_agent("a", "q", fails))
    await asyncio.sleep(0.1)  # the run failed and is saving what it did
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(run, 2)
    gate.set()


async def test_callbacks_that_fail_are_logged_even_when_others_outlive_the_deadline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rt = ar.AgentRuntime(ar.AgentConfig(loop_timeout_ms=300))
    gate = asyncio.Event()

    async def webhook(event: ar.Event) -> None:
        if isinstance(event, ar.RunStarted):
            raise RuntimeError("webhook 500")
        if isinstance(event, ar.RunFinished):
            await gate.wait()
            raise RuntimeError("late failure")

    rt.events.on(webhook)
    assert (await rt.run_agent("a", "q", react(FINAL))).final_answer == "ok"
    failed = [r.getMessage() for r in caplog.records if "callback failed" in r.getMessage()]
    assert len(failed) == 1 and "webhook 500" in failed[0]
    gate.set()
    await asyncio.sleep(0.01)  # the one left running fails now: logged too
    failed = [r.getMessage() for r in caplog.records if "callback failed" in r.getMessage()]
    assert len(failed) == 2 and "late failure" in failed[1]


@pytest.mark.parametrize("mode", ["react", "tools"])
@pytest.mark.parametrize("end", ["loop timeout", "cancel", "policy error"])
async def test_every_started_tool_call_finishes_in_the_events_however_the_run_ends(
    mode: str, end: str
) -> None:
    # A call the run's timeout, its cancellation or a policy error cut off had a start and
    # no finish, so a listener pairing them kept the call open for good.
    release = asyncio.Event()

    @ar.tool
    async def slow(x: int) -> str:
        """Waits, then refuses when asked to (a sub-agent whose budget is spent, say)."""
        if end == "policy error":
            raise ar.BudgetExceededError("the sub-agent's budget is spent")
        await release.wait()
        return "done"

    config = ar.AgentConfig(mode=mode, loop_timeout_ms=100 if end == "loop timeout" else None)
    if mode == "react":
        replies: list[Any] = ['Thought: t\nAction: slow {"x": 1}']
    else:
        replies = [ar.ScriptedProvider.tool_call_reply([("slow", {"x": 1}), ("slow", {"x": 2})])]
    runtime = ar.AgentRuntime(config, tools=[slow])
    seen: list[ar.Event] = []
    runtime.events.on(seen.append)
    run = asyncio.ensure_future(
        runtime.run_agent_with_provider("a", "q", ar.ScriptedProvider([*replies, "ok"]))
    )
    if end == "cancel":
        while not any(isinstance(e, ar.ToolCallStarted) for e in seen):
            await asyncio.sleep(0.001)
        run.cancel()
    expected = {
        "loop timeout": ar.AgentLoopError,
        "cancel": asyncio.CancelledError,
        "policy error": ar.BudgetExceededError,
    }[end]
    with pytest.raises(expected):
        await run
    started = [(e.step, e.tool) for e in seen if isinstance(e, ar.ToolCallStarted)]
    finished = [e for e in seen if isinstance(e, ar.ToolCallFinished)]
    assert started and sorted(started) == sorted((e.step, e.tool) for e in finished)
    kind = "permanent" if end == "policy error" else "transient"
    assert all(e.error_kind == kind and e.observation.startswith("error: ") for e in finished)
    if end == "policy error":
        assert "budget is spent" in finished[0].observation
    assert isinstance(seen[-1], ar.ErrorEvent)  # after the calls' finishes


async def test_a_listener_failing_on_an_interrupted_calls_finish_is_logged_with_its_session(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Logged without the session: among concurrent runs, no one could tell whose it was.
    @ar.tool
    async def slow(x: int) -> str:
        """Waits for good."""
        await asyncio.Event().wait()
        return "done"

    def failing(event: ar.Event) -> None:
        if isinstance(event, ar.ToolCallFinished):
            raise RuntimeError("listener failed on ToolCallFinished")

    runtime = ar.AgentRuntime(ar.AgentConfig(loop_timeout_ms=100), tools=[slow])
    runtime.events.on(failing)
    session = runtime.create_session("a")
    provider = ar.ScriptedProvider(['Thought: t\nAction: slow {"x": 1}'])
    with pytest.raises(ar.AgentLoopError):
        await runtime.run_agent_with_provider("a", "q", provider, session=session)
    logged = f"event callback failed on the end of tool call 'slow' of session {session.session_id}"
    assert logged in caplog.text


@pytest.mark.parametrize("mode", ["react", "tools"])
@pytest.mark.parametrize("denied", [False, True])
async def test_a_listener_failing_on_a_tool_calls_start_leaves_it_finished(
    mode: str, denied: bool
) -> None:
    # The run fails, as a sync callback's error fails it; but the call had a start and no
    # finish, live and in the saved event log.
    ran: list[int] = []

    @ar.tool
    async def slow(x: int) -> str:
        """Records that it ran."""
        ran.append(x)
        return "done"

    def failing(event: ar.Event) -> None:
        if isinstance(event, ar.ToolCallStarted):
            raise RuntimeError("listener failed on ToolCallStarted")

    config = ar.AgentConfig(mode=mode)  # type: ignore[arg-type]
    if mode == "react":
        replies: list[Any] = ['Thought: t\nAction: slow {"x": 1}']
    else:
        replies = [ar.ScriptedProvider.tool_call_reply([("slow", {"x": 1}), ("slow", {"x": 2})])]

    def deny(session: ar.AgentSession, tool: str, args: Any) -> ar.ApprovalDecision:
        return ar.ApprovalDecision("deny", reason="no")

    runtime = ar.AgentRuntime(
        config,
        tools=[slow],
        checkpoint_backend=ar.InMemoryBackend(),
        approval_handler=deny if denied else None,
    )
    seen: list[ar.Event] = []
    runtime.events.on(seen.append)
    runtime.events.on(failing)
    session = runtime.create_session("a")
    with pytest.raises(RuntimeError, match="listener failed"):
        await runtime.run_agent_with_provider(
            "a", "q", ar.ScriptedProvider([*replies, "ok"]), session=session
        )
    assert ran == []  # no tool ran after its start failed
    live = [{"type": type(e).__name__, **e._asdict()} for e in seen]
    for events in (live, await runtime.session_events(session.session_id)):
        started = [(e["step"], e["tool"]) for e in events if e["type"] == "ToolCallStarted"]
        finished = [e for e in events if e["type"] == "ToolCallFinished"]
        assert started and sorted(started) == sorted((e["step"], e["tool"]) for e in finished)
        assert all(e["error_kind"] == "permanent" for e in finished)


async def test_a_subscription_used_as_a_context_manager_ends_with_its_block() -> None:
    # A task cancelled in the `async for` body (handling an event) is not seen by the
    # iterator: the subscription kept collecting every event. Its block ends it.
    rt = ar.AgentRuntime()
    handling = asyncio.Event()

    async def consume() -> None:
        async with rt.events.subscribe() as stream:
            async for _ in stream:
                handling.set()
                await asyncio.sleep(10)  # handling the event when cancelled

    consumer = asyncio.create_task(consume())
    await asyncio.sleep(0)
    await rt.run_agent("a", "q", react(FINAL))
    await handling.wait()
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    assert not rt.events.active  # no longer collecting: runs build no events


# --- tuple_of: the Rust constructor of the per-step events and observations --------------


class _Pair(NamedTuple):
    first: Any
    second: Any


class _WithDict(tuple):  # type: ignore[type-arg]  # a tuple subclass with a __dict__
    pass


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.integers(), st.text(), st.none(), st.floats()), max_size=8))
def test_tuple_of_makes_what_tuple_new_makes(items: list[Any]) -> None:
    for cls in (tuple, _WithDict):
        made = tuple_of(cls, tuple(items))
        assert type(made) is cls
        assert made == tuple.__new__(cls, items)
    if len(items) == 2:
        pair = tuple_of(_Pair, tuple(items))
        assert type(pair) is _Pair
        assert (pair.first, pair.second) == (items[0], items[1])


def test_tuple_of_events_equal_their_named_constructors() -> None:
    fields = ("s1", 3, "read", {"path": "/x"})
    event = tuple_of(ar.ToolCallStarted, fields)
    assert event == ar.ToolCallStarted(*fields)
    assert type(event) is ar.ToolCallStarted
    assert event.arguments == {"path": "/x"}
    assert event._replace(step=4).step == 4  # a full named tuple


def test_tuple_of_refuses_a_type_that_is_not_a_tuple() -> None:
    for cls in (list, int, object):
        with pytest.raises(TypeError, match="subclass of tuple"):
            tuple_of(cls, (1,))  # type: ignore[type-var]
    with pytest.raises(TypeError):
        tuple_of(tuple, [1, 2])  # type: ignore[arg-type]


def test_tuple_of_holds_its_items_without_leaking_them() -> None:
    item = object()
    before = sys.getrefcount(item)
    made = [tuple_of(_Pair, (item, item)) for _ in range(1000)]
    assert sys.getrefcount(item) == before + 2000
    del made
    gc.collect()
    assert sys.getrefcount(item) == before
    # A dict-bearing subclass's instances take attributes, and are collected with them.
    holder = tuple_of(_WithDict, (item,))
    holder.extra = holder  # a cycle through its __dict__
    del holder
    gc.collect()
    assert sys.getrefcount(item) == before


async def test_close_ends_every_subscription_when_a_collected_one_leaves_meanwhile() -> None:
    # `close` walked the subscribers' list while handing each its end: the garbage collector,
    # run by that work, could finalize a subscription held only by a reference cycle, which
    # removed itself from the list, and the subscriber after it was skipped: its reader
    # waited forever. The collector's timing is not the test's to choose: the subscription
    # is dropped at that moment here, by the queue before it as it takes its end.
    bus = ar.EventBus()
    dropped = [bus.subscribe()]
    first = bus.subscribe()
    readers = [first, bus.subscribe(), bus.subscribe()]
    queue = bus._queues[1]
    hand_over = queue.put_nowait

    def put_nowait(item: Any) -> None:
        dropped.clear()  # its last reference: it ends, and leaves the list
        hand_over(item)

    queue.put_nowait = put_nowait  # type: ignore[method-assign]

    async def read(subscription: Any) -> None:
        async for _ in subscription:
            pass

    tasks = [asyncio.create_task(read(s)) for s in readers]
    await asyncio.sleep(0)  # all wait for an event
    bus.close()
    done, pending = await asyncio.wait(tasks, timeout=5)
    for task in pending:
        task.cancel()
    assert not pending and len(done) == len(readers)
