"""PostgreSQL persistence (psycopg 3, async, pooled): for many workers on many machines."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import math
import random
import re
import weakref
import zlib
from collections.abc import (
    Awaitable,
    Callable,
    Coroutine,
    Generator,
    Iterable,
    Mapping,
    Sequence,
)
from typing import Any, Generic, NamedTuple, TypeVar

from llm_agent_runtime._cancelling import cancellations_so_far
from llm_agent_runtime._copies import Unshared
from llm_agent_runtime._loops import PerLoop
from llm_agent_runtime._sockets import readable
from llm_agent_runtime.errors import PersistenceError
from llm_agent_runtime.orchestration._calls import keep_alive, let_go
from llm_agent_runtime.persistence._checks import (
    check_items,
    check_key,
    check_keys,
    check_prefix,
    decode_stored_keys,
)
from llm_agent_runtime.persistence._waiting import retrieve_outcome
from llm_agent_runtime.persistence.base import encode_key

__all__ = ["PostgresBackend"]

T = TypeVar("T")

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}\Z")
_UPSERT = "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()"
_VALUES_ROWS_MAX = 32
_CANCEL_GRACE = 1.0
"""Seconds a timed-out statement is given to be cancelled on the server before its
connection is closed instead (the server may not answer the cancel request either)."""
_STOP_ATTEMPTS = 40
_PROGRAM_LIMIT_EXCEEDED = "54000"
"""SQLSTATE of a value beyond a server limit: a key too long for an entry of the table's index."""
_DEADLOCK_DETECTED = "40P01"
"""SQLSTATE of a statement the server aborted to break a cycle of lock waits."""
_DEADLOCK_ATTEMPTS = 3
_DEADLOCK_PAUSE = 0.05
"""Seconds, at most, before a statement aborted by a deadlock runs again (times its attempt)."""


_STRIPES = 64
"""Advisory locks a table's keys share (see `_locked_rows`): the most one statement takes.

No more than a connection's share of the server's lock table (`max_locks_per_transaction`,
64 by default), however many keys a statement has (a sweep deletes 500 at once). Two
guarded writes that share one only wait for each other, as if they shared a key."""


def _stripes(keys: Iterable[bytes]) -> list[int]:
    """The advisory locks (of `_STRIPES`) a guarded statement of `keys` takes, in order."""
    return sorted({zlib.crc32(key) % _STRIPES for key in keys})


def _locked_rows(table: str) -> str:
    """The CTEs of a guarded statement's locks: `stripes`, then `locked`.

    `stripes` takes the advisory locks of the statement's keys (the first two parameters:
    the table's number, then `_stripes`), in their order: two guarded statements that share
    a key run one after the other. Rows alone could not order them: a statement locks only
    the rows it finds, and a row it then inserts is locked after the others, whatever its
    key. A guarded write that locked its guard "b", then inserted "a", met another that had
    inserted "a" and waited for "b": a deadlock, which the server breaks a second later.

    `locked` then reads the existing rows of the next parameter's (sorted) keys, locking
    each (`FOR UPDATE`) in that order as the statement reads it: up to the guard's, which
    the statement checks. Statements of one row take no advisory lock: they hold nothing
    as they wait. A plain batch takes none either (they made a checkpointed step a sixth
    slower): it writes its rows in the order of their keys, but may still meet a guarded
    write that inserts a row before its guard's in that order; the server then aborts one
    of the two, which runs again (see `_statement_unlocked`).
    """
    return (
        "stripes AS MATERIALIZED (SELECT count(*) AS n FROM "
        "(SELECT pg_advisory_xact_lock(%s, s) FROM unnest(%s::int4[]) AS s) AS taken), "
        f"locked AS MATERIALIZED (SELECT key, value FROM {table} "
        "WHERE key = ANY(%s) AND (SELECT n FROM stripes) > 0 ORDER BY key FOR UPDATE)"
    )


class _AfterLocks(NamedTuple):
    """A statement run after `locks`, in one transaction (and one round trip).

    In READ COMMITTED, a statement reads the rows committed when it started: one that waits
    for a lock, then reads what the lock's holder changed, mixes two moments. The
    statement run after the locks are held reads a snapshot taken once nothing it depends on
    can change any more.
    """

    locks: str
    locks_params: Sequence[Any]
    statement: str


@functools.lru_cache(maxsize=256)
def _values_upsert(table: str, rows: int) -> str:
    placeholders = ", ".join(["(%b, %b)"] * rows)  # %b: bytes go binary, unescaped
    return f"INSERT INTO {table} (key, value) VALUES {placeholders} {_UPSERT}"


class _NoConnection(TimeoutError):
    """The pool handed out no connection within the call's time."""


class _LoopPool:
    """One event loop's pool: opened on first use in the loop, by one call at a time."""

    def __init__(self) -> None:
        self.pool: Any = None  # a new one at each open: a closed pool cannot reopen
        self.ready = False
        self.closed = False  # by `close`, or as the loop ended: the loop makes a new one
        self.opening = asyncio.Lock()
        self.guard: asyncio.Task[None] | None = None  # closes the open pool: see `_guard`
        # The last failed open: (the loop's time it ended, its error's message). A call that
        # waited for that open raises its error rather than running a whole failed open
        # again. A message, not the error: that would keep its traceback's frames alive.
        self.failure: tuple[float, str] | None = None
        # The pool's connections (each added as it is made, see `_adding_to`): one of them
        # open means a call that got none waited on a busy pool, not on a server that is down.
        self.connections: weakref.WeakSet[Any] = weakref.WeakSet()


