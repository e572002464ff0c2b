"""Redis persistence (redis-py asyncio): shared, fast storage for many workers."""

from __future__ import annotations

import ast
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from llm_agent_runtime._copies import Unshared
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

logger = logging.getLogger("llm_agent_runtime")


class RedisBackend(Unshared):
    """Key -> bytes storage in Redis, under a key prefix.

    redis-py is imported only when a backend is created. A batch is one MULTI/EXEC
    transaction. Configure Redis persistence (AOF with `appendfsync always`) for durability
    across a server crash.

    The keys are listed from an index, a sorted set that every write and delete keeps in
    the same transaction (or script): a listing reads the keys it lists (`ZRANGEBYLEX`),
    not the whole database (`SCAN`, which a database shared with other data makes slow at
    every turn of a chat). The index, and the marker saying keys stored before it were
    added, are under the prefix (an ACL allowing the prefix allows them), at names no key
    can have: the prefix followed by the byte 0xff, which no UTF-8 text holds. Keys stored
    before the index (by earlier versions) are added to it at the first listing of the
    prefix in the database, from one scan of the prefix (keys with an expiry, which no
    backend sets, and keys under a longer prefix with an index of its own, another
    backend's, are left out); a user that may not write (a read-only user or replica) lists
    by that scan until a writer has added them. Keys another client writes or deletes
    directly are not seen by listings afterwards, nor their deletion, and neither are the
    writes of a backend of an earlier version: upgrade every worker before one lists keys.
    A key Redis evicts stays listed (checkpoints need `maxmemory-policy noeviction` anyway:
    an evicted step is lost). A backend whose prefix starts with another backend's prefix
    lists its own keys only, not the other's.

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
        self._indexed: set[str] = set()  # prefixes whose index this backend knows is whole

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

    async def _indexed_write(self, key: str, command: Callable[[Any], object]) -> Any:
        """Runs `command(pipe)`, a write of `key`, and adds `key` to the index, at once.

        One MULTI/EXEC; returns the command's reply.
        """
        index = _index_key(self._prefix)
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                command(pipe)
                pipe.zadd(index, {key: 0})
                reply, _ = await pipe.execute()
        except UnicodeEncodeError:
            raise _not_text(key) from None
        except Exception as error:
            failure = _batch_error(error, [key, key])
            # As `batch_save`'s: redis-py's own error may quote the value.
            raise failure from failure.__cause__
        return reply

    async def save(self, key: str, value: bytes) -> None:
        """Stores `value` under `key`, replacing any previous value atomically."""
        value = check_value(check_key(key), value)
        await self._indexed_write(key, lambda pipe: pipe.set(self._prefix + key, value))

    async def save_new(self, key: str, value: bytes) -> bool:
        """Stores `value` under `key` unless the key exists (SET NX); returns whether it wrote."""
        value = check_value(check_key(key), value)
        # Indexed either way: a key already there is listed already (no change).
        written = await self._indexed_write(
            key, lambda pipe: pipe.set(self._prefix + key, value, nx=True)
        )
        return bool(written)

    async def load(self, key: str) -> bytes | None:
        """Returns the value stored under `key`, or None."""
        value = await self._call(key, "get", self._prefix + check_key(key))
        return None if value is None else bytes(value)

    async def delete(self, key: str) -> bool:
        """Removes `key`; returns whether it existed."""
        check_key(key)
        # A script, not MULTI/EXEC: Redis refuses a transaction's commands over maxmemory,
        # and a delete is how a full server gets memory back.
        names = [_index_key(self._prefix), self._prefix + key]
        deleted = await self._call(key, "eval", _DELETE, len(names), *names, key)
        return bool(deleted)

    async def batch_save(self, items: Mapping[str, bytes]) -> None:
        """Stores every item in one MULTI/EXEC transaction."""
        checked = check_items(items)
        if not checked:
            return
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                for key, value in checked.items():
                    pipe.set(self._prefix + key, value)
                # Last: the SETs keep their numbers in a refused command's error.
                pipe.zadd(_index_key(self._prefix), dict.fromkeys(checked, 0))
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
        prefix = self._prefix
        keys = [prefix + guard_key, _index_key(prefix), *(prefix + k for k in checked)]
        wrote = await self._call(
            guard_key,
            "eval",
            _SAVE_IF,
            len(keys),
            *keys,
            guard_value,
            *checked.values(),
            *checked,
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
        prefix = self._prefix
        names = [prefix + guard_key, _index_key(prefix), *(prefix + k for k in wanted)]
        held = await self._call(
            guard_key, "eval", _DELETE_IF, len(names), *names, guard_value, *wanted, keys=wanted
        )
        return bool(held)

    async def batch_load(self, keys: Sequence[str]) -> dict[str, bytes]:
        """Returns the stored values of those `keys` that exist."""
        wanted = check_keys(keys)
        if not wanted:
            return {}
        prefix = self._prefix
        values = await self._call(None, "mget", [prefix + k for k in wanted], keys=wanted)
        found = {k: bytes(v) for k, v in zip(wanted, values, strict=True) if v is not None}
        missing = [k for k in wanted if k not in found]
        # MGET gives nil for a key of another type (a list another client wrote there) as for
        # an absent one. A missing key there now (of another type, or written since) has all
        # of them read again in one script, one moment as MGET's (read one by one, they mixed
        # the batches written meanwhile), whose GET fails on a key of another type: that key
        # is then read alone, so that it fails as `load` does, naming it.
        if missing and await self._call(None, "exists", *(prefix + k for k in missing)):
            names = [prefix + k for k in wanted]
            try:
                values = await self._call(None, "eval", _GET_ALL, len(names), *names, keys=wanted)
            except PersistenceError:
                for key in missing:
                    await self.load(key)
                raise
            found = {k: bytes(v) for k, v in zip(wanted, values, strict=True) if v is not None}
        return found

    async def list_keys(self, prefix: str = "") -> list[str]:
        """Returns the stored keys that start with `prefix`, sorted, each once.

        Read from the index (see the class): the sorted set's order is the UTF-8 bytes',
        which is the keys' order as text.
        """
        wanted = check_prefix(prefix)
        try:
            first = wanted.encode()
        except UnicodeEncodeError:
            raise _not_text(prefix) from None
        own = self._prefix  # read once: it may be set again meanwhile
        if own not in self._indexed:
            scanned = await self._index_earlier_keys(own)
            if scanned is not None:  # the index could not be written: the scan's keys
                return [k for k in scanned if k.startswith(wanted)]
        # Every key that starts with `first`: no UTF-8 text holds the byte 0xff.
        upper = b"(" + first + b"\xff"
        found = await self._call(None, "zrangebylex", _index_key(own), b"[" + first, upper)
        return [bytes(k).decode() for k in found]

    async def _index_earlier_keys(self, prefix: str) -> list[str] | None:
        """Adds to the index the keys under `prefix` stored before it (see the class).

        Once per prefix in a database (a marker says it is done), from one scan: SCAN may
        return a key more than once (when Redis rehashes meanwhile), and one deleted since;
        each is added if it still exists, atomically (a script), so no key deleted meanwhile
        stays listed. A key that is not UTF-8 text (written by another client) is skipped,
        with a warning: no `str` key names it. Returns None once the index is whole, or the
        keys scanned when Redis refused to write it (a read-only user or replica).
        """
        marker = _marker_key(prefix)
        if not await self._call(None, "exists", marker):
            pattern = _escape_glob(prefix) + "*"
            try:
                found = [bytes(k) async for k in self.client.scan_iter(match=pattern, count=1000)]
            except Exception as error:
                raise PersistenceError(f"Redis: {error}") from error
            # Every key starts with `prefix`: the sorted full keys are the sorted keys. The
            # indexes and markers of this prefix and of longer ones are no keys, and the keys
            # under a longer prefix that has an index of its own are another backend's.
            own_index = _index_key(prefix)
            others = tuple(
                k[: -len(_INDEX_SUFFIX)]
                for k in found
                if k.endswith(_INDEX_SUFFIX) and k != own_index
            )
            stored = [
                k
                for k in found
                if not k.endswith(_BOOKKEEPING) and not (others and k.startswith(others))
            ]
            # Cut once decoded: the prefix is that many characters (not bytes) of each.
            keys = [k[len(prefix) :] for k in decode_stored_keys("RedisBackend", stored)]
            try:
                for chunk in range(0, len(keys), _INDEX_CHUNK):
                    part = keys[chunk : chunk + _INDEX_CHUNK]
                    names = [_index_key(prefix), *(prefix + k for k in part)]
                    await self._call(None, "eval", _INDEX_IF_STORED, len(names), *names, *part)
                await self._call(None, "set", marker, b"1")
            except PersistenceError as error:
                logger.info("RedisBackend: keys listed by a scan (index not written: %s)", error)
                return keys
        self._indexed.add(prefix)
        return None


_INDEX_SUFFIX = b"\xffindex"
_MARKER_SUFFIX = b"\xffindexed"
_BOOKKEEPING = (_INDEX_SUFFIX, _MARKER_SUFFIX)
"""What follows a prefix in the names of its index and marker: no key (UTF-8) has a 0xff."""
_INDEX_CHUNK = 1000
"""Keys added to the index at a time (one script call) from the scan of earlier keys."""


def _index_key(prefix: str) -> bytes:
    """The Redis key of the index of the keys under `prefix`."""
    return prefix.encode() + _INDEX_SUFFIX


def _marker_key(prefix: str) -> bytes:
    """The Redis key marking the keys under `prefix` stored before the index as indexed."""
    return prefix.encode() + _MARKER_SUFFIX


_SAVE_IF = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local n = #KEYS - 2
for i = 1, n do
  redis.call('SET', KEYS[i + 2], ARGV[i + 1])
  redis.call('ZADD', KEYS[2], 0, ARGV[i + 1 + n])
end
return 1
"""
"""`batch_save_if`: KEYS[1] the guard, ARGV[1] its value; KEYS[2] the index; KEYS[i + 2] is
set to ARGV[i + 1], and its key (without the prefix), ARGV[i + 1 + n], added to the index."""

