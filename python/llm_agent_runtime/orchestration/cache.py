"""Per-tool result cache keyed by the canonical JSON of the arguments."""

from __future__ import annotations

import heapq
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from llm_agent_runtime._copies import Unshared
from llm_agent_runtime.orchestration._calls import call_maybe_async, uncallable_error
from llm_agent_runtime.orchestration._checks import check_count, check_real, safe_repr
from llm_agent_runtime.orchestration.clock import Clock, checked_clock
from llm_agent_runtime.orchestration.dedup import canonical_key

__all__ = ["ResultCache"]


class ResultCache(Unshared):
    """Caches tool results for `ttl` seconds, at most `max_entries` of them.

    When full, the expired entries go first, else the least recently used one. `invalidate`
    and `put` also cover calls in flight: `get_or_call` does not store the result of a call
    that was running when an `invalidate` of its tool (or of every tool) happened, as that
    call may have read the data the invalidation was for, nor when a `put` of its key
    happened, as that stored a newer result (its caller still gets its own result). Safe to
    use from several threads.

    Keys are `(tool, canonical JSON of the arguments)`, so `{"a": 1, "b": 2}` and
    `{"b": 2, "a": 1}` share an entry.

    Both `ttl` and `max_entries` may be set again later, checked as the constructor checks
    them (a bad value raises, and the old one stays). A new `ttl` times the entries stored
    from then on; a lowered `max_entries` drops entries at once (the expired ones first,
    then the least recently used) until the cache holds no more than it.

    Args:
        ttl: seconds an entry is served (`math.inf`: until evicted).
        max_entries: entries kept across all tools.
        clock: time source.

    Raises:
        ValueError: `ttl` is not positive, is NaN, or is not a number (a bool included);
            `max_entries` is below 1 or is not an int (a float such as 1.5, NaN or infinity,
            or a bool).
        TypeError: `clock` is not a `Clock` (see `checked_clock`).
    """

    def __init__(self, ttl: float, max_entries: int = 1024, clock: Clock | None = None) -> None:
        # The settings' backing attributes: the hot paths read them, not the properties.
        self._ttl = _checked_ttl(ttl)
        self._max_entries = check_count("max_entries", max_entries, 1)
        self._clock = checked_clock(clock)
        self._entries: OrderedDict[tuple[str, str], tuple[float, Any]] = OrderedDict()
        # (expiry, key) of each store, a heap (soonest expiry first): a full cache drops what
        # expired before a live entry. Not a queue in store order: once the clock steps back
        # or `ttl` is lowered, a later store may expire first. An item whose key was stored
        # again or dropped since is skipped.
        self._expiry: list[tuple[float, tuple[str, str]]] = []
        # Guards the entries and counters; held only for in-memory work, never across an
        # await (and never around JSON encoding of the arguments). Re-entrant: an evicted
        # value's finalizer, or the clock, may call back into the cache.
        self._lock = threading.RLock()
        # Bumped by `invalidate()` (all tools) and `invalidate(tool)`, so `get_or_call` can
        # tell an invalidation happened while its call ran.
        self._generation = 0
        self._tool_generations: dict[str, int] = {}
        # Per key with a `get_or_call` running: [calls running, `put`s of the key so far], so
        # the call can tell a newer result was stored meanwhile (kept only while calls run).
        self._puts: dict[tuple[str, str], list[int]] = {}
        self.hits = 0
        """Lookups served from the cache."""
        self.misses = 0
        """Lookups that found nothing (or an expired entry)."""

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def ttl(self) -> float:
        """Seconds an entry is served; checked when set, as by the constructor."""
        return self._ttl

    @ttl.setter
    def ttl(self, ttl: float) -> None:
        # Checked as in the constructor: a NaN ttl stored entries no lookup would ever serve.
        self._ttl = _checked_ttl(ttl)

    @property
    def max_entries(self) -> int:
        """Entries kept across all tools; checked when set, and applied at once."""
        return self._max_entries

    @max_entries.setter
    def max_entries(self, max_entries: int) -> None:
        max_entries = check_count("max_entries", max_entries, 1)
        with self._lock:
            self._max_entries = max_entries
            # As a store would: the expired entries first, then the least recently used.
            if len(self._entries) > max_entries:
                self._drop_expired(self._clock.now())
            while len(self._entries) > max_entries:
                self._entries.popitem(last=False)

    @safe_repr
    def __repr__(self) -> str:
        # Without the lock: a repr is a snapshot, and must not wait.
        return (
            f"ResultCache(ttl={self._ttl}, max_entries={self._max_entries}, "
            f"entries={len(self._entries)})"
        )

    @staticmethod
    def key(tool: str, arguments: Mapping[str, Any]) -> tuple[str, str]:
        """The cache key of a call.

        Raises:
            TypeError: `tool` is not a str, an argument is not JSON-serializable, or a dict
                in it has a key that is not a string (see `canonical_key`).
        """
        _check_tool(tool)
        return tool, canonical_key(**arguments)

    def get(self, tool: str, arguments: Mapping[str, Any]) -> tuple[bool, Any]:
        """Returns `(True, result)` on a hit, `(False, None)` otherwise."""
        return self._get(self.key(tool, arguments))

    def _get(self, key: tuple[str, str]) -> tuple[bool, Any]:
        """`get` by the entry's key."""
        # Under the lock: another thread could evict the entry between lookup and move.
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                expires, value = entry
                if self._clock.now() < expires:
                    self._entries.move_to_end(key)
                    self.hits += 1
                    return True, value
                del self._entries[key]
            self.misses += 1
            return False, None

    def put(self, tool: str, arguments: Mapping[str, Any], result: Any) -> None:
        """Stores a result; when full, drops the expired entries, else the least recently used.

        A `get_or_call` of the same key that is running now will not store its result over
        this one.
        """
        key = self.key(tool, arguments)
        with self._lock:
            running = self._puts.get(key)
            if running is not None:
                running[1] += 1
            self._store(key, result)

    def _store(self, key: tuple[str, str], result: Any) -> None:
        """`put` with the lock held."""
        now = self._clock.now()
        expires = now + self._ttl
        max_entries = self._max_entries
        self._entries[key] = (expires, result)
        self._entries.move_to_end(key)
        if expires < math.inf:  # an entry that never expires needs no place in the index
            heapq.heappush(self._expiry, (expires, key))
        if len(self._entries) > max_entries:
            self._drop_expired(now)
        while len(self._entries) > max_entries:
            self._entries.popitem(last=False)
        if len(self._expiry) > 2 * max_entries:
            # Stale items pile up behind a long-lived one: rebuilt from the entries
            # (amortized over the stores since the last rebuild).
            live = [(e[0], k) for k, e in self._entries.items() if e[0] < math.inf]
            heapq.heapify(live)
            self._expiry = live

    def _drop_expired(self, now: float) -> None:
        """Drops the entries that expired by `now`, oldest expiry first (lock held)."""
        expiry = self._expiry
        while expiry and expiry[0][0] <= now:
            expires, key = heapq.heappop(expiry)
            entry = self._entries.get(key)
            if entry is not None and entry[0] == expires:  # not stored again since
                del self._entries[key]

    def _generation_of(self, tool: str) -> tuple[int, int]:
        """Changes whenever `tool`'s entries are invalidated (read with the lock held)."""
        return self._generation, self._tool_generations.get(tool, 0)

    async def get_or_call(
        self, tool: str, arguments: Mapping[str, Any], fn: Callable[..., Any]
    ) -> Any:
        """Returns the cached result, or calls `fn(**arguments)` and caches its result.

        `fn` may be sync or async; an exception is not cached. Concurrent misses of one key
        each call `fn` (a `Deduplicator` shares one call among them). The result is not cached
        either when `tool`'s entries were invalidated while `fn` ran (it may be stale), nor
        when a `put` of the same key happened meanwhile (it stored a newer result). "While
        `fn` ran" is this call's: with a `Deduplicator` inside `fn`, a miss after an
        `invalidate` may join a shared call that began before it and cache its stale result,
        so forget the tool's keys there too (`Deduplicator.forget`) when invalidating.

        Raises:
            TypeError: `fn` is not callable (a coroutine passed in place of its function is
                closed), or the key cannot be made (see `key`).
        """
        if not callable(fn):
            # Else a coroutine passed in place of its function was left never awaited.
            raise uncallable_error(fn, "ResultCache.get_or_call")
        key = self.key(tool, arguments)  # encoded once, for the lookup and the store
        hit, value = self._get(key)
        if hit:
            return value
        with self._lock:
            generation = self._generation_of(tool)
            running = self._puts.setdefault(key, [0, 0])
            running[0] += 1
            puts = running[1]
        result, returned = None, False
        try:
            result = await call_maybe_async(fn, **arguments)
            returned = True
        finally:
            with self._lock:
                running[0] -= 1
                if not running[0]:
                    del self._puts[key]
                if returned and self._generation_of(tool) == generation and running[1] == puts:
                    self._store(key, result)
        return result

    def invalidate(self, tool: str | None = None) -> int:
        """Drops every entry (or every entry of `tool`); returns how many.

        A `get_or_call` of an invalidated tool that is running now will not store its result
        (see `get_or_call` for one whose `fn` shares calls through a `Deduplicator`).

        Raises:
            TypeError: `tool` is neither None nor a str.
        """
        if tool is not None:
            _check_tool(tool)
        with self._lock:
            if tool is None:
                self._generation += 1
            else:
                self._tool_generations[tool] = self._tool_generations.get(tool, 0) + 1
            doomed = [k for k in self._entries if tool is None or k[0] == tool]
            # A dropped value's finalizer may re-enter and drop some of them first.
            return sum(self._entries.pop(k, None) is not None for k in doomed)


def _checked_ttl(ttl: object) -> float:
    """`ttl` as a float when it is a positive number of seconds (`math.inf` included).

    Raises:
        ValueError: `ttl` is not positive, is NaN, or is not a number (a bool included).
    """
    seconds = check_real("ttl", ttl)
    # Written so that NaN fails the check (each comparison with NaN is false).
    if not 0 < seconds <= math.inf:
        raise ValueError(f"ttl must be positive, got {seconds}")
    return seconds


def _check_tool(tool: object) -> None:
    """Refuses a `tool` that is not a name (a str).

    A list failed later as "unhashable type", and another object made entries no name would
    ever match.
    """
    if not isinstance(tool, str):
        raise TypeError(f"tool must be a str (a tool's name), got {tool!r:.80}")