async def _acquire(lock: asyncio.Lock, deadline: float) -> None:
    """Takes `lock`, waiting no later than the loop's time `deadline`."""
    loop = asyncio.get_running_loop()
    waited = max(deadline - loop.time(), 0.0)
    try:
        async with asyncio.timeout_at(deadline):
            await lock.acquire()
    except TimeoutError:
        raise PersistenceError(
            f"cannot open PostgreSQL storage: another call's open did not end within {waited:.3g} s"
        ) from None


async def _guard(state: _LoopPool, pool: Any, connections: weakref.WeakSet[Any]) -> None:
    """Waits until cancelled, then closes `pool`: a task, made as `pool` opened.

    A loop's end (`asyncio.run`, `asyncio.Runner`) cancels its tasks before anything else,
    and psycopg_pool's background tasks ignore a cancellation that lands while they connect
    (one is growing the pool): their loop would wait for them forever. Closing the pool
    stops them. Cancelled so, it first lets the loop's other tasks end (`_others_ended`);
    cancelled with `_CLOSE` (a close, a renewal), it closes the pool at once. Whatever
    cancels this one, the next call opens a new pool.
    """
    try:
        await asyncio.get_running_loop().create_future()
    except asyncio.CancelledError as cancelled:
        if cancelled.args != (_CLOSE,):  # not a close: the loop's end, cancelling every task
            await _others_ended()
        raise
    finally:
        if state.pool is pool:
            state.ready = False
        await _shut(pool, connections)


async def _others_ended() -> None:
    """Waits, at most `_LOOP_END_GRACE` seconds, for the loop's tasks but the pools' own.

    At a loop's end every task is cancelled at once: a run's cleanup then still saves its
    end and events through the pool, which a guard closing it first lost. Only cancelled
    tasks are waited for, as the loop itself waits for those alone (one a task starts as it
    ends, an event callback say, is not). The pools' own tasks (their guards, schedulers
    and workers) are not either: closing a pool is what stops them.
    """
    pools = [state.pool for state in list(_GUARDS.values())]
    own = {
        *_GUARDS,
        *(getattr(pool, "_sched_runner", None) for pool in pools),
        *(task for pool in pools for task in getattr(pool, "_workers", ())),
    }
    others = [task for task in asyncio.all_tasks() if task.cancelling() and task not in own]
    if others:
        await asyncio.wait(others, timeout=_LOOP_END_GRACE)


async def _shut(pool: Any, connections: weakref.WeakSet[Any]) -> None:
    """Closes `pool` (a closed one is left as it is), or else its idle connections."""
    try:
        await pool.close()
    except (Exception, asyncio.CancelledError):
        # psycopg_pool's close waits for its background tasks first, and fails when the
        # loop's end cancelled them: its idle connections are closed here instead (every
        # statement's task was cancelled too).
        for conn in list(connections):
            with contextlib.suppress(Exception):
                await conn.close()


def _adding_to(connections: weakref.WeakSet[Any]) -> Callable[[Any], Awaitable[None]]:
    """A pool's `configure` callback: keeps each new connection in `connections`."""

    async def add(conn: Any) -> None:
        connections.add(conn)

    return add


_CLOSE = "close the pool"
"""The cancellation message that has a guard close its pool at once (`_guard`)."""
_LOOP_END_GRACE = 10.0
"""Seconds a loop's pool waits, as the loop ends, for the loop's other tasks (`_guard`)."""
_GUARDS: dict[asyncio.Task[None], _LoopPool] = {}
"""The guard of every open pool (`_guard`), with the pool's state. A loop closed without
being ended leaves its pool to `_abandon_pool`: when its backend is used again (`PerLoop`),
and, for a backend dropped with its loop, as the next pool opens (`_abandon_closed_loops`)."""


def _forget_guard(guard: asyncio.Task[None]) -> None:
    _GUARDS.pop(guard, None)


def _abandon_closed_loops() -> None:
    """Abandons the pools of loops closed without being ended (see `_GUARDS`)."""
    for guard in list(_GUARDS):
        if guard.get_loop().is_closed():
            state = _GUARDS.pop(guard, None)  # one taker, whatever thread sweeps too
            if state is not None and state.guard is guard:  # else abandoned already
                _abandon_pool(state)


def _abandon_pool(state: _LoopPool) -> None:
    """Closes the connections of a pool whose loop was closed without being ended (`PerLoop`).

    Nothing cancelled its guard (`_guard`), which would wait for good, kept alive with the
    pool and its connections (one more server connection left open at every such loop). The
    connections are closed at once, with no loop (libpq's own close); the guard and the
    pool's own tasks, which will never run again, are let go and their coroutines closed
    here: the garbage collector would close them in the middle of other work, each failing
    on its closed loop ("Exception ignored in ...", "Task was destroyed but it is pending").
    """
    for conn in list(state.connections):
        with contextlib.suppress(Exception):
            conn.pgconn.finish()
    pool = state.pool
    # psycopg_pool's scheduler and workers (private names: none found, none closed).
    tasks = [state.guard, getattr(pool, "_sched_runner", None), *getattr(pool, "_workers", ())]
    for task in tasks:
        if isinstance(task, asyncio.Task) and not task.done():
            let_go(task)
            task._log_destroy_pending = False  # type: ignore[attr-defined]
            with contextlib.suppress(Exception):  # its cleanup, failing on the closed loop
                task.get_coro().close()
    state.guard = state.pool = None  # abandoned once, whoever asks again
    state.connections = weakref.WeakSet()


