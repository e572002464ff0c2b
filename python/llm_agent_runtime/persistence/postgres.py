"""PostgreSQL persistence (psycopg 3, async, pooled): for many workers on many machines."""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from llm_agent_runtime.errors import PersistenceError
from llm_agent_runtime.persistence.base import encode_key

__all__ = ["PostgresBackend"]

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_UPSERT = "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()"
_VALUES_ROWS_MAX = 32


@functools.lru_cache(maxsize=256)
def _values_upsert(table: str, rows: int) -> str:
    placeholders = ", ".join(["(%b, %b)"] * rows)  # %b: bytes go binary, unescaped
    return f"INSERT INTO {table} (key, value) VALUES {placeholders} {_UPSERT}"


class PostgresBackend:
    """Key -> bytes storage in one PostgreSQL table, through a connection pool.

    Keys are stored as their UTF-8 bytes, so any string is a valid key.

    The pool opens on first use (or `await backend.open()`); close it with `await
    backend.close()` or use the backend as an async context manager. psycopg is imported only
    when a backend is created. A batch is one transaction.

    Args:
        dsn: libpq connection string, e.g. `postgresql://user@host:5432/db`.
        table: Table name (created if missing).
        min_size: Connections kept open.
        max_size: Most connections at once.
        timeout: Seconds to wait for the server, or for a free connection.

    Raises:
        PersistenceError: When the table name is not a plain identifier, or psycopg is not
            installed (the `postgres` extra).
    """

    def __init__(
        self,
        dsn: str,
        table: str = "llm_agent_runtime_kv",
        min_size: int = 1,
        max_size: int = 10,
        timeout: float = 10.0,
    ) -> None:
        if not _IDENTIFIER.match(table):
            raise PersistenceError(f"table name {table!r} is not a plain SQL identifier")
        try:
            from psycopg_pool import AsyncConnectionPool
        except ImportError as error:
            raise PersistenceError(
                "PostgresBackend needs psycopg: pip install 'llm-agent-runtime[postgres]'"
            ) from error
        self.table = table
        self.timeout = timeout
        # Autocommit: every call is one statement, atomic on its own, in one round trip.
        self._pool = AsyncConnectionPool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            open=False,
            kwargs={"autocommit": True},
        )
        self._ready = False
        self._opening = asyncio.Lock()  # concurrent first calls open (and create) once

    def __repr__(self) -> str:
        return f"PostgresBackend(table={self.table!r})"  # the DSN may hold a password

    async def open(self) -> None:
        """Opens the pool and creates the table if missing."""
        if self._ready:
            return
        async with self._opening:
            if self._ready:
                return
            try:
                await self._pool.open(wait=True, timeout=self.timeout)
                async with self._pool.connection() as conn:
                    await conn.execute(
                        f"CREATE TABLE IF NOT EXISTS {self.table} "
                        "(key BYTEA PRIMARY KEY, value BYTEA NOT NULL, "
                        "updated_at TIMESTAMPTZ NOT NULL DEFAULT now())"
                    )
            except Exception as error:
                raise PersistenceError(
                    f"cannot open PostgreSQL storage: {type(error).__name__}: {error}"
                ) from error
            self._ready = True

    async def close(self) -> None:
        """Closes the pool."""
        await self._pool.close()
        self._ready = False

    async def __aenter__(self) -> PostgresBackend:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _execute(self, key: str | None, query: str, params: Sequence[Any]) -> list[Any]:
        """Runs one statement (atomic on its own: autocommit) and returns its rows."""
        if not self._ready:
            await self.open()
        try:
            # getconn/putconn rather than connection(): that one also opens and commits a
            # transaction block, a cost (~20 us a call) an autocommit statement does not need.
            conn = await self._pool.getconn()
            try:
                cursor = await conn.execute(query, params)
                return await cursor.fetchall() if cursor.description else []
            finally:
                await self._pool.putconn(conn)
        except Exception as error:
            raise PersistenceError(
                f"PostgreSQL: {type(error).__name__}: {error}", key=key
            ) from error

    async def save(self, key: str, value: bytes) -> None:
        """Stores `value` under `key`, replacing any previous value atomically."""
        await self.batch_save({key: value})

    async def load(self, key: str) -> bytes | None:
        """Returns the value stored under `key`, or None."""
        rows = await self._execute(
            key, f"SELECT value FROM {self.table} WHERE key = %s", [encode_key(key)]
        )
        return bytes(rows[0][0]) if rows else None

    async def delete(self, key: str) -> bool:
        """Removes `key`; returns whether it existed."""
        rows = await self._execute(
            key, f"DELETE FROM {self.table} WHERE key = %s RETURNING key", [encode_key(key)]
        )
        return bool(rows)

    async def batch_save(self, items: Mapping[str, bytes]) -> None:
        """Stores every item in one transaction: all or none."""
        if not items:
            return
        keys = _encode_keys(items)
        values = [bytes(v) for v in items.values()]
        # One statement: one round trip, all rows or none. A multi-row VALUES list (one
        # prepared statement per row count) costs the server a third less than unnest();
        # big batches use unnest() to stay under the bind-parameter limit.
        if len(keys) <= _VALUES_ROWS_MAX:
            query = _values_upsert(self.table, len(keys))
            params: list[Any] = [x for pair in zip(keys, values, strict=True) for x in pair]
        else:
            query = (
                f"INSERT INTO {self.table} (key, value) "
                f"SELECT * FROM unnest(%s::bytea[], %s::bytea[]) {_UPSERT}"
            )
            params = [keys, values]
        await self._execute(next(iter(items)), query, params)

    async def batch_load(self, keys: Sequence[str]) -> dict[str, bytes]:
        """Returns the stored values of those `keys` that exist."""
        if not keys:
            return {}
        rows = await self._execute(
            None,
            f"SELECT key, value FROM {self.table} WHERE key = ANY(%s)",
            [_encode_keys(keys)],
        )
        return {bytes(key).decode(): bytes(value) for key, value in rows}

    async def list_keys(self, prefix: str = "") -> list[str]:
        """Returns the stored keys that start with `prefix`, sorted."""
        # Keys are UTF-8 bytes, which never contain 0xFF: [prefix, prefix + FF) holds exactly
        # the keys starting with `prefix`, and byte order is code point order (Python's).
        low = encode_key(prefix)
        rows = await self._execute(
            None,
            f"SELECT key FROM {self.table} WHERE key >= %s AND key < %s ORDER BY key",
            [low, low + b"\xff"],
        )
        return [bytes(row[0]).decode() for row in rows]


def _encode_keys(keys: Iterable[str]) -> list[bytes]:
    """The UTF-8 bytes of each key (`PersistenceError` for one that is not valid text)."""
    try:
        return [k.encode() for k in keys]
    except UnicodeEncodeError:
        return [encode_key(k) for k in keys]  # raises, naming the key
