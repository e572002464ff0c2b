"""A failed run's cleanup on a checkpoint backend that stopped answering is bounded as a
whole: one deadline for all its stages, and one for a cancellation from outside too."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

import llm_agent_runtime as ar


class StopsAnswering(ar.InMemoryBackend):
    """The in-memory backend, whose every call hangs once `armed`."""

    armed = False


def _hanging(name: str) -> Any:
    base = getattr(ar.InMemoryBackend, name)

    async def method(self: StopsAnswering, *args: Any, **kwargs: Any) -> Any:
        if self.armed:
            await asyncio.Event().wait()
        return await base(self, *args, **kwargs)

    return method


for _name in (
    "save",
    "save_new",
    "load",
    "delete",
    "batch_save",
    "batch_save_if",
    "batch_delete_if",
    "batch_load",
    "list_keys",
):
    setattr(StopsAnswering, _name, _hanging(_name))


def runtime_and_model(
    mode: str, backend: StopsAnswering, timeout_ms: int | None
) -> tuple[ar.AgentRuntime, Any]:
    """A runtime whose tool makes `backend` stop answering, and the model that calls it
    (twice at once in tools mode: a parallel round journals each call)."""

    def breaks_the_backend(arguments: dict[str, Any]) -> str:
        backend.armed = True
        return "done"

    tool = ar.ToolSpec("t", "Breaks the backend.", breaks_the_backend)
    config = ar.AgentConfig(mode=mode, loop_timeout_ms=timeout_ms)  # type: ignore[arg-type]
    runtime = ar.AgentRuntime(config, tools=[tool], checkpoint_backend=backend)
    if mode == "react":
        return runtime, ar.ScriptedProvider(["Action: t {}", "Final Answer: x"])
    calls = [ar.ToolCall("c1", "t", {}), ar.ToolCall("c2", "t", {})]
    script = [
        ar.ChatResponse(tool_calls=calls, stop_reason="tool_calls"),
        ar.ChatResponse(text="x", stop_reason="stop"),
    ]
    return runtime, ar.ScriptedProvider(script)


@pytest.mark.parametrize("mode", ["react", "tools"])
async def test_a_timed_out_runs_cleanup_shares_one_deadline(mode: str) -> None:
    # Each stage of the cleanup (the parallel round's journal writes, saving what the run
    # left, giving up its claims) waited a loop_timeout_ms of its own: the run ended after
    # 3 to 5 times the timeout, where its doc promises at most twice.
    backend = StopsAnswering()
    runtime, model = runtime_and_model(mode, backend, 1000)
    started = time.perf_counter()
    with pytest.raises(ar.AgentLoopError, match="timed out"):
        await runtime.run_agent_with_provider("a", "q", model)
    assert time.perf_counter() - started < 2.6
    assert not runtime._cleanup_deadlines


@pytest.mark.parametrize("mode", ["react", "tools"])
async def test_a_run_cancelled_on_a_backend_that_stopped_answering_ends(mode: str) -> None:
    # Without loop_timeout_ms, the cleanup of a cancelled run waited for the backend as long
    # as it hung, and a round's journal writes took no further cancellation either: the
    # task ran on whatever its caller did (an asyncio.wait_for returned when the database
    # let go, 30 s later on a locked PostgreSQL table).
    backend = StopsAnswering()
    runtime, model = runtime_and_model(mode, backend, None)
    task = asyncio.ensure_future(runtime.run_agent_with_provider("a", "q", model))
    while not backend.armed:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=3.0)
    assert done, "the cancelled run was still running 3 s later"
    assert task.cancelled()
    assert not runtime._cleanup_deadlines


class SlowAfterAHiccup(ar.InMemoryBackend):
    """The in-memory backend whose intent write of call 1 fails; from then on (and for the
    result of call 0) every write takes `SLOW` seconds."""

    SLOW = 0.6
    failed = False

    async def _slow(self) -> None:
        if self.failed:
            await asyncio.sleep(self.SLOW)

    async def save(self, key: str, value: bytes) -> None:
        if key.endswith(":call:1:0") and b'"done"' in value:
            await asyncio.sleep(self.SLOW)
        await self._slow()
        await super().save(key, value)

    async def save_new(self, key: str, value: bytes) -> bool:
        if key.endswith(":call:1:1"):
            await asyncio.sleep(0.1)  # call 0 is journaling its result by now
            self.failed = True
            raise ConnectionError("backend hiccup")
        await self._slow()
        return await super().save_new(key, value)

    async def batch_save(self, items: Any) -> None:
        await self._slow()
        await super().batch_save(items)

    async def batch_save_if(self, guard_key: str, guard_value: bytes, items: Any) -> bool:
        await self._slow()
        return await super().batch_save_if(guard_key, guard_value, items)


async def test_a_call_its_round_cancelled_leaves_the_failed_runs_save_unbounded() -> None:
    # Call 1's intent write failed the round, which cancelled call 0 as it journaled its
    # result: that cancellation started a 1 s cleanup clock, and the run, failed by an
    # error and with no timeout, dropped its end and its ErrorEvent when it ran out.
    backend = SlowAfterAHiccup()
    tool = ar.ToolSpec("t", "A tool.", lambda arguments: "ok")
    runtime = ar.AgentRuntime(
        ar.AgentConfig(mode="tools"), tools=[tool], checkpoint_backend=backend
    )
    calls = [ar.ToolCall("c1", "t", {}), ar.ToolCall("c2", "t", {"x": 1})]
    model = ar.ScriptedProvider([ar.ChatResponse(tool_calls=calls, stop_reason="tool_calls")])
    session = runtime.create_session("a", "hiccup")
    with pytest.raises(ar.PersistenceError, match="backend hiccup"):
        await runtime.run_agent_with_provider("a", "q", model, session=session)
    assert await backend.list_keys("session:hiccup:ended")
    events = await runtime.session_events("hiccup")
    assert events[-1]["type"] == "ErrorEvent"


class HangsAtAnIntent(StopsAnswering):
    """The backend that stops answering as a call's intent is written."""

    async def save_new(self, key: str, value: bytes) -> bool:
        if ":call:" in key and b'"state":"intent"' in value:
            self.armed = True
        return bool(await super().save_new(key, value))


