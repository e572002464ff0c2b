"""One `AgentRuntime` used from several threads at once, each with its own event loop."""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
from typing import Any

import pytest

import llm_agent_runtime as ar

FINAL = "Thought: done\nAction: FINAL_ANSWER ok"


async def final(prompt: str) -> str:
    return FINAL


class _Reader:
    """A subscriber of `runtime.events` iterating on its own thread's event loop."""

    def __init__(self, runtime: ar.AgentRuntime, debug: bool = False) -> None:
        self.runtime = runtime
        self.debug = debug
        self.waiting = threading.Event()  # it waits for its first event
        self.done = threading.Event()
        self.got: list[Any] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task[Any] | None = None
        self.thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        async def read() -> None:
            async with self.runtime.events.subscribe() as stream:
                self.loop = asyncio.get_running_loop()
                self.task = asyncio.ensure_future(anext(stream))
                await asyncio.sleep(0)  # the task now waits on the queue (no timer runs)
                self.waiting.set()
                self.got.append(await self.task)

        try:
            asyncio.run(read(), debug=self.debug)
        except BaseException as error:  # cancelled by `stop`, on the old code
            self.got.append(error)
        finally:
            self.done.set()

    def stop(self) -> None:
        """Ends a reader left waiting (the loop never woke)."""
        if not self.done.is_set() and self.loop is not None and self.task is not None:
            self.loop.call_soon_threadsafe(self.task.cancel)
        self.thread.join(5)


@pytest.mark.parametrize("debug", [False, True])
def test_a_subscriber_on_another_threads_loop_is_woken_by_a_run(debug: bool) -> None:
    # The subscriber's loop sleeps with nothing scheduled; a run on this thread's loop
    # emits. The event must wake it (it was put on its queue from the wrong thread: the
    # loop never woke), and the run must not fail (a debug loop refused the cross-thread
    # wake-up with "Non-thread-safe operation", failing the run and losing the event).
    runtime = ar.AgentRuntime()
    reader = _Reader(runtime, debug=debug)
    reader.thread.start()
    try:
        assert reader.waiting.wait(5)
        session = asyncio.run(runtime.run_agent("a", "q", final))
        assert session.final_answer == "ok"
        assert reader.done.wait(5), "the subscriber's loop was never woken"
    finally:
        reader.stop()
    assert reader.got == [ar.RunStarted(session.session_id, "a", "q")]


def test_a_subscriber_whose_loop_closed_fails_no_run_on_another_thread() -> None:
    # A reader left waiting on a loop closed without cancelling it ("Event loop is closed"
    # was raised into the emitting run, on another thread).
    runtime = ar.AgentRuntime()
    stream = runtime.events.subscribe()
    ready = threading.Event()
    reading: list[Any] = []

    def wake(_: Any) -> None:
        pass

    def reader() -> None:
        loop = asyncio.new_event_loop()

        async def start() -> None:
            # Driven by hand, as a task would be (without a task the loop would log as
            # destroyed): suspended on the queue's waiter, which belongs to this loop, and
            # which wakes it through a done callback, as a task's.
            coroutine = stream.__anext__()
            reading.append(coroutine)
            waiter = coroutine.send(None)
            waiter.add_done_callback(wake)
            reading.append(waiter)

        loop.run_until_complete(start())
        loop.close()  # the reader is left waiting
        ready.set()

    thread = threading.Thread(target=reader)
    thread.start()
    thread.join(5)
    assert ready.is_set()
    try:
        session = asyncio.run(runtime.run_agent("a", "q", final))
    finally:  # the waiter of a closed loop wakes no one any more
        reading[1].remove_done_callback(wake)
        reading[0].close()
    assert session.final_answer == "ok"