async def _close_pool(state: _LoopPool) -> None:
    """Closes one loop's pool, within that loop, for good: the loop makes a new one."""
    async with state.opening:  # not a pool an open under way is about to hand out
        state.closed = True
        state.ready = False
        if state.guard is not None:
            state.guard.cancel(_CLOSE)  # it closes the pool
            await asyncio.wait([state.guard])
        if state.pool is not None:
            # A guard cancelled before its first step (a close right after the open) never
            # ran its `finally`: the pool's workers and connections would live on.
            await _shut(state.pool, state.connections)


def _check_dsn(dsn: str) -> None:
    """Refuses a connection string libpq would misread, before any message quotes it.

    libpq's messages (and psycopg_pool's log records of them) quote what they could not
    read: a password whose `@` or `%` was not escaped shows there, whole or in part.

    Raises:
        PersistenceError: A URI whose user info holds an `@` (the password's, unescaped:
            libpq would take the rest for the host), or a string libpq cannot parse (its
            message not shown).
    """
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    scheme, uri, rest = dsn.partition("://")
    if uri and scheme in ("postgresql", "postgres") and rest.split("/", 1)[0].count("@") > 1:
        raise PersistenceError(
            "the PostgreSQL connection string's user info holds an '@': write a password's "
            "'@' as %40 (libpq would read the rest of the password as the host)"
        )
    # Raised after the handler, not in it: psycopg's error, which may quote the password,
    # would be kept as the raised error's context.
    refusal = None
    try:
        conninfo_to_dict(dsn)
    except psycopg.Error as error:
        refusal = type(error).__name__
    if refusal is not None:
        raise PersistenceError(
            f"psycopg refuses the connection string ({refusal}; its message is not shown, as "
            "it may quote the password): check its form and percent escapes"
        )


def _without_password(text: str, dsn: str) -> str:
    """`text` with the connection string's password, wherever it shows, as `***`."""
    from psycopg.conninfo import conninfo_to_dict

    password = conninfo_to_dict(dsn).get("password")
    return text.replace(str(password), "***") if password else text


