"""Typed events of an agent run, delivered to callbacks and async streams.

Events are named tuples: immutable, and cheap enough to build on every step. What they hold
is the run's own (no copy is made for them): `ToolCallStarted.arguments` is the dict the
tool is called with, so a listener that changes it changes the call. Treat it as read-only;
to change a call, use an `on_tool_call` middleware (recorded in `Step.requested`).

The order of a run's events: `RunStarted`, then per step the model's (`LlmTextDelta`,
`LlmResponse`) and the tools' (`ToolCallStarted`, `ToolCallFinished`) events, each step's
`CheckpointSaved` (with a checkpoint backend), then `RunFinished`, then the final
`CheckpointSaved`. A run that fails emits `ErrorEvent` as its last event (its only one when
it fails before it started: an `on_user_message` hook or its first checkpoint failed, and
no `RunStarted` was emitted). `RunFinished` comes
before the final checkpoint, because the event log that checkpoint writes must hold it: so a
run whose final checkpoint fails emits `RunFinished` and then `ErrorEvent` (the run raises
`PersistenceError`), and its logged events end the same way. The session's next turn may
start on `RunFinished` (from an async callback, or a task that read the event from a
subscription): asked for on the run's event loop once the run has emitted it, a turn waits
there for the run to let go of the session. Until then, or on another loop, it is refused
while the run holds the session.

A checkpoint backend's event log (`AgentRuntime.session_events`) keeps every event but
`LlmTextDelta` (`LlmResponse` holds the whole text) and `CheckpointSaved`. It is written with
each step's checkpoint and with a failed run's end, so a process that dies loses the events
of the step it was in. `resume` continues that step from its journal: what it reuses there
(the model's reply, the calls that finished) it emits, and so logs, unless the log has it
(a run cancelled there logged it), with the observation the call gave then. What the
journal does not keep is lost: the dead run's `RunStarted` when it died in its first step,
the start of a call it had not finished (the resume runs that call again, or refuses it).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from types import TracebackType
from typing import Any, NamedTuple, TypeVar

from llm_agent_runtime._copies import Unshared
from llm_agent_runtime._core import EventFanout
from llm_agent_runtime.errors import AgentRuntimeError

__all__ = [
    "CheckpointSaved",
    "ErrorEvent",
    "Event",
    "EventBus",
    "LlmResponse",
    "LlmTextDelta",
    "RunFinished",
    "RunStarted",
    "Subscription",
    "ToolCallFinished",
    "ToolCallStarted",
]


class RunStarted(NamedTuple):
    """A run began."""

    session_id: str
    agent_id: str
    prompt: str


class LlmTextDelta(NamedTuple):
    """Model text as it arrives: streamed pieces, or a whole reply that was not streamed.

    Every mode emits them (ReAct text models too), so their texts joined are the reply as
    the model wrote it, before any `on_post_llm` rewrite (`LlmResponse` holds the rewritten
    text), and ending where a stop sequence cuts it. Only while a callback or a subscriber
    listens (`EventBus.listening`): the event log of a checkpoint backend does not keep them
    (`LlmResponse` holds the whole text). A provider's reply is streamed, in either mode,
    when the provider can stream (`chat_stream`, and no `streams_text = False`); a model
    that cannot (a plain `infer`, a provider with `chat` or `complete` alone,
    `ScriptedProvider`) gives its whole reply as one delta, once it has come. A reply a
    resumed run takes from its journal is not sent again.
    """

    session_id: str
    text: str


class LlmResponse(NamedTuple):
    """The model answered one call."""

    session_id: str
    step: int
    text: str
    model_ms: float


class ToolCallStarted(NamedTuple):
    """A tool call is about to run."""

    session_id: str
    step: int
    tool: str
    arguments: Any


class ToolCallFinished(NamedTuple):
    """A tool call finished; `error_kind` is None on success.

    Every `ToolCallStarted` gets one. A call that a cancellation, the loop timeout, a
    policy error or a listener failing on its start cut off finishes with an `error: ...`
    observation (`transient` for a cancellation, else `permanent`), before the run's
    `ErrorEvent`.
    """

    session_id: str
    step: int
    tool: str
    observation: str
    error_kind: str | None
    tool_ms: float


class CheckpointSaved(NamedTuple):
    """A checkpoint was written under `key`."""

    session_id: str
    key: str


class RunFinished(NamedTuple):
    """A run ended (with or without a final answer).

    `step_count` and `duration_ms` are the session's (`AgentSession`), so a multi-turn
    session's add up its turns. With a checkpoint backend, the final checkpoint is saved
    after this event (the event log it writes holds it): when that save fails, an
    `ErrorEvent` follows, and the run raises `PersistenceError`.
    """

    session_id: str
    final_answer: str | None
    step_count: int
    duration_ms: float


class ErrorEvent(NamedTuple):
    """A run failed with `error`."""

    session_id: str
    error: BaseException


Event = (
    RunStarted
    | LlmTextDelta
    | LlmResponse
    | ToolCallStarted
    | ToolCallFinished
    | CheckpointSaved
    | RunFinished
    | ErrorEvent
)
"""Any event the runtime emits."""

_Callback = TypeVar("_Callback", bound=Callable[[Event], Any])
"""A callback `EventBus.on` registers, returned as it is (it works as a decorator)."""


logger = logging.getLogger("llm_agent_runtime")

# The async callbacks scheduled by the run in progress (the context's), which it waits for.
RUN_CALLBACKS: ContextVar[set[asyncio.Future[Any]] | None] = ContextVar(
    "llm_agent_runtime_run_callbacks", default=None
)


def _scheduler(pending: set[asyncio.Future[Any]]) -> Callable[[Any, Any], None]:
    """What happens to a callback's result: a coroutine (an async callback) is scheduled.

    Called with the event the callback was given, which its failure's log record names.
    """

    def done(event: Any, task: asyncio.Future[Any]) -> None:
        # Logged here, however it ends: a run that is cancelled (or no run) waits for none.
        pending.discard(task)
        _log_failure(task, event)

    def schedule(result: Any, event: Any) -> None:
        if asyncio.iscoroutine(result):
            loop = asyncio._get_running_loop()
            if loop is None:
                # `ensure_future` would make a task on a loop that never runs (losing the
                # callback without a word) or fail with a bare RuntimeError.
                result.close()
                raise AgentRuntimeError(
                    "an async event callback needs a running event loop: this event was "
                    "emitted outside one (from sync code, or a thread without a loop)"
                )
            task = loop.create_task(result)
            run = RUN_CALLBACKS.get()
            if run is not None:
                run.add(task)
            # Keep a reference so the scheduled callback is not garbage-collected mid-run.
            pending.add(task)
            task.add_done_callback(functools.partial(done, event))

    return schedule


async def settle_callbacks(
    tasks: set[asyncio.Future[Any]], deadline: float | None, session_id: str
) -> None:
    """Waits for the async callbacks in `tasks`, and for those they schedule meanwhile.

    One that raised is logged with its traceback as it ends (see `_scheduler`): it ran beside
    the run (of session `session_id`), whose outcome is its own. At `deadline` (a
    `time.perf_counter()` reading; None: none) the wait ends with a warning, the callbacks
    left running. Being cancelled stops the wait, not the callbacks.
    """
    while tasks:
        batch = list(tasks)
        tasks.clear()
        timeout = None if deadline is None else max(0.0, deadline - time.perf_counter())
        _, unfinished = await asyncio.wait(batch, timeout=timeout)
        if unfinished:
            logger.warning(
                "%d async event callbacks of session %s still running at the run's deadline: "
                "left running",
                len(unfinished),
                session_id,
            )
            return


def _log_failure(task: asyncio.Future[Any], event: Any) -> None:
    """Logs the exception of a finished async callback given `event`, if it raised one."""
    if not task.cancelled() and (error := task.exception()) is not None:
        logger.error(
            "an async event callback failed on %s of session %s: %r",
            type(event).__name__,
            getattr(event, "session_id", None),
            error,
            exc_info=(type(error), error, error.__traceback__),
        )


class EventBus(Unshared):
    """Fans events out to callbacks and to async subscribers.

    `active` is False while nobody listens, so the runtime skips building events entirely.
    `listening` is False while nobody listens but the runtime's own event log (with a
    checkpoint backend): the runtime then neither streams a model's text nor emits
    `LlmTextDelta`, which the log does not keep.
    """

    __slots__ = (
        "_callbacks",
        "_changing",
        "_pending",
        "_queues",
        "_recorders",
        "active",
        "emit",
        "emit_new",
        "listening",
    )

    def __init__(self) -> None:
        self._callbacks: list[Callable[[Event], Any]] = []
        self._queues: list[_SubscriberQueue] = []
        self._pending: set[asyncio.Future[Any]] = set()
        self._recorders: list[Callable[[Event], Any]] = []
        # Held while the listeners change and the flags are set from them: threads adding and
        # removing listeners at once must not leave a flag set from lists since changed (an
        # `active` False with a callback registered would drop every event), nor drop a
        # subscription made while `close` runs without ending it.
        self._changing = threading.RLock()
        self.active = False
        self.listening = False
        """Whether a callback or a subscriber listens, besides the runtime's event log: the
        runtime streams a model's text, and emits `LlmTextDelta`, only then."""
        # The delivery loop runs in Rust, over these very lists.
        fanout = EventFanout(self._callbacks, self._queues, _scheduler(self._pending))
        self.emit: Callable[[Event], None] = fanout.emit
        """Delivers an event to every subscriber, then to every callback, in order.

        Subscribers come first so that they see events in emission order even when a
        callback emits a follow-up event.
        """
        self.emit_new: Callable[[type[Event], tuple[Any, ...]], None] = fanout.emit_new
        """`emit(cls(*fields))`, the event built in Rust: the runtime's per-step events."""

    def on(self, callback: _Callback) -> _Callback:
        """Registers `callback` (sync, or async: it is scheduled) for every event.

        An event goes to the callbacks registered when it is emitted: one added or removed
        by a callback while an event is delivered takes effect from the next event.

        A sync callback runs as the event is emitted; one that raises fails the run (after
        the other callbacks got the event). An async callback runs as a task beside the
        run, and the run waits for the ones its events started before it returns or raises
        (after it let go of its session, and unless it is cancelled), so none is lost when
        the program ends with the run; the wait ends at the run's `loop_timeout_ms`, the
        callbacks left running (say, a timed-out run's `ErrorEvent` ones). One that raises
        is logged (logger `llm_agent_runtime`), and the run's outcome is its own. An async
        callback is an `async def` function (or a partial of one) or an object whose
        `__call__` is one; a sync callback that returns a coroutine has it scheduled too, and
        waited for alike. One registered while a run goes on gets its next events, and that
        run waits for them too. An event emitted outside a running event loop (`emit` called
        from sync code) cannot schedule an async callback: that callback is skipped, and
        `emit` raises `AgentRuntimeError` once the other callbacks got the event.

        Returns:
            The callback, so this works as a decorator.

        Raises:
            AgentRuntimeError: `callback` is not callable (registered, it would fail every
                run that emits an event).
        """
        if not callable(callback):
            from llm_agent_runtime.orchestration._checks import short_repr

            # A bounded repr that never raises: else its error replaced this one.
            raise AgentRuntimeError(
                f"an event callback must be callable, got {short_repr(callback)}"
            )
        with self._changing:
            self._callbacks.append(callback)
            self._listeners_changed()
        return callback

    def _add_recorder(self, callback: Callable[[Event], Any]) -> None:
        """Registers `callback` as `on` does, as a recorder, which does not count as listening.

        A runtime with a checkpoint backend keeps its event log so: every event is built and
        reaches the recorder (`active`), but `listening` stays False until a callback or a
        subscriber listens, so a recorder alone is sent no text deltas. `off` removes it.
        """
        with self._changing:
            self._callbacks.append(callback)
            self._recorders.append(callback)
            self._listeners_changed()

    def _listeners_changed(self) -> None:
        # Flags read on every step, so kept as attributes rather than computed each time.
        # Called with `_changing` held, after each change.
        self.active = bool(self._callbacks or self._queues)
        self.listening = bool(self._queues) or len(self._callbacks) > len(self._recorders)

    def off(self, callback: Callable[[Event], Any]) -> None:
        """Removes a callback registered with `on`; one that is not registered is ignored.

        Like ending a subscription twice, removing a callback twice (or one never added) is
        harmless: afterwards the callback is not registered, which is all `off` promises.
        A callback registered more than once is removed once.
        """
        with self._changing:
            with contextlib.suppress(ValueError):  # not registered: nothing to remove
                self._callbacks.remove(callback)
                if callback in self._recorders:
                    self._recorders.remove(callback)
            self._listeners_changed()

    def subscribe(self, max_buffered: int | None = None) -> Subscription:
        """Subscribes now; the iterator yields events until `close()` is called.

        The subscription ends (and stops collecting events) when its iterator ends, when the
        task iterating it is cancelled while it waits for the next event, when it is closed
        (`await stream.aclose()`, or leaving `async with bus.subscribe() as stream:`), or
        when it is dropped, iterated or not. A task cancelled while it handles an event (in
        the `async for` body) is not seen by the iterator: use `async with` (or close it in
        a `finally`) when the subscription outlives its loop (kept in a variable, say).

        Every event of every run on the runtime is queued for the subscriber until it reads
        it. Without `max_buffered` there is no limit: a subscriber must keep reading, or
        close the subscription when it stops (one kept but not read holds every event since
        in memory). With it, a subscriber that falls behind by that many events loses the
        oldest unread ones, counted in `Subscription.dropped`: a slow consumer (a stalled
        web client, say) costs bounded memory and never slows the runs. A callback (`on`)
        queues nothing.

        Iterate it on one event loop. Runs on other threads (each on its own loop) may emit
        meanwhile: their events are handed to the loop iterating it (thread-safely, in each
        thread's emission order), never put on its queue from their own thread. Once that
        loop has closed, events are no longer queued for it. Reading it on another loop (a
        second `asyncio.run`, say) raises `AgentRuntimeError`, and ends the subscription
        when the loop that iterated it has closed: subscribe again on the new loop.

        Args:
            max_buffered: Most unread events kept (at least 1); None: no limit.

        Returns:
            An async iterator of events in emission order.

        Raises:
            ValueError: `max_buffered` is not an int of at least 1.
        """
        if max_buffered is None:
            queue: _SubscriberQueue = _SubscriberQueue()
        elif type(max_buffered) is not int or max_buffered < 1:
            from llm_agent_runtime.orchestration._checks import short_repr

            raise ValueError(
                f"max_buffered must be an int of at least 1, got {short_repr(max_buffered)}"
            )
        else:
            queue = _DroppingQueue(max_buffered)
        with self._changing:
            self._queues.append(queue)
            self._listeners_changed()
        return Subscription(self, queue)

    def _unsubscribe(self, queue: _SubscriberQueue) -> None:
        with self._changing:
            # By identity: the Rust fan-out delivers over this very list.
            for index, registered in enumerate(self._queues):
                if registered is queue:
                    del self._queues[index]
                    break
            self._listeners_changed()

    def close(self) -> None:
        """Ends every open subscription.

        Each subscriber still reads the events emitted before `close()`, then its iterator
        ends; later events do not reach it.
        """
        with self._changing:
            # Taken off the list first: handing over an end allocates, so the collector may
            # finalize a subscription, which leaves the list (it would skip the next one).
            queues = list(self._queues)
            self._queues.clear()  # the same list object: the Rust fan-out holds it
            self._listeners_changed()
            for queue in queues:
                queue.put_nowait(None)