def test_many_threads_and_runs_share_one_runtime_with_a_subscriber() -> None:
    # N threads x M concurrent runs, every event reaching a subscriber on yet another loop,
    # and a callback; each run sees its own session's events only; totals are exact.
    threads, runs = 4, 6
    metrics = ar.RuntimeMetrics()

    @ar.tool
    def add(a: int, b: int) -> int:
        """Adds two integers."""
        return a + b

    runtime = ar.AgentRuntime(
        tools=[add],
        metrics=metrics,
        checkpoint_backend=ar.InMemoryBackend(),
    )
    by_session: dict[str, list[Any]] = {}
    lock = threading.Lock()

    def record(event: Any) -> None:
        with lock:
            by_session.setdefault(event.session_id, []).append(event)

    runtime.events.on(record)
    reader_ready = threading.Event()
    read: list[Any] = []
    reader_loop: list[asyncio.AbstractEventLoop] = []

    def reader() -> None:
        async def main() -> None:
            reader_loop.append(asyncio.get_running_loop())
            async with runtime.events.subscribe() as stream:
                task = asyncio.ensure_future(anext(stream))
                await asyncio.sleep(0)
                reader_ready.set()
                read.append(await task)
                async for event in stream:
                    read.append(event)
                    if isinstance(event, ar.RunFinished):
                        with lock:
                            if sum(isinstance(e, ar.RunFinished) for e in read) == threads * runs:
                                return

        asyncio.run(main())

    reader_thread = threading.Thread(target=reader, daemon=True)
    reader_thread.start()
    assert reader_ready.wait(5)
    barrier = threading.Barrier(threads)
    sessions: list[ar.AgentSession] = []
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        async def one(run: int) -> ar.AgentSession:
            replies = iter(['Thought: t\nAction: add {"a": 2, "b": 3}', FINAL])

            async def infer(prompt: str) -> str:
                await asyncio.sleep(0)
                return next(replies)

            return await runtime.run_agent("a", f"{index}-{run}", infer)

        async def main() -> list[ar.AgentSession]:
            barrier.wait(5)
            return await asyncio.gather(*(one(run) for run in range(runs)))

        try:
            found = asyncio.run(main())
            with lock:
                sessions.extend(found)
        except BaseException as error:
            errors.append(error)

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(10)
    reader_thread.join(5)
    if reader_thread.is_alive():
        reader_loop[0].call_soon_threadsafe(lambda: [t.cancel() for t in asyncio.all_tasks()])
        reader_thread.join(5)
    assert errors == []
    assert len(sessions) == threads * runs
    snapshot = metrics.snapshot()
    assert snapshot.total_sessions == threads * runs
    assert snapshot.total_steps == threads * runs * 2
    assert snapshot.total_tool_calls == threads * runs
    for session in sessions:
        assert session.final_answer == "ok"
        assert (session.steps[0].action, session.steps[0].observation) == ("add", "5")
        assert session.step_count == 2
        events = by_session[session.session_id]
        assert isinstance(events[0], ar.RunStarted)
        assert events[0].prompt == session.prompt
    delivered = [e for e in read if not isinstance(e, ar.CheckpointSaved)]
    recorded = [
        e for evs in by_session.values() for e in evs if not isinstance(e, ar.CheckpointSaved)
    ]
    assert len(delivered) == len(recorded)


def test_a_run_left_in_a_loop_closed_by_hand_ends_its_count_when_collected() -> None:
    # A run pending in a loop closed by hand is closed by the GC outside its task's context:
    # resetting its context tokens raised there ("Exception ignored"), before the count of
    # active sessions was taken down: it stayed up for good.
    @ar.tool
    async def slow() -> str:
        """Takes long."""
        await asyncio.sleep(60)
        return "late"

    runtime = ar.AgentRuntime(tools=[slow])
    model = ar.ScriptedProvider(["Action: slow {}", "Action: FINAL_ANSWER ok"])
    unraisable: list[Any] = []
    previous_hook = sys.unraisablehook
    sys.unraisablehook = unraisable.append
    try:
        loop = asyncio.new_event_loop()
        loop.set_exception_handler(lambda _loop, _context: None)  # "Task was destroyed"
        task = loop.create_task(runtime.run_agent_with_provider("a", "q", model))
        loop.run_until_complete(asyncio.sleep(0.05))  # the run waits in its tool
        assert runtime.metrics.snapshot().active_sessions == 1
        loop.close()
        del task, loop
        gc.collect()
    finally:
        sys.unraisablehook = previous_hook
    assert [u.exc_value for u in unraisable] == []
    assert runtime.metrics.snapshot().active_sessions == 0