class PostgresBackend(Unshared):
    """Key -> bytes storage in one PostgreSQL table, through a connection pool.

    Keys are stored as their UTF-8 bytes, so any string is a valid key to look up. A key is
    written into the table's index, whose entries hold about 2.7 kB once PostgreSQL has
    compressed them: a longer key that does not compress that far (a random one of more than
    2,692 bytes of UTF-8; a repetitive one may be much longer) is refused with a
    `PersistenceError` saying so.

    Every call gives up after `timeout` seconds, getting a pooled connection included, with
    `PersistenceError` naming the timeout: a server that stops answering (a hung host, a
    network partition) never blocks a caller forever. A timed-out statement is cancelled on
    the server; when the server does not answer that within a second either, its connection
    is closed, and the pool drops it rather than handing it out again. A call its caller
    cancels is stopped the same way: cancelled on the server, its connection closed when the
    server does not answer that within a second.

    A pooled connection the server has closed while it was idle (a restart) is dropped
    before a statement is sent on it, and another one taken. When the pool hands out no
    connection in time and holds no open one (it cannot connect, or waits out its reconnect
    backoff after an outage; a busy pool's call just times out), one connection is tried
    directly, as `open` does,
    for up to `timeout` more seconds: failing, the error says what the server or the network
    answered; connecting, the pool is replaced by a new one and the call tried once more on
    it, within those seconds.

    The pool opens on first use (or `await backend.open()`); close it with `await
    backend.close()` or use the backend as an async context manager. An open that failed (the
    server down) is tried again, with a new pool, by the next call; a closed backend opens a
    new pool on its next use too. psycopg is imported only when a backend is created. A batch
    is one transaction.

    A pool's connections belong to the event loop that opened them: each loop the backend is
    used from (a thread's own `asyncio.run`, or the next `asyncio.run`) gets a pool of its
    own, opened on first use there and closed as that loop ends, so one backend may serve
    several loops, one after another or at once. A call made as a loop ends, once its pool
    is closed (by the cleanup of an async generator the loop finalizes after the
    backend's), raises `PersistenceError`.

    Args:
        dsn: libpq connection string (a str, without NUL), e.g. `postgresql://user@host:5432/db`.
        table: Table name (created if missing): a plain SQL identifier (ASCII letters,
            digits and `_`, at most 63), case-insensitive as an unquoted name is; it is
            quoted in every statement, so a reserved word (`order`, `user`) works too.
        min_size: Connections kept open (an int >= 0), by each event loop's pool.
        max_size: Most connections at once (an int >= 1, and >= `min_size`), by each event
            loop's pool.
        timeout: Seconds a call may take, waiting for a free connection included.

    Raises:
        PersistenceError: When `dsn` is not a str (or holds a NUL character) or a connection
            string libpq cannot read (a password's `@` or `%` not escaped), the table
            name is not a plain identifier, the pool sizes are not such ints, `timeout` is
            not a positive number, or psycopg is not installed (the `postgres` extra).
    """

    def __init__(
        self,
        dsn: str,
        table: str = "llm_agent_runtime_kv",
        min_size: int = 1,
        max_size: int = 10,
        timeout: float = 10.0,
    ) -> None:
        # Checked now: psycopg takes any object, and every call then waited out `timeout`
        # and failed with a bare AttributeError (`None` from an unset environment variable);
        # libpq reads a string up to a NUL, silently dropping the options after it.
        if not isinstance(dsn, str):
            raise PersistenceError(
                f"PostgresBackend needs a libpq connection string as a str, got "
                f"{type(dsn).__name__}"
            )
        if "\0" in dsn:
            raise PersistenceError("a PostgreSQL connection string cannot hold a NUL character")
        if not isinstance(table, str) or not _IDENTIFIER.match(table):
            raise PersistenceError(f"table name {table!r} is not a plain SQL identifier")
        seconds = math.nan
        if isinstance(timeout, int | float) and not isinstance(timeout, bool):
            with contextlib.suppress(OverflowError):  # an int too large for a float
                seconds = float(timeout)
        if not 0 < seconds < math.inf:
            raise PersistenceError(
                f"timeout must be a positive finite number of seconds, got {timeout!r:.80}"
            )
        if not (
            all(isinstance(n, int) and not isinstance(n, bool) for n in (min_size, max_size))
            and 0 <= min_size <= max_size
            and max_size >= 1
        ):
            raise PersistenceError(
                "pool sizes must be ints with 0 <= min_size <= max_size and max_size >= 1, got "
                f"min_size={min_size!r}, max_size={max_size!r}"
            )
        try:
            from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout
        except ImportError as error:
            raise PersistenceError(
                "PostgresBackend needs psycopg: pip install 'llm-agent-runtime[postgres]'"
            ) from error
        _check_dsn(dsn)
        self.table = table
        # Quoted, so that a reserved word is a name too; lower case, so that the name means
        # the table an unquoted one did (PostgreSQL folds unquoted names to lower case).
        self._table = f'"{table.lower()}"'
        # The table's advisory lock, which its creation takes (see `open`): a stable number
        # of its name, as the lock is shared by every process on the database.
        digest = hashlib.sha256(f"llm_agent_runtime:create:{table.lower()}".encode()).digest()
        self._create_lock = int.from_bytes(digest[:8], "big", signed=True)
        # The first number of its rows' advisory locks (see `_locked_rows`): a guarded write
        # to another table does not wait for this one's.
        digest = hashlib.sha256(f"llm_agent_runtime:rows:{table.lower()}".encode()).digest()
        self._stripes_class = int.from_bytes(digest[:4], "big", signed=True)
        self.timeout = seconds
        self._dsn = dsn
        # Autocommit: every call is one statement, atomic on its own, in one round trip.
        self._new_pool = functools.partial(
            AsyncConnectionPool,
            dsn,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            open=False,
            kwargs={"autocommit": True},
        )
        # A pool's connections (and its lock) belong to the loop that opened them: each loop
        # gets its own, closed within that loop as it ends (a thread's `asyncio.run`, the next
        # `asyncio.run`), as the Redis backend's clients are.
        self._pools: PerLoop[_LoopPool] = PerLoop(_LoopPool, _close_pool, _abandon_pool)
        self._pool_timeout: type[Exception] = PoolTimeout
        self._pool_closed: type[Exception] = PoolClosed

    def __repr__(self) -> str:
        return f"PostgresBackend(table={self.table!r})"  # the DSN may hold a password

    async def open(self) -> None:
        """Opens the running event loop's pool, if not open yet, and creates the table if missing.

        The pool tries to connect until `timeout` has passed (a server still starting up
        gets that long). When it has not connected by then, one more connection is tried
        directly, for up to `timeout` seconds, to learn why: the error then says what the
        server or the network answered (connection refused, a failed password, no such
        database), which the pool's own timeout does not.

        Concurrent calls open the pool once: the others wait for that open, and when it
        fails raise its error rather than trying again themselves. Every step of an open is
        bounded: the pool's wait and the direct connection (`timeout` each), the table's
        creation (`timeout`, and a second's grace to cancel it on a hung server), and the
        close of a pool that failed (a second).

        Raises:
            PersistenceError: When the server cannot be reached within `timeout`, or the
                table cannot be created; the next call tries again.
        """
        await self._open_pool()

    async def _open_pool(self, deadline: float | None = None) -> tuple[_LoopPool, Any]:
        """The running loop's pool state and pool, opened first if it is not (see `open`).

        The wait for another call's open ends at the loop's time `deadline`: by default, it
        lasts as long as that open (whose every step is bounded, see `open`).
        """
        asked = asyncio.get_running_loop().time()
        while True:
            state = self._pools.get()
            if state.ready:
                return state, state.pool
            # Concurrent first calls open (and create) once, and share its failure.
            if deadline is None:
                await state.opening.acquire()
            else:
                await _acquire(state.opening, deadline)
            try:
                if state.closed:
                    if self._pools.get() is state:
                        # Closed as its loop ends (`shutdown_asyncgens`), yet still the
                        # loop's: looping again would spin forever, never yielding.
                        raise PersistenceError(
                            "cannot use PostgreSQL storage: this event loop's pool was "
                            "closed as the loop ends"
                        )
                    continue  # closed while this waited: the loop's next pool is wanted
                if not state.ready:
                    failed = state.failure
                    if failed is not None and failed[0] >= asked:
                        # The open this call waited for failed: one failed open is enough.
                        raise PersistenceError(failed[1])
                    await self._open_new(state)
                return state, state.pool
            finally:
                state.opening.release()

    async def _open_new(self, state: _LoopPool) -> None:
        """Opens a new pool for `state` (its lock held) and creates the table if missing."""
        _abandon_closed_loops()
        # A new pool each time: psycopg_pool cannot reopen a pool once closed, and it closes
        # one whose first open failed.
        connections: weakref.WeakSet[Any] = weakref.WeakSet()  # for `_guard`
        pool = state.pool = self._new_pool(configure=_adding_to(connections))
        state.connections = connections
        try:
            await pool.open(wait=False)
            # Its `min_size` connections waited for as the pool's own: a client waiting for
            # the first one would make the pool grow by one more. Bounded here, not by
            # psycopg_pool's wait, which timing out closes the pool giving its workers 5 s to
            # stop, all of which a hung server takes.
            if pool.min_size:
                try:
                    async with asyncio.timeout(self.timeout):
                        await pool.wait(timeout=2 * self.timeout + 1)
                except TimeoutError:  # as the pool's own timeout says it
                    raise self._pool_timeout(
                        f"couldn't get a connection after {self.timeout:g} sec"
                    ) from None
            await pool.putconn(await pool.getconn(timeout=self.timeout))
            # CREATE TABLE IF NOT EXISTS is not safe against a concurrent twin (another
            # worker's first call): it fails on the catalog's unique index. The lock
            # serializes them. One query without parameters, so one round trip of the
            # simple protocol, whose statements run as one implicit transaction: the lock
            # lasts until the table is committed.
            await self._statement(
                state,
                pool,
                f"SELECT pg_advisory_xact_lock({self._create_lock}); "
                f"CREATE TABLE IF NOT EXISTS {self._table} "
                "(key BYTEA PRIMARY KEY, value BYTEA NOT NULL, "
                "updated_at TIMESTAMPTZ NOT NULL DEFAULT now())",
                (),
            )
        except BaseException as error:
            # An opened pool too (the table failed): no leaked connections. Its workers get
            # a grace to stop, not psycopg_pool's 5 s: on a hung server they would take it.
            await pool.close(timeout=min(_CANCEL_GRACE, self.timeout))
            if not isinstance(error, Exception):
                raise
            failure = f"{type(error).__name__}: {error}"
            if isinstance(error, self._pool_timeout | TimeoutError):
                why = await self._connection_failure()
                failure = failure if why is None else f"{why} ({failure})"
            failed = PersistenceError(f"cannot open PostgreSQL storage: {failure}")
            state.failure = (asyncio.get_running_loop().time(), str(failed))
            raise failed from error
        state.failure = None
        # Kept alive apart from the backend: one dropped unclosed leaves the task (and the
        # pool it holds) to close the pool as the loop ends, not to the garbage collector.
        guard = state.guard = keep_alive(
            asyncio.get_running_loop().create_task(
                _guard(state, pool, connections),
                name=f"{self!r}: closes its pool as the loop ends",
            )
        )
        _GUARDS[guard] = state
        guard.add_done_callback(_forget_guard)
        state.ready = True

    async def _connection_failure(self) -> str | None:
        """Why a connection to the server fails, from one direct attempt (None: it connects).

        The text is psycopg's `OperationalError` (libpq's, or the server's), which names the
        host, the port, the user and the database; the password, should it show, as `***`.
        Other errors (a connection string libpq cannot parse) are named by their type alone:
        their text may quote a piece of the string, the password included.
        """
        import psycopg

        try:
            conn = await asyncio.wait_for(psycopg.AsyncConnection.connect(self._dsn), self.timeout)
        except TimeoutError:
            return f"no connection within {self.timeout:g} s"
        except psycopg.OperationalError as error:
            return _without_password(" ".join(str(error).split()), self._dsn)  # on one line
        except psycopg.Error as error:
            return f"psycopg refuses the connection string ({type(error).__name__})"
        await conn.close()
        return None

    async def close(self) -> None:
        """Closes every event loop's pool; a later call opens a new one.

        The running loop's is closed before this returns; one of another loop that is
        running (in another thread) is closed there, without waiting for it; one of an idle
        loop when that loop next runs (or ends). A loop's pool is closed as that loop ends
        anyway (under `asyncio.run`).
        """
        await self._pools.aclose()

    async def __aenter__(self) -> PostgresBackend:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _execute(
        self,
        key: str | None,
        query: str | _AfterLocks,
        params: Sequence[Any],
        batch: bool = False,
    ) -> list[Any]:
        """Runs one statement (atomic on its own: autocommit) and returns its rows.

        An `_AfterLocks` query runs as one transaction: its locks, then its statement.

        Raises:
            PersistenceError: Naming `key`, when the statement fails or does not end within
                `timeout` seconds (waiting for a connection included), or no connection can
                be made (saying what the server or the network answered); a `batch` of
                several keys names no key when one is too long (the server does not say
                which).
        """
        loop = asyncio.get_running_loop()
        state, pool = await self._open_pool()
        try:
            try:
                return await self._statement_unlocked(state, pool, query, params)
            except _NoConnection:
                renewed = state.pool is not pool  # by another call, as this one waited
                if not renewed and any(not conn.closed for conn in state.connections):
                    raise  # its connections are busy: the pool is fine, just exhausted
                # The pool has no connection: the server is down, or back while the pool
                # waits out its reconnect backoff (up to minutes). One direct connection
                # says which, within one more `timeout`.
                deadline = loop.time() + self.timeout
                why = None if renewed else await self._connection_failure()
                if why is not None:
                    raise PersistenceError(
                        f"cannot connect to PostgreSQL: {why} (no connection from the pool "
                        f"within the backend's timeout of {self.timeout:g} s)",
                        key=key,
                    ) from None
                state, pool = await self._renew_pool(state, pool, deadline)
                return await self._statement(state, pool, query, params, deadline)
        except TimeoutError as error:
            raise PersistenceError(
                f"PostgreSQL did not answer within the backend's timeout of {self.timeout:g} s "
                f"({error or 'no connection free'})",
                key=key,
            ) from error
        except PersistenceError:
            raise
        except Exception as error:
            if getattr(error, "sqlstate", None) == _PROGRAM_LIMIT_EXCEEDED and "index row" in str(
                error
            ):
                raise PersistenceError(
                    "key too long for PostgreSQL: the table's index holds keys of about 2.7 kB "
                    f"once compressed ({error})",
                    key=None if batch else key,
                ) from error
            raise PersistenceError(
                f"PostgreSQL: {type(error).__name__}: {error}", key=key
            ) from error

    async def _renew_pool(
        self, state: _LoopPool, stale: Any, deadline: float
    ) -> tuple[_LoopPool, Any]:
        """Replaces `stale`, the loop's pool, by a new one (unless already replaced)."""
        await _acquire(state.opening, deadline)
        try:
            if state.pool is stale and state.ready and state.guard is not None:
                state.ready = False
                state.guard.cancel(_CLOSE)  # it closes the stale pool
                await asyncio.wait([state.guard])
        finally:
            state.opening.release()
        return await self._open_pool(deadline)

    async def _statement_unlocked(
        self, state: _LoopPool, pool: Any, query: str | _AfterLocks, params: Sequence[Any]
    ) -> list[Any]:
        """`_statement`, run again when the server aborted it as one of a deadlock.

        Two guarded statements never deadlock (see `_locked_rows`), but a guarded write
        may meet a plain batch, or another client's transaction, that takes the same rows in
        another order. The server aborts one of them; in autocommit it wrote nothing, so it
        runs again and sees the other's write (a guard that no longer holds its value: it
        writes nothing, and says so). It waits a few milliseconds first, at random: run again
        at once, it could take a row again before the other transaction, woken by the abort,
        took it, and deadlock again. All within the one `timeout`.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        attempt = 1
        while True:
            try:
                return await self._statement(state, pool, query, params, deadline)
            except Exception as error:
                deadlocked = getattr(error, "sqlstate", None) == _DEADLOCK_DETECTED
                if not deadlocked or attempt == _DEADLOCK_ATTEMPTS:
                    raise
            pause = random.uniform(_DEADLOCK_PAUSE / 2, _DEADLOCK_PAUSE) * attempt
            await asyncio.sleep(max(0.0, min(pause, deadline - loop.time())))
            attempt += 1

    async def _statement(
        self,
        state: _LoopPool,
        pool: Any,
        query: str | _AfterLocks,
        params: Sequence[Any],
        deadline: float | None = None,
    ) -> list[Any]:
        """Runs one statement on a connection of `pool`; returns its rows.

        It ends by the loop's time `deadline`: by default, `timeout` from now.

        Raises:
            TimeoutError: When no connection was free in time (`_NoConnection`), or the
                statement did not end.
        """
        loop = asyncio.get_running_loop()
        if deadline is None:
            deadline = loop.time() + self.timeout
        # getconn/putconn rather than connection(): that one also opens and commits a
        # transaction block, a cost (~20 us a call) an autocommit statement does not need.
        # The connection goes back to the pool it came from, even when a close and a reopen
        # (a new pool) happen while the statement runs.
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise _NoConnection("no connection within the call's time")
            try:
                conn = await pool.getconn(timeout=left)
            except self._pool_timeout as error:
                raise _NoConnection(str(error)) from error
            except self._pool_closed as error:  # replaced (renewed) as this call waited
                raise _NoConnection(str(error)) from error
            if not _closed_by_server(conn):
                break
            # Closed while idle in the pool (a server restart, an idle timeout): nothing was
            # sent on it. The pool drops a closed connection and makes a new one.
            await conn.close()
            await _give_back(pool, conn)
        try:
            return await _within(
                deadline, min(_CANCEL_GRACE, self.timeout), _rows(conn, query, params)
            )
        finally:
            # A statement that timed out left its connection idle (cancelled on the server),
            # or closed: the pool drops a closed (or still busy) connection.
            await _give_back(pool, conn)

    async def save(self, key: str, value: bytes) -> None:
        """Stores `value` under `key`, replacing any previous value atomically."""
        await self.batch_save({check_key(key): value})

    async def save_new(self, key: str, value: bytes) -> bool:
        """Stores `value` under `key` unless the key exists; returns whether it wrote."""
        checked = check_items({check_key(key): value})
        rows = await self._execute(
            key,
            f"INSERT INTO {self._table} (key, value) VALUES (%b, %b) "
            "ON CONFLICT (key) DO NOTHING RETURNING true",
            [encode_key(key), checked[key]],
        )
        return bool(rows)

    async def load(self, key: str) -> bytes | None:
        """Returns the value stored under `key`, or None."""
        rows = await self._execute(
            key, f"SELECT value FROM {self._table} WHERE key = %s", [encode_key(check_key(key))]
        )
        return bytes(rows[0][0]) if rows else None

    async def delete(self, key: str) -> bool:
        """Removes `key`; returns whether it existed."""
        rows = await self._execute(
            key,
            f"DELETE FROM {self._table} WHERE key = %s RETURNING key",
            [encode_key(check_key(key))],
        )
        return bool(rows)

    async def batch_save(self, items: Mapping[str, bytes]) -> None:
        """Stores every item in one transaction: all or none."""
        checked = check_items(items)
        if not checked:
            return
        # In the order of their keys, as a guarded statement locks rows (see `_locked_rows`).
        rows = sorted(zip(_encode_keys(checked), checked.values(), strict=True))
        keys = [key for key, _ in rows]
        values = [value for _, value in rows]
        # One statement: one round trip, all rows or none. A multi-row VALUES list (one
        # prepared statement per row count) costs the server a third less than unnest();
        # big batches use unnest() to stay under the bind-parameter limit.
        if len(keys) <= _VALUES_ROWS_MAX:
            query = _values_upsert(self._table, len(keys))
            params: list[Any] = [x for pair in zip(keys, values, strict=True) for x in pair]
        else:
            query = (
                f"INSERT INTO {self._table} (key, value) "
                f"SELECT * FROM unnest(%s::bytea[], %s::bytea[]) {_UPSERT}"
            )
            params = [keys, values]
        # Named in an error: the first key; a key too long, only when it is the batch's one
        # key (which of several the index refused, the server does not say).
        await self._execute(next(iter(checked)), query, params, batch=len(checked) > 1)

    async def batch_save_if(
        self, guard_key: str, guard_value: bytes, items: Mapping[str, bytes]
    ) -> bool:
        """Stores every item only if `guard_key` holds `guard_value`, in one statement.

        Returns whether it wrote. The statement first takes the advisory locks of its keys,
        then locks the existing rows up to the guard's, in the order of their keys (see
        `_locked_rows`): a concurrent write of the guard waits for it, or, committed first,
        is what the check sees.
        """
        guard = check_items({check_key(guard_key): guard_value})[guard_key]
        checked = check_items(items)
        if not checked:
            return await self.load(guard_key) == guard
        rows = sorted(zip(_encode_keys(checked), checked.values(), strict=True))
        guard_encoded = encode_key(guard_key)
        query = (
            f"WITH {_locked_rows(self._table)} "
            f"INSERT INTO {self._table} (key, value) "
            "SELECT * FROM unnest(%s::bytea[], %s::bytea[]) WHERE EXISTS ("
            "SELECT 1 FROM locked WHERE key = %s AND value = %s) "
            f"{_UPSERT} RETURNING true"
        )
        keys = [key for key, _ in rows]
        locked = sorted({guard_encoded, *keys})
        params = [
            self._stripes_class,
            _stripes(locked),
            locked,
            keys,
            [value for _, value in rows],
            guard_encoded,
            guard,
        ]
        written = await self._execute(next(iter(checked)), query, params, batch=len(checked) > 1)
        return bool(written)

    async def batch_delete_if(
        self, guard_key: str, guard_value: bytes, keys: Sequence[str]
    ) -> bool:
        """Deletes every key of `keys` only if `guard_key` holds `guard_value`, in one transaction.

        Returns whether the guard held. It takes its locks as `batch_save_if` does, in a
        statement of their own, then checks the guard and deletes in one transaction: a
        concurrent write of the guard waits for it, or, committed first, is what the check
        and the deletion see.
        """
        guard = check_items({check_key(guard_key): guard_value})[guard_key]
        wanted = check_keys(keys)
        if not wanted:
            return await self.load(guard_key) == guard
        encoded = _encode_keys(wanted)
        guard_encoded = encode_key(guard_key)
        locked = sorted({guard_encoded, *encoded})
        locks = [self._stripes_class, _stripes(locked), locked]
        # Read twice, the guard's query is run once (materialized), after the locks: the
        # deletion and the answer see the same check. The locks are taken first, by a
        # statement of their own: a deletion that waited for them, then saw the guard its
        # holder wrote, deleted only the rows that were there before it waited, and left
        # one the holder had written with the guard (see `_AfterLocks`).
        query = _AfterLocks(
            f"WITH {_locked_rows(self._table)} SELECT count(*) FROM locked",
            locks,
            f"WITH {_locked_rows(self._table)}, "
            "guard AS (SELECT 1 FROM locked WHERE key = %s AND value = %s), "
            f"gone AS (DELETE FROM {self._table} WHERE key = ANY(%s) "
            "AND EXISTS (SELECT 1 FROM guard)) "
            "SELECT EXISTS (SELECT 1 FROM guard)",
        )
        params = [*locks, guard_encoded, guard, encoded]
        rows = await self._execute(guard_key, query, params)
        return bool(rows[0][0])

    async def batch_load(self, keys: Sequence[str]) -> dict[str, bytes]:
        """Returns the stored values of those `keys` that exist."""
        wanted = check_keys(keys)
        if not wanted:
            return {}
        encoded = _encode_keys(wanted)
        rows = await self._execute(
            None, f"SELECT key, value FROM {self._table} WHERE key = ANY(%s)", [encoded]
        )
        # A row's key is one of `encoded`: named by the key asked for, with no decoding.
        asked = dict(zip(encoded, wanted, strict=True))
        return {asked[bytes(key)]: bytes(value) for key, value in rows}

    async def list_keys(self, prefix: str = "") -> list[str]:
        """Returns the stored keys that start with `prefix`, sorted.

        A key that is not UTF-8 text (written by another client) is skipped, with a warning.
        """
        # Keys are UTF-8 bytes, which never contain 0xFF: [prefix, prefix + FF) holds exactly
        # the keys starting with `prefix`, and byte order is code point order (Python's).
        low = encode_key(check_prefix(prefix))
        rows = await self._execute(
            None,
            f"SELECT key FROM {self._table} WHERE key >= %s AND key < %s ORDER BY key",
            [low, low + b"\xff"],
        )
        return decode_stored_keys("PostgresBackend", (bytes(row[0]) for row in rows))


async def _within(deadline: float, grace: float, statement: Coroutine[Any, Any, T]) -> T:
    """Awaits `statement` (in this task) until the loop's time `deadline`, then stops it.

    The task is cancelled at the deadline: psycopg then asks the server to cancel the
    statement, and waits for that. A server that does not answer within `grace` seconds gets
    no more time: cancelled again, psycopg closes the connection and gives up. A timer, not
    a task of its own: a statement that ends in time costs nothing more. A cancellation by
    the caller gets the same `grace` (psycopg alone would wait for the server up to 10 s),
    and then goes on.

    Raises:
        TimeoutError: When the deadline passed first.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    # One asked but not delivered yet is the caller's, delivered before the statement is
    # sent (else it got no grace, and was lost at the deadline).
    already = await cancellations_so_far(task, statement)
    fired = 0  # this function's own cancellations of the task
    by_caller = False
    handle: asyncio.TimerHandle | None = None

    def expire() -> None:
        nonlocal fired, handle
        fired += 1
        task.cancel()
        if fired < _STOP_ATTEMPTS:
            handle = loop.call_later(grace if fired == 1 and not by_caller else 0.05, expire)

    def cancelled() -> None:
        # A cancellation reaches psycopg, which now asks the server to cancel: when it is
        # the caller's, the grace starts now, as it would at the deadline.
        nonlocal by_caller, handle
        if not fired and not by_caller and task.cancelling() > already:
            by_caller = True
            assert handle is not None
            handle.cancel()
            handle = loop.call_later(grace, expire)

    handle = loop.call_at(deadline, expire)
    try:
        return await _Watched(statement, cancelled)
    except BaseException as error:
        if not fired and not by_caller:
            raise
        handle.cancel()
        for _ in range(fired):
            task.uncancel()
        if task.cancelling() > already:
            raise  # cancelled by its caller too: that cancellation goes on
        if isinstance(error, Exception | asyncio.CancelledError):
            raise TimeoutError("the statement was cancelled") from error
        raise
    finally:
        handle.cancel()


