"""Calling sync and async callables alike; keeping background tasks alive."""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable
from types import GeneratorType
from typing import Any, TypeVar

F = TypeVar("F", bound="asyncio.Future[Any]")

_BACKGROUND: set[asyncio.Future[Any]] = set()
"""Tasks left to finish on their own (the event loop keeps only weak references to tasks)."""

_NOT_AWAITABLE: set[type] = set()
"""Types whose instances are not awaitable, as `refuse_awaitable` found them (at most
`_NOT_AWAITABLE_MAX`): it runs on a breaker's fast path, where `inspect.isawaitable` would
double the cost of a call (its ABC check), and a set lookup costs a tenth of that."""

_NOT_AWAITABLE_MAX = 256


async def call_maybe_async(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """Calls `fn`; awaits the result when it is awaitable (async function or coroutine).

    `fn` is positional-only, so `kwargs` may hold an argument named `fn`.
    """
    result = fn(*args, **kwargs)
    if inspect.isawaitable(result):
        return await result
    return result


def is_async_callable(fn: Any) -> bool:
    """Whether calling `fn` returns a coroutine.

    True for an async function, an object with an async `__call__`, or a `functools.partial`
    of either.
    """
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.iscoroutinefunction(fn):
        return True
    if isinstance(fn, type) or inspect.isroutine(fn):
        return False  # calling a class makes an instance; a plain routine was checked above
    return inspect.iscoroutinefunction(type(fn).__call__)


def refuse_awaitable(result: Any, api: str) -> None:
    """Raises `TypeError` when a sync API's callable returned an awaitable (closed first).

    Its work would run, unobserved, only if someone awaited it: a sync wrapper would take
    an un-awaited coroutine (or a future, any awaitable) for a success.
    """
    cls = type(result)
    if cls in _NOT_AWAITABLE:
        return
    if inspect.isawaitable(result):
        close = getattr(result, "close", None)
        if close is not None:
            close()  # no "never awaited" warning: it is refused on purpose
        raise TypeError(
            f"{api} needs a sync callable, and this one returned {type(result).__name__}: "
            "use the async API for async callables"
        )
    # A generator's awaitability is its own (a generator-based coroutine), and an object
    # posing as another class (a proxy) is checked as that class: neither tells for its type.
    known = cls is not GeneratorType and result.__class__ is cls
    if known and len(_NOT_AWAITABLE) < _NOT_AWAITABLE_MAX:
        _NOT_AWAITABLE.add(cls)


def keep_alive(future: F) -> F:
    """Holds a strong reference to `future` until it is done; returns it."""
    _BACKGROUND.add(future)
    future.add_done_callback(_BACKGROUND.discard)
    return future
