"""Redis persistence (redis-py asyncio): shared, fast storage for many workers."""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping, Sequence
from typing import Any

from llm_agent_runtime._redis import redis_client
from llm_agent_runtime.errors import PersistenceError
from llm_agent_runtime.persistence._checks import (
    check_items,
    check_key,
    check_keys,
    check_prefix,
    check_value,
    decode_stored_keys,
)
from llm_agent_runtime.persistence.base import encode_key

__all__ = ["RedisBackend"]


class RedisBackend:
    """Key -> bytes storage in Redis, under a key prefix.

    redis-py is imported only when a backend is created. A batch is one MULTI/EXEC
    transaction. Configure Redis persistence (AOF with `appendfsync always`) for durability
    across a server crash.

    `prefix` may be set again later, checked as the constructor checks it (a bad value
    raises, and the old one stays). The backend then reads, writes and lists the keys under
    the new prefix, as one constructed with it would; what is stored under the old one
    stays in Redis as it was.

    Args:
        url: e.g. `redis://host:6379/0`.
        prefix: Prepended to every key, so several applications can share a database. The
            default, `llm_agent_runtime:kv:`, is a namespace of the backend's own: the Redis
            orchestration state's defaults (`llm_agent_runtime:breaker:`, `:bucket:`,
            `:dedup:`) are beside it, not in it, so `list_keys` never lists their keys and
            `save` never writes over them. (Checkpoints saved under the default of earlier
            versions, `llm_agent_runtime:`, are read with that prefix.)

    Raises:
        TypeError: When `prefix` is not a str.
        PersistenceError: When redis-py is not installed (the `redis` extra), `url` is not
            a Redis URL redis-py can use, or `prefix` is not valid Unicode text (a lone
            surrogate).
    """

    def __init__(self, url: str, prefix: str = "llm_agent_runtime:kv:") -> None:
        self._prefix = _checked_prefix(prefix)
        self.client: Any = redis_client(url, "RedisBackend")
        """The redis-py client (shared with the Redis-backed orchestration state)."""

    @property
    def prefix(self) -> str:
        """Prepended to every key; checked when set, as by the constructor."""
        return self._prefix

    @prefix.setter
    def prefix(self, prefix: str) -> None:
        self._prefix = _checked_prefix(prefix)

    def __repr__(self) -> str:
        return f"RedisBackend(prefix={self._prefix!r})"  # the URL may hold a password

    async def close(self) -> None:
        """Closes every event loop's connection pool; a later call opens a new one.

        As `PostgresBackend.close`: the running loop's pool is closed before this returns,
        one of another running loop there, one of an idle loop when it next runs.
        """
        await self.client.aclose()

    async def __aenter__(self) -> RedisBackend:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _call(
        self, key: str | None, method: str, *args: Any, keys: Sequence[str] = (), **options: Any
    ) -> Any:
        """Calls a client method; `key` or `keys` are the keys it is about."""
        try:
            return await getattr(self.client, method)(*args, **options)
        except UnicodeEncodeError:  # redis-py encodes keys as strict UTF-8
            raise _not_text(key, *keys) from None
        except Exception as error:
            raise PersistenceError(f"Redis: {error}", key=key) from error

    async def save(self, key: str, value: bytes) -> None:
        """Stores `value` under `key`, replacing any previous value atomically."""
        value = check_value(check_key(key), value)
        await self._call(key, "set", self._prefix + key, value)

    async def save_new(self, key: str, value: bytes) -> bool:
        """Stores `value` under `key` unless the key exists (SET NX); returns whether it wrote."""
        value = check_value(check_key(key), value)
        return bool(await self._call(key, "set", self._prefix + key, value, nx=True))

    async def load(self, key: str) -> bytes | None:
        """Returns the value stored under `key`, or None."""
        value = await self._call(key, "get", self._prefix + check_key(key))
        return None if value is None else bytes(value)

    async def delete(self, key: str) -> bool:
        """Removes `key`; returns whether it existed."""
        return bool(await self._call(key, "delete", self._prefix + check_key(key)))

    async def batch_save(self, items: Mapping[str, bytes]) -> None:
        """Stores every item in one MULTI/EXEC transaction."""
        checked = check_items(items)
        if not checked:
            return
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                for key, value in checked.items():
                    pipe.set(self._prefix + key, value)
                await pipe.execute()
        except UnicodeEncodeError:
            raise _not_text(*checked) from None
        except Exception as error:
            failure = _batch_error(error, list(checked))
            # Chained to what `_batch_error` chose: redis-py's own error may quote a value.
            raise failure from failure.__cause__

    async def batch_save_if(
        self, guard_key: str, guard_value: bytes, items: Mapping[str, bytes]
    ) -> bool:
        """Stores every item only if `guard_key` holds `guard_value`; returns whether it did.

        One Lua script: Redis runs it whole, no other command in between.
        """
        guard_value = check_value(check_key(guard_key), guard_value)
        checked = check_items(items)
        keys = [self._prefix + guard_key, *(self._prefix + k for k in checked)]
        wrote = await self._call(
            guard_key,
            "eval",
            _SAVE_IF,
            len(keys),
            *keys,
            guard_value,
            *checked.values(),
            keys=list(checked),
        )
        return bool(wrote)

    async def batch_delete_if(
        self, guard_key: str, guard_value: bytes, keys: Sequence[str]
    ) -> bool:
        """Deletes every key of `keys` only if `guard_key` holds `guard_value`.

        Returns whether the guard held. One Lua script, as `batch_save_if`'s: Redis runs it
        whole, no other command in between.
        """
        guard_value = check_value(check_key(guard_key), guard_value)
        wanted = check_keys(keys)
        names = [self._prefix + guard_key, *(self._prefix + k for k in wanted)]
        held = await self._call(
            guard_key, "eval", _DELETE_IF, len(names), *names, guard_value, keys=wanted
        )
        return bool(held)

    async def batch_load(self, keys: Sequence[str]) -> dict[str, bytes]:
        """Returns the stored values of those `keys` that exist."""
        wanted = check_keys(keys)
        if not wanted:
            return {}
        values = await self._call(None, "mget", [self._prefix + k for k in wanted], keys=wanted)
        return {k: bytes(v) for k, v in zip(wanted, values, strict=True) if v is not None}

    async def list_keys(self, prefix: str = "") -> list[str]:
        """Returns the stored keys that start with `prefix`, sorted, each once.

        SCAN may return a key more than once (when Redis rehashes the keyspace meanwhile):
        each is listed once. A key under `self.prefix` that is not UTF-8 text (written by
        another client) is skipped, with a warning: no `str` key names it.
        """
        pattern = _escape_glob(self._prefix + check_prefix(prefix)) + "*"
        start = len(self._prefix)
        try:
            keys = [bytes(k) async for k in self.client.scan_iter(match=pattern, count=1000)]
        except UnicodeEncodeError:
            raise _not_text(prefix) from None
        except Exception as error:
            raise PersistenceError(f"Redis: {error}") from error
        # Every key starts with `self.prefix`: the sorted full keys are the sorted keys.
        return [k[start:] for k in decode_stored_keys("RedisBackend", keys)]


