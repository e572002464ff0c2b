"""The argument checks every persistence backend makes at its entry points.

One place, so that bad input fails the same way on every backend: a key (or prefix) that is
not a `str`, or a value that is not bytes-like, raises `PersistenceError` before anything
is stored. A bytes-like value (`bytes`, `bytearray`, `memoryview`) is stored as `bytes`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from llm_agent_runtime.errors import PersistenceError

__all__ = ["check_items", "check_key", "check_keys", "check_prefix", "check_value"]


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
        return bytes(value)
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
