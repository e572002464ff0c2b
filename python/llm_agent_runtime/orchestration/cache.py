"""Per-tool result cache keyed by the canonical JSON of the arguments."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from llm_agent_runtime.orchestration._calls import call_maybe_async
from llm_agent_runtime.orchestration._checks import check_count
from llm_agent_runtime.orchestration.clock import SYSTEM_CLOCK, Clock
from llm_agent_runtime.orchestration.dedup import canonical_key

__all__ = ["ResultCache"]


class ResultCache:
    """Caches tool results for `ttl` seconds, at most `max_entries` of them.

    When full, the least recently used entry goes first.

    Keys are `(tool, canonical JSON of the arguments)`, so `{"a": 1, "b": 2}` and
    `{"b": 2, "a": 1}` share an entry.

    Args:
        ttl: seconds an entry is served (`math.inf`: until evicted).
        max_entries: entries kept across all tools.
        clock: time source.

    Raises:
        ValueError: `ttl` is not positive, or is NaN; `max_entries` is below 1 or is not an
            int (a float such as 1.5, NaN or infinity, or a bool).
    """

    def __init__(self, ttl: float, max_entries: int = 1024, clock: Clock | None = None) -> None:
        # Written so that NaN fails the check (each comparison with NaN is false).
        if not 0 < ttl <= math.inf:
            raise ValueError(f"ttl must be positive, got {ttl}")
        max_entries = check_count("max_entries", max_entries, 1)
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock or SYSTEM_CLOCK
        self._entries: OrderedDict[tuple[str, str], tuple[float, Any]] = OrderedDict()
        self.hits = 0
        """Lookups served from the cache."""
        self.misses = 0
        """Lookups that found nothing (or an expired entry)."""

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def key(tool: str, arguments: Mapping[str, Any]) -> tuple[str, str]:
        """The cache key of a call.

        Raises:
            TypeError: an argument is not JSON-serializable, or a dict in it has a key that
                is not a string (see `canonical_key`).
        """
        return tool, canonical_key(**arguments)

    def get(self, tool: str, arguments: Mapping[str, Any]) -> tuple[bool, Any]:
        """Returns `(True, result)` on a hit, `(False, None)` otherwise."""
        key = self.key(tool, arguments)
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
        """Stores a result, evicting the least recently used entry when full."""
        key = self.key(tool, arguments)
        self._entries[key] = (self._clock.now() + self.ttl, result)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    async def get_or_call(
        self, tool: str, arguments: Mapping[str, Any], fn: Callable[..., Any]
    ) -> Any:
        """Returns the cached result, or calls `fn(**arguments)` and caches its result.

        `fn` may be sync or async; an exception is not cached.
        """
        hit, value = self.get(tool, arguments)
        if hit:
            return value
        result = await call_maybe_async(fn, **arguments)
        self.put(tool, arguments, result)
        return result

    def invalidate(self, tool: str | None = None) -> int:
        """Drops every entry (or every entry of `tool`); returns how many."""
        doomed = [k for k in self._entries if tool is None or k[0] == tool]
        for k in doomed:
            del self._entries[k]
        return len(doomed)
