"""Typed events of an agent run, delivered to callbacks and async streams.

Events are named tuples: immutable, and cheap enough to build on every step.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, NamedTuple

from llm_agent_runtime._core import EventFanout

__all__ = [
    "CheckpointSaved",
    "ErrorEvent",
    "Event",
    "EventBus",
    "LlmResponse",
    "LlmTextDelta",
    "RunFinished",
    "RunStarted",
    "ToolCallFinished",
    "ToolCallStarted",
]


class RunStarted(NamedTuple):
    """A run began."""

    session_id: str
    agent_id: str
    prompt: str


class LlmTextDelta(NamedTuple):
    """A piece of streamed model text."""

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
    """A tool call finished; `error_kind` is None on success."""

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
    """A run ended (with or without a final answer)."""

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


def _scheduler(pending: set[asyncio.Future[Any]]) -> Callable[[Any], None]:
    """What happens to a callback's result: a coroutine (an async callback) is scheduled."""

    def schedule(result: Any) -> None:
        if asyncio.iscoroutine(result):
            task = asyncio.ensure_future(result)
            # Keep a reference so the scheduled callback is not garbage-collected mid-run.
            pending.add(task)
            task.add_done_callback(pending.discard)

    return schedule


class EventBus:
    """Fans events out to callbacks and to async subscribers.

    `active` is False while nobody listens, so the runtime skips building events entirely.
    """

    __slots__ = ("_callbacks", "_pending", "_queues", "active", "emit")

    def __init__(self) -> None:
        self._callbacks: list[Callable[[Event], Any]] = []
        self._queues: list[asyncio.Queue[Event | None]] = []
        self._pending: set[asyncio.Future[Any]] = set()
        self.active = False
        # The delivery loop runs in Rust, over these very lists.
        self.emit: Callable[[Event], None] = EventFanout(
            self._callbacks, self._queues, _scheduler(self._pending)
        ).emit
        """Delivers an event to every callback, then to every subscriber, in order."""

    def on(self, callback: Callable[[Event], Any]) -> Callable[[Event], Any]:
        """Registers `callback` (sync, or async: it is scheduled) for every event.

        Returns:
            The callback, so this works as a decorator.
        """
        self._callbacks.append(callback)
        self.active = True
        return callback

    def off(self, callback: Callable[[Event], Any]) -> None:
        """Removes a callback registered with `on`."""
        self._callbacks.remove(callback)
        self.active = bool(self._callbacks or self._queues)

    def subscribe(self) -> AsyncIterator[Event]:
        """Subscribes now; the iterator yields events until `close()` is called.

        Returns:
            An async iterator of events in emission order.
        """
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self._queues.append(queue)
        self.active = True
        return self._drain(queue)

    async def _drain(self, queue: asyncio.Queue[Event | None]) -> AsyncIterator[Event]:
        try:
            while True:
                event = await queue.get()
                if event is None:
                    return
                yield event
        finally:
            self._queues.remove(queue)
            self.active = bool(self._callbacks or self._queues)

    def close(self) -> None:
        """Ends every open subscription."""
        for queue in self._queues:
            queue.put_nowait(None)
