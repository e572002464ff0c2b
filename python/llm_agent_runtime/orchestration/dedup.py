"""Single flight: identical concurrent requests share one execution; results live for a TTL."""

from __future__ import annotations

import asyncio
import heapq
import json
import math
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any, ParamSpec, TypeVar, overload

from llm_agent_runtime._copies import CopiedWhole
from llm_agent_runtime.orchestration._calls import call_maybe_async, uncallable_error
from llm_agent_runtime.orchestration._checks import check_real, safe_repr, short_repr
from llm_agent_runtime.orchestration.clock import Clock, checked_clock

__all__ = ["Deduplicator", "canonical_key"]

P = ParamSpec("P")
T = TypeVar("T")

_SHOWN_KEYS = 8
"""Keys a cycle's message shows: a longer cycle shows its first and last ones."""
_STALE_SLACK = 64
"""Expiry heap items beyond twice the results held before the heap is rebuilt: a small heap
is not worth rebuilding at every store."""


def _cycle_repr(keys: Sequence[object]) -> str:
    """`'a' -> 'b' -> 'a'`: the keys of a cycle of waits, a long one cut in the middle.

    Each key shows as a bounded repr that never raises (a key is any hashable).
    """
    if len(keys) > _SHOWN_KEYS:
        half = _SHOWN_KEYS // 2
        cut = f"... ({len(keys) - 2 * half} more)"
        return " -> ".join([*map(_key_repr, keys[:half]), cut, *map(_key_repr, keys[-half:])])
    return " -> ".join(map(_key_repr, keys))


def _key_repr(key: object) -> str:
    return short_repr(key, 80)


def canonical_key(*args: Any, **kwargs: Any) -> str:
    """Canonical JSON of call arguments (sorted keys, no spaces), usable as a dedup key.

    Tuples and lists give the same key (JSON has arrays only), as JSON-decoded arguments
    would hold them.

    Raises:
        TypeError: an argument is not JSON-serializable (a list or dict that contains itself,
            or nested too deeply for the encoder, included), or a dict in it has a key that is
            not a string (JSON would turn `1` into `"1"`: two calls would share a key).
    """
    try:
        _check_keys(args)
        _check_keys(kwargs)
        return json.dumps([args, kwargs], sort_keys=True, separators=(",", ":"))
    except ValueError as error:  # the encoder's "Circular reference detected"
        raise TypeError(f"canonical_key needs JSON-serializable arguments: {error}") from None
    except RecursionError:  # the check's (or the encoder's) recursion
        raise TypeError(
            "canonical_key needs JSON-serializable arguments: a list or dict contains itself, "
            "or is nested too deeply"
        ) from None


