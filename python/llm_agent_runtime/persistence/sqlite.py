"""SQLite persistence: the embedded default (WAL, one transaction per batch)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from llm_agent_runtime._copies import Unshared
from llm_agent_runtime.errors import PersistenceError
from llm_agent_runtime.persistence._checks import (
    check_items,
    check_key,
    check_keys,
    check_path,
    check_prefix,
    check_value,
    check_wait,
    decode_stored_keys,
)
from llm_agent_runtime.persistence._waiting import Abandoned, acquire, given_up, run_in_thread
from llm_agent_runtime.persistence.base import encode_key

__all__ = ["SqliteBackend"]

T = TypeVar("T")
logger = logging.getLogger("llm_agent_runtime")


def _create_table(name: str) -> str:
    """The statement making table `name` of the store's keys and values."""
    return f"CREATE TABLE IF NOT EXISTS {name} (key TEXT PRIMARY KEY, value BLOB NOT NULL)"


SCHEMA = _create_table("kv")
"""A rowid table: its key index holds keys only. (A WITHOUT ROWID table keeps whole rows in
its key tree, whose inner pages copy a multi-megabyte value that sorts beside small keys at
each rebalance: deleting a big session's thousands of records took time growing with the
square of its size, 13 s at 2,000 steps.)"""
_EARLIER_SCHEMA = "CREATE TABLE kv (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID"
"""The table as earlier versions made it (as SQLite keeps its text): converted on open."""
_UPSERT = (
    "INSERT INTO kv (key, value) VALUES (?, ?) "
    "ON CONFLICT(key) DO UPDATE SET value = excluded.value"
)
_DELETE = "DELETE FROM kv WHERE key = ?"
_SELECT_VALUE = "SELECT CAST(value AS BLOB) FROM kv WHERE key = ?"
"""A value as bytes, whatever its type: another client sharing the table may have stored
text or a number, which `bytes()` fails on (text, a real) or misreads (5 as five NULs)."""
_CANCEL_GRACE = 1.0
"""Seconds a cancelled call waits for its running thread before the cancellation goes on."""
_BUSY_SLICE = 0.1
"""Seconds of one wait of SQLite's for another writer's lock: between two, a call checks
whether it was cancelled (SQLite's wait cannot be cut short), up to `busy_timeout` in all."""
_MAX_BUSY_TIMEOUT = 2_147_483.0
"""The longest wait SQLite takes, in seconds (24.8 days): it holds the wait as a C int of
milliseconds, and a longer one wraps to a negative number, which turns waiting off."""
_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")
"""SQLite's `synchronous` levels, by their number: SQLite takes an unknown name for NORMAL,
silently, so a name is checked here."""


def _busy(error: sqlite3.OperationalError) -> bool:
    """Whether SQLite failed for a lock another connection holds (its extended codes too)."""
    return error.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _upsert(
    c: sqlite3.Connection, items: Mapping[str, bytes], guard: tuple[str, bytes] | None = None
) -> bool:
    """Writes `items` in one transaction; returns whether it wrote.

    With a `guard` (key, value), only if that key holds that value, checked in the
    transaction (`BEGIN IMMEDIATE` holds the write lock from before the check).
    """
    return _transaction(c, _UPSERT, items.items(), guard)


def _delete_if(c: sqlite3.Connection, keys: Sequence[str], guard: tuple[str, bytes]) -> bool:
    """Deletes `keys` in one transaction, only if the `guard` key holds its value (as `_upsert`).

    Returns whether the guard held.
    """
    return _transaction(c, _DELETE, [(key,) for key in keys], guard)


def _transaction(
    c: sqlite3.Connection,
    statement: str,
    rows: Iterable[Sequence[object]],
    guard: tuple[str, bytes] | None,
) -> bool:
    """Runs `statement` on each of `rows` in one transaction, guarded as `_upsert` says."""
    c.execute("BEGIN IMMEDIATE")
    try:
        if guard is not None:
            held = c.execute(_SELECT_VALUE, (guard[0],)).fetchone()
            if held is None or bytes(held[0]) != guard[1]:
                c.execute("ROLLBACK")
                return False
        c.executemany(statement, rows)
        # In the try: a COMMIT that fails (an I/O error, a busy lock) may leave the
        # transaction open, and every later write on this connection would then run inside
        # it, acknowledged but never committed.
        c.execute("COMMIT")
    except BaseException:
        _roll_back(c)
        raise
    return True


