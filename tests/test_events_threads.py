"""EventBus listeners changed from several threads at once: the flags and subscriptions stay right.

Each test pauses one thread inside a change (a hook in one of the bus's lists or queues), lets
another thread change the listeners meanwhile, then checks the state both leave. A change made
while another is under way waits for it (up to the pause's limit), so neither is lost.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import llm_agent_runtime as ar
from llm_agent_runtime.events import EventBus, LlmTextDelta

PAUSE_LIMIT_S = 0.5
"""How long the paused change waits for the other thread's change (which it blocks, once fixed)."""


class _PausingRecorders(list):  # type: ignore[type-arg]
    """The bus's recorder list, whose `len()` pauses `thread` until `other_done` (once)."""

    def __init__(self) -> None:
        super().__init__()
        self.thread: threading.Thread | None = None
        self.paused = threading.Event()
        self.other_done = threading.Event()

    def __len__(self) -> int:
        if threading.current_thread() is self.thread and not self.paused.is_set():
            self.paused.set()
            self.other_done.wait(PAUSE_LIMIT_S)
        return super().__len__()


def test_a_callback_added_while_another_is_removed_is_listened_to() -> None:
    # `off` of the last callback set `listening` from the lists as they were before an `on`
    # on another thread, after that `on` had set it: the bus then kept `listening` False
    # with a callback registered, and runs sent it no text deltas.
    bus = EventBus()
    recorders = _PausingRecorders()
    bus._recorders = recorders  # type: ignore[misc]
    first, second = (lambda event: None), (lambda event: None)
    bus.on(first)

    remover = threading.Thread(target=bus.off, args=(first,))
    recorders.thread = remover
    remover.start()
    assert recorders.paused.wait(5)

    def add() -> None:
        bus.on(second)
        recorders.other_done.set()

    adder = threading.Thread(target=add)
    adder.start()
    remover.join(5)
    adder.join(5)
    assert bus._callbacks == [second]
    assert bus.active and bus.listening


def test_a_subscription_made_while_the_bus_closes_is_ended_or_kept() -> None:
    # `close` ends the queues it sees, then clears the list: a subscription added on another
    # thread meanwhile must be ended by it or stay on the bus, never dropped without its end
    # marker (its reader would wait forever).
    bus = EventBus()
    paused, other_done = threading.Event(), threading.Event()
    closer: threading.Thread | None = None

    class PausingQueue:
        def put_nowait(self, item: Any) -> None:
            if threading.current_thread() is closer:
                paused.set()
                other_done.wait(PAUSE_LIMIT_S)

    bus._queues.append(PausingQueue())  # type: ignore[arg-type]
    closer = threading.Thread(target=bus.close)
    closer.start()
    assert paused.wait(5)
    made: list[ar.events.Subscription] = []

    def subscribe() -> None:
        made.append(bus.subscribe())
        other_done.set()

    subscriber = threading.Thread(target=subscribe)
    subscriber.start()
    closer.join(5)
    subscriber.join(5)
    (subscription,) = made
    queue = subscription._queue
    assert queue is not None
    ended = not queue.empty() and queue.get_nowait() is None
    assert ended or any(q is queue for q in bus._queues)
    if not ended:  # kept: the next close ends it, and its reader stops
        bus.close()

        async def read_all() -> list[Any]:
            return [event async for event in subscription]

        assert asyncio.run(asyncio.wait_for(read_all(), 5)) == []


