"""The one place Redis clients are made (persistence and orchestration state share it).

A module of its own so that orchestration does not import the persistence package.
"""

from __future__ import annotations

import asyncio
import functools
import re
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

from llm_agent_runtime._cancelling import cancellations_so_far
from llm_agent_runtime._loops import PerLoop
from llm_agent_runtime._sockets import readable
from llm_agent_runtime.errors import PersistenceError

__all__ = [
    "REDIS_HEALTH_CHECK_INTERVAL",
    "REDIS_MAX_CONNECTIONS",
    "REDIS_POOL_TIMEOUT",
    "REDIS_SOCKET_TIMEOUT",
    "RedisClients",
    "redis_client",
]

REDIS_MAX_CONNECTIONS = 100
"""Connections each client keeps open at most; more concurrent commands wait for one."""
REDIS_POOL_TIMEOUT = 30.0
"""Seconds a command waits for a free connection before it fails."""
REDIS_SOCKET_TIMEOUT = 5.0
"""Seconds to connect, and to wait for each reply, before a command fails (a `?socket_timeout=`
in the URL overrides it). Set here, not left to redis-py: its default differs by version, and
without one a server that stops answering hangs every command."""
REDIS_HEALTH_CHECK_INTERVAL = 1.0
"""Seconds a pooled connection may sit idle before it is checked (a PING) as it is taken for
a command; one that fails the check is replaced first (a `?health_check_interval=` in the URL
overrides it)."""


def redis_client(url: str, owner: str) -> RedisClients:
    """A redis-py asyncio client for `url` (one per event loop) whose commands queue for a pool.

    Connections belong to the loop that opened them: the object returned answers for the
    running loop's client (see `RedisClients`), so its owner works from one `asyncio.run`
    to the next, and each loop's connections are closed as that loop ends.

    redis-py's default pool raises "Too many connections" as soon as more commands are in
    flight than it has connections (e.g. 1,000 sessions sharing one rate limiter); a
    blocking pool makes the excess wait instead.

    A cancellation is never lost in a command: see `_keeping_cancellation`.

    The pool replaces a connection the server has closed (a restart, a failover, its idle
    `timeout`), or one idle for `REDIS_HEALTH_CHECK_INTERVAL` that fails a PING, as it hands
    it out: before anything is sent on it, so that is always safe. No command is retried
    once sent: a Lua script whose reply was lost may have run (taken tokens, a lease), so it
    fails instead, as does a command on a connection lost while in use.

    Raises:
        PersistenceError: When redis-py is not installed (the `redis` extra), or `url` is not
            a Redis URL redis-py can use (no such scheme, a port or a database that is not
            a number, a query option redis-py does not know or of a bad value, or
            `decode_responses` on: callers read bytes); `owner` names the class that needs
            it. The message never holds the URL: for one with credentials, not even the
            reason, which urllib may give quoting part of them (an unknown option's name
            is given all the same).
    """
    try:
        from redis.asyncio import Redis
        from redis.exceptions import RedisError
    except ImportError as error:
        raise PersistenceError(
            f"{owner} needs redis-py: pip install 'llm-agent-runtime[redis]'"
        ) from error
    if not isinstance(url, str):
        raise PersistenceError(f"{owner} needs a Redis URL as a str, got {type(url).__name__}")

    def client() -> Any:
        # Each error is raised after its handler, not in it: the error handled may quote the
        # password, and would be kept as the raised error's context.
        reason = None
        try:
            pool = _checked_pool_class().from_url(
                url,
                max_connections=REDIS_MAX_CONNECTIONS,
                timeout=REDIS_POOL_TIMEOUT,
                socket_timeout=REDIS_SOCKET_TIMEOUT,
                socket_connect_timeout=REDIS_SOCKET_TIMEOUT,
                health_check_interval=REDIS_HEALTH_CHECK_INTERVAL,
            )
        except ValueError as error:
            reason = _redacted(error, url)
        if reason is not None:
            raise PersistenceError(f"{owner}: not a usable Redis URL: {reason}")
        if pool.connection_kwargs.get("decode_responses"):  # the callers read bytes
            raise PersistenceError(f"{owner}: the Redis URL cannot turn decode_responses on")
        _check_database(url, owner)
        try:
            # Builds a connection, never opens it: redis-py passes a query option it does
            # not parse itself straight to it, so a mistyped one fails here, not every call.
            pool.make_connection()
        except (TypeError, ValueError, RedisError) as error:
            # A TypeError names an unknown option, never a value: kept even with credentials.
            reason = str(error) if isinstance(error, TypeError) else _redacted(error, url)
        if reason is not None:
            raise PersistenceError(f"{owner}: not a usable Redis URL: {reason}")
        return Redis.from_pool(pool)

    return RedisClients(client)


class RedisClients:
    """A redis-py client per event loop, standing for the running loop's one.

    An attribute (a command, `pipeline`, `scan_iter`...) is the running loop's client's: a
    pooled connection is bound to the loop that opened it, and on another loop (after one
    `asyncio.run`, the next) its commands fail, possibly once sent. Each loop's client is
    closed within that loop as it ends (see `PerLoop`), or by `aclose`.
    """

    def __init__(self, make: Callable[[], Any]) -> None:
        self._template = make()  # the URL checked now; never sends a command
        self._clients: PerLoop[Any] = PerLoop(make, _close_client)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._clients.get(), name)

    def register_script(self, script: str) -> Callable[..., Awaitable[Any]]:
        """A Lua script to `await run(keys=..., args=...)` on the running loop's client.

        `client=` runs it on another (a pipeline).
        """
        registered = self._template.register_script(script)

        async def run(
            keys: Sequence[Any] = (), args: Sequence[Any] = (), client: Any = None
        ) -> Any:
            on = client if client is not None else self._clients.get()
            return await registered(keys=keys, args=args, client=on)

        return run

    async def aclose(self) -> None:
        """Closes every loop's client (its pool of connections)."""
        await self._clients.aclose()


