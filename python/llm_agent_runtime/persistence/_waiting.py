"""Waiting for work that must not be abandoned half way, whatever cancels the waiter."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def wait_through_cancellation(
    future: asyncio.Future[Any], timeout: float | None = None
) -> None:
    """Waits until `future` is done, at most `timeout` seconds (None: no bound).

    A cancellation of the waiting task meanwhile does not stop the wait; the caller, which
    is handling a first cancellation, raises that one after. Used for a thread a cancelled
    call must wait for, and a cleanup that must not stop half way.
    """
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    while not future.done():
        left = None if deadline is None else deadline - loop.time()
        if left is not None and left <= 0:
            return
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait([future], timeout=left)


def retrieve_outcome(future: asyncio.Future[Any]) -> None:
    """Marks a finished future's exception retrieved (not logged): its waiter raises its own."""
    if not future.cancelled():
        future.exception()


async def run_in_thread(work: Callable[[], T], grace: float | None = None) -> T:
    """Runs `work` in a worker thread and returns what it returns (or raises what it raises).

    A thread cannot be stopped, so a cancelled call does not leave it running unseen (a
    write that lands after the caller's next one, say): cancelled before its thread started,
    `work` never runs; cancelled later, the call waits for the thread, at most `grace`
    seconds (None: until it ends), before the cancellation goes on. Only work still running
    after the grace may then happen later.
    """
    guard = threading.Lock()
    state = {"started": False, "abandoned": False}

    def guarded() -> T:
        with guard:
            if state["abandoned"]:  # cancelled before this thread started: never runs
                raise _Abandoned
            state["started"] = True
        return work()

    done = asyncio.get_running_loop().run_in_executor(None, guarded)
    done.add_done_callback(retrieve_outcome)  # a cancelled caller never sees it
    try:
        return await asyncio.shield(done)
    except asyncio.CancelledError:
        with guard:
            state["abandoned"] = not state["started"]
        if not state["abandoned"]:
            await wait_through_cancellation(done, grace)
        raise


class _Abandoned(Exception):
    """A call cancelled before its thread started: the thread skips its work."""