def _roll_back(c: sqlite3.Connection) -> None:
    """Rolls back the connection's open transaction, if any.

    SQLite ends the transaction itself on some errors (a full disk, an I/O error): a
    ROLLBACK then fails, and its error would hide the one that says what went wrong.
    """
    if c.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            c.execute("ROLLBACK")


def _made_by_earlier_version(c: sqlite3.Connection) -> bool:
    """Whether the `kv` table is the WITHOUT ROWID one of earlier versions."""
    row = c.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'kv'").fetchone()
    return row is not None and row[0] == _EARLIER_SCHEMA


def _has_dependents(c: sqlite3.Connection) -> bool:
    """Whether the database defines views, triggers or indexes on `kv` (but its key's).

    Any trigger: one on another table may write to `kv`.
    """
    (count,) = c.execute(
        "SELECT count(*) FROM sqlite_master WHERE type IN ('view', 'trigger') "
        "OR (type = 'index' AND lower(tbl_name) = 'kv' AND sql IS NOT NULL)"
    ).fetchone()
    return bool(count)


def _end_read(c: sqlite3.Connection) -> None:
    """Ends a read transaction, rolled back when its COMMIT fails.

    Never left open: every later write on the connection would run inside it, acknowledged
    but never committed.
    """
    try:
        c.execute("COMMIT")
    except BaseException:
        _roll_back(c)
        raise