_SAVE_IF = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
for i = 2, #KEYS do redis.call('SET', KEYS[i], ARGV[i]) end
return 1
"""
"""`batch_save_if`: KEYS[1] the guard, ARGV[1] its value; KEYS[i] is set to ARGV[i]."""

_DELETE_IF = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
for i = 2, #KEYS do redis.call('DEL', KEYS[i]) end
return 1
"""
"""`batch_delete_if`: KEYS[1] the guard, ARGV[1] its value; KEYS[2:] are deleted."""


def _checked_prefix(prefix: object) -> str:
    """`prefix` when it can start a Redis key: the constructor's check, and the setter's.

    Raises:
        TypeError: `prefix` is not a str.
        PersistenceError: `prefix` is not valid Unicode text (a lone surrogate).
    """
    # Checked before use: part of every Redis key, a bad prefix would fail every call
    # instead, with an error blaming the key (or a bare TypeError).
    if not isinstance(prefix, str):
        raise TypeError(
            f"prefix must be a str (part of every Redis key), got {type(prefix).__name__}"
        )
    try:
        prefix.encode("utf-8")  # as redis-py encodes keys
    except UnicodeEncodeError as error:
        raise PersistenceError(
            f"prefix {prefix!r} is not valid Unicode text ({error.reason} at {error.start})"
        ) from None
    return prefix


def _escape_glob(text: str) -> str:
    """Escapes Redis glob characters so a prefix matches literally."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _not_text(*keys: str | None) -> PersistenceError:
    """The error for keys redis-py could not encode; raised at once naming the bad key."""
    for key in keys:
        if key is not None:
            encode_key(key)  # raises PersistenceError for a key that is not valid text
    return PersistenceError("key is not valid Unicode text")


_REFUSED_COMMAND = re.compile(r"Command # ([0-9]+) \(")
_REFUSED_SEPARATOR = " of pipeline caused error: "


def _batch_error(error: Exception, keys: list[str]) -> PersistenceError:
    """The error of a MULTI/EXEC batch of SETs of `keys`, in order.

    redis-py's message of a command the server refused quotes the command, its value
    included: a checkpoint's text would reach the logs. Only the server's reply is kept,
    with the key of the refused command. The returned error's `__cause__` is what to chain
    it to: `error`, or for a refused command an error of its type holding only the reply
    (chained to `error` itself, a traceback or `logger.exception` would print the value).
    """
    message = str(error)
    refused = _REFUSED_COMMAND.match(message)
    if refused is None or _REFUSED_SEPARATOR not in message:
        failure = PersistenceError(f"Redis: {message}", key=keys[0])
        failure.__cause__ = error
        return failure
    # The last separator: the reply (the server's own text) holds no value, a quoted one may.
    reply = message.rpartition(_REFUSED_SEPARATOR)[2]
    try:  # redis-py writes the reply as its args tuple: `('message',)`
        args = ast.literal_eval(reply)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        args = None
    if isinstance(args, tuple) and args and isinstance(args[0], str):
        reply = args[0]
    number = int(refused[1])  # the refused command's place in the batch, from 1
    key = keys[number - 1] if 1 <= number <= len(keys) else None
    failure = PersistenceError(f"Redis refused a write of the batch: {reply}", key=key)
    try:
        failure.__cause__ = type(error)(reply)
    except Exception:  # an error type that takes other arguments: no cause rather than a leak
        failure.__cause__ = None
    return failure