def _check_keys(value: Any) -> None:
    """Raises `TypeError` for a dict, anywhere in `value`, with a key that is not a str.

    Recursive (a walk keeping a set of the containers seen cost cache hits 15-25%): a
    container that holds itself, or nesting too deep, raises `RecursionError`, which
    `canonical_key` turns into its `TypeError`, as the encoder's.
    """
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(
                    f"canonical_key needs string dict keys, got {type(key).__name__} {key!r:.40}"
                )
            _check_keys(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_keys(item)


def _checked_ttl(ttl: object) -> float:
    """`ttl` as a float when it is a number of seconds >= 0 (`math.inf` included).

    Raises:
        ValueError: `ttl` is negative, NaN or not a number (a bool included).
    """
    seconds = check_real("ttl", ttl)
    if not 0 <= seconds <= math.inf:  # NaN fails too
        raise ValueError(f"ttl must be >= 0, got {seconds}")
    return seconds


class Deduplicator(CopiedWhole):
    """Runs each distinct request once at a time and serves its result for `ttl` seconds.

    Callers asking for a key already running wait for that execution instead of starting
    another (unless `forget` let go of it). The execution runs as its own task, so one
    caller's cancellation does not cancel it for the others. A failure is passed to every
    waiter and is not cached. An execution that asks for a key whose execution waits, directly
    or through others, for it is refused (see `run`): the cycle of waits would never end.
    Expired results are dropped as new ones come in, so a stream of distinct keys holds only
    the results of the last `ttl` seconds. Meant for one event loop at a time (not shared
    between threads: a caller on another running loop cannot wait for this loop's execution).

    `ttl` may be set again later, checked as the constructor checks it (a bad value raises,
    and the old one stays): it times the results stored from then on.

    Args:
        ttl: seconds a completed result is served (0 disables result caching, `math.inf`
            keeps results for good).
        clock: time source.

    Raises:
        ValueError: `ttl` is negative, NaN or not a number (a bool included).
        TypeError: `clock` is not a `Clock` (see `checked_clock`).
    """

    def __init__(self, ttl: float, clock: Clock | None = None) -> None:
        self._ttl = _checked_ttl(ttl)  # read by `_finish`, not through the property
        self._clock = checked_clock(clock)
        self._in_flight: dict[Hashable, asyncio.Task[Any]] = {}
        self._done: dict[Hashable, tuple[float, Any]] = {}
        # (expiry, order, key) of each result stored, a heap (soonest expiry first): not a
        # queue in store order, since once the clock steps back or `ttl` is lowered a later
        # result may expire first. The order breaks ties (keys need not compare). An item
        # whose key was stored again or dropped since is skipped; each goes once expired.
        # The order is a plain count (not `itertools.count`, whose pickling and copying
        # Python 3.12 deprecates): a copy or pickle of the deduplicator keeps working.
        self._expiry: list[tuple[float, int, Hashable]] = []
        self._pushed = 0
        # The wait-for graph: the key of each execution under way (a forgotten one included),
        # and the execution each of them waits on in `run` right now (at most one: a task
        # awaits one thing at a time).
        self._keys: dict[asyncio.Task[Any], Hashable] = {}
        self._waits: dict[asyncio.Task[Any], asyncio.Task[Any]] = {}
        self.executions = 0
        """Times a request was actually executed."""

    def _in_use(self) -> str | None:
        """A copy is whole, results included (see `CopiedWhole`), but not while it runs."""
        return "calls are under way in it" if self._in_flight or self._keys else None

    @safe_repr
    def __repr__(self) -> str:
        return (
            f"Deduplicator(ttl={self._ttl}, in_flight={len(self._in_flight)}, "
            f"executions={self.executions})"
        )

    @property
    def ttl(self) -> float:
        """Seconds a completed result is served; checked when set, as by the constructor."""
        return self._ttl

    @ttl.setter
    def ttl(self, ttl: float) -> None:
        # Checked as in the constructor: a NaN ttl turned result caching off unnoticed.
        self._ttl = _checked_ttl(ttl)

    @property
    def in_flight(self) -> int:
        """Requests executing right now."""
        return len(self._in_flight)

    def _cached(self, key: Hashable) -> tuple[bool, Any]:
        entry = self._done.get(key)
        if entry is None:
            return False, None
        expires, value = entry
        if self._clock.now() >= expires:
            del self._done[key]
            return False, None
        return True, value

    @overload
    async def run(
        self, key: Hashable, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T: ...

    @overload
    async def run(
        self, key: Hashable, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T: ...

    async def run(self, key: Hashable, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Returns `fn(*args, **kwargs)` (sync or async), shared by every caller of `key`.

        `key` and `fn` are positional-only, so `kwargs` may hold arguments of those names.
        The callers of one key share one result, so give one key to one computation: the
        result is typed as `fn`'s (an awaitable `fn` returns is awaited). An execution left
        running by an event loop that was closed never finishes: it is dropped, and the call
        runs again.

        Raises:
            TypeError: `fn` is not callable: a coroutine (`run(key, fetch(query))` in place
                of `run(key, fetch, query)`, which is closed), say.
            RuntimeError: `key` is executing on another event loop that is still open (the
                deduplicator is shared between threads), or the execution of `key` itself
                asks for `key` (it would wait for its own result), or an execution asks for
                a key whose execution waits, through any others, for it (a cycle of waits
                such as `'a' -> 'b' -> 'a'`, which the message names). Only the wait that
                would close the cycle is refused: the execution that asked may handle the
                error, and the others then go on. A cycle that goes through other tasks (an
                execution awaiting a task that calls `run`, as `asyncio.gather` makes) or
                through another deduplicator is not detected, and waits as before.
        """
        if not callable(fn):
            # Else it became an execution that failed for every caller of the key, with a
            # coroutine passed in place of its function left never awaited.
            raise uncallable_error(fn, "Deduplicator.run")
        hit, value = self._cached(key)
        if hit:
            return value
        task = self._in_flight.get(key)
        current = asyncio.current_task()
        if task is not None and task.get_loop() is not asyncio.get_running_loop():
            if not task.get_loop().is_closed():
                # Its future belongs to the other loop: awaiting it here fails deep in asyncio.
                raise RuntimeError(
                    f"Deduplicator: key {key!r:.80} is executing on another event loop; a "
                    "Deduplicator is meant for one event loop at a time (one per thread)"
                )
            del self._in_flight[key]
            self._keys.pop(task, None)  # its loop is closed: its done callback never runs
            task = None
        elif task is not None and task is current:
            # The execution of `key` asking for `key` again would wait for itself, forever.
            raise RuntimeError(
                f"Deduplicator: the execution of key {key!r:.80} asked for that key itself, "
                "and would wait for its own result"
            )
        elif task is not None and current in self._keys:
            self._refuse_cycle(current, key, task)
        if task is None:
            self.executions += 1
            task = asyncio.ensure_future(self._execute(fn, args, kwargs))
            self._in_flight[key] = task
            self._keys[task] = key
            task.add_done_callback(lambda t: self._finish(key, t))
        if current is None or current not in self._keys:
            return await asyncio.shield(task)  # no execution waits: no edge of the graph
        # The edge lasts exactly as long as the wait, whatever ends it.
        self._waits[current] = task
        try:
            return await asyncio.shield(task)
        finally:
            del self._waits[current]

    async def _execute(self, fn: Callable[..., Any], args: Any, kwargs: dict[str, Any]) -> Any:
        """An execution: `fn(*args, **kwargs)`, in a task of its own, once `run` has the task.

        Under an eager task factory (Python 3.12+) a task starts running inside
        `ensure_future`: `fn` waits for the first turn of the loop instead, else a `run` it
        made at once would find neither its own execution nor the wait on it (a self-wait
        ran `fn` again without end, a cycle of waits hung).
        """
        if asyncio.current_task() not in self._keys:
            await asyncio.sleep(0)
        return await call_maybe_async(fn, *args, **kwargs)

    def _refuse_cycle(
        self, current: asyncio.Task[Any], key: Hashable, task: asyncio.Task[Any]
    ) -> None:
        """Raises `RuntimeError` when `current` waiting on `task` would close a cycle of waits.

        That is when `task` (executing `key`) waits, through the executions it waits on, for
        `current`'s.

        A walk of one chain (each execution waits on one at most): the graph has no cycle,
        since the wait that would close one is refused.
        """
        chain = [current, task]
        waited = self._waits.get(task)
        while waited is not None and waited is not current:
            chain.append(waited)
            waited = self._waits.get(waited)
        if waited is None:
            return
        chain.append(current)
        raise RuntimeError(
            f"Deduplicator: the execution of key {_key_repr(self._keys[current])} asked for "
            f"key {_key_repr(key)}, whose execution waits for this one: the cycle of waits "
            f"{_cycle_repr([self._keys[t] for t in chain])} would never end"
        )

    def _finish(self, key: Hashable, task: asyncio.Task[Any]) -> None:
        self._keys.pop(task, None)
        if self._in_flight.get(key) is not task:
            # `forget` let it go: a newer execution of the key may run, and its result (read
            # before the forget) is for its own callers only.
            if not task.cancelled():
                task.exception()  # retrieved: no "never retrieved" log for its failure
            return
        del self._in_flight[key]
        if task.cancelled() or task.exception() is not None:
            return
        ttl = self._ttl
        if ttl > 0:
            now = self._clock.now()
            done = self._done
            expires = now + ttl
            done[key] = (expires, task.result())
            expiry = self._expiry
            if expires < math.inf:  # a result kept for good needs no place in the heap
                self._pushed += 1
                heapq.heappush(expiry, (expires, self._pushed, key))
            while expiry and expiry[0][0] <= now:  # the expired results, soonest first
                expired, _, oldest = heapq.heappop(expiry)
                entry = done.get(oldest)
                if entry is not None and entry[0] == expired:  # not stored again since
                    del done[oldest]
            if len(expiry) > 2 * len(done) + _STALE_SLACK:
                # The items of forgotten results pile up until their ttl: rebuilt from the
                # results held (amortized over the results stored since the last rebuild).
                self._expiry = self._live_expiry()

    def _live_expiry(self) -> list[tuple[float, int, Hashable]]:
        """The expiry heap's items of the results still held, as a heap."""
        done = self._done
        live = [item for item in self._expiry if done.get(item[2], (None,))[0] == item[0]]
        heapq.heapify(live)
        return live

    def forget(self, key: Hashable) -> None:
        """Drops a cached result, and lets go of a running execution of `key`.

        That execution is not cancelled: its callers get its result. But it may have read
        what the forget was for, so its result is not cached, and a caller that comes after
        the forget starts a new execution instead of waiting for it.
        """
        self._done.pop(key, None)
        self._in_flight.pop(key, None)

    def purge_expired(self) -> int:
        """Drops every expired result; returns how many."""
        now = self._clock.now()
        expired = [k for k, (expires, _) in self._done.items() if now >= expires]
        for k in expired:
            del self._done[k]
        self._expiry = self._live_expiry()
        return len(expired)