async def _close_client(client: Any) -> None:
    await client.aclose()


def _check_database(url: str, owner: str) -> None:
    """Refuses a `redis://` or `rediss://` URL whose path is not a database number.

    redis-py reads the path as `int()` of it with every `/` removed, and ignores it when
    that fails: `/db1` or a mistyped `/l` would use database 0, `/1/2` database 12, and the
    state would silently mix with another application's.

    Raises:
        PersistenceError: The path is neither empty, `/`, nor `/<number>` (`/<number>/`).
    """
    parts = urlsplit(url)
    if parts.scheme in ("redis", "rediss") and not _DATABASE_PATH.fullmatch(unquote(parts.path)):
        raise PersistenceError(
            f"{owner}: not a usable Redis URL: its path must be a database number, such as "
            "/0 (redis-py would use another database)"
        )


_DATABASE_PATH = re.compile(r"/?(?:[0-9]+/?)?")
"""The path of a Redis URL: none, `/`, or a database number (a trailing `/` allowed)."""


def _redacted(error: Exception, url: str) -> str:
    """`error`'s message, or none when `url` holds user info (urllib's may quote part of it)."""
    return "its reason is left out, as the URL holds credentials" if "@" in url else str(error)


@functools.cache
def _checked_pool_class() -> Any:
    """A `BlockingConnectionPool` that replaces dead connections as it hands them out.

    Made on first use: redis-py is an optional dependency.
    """
    from redis.asyncio import BlockingConnectionPool

    class CheckedConnectionPool(BlockingConnectionPool):
        def __init__(self, *args: Any, connection_class: Any = None, **kwargs: Any) -> None:
            # `from_url` picks the class by scheme (TCP, TLS, Unix socket): kept, mixed in.
            if connection_class is None:
                from redis.asyncio import Connection

                connection_class = Connection
            kwargs["connection_class"] = _keeping_cancellation(connection_class)
            super().__init__(*args, **kwargs)

        async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
            get_connection: Any = super().get_connection  # untyped in some redis-py versions
            connection = await get_connection(*args, **kwargs)
            try:
                await _replace_if_dead(connection)
            except BaseException:
                await self.release(connection)
                raise
            return connection

    return CheckedConnectionPool


_WAIT_FOR_SWALLOWS = sys.version_info < (3, 12)
"""Whether `asyncio.wait_for` may swallow a cancellation (built on `asyncio.timeout` since)."""


@functools.cache
def _keeping_cancellation(connection_class: type) -> type:
    """`connection_class` with a send that never swallows a cancellation of its caller.

    A cancellation asked before the send and not delivered yet is delivered first (see
    `cancellations_so_far`): the command is not sent (else, a write that never suspends, it
    was applied, its caller told it was cancelled). redis-py bounds a socket write with
    `asyncio.wait_for`, which before Python 3.12 returns the write's result when the write
    ends as the calling task is cancelled: the cancellation is lost (CPython gh-86296), and
    a task cancelled to stop it runs on (a resume claim's renewal did, forever, and the run
    that awaited its end hung). There, such a cancellation is raised once the write returns.
    The connection is closed first: the command's reply, which no one will read, must not be
    read by the next command sent on it.
    """

    class KeepingCancellation(connection_class):  # type: ignore[misc]
        async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            task = asyncio.current_task()
            before = await cancellations_so_far(task)
            await super().send_packed_command(command, check_health)
            if _WAIT_FOR_SWALLOWS and task is not None and task.cancelling() > before:
                await self.disconnect(nowait=True)
                raise asyncio.CancelledError

    KeepingCancellation.__name__ = KeepingCancellation.__qualname__ = connection_class.__name__
    return KeepingCancellation


async def _replace_if_dead(connection: Any) -> None:
    """Reconnects `connection` if the server closed it, or it idled and fails a PING.

    Runs before anything is sent on the connection. redis-py checks for a closed connection
    itself, but version 8 skips that check while its maintenance notifications are on (the
    default); and its own health check runs inside the command, with no retry here (one
    would retry the command too), so a failed PING there fails the command.
    """
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    try:
        # Data or an end of stream is waiting: a PING tells a push message from EOF. Asked of
        # the socket: redis-py's `can_read` sees an end of stream only once the event loop
        # has read it, and a loop that has not run since the server closed the connection
        # has not (the command then went out on the closed connection, and failed).
        can_read = getattr(connection, "can_read", None)
        waiting = _socket_readable(connection) or (can_read is not None and await can_read())
        interval = connection.health_check_interval
        idle = interval and asyncio.get_running_loop().time() > connection.next_health_check
        if not (waiting or idle):
            return
        await connection.send_command("PING", check_health=False)
        if await connection.read_response() in (b"PONG", "PONG"):
            return
    except (RedisConnectionError, RedisTimeoutError, OSError):
        pass
    await connection.disconnect()
    await connection.connect()


def _socket_readable(connection: Any) -> bool:
    """Whether the socket of a redis-py connection has data, or its end, to read now."""
    writer = getattr(connection, "_writer", None)
    sock = writer.get_extra_info("socket") if writer is not None else None
    try:
        fd = sock.fileno() if sock is not None else -1
    except OSError:
        return True  # closed: a reconnection is due
    return fd >= 0 and readable(fd)
