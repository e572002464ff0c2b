"""The one place Redis clients are made (persistence and orchestration state share it).

A module of its own so that orchestration does not import the persistence package.
"""

from __future__ import annotations

from typing import Any

from llm_agent_runtime.errors import PersistenceError

__all__ = ["REDIS_MAX_CONNECTIONS", "REDIS_POOL_TIMEOUT", "REDIS_SOCKET_TIMEOUT", "redis_client"]

REDIS_MAX_CONNECTIONS = 100
"""Connections each client keeps open at most; more concurrent commands wait for one."""
REDIS_POOL_TIMEOUT = 30.0
"""Seconds a command waits for a free connection before it fails."""
REDIS_SOCKET_TIMEOUT = 5.0
"""Seconds to connect, and to wait for each reply, before a command fails (a `?socket_timeout=`
in the URL overrides it). Set here, not left to redis-py: its default differs by version, and
without one a server that stops answering hangs every command."""


def redis_client(url: str, owner: str) -> Any:
    """A redis-py asyncio client for `url` whose commands queue for a pooled connection.

    redis-py's default pool raises "Too many connections" as soon as more commands are in
    flight than it has connections (e.g. 1,000 sessions sharing one rate limiter); a
    blocking pool makes the excess wait instead.

    Raises:
        PersistenceError: When redis-py is not installed (the `redis` extra); `owner` names
            the class that needs it.
    """
    try:
        from redis.asyncio import BlockingConnectionPool, Redis
    except ImportError as error:
        raise PersistenceError(
            f"{owner} needs redis-py: pip install 'llm-agent-runtime[redis]'"
        ) from error
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=REDIS_MAX_CONNECTIONS,
        timeout=REDIS_POOL_TIMEOUT,
        socket_timeout=REDIS_SOCKET_TIMEOUT,
        socket_connect_timeout=REDIS_SOCKET_TIMEOUT,
    )
    return Redis.from_pool(pool)
