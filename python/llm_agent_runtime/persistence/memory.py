"""In-process persistence: a dict behind the `PersistenceBackend` protocol.

For tests and short-lived runtimes (fork and resume within one process); nothing survives the
process.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["InMemoryBackend"]


class InMemoryBackend:
    """Key -> bytes in a dict; `data` holds the records."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        """The stored records, by key."""

    async def save(self, key: str, value: bytes) -> None:
        """Stores `value` under `key`."""
        self.data[key] = bytes(value)

    async def load(self, key: str) -> bytes | None:
        """Returns the value under `key`, or None."""
        return self.data.get(key)

    async def delete(self, key: str) -> bool:
        """Removes `key`; returns whether it existed."""
        return self.data.pop(key, None) is not None

    async def batch_save(self, items: Mapping[str, bytes]) -> None:
        """Stores every item (a dict update cannot half-fail)."""
        self.data.update({k: bytes(v) for k, v in items.items()})

    async def batch_load(self, keys: Sequence[str]) -> dict[str, bytes]:
        """Returns the values of those `keys` that exist."""
        return {k: self.data[k] for k in keys if k in self.data}

    async def list_keys(self, prefix: str = "") -> list[str]:
        """Returns the keys starting with `prefix`, sorted."""
        return sorted(k for k in self.data if k.startswith(prefix))