async def test_taking_back_an_intent_the_cancellation_cut_is_bounded_too() -> None:
    # The run, cut off as a call's intent was written, takes the intent back: that write
    # was awaited with nothing left to cut it short, and the run never ended.
    tool = ar.ToolSpec("t", "A tool.", lambda arguments: "ok")
    backend = HangsAtAnIntent()
    config = ar.AgentConfig(mode="tools", loop_timeout_ms=300)
    runtime = ar.AgentRuntime(config, tools=[tool], checkpoint_backend=backend)
    calls = [ar.ToolCall("c1", "t", {})]
    model = ar.ScriptedProvider([ar.ChatResponse(tool_calls=calls, stop_reason="tool_calls")])
    task = asyncio.ensure_future(runtime.run_agent_with_provider("a", "q", model))
    done, _ = await asyncio.wait([task], timeout=3.0)
    assert done, "the run was still running 3 s after it started"
    with pytest.raises(ar.AgentLoopError, match="timed out"):
        task.result()


class HangsAtCall0sResult(ar.InMemoryBackend):
    """Call 1's intent write fails; call 0's result write, its rewrite included, hangs."""

    async def save(self, key: str, value: bytes) -> None:
        if key.endswith(":call:1:0") and b'"done"' in value:
            await asyncio.Event().wait()
        await super().save(key, value)

    async def save_new(self, key: str, value: bytes) -> bool:
        if key.endswith(":call:1:1"):
            await asyncio.sleep(0.1)
            raise ConnectionError("backend hiccup")
        return bool(await super().save_new(key, value))


async def test_a_cancellation_of_the_run_bounds_a_round_failed_by_an_error() -> None:
    # Call 0, cut off by its failed round as it journaled its result, writes it again with
    # no bound (the run fails by an error, with no timeout); the caller then cancels the
    # run, and the write, bound once and for all when it began, swallowed every cancel.
    tool = ar.ToolSpec("t", "A tool.", lambda arguments: "ok")
    runtime = ar.AgentRuntime(
        ar.AgentConfig(mode="tools"), tools=[tool], checkpoint_backend=HangsAtCall0sResult()
    )
    calls = [ar.ToolCall("c1", "t", {}), ar.ToolCall("c2", "t", {"x": 1})]
    model = ar.ScriptedProvider([ar.ChatResponse(tool_calls=calls, stop_reason="tool_calls")])
    task = asyncio.ensure_future(runtime.run_agent_with_provider("a", "q", model))
    await asyncio.sleep(0.5)
    assert not task.done()  # the round failed; call 0 writes its result again
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=3.0)
    assert done, "the cancelled run was still running 3 s later"


async def test_a_cancellation_during_a_failed_runs_cleanup_bounds_the_rest() -> None:
    # The model failed, the backend hung in the failed run's cleanup, the caller cancelled
    # it: the save was cut, then the claims' release waited with no bound (the cleanup had
    # been told, as it began, that the run was not cancelled).
    backend = StopsAnswering()

    async def model(prompt: str) -> str:
        backend.armed = True
        raise ar.ProviderError("model down")

    runtime = ar.AgentRuntime(ar.AgentConfig(), checkpoint_backend=backend)
    task = asyncio.ensure_future(runtime.run_agent("a", "q", model))
    await asyncio.sleep(0.3)
    assert not task.done()
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=3.0)
    assert done, "the cancelled run was still running 3 s later"