class _SubscriberQueue(asyncio.Queue["Event | None"]):
    """A subscriber's queue, which runs on any thread may put events on.

    An `asyncio.Queue` is not thread-safe: putting an item wakes a waiting reader through
    its loop, which from another thread is not woken (the reader waits on), raises in a
    debug loop (failing the emitting run) or, once the loop closed, raises "Event loop is
    closed". So an item put from a thread other than the reader's loop's is handed to that
    loop (`call_soon_threadsafe`); one for a loop that has closed is dropped (no one reads).
    The end (None) is handed over even on the reader's loop, so that it comes after the
    events other threads handed over before it; an event that comes after it is dropped.
    Until a reader waits, items are queued on the spot, under `handover`, which the reader
    takes to set `reader_loop`: none is put by another thread once it waits.
    """

    def __init__(self) -> None:
        super().__init__()
        self.reader_loop: asyncio.AbstractEventLoop | None = None
        """The loop iterating the subscription (set as it first waits for an event)."""
        self.ended = False
        """Whether the end was queued: no later event is read."""
        self.handover = threading.Lock()
        """Held while an item is queued on the spot, and while `reader_loop` is set."""

    def put_nowait(self, item: Event | None) -> None:
        loop = self.reader_loop
        if loop is None:
            with self.handover:
                loop = self.reader_loop
                if loop is None:  # no reader waits yet: queued here
                    self._deliver(item)
                    return
        if item is None or loop is not asyncio._get_running_loop():
            with contextlib.suppress(RuntimeError):  # the reader's loop has closed
                loop.call_soon_threadsafe(self._deliver, item)
            return
        self._deliver(item)

    def _deliver(self, item: Event | None) -> None:
        """Queues `item`, on the reader's loop (or before any reader waits)."""
        if item is None:
            self.ended = True
        elif self.ended:  # emitted as the subscription ended (by a run on another thread)
            return
        super().put_nowait(item)