# The values of KEYS at one moment (nil for an absent key), as MGET gives them; GET fails on
# a key of another type, where MGET gives nil.
_GET_ALL = """
local values = {}
for i = 1, #KEYS do
  values[i] = redis.call('GET', KEYS[i])
end
return values
"""

_DELETE_IF = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
for i = 3, #KEYS do
  redis.call('DEL', KEYS[i])
  redis.call('ZREM', KEYS[2], ARGV[i - 1])
end
return 1
"""
"""`batch_delete_if`: KEYS[1] the guard, ARGV[1] its value; KEYS[2] the index; KEYS[3:] are
deleted, and their keys (without the prefix), ARGV[2:], taken off the index."""

_DELETE = """
local n = redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[1], ARGV[1])
return n
"""
"""`delete`: KEYS[1] the index, KEYS[2] the key, ARGV[1] the key without the prefix."""

_INDEX_IF_STORED = """
for i = 2, #KEYS do
  if redis.call('PTTL', KEYS[i]) == -1 then redis.call('ZADD', KEYS[1], 0, ARGV[i - 1]) end
end
return 1
"""
"""Adds to the index KEYS[1] each key KEYS[2:] that exists without an expiry, as ARGV[i - 1]
(no prefix). A backend never sets one: a key that expires is other data (the Redis
orchestration state's, under the prefix of earlier versions), which would stay listed once
it expired."""


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
