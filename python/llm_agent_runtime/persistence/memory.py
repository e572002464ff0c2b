"""In-process persistence: a dict behind the `PersistenceBackend` protocol.

For tests and short-lived runtimes (fork and resume within one process); nothing survives the
process.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

from llm_agent_runtime._copies import Unshared
from llm_agent_runtime.persistence._checks import (
    check_items,
    check_key,
    check_keys,
    check_prefix,
    check_value,
)
from llm_agent_runtime.persistence.base import encode_key

__all__ = ["InMemoryBackend"]


class InMemoryBackend(Unshared):
    """Key -> bytes in a dict; `data` holds the records.

    It checks its input as the other backends do (a key that is not valid Unicode text is
    refused, as no other store could keep it), so code tried on it behaves the same on them.
    Runtimes on several threads may share one: a check and its write (`save_new`,
    `batch_save_if`, `batch_delete_if`) are one step for them, as in a database. A listing
    (`list_keys`) reads every key, in the event loop's thread: the checkpoints list a
    session's keys a few times a turn, so a turn slows as the store grows (about 6 ms at
    25,000 keys, 70 ms at 250,000). A long-lived service keeps its checkpoints in a database
    (`SqliteBackend` needs no server), whose listings read only the session's keys.
    """

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        """The stored records, by key."""
        # Held by every write: a check and its write are then one step for other threads too.
        self._writing = threading.Lock()

    def __repr__(self) -> str:
        # Never raises: `data` may not be set yet (a subclass's repr before its `__init__`).
        return f"InMemoryBackend(keys={len(getattr(self, 'data', ()))})"

    async def save(self, key: str, value: bytes) -> None:
        """Stores `value` under `key`."""
        value = check_value(check_key(key), value)
        encode_key(key)
        with self._writing:
            self.data[key] = value

    async def save_new(self, key: str, value: bytes) -> bool:
        """Stores `value` under `key` unless the key exists; returns whether it wrote."""
        value = check_value(check_key(key), value)
        encode_key(key)
        with self._writing:  # no await in between either: no other task runs meanwhile
            if key in self.data:
                return False
            self.data[key] = value
            return True

    async def load(self, key: str) -> bytes | None:
        """Returns the value under `key`, or None."""
        encode_key(check_key(key))
        return self.data.get(key)

    async def delete(self, key: str) -> bool:
        """Removes `key`; returns whether it existed."""
        encode_key(check_key(key))
        with self._writing:
            return self.data.pop(key, None) is not None

    async def batch_save(self, items: Mapping[str, bytes]) -> None:
        """Stores every item (checked first: a dict update cannot half-fail)."""
        checked = check_items(items)
        for key in checked:
            encode_key(key)
        with self._writing:
            self.data.update(checked)

    async def batch_save_if(
        self, guard_key: str, guard_value: bytes, items: Mapping[str, bytes]
    ) -> bool:
        """Stores every item only if `guard_key` holds `guard_value`; returns whether it did."""
        guard_value = check_value(check_key(guard_key), guard_value)
        encode_key(guard_key)
        checked = check_items(items)
        for key in checked:
            encode_key(key)
        with self._writing:  # no await in between either: no other task runs meanwhile
            if self.data.get(guard_key) != guard_value:
                return False
            self.data.update(checked)
            return True

    async def batch_delete_if(
        self, guard_key: str, guard_value: bytes, keys: Sequence[str]
    ) -> bool:
        """Deletes `keys` only if `guard_key` holds `guard_value`; returns whether it did so."""
        guard_value = check_value(check_key(guard_key), guard_value)
        encode_key(guard_key)
        wanted = check_keys(keys)
        for key in wanted:
            encode_key(key)
        with self._writing:  # no await in between either: no other task runs meanwhile
            if self.data.get(guard_key) != guard_value:
                return False
            for key in wanted:
                self.data.pop(key, None)
            return True

    async def batch_load(self, keys: Sequence[str]) -> dict[str, bytes]:
        """Returns the values of those `keys` that exist."""
        wanted = check_keys(keys)
        for key in wanted:
            encode_key(key)
        data = self.data
        with self._writing:  # one snapshot: no other thread's batch lands halfway through
            found = {k: data.get(k) for k in wanted}
        return {k: v for k, v in found.items() if v is not None}

    async def list_keys(self, prefix: str = "") -> list[str]:
        """Returns the keys starting with `prefix`, sorted."""
        encode_key(check_prefix(prefix))
        # A copy first (one C call): another thread's writes may change the dict meanwhile.
        return sorted(k for k in list(self.data) if k.startswith(prefix))
