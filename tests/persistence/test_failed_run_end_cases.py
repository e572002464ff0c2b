"""How a run's failure ends when it meets a second one: a resume closing an answered run
whose final write fails, and a listener failing on the failed run's last save."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

import llm_agent_runtime as ar

from .test_backends import backend_fixture
from .test_durable import FINAL, add_step, fails_after, script
from .test_durable_sweep5_cases import FinalWriteFails, add, run_events

backend = backend_fixture()


async def died_after_its_answer(backend: ar.PersistenceBackend, session_id: str) -> None:
    """A run of `session_id` that answered, as a worker that died before its final write
    and its RunFinished leaves it."""
    runtime = ar.AgentRuntime(tools=[add], checkpoint_backend=backend)
    session = runtime.create_session("a", session_id)
    await runtime.run_agent("a", "q", script(add_step(1), FINAL), session=session)
    await backend.delete(f"session:{session_id}")
    for key in await backend.list_keys(f"session:{session_id}:event:"):
        raw = await backend.load(key)
        if raw is not None and b"RunFinished" in raw:
            await backend.delete(key)


async def test_a_close_whose_final_write_fails_ends_with_an_error_event(
    backend: ar.PersistenceBackend,
) -> None:
    # The resume emitted the RunFinished its worker never did, then its final write failed:
    # it raised with no ErrorEvent (listeners took the run for closed), and neither event
    # reached the saved log, so every later resume emitted RunFinished again.
    await died_after_its_answer(backend, "close-fails")
    seen: list[Any] = []
    failing = ar.AgentRuntime(
        tools=[add], checkpoint_backend=FinalWriteFails(backend, "close-fails")
    )
    failing.events.on(seen.append)
    with pytest.raises(ar.PersistenceError, match="final checkpoint failed"):
        await failing.resume("close-fails", script())
    assert [type(e) for e in seen] == [ar.RunFinished, ar.ErrorEvent]
    assert isinstance(seen[1].error, ar.PersistenceError)
    events = await failing.session_events("close-fails")
    assert run_events(events) == ["RunStarted", "RunFinished", "ErrorEvent"]
    # Its claim was released: the next resume closes it, and its end is not told twice.
    seen.clear()
    closer = ar.AgentRuntime(tools=[add], checkpoint_backend=backend)
    closer.events.on(seen.append)
    closed = await closer.resume("close-fails", script())
    assert closed.final_answer == "finished" and closed.step_count == 2
    assert [type(e) for e in seen] == [ar.CheckpointSaved]
    assert run_events(await closer.session_events("close-fails")) == [
        "RunStarted",
        "RunFinished",
        "ErrorEvent",
    ]


async def test_a_close_waits_for_its_async_callbacks(backend: ar.PersistenceBackend) -> None:
    # A run waits for the async callbacks its events started; the close of an answered run
    # left them running, and a program that ended with the resume lost them.
    await died_after_its_answer(backend, "close-callbacks")
    done: list[str] = []

    async def slow(event: ar.Event) -> None:
        await asyncio.sleep(0.02)
        done.append(type(event).__name__)

    closer = ar.AgentRuntime(tools=[add], checkpoint_backend=backend)
    closer.events.on(slow)
    await closer.resume("close-callbacks", script())
    assert done == ["RunFinished", "CheckpointSaved"]


class FirstStepWriteFails:
    """The backend, but the first write of a step record fails."""

    def __init__(self, inner: ar.PersistenceBackend) -> None:
        self.inner = inner
        self.failed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _check(self, keys: Any) -> None:
        if not self.failed and any(":step:" in key for key in keys):
            self.failed = True
            raise OSError("disk full")

    async def batch_save(self, items: Any) -> None:
        self._check(items)
        await self.inner.batch_save(items)

    async def batch_save_if(self, guard_key: str, guard_value: bytes, items: Any) -> bool:
        self._check(items)
        return bool(await self.inner.batch_save_if(guard_key, guard_value, items))


async def test_a_listener_failing_on_a_failed_runs_last_save_does_not_hide_its_error(
    backend: ar.PersistenceBackend,
) -> None:
    # The run's first step save failed (kept pending), then the model failed: the failed
    # run's own save wrote the step, and a listener raising on its CheckpointSaved replaced
    # the model's error with its own and skipped the record of the run's end.
    def listener(event: ar.Event) -> None:
        if isinstance(event, ar.CheckpointSaved):
            raise ValueError("listener failed")

    runtime = ar.AgentRuntime(tools=[add], checkpoint_backend=FirstStepWriteFails(backend))
    runtime.events.on(listener)
    session = runtime.create_session("a", "listener-fails")
    with pytest.raises(ConnectionError, match="model down"):
        await runtime.run_agent("a", "q", fails_after(add_step(1)), session=session)
    assert session.checkpoint_errors == 1
    assert await backend.list_keys("session:listener-fails:ended")
    loaded = await ar.AgentSession.load_checkpoint(backend, "listener-fails")
    assert loaded.step_count == 1 and loaded.duration_ms == session.duration_ms
    events = await runtime.session_events("listener-fails")
    assert run_events(events) == ["RunStarted", "ErrorEvent"]


async def test_a_close_is_timed_as_a_run_is() -> None:
    # The close of an answered run knew no loop_timeout_ms: on a backend that stopped
    # answering it hung for good, and it waited for its async callbacks with no bound.
    backend = ar.InMemoryBackend()
    await died_after_its_answer(backend, "close-timed")
    config = ar.AgentConfig(loop_timeout_ms=300)
    closer = ar.AgentRuntime(config, tools=[add], checkpoint_backend=backend)

    async def never_returns(event: ar.Event) -> None:
        await asyncio.Event().wait()

    closer.events.on(never_returns)
    started = time.perf_counter()
    closed = await closer.resume("close-timed", script())
    assert closed.final_answer == "finished"
    assert time.perf_counter() - started < 1.5

    await died_after_its_answer(backend, "close-hangs")
    real_save = backend.batch_save_if

    async def hangs(*args: Any, **kwargs: Any) -> bool:
        await asyncio.Event().wait()
        return await real_save(*args, **kwargs)

    backend.batch_save_if = hangs  # type: ignore[method-assign]
    backend.batch_save = hangs  # type: ignore[assignment,method-assign]
    hung = ar.AgentRuntime(config, tools=[add], checkpoint_backend=backend)
    task = asyncio.ensure_future(hung.resume("close-hangs", script()))
    done, _ = await asyncio.wait([task], timeout=3.0)
    assert done, "the close was still running 3 s after it started"
    with pytest.raises(ar.AgentLoopError, match="timed out after 300 ms"):
        task.result()


LEASE = 0.3


async def _slow_tool(arguments: dict[str, Any]) -> str:
    await asyncio.sleep(0.05)
    return "slept"


async def _quick_tool(arguments: dict[str, Any]) -> str:
    return "ok"


LEASED_TOOLS = [
    ar.ToolSpec("ok", "Answers.", _quick_tool, idempotent=True),
    ar.ToolSpec("slow", "Answers later.", _slow_tool, idempotent=True),
]


def _leased(path: Any, metrics: ar.RuntimeMetrics) -> ar.AgentRuntime:
    return ar.AgentRuntime(
        ar.AgentConfig(mode="tools"),
        tools=LEASED_TOOLS,
        metrics=metrics,
        checkpoint_backend=ar.SqliteBackend(path),
        resume_lease_seconds=LEASE,
    )


@pytest.mark.parametrize("stalls_on", [ar.ToolCallFinished, ar.RunFinished])
async def test_a_resume_claim_taken_over_is_no_checkpoint_error(
    tmp_path: Any, stalls_on: type
) -> None:
    # A resumed run that stalled past its lease, its session taken over by another worker,
    # counted the refusal of its next write (a step's, or its final one) as a failed
    # checkpoint, where the backend never failed.
    path = tmp_path / "lost.db"
    metrics = ar.RuntimeMetrics()
    first = _leased(path, metrics)
    session = first.create_session("a")
    calls = [ar.ChatResponse(tool_calls=[ar.ToolCall("1", "slow", {})], stop_reason="tool_calls")]
    interrupted = asyncio.ensure_future(
        first.run_agent_with_provider("a", "q", ar.ScriptedProvider(calls), session=session)
    )
    await asyncio.sleep(0.02)
    interrupted.cancel()
    with pytest.raises(asyncio.CancelledError):
        await interrupted
    taken: list[str | None] = []

    def stall(event: ar.Event) -> None:
        if isinstance(event, stalls_on) and not taken:
            time.sleep(LEASE * 2)  # past the lease: another worker takes the session over

            def take_over() -> None:
                other = _leased(path, ar.RuntimeMetrics())
                done = ar.ScriptedProvider(["done"])
                taken.append(asyncio.run(other.resume(session.session_id, done)).final_answer)

            thread = threading.Thread(target=take_over)
            thread.start()
            thread.join()

    first.events.on(stall)
    before = metrics.snapshot().checkpoint_errors
    replies = [
        ar.ChatResponse(tool_calls=[ar.ToolCall("2", "ok", {})], stop_reason="tool_calls"),
        ar.ChatResponse(text="done", stop_reason="stop"),
    ]
    with pytest.raises(ar.PersistenceError, match="no longer"):
        await first.resume(session.session_id, ar.ScriptedProvider(replies))
    assert taken == ["done"]
    assert metrics.snapshot().checkpoint_errors == before


async def test_a_failed_final_checkpoint_names_its_key_once() -> None:
    # The backend's error already named the key: the run's named it a second time.
    class KeyedFailure(ar.InMemoryBackend):
        async def batch_save(self, items: Any) -> None:
            raise ar.PersistenceError("disk full", next(iter(items)))

    runtime = ar.AgentRuntime(checkpoint_backend=KeyedFailure())
    session = runtime.create_session("a", "once")
    with pytest.raises(ar.PersistenceError) as raised:
        await runtime.run_agent("a", "q", script(FINAL), session=session)
    assert raised.value.key == "session:once"
    assert str(raised.value).count("(key ") == 1, str(raised.value)
    assert str(raised.value).startswith("final checkpoint failed: disk full (key ")
