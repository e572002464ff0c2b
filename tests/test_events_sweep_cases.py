"""EventBus and subscriptions used where they were not meant to be: a clear error, never a hang."""

from __future__ import annotations

import asyncio
import threading

import pytest

import llm_agent_runtime as ar


def test_a_subscription_iterated_on_a_second_loop_says_so_instead_of_hanging() -> None:
    bus = ar.EventBus()
    stream = bus.subscribe()

    async def first() -> ar.Event:
        bus.emit(ar.CheckpointSaved("s", "k1"))
        return await anext(stream)

    assert asyncio.run(first()) == ar.CheckpointSaved("s", "k1")

    async def second() -> ar.Event:
        # The event went to the first loop, closed now: the wait would never end.
        bus.emit(ar.CheckpointSaved("s", "k2"))
        return await asyncio.wait_for(anext(stream), 5)

    with pytest.raises(ar.AgentRuntimeError, match="another event loop"):
        asyncio.run(second())
    # Its loop gone, the subscription can get nothing more: it has ended.
    assert not bus.active

    async def again() -> list[ar.Event]:
        return [event async for event in stream]

    assert asyncio.run(again()) == []


def test_a_subscription_read_on_another_running_loop_is_refused_and_kept_for_its_reader() -> None:
    bus = ar.EventBus()
    stream = bus.subscribe()
    reader_ready = threading.Event()
    got: list[ar.Event] = []

    def reader() -> None:
        async def read() -> None:
            waiting = asyncio.ensure_future(anext(stream))
            await asyncio.sleep(0)  # the read has started: the subscription is this loop's
            reader_ready.set()
            got.append(await waiting)

        asyncio.run(read())

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        assert reader_ready.wait(5)

        async def intruder() -> ar.Event:
            return await asyncio.wait_for(anext(stream), 5)

        with pytest.raises(ar.AgentRuntimeError, match="another event loop"):
            asyncio.run(intruder())
        assert bus.active  # still its reader's
        bus.emit(ar.CheckpointSaved("s", "k"))
    finally:
        thread.join(5)
    assert got == [ar.CheckpointSaved("s", "k")]


def _emit_outside_a_loop(bus: ar.EventBus) -> BaseException | None:
    try:
        bus.emit(ar.CheckpointSaved("s", "k"))
    except BaseException as error:
        return error
    return None


@pytest.mark.parametrize("where", ["main thread", "other thread"])
def test_an_async_callback_of_an_event_emitted_outside_a_loop_is_a_typed_error(
    where: str,
) -> None:
    bus = ar.EventBus()
    ran: list[ar.Event] = []
    synced: list[ar.Event] = []

    async def on_event(event: ar.Event) -> None:
        ran.append(event)

    bus.on(on_event)
    bus.on(synced.append)
    if where == "main thread":
        error = _emit_outside_a_loop(bus)
    else:
        box: list[BaseException | None] = []
        thread = threading.Thread(target=lambda: box.append(_emit_outside_a_loop(bus)))
        thread.start()
        thread.join(5)
        error = box[0]
    # Scheduled on no loop (or one that never runs), it was lost without a word, or failed
    # with a bare RuntimeError and a coroutine never awaited.
    assert isinstance(error, ar.AgentRuntimeError)
    assert "running event loop" in str(error)
    assert synced == [ar.CheckpointSaved("s", "k")]  # the other callbacks got it
    assert ran == []


def test_two_threads_pushing_out_a_bounded_subscribers_oldest_event_at_once_fail_no_run() -> None:
    # Before the subscriber first reads, runs on other threads queue their events themselves.
    bus = ar.EventBus()
    stream = bus.subscribe(max_buffered=1)
    queue = stream._queue
    assert queue is not None
    bus.emit(ar.CheckpointSaved("s", "old"))  # full: the next event pushes this one out
    first_saw_it_full = threading.Event()
    second_took = threading.Event()
    first_done = threading.Event()
    take = queue.get_nowait

    def paused_take() -> ar.Event | None:
        # The first thread, having seen the queue full, takes only once the second thread
        # took the oldest event; the second puts its own only once the first is done.
        if not first_saw_it_full.is_set():
            first_saw_it_full.set()
            second_took.wait(5)
            return take()
        taken = take()
        second_took.set()
        first_done.wait(5)
        return taken

    queue.get_nowait = paused_take  # type: ignore[method-assign]
    errors: list[BaseException] = []

    def emit(key: str, done: threading.Event | None) -> None:
        try:
            bus.emit(ar.CheckpointSaved("s", key))
        except BaseException as error:
            errors.append(error)
        finally:
            if done is not None:
                done.set()

    first = threading.Thread(target=emit, args=("a", first_done), daemon=True)
    first.start()
    assert first_saw_it_full.wait(5)
    second = threading.Thread(target=emit, args=("b", None), daemon=True)
    second.start()
    first.join(5)
    second.join(5)
    # The first thread's take found the queue emptied by the second: a bare QueueEmpty
    # failed its run.
    assert errors == []
    assert not first.is_alive() and not second.is_alive()
    # Every event is either queued or counted as dropped.
    assert queue.qsize() + stream.dropped == 3


def test_an_empty_sessions_time_totals_are_floats_as_a_full_ones_are() -> None:
    empty = ar.AgentSession("s", "a")
    # `sum` of nothing is the int 0: `json.dumps` wrote 0, not 0.0, and `float.hex` failed.
    for total in (empty.model_ms(), empty.tool_ms(), empty.overhead_ms(), empty.duration_secs()):
        assert type(total) is float and total == 0.0
    full = ar.AgentSession("s", "a", steps=[ar.Step("t", "x", model_ms=1.5, tool_ms=2.0)])
    assert (full.model_ms(), full.tool_ms(), full.overhead_ms()) == (1.5, 2.0, 0.0)
