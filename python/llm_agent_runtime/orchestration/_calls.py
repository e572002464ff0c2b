"""Calling sync and async callables alike."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any


async def call_maybe_async(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Calls `fn`; awaits the result when it is awaitable (async function or coroutine)."""
    result = fn(*args, **kwargs)
    if inspect.isawaitable(result):
        return await result
    return result