def test_an_event_handed_over_as_the_subscriber_starts_reading_wakes_it(
    monkeypatch: Any,
) -> None:
    # The emitting thread saw no reader yet and put the event on the queue itself, after the
    # reader (on its loop, in another thread) had started waiting: nothing woke that loop,
    # and the subscriber waited until some later event did (on a debug loop, the put raised
    # into the emitting run).
    from llm_agent_runtime import events

    bus = EventBus()
    subscription = bus.subscribe()
    emitter = threading.Thread(target=lambda: bus.emit(ar.RunStarted("s", "a", "q")))
    delivering, reader_started = threading.Event(), threading.Event()
    deliver = events._SubscriberQueue._deliver

    def paused_deliver(queue: Any, item: Any) -> None:
        if threading.current_thread() is emitter:
            delivering.set()
            reader_started.wait(PAUSE_LIMIT_S)  # the reader starts waiting meanwhile
        deliver(queue, item)

    monkeypatch.setattr(events._SubscriberQueue, "_deliver", paused_deliver)

    async def read() -> Any:
        reading = asyncio.ensure_future(anext(subscription))
        threading.Timer(0.05, reader_started.set).start()
        return await asyncio.wait_for(reading, 2.0)

    read_events: list[Any] = []
    # On a thread of its own: a reader never woken hangs its loop, to its end.
    reader = threading.Thread(
        target=lambda: read_events.append(asyncio.run(read(), debug=True)), daemon=True
    )
    emitter.start()
    assert delivering.wait(2.0)
    reader.start()
    reader.join(5.0)
    emitter.join()
    assert [type(event) for event in read_events] == [ar.RunStarted]


class _Unread:
    """Holds a subscription it never reads, in a reference cycle: only the collector frees it."""

    def __init__(self, bus: EventBus) -> None:
        self.subscription = bus.subscribe()
        self.cycle = self


def test_an_unread_subscription_the_collector_frees_while_its_event_is_queued_ends_quietly(
    monkeypatch: Any,
) -> None:
    # An event for a subscription no one reads yet is queued on the spot, under its queue's
    # lock; queuing allocates, so the collector may run there and finalize that very
    # subscription, whose end took the same lock again: the emitting thread (a run's loop)
    # hung for good. Here the collector runs as each event is queued.
    import gc

    from llm_agent_runtime.events import _SubscriberQueue

    deliver = _SubscriberQueue._deliver

    def deliver_after_a_collection(queue: _SubscriberQueue, item: Any) -> None:
        gc.collect()
        deliver(queue, item)

    monkeypatch.setattr(_SubscriberQueue, "_deliver", deliver_after_a_collection)
    bus = EventBus()

    def emit_beside_dropped_subscriptions() -> None:
        for round_ in range(3):
            _Unread(bus)
            bus.emit(("event", round_))

    emitter = threading.Thread(target=emit_beside_dropped_subscriptions, daemon=True)
    emitter.start()
    emitter.join(10)
    assert not emitter.is_alive(), "emit hung on a subscription the collector freed"
    assert not bus.active  # every dropped subscription ended


def test_a_bounded_subscription_stays_bounded_while_its_loop_is_not_running() -> None:
    # Each event from another thread was handed to the reader's loop as a callback of its
    # own: while that loop was not running (a program running it only between reads), they
    # piled up, 80 MB for 200,000 events, whatever `max_buffered` said.
    bus = EventBus()
    loop = asyncio.new_event_loop()
    try:
        subscription = bus.subscribe(max_buffered=5)
        bus.emit(LlmTextDelta("s", "first"))
        assert loop.run_until_complete(subscription.__anext__()).text == "first"

        def emit_elsewhere() -> None:
            async def run() -> None:
                for i in range(10_000):
                    bus.emit(LlmTextDelta("s", f"t{i}"))

            asyncio.run(run())

        thread = threading.Thread(target=emit_elsewhere)
        thread.start()
        thread.join()
        assert len(loop._ready) <= 1  # type: ignore[attr-defined]  # one wake-up, not 10,000
        bus.close()  # the end, from this thread: after the events, and kept

        async def read_all() -> list[str]:
            return [event.text async for event in subscription]  # type: ignore[union-attr]

        assert loop.run_until_complete(read_all()) == [f"t{i}" for i in range(9_995, 10_000)]
        assert subscription.dropped == 9_995
    finally:
        loop.close()
