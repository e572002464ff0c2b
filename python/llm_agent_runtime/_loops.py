"""What belongs to one event loop: a client whose connections that loop opened.

A pooled connection is bound to the loop that opened it, and is useless (or worse: its
commands fail once sent) on another one, as after a second `asyncio.run`. Clients are kept
one per loop, and each is closed within its own loop as that loop ends.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, Generic, NamedTuple, TypeVar

__all__ = ["PerLoop", "close_now", "close_with_loop"]

T = TypeVar("T")


def close_with_loop(
    close: Callable[[], Awaitable[object]], ignore: tuple[type[Exception], ...] = ()
) -> AsyncGenerator[None, None]:
    """An async generator, started on the running loop, whose `finally` awaits `close()`.

    An event loop keeps track of the async generators started on it, and its
    `shutdown_asyncgens` (which `asyncio.run` and `asyncio.Runner` call before closing it)
    closes them: so `close()` runs in its own loop, when the loop ends, however its owner was
    left. Closing the generator earlier (`aclose`) runs it then. `close()` failing with
    `OSError`, `RuntimeError` (a connection already gone) or one of `ignore` is ignored.
    """

    async def close_at_end() -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            with contextlib.suppress(OSError, RuntimeError, *ignore):
                await close()

    closer = close_at_end()
    # Runs it to its `yield` at once (nothing there awaits): the loop now knows of it.
    with contextlib.suppress(StopIteration):
        closer.asend(None).__await__().send(None)
    return closer


async def close_now(closer: AsyncGenerator[None, None]) -> None:
    """Closes a `close_with_loop` generator (in the loop it belongs to)."""
    await closer.aclose()


class _Entry(NamedTuple, Generic[T]):
    resource: T
    closer: AsyncGenerator[None, None]


class PerLoop(Generic[T]):
    """One resource per event loop it is used from, made by `make()` on first use there.

    Each is closed by `close(resource)` within its own loop: by `aclose`, or as the loop ends
    under `asyncio.run` (or `asyncio.Runner`, or any loop's `shutdown_asyncgens`). A loop
    closed without `shutdown_asyncgens` (run by hand, then closed) leaves its resource to
    `abandon(resource)`, called when another loop next uses the object (without it, to the
    garbage collector). Loops in several threads may share the object.
    """

    def __init__(
        self,
        make: Callable[[], T],
        close: Callable[[T], Awaitable[object]],
        abandon: Callable[[T], object] | None = None,
    ) -> None:
        self._make = make
        self._close = close
        self._abandon = abandon
        self._entries: dict[asyncio.AbstractEventLoop, _Entry[T]] = {}
        # The closes under way, with the loop each runs in: an `aclose` from that loop
        # waits for them too. Finding nothing left to close, it returned at once, before a
        # concurrent one (from its loop, or another thread) had closed its loop's resource.
        self._closing: list[tuple[asyncio.AbstractEventLoop, concurrent.futures.Future[None]]] = []
        self._lock = threading.Lock()
        _ALL.add(self)

    def get(self) -> T:
        """The running loop's resource.

        Raises:
            RuntimeError: No event loop is running.
        """
        loop = asyncio.get_running_loop()
        with self._lock:
            entry = self._entries.get(loop)
            if entry is not None:
                return entry.resource
            # Closed as its loop ended, or left as it was by a loop closed without ending it.
            stale = [self._entries.pop(old) for old in list(self._entries) if old.is_closed()]
            resource = self._make()
            self._entries[loop] = _Entry(resource, close_with_loop(lambda: self._close(resource)))
        if self._abandon is not None:
            for gone in stale:
                self._abandon(gone.resource)
        return resource

    async def aclose(self) -> None:
        """Closes every loop's resource; a later `get` makes a new one.

        The running loop's is closed before this returns, as is one a concurrent `aclose`
        is closing; one of another loop that is running (in another thread) is closed
        there, without waiting for it; one of an idle loop when that loop next runs; one of
        a loop closed without being ended is given to `abandon` at once.
        """
        current = asyncio.get_running_loop()
        own: concurrent.futures.Future[None] | None = None
        with self._lock:
            entries, self._entries = self._entries, {}
            stale = [entry for loop, entry in entries.items() if loop.is_closed()]
            self._closing = [
                (loop, done)
                for loop, done in self._closing
                if not done.done() and not loop.is_closed()
            ]
            under_way = [done for loop, done in self._closing if loop is current]
            for loop, entry in entries.items():
                if loop is current:
                    own = concurrent.futures.Future()
                    self._closing.append((loop, own))
                elif loop.is_running():
                    with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                        closing = asyncio.run_coroutine_threadsafe(close_now(entry.closer), loop)
                        self._closing.append((loop, closing))
        if self._abandon is not None:  # closed without being ended: no loop to close it in
            for entry in stale:
                self._abandon(entry.resource)
        if own is not None:
            try:
                await close_now(entries[current].closer)
            finally:
                own.set_result(None)
        if under_way:
            waited = [asyncio.wrap_future(done) for done in under_way]
            for future in waited:
                future.add_done_callback(_retrieve)  # their closer reports their failure
            await asyncio.wait(waited)


def _retrieve(future: asyncio.Future[None]) -> None:
    """Marks a finished future's exception retrieved: it is not logged as never retrieved."""
    if not future.cancelled():
        future.exception()


_ALL: weakref.WeakSet[PerLoop[Any]] = weakref.WeakSet()
"""Every `PerLoop`: a fork()ed child gives each a lock of its own (`_after_fork_in_child`)."""


def _after_fork_in_child() -> None:
    # Another thread of the parent may have held a lock as it forked: in the child, no
    # thread ever releases it.
    for per_loop in list(_ALL):
        per_loop._lock = threading.Lock()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_after_fork_in_child)