class _Watched(Generic[T]):
    """Awaits a coroutine, calling `on_cancel` before a cancellation is thrown into it."""

    __slots__ = ("_coro", "_on_cancel")

    def __init__(self, coro: Coroutine[Any, Any, T], on_cancel: Callable[[], None]) -> None:
        self._coro = coro
        self._on_cancel = on_cancel

    def __await__(self) -> Generator[Any, Any, T]:
        coro = self._coro
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                step = coro.send(value) if error is None else coro.throw(error)
            except StopIteration as stop:
                result: T = stop.value
                return result
            value, error = None, None
            try:
                value = yield step
            except GeneratorExit:
                coro.close()
                raise
            except asyncio.CancelledError as cancel:
                self._on_cancel()
                error = cancel
            except BaseException as other:
                error = other


async def _give_back(pool: Any, conn: Any) -> None:
    """Returns `conn` to `pool` whole, even when the caller is cancelled meanwhile.

    psycopg_pool's `putconn` cut off by a cancellation drops the connection while the pool
    still counts it, so it opens no replacement: every such cut shrank the pool for good,
    until no call got a connection. A hand-back that has to wait (for the pool's lock, for a
    caller waiting for a connection) goes on in a task of its own, which a cancellation of
    the caller does not stop (it is raised as the hand-back goes on). One that does not wait,
    the usual case, ends here: no task, no extra turn of the loop.
    """
    giving = pool.putconn(conn)
    try:
        awaited = giving.send(None)
    except StopIteration:
        return
    task = asyncio.ensure_future(_go_on(giving, awaited))
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        keep_alive(task).add_done_callback(retrieve_outcome)
        raise