class _DroppingQueue(_SubscriberQueue):
    """A subscriber's queue of at most `limit` unread events: a new one pushes out the oldest.

    The end-of-stream marker (None, from `EventBus.close`) is always kept.

    Events from other threads wait in an inbox of at most `limit` too (the oldest pushed
    out), which one wake-up of the reader's loop empties: handed over one callback each,
    they piled up unbounded while that loop was not running (a program that runs it only
    between reads) or was blocked.
    """

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.dropped = 0
        self._inbox: collections.deque[Event | None] = collections.deque()
        self._waking = False  # a wake-up to empty the inbox is scheduled
        self._end_sent = False  # the end is in the inbox (or was)
        # Guards the inbox, `_waking` and `dropped` (counted on both sides).
        self._inbox_lock = threading.Lock()

    def put_nowait(self, item: Event | None) -> None:
        loop = self.reader_loop
        if loop is None:
            with self.handover:  # read again under it: a reader may be starting to wait
                loop = self.reader_loop
                if loop is None:  # no reader waits yet: queued here
                    self._deliver(item)
                    return
        if loop is asyncio._get_running_loop():
            super().put_nowait(item)  # the reader's own loop: at once (the end handed over)
            return
        with self._inbox_lock:  # once a reader waits, every other thread's item comes here
            if self._end_sent:
                return  # nothing after the end is read
            self._end_sent = item is None
            self._inbox.append(item)
            if len(self._inbox) > self.limit and not self._end_sent:
                self._inbox.popleft()  # an event: the end is last, and only it is kept
                self.dropped += 1
            if self._waking:
                return
            self._waking = True
        with contextlib.suppress(RuntimeError):  # the reader's loop has closed
            loop.call_soon_threadsafe(self._empty_inbox)

    def _empty_inbox(self) -> None:
        """Queues the inbox's events, on the reader's loop."""
        with self._inbox_lock:
            items = list(self._inbox)
            self._inbox.clear()
            self._waking = False
        for item in items:
            self._deliver(item)

    def _deliver(self, item: Event | None) -> None:
        if item is not None and not self.ended and self.qsize() >= self.limit:
            # One thread at a time queues (under `handover`, or on the reader's loop).
            self.get_nowait()
            with self._inbox_lock:
                self.dropped += 1
        super()._deliver(item)


