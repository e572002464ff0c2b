"""Counting a task's cancellations without losing one asked but not delivered yet."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable
from typing import Any

__all__ = ["CANCEL_COUNTS_EXACT", "cancellations_so_far"]

CANCEL_COUNTS_EXACT = sys.version_info >= (3, 13)
"""Whether a task's count of cancellation requests (`Task.cancelling`) is exact. Before
Python 3.13, a `TaskGroup` whose child failed leaves the count of its task raised (CPython
gh-116720): code that took a rise of the count for a cancellation would take one where
there is none."""


async def cancellations_so_far(
    task: asyncio.Task[Any] | None, unsent: Awaitable[Any] | None = None
) -> int:
    """`task.cancelling()` (0 for no task), once a cancellation asked of it is delivered.

    Code that compares the count before and after an await, to tell a cancellation asked
    meanwhile from the task's past ones, would count one asked but not delivered yet as past
    and lose it: Ctrl-C under `asyncio.run` cancels the main task from inside whatever it
    runs, so the count rises at once and the `CancelledError` comes at the next suspension.
    When the count is not 0, a yield to the loop delivers it first, here. `unsent`, the
    coroutine the caller was about to await, is closed then: it never starts, and is not
    left "never awaited".

    Raises:
        asyncio.CancelledError: A cancellation was asked and not delivered yet.
    """
    if task is None:
        return 0
    count = task.cancelling()
    if count:
        try:
            await asyncio.sleep(0)
        except BaseException:
            close = getattr(unsent, "close", None)
            if close is not None:
                close()
            raise
    return count