async def _go_on(coroutine: Coroutine[Any, Any, Any], awaited: Any) -> None:
    """Runs `coroutine` on from its first wait, for `awaited`, as a task runs a coroutine.

    Each future it waits for is waited for here, its outcome left for the coroutine to read
    as it is sent on (a bare `yield` is a turn of the loop). Cancelled (its loop ends), the
    coroutine is closed.
    """
    while True:
        try:
            if awaited is None:
                await asyncio.sleep(0)
            else:
                await asyncio.wait([awaited])
        except asyncio.CancelledError:
            coroutine.close()
            raise
        try:
            awaited = coroutine.send(None)
        except StopIteration:
            return


def _closed_by_server(conn: Any) -> bool:
    """Whether an idle `conn` is closed, or its server has closed it: no round trip.

    An idle connection has nothing to read, but for a message the server sent on its own:
    a notice, a parameter's new value, or the error it sends as it closes the connection
    (a restart, an idle timeout), followed by the end of the stream, which libpq reads.
    """
    pgconn = conn.pgconn
    for _ in range(3):  # the closing message, then the end of the stream
        if conn.closed:
            return True
        try:
            if not readable(pgconn.socket):
                return False
            pgconn.consume_input()
        except Exception:
            return True  # libpq read the end of the stream, or an error
    return bool(conn.closed)