class SqliteBackend(Unshared):
    """Key -> bytes storage in one SQLite file.

    The database runs in WAL mode, so readers never block the writer and several processes
    can share one file (writers wait up to `busy_timeout` seconds for each other). Every call
    runs in a worker thread, off the event loop; a batch is one transaction. A thread cannot
    be stopped: a call cancelled before its thread started, or while it waits for another
    call on this backend to end (calls on one backend run one at a time), or for another
    process's write lock (within a tenth of a second), never runs; one cancelled later
    waits for its thread, at most a grace period (one second), before the cancellation goes
    on. So a cancelled write has either happened or not by then, unless a statement of its
    is still running after the grace (a commit's fsync on a stalled disk): it may then
    still happen later.

    A fork()ed child (a multiprocessing "fork" worker) may use a backend it inherited: its
    first call there opens a connection of the child's own (SQLite forbids using one across
    a fork), which the child closes with `close`. Fork it while no call is under way (or
    start it with "spawn"): SQLite keeps a file's lock state in process memory, and a child
    forked while a thread of its parent was writing may wait out `busy_timeout` at its
    first write, for a lock it takes for its own, then fail.

    Args:
        path: database file (created, with its directory, if missing), or ":memory:": a
            non-empty `str` or `os.PathLike` of one. The attribute holds it made absolute,
            so a later `os.chdir` never moves the store.
        synchronous: SQLite's `synchronous` setting: `OFF`, `NORMAL`, `FULL` or `EXTRA` (in
            any case), or SQLite's number for one, 0 to 3. `FULL` (the default) fsyncs every
            commit, so a saved checkpoint survives a power cut; `NORMAL` is faster and
            survives a process crash but may lose the last commits on power loss. The
            attribute (and the repr) holds the level's name.
        busy_timeout: seconds to wait for another writer's lock (a finite number >= 0). A
            wait longer than SQLite takes (24.8 days) is that longest one.

    Raises:
        PersistenceError: When `path` is no such path, `synchronous` no such level,
            `busy_timeout` no such time, or the database cannot be opened (a path with a NUL
            character, too).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        synchronous: str | int = "FULL",
        busy_timeout: float = 30.0,
    ) -> None:
        self.path = check_path(path, "a SQLite database")
        if self.path != ":memory:" and not os.path.isabs(self.path):
            # Absolute: a forked child opens its own connection, after any `os.chdir`. Not
            # normalised: `link/..` is where the link's target leads, as the system reads it.
            try:
                self.path = os.path.join(os.getcwd(), self.path)
            except OSError as exc:  # the working directory was removed
                raise PersistenceError(f"cannot open SQLite database {self.path!r}: {exc}") from exc
        self.synchronous = _synchronous_level(synchronous)
        self._busy_timeout = min(check_wait("busy_timeout", busy_timeout), _MAX_BUSY_TIMEOUT)
        self._lock = threading.Lock()
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            conn, encoding = self._connect()
        except (sqlite3.Error, OSError, ValueError) as exc:  # ValueError: a NUL in the path
            raise PersistenceError(f"cannot open SQLite database {self.path!r}: {exc}") from exc
        # None: opened again by the next call (in a forked child, see `_after_fork`).
        self._conn: sqlite3.Connection | None = conn
        self._closed = False
        self._encoding: str = encoding
        _OPEN.add(self)

    def _connect(self) -> tuple[sqlite3.Connection, str]:
        """A new connection to the database (its table made if missing), and its encoding."""
        conn = sqlite3.connect(
            self.path,
            timeout=min(self._busy_timeout, _BUSY_SLICE),
            check_same_thread=False,
            isolation_level=None,
        )
        try:
            self._switch_to_wal(conn)
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            conn.execute(SCHEMA)
            self._convert_earlier_table(conn)
            # Fixed when the file was made: another program may have made it in UTF-16.
            (encoding,) = conn.execute("PRAGMA encoding").fetchone()
        except BaseException:
            conn.close()  # e.g. the file is not a database: no connection left open
            raise
        return conn, encoding

    def _convert_earlier_table(self, conn: sqlite3.Connection) -> None:
        """Moves an earlier version's table (see `SCHEMA`) into a rowid one, once.

        One transaction at the first open of such a file, holding its write lock for as long
        as the copy takes (about a second for 300 MB); the pages the old table held are kept
        free in the file for later writes. The file stays as it was, and in use (every call
        works on either table), when the conversion fails (a read-only file, a full disk:
        logged) or another process holds the write lock past `busy_timeout`: a later open
        converts it. A file where other programs defined views, triggers, or indexes on the
        table, is left as it is (logged at each open): a conversion would drop them.
        """
        if not _made_by_earlier_version(conn):
            return
        if _has_dependents(conn):
            logger.warning(
                "SQLite database %s keeps its earlier table (views, triggers or indexes on "
                "it are defined): deleting a big session's records is slow there",
                self.path,
            )
            return
        deadline = time.monotonic() + self._busy_timeout
        try:
            while True:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    break
                except sqlite3.OperationalError as exc:  # waited `_BUSY_SLICE` already
                    if not _busy(exc) or time.monotonic() >= deadline:
                        raise
            # Not converted by another process meanwhile, nor given dependents.
            if _made_by_earlier_version(conn) and not _has_dependents(conn):
                conn.execute("DROP TABLE IF EXISTS kv_converting")
                conn.execute(_create_table("kv_converting"))
                conn.execute("INSERT INTO kv_converting (key, value) SELECT key, value FROM kv")
                conn.execute("DROP TABLE kv")
                conn.execute("ALTER TABLE kv_converting RENAME TO kv")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            _roll_back(conn)
            logger.warning("SQLite database %s is used unconverted: %s", self.path, exc)
        except BaseException:
            _roll_back(conn)
            raise
        finally:
            # The copy went through the write-ahead log (the whole table, committed or
            # not): it would stay that size on disk until the last connection closes.
            with contextlib.suppress(sqlite3.Error):
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _switch_to_wal(self, conn: sqlite3.Connection) -> None:
        """Puts the database in WAL mode, waiting up to `busy_timeout` for other processes.

        SQLite answers the switch of a new file "database is locked" at once, without its
        busy handler, while another connection switches it too: processes that open one
        new file together take turns here instead of failing.
        """
        deadline = time.monotonic() + self._busy_timeout
        pause = 0.001
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if not _busy(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    def _connection(self) -> sqlite3.Connection:
        """This process's connection (the lock held), opened first in a forked child."""
        conn = self._conn
        if conn is None:
            if self._closed:
                raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
            conn = self._conn = self._connect()[0]
        return conn

    def _after_fork(self) -> None:
        """In a fork()ed child: the next call opens a connection of the child's own.

        SQLite forbids using a connection across `fork`: its locks are not inherited, so
        the parent's close took itself for the last connection and removed the write-ahead
        log, with the child's writes (acknowledged) in it. The inherited connection is
        closed at once, as the fork returns: SQLite keeps a file's locks in the process's
        memory, and a connection the child opened beside the inherited one would take the
        parent's locks for its own (holding none). The parent's connection, open, holds its
        lock on the database then: the close neither checkpoints nor removes the log. One a
        thread of the parent was using is kept open, unused (SQLite's own mutex may be held
        for good: a close would wait for it). A ":memory:" database is the child's own copy:
        it is kept. The lock may have been held by a thread of the parent, which the child
        does not have.
        """
        in_use = self._lock.locked()
        self._lock = threading.Lock()
        if self.path != ":memory:" and self._conn is not None:
            inherited, self._conn = self._conn, None
            if in_use:
                _INHERITED.append(inherited)
            else:
                with contextlib.suppress(sqlite3.Error):
                    inherited.close()

    async def _run(
        self,
        key: str | None,
        work: Callable[[sqlite3.Connection], T],
        keys: Iterable[str] = (),
    ) -> T:
        """Runs `work` on the connection in a thread; `key` or `keys` are the keys it binds.

        `keys` may be the mapping of a batch's items: a value too big to bind (over SQLite's
        length limit, 1 GB by default, or sqlite3's 2 GiB) names the key of the batch's
        largest value rather than `key` (a guard's), as neither says which it was.
        """

        def locked() -> T:
            # Given up when the call is cancelled: a call queued behind another one (which
            # may wait up to `busy_timeout` for another process's lock) then never runs.
            acquire(self._lock)
            try:
                return self._while_busy(work)
            finally:
                self._lock.release()

        try:
            return await run_in_thread(locked, _CANCEL_GRACE)
        except sqlite3.Error as exc:
            # Over SQLite's length limit. (An error of the sqlite3 module, not SQLite, such as
            # a closed database, has no code.)
            if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_TOOBIG:
                raise self._too_big(exc, key, keys) from exc
            raise PersistenceError(f"SQLite error on {self.path}: {exc}", key=key) from exc
        except UnicodeEncodeError:  # sqlite3 binds text as UTF-8: a lone surrogate fails
            for name in (key, *keys):
                if name is not None:
                    encode_key(name)  # raises PersistenceError naming the key
            raise PersistenceError("key is not valid Unicode text", key=key) from None
        except OverflowError as exc:  # sqlite3 binds at most INT_MAX bytes: 2 GiB less one
            raise self._too_big(exc, key, keys) from exc

    def _while_busy(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """`work` on the connection, tried again while another writer holds the lock.

        SQLite waits a slice of `busy_timeout` each time; between two, a cancelled call gives
        up (`Abandoned`), so its thread never outlives its grace by long: a process told to
        stop (Ctrl-C) is not held up to `busy_timeout` at its exit. Every `work` is one
        statement or one transaction, which a busy lock fails before it changes anything.
        """
        deadline = time.monotonic() + self._busy_timeout
        while True:
            try:
                return work(self._connection())
            except sqlite3.OperationalError as exc:
                if not _busy(exc) or time.monotonic() >= deadline:
                    raise
            if given_up():
                raise Abandoned

    def _key(self, key: str) -> str:
        """`key` checked (`check_key`); in a UTF-16 database, refused if it holds U+FFFE or U+FFFF.

        SQLite stores those as U+FFFD in UTF-16 text, so two keys would share a row.

        Raises:
            PersistenceError: As `check_key`, or for such a key.
        """
        check_key(key)
        if self._encoding != "UTF-8" and ("\ufffe" in key or "\uffff" in key):
            raise PersistenceError(
                f"key holds U+FFFE or U+FFFF, which this {self._encoding} database stores as "
                "U+FFFD (another key's row)",
                key=key,
            )
        return key

    def _keys(self, keys: Sequence[str]) -> list[str]:
        """`check_keys(keys)`, each key as `_key` checks it."""
        return [self._key(key) for key in check_keys(keys)]

    def _items(self, items: Mapping[str, bytes]) -> dict[str, bytes]:
        """`check_items(items)`, each key as `_key` checks it."""
        checked = check_items(items)
        for key in checked:
            self._key(key)
        return checked

    def _too_big(self, error: Exception, key: str | None, keys: Iterable[str]) -> PersistenceError:
        """The error for a value too big to bind: a batch's names its largest value's key."""
        if isinstance(keys, Mapping) and keys:
            key = max(keys, key=lambda name: len(keys[name]))
        return PersistenceError(f"too big for SQLite on {self.path}: {error}", key=key)

    async def save(self, key: str, value: bytes) -> None:
        """Stores `value` under `key`, replacing any previous value."""
        row = (self._key(key), check_value(key, value))
        await self._run(key, lambda c: c.execute(_UPSERT, row))

    async def save_new(self, key: str, value: bytes) -> bool:
        """Stores `value` under `key` unless the key exists; returns whether it wrote."""
        row = (self._key(key), check_value(key, value))
        cursor = await self._run(
            key,
            lambda c: c.execute(
                "INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT(key) DO NOTHING", row
            ),
        )
        return cursor.rowcount > 0

    async def load(self, key: str) -> bytes | None:
        """Returns the value stored under `key`, or None."""
        self._key(key)
        row = await self._run(key, lambda c: c.execute(_SELECT_VALUE, (key,)).fetchone())
        return None if row is None else bytes(row[0])

    async def delete(self, key: str) -> bool:
        """Removes `key`; returns whether it existed."""
        self._key(key)
        cursor = await self._run(key, lambda c: c.execute(_DELETE, (key,)))
        return cursor.rowcount > 0

    async def batch_save(self, items: Mapping[str, bytes]) -> None:
        """Stores every item in one transaction (all or none)."""
        checked = self._items(items)
        await self._run(None, lambda c: _upsert(c, checked), checked)

    async def batch_save_if(
        self, guard_key: str, guard_value: bytes, items: Mapping[str, bytes]
    ) -> bool:
        """Stores every item only if `guard_key` holds `guard_value`, in one transaction.

        Returns whether it wrote. `BEGIN IMMEDIATE` takes the write lock before the check:
        no other connection writes the guard between the check and the commit.
        """
        guard = (self._key(guard_key), check_value(guard_key, guard_value))
        checked = self._items(items)
        # Checked before the guard: a refused guard would end the transaction before any
        # item is bound, and a key no store can keep would return False, not fail.
        for key in checked:
            encode_key(key)
        return await self._run(guard_key, lambda c: _upsert(c, checked, guard), checked)

    async def batch_delete_if(
        self, guard_key: str, guard_value: bytes, keys: Sequence[str]
    ) -> bool:
        """Deletes every key of `keys` only if `guard_key` holds `guard_value`, in one transaction.

        Returns whether the guard held. `BEGIN IMMEDIATE` takes the write lock before the
        check, as in `batch_save_if`: no other connection writes the guard between the check
        and the commit.
        """
        guard = (self._key(guard_key), check_value(guard_key, guard_value))
        wanted = list(dict.fromkeys(self._keys(keys)))
        # Checked before the guard, as `batch_save_if`'s items: a refused guard would end the
        # transaction before any key is bound.
        for key in wanted:
            encode_key(key)
        return await self._run(guard_key, lambda c: _delete_if(c, wanted, guard), wanted)

    async def batch_load(self, keys: Sequence[str]) -> dict[str, bytes]:
        """Returns the stored values of those `keys` that exist."""
        wanted = list(dict.fromkeys(self._keys(keys)))

        def read(c: sqlite3.Connection) -> dict[str, bytes]:
            found: dict[str, bytes] = {}
            # One read transaction: every chunk sees the same snapshot, never part of a batch
            # another connection commits between two chunks.
            c.execute("BEGIN")
            try:
                for start in range(0, len(wanted), 500):  # stay under SQLite's variable limit
                    chunk = wanted[start : start + 500]
                    marks = ",".join("?" * len(chunk))
                    query = f"SELECT key, value FROM kv WHERE key IN ({marks})"
                    for k, v in c.execute(query, chunk):
                        # Another client's text or number: as bytes, as `_SELECT_VALUE` has it.
                        if type(v) is not bytes:
                            (v,) = c.execute("SELECT CAST(? AS BLOB)", (v,)).fetchone()
                        found[k] = v
            finally:
                _end_read(c)
            return found

        return await self._run(None, read, wanted)

    async def list_keys(self, prefix: str = "") -> list[str]:
        """Returns the stored keys starting with `prefix`, sorted.

        One range of the primary key, whatever the prefix's length or characters (in a
        database another program made in UTF-16, a scan of every key). A key that is not
        text (written by another client) is skipped, with a warning.
        """
        # Keys are UTF-8 text, compared byte by byte (so in code point order, Python's), and
        # never hold the byte FF: [prefix, prefix + FF) holds exactly the keys starting with
        # `prefix`. The bound is text that is not UTF-8, which SQLite compares as it is.
        bounds = (check_prefix(prefix), encode_key(prefix) + b"\xff")
        if self._encoding != "UTF-8":
            return await self._list_keys_transcoded(prefix)
        rows = await self._run(
            None,
            lambda c: c.execute(
                "SELECT CAST(key AS BLOB) FROM kv WHERE key >= ? AND key < CAST(? AS TEXT)",
                bounds,
            ).fetchall(),
            (prefix,),
        )
        return decode_stored_keys("SqliteBackend", (bytes(k) for (k,) in rows))

    async def _list_keys_transcoded(self, prefix: str) -> list[str]:
        """`list_keys(prefix)` of a database whose text is not UTF-8 (UTF-16, in its order).

        Its text is compared as UTF-16 bytes, not in code point order: no range of keys holds
        exactly those starting with `prefix`, so every text key is read and tested here.
        """
        rows = await self._run(
            None,
            lambda c: c.execute(
                "SELECT CAST(key AS BLOB) FROM kv WHERE typeof(key) = 'text'"
            ).fetchall(),
        )
        keys = decode_stored_keys("SqliteBackend", (bytes(k) for (k,) in rows), self._encoding)
        return [key for key in keys if key.startswith(prefix)]

    def close(self) -> None:
        """Closes the database connection; a second close does nothing.

        A call on the backend after it raises `PersistenceError`. Call it when done, or use
        the backend as a context manager (`with` or `async with`): else the connection stays
        open until the backend is collected, which closes it.
        """
        with self._lock:
            self._closed = True
            _OPEN.discard(self)
            if self._conn is not None:
                self._conn.close()

    def __del__(self) -> None:
        # A backend made inline and never closed (`checkpoint_backend=SqliteBackend(...)`)
        # closes its connection as it goes: nothing is pending in it (every write commits),
        # and Python 3.13 would warn of the connection (a `ResourceWarning` naming no path).
        # One a forked child inherited in use is not this one's (`_after_fork`).
        conn = getattr(self, "_conn", None)
        if conn is not None:
            with contextlib.suppress(Exception):  # a collection must not fail (at exit, say)
                conn.close()

    def __enter__(self) -> SqliteBackend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> SqliteBackend:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        # Off the loop: the close waits for a call whose thread may wait for another
        # writer's lock (up to `busy_timeout`), even after the call was cancelled.
        await asyncio.to_thread(self.close)

    def __repr__(self) -> str:
        return f"SqliteBackend(path={self.path!r}, synchronous={self.synchronous!r})"


_OPEN: weakref.WeakSet[SqliteBackend] = weakref.WeakSet()
"""The backends not closed: a fork()ed child's open connections of their own (`_after_fork`)."""
_INHERITED: list[sqlite3.Connection] = []
"""A fork()ed child's inherited connections that a thread of the parent was using as it
forked: never used, and never closed (see `_after_fork`)."""


def _after_fork_in_child() -> None:
    for backend in list(_OPEN):
        backend._after_fork()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _synchronous_level(value: object) -> str:
    """The name of the `synchronous` level `value` names (a name in any case, or 0 to 3).

    Raises:
        PersistenceError: When `value` names no level.
    """
    if isinstance(value, str) and value.upper() in _SYNCHRONOUS:
        return value.upper()
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(_SYNCHRONOUS):
        return _SYNCHRONOUS[value]
    raise PersistenceError(
        f"synchronous must be one of {', '.join(_SYNCHRONOUS)} (or 0 to 3), got {value!r}"
    )
