"""Calling sync and async callables alike; keeping background tasks alive."""

from __future__ import annotations

import asyncio
import functools
import inspect
import sys
from collections.abc import Callable
from types import GeneratorType
from typing import Any, TypeVar

from llm_agent_runtime.orchestration._checks import short_repr

F = TypeVar("F", bound="asyncio.Future[Any]")

running_loop = asyncio._get_running_loop
"""The running event loop, or None (no exception): what `current_task()` starts from."""
if sys.version_info >= (3, 12):
    task_of: Callable[[asyncio.AbstractEventLoop], asyncio.Task[Any] | None] = asyncio.current_task
else:  # a Python function there (~0.4 us): the dict it reads, at once
    task_of = asyncio.tasks._current_tasks.get  # type: ignore[attr-defined]


def current_task() -> asyncio.Task[Any] | None:
    """The running task, or None outside one (no event loop runs, or a call driven by another).

    `asyncio.current_task()` without its exception, and fast on 3.11: the per-step paths and
    each `BackpressureGuard` block look the task up.
    """
    loop = running_loop()
    return None if loop is None else task_of(loop)


_BACKGROUND: set[asyncio.Future[Any]] = set()
"""Tasks left to finish on their own (the event loop keeps only weak references to tasks)."""


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


def surely_not_awaitable(result: Any) -> bool:
    """Whether `result` is no awaitable, by a test much cheaper than `inspect.isawaitable`.

    False when it may be one (`inspect.isawaitable` tells then): it has an `__await__` (a
    coroutine, a future, a proxy that forwards it), or is a generator (a generator-based
    coroutine is awaitable by a flag of its code). An object that only poses as an awaitable
    class (its `__class__` says so, its type has no `__await__`) cannot be awaited: it passes.

    It runs on a breaker's fast path, where `inspect.isawaitable` (an ABC check) would double
    the cost of a call. No type is cached: a cache kept classes made at run time alive (a
    MagicMock's, one per instance), and, bounded, sent every type first seen once full down
    the slow path. `__await__` is looked up on the instance, which finds what its class has:
    on the class, a missing attribute costs an exception (150 ns on Python 3.11).
    """
    return getattr(result, "__await__", None) is None and type(result) is not GeneratorType


def refuse_awaitable(result: Any, api: str) -> None:
    """Raises `TypeError` when a sync API's callable returned an awaitable (closed first).

    Its work would run, unobserved, only if someone awaited it: a sync wrapper would take
    an un-awaited coroutine (or a future, any awaitable) for a success.
    """
    if surely_not_awaitable(result):
        return
    if inspect.isawaitable(result):
        close = getattr(result, "close", None)
        if close is not None:
            close()  # no "never awaited" warning: it is refused on purpose
        raise TypeError(
            f"{api} needs a sync callable, and this one returned {type(result).__name__}: "
            "use the async API for async callables"
        )


def uncallable_error(fn: object, api: str) -> TypeError:
    """The `TypeError` for `api` given something it cannot call (`callable(fn)` is false).

    A coroutine passed in place of its function (`dedup.run(key, fetch(query))`) is closed:
    it is refused on purpose, not left "never awaited", and the message says what to pass.
    """
    if inspect.iscoroutine(fn):
        fn.close()
        name = getattr(fn, "__qualname__", type(fn).__name__)
        return TypeError(
            f"{api} needs the function to call, got the coroutine {name}(): pass the function "
            "and its arguments, not its call"
        )
    return TypeError(f"{api} needs a callable, got {type(fn).__name__} {short_repr(fn)}")


def keep_alive(future: F) -> F:
    """Holds a strong reference to `future` until it is done (or `let_go`); returns it."""
    _BACKGROUND.add(future)
    future.add_done_callback(_BACKGROUND.discard)
    return future


def let_go(future: asyncio.Future[Any]) -> None:
    """Drops `keep_alive`'s reference to `future`, which will never be done (its loop closed)."""
    _BACKGROUND.discard(future)
