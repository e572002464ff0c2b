"""Calling sync and async callables alike; keeping background tasks alive."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound="asyncio.Future[Any]")

_BACKGROUND: set[asyncio.Future[Any]] = set()
"""Tasks left to finish on their own (the event loop keeps only weak references to tasks)."""


async def call_maybe_async(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Calls `fn`; awaits the result when it is awaitable (async function or coroutine)."""
    result = fn(*args, **kwargs)
    if inspect.isawaitable(result):
        return await result
    return result


def keep_alive(future: F) -> F:
    """Holds a strong reference to `future` until it is done; returns it."""
    _BACKGROUND.add(future)
    future.add_done_callback(_BACKGROUND.discard)
    return future
