"""The argument checks every persistence backend makes at its entry points.

One place, so that bad input fails the same way on every backend: a key (or prefix) that is
not a `str`, or a value that is not bytes-like, raises `PersistenceError` before anything
is stored. A bytes-like value (`bytes`, `bytearray`, `memoryview`) is stored as `bytes`.

And the one check on the way out, `decode_stored_keys`: a listed key that is not UTF-8 text
is skipped the same way by every backend storing keys as bytes.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
from collections.abc import Iterable, Mapping
from typing import Any

from llm_agent_runtime.errors import PersistenceError

__all__ = [
    "check_items",
    "check_key",
    "check_keys",
    "check_path",
    "check_prefix",
    "check_value",
    "decode_stored_keys",
]

logger = logging.getLogger("llm_agent_runtime")


def _shown(value: Any) -> str:
    """`value`'s type and a short repr, for an error message."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def check_key(key: Any) -> str:
    """`key`, when it is a `str`.

    Raises:
        PersistenceError: Naming the bad key, when it is not a `str`.
    """
    if isinstance(key, str):
        return key
    raise PersistenceError(f"a key must be a str, got {_shown(key)}")


def check_prefix(prefix: Any) -> str:
    """`prefix` (of `list_keys`), when it is a `str`.

    Raises:
        PersistenceError: When it is not a `str`.
    """
    if isinstance(prefix, str):
        return prefix
    raise PersistenceError(f"a key prefix must be a str, got {_shown(prefix)}")


def check_value(key: str, value: Any) -> bytes:
    """`value` as `bytes`: a `bytes`, `bytearray` or `memoryview` stored under `key`.

    Raises:
        PersistenceError: Naming `key`, when `value` is not bytes-like (a `str` must be
            encoded first; an `int` is not bytes, although `bytes(5)` would make some).
    """
    if type(value) is bytes:
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        try:
            return bytes(value)
        except ValueError as error:  # a released memoryview: no bytes left to store
            raise PersistenceError(f"a value cannot be read: {error}", key=key) from None
    raise PersistenceError(
        f"a value must be bytes, bytearray or memoryview, got {_shown(value)}", key=key
    )


def check_items(items: Any) -> dict[str, bytes]:
    """The items of a batch, each key checked and each value as `bytes`.

    Raises:
        PersistenceError: When `items` is not a mapping, or holds a bad key or value.
    """
    if not isinstance(items, Mapping):
        raise PersistenceError(f"a batch must be a mapping of keys to values, got {_shown(items)}")
    return {check_key(key): check_value(key, value) for key, value in items.items()}


def check_keys(keys: Any) -> list[str]:
    """The keys of a `batch_load`, as a list, each checked.

    Raises:
        PersistenceError: When `keys` is a single string (or bytes) rather than a sequence
            of keys, is not iterable, or holds a key that is not a `str`.
    """
    if isinstance(keys, str | bytes | bytearray | memoryview) or not isinstance(keys, Iterable):
        raise PersistenceError(f"keys must be a sequence of str, got {_shown(keys)}")
    return [check_key(key) for key in keys]


def check_path(path: Any, what: str) -> str:
    """`path`, the place of `what` (a database, a directory), as a `str`.

    Raises:
        PersistenceError: When `path` is not a non-empty `str` or `os.PathLike` of one.
            `str()` of anything else names a place nobody meant (`None` becomes `./None`),
            and an empty path is no place: SQLite takes it for a private temporary database,
            deleted at close (every checkpoint lost with it), `pathlib` for the current
            directory.
    """
    text = os.fspath(path) if isinstance(path, str | os.PathLike) else None
    if not isinstance(text, str) or not text:
        raise PersistenceError(f"the path of {what} must be a non-empty str or path, got {path!r}")
    return text


def check_wait(name: str, seconds: Any) -> float:
    """`seconds`, the wait setting `name` of a backend, as a float.

    A float: a numpy float32 added to a clock rounds the deadline by seconds.

    Raises:
        PersistenceError: When it is not a finite real number >= 0 (a bool neither).
    """
    real = isinstance(seconds, numbers.Real) and not isinstance(seconds, bool)
    if not (real and 0 <= seconds < math.inf):
        raise PersistenceError(f"{name} must be a finite number of seconds >= 0, got {seconds!r}")
    return float(seconds)


def decode_stored_keys(backend: str, stored: Iterable[bytes], encoding: str = "UTF-8") -> list[str]:
    """The keys a listing found, as text: sorted, each once.

    A key that is not text in `encoding` (UTF-8, unless the store holds its text in another
    one) was written by another client sharing the keyspace or table: no `str` names it, so
    no call could load or delete it. It is skipped with a warning naming `backend` and the
    key's bytes, as `FileBackend` skips a damaged file, rather than failing the listing of
    every other key.
    """
    keys: set[str] = set()
    for raw in stored:
        try:
            keys.add(raw.decode(encoding))
        except UnicodeDecodeError as error:
            logger.warning(
                "%s: skipped the stored key %r: it is not %s text (%s)",
                backend,
                raw,
                encoding,
                error,
            )
    return sorted(keys)
