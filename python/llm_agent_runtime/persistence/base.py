"""The persistence contract: the `PersistenceBackend` protocol and the checkpoint key scheme."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

from llm_agent_runtime.errors import PersistenceError

__all__ = [
    "PersistenceBackend",
    "call_key",
    "encode_key",
    "escape_session_id",
    "session_key",
    "split_session_key",
    "step_key",
]


_SESSION = "session:"
_ESCAPE = re.compile("%(25|3A)")


def escape_session_id(session_id: str) -> str:
    """A session id as every checkpoint key holds it: `%` as `%25`, `:` as `%3A`.

    The one place ids enter keys, so a key names one session only: ids may hold `:`, and
    then `session:<id>:...` would read as a key of another session (`user:42:step:1`, the
    final checkpoint of session `user:42:step:1`, is step 1 of session `user:42`). An id
    without `%` or `:` is its own escape: its keys are the same as before escaping came in.

    Raises:
        PersistenceError: `session_id` is not a string.
    """
    if not isinstance(session_id, str):
        # The session itself is the likely mistake.
        given = " (pass its session_id)" if hasattr(session_id, "session_id") else ""
        raise PersistenceError(
            f"a session id must be a string, got {type(session_id).__name__}{given}"
        )
    if "%" in session_id or ":" in session_id:
        return session_id.replace("%", "%25").replace(":", "%3A")
    return session_id


def session_key(session_id: str) -> str:
    """Key of a session's final checkpoint: `session:<id>`, the id escaped.

    See `escape_session_id`. The session's other keys are this key, `:` and what they hold.
    """
    return _SESSION + escape_session_id(session_id)


def step_key(session_id: str, step: int) -> str:
    """Key of a session's per-step checkpoint: `session:<id>:step:<n>` (the id escaped)."""
    return f"{session_key(session_id)}:step:{step}"


def call_key(session_id: str, step: int, index: int) -> str:
    """Key of a session's journal entry of tool call `index` of step `step`.

    `session:<id>:call:<n>:<i>` (the id escaped).
    """
    return f"{session_key(session_id)}:call:{step}:{index}"


def split_session_key(key: str) -> tuple[str, str] | None:
    """The session id and the rest of a checkpoint key, or None for no session's key.

    `session:a%3Ab:step:3` gives `("a:b", "step:3")`, a final checkpoint's key `(id, "")`.
    A key that is not `session:` then an escaped id (as `escape_session_id` makes them) is
    None. The rest is not checked: a key written before ids were escaped, such as
    `session:a:b:meta` (session `a:b`'s meta then), gives `("a", "b:meta")`, which is no key
    session `a` has.
    """
    if not key.startswith(_SESSION):
        return None
    escaped, _, rest = key[len(_SESSION) :].partition(":")
    session_id = _ESCAPE.sub(lambda m: "%" if m[1] == "25" else ":", escaped)
    if escape_session_id(session_id) != escaped:
        return None
    return session_id, rest


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
    Bad input raises `PersistenceError` too, before anything is stored: a key or prefix that
    is not a `str`, a value that is not bytes-like (a `bytearray` or `memoryview` value is
    stored, and loaded, as `bytes`).

    A backend may also have the methods of `FencedPersistenceBackend` (`save_new`,
    `batch_save_if`, `batch_delete_if`): the checkpoints use them where it has them.
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


@runtime_checkable
class FencedPersistenceBackend(PersistenceBackend, Protocol):
    """A `PersistenceBackend` with atomic conditional writes (all the bundled backends).

    The checkpoints use these where a backend has them: `save_new` so that of two runs
    starting one session exactly one wins, `batch_save_if` and `batch_delete_if` to fence
    the writes of a resumed run whose claim another worker took over. A backend without
    them works, with those guarantees weaker (see `CheckpointStore`).
    """

    async def save_new(self, key: str, value: bytes) -> bool:
        """Stores `value` under `key` only if the key is absent, atomically (insert-if-absent).

        Returns True when it wrote, False when the key existed (its value is left as it is).
        Of several writers racing for one key, in one process or many, exactly one wins.
        """
        ...

    async def batch_save_if(
        self, guard_key: str, guard_value: bytes, items: Mapping[str, bytes]
    ) -> bool:
        """Stores every item, all or none, only if `guard_key` holds `guard_value` (a fence).

        The check and the writes are one atomic step: a write of `guard_key` by another
        writer lands wholly before (the batch is then refused) or after them. Returns
        whether it wrote; nothing is written when the key holds anything else or is absent.
        Optional: the checkpoints use it, where a backend has it, to refuse the writes of a
        resumed run whose claim another worker took over.
        """
        ...

    async def batch_delete_if(
        self, guard_key: str, guard_value: bytes, keys: Sequence[str]
    ) -> bool:
        """Deletes every key of `keys`, all or none, only if `guard_key` holds `guard_value`.

        The check and the deletions are one atomic step (as `batch_save_if`'s check and
        writes): a write of `guard_key` by another writer lands wholly before (nothing is
        deleted) or after. `guard_key` may be one of `keys`. Returns whether the guard held
        (then every key of `keys` is gone, existing or not); False, with nothing deleted,
        when the guard holds anything else or is absent. Optional, like `batch_save_if`: the
        checkpoints use it, where a backend has it, so that a worker giving up a resume
        claim deletes the claim and its fence only while the fence still holds its own
        nonce.
        """
        ...