class SlowWrites(ar.InMemoryBackend):
    """The in-memory backend, whose batch writes take 100 ms (a remote database)."""

    async def batch_save(self, items: Any) -> None:
        await asyncio.sleep(0.1)
        await super().batch_save(items)


@pytest.mark.parametrize(
    ("timeout_ms", "cancels"),
    [(None, 1), (60_000, 1), (None, 2)],
    ids=["unbounded", "loop timeout", "cancelled twice"],
)
async def test_a_failed_run_cancelled_as_its_cleanup_saves_keeps_its_events(
    timeout_ms: int | None, cancels: int
) -> None:
    # Its save was cut at once by the cancellation: the failed run left no event and no end,
    # with no warning, though its cleanup time (a second once cancelled, or its
    # loop_timeout_ms) had not passed.
    config = ar.AgentConfig(loop_timeout_ms=timeout_ms)
    runtime = ar.AgentRuntime(config, checkpoint_backend=SlowWrites())
    running: list[asyncio.Task[Any]] = []

    def cancel_soon(event: ar.Event) -> None:
        if isinstance(event, ar.LlmResponse):  # the reply fails the run: its cleanup starts
            for n in range(cancels):
                asyncio.get_running_loop().call_later(0.02 + 0.03 * n, running[0].cancel)

    runtime.events.on(cancel_soon)

    async def model(prompt: str) -> str:
        return "no ReAct step here"

    session = runtime.create_session("a", "s1")
    running.append(asyncio.ensure_future(runtime.run_agent("a", "q", model, session=session)))
    started = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        await running[0]
    assert time.monotonic() - started < 1.0
    logged = [event["type"] for event in await runtime.session_events("s1")]
    assert logged == ["RunStarted", "LlmResponse", "ErrorEvent"]


class WritesThrough(ar.InMemoryBackend):
    """Batch writes taking 1.2 s while `slow`, which a cancellation does not stop at once
    (a write in a thread: 0.3 s more)."""

    slow = True

    async def batch_save(self, items: Any) -> None:
        if not self.slow:
            return await super().batch_save(items)
        try:
            await asyncio.sleep(1.2)
        except asyncio.CancelledError:
            await asyncio.sleep(0.3)
            await super().batch_save(items)
            raise
        await super().batch_save(items)


async def test_a_cancelled_run_cancelled_again_as_its_cleanup_saves_keeps_its_events() -> None:
    # The second cancellation cut its save at once: its second of cleanup went unused.
    runtime = ar.AgentRuntime(ar.AgentConfig(), checkpoint_backend=SlowWrites())
    asked = asyncio.Event()

    async def model(prompt: str) -> str:
        asked.set()
        await asyncio.sleep(60)
        return "never"

    session = runtime.create_session("a", "s1")
    running = asyncio.ensure_future(runtime.run_agent("a", "q", model, session=session))
    await asked.wait()
    running.cancel()  # its cleanup starts: a second for it
    await asyncio.sleep(0.03)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    logged = [event["type"] for event in await runtime.session_events("s1")]
    assert logged == ["RunStarted", "ErrorEvent"]


async def test_a_save_past_its_cleanup_time_ends_before_the_next_run_starts() -> None:
    # Cancelled once its time was up but not waited for, it went on after the run had let
    # go of the session, and then cleared the next run's events as its own.
    backend = WritesThrough()
    runtime = ar.AgentRuntime(ar.AgentConfig(), checkpoint_backend=backend)
    running: list[asyncio.Task[Any]] = []

    def cancel_first(event: ar.Event) -> None:
        if isinstance(event, ar.LlmResponse) and event.text == "no ReAct step here":
            asyncio.get_running_loop().call_later(0.02, running[0].cancel)

    runtime.events.on(cancel_first)

    async def failing(prompt: str) -> str:
        return "no ReAct step here"

    async def answering(prompt: str) -> str:
        return "Thought: t\nAction: FINAL_ANSWER 42"

    session = runtime.create_session("a", "s1")
    running.append(asyncio.ensure_future(runtime.run_agent("a", "q", failing, session=session)))
    with pytest.raises(asyncio.CancelledError):
        await running[0]
    assert [t for t in asyncio.all_tasks() if "_save_what_is_left" in repr(t)] == []
    backend.slow = False
    done = await runtime.run_agent("a", "q2", answering, session=session)
    assert done.final_answer == "42"
    logged = [event["type"] for event in await runtime.session_events("s1")]
    assert logged[-3:] == ["RunStarted", "LlmResponse", "RunFinished"]
