"""Waiting for work that must not be abandoned half way, whatever cancels the waiter."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


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
