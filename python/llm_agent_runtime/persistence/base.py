"""The persistence contract: the `PersistenceBackend` protocol and the checkpoint key scheme."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

from llm_agent_runtime.errors import PersistenceError

__all__ = ["PersistenceBackend", "encode_key", "session_key", "step_key"]


def session_key(session_id: str) -> str:
    """Key of a session's final checkpoint: `session:<id>`."""
    return f"session:{session_id}"


def step_key(session_id: str, step: int) -> str:
    """Key of a session's per-step checkpoint: `session:<id>:step:<n>`."""
    return f"session:{session_id}:step:{step}"


def encode_key(key: str) -> bytes:
    """The UTF-8 bytes of a key.

    Raises:
        PersistenceError: The key is not valid Unicode text (a lone surrogate, as
            `os.fsdecode` or the `surrogateescape` error handler make): no store can keep it.
    """
    try:
        return key.encode("utf-8")
    except UnicodeEncodeError as error:
        raise PersistenceError(
            f"key is not valid Unicode text ({error.reason} at {error.start})", key=key
        ) from None


@runtime_checkable
class PersistenceBackend(Protocol):
    """Async key -> bytes storage behind checkpoints, sessions and event logs.

    Failures raise `PersistenceError` naming the key. Values are opaque bytes to the backend.
    """

    async def save(self, key: str, value: bytes) -> None:
        """Stores `value` under `key`, replacing any previous value atomically."""
        ...

    async def load(self, key: str) -> bytes | None:
        """Returns the value stored under `key`, or None when there is none."""
        ...

    async def delete(self, key: str) -> bool:
        """Removes `key`; returns whether it existed."""
        ...

    async def batch_save(self, items: Mapping[str, bytes]) -> None:
        """Stores every item, all or none (one transaction where the backend has them)."""
        ...

    async def batch_load(self, keys: Sequence[str]) -> dict[str, bytes]:
        """Returns the stored values of those `keys` that exist."""
        ...

    async def list_keys(self, prefix: str = "") -> list[str]:
        """Returns the stored keys that start with `prefix`, sorted."""
        ...