class Subscription(Unshared):
    """The async iterator `EventBus.subscribe()` returns: one subscriber's queue.

    Not an async generator: a generator's cleanup runs only once it has been started, so an
    iterator that was never iterated would stay subscribed (collecting events) forever. This
    one unsubscribes when dropped as well. Also an async context manager, which ends the
    subscription as its block ends.
    """

    __slots__ = ("_bus", "_dropped", "_queue")

    def __init__(self, bus: EventBus, queue: _SubscriberQueue) -> None:
        self._bus: EventBus | None = bus
        self._queue: _SubscriberQueue | None = queue
        self._dropped = 0  # the count when the subscription ended

    def __aiter__(self) -> Subscription:
        return self

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Ends the subscription (`aclose`), however the block ends."""
        self._end()

    @property
    def dropped(self) -> int:
        """Events this subscriber lost by falling `max_buffered` behind (0 without a limit)."""
        queue = self._queue
        return self._dropped if queue is None else getattr(queue, "dropped", 0)

    async def __anext__(self) -> Event:
        queue = self._queue
        if queue is None:
            raise StopAsyncIteration
        loop = asyncio.get_running_loop()
        reader = queue.reader_loop
        if reader is None:  # runs on other threads hand their events to this loop
            with queue.handover:  # once an event being queued on the spot is queued
                if queue.reader_loop is None:
                    queue.reader_loop = loop
            reader = queue.reader_loop
        if reader is not loop:
            raise self._other_loop(reader)
        try:
            event = await queue.get()
        except BaseException:  # cancelled: the subscriber is gone
            self._end()
            raise
        if event is None:  # the end: `EventBus.close()`, or the subscription ended elsewhere
            queue.put_nowait(None)  # left for any other task waiting on this subscription
            self._end()
            raise StopAsyncIteration
        return event

    def _other_loop(self, reader: asyncio.AbstractEventLoop) -> AgentRuntimeError:
        """The error for a read on a loop other than `reader`, the one iterating it.

        Its events go to `reader`: waiting here would never end (an `asyncio.Queue` waits on
        one loop). A subscription whose loop has closed gets no event any more: it ends. One
        whose loop still runs (on another thread) is left to the reader there.
        """
        ended = ""
        if reader.is_closed():
            self._end()
            ended = " (closed since: the subscription has ended)"
        return AgentRuntimeError(
            "a subscription is iterated on one event loop, and this one was first iterated "
            f"on another event loop{ended}: subscribe again on this loop"
        )

    async def aclose(self) -> None:
        """Ends the subscription (events not read yet are dropped).

        A task waiting on it for the next event stops iterating too.
        """
        self._end()

    def _end(self, dropped: bool = False) -> None:
        bus, queue = self._bus, self._queue
        self._bus = self._queue = None
        if queue is not None:
            self._dropped = getattr(queue, "dropped", 0)
        if bus is not None and queue is not None:
            bus._unsubscribe(queue)
            # A task waiting on the queue (another reader of this subscription, say) would
            # wait forever: no event comes to it now. The end marker ends its iteration.
            # A dropped subscription has no reader (one waiting would hold it), and the
            # collector may drop it while its queue's lock is held, queuing an event on
            # this thread: it hands over nothing.
            if not dropped:
                queue.put_nowait(None)

    def __del__(self) -> None:
        self._end(dropped=True)