async def _rows(conn: Any, query: str | _AfterLocks, params: Sequence[Any]) -> list[Any]:
    """Runs one statement on `conn`; returns its rows (none for a statement without).

    An `_AfterLocks` runs as one transaction, sent at once (a pipeline): its rows are the
    statement's.
    """
    if isinstance(query, _AfterLocks):
        # BEGIN and COMMIT by hand: `conn.transaction()` waits for each in turn, a round
        # trip each (twice the time of the whole pipeline).
        try:
            async with conn.pipeline():
                await conn.execute("BEGIN")
                await conn.execute(query.locks, query.locks_params)
                cursor = await conn.execute(query.statement, params)
                await conn.execute("COMMIT")
        except BaseException:  # a cancellation (a timeout's) too, as `conn.transaction()`
            from psycopg.pq import TransactionStatus

            # The server skipped the rest, COMMIT included: the failed transaction ends here,
            # not with a warning from the pool (which drops a connection closed or busy).
            status = conn.info.transaction_status
            if status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
                # The error (or cancellation) is what the caller gets: a connection left
                # broken by a failed rollback, the pool drops.
                with contextlib.suppress(Exception):
                    await conn.rollback()
            raise
    else:
        cursor = await conn.execute(query, params)
    return await cursor.fetchall() if cursor.description else []


def _encode_keys(keys: Iterable[str]) -> list[bytes]:
    """The UTF-8 bytes of each key (`PersistenceError` for one that is not valid text)."""
    try:
        return [k.encode() for k in keys]
    except UnicodeEncodeError:
        return [encode_key(k) for k in keys]  # raises, naming the key
